//! Encode ∘ decode round trips, decoding from every split of the buffer, and rejection of
//! oversized and malformed input.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tunnel_protocol::{
    ControlFrame, Credential, DecodeError, ErrorCode, GoAway, Hello, Refused, Renewed, RequestHead,
    ResponseHead, StreamError, StreamFrame, Welcome, MAX_DATA_FRAME_LEN, MAX_HEAD_FRAME_LEN,
};

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    h.append("x-multi", HeaderValue::from_static("a"));
    h.append("x-multi", HeaderValue::from_static("b"));
    h.insert("x-bin", HeaderValue::from_bytes(b"\xfe\xff ok").unwrap());
    // One of the names the decoder shares instead of allocating.
    h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
    h
}

fn stream_frames() -> Vec<StreamFrame> {
    vec![
        StreamFrame::RequestHead(RequestHead {
            request_id: "0192-abc".into(),
            target: "app".into(),
            method: Method::from_bytes(b"PROPFIND").unwrap(),
            path_and_query: "/a%2Fb/c?q=%20&r".into(),
            headers: headers(),
            content_length: Some(1 << 40),
        }),
        StreamFrame::RequestHead(RequestHead {
            request_id: String::new(),
            target: "t".into(),
            method: Method::GET,
            path_and_query: "/".into(),
            headers: HeaderMap::new(),
            content_length: None,
        }),
        StreamFrame::ResponseHead(ResponseHead {
            status: StatusCode::IM_A_TEAPOT,
            headers: headers(),
        }),
        StreamFrame::Data(Bytes::from_static(b"hello")),
        StreamFrame::Trailers(headers()),
        StreamFrame::Error(StreamError {
            code: ErrorCode::BACKEND_TIMEOUT,
            message: "slow ü".into(),
        }),
    ]
}

fn control_frames() -> Vec<ControlFrame> {
    vec![
        ControlFrame::Hello(Hello {
            tenant: "demo".into(),
            credential: Credential::Secret("s3cret".into()),
            connector_version: "connector/0.1.0".into(),
            connector_id: "c-1".into(),
            targets: vec!["echo".into(), "app".into()],
        }),
        ControlFrame::Hello(Hello {
            tenant: "demo".into(),
            credential: Credential::Token("eyJ".into()),
            connector_version: String::new(),
            connector_id: String::new(),
            targets: vec![],
        }),
        ControlFrame::Welcome(Welcome {
            session_id: "s".into(),
            relay_node: "n".into(),
            token: "t".into(),
            expires_in_secs: 600,
            nodes: vec![],
        }),
        ControlFrame::Welcome(Welcome {
            session_id: "s".into(),
            relay_node: "n".into(),
            token: String::new(),
            expires_in_secs: 600,
            nodes: vec![
                tunnel_protocol::NodeAddress {
                    name: "relay-2".into(),
                    address: "relay-2.example.com:443".into(),
                },
                tunnel_protocol::NodeAddress {
                    name: "relay-3".into(),
                    address: "[2001:db8::3]:443".into(),
                },
            ],
        }),
        ControlFrame::Refused(Refused {
            code: ErrorCode::AUTH_FAILED,
            message: "no".into(),
            retry_after_secs: 3,
        }),
        ControlFrame::Renew(Credential::Token("x".into())),
        ControlFrame::Renewed(Renewed {
            token: "y".into(),
            expires_in_secs: 1,
        }),
        ControlFrame::Ping(u64::MAX),
        ControlFrame::Pong(0),
        ControlFrame::GoAway(GoAway {
            code: ErrorCode::GOING_AWAY,
            message: "bye".into(),
        }),
        ControlFrame::Nodes(vec![]),
        ControlFrame::Nodes(vec![tunnel_protocol::NodeAddress {
            name: "relay-4".into(),
            address: "10.0.0.4:443".into(),
        }]),
    ]
}

#[test]
fn stream_frames_round_trip_from_every_split() {
    let frames = stream_frames();
    let mut wire = BytesMut::new();
    for f in &frames {
        f.encode(&mut wire);
    }
    let wire = wire.freeze();
    for split in 0..=wire.len() {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&wire[..split], &wire[split..]] {
            buf.extend_from_slice(part);
            while let Some(f) = StreamFrame::decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames, "split at {split}");
        assert!(buf.is_empty());
    }
}

