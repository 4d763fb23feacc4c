//! Stateful pgoutput message stream → [`SourceEvent`]s. (stub: being written)

use bytes::Bytes;

use super::model::SourceEvent;
use super::pgoutput::DecodeError;

/// Keeps relation/type caches and transaction state across messages.
#[derive(Default)]
pub struct Decoder {}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one pgoutput message (an XLogData payload), appending what it
    /// yields to `out` (zero, one, or several events for Truncate).
    pub fn decode(&mut self, data: Bytes, out: &mut Vec<SourceEvent>) -> Result<(), DecodeError> {
        let _ = (data, out);
        Err(DecodeError::Malformed("decoder not written yet"))
    }
}
