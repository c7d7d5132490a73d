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

/// Encode one message into `buf` (at most [`MAX_MESSAGE_LEN`] of it is
/// used) and return the encoded part: no allocation, so a hot loop that
/// keeps one buffer does not churn the allocator (musl's returns every
/// page-sized group to the kernel when it empties: one mmap and munmap
/// per message otherwise).
pub fn encode_into<'b, T: Serialize>(msg: &T, buf: &'b mut [u8]) -> Result<&'b [u8], CodecError> {
    let cap = buf.len().min(MAX_MESSAGE_LEN);
    match postcard::to_slice(msg, &mut buf[..cap]) {
        Ok(bytes) => Ok(bytes),
        Err(postcard::Error::SerializeBufferFull) => Err(CodecError::TooLarge),
        Err(_) => Err(CodecError::Encode),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn encode_into_matches_encode_and_refuses_what_does_not_fit() {
        let msg = (7u32, vec![1u8; 100]);
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        assert_eq!(encode_into(&msg, &mut buf).unwrap(), &encode(&msg).unwrap()[..]);
        // Over the cap, whatever the buffer's size.
        let mut big = vec![0u8; 2 * MAX_MESSAGE_LEN];
        let huge = vec![0u8; MAX_MESSAGE_LEN];
        assert_eq!(encode_into(&huge, &mut big), Err(CodecError::TooLarge));
        assert_eq!(encode(&huge), Err(CodecError::TooLarge));
        // Over a small buffer.
        assert_eq!(encode_into(&msg, &mut buf[..50]), Err(CodecError::TooLarge));
    }
}