/// `encoded_len` is what `encode` writes (an upper bound for an error's message), so the one
/// reservation it makes is never short.
#[test]
fn encoded_len_is_what_encode_writes() {
    let mut frames = stream_frames();
    frames.push(StreamFrame::Data(Bytes::new()));
    frames.push(StreamFrame::Data(Bytes::from(vec![
        7u8;
        2 * MAX_DATA_FRAME_LEN
            + 1
    ])));
    for f in &frames {
        let mut wire = BytesMut::new();
        f.encode(&mut wire);
        match f {
            StreamFrame::Error(_) => assert!(wire.len() <= f.encoded_len(), "{f:?}"),
            _ => assert_eq!(wire.len(), f.encoded_len(), "{f:?}"),
        }
        // Reserved once and never grown: the capacity is the reservation (or the allocator's
        // 8-byte minimum). Grown by doubling, it would overshoot the length.
        assert!(wire.capacity() <= f.encoded_len().max(8), "{f:?}");
    }
}

#[test]
fn control_frames_round_trip_from_every_split() {
    let frames = control_frames();
    let mut wire = BytesMut::new();
    for f in &frames {
        f.encode(&mut wire);
    }
    let wire = wire.freeze();
    for split in 0..=wire.len() {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&wire[..split], &wire[split..]] {
            buf.extend_from_slice(part);
            while let Some(f) = ControlFrame::decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames, "split at {split}");
    }
}

#[test]
fn decoding_byte_by_byte_needs_more_until_the_last_byte() {
    let mut wire = BytesMut::new();
    stream_frames()[0].encode(&mut wire);
    let mut buf = BytesMut::new();
    for (i, b) in wire.iter().enumerate() {
        buf.put_u8(*b);
        let got = StreamFrame::decode(&mut buf).unwrap();
        assert_eq!(got.is_some(), i == wire.len() - 1);
    }
}

#[test]
fn empty_data_encodes_to_nothing() {
    let mut wire = BytesMut::new();
    StreamFrame::Data(Bytes::new()).encode(&mut wire);
    assert!(wire.is_empty());
}

#[test]
fn large_data_is_split_into_acceptable_frames() {
    let data = Bytes::from(vec![7u8; MAX_DATA_FRAME_LEN * 2 + 3]);
    let mut wire = BytesMut::new();
    StreamFrame::Data(data.clone()).encode(&mut wire);
    let mut got = Vec::new();
    while let Some(StreamFrame::Data(d)) = StreamFrame::decode(&mut wire).unwrap() {
        assert!(d.len() <= MAX_DATA_FRAME_LEN);
        got.extend_from_slice(&d);
    }
    assert_eq!(got, data);
}

