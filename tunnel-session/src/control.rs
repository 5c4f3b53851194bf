//! The control stream: [`ControlFrame`]s over one bidirectional stream of the session.

use std::io;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tunnel_protocol::{ControlFrame, DecodeError};

use crate::transport::{RecvHalf, SendHalf};

/// Bytes read per call on the control stream.
const READ_CHUNK: usize = 4096;

/// Why the control stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The peer sent an invalid frame.
    #[error("invalid control frame: {0}")]
    Decode(#[from] DecodeError),
    /// The stream or connection failed.
    #[error("control stream: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the control stream.
    #[error("control stream closed by peer")]
    Closed,
}

/// A control stream, either side.
#[derive(Debug)]
pub struct ControlStream {
    send: SendHalf,
    recv: RecvHalf,
    buf: BytesMut,
}

impl ControlStream {
    /// Wraps the two halves of the control stream.
    pub fn new(send: impl Into<SendHalf>, recv: impl Into<RecvHalf>) -> ControlStream {
        ControlStream {
            send: send.into(),
            recv: recv.into(),
            buf: BytesMut::new(),
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ControlFrame) -> Result<(), ControlError> {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.send.write_all(&out).await?;
        Ok(())
    }

    /// The next frame. Cancel safe: bytes read so far stay buffered.
    pub async fn next(&mut self) -> Result<ControlFrame, ControlError> {
        loop {
            if let Some(frame) = ControlFrame::decode(&mut self.buf)? {
                return Ok(frame);
            }
            self.buf.reserve(READ_CHUNK);
            let n = self.recv.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(ControlError::Closed);
            }
        }
    }

    /// Finishes our side of the stream.
    pub fn finish(&mut self) {
        self.send.finish();
    }
}
