//! Every rule of the message layer, one case each: what is accepted (with its framing and
//! classification), what is refused (with its kind and status), and the same verdict when the
//! bytes arrive one at a time (the fuzz checks, which feed every prefix, run on each case).

use anyedge_http1::*;

fn parse(bytes: &[u8]) -> Result<Status<RequestHead>, Error> {
    anyedge_http1::fuzz::request(bytes);
    let whole = RequestHead::parse(bytes, &Limits::default());
    for k in 0..bytes.len() {
        match RequestHead::parse(&bytes[..k], &Limits::default()) {
            Ok(Status::Partial) => {}
            early => return early.inspect(|r| assert_eq!(Ok(r), whole.as_ref())),
        }
    }
    whole
}

fn accept(bytes: &[u8]) -> RequestHead {
    match parse(bytes) {
        Ok(Status::Complete(head)) => head,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
    }
}

const H: &str = "Host: a.test\r\n";

fn with_fields(fields: &str) -> Vec<u8> {
    format!("POST /p HTTP/1.1\r\n{H}{fields}\r\n").into_bytes()
}

#[test]
fn refusals_have_their_kind_and_status() {
    let long_line = format!("GET /{} HTTP/1.1\r\n{H}\r\n", "a".repeat(9000));
    let big_head = format!("GET / HTTP/1.1\r\n{H}X: {}\r\n\r\n", "a".repeat(17000));
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(Vec<u8>, Error, u16)> = vec![
        (
            with_fields("Content-Length: +5\r\n"),
            Error::InvalidContentLength,
            400,
        ),
        (
            with_fields("Content-Length: 0x5\r\n"),
            Error::InvalidContentLength,
            400,
        ),
        (
            with_fields("Content-Length: -1\r\n"),
            Error::InvalidContentLength,
            400,
        ),
        (
            with_fields("Content-Length: \r\n"),
            Error::InvalidContentLength,
            400,
        ),
        (
            with_fields("Content-Length: 5,\r\n"),
            Error::InvalidContentLength,
            400,
        ),
        (
            with_fields("Content-Length: 18446744073709551616\r\n"),
            Error::InvalidContentLength,
            400,
        ),
        (
            with_fields("Content-Length: 5, 6\r\n"),
            Error::InvalidContentLength,
            400,
        ),
        (
            with_fields("Content-Length: 5, 5\r\n"),
            Error::InvalidContentLength,
            400,
        ),
        (
            with_fields("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Error::DifferingContentLength,
            400,
        ),
        (
            with_fields("Transfer-Encoding: xchunked\r\n"),
            Error::TransferEncodingNotChunked,
            400,
        ),
        (
            with_fields("Transfer-Encoding: chunked, identity\r\n"),
            Error::TransferEncodingNotChunked,
            400,
        ),
        (
            with_fields("Transfer-Encoding: chunked;x=1\r\n"),
            Error::TransferEncodingNotChunked,
            400,
        ),
        (
            with_fields("Transfer-Encoding: \r\n"),
            Error::TransferEncodingNotChunked,
            400,
        ),
        (
            with_fields("Transfer-Encoding: gzip, chunked\r\n"),
            Error::UnsupportedTransferCoding,
            501,
        ),
        (
            with_fields("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            Error::RepeatedChunked,
            400,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            Error::TransferEncodingOnHttp10,
            400,
        ),
        (
            with_fields("Transfer-Encoding : chunked\r\n"),
            Error::WhitespaceAfterFieldName,
            400,
        ),
        (with_fields("X-A: 1\r\n 2\r\n"), Error::ObsFold, 400),
        (
            format!("GET / HTTP/1.1\r\n {H}\r\n").into_bytes(),
            Error::ObsFold,
            400,
        ),
        (with_fields("X-A: 1\r2\r\n"), Error::BareCr, 400),
        (
            format!("GET / HTTP/1.1\n{H}\r\n").into_bytes(),
            Error::BareLf,
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\n{H}\n").into_bytes(),
            Error::BareLf,
            400,
        ),
        (with_fields("X-A: 1\x002\r\n"), Error::FieldValue, 400),
        (with_fields("X-A: \x7f\r\n"), Error::FieldValue, 400),
        (with_fields("X\x01A: 1\r\n"), Error::FieldName, 400),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), Error::MissingHost, 400),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n".to_vec(),
            Error::DuplicateHost,
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(),
            Error::InvalidHost,
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n".to_vec(),
            Error::InvalidHost,
            400,
        ),
        (
            format!("GET http://u@a/ HTTP/1.1\r\n{H}\r\n").into_bytes(),
            Error::Target,
            400,
        ),
        (
            format!("GET ftp://a/ HTTP/1.1\r\n{H}\r\n").into_bytes(),
            Error::Target,
            400,
        ),
        (
            format!("GET http:/// HTTP/1.1\r\n{H}\r\n").into_bytes(),
            Error::Target,
            400,
        ),
        (
            format!("GET /a#b HTTP/1.1\r\n{H}\r\n").into_bytes(),
            Error::Target,
            400,
        ),
        (
            format!("GET * HTTP/1.1\r\n{H}\r\n").into_bytes(),
            Error::Target,
            400,
        ),
        (
            format!("CONNECT /p HTTP/1.1\r\n{H}\r\n").into_bytes(),
            Error::Target,
            400,
        ),
        (
            format!("GET / HTTP/1.2\r\n{H}\r\n").into_bytes(),
            Error::Version,
            400,
        ),
        (
            format!("G(T / HTTP/1.1\r\n{H}\r\n").into_bytes(),
            Error::Method,
            400,
        ),
        (long_line.into_bytes(), Error::RequestLineTooLong, 414),
        (big_head.into_bytes(), Error::HeadTooLarge, 431),
        (
            format!("GET / HTTP/1.1\r\n{H}{many}\r\n").into_bytes(),
            Error::TooManyFields,
            431,
        ),
    ];
    for (bytes, kind, status) in cases {
        let got = parse(&bytes);
        assert_eq!(got, Err(kind), "{:?}", String::from_utf8_lossy(&bytes));
        assert_eq!((kind.status(), kind.code().is_empty()), (status, false));
    }
}