#[test]
fn oversized_frames_are_rejected_before_buffering() {
    // Only the 5-byte header is present: the declared length alone is enough to refuse.
    let mut buf = BytesMut::from(&[0x00, 0xff, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        StreamFrame::decode(&mut buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    let len = (MAX_HEAD_FRAME_LEN + 1) as u32;
    let mut buf = BytesMut::new();
    buf.put_u8(0x02);
    buf.put_u32(len);
    assert!(matches!(
        StreamFrame::decode(&mut buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    let mut buf = BytesMut::new();
    buf.put_u8(0x10);
    buf.put_u32(1 << 20);
    assert!(matches!(
        ControlFrame::decode(&mut buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn unknown_and_misplaced_frame_types_are_rejected() {
    let mut buf = BytesMut::from(&[0x7f, 0, 0, 0, 0][..]);
    assert_eq!(
        StreamFrame::decode(&mut buf),
        Err(DecodeError::UnexpectedFrame(0x7f))
    );
    // A control frame on a request stream and the other way round.
    let mut wire = BytesMut::new();
    ControlFrame::Ping(1).encode(&mut wire);
    assert!(matches!(
        StreamFrame::decode(&mut wire.clone()),
        Err(DecodeError::UnexpectedFrame(_))
    ));
    let mut wire = BytesMut::new();
    StreamFrame::Data(Bytes::from_static(b"x")).encode(&mut wire);
    assert!(matches!(
        ControlFrame::decode(&mut wire),
        Err(DecodeError::UnexpectedFrame(0))
    ));
}

#[test]
fn malformed_payloads_are_rejected_not_panicking() {
    let mut good = BytesMut::new();
    stream_frames()[0].encode(&mut good);
    // Every truncation of the payload with a patched length, and a byte left over.
    for cut in 5..good.len() {
        let mut buf = BytesMut::from(&good[..cut]);
        let len = (cut - 5) as u32;
        buf[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(StreamFrame::decode(&mut buf).is_err(), "cut at {cut}");
    }
    let mut extra = BytesMut::from(&good[..]);
    extra.put_u8(0);
    let len = (extra.len() - 5) as u32;
    extra[1..5].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        StreamFrame::decode(&mut extra),
        Err(DecodeError::Malformed("request head"))
    );
}

#[test]
fn invalid_headers_and_versions_are_rejected() {
    // A response head whose header value carries CR LF (response splitting).
    let mut buf = BytesMut::new();
    buf.put_u8(0x03);
    let payload: &[u8] = &[1, 0, 200, 0, 1, 0, 1, b'x', 0, 4, b'a', b'\r', b'\n', b'b'];
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    assert!(matches!(
        StreamFrame::decode(&mut buf),
        Err(DecodeError::InvalidHeader(_))
    ));
    // Version 9.
    let mut buf = BytesMut::new();
    buf.put_u8(0x03);
    buf.put_u32(5);
    buf.put_slice(&[9, 0, 200, 0, 0]);
    assert_eq!(
        StreamFrame::decode(&mut buf),
        Err(DecodeError::UnsupportedVersion(9))
    );
    // A header count above the limit is refused before anything is read.
    let mut buf = BytesMut::new();
    buf.put_u8(0x01);
    buf.put_u32(2);
    buf.put_u16(60000);
    assert_eq!(
        StreamFrame::decode(&mut buf),
        Err(DecodeError::TooManyHeaders(60000))
    );
}

#[test]
fn secrets_never_show_in_debug_output() {
    for f in control_frames() {
        let text = format!("{f:?}");
        for secret in ["s3cret", "eyJ", "\"t\"", "\"x\"", "\"y\""] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}

#[test]
fn error_codes_have_names() {
    assert_eq!(
        ErrorCode::BACKEND_TIMEOUT.to_string(),
        "backend_timeout(0x22)"
    );
    assert_eq!(ErrorCode(0xdead).name(), "unknown");
}

#[test]
fn a_welcome_without_the_node_list_decodes_with_none() {
    // What a relay that predates the node list sends: the same frame without the last field.
    let welcome = ControlFrame::Welcome(Welcome {
        session_id: "s".into(),
        relay_node: "n".into(),
        token: "t".into(),
        expires_in_secs: 600,
        nodes: vec![],
    });
    // A Welcome without nodes is encoded without the list, exactly as before it existed.
    let mut buf = BytesMut::new();
    welcome.encode(&mut buf);
    let mut old = BytesMut::new();
    // Three one-byte strings (u16 length each) and the u32 lifetime.
    old.put_u8(buf[0]);
    old.put_u32(3 * 3 + 4);
    for s in ["s", "n", "t"] {
        old.put_u16(s.len() as u16);
        old.put_slice(s.as_bytes());
    }
    old.put_u32(600);
    assert_eq!(buf, old);
    assert_eq!(ControlFrame::decode(&mut buf).unwrap(), Some(welcome));
    // A list longer than the limit is refused.
    let mut long = BytesMut::new();
    ControlFrame::Welcome(Welcome {
        session_id: "s".into(),
        relay_node: "n".into(),
        token: String::new(),
        expires_in_secs: 1,
        nodes: vec![],
    })
    .encode(&mut long);
    long.put_u16(tunnel_protocol::MAX_WELCOME_NODES as u16 + 1);
    let len = (long.len() - tunnel_protocol::FRAME_HEADER_LEN) as u32;
    long[1..5].copy_from_slice(&len.to_be_bytes());
    assert!(ControlFrame::decode(&mut long).is_err());
}

#[test]
fn reserved_control_frame_types_are_skipped_for_newer_peers() {
    // A later version's control frame (0x19..=0x1f) with a payload, then a Ping: the first is
    // skipped as Unknown, the Ping still arrives. Beyond the reserved range stays an error.
    let mut wire = BytesMut::from(&[0x1c, 0, 0, 0, 3, 1, 2, 3][..]);
    ControlFrame::Ping(9).encode(&mut wire);
    assert_eq!(
        ControlFrame::decode(&mut wire).unwrap(),
        Some(ControlFrame::Unknown(0x1c))
    );
    assert_eq!(
        ControlFrame::decode(&mut wire).unwrap(),
        Some(ControlFrame::Ping(9))
    );
    let mut wire = BytesMut::from(&[0x20, 0, 0, 0, 0][..]);
    assert_eq!(
        ControlFrame::decode(&mut wire),
        Err(DecodeError::UnexpectedFrame(0x20))
    );
    // Still bounded like every control frame.
    let mut wire = BytesMut::from(&[0x1d, 0, 1, 0, 0][..]);
    assert!(matches!(
        ControlFrame::decode(&mut wire),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}
