//! Stream integrity: messages attributed to streams (a JSON pointer to a
//! key), their sequence numbers (another pointer) checked per stream for
//! gaps, duplicates and reordering, and the handover of a stream from one
//! connection of a slot to the next — a reconnect or a make-before-break
//! rotation — without holes or duplicates.
//!
//! [`SlotStreams`] is one slot's tracker, plain data tested without
//! sockets; the connection tasks feed it every data message and deliver
//! what it says to deliver.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wsfleet_proto::Message;

use super::ConnId;

/// Streams a slot tracks at most: an upstream that invents a new key per
/// message would otherwise grow the table without end. Beyond it, messages
/// of new streams are delivered unchecked (a warning is logged once per
/// slot).
pub const MAX_STREAMS_PER_SLOT: usize = 4096;
/// Sequence numbers behind the newest one of a stream that are remembered,
/// to tell a duplicate from a late (reordered) message.
const WINDOW: u64 = 128;
/// Messages of a successor connection held per slot at most while the
/// connection it replaces catches up (they stay charged to the budget).
pub const MAX_HELD_PER_SLOT: usize = 4096;

/// How messages are attributed to streams and checked. Pointers are JSON
/// pointers (RFC 6901) into the message parsed as JSON (text or binary);
/// a message without the key (a subscription acknowledgement, a heartbeat)
/// passes unchecked.
///
/// ```
/// use std::time::Duration;
/// use wsfleet::fleet::{GapPolicy, Streams};
/// let streams = Streams::new("/channel")
///     .sequence("/seq")
///     .on_gap(GapPolicy::Report)
///     .stale_after(Duration::from_secs(30));
/// assert_eq!(streams.key_pointer(), "/channel");
/// ```
#[derive(Debug, Clone)]
pub struct Streams {
    key: String,
    seq: Option<String>,
    on_gap: GapPolicy,
    stale_after: Option<Duration>,
    max_overlap: Duration,
}

impl Streams {
    /// Streams keyed by the value at `key_pointer` (a string or number),
    /// e.g. `"/channel"` or `"/data/symbol"`. With subscriptions, a
    /// subscription's key is the stream key its messages carry.
    pub fn new(key_pointer: impl Into<String>) -> Self {
        Self {
            key: key_pointer.into(),
            seq: None,
            on_gap: GapPolicy::Report,
            stale_after: None,
            max_overlap: Duration::from_secs(5),
        }
    }

    /// Where a message's sequence number is (an integer, or a string of
    /// digits): gaps, duplicates and reordering are counted per stream, and
    /// duplicates are dropped (never delivered twice across connections).
    pub fn sequence(mut self, seq_pointer: impl Into<String>) -> Self {
        self.seq = Some(seq_pointer.into());
        self
    }

    /// What to do on a gap within a connection's stream (default: report).
    pub fn on_gap(mut self, policy: GapPolicy) -> Self {
        self.on_gap = policy;
        self
    }

    /// Renew a subscription (its end message, then its start messages, on
    /// the connection carrying it) whose stream had no message for this
    /// long while its connection otherwise lives. Default: never.
    pub fn stale_after(mut self, after: Duration) -> Self {
        self.stale_after = Some(after);
        self
    }

    /// How long a rotation keeps the old connection while the new one
    /// catches up with its streams (default 5 s); also how long a new
    /// connection's messages ahead of the old one's may be held.
    pub fn max_overlap(mut self, overlap: Duration) -> Self {
        self.max_overlap = overlap;
        self
    }

    /// The stream key's pointer.
    pub fn key_pointer(&self) -> &str {
        &self.key
    }

    /// The sequence number's pointer, if set.
    pub fn seq_pointer(&self) -> Option<&str> {
        self.seq.as_deref()
    }

    pub(crate) fn gap_policy(&self) -> GapPolicy {
        self.on_gap
    }

    pub(crate) fn stream_stale_after(&self) -> Option<Duration> {
        self.stale_after
    }

    pub(crate) fn overlap(&self) -> Duration {
        self.max_overlap
    }

