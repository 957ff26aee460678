//! Frame cases (DESIGN §12): 1009 too big, 1002 protocol violation, 1007 invalid UTF-8.

use std::time::Duration;

use herald::ws::frame::{
    parse_header, HeaderError, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use tokio::time::Instant;

use super::wire::{expect_close, header_only, raw};
use super::MAX_MESSAGE;
use crate::support::*;

async fn oversized_frame_is_1009(s: &TestServer) {
    // The header alone announces more than the cap: refused before the payload is buffered.
    let mut f = header_only(true, OP_TEXT, MAX_MESSAGE + 1);
    f.extend_from_slice(&[b'a'; 16]);
    expect_close(s, "frame header over ws.max_message_bytes", &f, 1009).await;
    let mut f = header_only(true, OP_BINARY, MAX_MESSAGE + 1);
    f.extend_from_slice(&[0; 16]);
    expect_close(s, "binary frame over ws.max_message_bytes", &f, 1009).await;
    // Under the cap frame by frame, over it after reassembly.
    let mut f = masked(false, OP_TEXT, &vec![b'a'; 40 * 1024]);
    f.extend(header_only(true, OP_CONTINUATION, 40 * 1024));
    expect_close(s, "fragments adding up to over the cap", &f, 1009).await;
}

async fn lying_frame_length_is_1002_or_1009(s: &TestServer) {
    // A 64-bit length with its most significant bit set breaks RFC 6455 §5.2: the codec
    // calls it a bad length, a protocol error (1002), not a size (1009).
    for len in [u64::MAX, 1 << 63] {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(parse_header(&f, true), Err(HeaderError::BadLength));
        expect_close(s, &format!("64-bit length {len:#x}"), &f, 1002).await;
    }
    // A legal but absurd length (2^62): a size, so 1009, decided from the header.
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 62).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    let h = parse_header(&f, true).unwrap().unwrap();
    assert_eq!(h.payload_len, 1 << 62);
    expect_close(s, "64-bit length 2^62", &f, 1009).await;
}

async fn huge_length_that_never_arrives_is_closed_idle(s: &TestServer) {
    // Under the cap, so the server waits for it; it never comes, so the idle timeout ends it.
    let mut f = header_only(true, OP_BINARY, MAX_MESSAGE - 1);
    f.extend_from_slice(&[0; 100]);
    let started = Instant::now();
    expect_close(s, "a payload that never arrives (idle timeout)", &f, 1001).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed by the idle timeout (2 s), not at once: {:?}",
        started.elapsed()
    );
}

async fn unmasked_client_frame_is_1002(s: &TestServer) {
    expect_close(s, "unmasked text frame", &[0x81, 0x02, b'h', b'i'], 1002).await;
    expect_close(s, "unmasked ping", &[0x89, 0x00], 1002).await;
}

async fn reserved_bits_are_1002(s: &TestServer) {
    for (name, bit) in [("RSV1", 0x40), ("RSV2", 0x20), ("RSV3", 0x10)] {
        let mut f = masked(true, OP_TEXT, br#"{"type":"ping"}"#);
        f[0] |= bit;
        expect_close(s, name, &f, 1002).await;
    }
}

async fn reserved_opcodes_are_1002(s: &TestServer) {
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        expect_close(s, &format!("opcode {op:#x}"), &masked(true, op, b"x"), 1002).await;
    }
}

async fn control_frame_over_125_bytes_is_1002(s: &TestServer) {
    for op in [OP_PING, OP_PONG, OP_CLOSE] {
        let mut payload = vec![b'x'; 126];
        payload[..2].copy_from_slice(&1000u16.to_be_bytes());
        let case = format!("control frame {op:#x} with 126 bytes");
        expect_close(s, &case, &masked(true, op, &payload), 1002).await;
    }
}

async fn fragmented_control_frame_is_1002(s: &TestServer) {
    for op in [OP_PING, OP_PONG, OP_CLOSE] {
        let case = format!("control frame {op:#x} with FIN=0");
        expect_close(s, &case, &masked(false, op, b""), 1002).await;
    }
}

async fn continuation_without_a_start_is_1002(s: &TestServer) {
    let f = masked(true, OP_CONTINUATION, b"x");
    expect_close(s, "final continuation first", &f, 1002).await;
    let f = masked(false, OP_CONTINUATION, b"x");
    expect_close(s, "non-final continuation first", &f, 1002).await;
    let mut f = masked(false, OP_TEXT, b"a");
    f.extend(masked(true, OP_TEXT, b"b"));
    expect_close(s, "a new message inside a fragmented one", &f, 1002).await;
}

async fn invalid_close_codes_are_1002(s: &TestServer) {
    for code in [
        0u16,
        999,
        1004,
        1005,
        1006,
        1015,
        1016,
        2999,
        5000,
        u16::MAX,
    ] {
        let f = masked(true, OP_CLOSE, &code.to_be_bytes());
        expect_close(s, &format!("close code {code}"), &f, 1002).await;
    }
    // The control: valid codes are echoed (RFC 6455 §5.5.1), so the 1002s above mean
    // something.
    for code in [1000u16, 3000, 4999] {
        let f = masked(true, OP_CLOSE, &code.to_be_bytes());
        expect_close(s, &format!("valid close code {code}"), &f, code).await;
    }
    let f = masked(true, OP_CLOSE, &[0x03]);
    expect_close(s, "close payload of one byte", &f, 1002).await;
}

async fn bad_utf8_is_1007(s: &TestServer) {
    // Split across fragments: the first ends in the lead byte of a 2-byte sequence (fine
    // so far), the continuation starts with a byte that cannot continue it.
    let mut r = raw(s, "hostile").await;
    r.send(&masked(false, OP_TEXT, &[b'a', 0xC3])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.send(&masked(true, OP_CONTINUATION, &[0x28, b'b'])).await;
    assert_eq!(
        r.close_code().await,
        Some(1007),
        "bad UTF-8 across fragments"
    );
    for (case, bytes) in [
        ("0xff", &[0x68, 0xff, 0x69][..]),
        ("overlong '/'", &[0xC0, 0xAF]),
        ("UTF-16 surrogate", &[0xED, 0xA0, 0x80]),
        ("above U+10FFFF", &[0xF4, 0x90, 0x80, 0x80]),
        ("truncated at the end", &[b'a', 0xC3]),
    ] {
        expect_close(s, case, &masked(true, OP_TEXT, bytes), 1007).await;
    }
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&[b'o', 0xff, 0xfe]);
    expect_close(s, "close reason", &masked(true, OP_CLOSE, &payload), 1007).await;
}

pub(super) async fn frame_cases(s: &TestServer) {
    oversized_frame_is_1009(s).await;
    lying_frame_length_is_1002_or_1009(s).await;
    huge_length_that_never_arrives_is_closed_idle(s).await;
    unmasked_client_frame_is_1002(s).await;
    reserved_bits_are_1002(s).await;
    reserved_opcodes_are_1002(s).await;
    control_frame_over_125_bytes_is_1002(s).await;
    fragmented_control_frame_is_1002(s).await;
    continuation_without_a_start_is_1002(s).await;
    invalid_close_codes_are_1002(s).await;
    bad_utf8_is_1007(s).await;
}
