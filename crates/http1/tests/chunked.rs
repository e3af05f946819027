//! The chunked decoder's rules (sizes, extensions, CRLFs, trailers) and the canonical encoder;
//! every case is also decoded one byte at a time and in random pieces (the fuzz check).

use anyedge_http1::*;

/// The data, where the body ended, the trailers.
type Body = (Vec<u8>, Option<usize>, Vec<(String, String)>);

/// Decodes `bytes` whole.
fn decode(bytes: &[u8]) -> Result<Body, Error> {
    anyedge_http1::fuzz::chunked(bytes);
    let mut decoder = ChunkedDecoder::default();
    let (mut at, mut body) = (0, Vec::new());
    loop {
        let (used, what) = decoder.decode(&bytes[at..])?;
        match what {
            Decoded::Data(r) => body.extend_from_slice(&bytes[at..][r]),
            Decoded::NeedMore => return Ok((body, None, Vec::new())),
            Decoded::Done => {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let trailers = decoder.trailers().map(|(n, v)| (s(n), s(v))).collect();
                return Ok((body, Some(at + used), trailers));
            }
        }
        at += used;
    }
}

#[test]
fn accepted_bodies() {
    let ok: &[(&[u8], &[u8], Option<usize>)] = &[
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello", Some(15)),
        (b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nNEXT", b"abcde", Some(20)),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", Some(20)),
        (b"5;name=value\r\nhello\r\n0;x\r\n\r\n", b"hello", Some(28)),
        (b"5 \r\nhello\r\n0\r\n\r\n", b"hello", Some(16)),
        (b"5\r\nhel", b"hel", None),
    ];
    for (bytes, data, end) in ok {
        let (body, got_end, _) = decode(bytes).expect("decodes");
        assert_eq!(
            (&body[..], got_end),
            (*data, *end),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let (_, _, trailers) = decode(b"0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n").expect("decodes");
    assert_eq!(
        trailers,
        [("X-Sum".into(), "1".into()), ("X-Other".into(), "2".into())]
    );
}

#[test]
fn refused_bodies() {
    let ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(300));
    let many: String = (0..33).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(Vec<u8>, Error)> = vec![
        (b"10000000000000000\r\n".to_vec(), Error::ChunkSizeTooLong),
        (
            b"00000000000000005\r\nhello\r\n0\r\n\r\n".to_vec(),
            Error::ChunkSizeTooLong,
        ),
        (b"-5\r\n".to_vec(), Error::ChunkSize),
        (b"0x5\r\n".to_vec(), Error::ChunkSize),
        (b"\r\nhello\r\n".to_vec(), Error::ChunkSize),
        (b"5 5\r\n".to_vec(), Error::ChunkSize),
        (
            b"5;a\x01b\r\nhello\r\n0\r\n\r\n".to_vec(),
            Error::ChunkExtension,
        ),
        (b"5;a\0\r\n".to_vec(), Error::ChunkExtension),
        (b"5;a\nhello\r\n".to_vec(), Error::BareLf),
        (ext.into_bytes(), Error::ChunkExtensionTooLong),
        (b"5\r\nhelloX\r\n0\r\n\r\n".to_vec(), Error::ChunkDataEnd),
        (b"5\r\nhello\n0\r\n\r\n".to_vec(), Error::ChunkDataEnd),
        (b"5\nhello\r\n".to_vec(), Error::BareLf),
        (b"5\rhello\r\n".to_vec(), Error::BareCr),
        (b"0\r\n\n".to_vec(), Error::BareLf),
        (b"0\r\n\rX".to_vec(), Error::BareCr),
        (b"0\r\nX-A: 1\n\r\n".to_vec(), Error::BareLf),
        (b"0\r\nX-A: 1\r\n 2\r\n\r\n".to_vec(), Error::ObsFold),
        (
            b"0\r\nX-A : 1\r\n\r\n".to_vec(),
            Error::WhitespaceAfterFieldName,
        ),
        (b"0\r\nX-A: \x00\r\n\r\n".to_vec(), Error::FieldValue),
        (
            format!("0\r\n{many}\r\n").into_bytes(),
            Error::TooManyTrailerFields,
        ),
        (
            format!("0\r\nX: {}\r\n\r\n", "v".repeat(9000)).into_bytes(),
            Error::TrailersTooLarge,
        ),
    ];
    for (bytes, kind) in cases {
        assert_eq!(
            decode(&bytes).map(|_| ()),
            Err(kind),
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(kind.status(), 400);
    }
}

#[test]
fn missing_final_crlf_is_not_the_end() {
    assert_eq!(decode(b"5\r\nhello\r\n0\r\n").map(|d| d.1), Ok(None));
}

#[test]
fn the_encoder_is_canonical() {
    assert_eq!(ChunkHead::new(0).as_bytes(), b"0\r\n");
    assert_eq!(ChunkHead::new(255).as_bytes(), b"ff\r\n");
    assert_eq!(ChunkHead::new(u64::MAX).as_bytes(), b"ffffffffffffffff\r\n");
    let mut out = Vec::new();
    write_chunk(b"hello", &mut out);
    write_chunk(b"", &mut out);
    let trailers: [(&[u8], &[u8]); 2] = [(b"x-sum", b"1"), (b"content-length", b"9")];
    write_last_chunk(trailers, &mut out);
    assert_eq!(out, b"5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n");
}
