//! Throughput benchmarks of the protocol core's hot loops.
//!
//! One `bench_*` function per group; add new groups to `criterion_group!` at the bottom.
//!
//! ```text
//! cargo bench -p wsfleet-proto --bench proto -- --warm-up-time 1 --measurement-time 2
//! ```

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use wsfleet_proto::deflate::DeflateConfig;
use wsfleet_proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_header, parse_header};
use wsfleet_proto::internals::{Utf8Validator, apply_mask, mask_into_uninit, validate};
use wsfleet_proto::{FixedKey, Limits, Message, Protocol, ProtocolError};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Deterministic pseudo-random numbers (xorshift64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `len` bytes of printable ASCII.
fn ascii_text(len: usize) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..len).map(|_| b' ' + (rng.next() % 95) as u8).collect()
}

/// `len` bytes of valid UTF-8 where about 30% of the characters are multi-byte
/// (2, 3 and 4 bytes long), padded with ASCII to the exact length.
fn mixed_text(len: usize) -> Vec<u8> {
    const MULTI: [char; 8] = ['é', 'ß', 'κ', 'ж', '€', '中', '語', '😀'];
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut s = String::with_capacity(len);
    while s.len() + 4 <= len {
        let r = rng.next();
        if r % 100 < 30 {
            s.push(MULTI[(r >> 8) as usize % MULTI.len()]);
        } else {
            s.push((b' ' + ((r >> 8) % 95) as u8) as char);
        }
    }
    while s.len() < len {
        s.push('.');
    }
    s.into_bytes()
}

fn bench_unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in [64 * KIB, MIB] {
        let mut buf = vec![0x5Au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        for offset in [0, 1] {
            group.bench_with_input(
                BenchmarkId::new(format!("apply_mask/offset{offset}"), size),
                &offset,
                |b, &offset| b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), offset)),
            );
        }
    }
    // The client's send path: masking a payload into a write buffer's spare capacity.
    let src = vec![0x5Au8; 64 * KIB];
    let mut dst: Vec<u8> = Vec::with_capacity(src.len());
    group.throughput(Throughput::Bytes(src.len() as u64));
    group.bench_function(BenchmarkId::new("mask_into_uninit", src.len()), |b| {
        b.iter(|| {
            mask_into_uninit(
                black_box(&mut dst.spare_capacity_mut()[..src.len()]),
                black_box(&src),
                black_box(KEY),
            )
        })
    });
    group.finish();
}

fn bench_utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for (name, text) in [("ascii", ascii_text(MIB)), ("mixed", mixed_text(MIB))] {
        assert!(std::str::from_utf8(&text).is_ok());
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("validate", name), &text, |b, text| {
            b.iter(|| validate(black_box(text)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("feed_4k", name), &text, |b, text| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for chunk in black_box(text).chunks(4 * KIB) {
                    v.feed(chunk).unwrap();
                }
                v.finish().unwrap()
            })
        });
    }
    group.finish();
}

/// `count` unmasked server frames (text, `payload` bytes each), as a client reads them.
fn small_frames(count: usize, payload: usize) -> Vec<u8> {
    let mut wire = Vec::with_capacity(count * (payload + 2));
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode: OpCode::Text,
        mask: None,
        payload_len: payload as u64,
    };
    let mut head = [0; MAX_HEADER_LEN];
    let n = encode_header(&header, &mut head);
    for _ in 0..count {
        wire.extend_from_slice(&head[..n]);
        wire.extend(std::iter::repeat_n(b'a', payload));
    }
    wire
}

