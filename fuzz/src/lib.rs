//! Shared harness for the `wsfleet-proto` fuzz targets (`fuzz_targets/*.rs`).
//!
//! - [`drive`] feeds a byte stream to a [`Protocol`] exactly as the runtime
//!   does (read into `read_buf`, `poll_event` until `Ok(None)`/`Err`, write
//!   what `poll_transmit` returns) and checks the memory invariants after
//!   every step.
//! - [`model`] is an independent, deliberately naive decoder of the same
//!   stream (whole frames, `std` UTF-8, a plain inflate): the reference the
//!   machine's events are compared with.
//! - [`check_written`] decodes what the machine wrote with a peer machine.
//!
//! Everything here panics on a broken invariant: that is how libFuzzer
//! learns about it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BufMut;
use flate2::{Decompress, FlushDecompress, Status};
use wsfleet_proto::deflate::{DeflateParams, INFLATE_CHUNK, INFLATE_CONTEXT_BYTES};
use wsfleet_proto::frame::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use wsfleet_proto::{
    Bytes, CloseCode, CloseFrame, Event, Limits, MemoryBudget, Message, Protocol, ProtocolError,
    Role, Utf8Bytes,
};

/// True when `WSFLEET_FUZZ_STRICT=1`: known findings (see `fuzz/findings.md`)
/// fail again instead of being tolerated. Use it to check a fix.
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("WSFLEET_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// A budget that grants everything and counts, so the harness can check that
/// the machine's own books ([`Protocol::buffered_bytes`]) match what it
/// charged, and that every byte comes back.
#[derive(Debug, Default)]
pub struct CountingBudget {
    held: AtomicUsize,
    /// Of `held`: bytes in messages handed out (their charge follows them
    /// until the harness drops them).
    handed: AtomicUsize,
}

impl CountingBudget {
    /// Bytes reserved and not yet released.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Of [`held`](Self::held): bytes in handed-out messages still alive.
    pub fn handed(&self) -> usize {
        self.handed.load(Ordering::Relaxed)
    }
}

impl MemoryBudget for CountingBudget {
    fn try_reserve(&self, bytes: usize) -> bool {
        self.held.fetch_add(bytes, Ordering::Relaxed);
        true
    }
    fn force_reserve(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }
    fn release(&self, bytes: usize) {
        let before = self.held.fetch_sub(bytes, Ordering::Relaxed);
        assert!(before >= bytes, "budget: released {bytes} of {before} held");
    }
    fn hand_over(&self, bytes: usize) {
        self.handed.fetch_add(bytes, Ordering::Relaxed);
    }
    fn release_handed(&self, bytes: usize) {
        let before = self.handed.fetch_sub(bytes, Ordering::Relaxed);
        assert!(before >= bytes, "budget: released {bytes} of {before} handed");
        self.release(bytes);
    }
}

/// The bytes of slack the outbound queue may hold above
/// `max_outbound_bytes`: one forced pong and one forced close frame.
pub const OUTBOUND_SLACK: usize = 2 * (MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD);

/// Extra bytes permessage-deflate may hold on top of [`Limits::max_buffered`]
/// while a message is inflated: the context and the output (`max_message`,
/// plus the one byte that proves it too large).
pub fn deflate_overhead(limits: &Limits) -> usize {
    INFLATE_CONTEXT_BYTES + limits.max_message + 1
}

/// How the driver writes what the machine has to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Everything, after every read (a fast peer).
    Full,
    /// At most this many bytes per step (a slow peer).
    Partial(usize),
    /// Only when `wants_read()` turns false (a peer that barely reads).
    Lazy,
}

/// How one stream is fed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Offsets at which a read ends (on top of `read_buf`'s own limit).
    pub cuts: Vec<usize>,
    /// How output is written.
    pub drain: Drain,
    /// At each cut, act as if the socket had nothing more for now
    /// (`release_idle_buffers`, as the driver does on `Pending`).
    pub idle_at_cuts: bool,
}

impl Plan {
    /// One read per `read_buf` (no extra cuts), fast peer: the reference.
    pub fn reference() -> Self {
        Self {
            cuts: Vec::new(),
            drain: Drain::Full,
            idle_at_cuts: false,
        }
    }
}

