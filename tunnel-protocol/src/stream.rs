//! Frames on a request stream: the heads, body data, trailers and a stream-level error.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};

use crate::codec::{Reader, Writer};
use crate::frame::{put_header, split_frame, MAX_DATA_FRAME_LEN, MAX_HEAD_FRAME_LEN};
use crate::{DecodeError, ErrorCode, VERSION};

/// Most header fields in one head or trailer block. The relay's own visitor limit is lower.
pub const MAX_HEADERS: usize = 256;

/// Longest `Error` message; longer ones are truncated when encoded.
const MAX_ERROR_MESSAGE_LEN: usize = 1024;

const DATA: u8 = 0x00;
const TRAILERS: u8 = 0x01;
const REQUEST_HEAD: u8 = 0x02;
const RESPONSE_HEAD: u8 = 0x03;
const ERROR: u8 = 0x04;

/// One frame on a request stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamFrame {
    /// Body bytes (at most [`MAX_DATA_FRAME_LEN`] per frame).
    Data(Bytes),
    /// The connector's answer cannot be given: what failed, for the relay to map to a status.
    Error(StreamError),
    /// First frame relay → connector.
    RequestHead(RequestHead),
    /// First frame connector → relay on success.
    ResponseHead(ResponseHead),
    /// Trailer fields after the body, before FIN.
    Trailers(HeaderMap),
}

/// The request as the relay hands it to the connector.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHead {
    /// The id the relay gave this request (`x-relay-request-id`, audit log).
    pub request_id: String,
    /// The target name the connector resolves to a backend base URL.
    pub target: String,
    /// The HTTP method.
    pub method: Method,
    /// The path below the target base, starting with `/`, with the query, exactly as received.
    pub path_and_query: String,
    /// The headers to send to the backend (already stripped of hop-by-hop headers by the relay).
    pub headers: HeaderMap,
    /// The request body length when the visitor declared it; `None` for a streamed body.
    pub content_length: Option<u64>,
}

/// A [`RequestHead`] to encode from borrowed parts: the relay encodes each head once, from the
/// request's own strings, without copying them into a `RequestHead` first.
#[derive(Debug, Clone, Copy)]
pub struct RequestHeadRef<'a> {
    /// See [`RequestHead::request_id`].
    pub request_id: &'a str,
    /// See [`RequestHead::target`].
    pub target: &'a str,
    /// See [`RequestHead::method`].
    pub method: &'a Method,
    /// See [`RequestHead::path_and_query`].
    pub path_and_query: &'a str,
    /// See [`RequestHead::headers`].
    pub headers: &'a HeaderMap,
    /// See [`RequestHead::content_length`].
    pub content_length: Option<u64>,
}

impl RequestHeadRef<'_> {
    /// Appends the encoded `RequestHead` frame to `dst`, as [`StreamFrame::encode`] does.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(crate::FRAME_HEADER_LEN + self.fields_len());
        encode_payload(dst, REQUEST_HEAD, |w| {
            w.u8(VERSION);
            w.str(self.request_id);
            w.str(self.target);
            w.str(self.method.as_str());
            w.str(self.path_and_query);
            match self.content_length {
                Some(len) => {
                    w.u8(1);
                    w.u64(len);
                }
                None => w.u8(0),
            }
            w.headers(self.headers);
        });
    }

    /// The payload's length.
    fn fields_len(&self) -> usize {
        1 + 2 * 4
            + self.request_id.len()
            + self.target.len()
            + self.method.as_str().len()
            + self.path_and_query.len()
            + if self.content_length.is_some() { 9 } else { 1 }
            + crate::codec::headers_len(self.headers)
    }
}

impl RequestHead {
    /// The head as borrowed parts.
    pub fn as_ref(&self) -> RequestHeadRef<'_> {
        RequestHeadRef {
            request_id: &self.request_id,
            target: &self.target,
            method: &self.method,
            path_and_query: &self.path_and_query,
            headers: &self.headers,
            content_length: self.content_length,
        }
    }
}

/// The response head as the connector hands it back.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHead {
    /// The backend's status.
    pub status: StatusCode,
    /// The backend's headers.
    pub headers: HeaderMap,
}

/// Why the connector could not produce a response.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamError {
    /// What went wrong, in the protocol's vocabulary.
    pub code: ErrorCode,
    /// A short human-readable detail for the relay's log (never shown to visitors).
    pub message: String,
}

