//! The incremental chunked decoder (RFC 9112 section 7.1): feed it any split of the bytes after
//! the head; it hands back where the data is, strictly checks the framing bytes, and parses a
//! bounded trailer section with the same field rules as heads.

use crate::error::Error;
use crate::head::Span;
use crate::lines;
use std::ops::Range;

/// Bounds on what a chunked body may carry besides data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedLimits {
    /// Extension bytes after one chunk size.
    pub max_extension: usize,
    /// Extension bytes over the whole body.
    pub max_extensions_total: usize,
    /// Trailer section bytes, final CRLF included.
    pub max_trailers: usize,
    /// Trailer fields (at most [`MAX_TRAILER_FIELDS`]).
    pub max_trailer_fields: usize,
}

/// The most trailer fields a body can carry.
pub const MAX_TRAILER_FIELDS: usize = 32;

impl Default for ChunkedLimits {
    fn default() -> Self {
        ChunkedLimits {
            max_extension: 256,
            max_extensions_total: 4096,
            max_trailers: 8192,
            max_trailer_fields: MAX_TRAILER_FIELDS,
        }
    }
}

/// What one [`ChunkedDecoder::decode`] call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Body data at this range of the input given.
    Data(Range<usize>),
    /// Every byte given was framing; give more.
    NeedMore,
    /// The body (trailers included) ended; bytes after it belong to the next message.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    SizeWs,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    EndLf,
    Done,
}

/// The decoder's state between calls: a few words, plus the trailer section when there is one.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    remaining: u64,
    digits: u8,
    extension: usize,
    extensions_total: usize,
    limits: ChunkedLimits,
    trailer_bytes: Vec<u8>,
    trailer_fields: Vec<(Span, Span)>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new(ChunkedLimits::default())
    }
}

impl ChunkedDecoder {
    pub fn new(limits: ChunkedLimits) -> Self {
        ChunkedDecoder {
            state: State::Size,
            remaining: 0,
            digits: 0,
            extension: 0,
            extensions_total: 0,
            limits,
            trailer_bytes: Vec::new(),
            trailer_fields: Vec::new(),
        }
    }

    /// Decodes from the start of `input`: `(used, what)`. `Data(r)`: the data is `input[r]`
    /// and `used == r.end`; call again with `&input[used..]`. `NeedMore`: `used == input.len()`.
    /// `Done`: the body ended after `used` bytes. After an error the decoder is unusable.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Decoded), Error> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Done => return Ok((at, Decoded::Done)),
                State::Data => return Ok(self.data(input, at)),
                _ => {
                    self.step(input[at])?;
                    at += 1;
                }
            }
        }
        match self.state {
            State::Done => Ok((at, Decoded::Done)),
            _ => Ok((at, Decoded::NeedMore)),
        }
    }

    /// Whether the whole body, trailers included, has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer fields, once done (names and values as received, validated).
    pub fn trailers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let block = &self.trailer_bytes;
        self.trailer_fields
            .iter()
            .map(move |(name, value)| (name.of(block), value.of(block)))
    }

    fn data(&mut self, input: &[u8], at: usize) -> (usize, Decoded) {
        let available = (input.len() - at) as u64;
        let take = self.remaining.min(available) as usize;
        self.remaining -= take as u64;
        if self.remaining == 0 {
            self.state = State::DataCr;
        }
        (at + take, Decoded::Data(at..at + take))
    }

    /// One framing byte.
    fn step(&mut self, b: u8) -> Result<(), Error> {
        self.state = match (self.state, b) {
            (State::Size, _) if b.is_ascii_hexdigit() => self.digit(b)?,
            (State::Size, _) if self.digits == 0 => return Err(Error::ChunkSize),
            (State::Size | State::SizeWs, b' ' | b'\t') => State::SizeWs,
            (State::Size | State::SizeWs, b';') => self.extension_byte(b)?,
            (State::Size | State::SizeWs, b'\n') => return Err(Error::BareLf),
            (State::Size | State::SizeWs | State::Extension, b'\r') => State::SizeLf,
            (State::Size | State::SizeWs, _) => return Err(Error::ChunkSize),
            (State::Extension, b'\n') => return Err(Error::BareLf),
            (State::Extension, _) => self.extension_byte(b)?,
            (State::SizeLf, b'\n') if self.remaining == 0 => State::TrailerStart,
            (State::SizeLf, b'\n') => State::Data,
            (State::EndLf, b'\n') => State::Done,
            (State::SizeLf | State::EndLf, _) => return Err(Error::BareCr),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => self.next_chunk(),
            (State::DataCr | State::DataLf, _) => return Err(Error::ChunkDataEnd),
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::Trailer, _) => self.trailer_byte(b)?,
            (State::Data | State::Done, _) => self.state,
        };
        Ok(())
    }

    fn digit(&mut self, b: u8) -> Result<State, Error> {
        if self.digits == 16 {
            return Err(Error::ChunkSizeTooLong);
        }
        let value = match b {
            b'0'..=b'9' => b - b'0',
            _ => (b | 0x20) - b'a' + 10,
        };
        // 16 hex digits fill a u64 exactly: the shift never loses a set bit.
        self.remaining = (self.remaining << 4) | u64::from(value);
        self.digits += 1;
        Ok(State::Size)
    }

    /// An extension byte (the `;` included): no control byte but HTAB, and bounded.
    fn extension_byte(&mut self, b: u8) -> Result<State, Error> {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            return Err(Error::ChunkExtension);
        }
        self.extension += 1;
        self.extensions_total += 1;
        if self.extension > self.limits.max_extension
            || self.extensions_total > self.limits.max_extensions_total
        {
            return Err(Error::ChunkExtensionTooLong);
        }
        Ok(State::Extension)
    }

    fn next_chunk(&mut self) -> State {
        self.digits = 0;
        self.extension = 0;
        State::Size
    }

    /// A byte of a non-empty trailer section, kept until its empty line, then parsed.
    fn trailer_byte(&mut self, b: u8) -> Result<State, Error> {
        let bytes = &mut self.trailer_bytes;
        let prev = bytes.last().copied();
        if bytes.len() >= self.limits.max_trailers {
            return Err(Error::TrailersTooLarge);
        }
        if b == b'\n' && prev != Some(b'\r') {
            return Err(Error::BareLf);
        }
        if prev == Some(b'\r') && b != b'\n' {
            return Err(Error::BareCr);
        }
        bytes.push(b);
        if bytes.ends_with(b"\r\n\r\n") {
            self.parse_trailers()?;
            return Ok(State::Done);
        }
        Ok(State::Trailer)
    }

    fn parse_trailers(&mut self) -> Result<(), Error> {
        let block = &self.trailer_bytes;
        let mut headers = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let max = self.limits.max_trailer_fields.min(MAX_TRAILER_FIELDS);
        match httparse::parse_headers(block, &mut headers[..max]) {
            Ok(httparse::Status::Complete((_, fields))) => {
                self.trailer_fields = fields
                    .iter()
                    .map(|h| {
                        (
                            Span::within(block, h.name.as_bytes()),
                            Span::within(block, h.value),
                        )
                    })
                    .collect();
                Ok(())
            }
            Ok(httparse::Status::Partial) => Err(Error::FieldName),
            Err(httparse::Error::TooManyHeaders) => Err(Error::TooManyTrailerFields),
            Err(e) => Err(lines::diagnose(e, block, false)),
        }
    }
}
