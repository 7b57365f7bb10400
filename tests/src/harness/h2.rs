//! HTTP/2 frames written by hand, for tests that act as a client no library would be: one that
//! ignores the server's limits, never answers a PING, or never finishes a stream.

/// The client connection preface followed by an empty SETTINGS frame.
pub fn client_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out
}

/// A SETTINGS acknowledgement.
pub fn settings_ack() -> Vec<u8> {
    frame(0x4, 0x1, 0, &[])
}

/// A HEADERS frame opening stream `stream_id` (odd) with a gRPC call to `path`, without
/// END_STREAM: the call stays open, waiting for a body that never comes.
pub fn open_call(stream_id: u32, path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "portcullis"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // Literal header field without indexing, new name (RFC 7541 §6.2.2), no Huffman.
        block.push(0x00);
        push_string(&mut block, name);
        push_string(&mut block, value);
    }
    // END_HEADERS.
    frame(0x1, 0x4, stream_id, &block)
}

/// An RST_STREAM frame (CANCEL) for `stream_id`.
pub fn cancel(stream_id: u32) -> Vec<u8> {
    frame(0x3, 0, stream_id, &8u32.to_be_bytes())
}

/// One frame: 24-bit length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal of fewer than 127 bytes.
fn push_string(out: &mut Vec<u8>, s: &str) {
    let len = u8::try_from(s.len())
        .ok()
        .filter(|l| *l < 127)
        .expect("short string");
    out.push(len);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_header() {
        let f = cancel(3);
        assert_eq!(&f[..9], &[0, 0, 4, 0x3, 0, 0, 0, 0, 3]);
        let h = open_call(5, "/a/b");
        assert_eq!(h[3], 0x1);
        assert_eq!(h[4], 0x4);
        assert_eq!(usize::from(h[2]), h.len() - 9);
        assert!(client_preface().starts_with(b"PRI * HTTP/2.0"));
    }
}