    /// A pointer must be empty or start with `/` (RFC 6901).
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |p: &str| !p.is_empty() && !p.starts_with('/');
        if bad(&self.key) || self.key.is_empty() {
            return Err(("streams.key", self.key.clone()));
        }
        if let Some(seq) = &self.seq {
            if bad(seq) || seq.is_empty() {
                return Err(("streams.sequence", seq.clone()));
            }
        }
        Ok(())
    }

    /// The stream key and sequence number of `payload`, if it has a key
    /// (and, with a sequence pointer, a sequence number).
    pub(crate) fn locate(&self, payload: &[u8]) -> Option<Located> {
        // Cheap refusal of what cannot be a JSON object or array.
        let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' && *first != b'[' {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let key: Arc<str> = match value.pointer(&self.key)? {
            serde_json::Value::String(s) => Arc::from(s.as_str()),
            serde_json::Value::Number(n) => Arc::from(n.to_string()),
            _ => return None,
        };
        let seq = match &self.seq {
            None => None,
            Some(p) => Some(match value.pointer(p)? {
                serde_json::Value::Number(n) => n.as_u64()?,
                serde_json::Value::String(s) => s.parse().ok()?,
                _ => return None,
            }),
        };
        Some(Located { key, seq })
    }
}

/// A message's stream and sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) key: Arc<str>,
    pub(crate) seq: Option<u64>,
}

/// What the fleet does about a gap within one connection's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GapPolicy {
    /// Report it (event, metrics, log line) and go on (default).
    #[default]
    Report,
    /// Report it and renew the stream's subscription on that connection
    /// (its end message, then its start messages).
    Renew,
    /// Report it and replace the connection (close 1001, reason
    /// `sequence_gap`).
    Reconnect,
}

/// Why sequence numbers of a stream were not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapCause {
    /// The connection carrying the stream skipped them.
    InStream,
    /// They fell between two connections of the slot: sent while it was
    /// reconnecting, or not caught up within the rotation's overlap.
    Handover,
}

impl fmt::Display for GapCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InStream => "in stream",
            Self::Handover => "between connections",
        })
    }
}

/// Sequence numbers of a stream that were never delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The stream's key.
    pub stream: Arc<str>,
    /// The numbers missed, first to last.
    pub missed: RangeInclusive<u64>,
    /// Where they went missing.
    pub cause: GapCause,
}

/// What to do with one observed message.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// A duplicate, dropped.
    pub(crate) duplicate: bool,
    /// Delivered out of order (older than the newest seen, never seen).
    pub(crate) late: bool,
    /// Held until the connection it replaces catches up.
    pub(crate) held: bool,
    /// The slot's first message past [`MAX_STREAMS_PER_SLOT`] streams
    /// (delivered unchecked, as every later one of a new stream): to log.
    pub(crate) first_untracked: bool,
    /// Gaps to report, before the message.
    pub(crate) gaps: Vec<Gap>,
    /// Held messages of another connection to deliver before the message
    /// (its owner jumped past them).
    pub(crate) before: Vec<(ConnId, Message)>,
    /// Held messages of another connection now due, after the message.
    pub(crate) released: Vec<(ConnId, Message)>,
}

/// One stream's state within a slot.
#[derive(Debug)]
struct Stream {
    /// The connection whose messages it follows now.
    owner: ConnId,
    /// The next sequence number expected (newest delivered + 1).
    next: u64,
    /// Bit `i` set: `next - 1 - i` was delivered (i < WINDOW).
    seen: u128,
    /// Its owner has ended: the next connection takes it over at once.
    orphan: bool,
}

impl Stream {
    /// Ownership only moves forward: connection ids grow, so an old
    /// connection's late copies never take a stream back.
    fn own(&mut self, conn: ConnId) {
        if conn > self.owner {
            self.owner = conn;
            self.orphan = false;
        }
    }

    fn mark(&mut self, seq: u64) {
        if seq >= self.next {
            let shift = seq + 1 - self.next;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.next = seq + 1;
        } else {
            let back = self.next - 1 - seq;
            if back < WINDOW {
                self.seen |= 1 << back;
            }
        }
    }

    fn was_seen(&self, seq: u64) -> bool {
        let back = self.next - 1 - seq;
        back >= WINDOW || self.seen & (1 << back) != 0
    }
}

/// A successor's message held for its stream.
#[derive(Debug)]
struct Held {
    conn: ConnId,
    key: Arc<str>,
    seq: u64,
    message: Message,
    since: Instant,
}

/// One slot's streams: who carries each, what was delivered, what a
/// successor connection's messages wait for.
#[derive(Debug, Default)]
pub(crate) struct SlotStreams {
    streams: HashMap<Arc<str>, Stream>,
    held: VecDeque<Held>,
    /// When each stream last had a message (for staleness), sequence
    /// numbers or not.
    last: HashMap<Arc<str>, Instant>,
    /// Messages of streams past [`MAX_STREAMS_PER_SLOT`], delivered unchecked.
    pub(crate) untracked: u64,
}

