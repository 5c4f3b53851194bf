//! Field encoding inside a frame payload: big-endian integers, `u16`-length-prefixed strings and
//! byte strings, and header lists. The reader never allocates more than the payload it was given.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{DecodeError, MAX_HEADERS};

/// Writes payload fields.
pub(crate) struct Writer<'a>(pub(crate) &'a mut BytesMut);

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.0.put_u64(v);
    }

    /// A byte string of at most `u16::MAX` bytes; longer input is truncated at a char boundary by
    /// the callers that build it (messages) or rejected before encoding (heads).
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        let len = v.len().min(u16::MAX as usize);
        self.0.put_u16(len as u16);
        self.0.put_slice(&v[..len]);
    }

    pub(crate) fn str(&mut self, v: &str) {
        self.bytes(truncate_str(v, u16::MAX as usize).as_bytes());
    }

    pub(crate) fn headers(&mut self, headers: &HeaderMap) {
        let count = headers.len().min(MAX_HEADERS);
        self.u16(count as u16);
        for (name, value) in headers.iter().take(count) {
            self.bytes(name.as_str().as_bytes());
            self.bytes(value.as_bytes());
        }
    }
}

/// The bytes [`Writer::headers`] writes for `headers`.
pub(crate) fn headers_len(headers: &HeaderMap) -> usize {
    2 + headers
        .iter()
        .take(MAX_HEADERS)
        .map(|(name, value)| {
            4 + name.as_str().len().min(u16::MAX as usize) + value.len().min(u16::MAX as usize)
        })
        .sum::<usize>()
}

/// Header names that cross the tunnel on nearly every request (the relay's forwarding headers)
/// or response but are not among `http`'s standard names, which `HeaderName::from_bytes` finds
/// without allocating. Any other name costs an allocation and a copy; these are shared statics.
static FREQUENT: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-relay-request-id"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-powered-by"),
];

/// Fields a decoded header map has room for beyond those decoded.
const ROOM: usize = 2;

/// Reads payload fields; every getter fails with `Malformed(what)` when the payload is short.
pub(crate) struct Reader {
    buf: Bytes,
    what: &'static str,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, what: &'static str) -> Reader {
        Reader { buf, what }
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Malformed(self.what))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8(self.what))
    }

    pub(crate) fn headers(&mut self) -> Result<HeaderMap, DecodeError> {
        let count = self.u16()? as usize;
        if count > MAX_HEADERS {
            return Err(DecodeError::TooManyHeaders(count));
        }
        // Room for the fields the receiving side adds (the connector its backend's `Host`, the
        // relay its request id): a map filled to its capacity is rebuilt whole for one more
        // field (1.2k instructions per request in the connector).
        let mut map = HeaderMap::with_capacity(count + ROOM);
        for _ in 0..count {
            let name = self.header_name()?;
            let value = self.bytes()?;
            let value = HeaderValue::from_maybe_shared(value)
                .map_err(|_| DecodeError::InvalidHeader(self.what))?;
            map.append(name, value);
        }
        Ok(map)
    }

    /// A header name, read from the buffer in place (a name is never kept as read: a standard or
    /// frequent one is a shared static, any other is copied).
    fn header_name(&mut self) -> Result<HeaderName, DecodeError> {
        let len = self.u16()? as usize;
        self.need(len)?;
        let raw = &self.buf[..len];
        // Every frequent name starts with `x-`: any other name skips the search.
        let frequent = raw
            .starts_with(b"x-")
            .then(|| FREQUENT.iter().find(|k| k.as_str().as_bytes() == raw))
            .flatten();
        let name = match frequent {
            Some(known) => known.clone(),
            None => {
                HeaderName::from_bytes(raw).map_err(|_| DecodeError::InvalidHeader(self.what))?
            }
        };
        self.buf.advance(len);
        Ok(name)
    }

    /// Whether every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        !self.buf.has_remaining()
    }

    /// Fails when bytes are left over: a payload must be exactly its fields.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            Err(DecodeError::Malformed(self.what))
        } else {
            Ok(())
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block as [`Writer::headers`] lays it out, from raw names and values.
    fn block(fields: &[(&[u8], &[u8])]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u16(u16::try_from(fields.len()).unwrap());
        for (name, value) in fields {
            b.put_u16(u16::try_from(name.len()).unwrap());
            b.put_slice(name);
            b.put_u16(u16::try_from(value.len()).unwrap());
            b.put_slice(value);
        }
        b.freeze()
    }

    #[test]
    fn every_frequent_name_starts_with_x_dash() {
        // `Reader::header_name` searches the frequent names only for names that start so.
        for name in &FREQUENT {
            assert!(name.as_str().starts_with("x-"), "{name}");
        }
    }

    #[test]
    fn header_names_decode_whichever_way_they_are_found() {
        let fields: [(&[u8], &[u8]); 5] = [
            (b"x-forwarded-for", b"192.0.2.1"),
            (b"x-frame-options", b"DENY"),
            (b"content-type", b"text/plain"),
            (b"x-custom", b"1"),
            (b"accept", b"*/*"),
        ];
        let mut reader = Reader::new(block(&fields), "test");
        let map = reader.headers().unwrap();
        assert!(reader.is_empty());
        assert_eq!(map.len(), fields.len());
        for (name, value) in fields {
            let name = std::str::from_utf8(name).unwrap();
            assert_eq!(map[name].as_bytes(), value, "{name}");
        }
        // Room for the fields the receiver adds, beyond those decoded.
        assert!(map.capacity() >= fields.len() + ROOM);
        for bad in [b"x-bad name".as_slice(), b"", b"x-\n"] {
            let mut reader = Reader::new(block(&[(bad, b"v")]), "test");
            assert!(reader.headers().is_err(), "{bad:?}");
        }
    }
}