/// What a driven machine produced.
#[derive(Debug)]
pub struct Outcome {
    /// Every event, in order.
    pub events: Vec<Event>,
    /// The first error (`read_buf` or `poll_event`).
    pub error: Option<ProtocolError>,
    /// Every byte written.
    pub written: Vec<u8>,
}

/// Invariants that hold after every step.
fn check_step(p: &Protocol, budget: &CountingBudget, bound: usize, at: &str) {
    let held = p.buffered_bytes();
    assert!(
        held <= bound,
        "{at}: buffered_bytes {held} > bound {bound} (limits {:?})",
        p.limits()
    );
    assert!(p.peak_buffered_bytes() <= bound, "{at}: peak above bound");
    assert_eq!(
        budget.held(),
        held + budget.handed(),
        "{at}: budget and buffered_bytes (+ handed-out messages) disagree"
    );
}

fn transmit(p: &mut Protocol, out: &mut Vec<u8>, max: usize) {
    let mut left = max;
    while left > 0 {
        let buf = p.poll_transmit();
        if buf.is_empty() {
            break;
        }
        let n = buf.len().min(left);
        out.extend_from_slice(&buf[..n]);
        p.advance_transmit(n);
        left -= n;
    }
}

/// Feeds `stream` to `p` as the runtime does, cut per `plan`, checking
/// `buffered_bytes() <= bound` (and the budget's books) after every step.
/// After the first error the rest of the stream is still offered: the error
/// must stay sticky, no event may follow, and nothing may grow.
pub fn drive(
    p: &mut Protocol,
    budget: &CountingBudget,
    bound: usize,
    stream: &[u8],
    plan: &Plan,
) -> Outcome {
    let mut events = Vec::new();
    let mut error: Option<ProtocolError> = None;
    let mut written = Vec::new();
    let mut ends: Vec<usize> = plan.cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    ends.push(stream.len());
    ends.sort_unstable();
    ends.dedup();
    let mut at = 0;
    let mut closed = false;
    for end in ends {
        while at < end {
            // A runtime stops reading while the outbound queue is over its
            // limit, until the peer takes some bytes.
            if !p.wants_read() {
                transmit(p, &mut written, usize::MAX);
                check_step(p, budget, bound, "drain for wants_read");
                assert!(p.wants_read(), "wants_read false with an empty queue");
            }
            let n = match p.read_buf() {
                Ok(mut buf) => {
                    let n = buf.remaining_mut().min(end - at);
                    assert!(n > 0, "read_buf lent no room");
                    buf.put_slice(&stream[at..at + n]);
                    n
                }
                Err(e) => {
                    match &error {
                        None => error = Some(e),
                        Some(first) => assert_eq!(&e, first, "read_buf: error not sticky"),
                    }
                    // The runtime gives up here.
                    at = stream.len();
                    break;
                }
            };
            at += n;
            check_step(p, budget, bound, "read");
            loop {
                match p.poll_event() {
                    Ok(Some(ev)) => {
                        assert!(error.is_none(), "event {ev:?} after error {error:?}");
                        assert!(!closed, "event {ev:?} after Close");
                        if matches!(ev, Event::Close(_)) {
                            closed = true;
                            assert!(p.close_received());
                        }
                        if matches!(ev, Event::Message(_)) && !p.is_mid_message() {
                            p.release_idle_buffers();
                        }
                        events.push(ev);
                    }
                    Ok(None) => {
                        assert!(error.is_none(), "Ok(None) after error {error:?}");
                        break;
                    }
                    Err(e) => {
                        match &error {
                            None => error = Some(e),
                            Some(first) => assert_eq!(&e, first, "poll_event: error not sticky"),
                        }
                        assert_eq!(p.error(), error.as_ref());
                        break;
                    }
                }
                check_step(p, budget, bound, "poll_event");
            }
            check_step(p, budget, bound, "events drained");
            if error.is_some() || closed {
                // Discarded input must not stay buffered.
                assert!(!p.is_mid_message(), "input kept after error/close");
            }
            match plan.drain {
                Drain::Full => transmit(p, &mut written, usize::MAX),
                Drain::Partial(k) => transmit(p, &mut written, k.max(1)),
                Drain::Lazy => {}
            }
            check_step(p, budget, bound, "transmit");
        }
        if plan.idle_at_cuts {
            p.release_idle_buffers();
            check_step(p, budget, bound, "idle at cut");
        }
    }
    // End: write everything (the runtime's finish_close), then idle.
    transmit(p, &mut written, usize::MAX);
    assert!(!p.has_transmit(), "transmit left after a full drain");
    p.release_idle_buffers();
    check_step(p, budget, bound, "end");
    if !p.is_mid_message() {
        let held = p.buffered_bytes();
        let ctx_kept = p
            .deflate_params()
            .is_some_and(|d| !d.server_no_context_takeover);
        assert!(
            held == 0 || (ctx_kept && held == INFLATE_CONTEXT_BYTES),
            "idle machine still holds {held} bytes"
        );
    }
    if error.is_some() || closed {
        assert!(p.close_sent(), "error/close without our close frame");
    }
    Outcome {
        events,
        error,
        written,
    }
}

