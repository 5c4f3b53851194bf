//! The control stream: [`ControlFrame`]s over one bidirectional stream of the session.

use std::io;

use bytes::BytesMut;
use tunnel_protocol::{ControlFrame, DecodeError};

use crate::transport::{RecvHalf, SendHalf};

/// The most read per call on the control stream.
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
    ///
    /// Reads the transport's chunks as they arrived instead of into a buffer reserved ahead, and
    /// lets the buffer go once a frame leaves nothing behind: a session spends nearly all its
    /// life waiting here, and a reserved buffer was 4 KiB of every idle session (a tenth of the
    /// relay's memory per session).
    pub async fn next(&mut self) -> Result<ControlFrame, ControlError> {
        loop {
            if let Some(frame) = ControlFrame::decode(&mut self.buf)? {
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
                return Ok(frame);
            }
            match self.recv.read_chunk(READ_CHUNK).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Err(ControlError::Closed),
            }
        }
    }

    /// Finishes our side of the stream.
    pub fn finish(&mut self) {
        self.send.finish();
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::timeout;
    use tunnel_protocol::{Credential, Hello};

    use super::*;
    use crate::mux::tests::{cfg, pair, SECS5};

    #[tokio::test]
    async fn frames_in_any_chunking_and_no_buffer_kept_between_them() {
        let (a, b) = pair(cfg(), cfg());
        let (send, _keep) = a.open_bi().await.unwrap();
        let mut send = SendHalf::from(send);
        // Two frames in one write: the second waits in the buffer after the first.
        let mut both = BytesMut::new();
        ControlFrame::Ping(1).encode(&mut both);
        ControlFrame::Ping(2).encode(&mut both);
        send.write_all(&both).await.unwrap();
        let (back, recv) = timeout(SECS5, b.accept_bi()).await.unwrap().unwrap();
        let mut control = ControlStream::new(back, recv);
        let first = timeout(SECS5, control.next()).await.unwrap().unwrap();
        assert_eq!(first, ControlFrame::Ping(1));
        assert!(!control.buf.is_empty());
        let second = timeout(SECS5, control.next()).await.unwrap().unwrap();
        assert_eq!(second, ControlFrame::Ping(2));
        assert_eq!(
            control.buf.capacity(),
            0,
            "an idle control stream holds no buffer"
        );

        // A frame larger than one read (and than one multiplexer frame), in pieces.
        let hello = ControlFrame::Hello(Hello {
            tenant: "acme".into(),
            credential: Credential::Token("t".repeat(200)),
            connector_version: "connector/0.1.0".into(),
            connector_id: "c1".into(),
            targets: (0..100).map(|i| format!("{i:0>60}")).collect(),
        });
        let mut encoded = BytesMut::new();
        hello.encode(&mut encoded);
        assert!(encoded.len() > READ_CHUNK);
        for piece in encoded.chunks(1000) {
            send.write_all(piece).await.unwrap();
        }
        let got = timeout(SECS5, control.next()).await.unwrap().unwrap();
        assert_eq!(got, hello);
        assert_eq!(control.buf.capacity(), 0);

        send.finish();
        let end = timeout(SECS5, control.next()).await.unwrap();
        assert!(matches!(end, Err(ControlError::Closed)), "{end:?}");
    }
}
