//! anyedge's HTTP/1.1 message layer: pure, sans-I/O, strict (RFC 9112), one allocation per head
//! (its field positions). It reads bytes the caller already has and writes into the caller's
//! buffers.
//!
//! - [`RequestHead::parse`] / [`ResponseHead::parse`]: the head at the start of a buffer, as
//!   positions ([`Span`]s) into it, or [`Status::Partial`] (read more, parse again: the result
//!   does not depend on how the bytes were split). Well-known fields are classified once
//!   ([`Class`], [`Known`]) and the body's [`Framing`] is decided (RFC 9112 6.3). A refused head
//!   is an [`Error`] with a stable kind ([`Error::code`]) and the status to answer
//!   ([`Error::status`]; a refused response head means 502).
//! - [`ChunkedDecoder`]: the body of a `Chunked` message, fed in any pieces; trailers at the end.
//! - [`ChunkHead`], [`write_chunk`], [`write_last_chunk`]: canonical chunks for re-emitting.
//! - [`write_request`] / [`write_response`]: the head to forward, with [`Edits`] applied; the
//!   unchanged field lines are copied from the received bytes in runs.
//!
//! Every rule, limit and difference from hyper and httparse is listed in `docs/http1.md`.

mod chunked;
mod encode;
mod error;
mod fields;
mod framing;
mod head;
mod lines;
mod request;
mod response;
mod write;

#[doc(hidden)]
pub mod fuzz;

pub use chunked::{ChunkedDecoder, ChunkedLimits, Decoded, MAX_TRAILER_FIELDS};
pub use encode::{write_chunk, write_last_chunk, ChunkHead, CHUNK_END};
pub use error::Error;
pub use head::{
    Class, ConnectionOptions, Expect, Field, Fields, Framing, Known, Limits, Span, Status,
    TransferCodings, Version, MAX_FIELDS,
};
pub use request::RequestHead;
pub use response::ResponseHead;
pub use write::{write_request, write_response, Edits};
