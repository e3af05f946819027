//! Head serialization for forwarding: hop-by-hop and Connection-named fields dropped, framing
//! re-emitted canonically, edits applied, unchanged field lines copied as received.

use anyedge_http1::*;

fn head(bytes: &[u8]) -> RequestHead {
    match RequestHead::parse(bytes, &Limits::default()) {
        Ok(Status::Complete(head)) => head,
        other => panic!("{other:?}"),
    }
}

fn forward(bytes: &[u8], edits: &Edits<'_>) -> String {
    let mut out = Vec::new();
    write_request(&head(bytes), bytes, edits, &mut out).expect("writes");
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn request_heads_are_forwarded_with_edits() {
    let bytes = b"GET http://b.test/p HTTP/1.0\r\nHost: a.test\r\nX-A:  1 \r\nConnection: keep-alive, X-Drop\r\n\
        X-Drop: 1\r\nKeep-Alive: 5\r\nX-Anyedge-Secret: s\r\nX-B: 2\r\nX-Request-Id: client\r\nUpgrade: h2c\r\nTE: trailers\r\n\r\n";
    let set: &[(&[u8], &[u8])] = &[(b"x-request-id", b"r1"), (b"x-forwarded-for", b"192.0.2.1")];
    let edits = Edits {
        target: Some(b"/p"),
        host: Some(b"b.test"),
        remove_prefixes: &[b"x-anyedge-"],
        set,
        ..Edits::default()
    };
    assert_eq!(
        forward(bytes, &edits),
        "GET /p HTTP/1.1\r\nhost: b.test\r\nX-A:  1 \r\nX-B: 2\r\n\
         x-request-id: r1\r\nx-forwarded-for: 192.0.2.1\r\n\r\n"
    );
}

#[test]
fn framing_is_reemitted_canonically() {
    let cl =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nX: 1\r\n\r\n";
    assert_eq!(
        forward(cl, &Edits::default()),
        "POST / HTTP/1.1\r\nHost: a\r\nX: 1\r\ncontent-length: 5\r\n\r\n"
    );
    let clte =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let edits = Edits {
        close: true,
        ..Edits::default()
    };
    assert_eq!(
        forward(clte, &edits),
        "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn upgrades_are_kept_on_request() {
    let bytes = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let edits = Edits {
        keep_upgrade: true,
        ..Edits::default()
    };
    assert_eq!(
        forward(bytes, &edits),
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    );
}

#[test]
fn edits_cannot_inject_lines() {
    let bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let set: &[(&[u8], &[u8])] = &[(b"x-id", b"1\r\nX-Evil: 1")];
    let mut out = Vec::new();
    let edits = Edits {
        set,
        ..Edits::default()
    };
    assert_eq!(
        write_request(&head(bytes), bytes, &edits, &mut out),
        Err(Error::InvalidEdit)
    );
    let edits = Edits {
        host: Some(b"a\r\nx: y"),
        ..Edits::default()
    };
    assert_eq!(
        write_request(&head(bytes), bytes, &edits, &mut out),
        Err(Error::InvalidEdit)
    );
}

#[test]
fn response_heads_are_forwarded() {
    let bytes =
        b"HTTP/1.0 200 Fine\r\nContent-Length: 3\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\n";
    let Ok(Status::Complete(head)) = ResponseHead::parse(bytes, b"GET", &Limits::default()) else {
        panic!("parses");
    };
    let mut out = Vec::new();
    write_response(&head, bytes, &Edits::default(), &mut out).expect("writes");
    assert_eq!(
        out,
        b"HTTP/1.1 200 Fine\r\nX-A: 1\r\ncontent-length: 3\r\n\r\n"
    );
    let bytes = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n";
    let Ok(Status::Complete(head)) = ResponseHead::parse(bytes, b"GET", &Limits::default()) else {
        panic!("parses");
    };
    out.clear();
    write_response(&head, bytes, &Edits::default(), &mut out).expect("writes");
    assert_eq!(
        out,
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 3\r\n\r\n"
    );
}
