//! The frame envelope shared by control and stream frames: `type: u8`, `length: u32` (big endian),
//! then `length` payload bytes. Each frame type has its own payload limit.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::DecodeError;

/// Bytes of the envelope before the payload.
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest `Data` payload. Senders split larger chunks; 64 KiB keeps per-frame buffering small.
pub const MAX_DATA_FRAME_LEN: usize = 64 * 1024;
/// Largest request/response head or trailers payload (the relay's header limits sit far below).
pub const MAX_HEAD_FRAME_LEN: usize = 64 * 1024;
/// Largest control frame payload.
pub const MAX_CONTROL_FRAME_LEN: usize = 16 * 1024;

/// Writes an envelope header for a payload of `len` bytes.
pub(crate) fn put_header(dst: &mut BytesMut, frame_type: u8, len: usize) {
    debug_assert!(u32::try_from(len).is_ok());
    dst.reserve(FRAME_HEADER_LEN + len);
    dst.put_u8(frame_type);
    dst.put_u32(len as u32);
}

/// Splits one whole frame off `src`: `Ok(None)` when more bytes are needed. The limit is checked
/// before waiting for the payload, so a peer cannot make us buffer more than `limit_for(type)`.
pub(crate) fn split_frame(
    src: &mut BytesMut,
    limit_for: impl Fn(u8) -> Option<usize>,
) -> Result<Option<(u8, Bytes)>, DecodeError> {
    if src.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let frame_type = src[0];
    let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
    let limit = limit_for(frame_type).ok_or(DecodeError::UnexpectedFrame(frame_type))?;
    if len > limit {
        return Err(DecodeError::FrameTooLarge {
            frame_type,
            len,
            limit,
        });
    }
    if src.len() < FRAME_HEADER_LEN + len {
        src.reserve(FRAME_HEADER_LEN + len - src.len());
        return Ok(None);
    }
    src.advance(FRAME_HEADER_LEN);
    Ok(Some((frame_type, src.split_to(len).freeze())))
}
