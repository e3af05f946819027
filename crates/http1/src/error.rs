//! The one error type of the HTTP/1.1 layer: a stable kind per rule, the status a server answers
//! with, whose fault it is, and a stable code for logs and metrics.

/// Why a message was refused. Every variant is a rule of RFC 9112/9110 (or a bound of ours);
/// [`Error::status`] is what a server answers a client with. A response head from an instance
/// failing any rule is the instance's fault: the edge answers its client `502` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid method token")]
    Method,
    #[error("invalid request target")]
    Target,
    #[error("invalid HTTP version")]
    Version,
    #[error("invalid status line")]
    Status,
    #[error("invalid byte in a field name")]
    FieldName,
    #[error("invalid byte in a field value (NUL or another control byte)")]
    FieldValue,
    #[error("whitespace between a field name and its colon")]
    WhitespaceAfterFieldName,
    #[error("obsolete line folding (a line starting with SP or HTAB)")]
    ObsFold,
    #[error("a CR not followed by LF")]
    BareCr,
    #[error("a line that does not end where it must (a start line with trailing bytes, a CR not followed by LF)")]
    LineEnding,
    #[error("a line ending in LF without CR")]
    BareLf,
    #[error("request line longer than the limit")]
    RequestLineTooLong,
    #[error("header section larger than the limit")]
    HeadTooLarge,
    #[error("more header fields than the limit")]
    TooManyFields,
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    #[error("more than one Host field")]
    DuplicateHost,
    #[error("invalid Host value")]
    InvalidHost,
    #[error("malformed Content-Length")]
    InvalidContentLength,
    #[error("Content-Length values that differ")]
    DifferingContentLength,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    TransferEncodingNotChunked,
    #[error("Transfer-Encoding with a coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("chunked applied more than once")]
    RepeatedChunked,
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingOnHttp10,
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("chunk size of more than 16 hex digits")]
    ChunkSizeTooLong,
    #[error("invalid chunk extension")]
    ChunkExtension,
    #[error("chunk extensions longer than the limit")]
    ChunkExtensionTooLong,
    #[error("chunk data not followed by CRLF")]
    ChunkDataEnd,
    #[error("trailer section larger than the limit")]
    TrailersTooLarge,
    #[error("more trailer fields than the limit")]
    TooManyTrailerFields,
    #[error("an edit holds a field name or value that cannot be written")]
    InvalidEdit,
}

impl Error {
    /// The status a server answers a request failing this rule with (RFC 9112/9110).
    pub fn status(self) -> u16 {
        match self {
            Error::RequestLineTooLong => 414,
            Error::HeadTooLarge | Error::TooManyFields => 431,
            Error::UnsupportedTransferCoding => 501,
            Error::InvalidEdit => 500,
            _ => 400,
        }
    }

    /// Whether the peer sent it (true for everything but a bad edit, which is our own).
    pub fn is_peer_fault(self) -> bool {
        !matches!(self, Error::InvalidEdit)
    }

    /// A stable snake_case name for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Error::Method => "method",
            Error::Target => "target",
            Error::Version => "version",
            Error::Status => "status",
            Error::FieldName => "field_name",
            Error::FieldValue => "field_value",
            Error::WhitespaceAfterFieldName => "whitespace_after_field_name",
            Error::ObsFold => "obs_fold",
            Error::BareCr => "bare_cr",
            Error::BareLf => "bare_lf",
            Error::LineEnding => "line_ending",
            Error::RequestLineTooLong => "request_line_too_long",
            Error::HeadTooLarge => "head_too_large",
            Error::TooManyFields => "too_many_fields",
            Error::MissingHost => "missing_host",
            Error::DuplicateHost => "duplicate_host",
            Error::InvalidHost => "invalid_host",
            Error::InvalidContentLength => "invalid_content_length",
            Error::DifferingContentLength => "differing_content_length",
            Error::TransferEncodingNotChunked => "transfer_encoding_not_chunked",
            Error::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Error::RepeatedChunked => "repeated_chunked",
            Error::TransferEncodingOnHttp10 => "transfer_encoding_on_http10",
            Error::ChunkSize => "chunk_size",
            Error::ChunkSizeTooLong => "chunk_size_too_long",
            Error::ChunkExtension => "chunk_extension",
            Error::ChunkExtensionTooLong => "chunk_extension_too_long",
            Error::ChunkDataEnd => "chunk_data_end",
            Error::TrailersTooLarge => "trailers_too_large",
            Error::TooManyTrailerFields => "too_many_trailer_fields",
            Error::InvalidEdit => "invalid_edit",
        }
    }
}
