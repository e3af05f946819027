//! The checks behind the fuzz targets `http1_request`, `http1_response` and `http1_chunked`
//! (one function per target, each panics when a property fails), kept here so that
//! `tests/fuzz_corpus.rs` runs every seed and crash input through them on stable Rust.
//! Not an API: the asserts are the point.

use crate::{
    write_last_chunk, write_request, write_response, ChunkedDecoder, ChunkedLimits, Decoded, Edits,
    Error, Framing, Limits, RequestHead, ResponseHead, Status,
};

/// Small bounds, so the length limits are reached by small inputs.
const SMALL: Limits = Limits {
    max_request_line: 64,
    max_head: 256,
    max_fields: 8,
};

/// Wide bounds for re-parsing what was written.
const WIDE: Limits = Limits {
    max_request_line: 1 << 20,
    max_head: 1 << 20,
    max_fields: crate::MAX_FIELDS,
};

/// The result of the first prefix of `data` that is not partial (partial if none is).
fn first_verdict<T>(
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<Status<T>, Error>,
) -> Result<Status<T>, Error> {
    for k in 0..data.len() {
        let r = parse(&data[..k]);
        if !matches!(r, Ok(Status::Partial)) {
            return r;
        }
    }
    parse(data)
}

/// Request heads: never panic; the verdict on every 1-byte-longer prefix agrees with the whole;
/// spans lie in the head; what is written for forwarding parses back to the same message.
pub fn request(data: &[u8]) {
    let whole = RequestHead::parse(data, &SMALL);
    assert_eq!(
        first_verdict(data, |d| RequestHead::parse(d, &SMALL)),
        whole
    );
    if let Ok(Status::Complete(head)) = RequestHead::parse(data, &Limits::default()) {
        check_request(&head, data);
    }
}