/// Checks what the machine wrote: a peer of the other role decodes it
/// without error into pongs (each for a ping we received, in order) and at
/// most one close frame, last; the close carries the error's code and
/// reason, or echoes the peer's close code; without either, the newest ping
/// was answered last.
pub fn check_written(role: Role, outcome: &Outcome) {
    let mut peer = match role {
        Role::Client => Protocol::server(Limits::default()),
        Role::Server => {
            Protocol::client(Limits::default(), Box::new(wsfleet_proto::FixedKey([0; 4])))
        }
    };
    peer.feed(&outcome.written).expect("peer: feed our output");
    let mut pongs = Vec::new();
    let mut close = None;
    loop {
        match peer.poll_event() {
            Ok(Some(Event::Pong(p))) => {
                assert!(close.is_none(), "pong after our close frame");
                pongs.push(p);
            }
            Ok(Some(Event::Close(f))) => close = Some(f),
            Ok(Some(other)) => panic!("we wrote {other:?}"),
            Ok(None) => break,
            Err(e) => panic!("our output does not decode: {e}"),
        }
    }
    assert!(!peer.is_mid_message(), "our output ends mid-frame");
    let pings: Vec<&Bytes> = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Ping(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut it = pings.iter();
    for pong in &pongs {
        assert!(
            it.any(|ping| *ping == pong),
            "pong {pong:?} answers no ping (pings {pings:?})"
        );
    }
    let peer_close = outcome.events.iter().find_map(|e| match e {
        Event::Close(f) => Some(f.clone()),
        _ => None,
    });
    match (&outcome.error, peer_close) {
        (Some(e), _) => {
            let f = close
                .expect("error without a close frame")
                .expect("close without code");
            assert_eq!(f.code, e.close_code(), "close code for {e:?}");
            assert_eq!(f.reason.as_str(), e.as_str());
        }
        (None, Some(theirs)) => {
            let ours = close.expect("peer close not answered");
            assert_eq!(ours.map(|f| f.code), theirs.map(|f| f.code), "close echo");
        }
        (None, None) => {
            assert!(close.is_none(), "close frame without a reason");
            if let Some(last) = pings.last() {
                assert_eq!(pongs.last(), Some(*last), "newest ping not answered last");
            }
        }
    }
}

/// An error the model expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// Exactly this error.
    Exact(ProtocolError),
    /// A compressed message that does not inflate within `max_message`:
    /// `InvalidCompressedData` or `MessageTooLarge` (which one depends on how
    /// far inflate got before the corrupt byte, a matter of chunking).
    Inflate,
}

impl ModelError {
    /// Does the machine's error match?
    pub fn matches(&self, e: &ProtocolError) -> bool {
        match self {
            Self::Exact(x) => x == e,
            Self::Inflate => matches!(
                e,
                ProtocolError::InvalidCompressedData | ProtocolError::MessageTooLarge { .. }
            ),
        }
    }
}

