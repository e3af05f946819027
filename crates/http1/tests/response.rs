//! Response heads from instances: status- and method-dependent framing, and the same strict
//! field rules as requests, so an instance cannot smuggle a second response to the client.

use anyedge_http1::*;

fn parse(method: &[u8], bytes: &[u8]) -> Result<ResponseHead, Error> {
    let mut fuzz_input = vec![match method {
        b"HEAD" => 1u8,
        b"CONNECT" => 2,
        _ => 0,
    }];
    fuzz_input.extend_from_slice(bytes);
    anyedge_http1::fuzz::response(&fuzz_input);
    match ResponseHead::parse(bytes, method, &Limits::default()) {
        Ok(Status::Complete(head)) => Ok(head),
        Ok(Status::Partial) => panic!("partial: {:?}", String::from_utf8_lossy(bytes)),
        Err(e) => Err(e),
    }
}

#[test]
fn framing_depends_on_status_and_method() {
    let cases: &[(&[u8], &str, Framing, bool)] = &[
        (
            b"GET",
            "200 OK\r\nContent-Length: 2",
            Framing::Length(2),
            false,
        ),
        (
            b"GET",
            "200 OK\r\nTransfer-Encoding: chunked",
            Framing::Chunked,
            false,
        ),
        (
            b"GET",
            "200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked",
            Framing::Chunked,
            true,
        ),
        (b"GET", "200 OK", Framing::UntilClose, true),
        (
            b"HEAD",
            "200 OK\r\nContent-Length: 99",
            Framing::None,
            false,
        ),
        (
            b"HEAD",
            "200 OK\r\nTransfer-Encoding: chunked",
            Framing::None,
            false,
        ),
        (
            b"GET",
            "204 No Content\r\nContent-Length: 5",
            Framing::None,
            false,
        ),
        (
            b"GET",
            "304 Not Modified\r\nContent-Length: 5",
            Framing::None,
            false,
        ),
        (b"GET", "100 Continue", Framing::None, false),
        (
            b"GET",
            "101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade",
            Framing::None,
            false,
        ),
        (b"CONNECT", "200 OK", Framing::None, false),
        (
            b"CONNECT",
            "407 Auth\r\nContent-Length: 0",
            Framing::Length(0),
            false,
        ),
    ];
    for (method, rest, framing, close) in cases {
        let bytes = format!("HTTP/1.1 {rest}\r\n\r\n").into_bytes();
        let head = parse(method, &bytes).unwrap_or_else(|e| panic!("{rest}: {e}"));
        assert_eq!(
            (head.framing, head.must_close),
            (*framing, *close),
            "{rest}"
        );
    }
    let head = parse(
        b"GET",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    );
    assert!(head.is_ok_and(|h| h.tunnel && !h.is_interim() && !h.keep_alive()));
    assert!(parse(b"GET", b"HTTP/1.1 103 Early Hints\r\n\r\n").is_ok_and(|h| h.is_interim()));
}

#[test]
fn smuggling_responses_are_refused() {
    let cases: &[(&str, Error)] = &[
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
            Error::DifferingContentLength,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: +5",
            Error::InvalidContentLength,
        ),
        (
            "HTTP/1.1 204 No Content\r\nContent-Length: x",
            Error::InvalidContentLength,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
            Error::TransferEncodingNotChunked,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
            Error::UnsupportedTransferCoding,
        ),
        (
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
            Error::TransferEncodingOnHttp10,
        ),
        ("HTTP/1.1 200 OK\r\nX-A: 1\r\n 2", Error::ObsFold),
        (
            "HTTP/1.1 200 OK\r\nContent-Length : 5",
            Error::WhitespaceAfterFieldName,
        ),
        ("HTTP/1.1 200 OK\r\nX-A: \0", Error::FieldValue),
        ("HTTP/1.1 000 Zero", Error::Status),
        ("HTTP/1.1 20 OK", Error::Status),
    ];
    for (head, kind) in cases {
        assert_eq!(
            parse(b"GET", format!("{head}\r\n\r\n").as_bytes()),
            Err(*kind),
            "{head}"
        );
    }
    assert_eq!(
        parse(b"GET", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
        Err(Error::BareLf)
    );
}

#[test]
fn reason_and_partial() {
    let bytes = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let head = parse(b"GET", bytes).expect("parses");
    assert_eq!((head.code, head.reason.of(bytes)), (404, &b"Not Found"[..]));
    let partial = ResponseHead::parse(b"HTTP/1.1 200 OK\r\n", b"GET", &Limits::default());
    assert_eq!(partial, Ok(Status::Partial));
}
