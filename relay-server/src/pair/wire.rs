//! The introduction socket's messages, as `@localfirst/relay` 4.2 (`Client.js`, `Server.js`)
//! sends them: msgpack maps (msgpackr's default `encode`), one per WebSocket message.
//!
//! Client → relay: `{type: "Join", documentIds: [..]}`, `{type: "Leave", documentIds: [..]}`,
//! `{type: "Heartbeat"}` (the published server checks for `"❤️"`; both are accepted). Unknown
//! types are ignored, as the published server does. Relay → client:
//! `{type: "Introduction", peerId, documentIds}`.

use serde::{Deserialize, Serialize};

/// Longest document id accepted in `Join`/`Leave`.
pub(crate) const MAX_DOCUMENT_ID_LEN: usize = 256;

/// What a client asks on its introduction socket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientMessage {
    /// Heartbeat, or a type this relay does not know: nothing to do.
    Ignored,
    /// Add these document ids.
    Join(Vec<String>),
    /// Remove these document ids.
    Leave(Vec<String>),
}

/// Why a message was not accepted (the socket is closed with 4400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("not a msgpack message of the pairing protocol")]
    Undecodable,
    #[error("a document id is empty or longer than {MAX_DOCUMENT_ID_LEN} bytes")]
    BadDocumentId,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "documentIds", default)]
    document_ids: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Introduction<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "peerId")]
    peer_id: &'a str,
    #[serde(rename = "documentIds")]
    document_ids: &'a [String],
}

impl ClientMessage {
    /// Decodes one message (the caller bounds its size).
    pub(crate) fn decode(bytes: &[u8]) -> Result<ClientMessage, WireError> {
        let raw: Raw = rmp_serde::from_slice(bytes).map_err(|_| WireError::Undecodable)?;
        let ids = raw.document_ids.unwrap_or_default();
        let check = |ids: Vec<String>| {
            if ids
                .iter()
                .any(|d| d.is_empty() || d.len() > MAX_DOCUMENT_ID_LEN)
            {
                Err(WireError::BadDocumentId)
            } else {
                Ok(ids)
            }
        };
        Ok(match raw.kind.as_str() {
            "Join" => ClientMessage::Join(check(ids)?),
            "Leave" => ClientMessage::Leave(check(ids)?),
            _ => ClientMessage::Ignored,
        })
    }
}

/// Encodes `{type: "Introduction", peerId, documentIds}` as a msgpack map.
pub(crate) fn introduction(peer_id: &str, document_ids: &[String]) -> Vec<u8> {
    let message = Introduction {
        kind: "Introduction",
        peer_id,
        document_ids,
    };
    // Strings and a sequence of strings always encode: no error path exists here.
    rmp_serde::to_vec_named(&message).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes msgpackr 1.11 (the npm client's encoder) produces for
    /// `encode({type: "Join", documentIds: ["doc-1"]})` and `encode({type: "Heartbeat"})`.
    const JOIN: &str = "de0002a474797065a44a6f696eab646f63756d656e7449647391a5646f632d31";
    const HEARTBEAT: &str = "de0001a474797065a9486561727462656174";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_what_the_npm_client_sends() {
        assert_eq!(
            ClientMessage::decode(&hex(JOIN)),
            Ok(ClientMessage::Join(vec!["doc-1".into()]))
        );
        assert_eq!(
            ClientMessage::decode(&hex(HEARTBEAT)),
            Ok(ClientMessage::Ignored)
        );
    }

    #[test]
    fn refuses_garbage_and_bad_document_ids() {
        assert_eq!(ClientMessage::decode(b"hello"), Err(WireError::Undecodable));
        let long = "x".repeat(MAX_DOCUMENT_ID_LEN + 1);
        let bytes = rmp_serde::to_vec_named(&Raw2 {
            kind: "Join",
            document_ids: vec![long],
        })
        .unwrap();
        assert_eq!(ClientMessage::decode(&bytes), Err(WireError::BadDocumentId));
    }

    #[derive(Serialize)]
    struct Raw2 {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "documentIds")]
        document_ids: Vec<String>,
    }

    #[test]
    fn introduction_is_a_map_with_the_client_field_names() {
        let bytes = introduction("bob", &["doc-1".to_string()]);
        // fixmap of 3, then "type": "Introduction", "peerId": "bob", "documentIds": ["doc-1"].
        assert_eq!(bytes[0], 0x83);
        let text = String::from_utf8_lossy(&bytes);
        for s in [
            "type",
            "Introduction",
            "peerId",
            "bob",
            "documentIds",
            "doc-1",
        ] {
            assert!(text.contains(s), "{s} missing");
        }
    }
}
