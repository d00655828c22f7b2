//! Arbitrary bytes as the payload of compressed (RSV1) messages from a
//! server, to a client `Protocol` with permessage-deflate negotiated and
//! small limits.
//!
//! Input: `[cfg, seed, payload...]`
//! - cfg bit 0: text (else binary); bit 1: context takeover (else
//!   `server_no_context_takeover; client_no_context_takeover`); bits 2-4:
//!   fragment size (whole, 1, 3, 64, 512, 2000, 4096, whole); bits 5-6:
//!   read_chunk 64/256/1024/4096; bit 7: two messages (the payload split
//!   at a seed-chosen point).
//! - seed: read sizes (1 to 1/7/64/1500/5000 bytes), and bit 7: idle at
//!   every cut.
//!
//! Asserts: memory stays within the bound below at every step (and peak);
//! errors are typed (`InvalidCompressedData`, `MessageTooLarge` within
//! `max_message + INFLATE_CHUNK + 1`, `InvalidUtf8` for text), never
//! another kind; and the messages equal a plain reference inflate of the
//! same bytes (`wsfleet_fuzz::model`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsfleet_fuzz::{
    Drain, INFLATE_STEP, Lcg, OUTBOUND_SLACK, Plan, drive, drop_and_check, machine, model,
};
use wsfleet_proto::deflate::{DeflateConfig, INFLATE_CONTEXT_BYTES};
use wsfleet_proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_header};
use wsfleet_proto::{Event, Limits, ProtocolError, Role};

const MAX_FRAME: usize = 4 * 1024;
const MAX_MESSAGE: usize = 16 * 1024;

fn frame(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: OpCode, payload: &[u8]) {
    let h = FrameHeader {
        fin,
        rsv,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    };
    let mut head = [0; MAX_HEADER_LEN];
    let n = encode_header(&h, &mut head);
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

fuzz_target!(|data: &[u8]| {
    let [cfg, seed, payload @ ..] = data else {
        return;
    };
    let text = cfg & 1 != 0;
    let takeover = cfg & 2 != 0;
    let frag = [0, 1, 3, 64, 512, 2000, 4096, 0][usize::from((cfg >> 2) & 7)];
    let read_chunk = [64, 256, 1024, 4096][usize::from((cfg >> 5) & 3)];
    let limits = Limits::default()
        .with_max_frame_payload(MAX_FRAME)
        .with_max_message(MAX_MESSAGE)
        .with_max_outbound_bytes(256)
        .with_read_chunk(read_chunk);
    let params = if takeover {
        DeflateConfig::default()
            .with_context_takeover()
            .accept("permessage-deflate")
    } else {
        DeflateConfig::default()
            .accept("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    }
    .unwrap();

    let mut rng = Lcg(u64::from(*seed) | 0x100);
    let messages: Vec<&[u8]> = if cfg & 0x80 != 0 {
        let (a, b) = payload.split_at(rng.below(payload.len() + 1));
        vec![a, b]
    } else {
        vec![payload]
    };
    let mut stream = Vec::new();
    for m in &messages {
        let size = if frag == 0 { MAX_FRAME } else { frag };
        let pieces: Vec<&[u8]> = if m.is_empty() {
            vec![&m[..]]
        } else {
            m.chunks(size).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let (rsv, op) = match (i, text) {
                (0, true) => (0b100, OpCode::Text),
                (0, false) => (0b100, OpCode::Binary),
                _ => (0, OpCode::Continuation),
            };
            frame(&mut stream, i + 1 == pieces.len(), rsv, op, piece);
        }
    }
    let step = [1, 7, 64, 1500, 5000][usize::from(*seed % 5)];
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        at += 1 + rng.below(step);
        cuts.push(at);
    }
    let plan = Plan {
        cuts,
        drain: Drain::Full,
        idle_at_cuts: seed & 0x80 != 0,
    };

    // What one connection may hold while a compressed message arrives: the
    // compressed message being reassembled (<= max_message), the inflate
    // output (<= max_message + 1: growth stops one byte past the limit),
    // the inflate context, the read buffer (one frame + header + a chunk),
    // and the outbound queue with its forced control replies.
    let bound = MAX_MESSAGE
        + (MAX_MESSAGE + 1)
        + INFLATE_CONTEXT_BYTES
        + (MAX_FRAME + MAX_HEADER_LEN + read_chunk)
        + (256 + OUTBOUND_SLACK);

    let (mut p, budget) = machine(Role::Client, limits, Some(params));
    let outcome = drive(&mut p, &budget, bound, &stream, &plan);
    let peak = p.peak_buffered_bytes();
    assert!(peak <= bound, "peak {peak} > {bound}");
    drop_and_check(p, &budget);

    match &outcome.error {
        None => assert_eq!(outcome.events.len(), messages.len(), "messages lost"),
        Some(ProtocolError::InvalidCompressedData) => {}
        Some(ProtocolError::InvalidUtf8) if text => {}
        Some(ProtocolError::MessageTooLarge { len, max }) => {
            assert_eq!(*max, MAX_MESSAGE);
            assert!(
                *len as usize <= MAX_MESSAGE + INFLATE_STEP + 1,
                "inflated to {len}"
            );
        }
        Some(e) => panic!("untyped/unexpected error {e:?}"),
    }
    for e in &outcome.events {
        assert!(
            matches!(e, Event::Message(m) if m.is_text() == text),
            "event {e:?}"
        );
    }
    let (events, error) = model(Role::Client, &limits, Some(params), &stream);
    assert_eq!(
        outcome.events, events,
        "messages differ from a plain inflate"
    );
    match (&error, &outcome.error) {
        (None, None) => {}
        (Some(m), Some(e)) if m.matches(e) => {}
        (m, e) => panic!("error {e:?}, model expects {m:?}"),
    }
    // The messages carried their charge; dropped, every byte is back.
    drop(outcome);
    assert_eq!(budget.held(), 0, "charge kept after the messages were dropped");
});
