//! One message per datagram: postcard, capped at [`MAX_MESSAGE_LEN`].

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Hard cap on one encoded message (one datagram). Anything larger is refused
/// by the receiving side before it is decoded.
pub const MAX_MESSAGE_LEN: usize = 8192;

/// Encode one message, refusing anything over [`MAX_MESSAGE_LEN`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::to_allocvec(msg).map_err(|_| CodecError::Encode)?;
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(CodecError::TooLarge);
    }
    Ok(bytes)
}

/// Decode one message; the whole datagram must be consumed.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(CodecError::TooLarge);
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|_| CodecError::Decode)?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing);
    }
    Ok(value)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecError {
    Encode,
    Decode,
    TooLarge,
    Trailing,
}

impl core::fmt::Display for CodecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CodecError::Encode => "message does not encode",
            CodecError::Decode => "message does not decode",
            CodecError::TooLarge => "message over the size cap",
            CodecError::Trailing => "trailing bytes after the message",
        })
    }
}