/// The trailer RFC 7692 §7.2.2 appends before inflating.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Inflates `input` + trailer with one big output buffer. `Ok((out, ended))`
/// where `ended` says a final (BFINAL) block was seen; input after it is
/// ignored.
pub fn reference_inflate(
    ctx: &mut Decompress,
    input: &[u8],
    max: usize,
) -> Result<(Vec<u8>, bool), ModelError> {
    let mut data = input.to_vec();
    data.extend_from_slice(&TRAILER);
    let mut out = Vec::with_capacity(max + 1);
    let mut rest = &data[..];
    loop {
        let before_in = ctx.total_in();
        let before_out = out.len();
        let status = ctx
            .decompress_vec(rest, &mut out, FlushDecompress::Sync)
            .map_err(|_| ModelError::Inflate)?;
        rest = &rest[(ctx.total_in() - before_in) as usize..];
        if out.len() > max {
            return Err(ModelError::Inflate);
        }
        if status == Status::StreamEnd {
            return Ok((out, true));
        }
        // `out` has room (len <= max < capacity), so a sync flush that used
        // all input has written everything.
        if rest.is_empty() {
            return Ok((out, false));
        }
        if ctx.total_in() == before_in && out.len() == before_out {
            // Input left, room left, no progress: not a deflate stream.
            return Err(ModelError::Inflate);
        }
    }
}