#[test]
fn framing_follows_rfc_9112_6_3() {
    let cases: &[(&str, Framing, bool)] = &[
        ("", Framing::None, false),
        ("Content-Length: 5\r\n", Framing::Length(5), false),
        ("Content-Length: 0\r\n", Framing::Length(0), false),
        (
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            Framing::Length(5),
            false,
        ),
        ("Content-Length: 007\r\n", Framing::Length(7), false),
        ("Transfer-Encoding: chunked\r\n", Framing::Chunked, false),
        ("Transfer-Encoding: CHUNKED\r\n", Framing::Chunked, false),
        ("Transfer-Encoding: ,chunked,\r\n", Framing::Chunked, false),
        // CL.TE and TE.CL: chunked wins, the length is dropped, the connection closes after.
        (
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            Framing::Chunked,
            true,
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            Framing::Chunked,
            true,
        ),
    ];
    for (fields, framing, close) in cases {
        let head = accept(&with_fields(fields));
        assert_eq!(
            (head.framing, head.must_close, head.keep_alive()),
            (*framing, *close, !close),
            "{fields}"
        );
        if *close {
            assert_eq!(head.known.content_length, None);
        }
    }
}

#[test]
fn well_known_fields_are_classified_once() {
    let bytes = with_fields(
        "Connection: Upgrade, X-Drop, keep-alive\r\nUpgrade: websocket\r\nExpect: 100-continue\r\n\
         TE: trailers\r\nTrailer: X-Sum\r\nKeep-Alive: 5\r\nProxy-Connection: close\r\nX-Drop: 1\r\n",
    );
    let head = accept(&bytes);
    let k = head.known;
    assert_eq!(k.host.map(|h| h.of(&bytes)), Some(&b"a.test"[..]));
    assert!(
        k.connection.upgrade
            && k.connection.keep_alive
            && k.connection.names_fields
            && !k.connection.close
    );
    assert_eq!(k.upgrade.map(|u| u.of(&bytes)), Some(&b"websocket"[..]));
    assert_eq!(k.expect, Expect::Continue);
    assert!(k.te_trailers && k.trailer && k.keep_alive && k.proxy_connection);
    let classes: Vec<Class> = head.fields().iter().map(|f| f.class).collect();
    assert_eq!(
        classes[..3],
        [Class::Host, Class::Connection, Class::Upgrade]
    );
    assert_eq!(head.fields().len(), 9);
}

#[test]
fn http10_and_connection_decide_keep_alive() {
    let h10 = accept(b"GET / HTTP/1.0\r\n\r\n");
    assert!(!h10.keep_alive() && h10.route_authority().is_none());
    assert!(accept(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
    assert!(!accept(&with_fields("Connection: close\r\n")).keep_alive());
}

#[test]
fn absolute_form_authority_replaces_host() {
    let bytes = format!("GET http://b.test:8080/p?q HTTP/1.1\r\n{H}\r\n").into_bytes();
    let head = accept(&bytes);
    assert_eq!(
        head.route_authority().map(|a| a.of(&bytes)),
        Some(&b"b.test:8080"[..])
    );
    let bytes = b"CONNECT b.test:443 HTTP/1.1\r\nHost: b.test:443\r\n\r\n";
    assert_eq!(
        accept(bytes).authority.map(|a| a.of(bytes)),
        Some(&b"b.test:443"[..])
    );
    let bytes = format!("GET / HTTP/1.1\r\n{H}\r\n").into_bytes();
    assert_eq!(
        accept(&bytes).route_authority().map(|a| a.of(&bytes)),
        Some(&b"a.test"[..])
    );
    accept(format!("OPTIONS * HTTP/1.1\r\n{H}\r\n").as_bytes());
}

#[test]
fn incomplete_heads_are_partial_and_leading_empty_lines_are_skipped() {
    assert_eq!(
        RequestHead::parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &Limits::default()),
        Ok(Status::Partial)
    );
    assert_eq!(
        RequestHead::parse(b"", &Limits::default()),
        Ok(Status::Partial)
    );
    let bytes = format!("\r\nGET / HTTP/1.1\r\n{H}\r\nBODY").into_bytes();
    let head = accept(&bytes);
    assert_eq!(
        (head.method.of(&bytes), head.len),
        (&b"GET"[..], bytes.len() - 4)
    );
}