/// Frame header parse and encode, and small-frame decode through the whole
/// machine (read buffer, header checks, UTF-8, message out) in frames/s.
fn bench_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frames");
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode: OpCode::Binary,
        mask: Some([1, 2, 3, 4]),
        payload_len: 70_000,
    };
    let mut head = [0; MAX_HEADER_LEN];
    let n = encode_header(&header, &mut head);
    g.throughput(Throughput::Elements(1));
    g.bench_function("header_parse", |b| {
        b.iter(|| parse_header(black_box(&head[..n])))
    });
    g.bench_function("header_encode", |b| {
        let mut out = [0; MAX_HEADER_LEN];
        b.iter(|| encode_header(black_box(&header), &mut out))
    });

    const COUNT: usize = 10_000;
    for payload in [16usize, 128] {
        let wire = small_frames(COUNT, payload);
        g.throughput(Throughput::Elements(COUNT as u64));
        g.bench_with_input(
            BenchmarkId::new("decode_small", payload),
            &wire,
            |b, wire| {
                b.iter(|| {
                    let mut p = Protocol::client(Limits::default(), Box::new(FixedKey([0; 4])));
                    let mut rest = &wire[..];
                    let mut messages = 0;
                    while !rest.is_empty() {
                        let mut buf = p.read_buf().unwrap();
                        let take = bytes::BufMut::remaining_mut(&buf).min(rest.len());
                        bytes::BufMut::put_slice(&mut buf, &rest[..take]);
                        rest = &rest[take..];
                        while let Some(event) = p.poll_event().unwrap() {
                            black_box(event);
                            messages += 1;
                        }
                    }
                    assert_eq!(messages, COUNT);
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("encode_small_masked", payload),
            &payload,
            |b, &payload| {
                let message = Message::text("a".repeat(payload));
                let mut p = Protocol::client(Limits::default(), Box::new(FixedKey([1, 2, 3, 4])));
                b.iter(|| {
                    for _ in 0..COUNT {
                        p.send(message.clone()).unwrap();
                        let len = p.poll_transmit().len();
                        p.advance_transmit(len);
                    }
                })
            },
        );
    }
    g.finish();
}

/// One server message as permessage-deflate sends it: raw deflate, sync
/// flushed, the 4-byte trailer removed, in one RSV1 frame.
fn compressed_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut ctx = Compress::new(Compression::new(6), false);
    let mut body = Vec::with_capacity(payload.len() / 2 + 1024);
    let mut rest = payload;
    loop {
        let before = ctx.total_in();
        ctx.compress_vec(rest, &mut body, FlushCompress::Sync)
            .expect("compress");
        rest = &rest[(ctx.total_in() - before) as usize..];
        if rest.is_empty() && body.capacity() > body.len() && body.ends_with(&[0, 0, 0xff, 0xff]) {
            break;
        }
        body.reserve(body.capacity().max(1024));
    }
    body.truncate(body.len() - 4);
    let header = FrameHeader {
        fin: true,
        rsv: 0b100,
        opcode,
        mask: None,
        payload_len: body.len() as u64,
    };
    let mut head = [0; MAX_HEADER_LEN];
    let n = encode_header(&header, &mut head);
    let mut wire = head[..n].to_vec();
    wire.extend_from_slice(&body);
    wire
}

/// Bounded inflate through the whole machine (read buffer, RSV1, inflate in
/// chunks counted against the limits, UTF-8, message out), in inflated
/// bytes/s; and the cost of refusing a deflate bomb at `max_message`.
fn bench_inflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("inflate");
    let params = DeflateConfig::default()
        .accept("permessage-deflate; client_no_context_takeover; server_no_context_takeover")
        .expect("deflate parameters");
    let decode = |wire: &[u8], limits: Limits| {
        let mut p = Protocol::client(limits, Box::new(FixedKey([0; 4]))).with_deflate(params);
        let result = p.feed(wire).and_then(|()| p.poll_event());
        black_box(result)
    };
    let json = {
        let mut s = String::new();
        let mut i = 0u64;
        while s.len() < 64 * KIB {
            s.push_str(&format!(
                r#"{{"seq":{i},"symbol":"BTC-USD","bid":{},"ask":{},"ts":{}}},"#,
                40_000 + i % 97,
                40_001 + i % 89,
                1_700_000_000_000u64 + i * 7
            ));
            i += 1;
        }
        s.truncate(64 * KIB);
        s.into_bytes()
    };
    let text = compressed_frame(OpCode::Text, &json);
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_with_input(
        BenchmarkId::new("json_text", json.len()),
        &text,
        |b, wire| {
            b.iter(|| match decode(wire, Limits::default()) {
                Ok(Some(_)) => {}
                other => panic!("decode: {other:?}"),
            })
        },
    );
    // 1 MiB of zeros is about 1 KiB compressed; with max_message 64 KiB it
    // is refused after at most 64 KiB (plus one chunk) of output.
    let bomb = compressed_frame(OpCode::Binary, &vec![0u8; MIB]);
    g.throughput(Throughput::Elements(1));
    g.bench_with_input(
        BenchmarkId::new("bomb_refused", bomb.len()),
        &bomb,
        |b, wire| {
            let limits = Limits::default().with_max_message(64 * KIB);
            b.iter(|| match decode(wire, limits) {
                Err(e @ ProtocolError::MessageTooLarge { .. }) => black_box(e),
                other => panic!("a bomb was not refused for its size: {other:?}"),
            })
        },
    );
    g.finish();
}

// `criterion_group!` expands to an undocumented `pub fn`.
#[allow(missing_docs)]
mod groups {
    criterion::criterion_group!(
        benches,
        super::bench_unmask,
        super::bench_utf8,
        super::bench_frames,
        super::bench_inflate
    );
}
criterion_main!(groups::benches);