fn utf8_prefix_ok(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

fn message(text: bool, payload: Vec<u8>) -> Result<Message, ModelError> {
    if text {
        let s = String::from_utf8(payload)
            .map_err(|_| ModelError::Exact(ProtocolError::InvalidUtf8))?;
        Ok(Message::Text(Utf8Bytes::from(s)))
    } else {
        Ok(Message::Binary(Bytes::from(payload)))
    }
}

struct Reassembly {
    text: bool,
    compressed: bool,
    buf: Vec<u8>,
    frames: usize,
}

/// Decodes `s` as a `role` machine with `limits` and (if given) deflate
/// negotiated must: whole frames, RFC 6455 rules in the order the machine
/// checks them (header, then admission, then payload). Text is checked with
/// `std` as bytes arrive (a text message fails at the first byte that can
/// not start valid UTF-8, even mid-frame). Compressed messages are inflated
/// with [`reference_inflate`]; with context takeover the context is kept
/// between messages, except after a final block, which ends the stream (a
/// new message then starts a new one).
pub fn model(
    role: Role,
    limits: &Limits,
    deflate: Option<DeflateParams>,
    s: &[u8],
) -> (Vec<Event>, Option<ModelError>) {
    let mut events = Vec::new();
    match model_inner(role, limits, deflate, s, &mut events) {
        Ok(()) => (events, None),
        Err(e) => (events, Some(e)),
    }
}

fn model_inner(
    role: Role,
    limits: &Limits,
    deflate: Option<DeflateParams>,
    s: &[u8],
    events: &mut Vec<Event>,
) -> Result<(), ModelError> {
    use ProtocolError as E;
    let exact = ModelError::Exact;
    let takeover = deflate.is_some_and(|d| !d.server_no_context_takeover);
    let mut inflater: Option<Decompress> = None;
    let inflate = |inflater: &mut Option<Decompress>, input: &[u8]| {
        let mut ctx = inflater.take().unwrap_or_else(|| Decompress::new(false));
        let (out, ended) = reference_inflate(&mut ctx, input, limits.max_message)?;
        // F2 (findings.md, fixed): a context that saw a final block is not
        // kept; the next message starts a fresh stream.
        if takeover && !ended {
            *inflater = Some(ctx);
        }
        Ok::<_, ModelError>(out)
    };
    let mut re: Option<Reassembly> = None;
    let mut pos = 0;
    loop {
        let h = &s[pos..];
        let [b0, b1, ..] = *h else { return Ok(()) };
        let op = b0 & 0x0F;
        if !matches!(op, 0 | 1 | 2 | 8 | 9 | 10) {
            return Err(exact(E::UnknownOpcode(op)));
        }
        let (len, ext) = match b1 & 0x7F {
            126 => match h.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
                None => return Ok(()),
            },
            127 => match h.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().unwrap());
                    if len >> 63 != 0 {
                        return Err(exact(E::InvalidLength));
                    }
                    (len, 8)
                }
                None => return Ok(()),
            },
            n => (u64::from(n), 0),
        };
        let masked = b1 & 0x80 != 0;
        let key = if masked {
            match h.get(2 + ext..6 + ext) {
                Some(k) => Some([k[0], k[1], k[2], k[3]]),
                None => return Ok(()),
            }
        } else {
            None
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 7;
        let data_start = op == 1 || op == 2;
        let compressed_start = rsv == 0b100 && deflate.is_some() && data_start;
        if rsv != 0 && !compressed_start {
            return Err(exact(E::ReservedBits(rsv)));
        }
        match (role, masked) {
            (Role::Client, true) => return Err(exact(E::MaskedFrame)),
            (Role::Server, false) => return Err(exact(E::UnmaskedFrame)),
            _ => {}
        }
        let control = op >= 8;
        if control {
            if !fin {
                return Err(exact(E::FragmentedControlFrame));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(exact(E::ControlFrameTooLarge { len }));
            }
        }
        if len > limits.max_frame_payload as u64 {
            return Err(exact(E::FrameTooLarge {
                len,
                max: limits.max_frame_payload,
            }));
        }
        let len = len as usize;
        match (op, &mut re) {
            (0, None) => return Err(exact(E::UnexpectedContinuation)),
            (0, Some(r)) => {
                let total = (r.buf.len() + len) as u64;
                if total > limits.max_message as u64 {
                    return Err(exact(E::MessageTooLarge {
                        len: total,
                        max: limits.max_message,
                    }));
                }
                r.frames += 1;
                if r.frames > limits.max_fragments {
                    return Err(exact(E::TooManyFragments {
                        max: limits.max_fragments,
                    }));
                }
            }
            (1 | 2, Some(_)) => return Err(exact(E::ExpectedContinuation)),
            (1 | 2, None) if !fin => {
                re = Some(Reassembly {
                    text: op == 1,
                    compressed: compressed_start,
                    buf: Vec::new(),
                    frames: 1,
                });
            }
            _ => {}
        }
        pos += 2 + ext + if masked { 4 } else { 0 };
        let avail = len.min(s.len() - pos);
        let mut payload = s[pos..pos + avail].to_vec();
        if let Some(k) = key {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        // Uncompressed text is checked as it arrives.
        let text_so_far: Option<Vec<u8>> = match (op, &re) {
            (1, None) if !compressed_start => Some(payload.clone()),
            (1 | 0, Some(r)) if r.text && !r.compressed => {
                Some([&r.buf[..], &payload[..]].concat())
            }
            _ => None,
        };
        if text_so_far.is_some_and(|t| !utf8_prefix_ok(&t)) {
            return Err(exact(E::InvalidUtf8));
        }
        if avail < len {
            return Ok(());
        }
        pos += len;
        match op {
            9 => events.push(Event::Ping(payload.into())),
            10 => events.push(Event::Pong(payload.into())),
            8 => {
                let frame = match payload.len() {
                    0 => None,
                    1 => return Err(exact(E::InvalidClosePayload)),
                    _ => {
                        let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
                        if !matches!(code.as_u16(), 1000..=1003 | 1007..=1014 | 3000..=4999) {
                            return Err(exact(E::InvalidCloseCode(code.as_u16())));
                        }
                        let reason = String::from_utf8(payload[2..].to_vec())
                            .map_err(|_| exact(E::InvalidUtf8))?;
                        Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from(reason),
                        })
                    }
                };
                events.push(Event::Close(frame));
                // Nothing after the peer's close is parsed.
                return Ok(());
            }
            1 | 2 if fin && re.is_none() => {
                let data = if compressed_start {
                    inflate(&mut inflater, &payload)?
                } else {
                    payload
                };
                events.push(Event::Message(message(op == 1, data)?));
            }
            _ => {
                let r = re.as_mut().expect("data frame without reassembly");
                r.buf.extend_from_slice(&payload);
                if fin {
                    let r = re.take().unwrap();
                    let data = if r.compressed {
                        inflate(&mut inflater, &r.buf)?
                    } else {
                        r.buf
                    };
                    events.push(Event::Message(message(r.text, data)?));
                }
            }
        }
    }
}

/// A tiny deterministic generator (for read sizes derived from one seed byte).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

/// A fresh machine of `role` with `limits`, deflate if given, charging a
/// counting budget.
pub fn machine(
    role: Role,
    limits: Limits,
    deflate: Option<DeflateParams>,
) -> (Protocol, Arc<CountingBudget>) {
    let budget = Arc::new(CountingBudget::default());
    let p = match role {
        Role::Client => Protocol::client(
            limits,
            Box::new(wsfleet_proto::FixedKey([0x5a, 0x17, 0, 0xff])),
        ),
        Role::Server => Protocol::server(limits),
    };
    let p = p.with_budget(budget.clone());
    let p = match deflate {
        Some(d) => p.with_deflate(d),
        None => p,
    };
    (p, budget)
}