impl SlotStreams {
    /// A message of stream `key` arrived at `now` (for staleness).
    pub(crate) fn note(&mut self, key: &Arc<str>, now: Instant) {
        if let Some(last) = self.last.get_mut(key) {
            *last = now;
        } else if self.last.len() < MAX_STREAMS_PER_SLOT {
            self.last.insert(key.clone(), now);
        }
    }

    /// A message of `conn` at `now`, located in stream `key` with `seq`.
    pub(crate) fn observe(
        &mut self,
        conn: ConnId,
        key: &Arc<str>,
        seq: u64,
        message: Message,
        now: Instant,
    ) -> (Verdict, Option<Message>) {
        let mut verdict = Verdict::default();
        let Some(stream) = self.streams.get_mut(key) else {
            if self.streams.len() >= MAX_STREAMS_PER_SLOT {
                self.untracked += 1;
                verdict.first_untracked = self.untracked == 1;
                return (verdict, Some(message));
            }
            self.streams.insert(
                key.clone(),
                Stream {
                    owner: conn,
                    next: seq + 1,
                    seen: 1,
                    orphan: false,
                },
            );
            return (verdict, Some(message));
        };
        if seq < stream.next {
            if stream.was_seen(seq) {
                verdict.duplicate = true;
                // A newer connection has caught up with the old one.
                stream.own(conn);
                return (verdict, None);
            }
            stream.mark(seq);
            verdict.late = true;
            return (verdict, Some(message));
        }
        if seq > stream.next && (stream.owner == conn || stream.orphan) {
            // The owner (or the next connection of an orphaned stream)
            // jumped ahead: what is held below the jump goes first, in order
            // (its holes are handover gaps); only the rest is the jump's gap.
            let (mut gaps, before) = self.flush(|h| h.key == *key && h.seq < seq);
            verdict.gaps.append(&mut gaps);
            verdict.before = before;
        }
        let Some(stream) = self.streams.get_mut(key) else {
            return (verdict, Some(message));
        };
        if seq == stream.next || stream.owner == conn {
            if seq > stream.next {
                verdict.gaps.push(Gap {
                    stream: key.clone(),
                    missed: stream.next..=seq - 1,
                    cause: GapCause::InStream,
                });
            }
            stream.mark(seq);
            stream.own(conn);
            verdict.released = self.release(key);
            return (verdict, Some(message));
        }
        // Another connection is ahead of the stream's owner.
        if stream.orphan {
            verdict.gaps.push(Gap {
                stream: key.clone(),
                missed: stream.next..=seq - 1,
                cause: GapCause::Handover,
            });
            stream.mark(seq);
            stream.own(conn);
            return (verdict, Some(message));
        }
        if self.held.len() >= MAX_HELD_PER_SLOT {
            // Out of room to wait: deliver what is held, with its gaps,
            // before this message (it is older).
            let (gaps, flushed) = self.flush(|_| true);
            verdict.gaps = gaps;
            verdict.before = flushed;
            // The held queue is empty now: this cannot come back here.
            let (more, message) = self.observe(conn, key, seq, message, now);
            verdict.gaps.extend(more.gaps);
            verdict.before.extend(more.before);
            verdict.released.extend(more.released);
            verdict.duplicate = more.duplicate;
            verdict.late = more.late;
            verdict.held = more.held;
            return (verdict, message);
        }
        self.held.push_back(Held {
            conn,
            key: key.clone(),
            seq,
            message,
            since: now,
        });
        verdict.held = true;
        (verdict, None)
    }

    /// Held messages of stream `key` that are now next in line.
    fn release(&mut self, key: &Arc<str>) -> Vec<(ConnId, Message)> {
        let mut out = Vec::new();
        loop {
            let Some(stream) = self.streams.get_mut(key) else {
                return out;
            };
            let next = stream.next;
            let Some(i) = self
                .held
                .iter()
                .position(|h| h.key == *key && h.seq <= next)
            else {
                return out;
            };
            let Some(held) = self.held.remove(i) else {
                return out;
            };
            stream.own(held.conn);
            if held.seq < next && stream.was_seen(held.seq) {
                continue;
            }
            stream.mark(held.seq);
            out.push((held.conn, held.message));
        }
    }

