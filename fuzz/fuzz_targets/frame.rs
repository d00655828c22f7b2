//! Arbitrary bytes as a peer's frame stream, split at arbitrary points, fed
//! to a client-role and a server-role `Protocol` as the runtime feeds them.
//!
//! Input: `[cfg0, cfg1, ncuts, ncuts × u16 LE cut offsets, stream...]`
//! - cfg0 bits 0-1: read_chunk 64/256/1024/4096; bit 2: permessage-deflate
//!   negotiated; bit 3: with context takeover; bits 4-5: how output is
//!   written (full / partial / lazy / full); bit 6: the stream is described,
//!   not raw (`wsfleet_fuzz::structured_stream`: reaches long, fragmented
//!   and compressed messages; masked per role); bit 7: max_fragments = 4.
//! - cfg1 bits 0-5: bytes per partial write - 1; bit 6: the socket goes
//!   idle at every cut (`release_idle_buffers`).
//!
//! Asserts, per role:
//! - `buffered_bytes() <= limits.max_buffered()` (plus the inflate context
//!   and output when deflate is on) after every step, and the budget's
//!   books equal `buffered_bytes()`; all of it returned on drop; an idle
//!   machine holds nothing;
//! - the split run's events and error equal the reference run's (one read
//!   per `read_buf`, no extra cuts), errors sticky, no event after an error
//!   or a close;
//! - both equal an independent model decoder (`wsfleet_fuzz::model`);
//! - what the machine wrote decodes, at the peer, into pongs for our pings
//!   and the right close frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsfleet_fuzz::{
    Drain, Plan, check_written, deflate_overhead, drive, drop_and_check, machine, model,
    structured_stream,
};
use wsfleet_proto::deflate::DeflateConfig;
use wsfleet_proto::{Limits, Role};

fuzz_target!(|data: &[u8]| {
    let [cfg0, cfg1, ncuts, rest @ ..] = data else {
        return;
    };
    let ncuts = usize::from(*ncuts % 17);
    if rest.len() < 2 * ncuts {
        return;
    }
    let (cut_bytes, stream) = rest.split_at(2 * ncuts);
    let cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();

    let mut limits = Limits::default()
        .with_max_frame_payload(4 * 1024)
        .with_max_message(16 * 1024)
        .with_max_outbound_bytes(256)
        .with_read_chunk([64, 256, 1024, 4096][usize::from(cfg0 & 3)]);
    if cfg0 & 0x80 != 0 {
        limits = limits.with_max_fragments(4);
    }
    assert_eq!(limits.validate(), Ok(()));
    let deflate = (cfg0 & 4 != 0).then(|| {
        if cfg0 & 8 != 0 {
            DeflateConfig::default()
                .with_context_takeover()
                .accept("permessage-deflate")
                .unwrap()
        } else {
            DeflateConfig::default()
                .accept(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                )
                .unwrap()
        }
    });
    let drain = match (cfg0 >> 4) & 3 {
        1 => Drain::Partial(usize::from(cfg1 & 0x3F) + 1),
        2 => Drain::Lazy,
        _ => Drain::Full,
    };
    let plan = Plan {
        cuts,
        drain,
        idle_at_cuts: cfg1 & 0x40 != 0,
    };
    // max_buffered() bounds the buffers without compression; with deflate
    // its docs add the inflate context and output (fuzz/findings.md F1).
    let bound = limits.max_buffered() + deflate.map_or(0, |_| deflate_overhead(&limits));

    for role in [Role::Client, Role::Server] {
        let built;
        let stream = if cfg0 & 0x40 != 0 {
            built = structured_stream(stream, role, deflate.is_some());
            &built[..]
        } else {
            stream
        };
        let (mut p, budget) = machine(role, limits, deflate);
        let reference = drive(&mut p, &budget, bound, stream, &Plan::reference());
        drop_and_check(p, &budget);
        check_written(role, &reference);

        let (mut p, budget) = machine(role, limits, deflate);
        let split = drive(&mut p, &budget, bound, stream, &plan);
        drop_and_check(p, &budget);
        check_written(role, &split);
        assert_eq!(
            split.events, reference.events,
            "{role:?}: events depend on the split"
        );
        assert_eq!(
            split.error, reference.error,
            "{role:?}: error depends on the split"
        );

        let (events, error) = model(role, &limits, deflate, stream);
        assert_eq!(
            reference.events, events,
            "{role:?}: events differ from the model"
        );
        match (&error, &reference.error) {
            (None, None) => {}
            (Some(m), Some(e)) if m.matches(e) => {}
            (m, e) => panic!("{role:?}: error {e:?}, model expects {m:?}"),
        }
    }
});