/// Makes sure nothing stays charged once the machine is gone but the
/// messages it handed out that are still alive.
pub fn drop_and_check(p: Protocol, budget: &CountingBudget) {
    drop(p);
    assert_eq!(
        budget.held(),
        budget.handed(),
        "budget not returned after drop"
    );
}

/// `INFLATE_CHUNK`, re-exported for bounds in the targets.
pub const INFLATE_STEP: usize = INFLATE_CHUNK;

/// Builds a frame stream for `role` to receive from a compact description,
/// so that the fuzzer reaches long, fragmented and compressed messages
/// without having to guess matching lengths. Records, until the input ends:
///
/// - `b0`: the header's first byte as is (FIN, RSV, opcode);
/// - `b1`: bit 7 flips the masking (a client gets a masked frame, a server
///   an unmasked one); bits 0-6: a length code. Codes below 120 take that
///   many payload bytes from the input (padded with `a`); codes 120-127 are
///   125, 126, 1000, 4096, 4097, 8000, 16385 and 2^40 bytes of one fill
///   byte (the next input byte) — 2^40 writes only the header.
///
/// When `deflate` is on, a message whose first frame has RSV1 carries its
/// payload compressed (each frame's part sync-flushed on its own, trailer
/// stripped on the FIN frame only: the concatenation is valid deflate).
pub fn structured_stream(input: &[u8], role: Role, deflate: bool) -> Vec<u8> {
    const CODES: [u64; 8] = [125, 126, 1000, 4096, 4097, 8000, 16385, 1 << 40];
    let mut out = Vec::new();
    let mut rest = input;
    let mut compressed_message = false;
    let mut key = [0x37u8, 0xfa, 0x21, 0x3d];
    while let [b0, b1, tail @ ..] = rest {
        rest = tail;
        let code = usize::from(b1 & 0x7F);
        let (len, mut payload) = if code < 120 {
            let n = code.min(rest.len());
            let mut p = rest[..n].to_vec();
            rest = &rest[n..];
            p.resize(code, b'a');
            (code as u64, p)
        } else {
            let len = CODES[code - 120];
            let fill = rest.first().copied().unwrap_or(b'a');
            rest = rest.get(1..).unwrap_or_default();
            let body = if len > 1 << 20 {
                Vec::new()
            } else {
                vec![fill; len as usize]
            };
            (len, body)
        };
        let opcode = b0 & 0x0F;
        if opcode == 1 || opcode == 2 {
            compressed_message = deflate && b0 & 0x40 != 0;
        }
        let mut len = len;
        if compressed_message && opcode <= 2 && (len as usize) == payload.len() {
            let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
            let mut z = Vec::with_capacity(payload.len() + 64);
            loop {
                let consumed = c.total_in() as usize;
                c.compress_vec(&payload[consumed..], &mut z, flate2::FlushCompress::Sync)
                    .unwrap();
                if c.total_in() as usize == payload.len() && z.len() < z.capacity() {
                    break;
                }
                z.reserve(z.capacity().max(64));
            }
            // The receiver appends the sync-flush trailer to the whole
            // message: strip it from the last frame only.
            if b0 & 0x80 != 0 {
                z.truncate(z.len() - TRAILER.len());
            }
            payload = z;
            len = payload.len() as u64;
        }
        let masked = (role == Role::Server) != (b1 & 0x80 != 0);
        let mut head = [0u8; MAX_HEADER_LEN];
        head[0] = *b0;
        let mut n = if len < 126 {
            head[1] = len as u8;
            2
        } else if len < 65_536 {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&len.to_be_bytes());
            10
        };
        if masked {
            head[1] |= 0x80;
            key = [key[1], key[2], key[3], key[0].wrapping_add(0x4b)];
            head[n..n + 4].copy_from_slice(&key);
            n += 4;
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        out.extend_from_slice(&head[..n]);
        out.extend_from_slice(&payload);
    }
    out
}