    /// Delivers every held message `which` selects, oldest first, reporting
    /// the numbers it skips as handover gaps.
    fn flush(&mut self, which: impl Fn(&Held) -> bool) -> (Vec<Gap>, Vec<(ConnId, Message)>) {
        let mut gaps = Vec::new();
        let mut out = Vec::new();
        let (due, kept): (Vec<Held>, Vec<Held>) = self.held.drain(..).partition(|h| which(h));
        self.held = kept.into();
        let mut due = due;
        due.sort_by_key(|h| h.seq);
        for held in due {
            let Some(stream) = self.streams.get_mut(&held.key) else {
                continue;
            };
            if held.seq < stream.next {
                if stream.was_seen(held.seq) {
                    continue;
                }
            } else if held.seq > stream.next {
                gaps.push(Gap {
                    stream: held.key.clone(),
                    missed: stream.next..=held.seq - 1,
                    cause: GapCause::Handover,
                });
            }
            stream.mark(held.seq);
            stream.own(held.conn);
            out.push((held.conn, held.message));
        }
        (gaps, out)
    }

    /// `conn` has ended: its streams pass to whoever comes next, and what a
    /// successor held for it is delivered now.
    pub(crate) fn ended(&mut self, conn: ConnId) -> (Vec<Gap>, Vec<(ConnId, Message)>) {
        let mut orphaned = Vec::new();
        for (key, stream) in &mut self.streams {
            if stream.owner == conn {
                stream.orphan = true;
                orphaned.push(key.clone());
            }
        }
        self.flush(|h| orphaned.contains(&h.key))
    }

