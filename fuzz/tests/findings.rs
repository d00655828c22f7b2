//! Minimal reproducers of the fuzzing findings in `fuzz/findings.md`, as
//! tests on the public API of `wsfleet-proto`. A new finding's test is
//! `#[ignore]`d until fixed (check a fix with
//! `cargo test --manifest-path fuzz/Cargo.toml --test findings -- --ignored`);
//! fixed ones run as ordinary tests. F1 is not here: it was resolved in the
//! docs, and `wsfleet-proto` tests the documented bound
//! (`receiving_compressed_stays_within_the_documented_max_buffered`).

use wsfleet_proto::deflate::DeflateConfig;
use wsfleet_proto::handshake::{HandshakeRequest, accept_key, accept_response, parse_request};
use wsfleet_proto::{Event, FixedKey, Limits, Message, Protocol};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// F2: with context takeover, a message that ends in a final (BFINAL=1)
/// deflate block leaves the inflater finished; every later compressed
/// message then "inflates" to nothing and is delivered empty. Data loss,
/// silently.
#[test]
fn f2_message_after_a_final_block_is_not_lost() {
    let params = DeflateConfig::default()
        .with_context_takeover()
        .accept("permessage-deflate")
        .unwrap();
    let mut p =
        Protocol::client(Limits::default(), Box::new(FixedKey([0; 4]))).with_deflate(params);
    // "a" compressed with Z_FINISH (BFINAL=1), then "b" with Z_SYNC_FLUSH.
    p.feed(&hex("c1 03 4b0400   c1 03 4a0200")).unwrap();
    assert_eq!(
        p.poll_event().unwrap(),
        Some(Event::Message(Message::text("a")))
    );
    assert_eq!(
        p.poll_event().unwrap(),
        Some(Event::Message(Message::text("b")))
    );
}

/// F3: `HandshakeRequest::encode` accepts an empty path, and control bytes
/// other than CR, LF and NUL in the path, Host, Origin and header values;
/// the request it writes is then refused by any HTTP parser (ours included)
/// instead of failing locally with `InvalidRequestHeader`.
#[test]
fn f3_encode_refuses_what_no_server_parses() {
    let limits = Limits::default();
    for req in [
        HandshakeRequest::new("example.com", "", [0x42; 16]),
        HandshakeRequest::new("example.com", "/a\x01b", [0x42; 16]),
        HandshakeRequest::new("example.com", "/", [0x42; 16]).header("X-A", "a\x7fb"),
        HandshakeRequest::new("exa\x1bmple.com", "/", [0x42; 16]),
    ] {
        if let Ok(wire) = req.encode() {
            let parsed = parse_request(&wire, &limits);
            assert!(
                matches!(parsed, Ok(Some(_))),
                "encode() wrote {:?}, which parses as {parsed:?}",
                String::from_utf8_lossy(&wire)
            );
        }
    }
}

/// F4: `parse_request` takes any 24 bytes as `Sec-WebSocket-Key` (RFC 6455
/// §4.2.1 wants base64 of 16 bytes, else 400), and keeps non-UTF-8 ones
/// lossily: the key comes back altered (26 bytes), so `accept_response`
/// answers with the accept value of a key the client never sent.
#[test]
fn f4_request_key_must_be_base64_of_16_bytes() {
    let mut wire = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        .to_vec();
    let key = hex("4277634842 8c 634842776348427763484277634842773d3d"); // "BwcHB\x8ccHB...w=="
    wire.extend_from_slice(&key);
    wire.extend_from_slice(b"\r\n\r\n");
    match parse_request(&wire, &Limits::default()) {
        Err(_) => {} // refused: the fix
        Ok(Some((req, _))) => {
            let answer = String::from_utf8(accept_response(&req, None)).unwrap();
            let right = accept_key(&key);
            panic!(
                "accepted key {:?}; answer carries accept of the altered key, not {right}:\n{answer}",
                req.key
            );
        }
        Ok(None) => panic!("complete request reported incomplete"),
    }
}
