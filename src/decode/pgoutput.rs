//! pgoutput message parsing. (stub: being written)

/// Malformed or unsupported pgoutput input.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed pgoutput message: {0}")]
    Malformed(&'static str),
}