impl StreamFrame {
    /// Appends the encoded frame to `dst`. A `Data` frame longer than [`MAX_DATA_FRAME_LEN`] is a
    /// caller bug (split it first); it is encoded as several frames so the peer still accepts it.
    pub fn encode(&self, dst: &mut BytesMut) {
        // Sized once up front: grown field by field, a head's buffer was reallocated (and
        // copied) about eight times on its way from empty to a few hundred bytes. (A request
        // head sizes its buffer itself.)
        if !matches!(self, StreamFrame::RequestHead(_)) {
            dst.reserve(self.encoded_len());
        }
        match self {
            StreamFrame::Data(data) => {
                for chunk in data.chunks(MAX_DATA_FRAME_LEN) {
                    put_header(dst, DATA, chunk.len());
                    dst.extend_from_slice(chunk);
                }
            }
            StreamFrame::Trailers(headers) => {
                encode_payload(dst, TRAILERS, |w| w.headers(headers));
            }
            StreamFrame::RequestHead(head) => head.as_ref().encode(dst),
            StreamFrame::ResponseHead(head) => encode_payload(dst, RESPONSE_HEAD, |w| {
                w.u8(VERSION);
                w.u16(head.status.as_u16());
                w.headers(&head.headers);
            }),
            StreamFrame::Error(err) => encode_payload(dst, ERROR, |w| {
                w.u32(err.code.0);
                w.str(crate::codec::truncate_str(
                    &err.message,
                    MAX_ERROR_MESSAGE_LEN,
                ));
            }),
        }
    }

    /// The bytes [`StreamFrame::encode`] appends for `Data` frames carrying `body_bytes`.
    pub fn data_len(body_bytes: usize) -> usize {
        body_bytes + body_bytes.div_ceil(MAX_DATA_FRAME_LEN) * crate::FRAME_HEADER_LEN
    }

    /// The bytes [`StreamFrame::encode`] writes (exact for data, trailers and heads; an upper
    /// bound for errors).
    pub fn encoded_len(&self) -> usize {
        let fields = match self {
            StreamFrame::Data(data) => return StreamFrame::data_len(data.len()),
            StreamFrame::Trailers(headers) => crate::codec::headers_len(headers),
            StreamFrame::RequestHead(head) => head.as_ref().fields_len(),
            StreamFrame::ResponseHead(head) => 1 + 2 + crate::codec::headers_len(&head.headers),
            StreamFrame::Error(err) => 4 + 2 + err.message.len().min(MAX_ERROR_MESSAGE_LEN),
        };
        crate::FRAME_HEADER_LEN + fields
    }

    /// Decodes one frame from the front of `src`.
    ///
    /// `Ok(None)`: need more bytes (nothing consumed). `Err`: the peer sent something this version
    /// never accepts; reset the stream with [`ErrorCode::PROTOCOL_ERROR`].
    pub fn decode(src: &mut BytesMut) -> Result<Option<StreamFrame>, DecodeError> {
        let Some((frame_type, payload)) = split_frame(src, limit)? else {
            return Ok(None);
        };
        let frame = match frame_type {
            DATA => StreamFrame::Data(payload),
            TRAILERS => {
                let mut r = Reader::new(payload, "trailers");
                let headers = r.headers()?;
                r.finish()?;
                StreamFrame::Trailers(headers)
            }
            REQUEST_HEAD => {
                let mut r = Reader::new(payload, "request head");
                check_version(r.u8()?)?;
                let request_id = r.string()?;
                let target = r.string()?;
                let method = Method::from_bytes(&r.bytes()?)
                    .map_err(|_| DecodeError::Malformed("request head"))?;
                let path_and_query = r.string()?;
                let content_length = match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    _ => return Err(DecodeError::Malformed("request head")),
                };
                let headers = r.headers()?;
                r.finish()?;
                StreamFrame::RequestHead(RequestHead {
                    request_id,
                    target,
                    method,
                    path_and_query,
                    headers,
                    content_length,
                })
            }
            RESPONSE_HEAD => {
                let mut r = Reader::new(payload, "response head");
                check_version(r.u8()?)?;
                let status = StatusCode::from_u16(r.u16()?)
                    .map_err(|_| DecodeError::Malformed("response head"))?;
                let headers = r.headers()?;
                r.finish()?;
                StreamFrame::ResponseHead(ResponseHead { status, headers })
            }
            ERROR => {
                let mut r = Reader::new(payload, "stream error");
                let code = ErrorCode(r.u32()?);
                let message = r.string()?;
                r.finish()?;
                StreamFrame::Error(StreamError { code, message })
            }
            other => return Err(DecodeError::UnexpectedFrame(other)),
        };
        Ok(Some(frame))
    }
}

fn limit(frame_type: u8) -> Option<usize> {
    match frame_type {
        DATA => Some(MAX_DATA_FRAME_LEN),
        TRAILERS | REQUEST_HEAD | RESPONSE_HEAD | ERROR => Some(MAX_HEAD_FRAME_LEN),
        _ => None,
    }
}

fn check_version(v: u8) -> Result<(), DecodeError> {
    if v == VERSION {
        Ok(())
    } else {
        Err(DecodeError::UnsupportedVersion(v))
    }
}

/// Encodes a payload after a placeholder header, then patches the length in.
pub(crate) fn encode_payload(dst: &mut BytesMut, frame_type: u8, f: impl FnOnce(&mut Writer<'_>)) {
    let start = dst.len();
    put_header(dst, frame_type, 0);
    f(&mut Writer(dst));
    let len = dst.len() - start - crate::FRAME_HEADER_LEN;
    dst[start + 1..start + 5].copy_from_slice(&(len as u32).to_be_bytes());
}
