//! What a compression context costs, measured by a counting allocator, and
//! what the budget charges for it: they must agree, or a fleet's memory
//! budget would under-count every compressed connection.

use std::sync::Mutex;

use wsfleet_proto::deflate::DeflateConfig;
use wsfleet_proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_header};
use wsfleet_proto::{Event, FixedKey, Limits, Message, Protocol};
use wsfleet_testkit::measure::{CountingAlloc, live_heap_bytes};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The tests of this file measure one process-wide counter: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A text message that compresses, as a server sends it compressed.
fn compressed_frame(text: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut ctx = Compress::new(Compression::new(6), false);
    let mut body = Vec::with_capacity(text.len() + 1024);
    ctx.compress_vec(text, &mut body, FlushCompress::Sync)
        .expect("compress");
    assert!(body.ends_with(&[0, 0, 0xff, 0xff]), "one call flushes all");
    body.truncate(body.len() - 4);
    let header = FrameHeader {
        fin: true,
        rsv: 0b100,
        opcode: OpCode::Text,
        mask: None,
        payload_len: body.len() as u64,
    };
    let mut head = [0; MAX_HEADER_LEN];
    let n = encode_header(&header, &mut head);
    let mut wire = head[..n].to_vec();
    wire.extend_from_slice(&body);
    wire
}

fn text() -> String {
    "the quick brown fox jumps over the lazy dog; ".repeat(100)
}

/// With context takeover both contexts stay after a message: the heap they
/// hold and the bytes charged for them must agree within 10 %.
#[test]
fn charged_context_bytes_match_the_heap_they_hold() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = DeflateConfig::default().with_context_takeover();
    for response in [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits=12",
        "permessage-deflate; client_max_window_bits=9",
    ] {
        let params = config.accept(response).expect("accept");
        let mut p = Protocol::client(Limits::default(), Box::new(FixedKey([1, 2, 3, 4])))
            .with_deflate(params);
        let text = text();

        // Deflate: send one message, flush it, free the (empty) buffers.
        let before = live_heap_bytes();
        p.send(Message::text(text.clone())).expect("send");
        let n = p.poll_transmit().len();
        p.advance_transmit(n);
        p.release_idle_buffers();
        let held = live_heap_bytes() - before;
        let charged = p.buffered_bytes();
        assert_close(response, "deflate", held, charged);

        // Inflate: receive one compressed message, drop it.
        let before_heap = live_heap_bytes();
        let before_charge = p.buffered_bytes();
        p.feed(&compressed_frame(text.as_bytes())).expect("feed");
        match p.poll_event().expect("event") {
            Some(Event::Message(m)) => assert_eq!(m.as_text(), Some(text.as_str())),
            other => panic!("{other:?}"),
        }
        p.release_idle_buffers();
        let held = live_heap_bytes() - before_heap;
        let charged = p.buffered_bytes() - before_charge;
        assert_close(response, "inflate", held, charged);
    }
}

fn assert_close(response: &str, what: &str, held: usize, charged: usize) {
    println!("{response}: {what} context holds {held} B, charged {charged} B");
    assert!(
        charged * 10 >= held * 9 && charged * 10 <= held * 11,
        "{response}: {what} context holds {held} B of heap but {charged} B are charged"
    );
}