fn check_request(head: &RequestHead, data: &[u8]) {
    assert!(head.len <= data.len());
    for f in head.fields() {
        assert!(f.name.end as usize <= head.len && f.value.end as usize <= head.len);
    }
    assert_eq!(
        head.known.transfer_encoding.is_some(),
        head.framing == Framing::Chunked
    );
    if head.fields().len() + 4 > crate::MAX_FIELDS {
        return;
    }
    let set: &[(&[u8], &[u8])] = &[(b"x-request-id", b"r1")];
    let edits = Edits {
        host: Some(b"example.test"),
        set,
        ..Edits::default()
    };
    let mut out = Vec::new();
    assert_eq!(write_request(head, data, &edits, &mut out), Ok(()));
    let again = match RequestHead::parse(&out, &WIDE) {
        Ok(Status::Complete(again)) => again,
        other => panic!(
            "a written request does not parse: {other:?} {:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(again.len, out.len());
    assert_eq!(again.method.of(&out), head.method.of(data));
    assert_eq!(again.target.of(&out), head.target.of(data));
    assert_eq!(again.framing, head.framing);
    assert_eq!(
        again.known.host.map(|h| h.of(&out)),
        Some(&b"example.test"[..])
    );
    let hop_by_hop =
        |f: &&crate::Field| f.class.is_hop_by_hop() && f.class != crate::Class::TransferEncoding;
    assert!(!again.must_close && !again.fields().iter().any(|f| hop_by_hop(&f)));
}

/// Response heads (the first byte picks the request method: GET, HEAD or CONNECT): never
/// panic; prefixes agree; no-body statuses have no body; written heads parse back the same.
pub fn response(data: &[u8]) {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let method: &[u8] = match pick % 3 {
        0 => b"GET",
        1 => b"HEAD",
        _ => b"CONNECT",
    };
    let whole = ResponseHead::parse(data, method, &SMALL);
    assert_eq!(
        first_verdict(data, |d| ResponseHead::parse(d, method, &SMALL)),
        whole
    );
    if let Ok(Status::Complete(head)) = ResponseHead::parse(data, method, &Limits::default()) {
        check_response(&head, method, data);
    }
}

fn check_response(head: &ResponseHead, method: &[u8], data: &[u8]) {
    assert!(head.len <= data.len() && head.reason.end as usize <= head.len);
    let no_body = method == b"HEAD" || head.code < 200 || head.code == 204 || head.code == 304;
    if no_body || head.tunnel {
        assert_eq!(head.framing, Framing::None);
    }
    if head.fields().len() + 4 > crate::MAX_FIELDS {
        return;
    }
    let mut out = Vec::new();
    assert_eq!(
        write_response(head, data, &Edits::default(), &mut out),
        Ok(())
    );
    let again = match ResponseHead::parse(&out, method, &WIDE) {
        Ok(Status::Complete(again)) => again,
        other => panic!(
            "a written response does not parse: {other:?} {:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(
        (again.code, again.framing, again.tunnel),
        (head.code, head.framing, head.tunnel)
    );
    assert_eq!(again.reason.of(&out), head.reason.of(data));
}

/// What decoding a chunked body gave: the data, where the body ended, the trailers.
type Outcome = Result<(Vec<u8>, Option<usize>, Vec<(Vec<u8>, Vec<u8>)>), Error>;

const SMALL_CHUNKED: ChunkedLimits = ChunkedLimits {
    max_extension: 16,
    max_extensions_total: 64,
    max_trailers: 128,
    max_trailer_fields: 4,
};

/// Decodes `data` fed in pieces of the sizes `split` gives (cycled).
fn decode_split(data: &[u8], limits: ChunkedLimits, mut split: impl FnMut() -> usize) -> Outcome {
    let mut decoder = ChunkedDecoder::new(limits);
    let mut body = Vec::new();
    let mut fed = 0;
    while fed < data.len() {
        let end = (fed + split().max(1)).min(data.len());
        let mut piece = &data[fed..end];
        let mut at = fed;
        loop {
            let (used, what) = decoder.decode(piece)?;
            match what {
                Decoded::Data(r) => body.extend_from_slice(&piece[r]),
                Decoded::NeedMore => break,
                Decoded::Done => {
                    let trailers = decoder.trailers().map(|(n, v)| (n.to_vec(), v.to_vec()));
                    return Ok((body, Some(at + used), trailers.collect()));
                }
            }
            piece = &piece[used..];
            at += used;
        }
        fed = end;
    }
    Ok((body, None, Vec::new()))
}

/// Chunked bodies: whole, 1-byte and pseudo-random splits agree; a body that ends re-encodes
/// canonically to bytes that decode to the same data and forwardable trailers.
pub fn chunked(data: &[u8]) {
    let whole = decode_split(data, SMALL_CHUNKED, || usize::MAX);
    assert_eq!(decode_split(data, SMALL_CHUNKED, || 1), whole);
    let mut seed = data.iter().fold(0x9e37_79b9_7f4a_7c15_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let random = decode_split(data, SMALL_CHUNKED, || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 59) as usize + 1
    });
    assert_eq!(random, whole);
    let Ok((body, Some(end), trailers)) = whole else {
        return;
    };
    assert!(end <= data.len());
    let mut encoded = Vec::new();
    for piece in body.chunks(7) {
        crate::write_chunk(piece, &mut encoded);
    }
    write_last_chunk(trailers.iter().map(|(n, v)| (&n[..], &v[..])), &mut encoded);
    let (again, again_end, again_trailers) =
        match decode_split(&encoded, ChunkedLimits::default(), || usize::MAX) {
            Ok(decoded) => decoded,
            Err(e) => panic!(
                "a canonical encoding does not decode: {e} {:?}",
                String::from_utf8_lossy(&encoded)
            ),
        };
    assert_eq!((again, again_end), (body, Some(encoded.len())));
    let forwarded = trailers
        .iter()
        .filter(|(n, _)| crate::fields::classify(n) == crate::Class::Other);
    assert!(again_trailers.iter().eq(forwarded));
}