    /// Held messages older than `overlap` at `now`: delivered, with gaps.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        overlap: Duration,
    ) -> (Vec<Gap>, Vec<(ConnId, Message)>) {
        if self
            .held
            .front()
            .is_none_or(|h| now.duration_since(h.since) < overlap)
        {
            return (Vec::new(), Vec::new());
        }
        let expired: Vec<Arc<str>> = self
            .held
            .iter()
            .filter(|h| now.duration_since(h.since) >= overlap)
            .map(|h| h.key.clone())
            .collect();
        self.flush(|h| expired.contains(&h.key))
    }

    /// Streams `conn` still owns that another connection has not caught up
    /// with (the rotation waits for none).
    pub(crate) fn owned_by(&self, conn: ConnId) -> usize {
        self.streams
            .values()
            .filter(|s| s.owner == conn && !s.orphan)
            .count()
    }

    /// Messages held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Those of `keys` whose stream had no message for `after` at `now`,
    /// counting from `since(key)` at the earliest (the connection's start,
    /// or the key's last renewal).
    pub(crate) fn stale(
        &self,
        keys: &[Arc<str>],
        since: impl Fn(&Arc<str>) -> Instant,
        now: Instant,
        after: Duration,
    ) -> Vec<Arc<str>> {
        keys.iter()
            .filter(|k| {
                let from = since(k);
                let last = self.last.get(*k).map_or(from, |l| (*l).max(from));
                now.duration_since(last) >= after
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);
    const OVERLAP: Duration = Duration::from_secs(5);

    fn m(seq: u64) -> Message {
        Message::text(format!("{seq}"))
    }

    fn num(m: &Message) -> u64 {
        std::str::from_utf8(m.payload()).unwrap().parse().unwrap()
    }

    struct Run {
        s: SlotStreams,
        key: Arc<str>,
        delivered: Vec<(ConnId, u64)>,
        gaps: Vec<Gap>,
        now: Instant,
    }

    impl Run {
        fn new() -> Self {
            Self {
                s: SlotStreams::default(),
                key: Arc::from("k"),
                delivered: Vec::new(),
                gaps: Vec::new(),
                now: Instant::now(),
            }
        }

        fn feed(&mut self, conn: ConnId, seq: u64) -> Verdict {
            let (mut v, message) = self.s.observe(conn, &self.key, seq, m(seq), self.now);
            self.gaps.append(&mut v.gaps);
            for (c, message) in v.before.drain(..) {
                self.delivered.push((c, num(&message)));
            }
            if let Some(message) = message {
                self.delivered.push((conn, num(&message)));
            }
            for (c, message) in v.released.drain(..) {
                self.delivered.push((c, num(&message)));
            }
            v
        }

        fn take(&mut self, (mut gaps, released): (Vec<Gap>, Vec<(ConnId, Message)>)) {
            self.gaps.append(&mut gaps);
            for (c, message) in released {
                self.delivered.push((c, num(&message)));
            }
        }

        fn seqs(&self) -> Vec<u64> {
            self.delivered.iter().map(|(_, s)| *s).collect()
        }

        fn missed(&self) -> Vec<(RangeInclusive<u64>, GapCause)> {
            self.gaps
                .iter()
                .map(|g| (g.missed.clone(), g.cause))
                .collect()
        }
    }

    #[test]
    fn in_order_then_a_gap_a_duplicate_and_a_late_one() {
        let mut r = Run::new();
        for seq in [5, 6, 7, 10, 10, 8, 11] {
            r.feed(A, seq);
        }
        assert_eq!(r.seqs(), [5, 6, 7, 10, 8, 11]);
        assert_eq!(r.missed(), [(8..=9, GapCause::InStream)]);
    }

    #[test]
    fn a_reconnect_after_the_owner_ended_is_a_handover_gap() {
        let mut r = Run::new();
        r.feed(A, 1);
        r.feed(A, 2);
        let none = r.s.ended(A);
        r.take(none);
        r.feed(B, 7);
        r.feed(B, 8);
        assert_eq!(r.seqs(), [1, 2, 7, 8]);
        assert_eq!(r.missed(), [(3..=6, GapCause::Handover)]);
    }

    #[test]
    fn rotation_overlap_delivers_each_number_once_without_a_hole() {
        let mut r = Run::new();
        for seq in 1..=3 {
            r.feed(A, seq);
        }
        // B subscribed while 4 and 5 were in flight to A: its first
        // messages are ahead of A's and are held.
        assert!(r.feed(B, 6).held);
        assert!(r.feed(B, 7).held);
        assert_eq!(r.s.owned_by(A), 1);
        r.feed(A, 4);
        r.feed(A, 5); // releases 6 and 7
        assert_eq!(r.s.owned_by(A), 0, "B owns the stream now");
        // A's copies of what B delivered are duplicates.
        assert!(r.feed(A, 6).duplicate);
        assert!(r.feed(A, 7).duplicate);
        r.feed(B, 8);
        assert_eq!(r.seqs(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(r.gaps.is_empty(), "{:?}", r.gaps);
        assert_eq!(r.s.held(), 0);
    }

    #[test]
    fn a_successor_behind_the_owner_is_deduplicated_and_takes_over() {
        let mut r = Run::new();
        for seq in 1..=5 {
            r.feed(A, seq);
        }
        assert!(r.feed(B, 4).duplicate);
        assert_eq!(r.s.owned_by(A), 0);
        assert!(r.feed(B, 5).duplicate);
        r.feed(B, 6);
        assert!(r.feed(A, 6).duplicate);
        assert_eq!(r.seqs(), [1, 2, 3, 4, 5, 6]);
        assert!(r.gaps.is_empty());
    }

    #[test]
    fn an_owner_jumping_past_held_messages_delivers_them_first() {
        let mut r = Run::new();
        r.feed(A, 1);
        // A goes silent on the stream; B (newer) runs ahead and is held.
        assert!(r.feed(B, 3).held);
        assert!(r.feed(B, 4).held);
        // A's subscription is renewed and it resumes at 9: B's 3 and 4 go
        // first, B owns the stream now, so A's 9 waits for B.
        assert!(r.feed(A, 9).held);
        assert_eq!(r.seqs(), [1, 3, 4]);
        for seq in 5..=9 {
            r.feed(B, seq);
        }
        assert_eq!(r.seqs(), [1, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(r.missed(), [(2..=2, GapCause::Handover)]);
        assert_eq!(r.s.held(), 0);
    }

    #[test]
    fn held_messages_go_when_the_owner_ends_with_the_hole_reported() {
        let mut r = Run::new();
        r.feed(A, 1);
        r.feed(B, 4);
        r.feed(B, 5);
        let released = r.s.ended(A);
        r.take(released);
        assert_eq!(r.seqs(), [1, 4, 5]);
        assert_eq!(r.missed(), [(2..=3, GapCause::Handover)]);
        r.feed(B, 6);
        assert_eq!(r.seqs(), [1, 4, 5, 6]);
    }

    #[test]
    fn held_messages_expire_after_the_overlap() {
        let mut r = Run::new();
        r.feed(A, 1);
        r.feed(B, 3);
        let early = r.s.expire(r.now + OVERLAP / 2, OVERLAP);
        assert!(early.1.is_empty());
        let late = r.s.expire(r.now + OVERLAP, OVERLAP);
        r.take(late);
        assert_eq!(r.seqs(), [1, 3]);
        assert_eq!(r.missed(), [(2..=2, GapCause::Handover)]);
        assert_eq!(r.s.owned_by(B), 1);
    }

    #[test]
    fn a_gap_in_the_owners_own_stream_is_in_stream() {
        let mut r = Run::new();
        r.feed(A, 1);
        r.feed(B, 1); // B caught up: owner now
        r.feed(B, 4);
        assert_eq!(r.missed(), [(2..=3, GapCause::InStream)]);
    }

    #[test]
    fn the_window_tells_duplicates_from_late_messages() {
        let mut r = Run::new();
        r.feed(A, 0);
        r.feed(A, 200);
        // 1..199 were reported missing; 199 is inside the window, 50 not.
        assert!(r.feed(A, 199).late);
        assert!(r.feed(A, 199).duplicate);
        assert!(r.feed(A, 50).duplicate, "older than the window: dropped");
    }

    #[test]
    fn streams_past_the_cap_are_delivered_unchecked() {
        let mut s = SlotStreams::default();
        let now = Instant::now();
        let mut warnings = 0;
        for i in 0..MAX_STREAMS_PER_SLOT + 3 {
            let key: Arc<str> = Arc::from(i.to_string());
            let (v, m) = s.observe(A, &key, 1, Message::text("x"), now);
            assert!(m.is_some());
            warnings += usize::from(v.first_untracked);
        }
        assert_eq!(s.untracked, 3);
        assert_eq!(warnings, 1, "logged once per slot");
    }

    #[test]
    fn a_full_hold_queue_delivers_what_it_holds_with_the_hole_reported() {
        let mut r = Run::new();
        r.feed(A, 0);
        // B runs ahead of A from 10 on: held until the queue is full.
        let limit = MAX_HELD_PER_SLOT as u64;
        for seq in 10..10 + limit {
            assert!(r.feed(B, seq).held);
        }
        assert_eq!(r.s.held(), MAX_HELD_PER_SLOT);
        // One more: everything held goes out in order, the hole reported once.
        r.feed(B, 10 + limit);
        assert_eq!(r.s.held(), 0);
        let expected: Vec<u64> = std::iter::once(0).chain(10..=10 + limit).collect();
        assert_eq!(r.seqs(), expected);
        assert_eq!(r.missed(), [(1..=9, GapCause::Handover)]);
    }

    #[test]
    fn locate_reads_both_pointers() {
        let streams = Streams::new("/channel").sequence("/data/seq");
        let at = |s: &str| streams.locate(s.as_bytes());
        assert_eq!(
            at(r#"{"channel":"c1","data":{"seq":42}}"#),
            Some(Located {
                key: Arc::from("c1"),
                seq: Some(42)
            })
        );
        assert_eq!(
            at(r#" {"channel":7,"data":{"seq":"43"}}"#),
            Some(Located {
                key: Arc::from("7"),
                seq: Some(43)
            })
        );
        assert_eq!(at(r#"{"event":"subscribed","channel":"c1"}"#), None);
        assert_eq!(at(r#"{"channel":"c1","data":{"seq":-1}}"#), None);
        assert_eq!(at("not json"), None);
        assert_eq!(at("{broken"), None);
        let keyed = Streams::new("/channel");
        assert_eq!(
            keyed.locate(br#"{"channel":"c1"}"#),
            Some(Located {
                key: Arc::from("c1"),
                seq: None
            })
        );
    }

    #[test]
    fn a_stream_is_stale_after_its_last_message_or_its_renewal() {
        let mut s = SlotStreams::default();
        let t0 = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let keys = [a.clone(), b.clone()];
        let after = Duration::from_secs(10);
        s.note(&a, t0 + Duration::from_secs(5));
        // b never had a message: stale 10 s after the start.
        assert_eq!(
            s.stale(&keys, |_| t0, t0 + Duration::from_secs(10), after),
            std::slice::from_ref(&b)
        );
        assert_eq!(
            s.stale(&keys, |_| t0, t0 + Duration::from_secs(15), after),
            [a.clone(), b.clone()]
        );
        // Renewed at 12 s: its clock starts there.
        let renewed = |k: &Arc<str>| {
            if **k == *"b" {
                t0 + Duration::from_secs(12)
            } else {
                t0
            }
        };
        assert_eq!(
            s.stale(&keys, renewed, t0 + Duration::from_secs(15), after),
            [a]
        );
    }

    #[test]
    fn pointers_must_be_json_pointers() {
        assert!(Streams::new("channel").validate().is_err());
        assert!(Streams::new("").validate().is_err());
        assert!(Streams::new("/c").sequence("seq").validate().is_err());
        assert!(Streams::new("/c").sequence("/seq").validate().is_ok());
    }
}
