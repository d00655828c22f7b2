//! Receiving: read buffer growth, header admission, payload, reassembly.

use bytes::buf::Limit;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{InFrame, Inflating, Protocol, Reassembly, Role};
use crate::budget::charged_bytes;
use crate::deflate::{
    INFLATE_CHUNK, INFLATE_CONTEXT_BYTES, InflateError, inflate_bounded, new_inflater,
};
use crate::error::ProtocolError;
use crate::event::Event;
use crate::frame::{
    CLOSE_CODE_LEN, CloseCode, CloseFrame, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
    OpCode, parse_header,
};
use crate::mask::apply_mask;
use crate::message::{Message, Utf8Bytes};
use crate::utf8;

/// Payloads up to this size are copied out of the read buffer instead of
/// split from it: a small message kept by the user then cannot pin a whole
/// read-buffer allocation, and the buffer can be reused in place.
const COPY_OUT_MAX: usize = 1024;

/// The least [`Protocol::feed`] grows the read buffer by: a small message
/// and its header fit, and a one-byte-at-a-time peer cannot make it
/// reallocate on every byte.
const MIN_GROW: usize = 64;

/// What a payload copied out of the read buffer is charged beyond its
/// length: the owner allocation that carries its charge (see
/// [`charged_bytes`]) and allocator rounding.
const PAYLOAD_OVERHEAD: usize = 64;

/// A large payload takes the read buffer's whole allocation (no copy, and
/// the allocation's full size charged to the message) only when that
/// allocation exceeds the payload by at most a quarter plus this much;
/// otherwise the payload is copied out, so a message kept by the
/// application never pins (and is never charged for) a much larger buffer.
const ZERO_COPY_SLACK: usize = 4096;

/// A payload takes the read buffer's allocation only when at most this much
/// of what follows it has arrived: those bytes move to a fresh buffer, so
/// the payload is the allocation's only owner (freed, and its charge given
/// back, exactly when the application drops it).
const REMAINDER_MOVE_MAX: usize = 64 << 10;

impl Protocol {
    /// Lends spare capacity of the read buffer, to append received bytes to
    /// (for example with `tokio_util::io::poll_read_buf`). The buffer grows
    /// only here, by [`Limits::read_chunk`](crate::Limits::read_chunk) or by
    /// doubling what has *arrived*, never by what a header claims, and
    /// charged to the budget before it is allocated.
    ///
    /// # Errors
    /// [`ProtocolError::BudgetExhausted`] when the budget refuses the growth
    /// (the error is sticky, as any other). A runtime that would rather
    /// wait for memory uses [`try_read_buf`](Self::try_read_buf).
    /// [`ProtocolError::ReadBufferFull`] when the buffer already holds one
    /// whole frame and a chunk of the next (`poll_event` was not drained).
    pub fn read_buf(&mut self) -> Result<Limit<&mut BytesMut>, ProtocolError> {
        if !self.ensure_spare()? {
            return Err(self.fail_for_budget(None));
        }
        let spare = self.read_spare();
        Ok((&mut self.rbuf).limit(spare))
    }

    /// As [`read_buf`](Self::read_buf), but a growth the budget refuses is
    /// not an error: `Ok(None)`, nothing changed, and
    /// [`budget_blocked`](Self::budget_blocked) says how much was asked.
    /// Read nothing then; call again once the budget has room (or give up
    /// with [`fail_for_budget`](Self::fail_for_budget)).
    ///
    /// # Errors
    /// [`ProtocolError::ReadBufferFull`], as for [`read_buf`](Self::read_buf).
    pub fn try_read_buf(&mut self) -> Result<Option<Limit<&mut BytesMut>>, ProtocolError> {
        if !self.ensure_spare()? {
            return Ok(None);
        }
        let spare = self.read_spare();
        Ok(Some((&mut self.rbuf).limit(spare)))
    }

    /// Makes room to read into; false when the budget refused it.
    fn ensure_spare(&mut self) -> Result<bool, ProtocolError> {
        self.blocked = 0;
        self.rewind_empty_rbuf();
        if self.read_spare() > 0 {
            return Ok(true);
        }
        match self.grow_rbuf(self.limits.read_chunk, false) {
            Ok(grown) => Ok(grown),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Bytes the read buffer can take now without growing.
    pub fn read_spare(&self) -> usize {
        self.rbuf.capacity() - self.rbuf.len()
    }

    /// Copies received `bytes` into the read buffer, growing it by what they
    /// need rather than by a whole [`Limits::read_chunk`](crate::Limits::read_chunk):
    /// the runtime reads small arrivals into a stack buffer and hands them
    /// over here, so a connection exchanging small messages holds a read
    /// buffer of their size, not of a chunk. Also the entry point of tests
    /// and fuzzers.
    ///
    /// The bytes are already in hand, so their room is charged even past
    /// the budget (by exactly what they need, no doubling): the runtime
    /// feeds at most one small stack read at a time, and stops reading
    /// while the budget is spent.
    ///
    /// # Errors
    /// [`ProtocolError::ReadBufferFull`] when the bytes would take the buffer
    /// past one frame and a chunk, as for [`read_buf`](Self::read_buf).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProtocolError> {
        self.rewind_empty_rbuf();
        while !bytes.is_empty() {
            if self.read_spare() == 0 {
                if let Err(e) = self.grow_rbuf(bytes.len().max(MIN_GROW), true) {
                    return Err(self.fail(e));
                }
            }
            let n = self.read_spare().min(bytes.len());
            self.rbuf.put_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Moves an empty read buffer back to the start of its allocation when
    /// most of it lies behind the read position. That copies nothing (and
    /// does nothing while the user still holds a payload split from it);
    /// otherwise a large frame would fill the rest of the allocation and be
    /// copied to the front half-received.
    fn rewind_empty_rbuf(&mut self) {
        if self.rbuf.is_empty()
            && self.read_spare() < self.rbuf_charge / 2
            && self.rbuf.try_reclaim(self.rbuf_charge)
        {
            self.sync_rbuf_charge();
        }
    }

    /// Charges whatever the read buffer's allocation holds beyond its
    /// charge: after a reclaim (the allocation a handed-out payload shared
    /// came back whole) or allocator rounding. Forced, because that memory
    /// is already allocated: the books follow it.
    fn sync_rbuf_charge(&mut self) {
        let cap = self.rbuf.capacity();
        if cap > self.rbuf_charge {
            self.account.charge_forced(cap - self.rbuf_charge);
            self.rbuf_charge = cap;
        }
    }

    /// Grows the read buffer by at least `floor` bytes (more while a large
    /// frame is arriving). `Ok(false)` when the budget refused the growth
    /// (nothing changed; `blocked` says how much was asked). `forced`
    /// charges past the budget, by exactly what is needed.
    fn grow_rbuf(&mut self, floor: usize, forced: bool) -> Result<bool, ProtocolError> {
        let len = self.rbuf.len();
        let chunk = self.limits.read_chunk;
        // Bytes still due for a frame kept whole in the buffer: grow by
        // doubling what arrived, capped by what the frame still needs, and
        // never by the claim alone.
        let due = match self.frame {
            Some(f) if !f.streaming => f.len.saturating_sub(len),
            _ => 0,
        };
        let grow = floor.max(due.min(len));
        // The most the buffer can legitimately need: one whole frame plus
        // one chunk of the next. More means poll_event was not drained.
        let hard_cap = self.limits.max_frame_payload + MAX_HEADER_LEN + chunk;
        let grow = grow.min(hard_cap.saturating_sub(len));
        if grow == 0 {
            return Err(ProtocolError::ReadBufferFull { len, max: hard_cap });
        }
        if self.rbuf.try_reclaim(grow) {
            self.sync_rbuf_charge();
            return Ok(true);
        }
        // Grow in place (realloc: a large buffer moves by remapping pages,
        // not by copying), to what `Vec` amortisation will allocate: twice
        // the capacity, at least what is needed, at most the hard cap; and
        // while a frame arrives whole, no more than it and one chunk, so the
        // allocation a payload takes with it is barely larger than the payload.
        let need = len + grow;
        let cap = self.rbuf.capacity();
        let doubled = cap.saturating_mul(2);
        let target = if forced {
            need
        } else {
            let frame_cap = match self.frame {
                Some(f) if !f.streaming => len + due + chunk,
                _ => usize::MAX,
            };
            need.max(doubled.min(frame_cap)).min(hard_cap.max(need))
        };
        // `reserve` grows like `Vec`: to at least twice the capacity. Below
        // that, with a budget to keep exact, move to an allocation of
        // exactly `target` instead (one copy of what arrived, once per large
        // frame), so a payload that takes the allocation is charged barely
        // more than its size.
        let exact = target < doubled && self.account.has_budget();
        let alloc = if exact { target } else { target.max(doubled) };
        let old_charge = self.rbuf_charge;
        let more = if exact {
            alloc
        } else {
            alloc.saturating_sub(old_charge)
        };
        if more > 0 {
            if forced {
                self.account.charge_forced(more);
            } else if !self.account.try_charge(more) {
                self.blocked = more;
                return Ok(false);
            }
        }
        if exact {
            let mut fresh = BytesMut::with_capacity(target);
            fresh.extend_from_slice(&self.rbuf);
            self.rbuf = fresh;
            self.account.refund(old_charge);
            self.rbuf_charge = alloc;
        } else {
            self.rbuf_charge = self.rbuf_charge.max(alloc);
            self.rbuf.reserve(target - len);
        }
        // The allocator may round up; the true size is what is charged.
        self.sync_rbuf_charge();
        Ok(true)
    }

    /// Parses buffered input into the next event.
    ///
    /// `Ok(None)`: more bytes are needed (or the peer's close was received:
    /// nothing after it is parsed), or the budget refused memory the next
    /// step needs: then [`budget_blocked`](Self::budget_blocked) is `Some`
    /// and nothing was lost; call again once the budget has room.
    ///
    /// # Errors
    /// The first protocol violation, again on every later call.
    pub fn poll_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        self.blocked = 0;
        if let Some(e) = &self.error {
            let e = e.clone();
            self.discard_input();
            return Err(e);
        }
        if self.close.received() {
            self.discard_input();
            return Ok(None);
        }
        match self.next_event() {
            Ok(None) => Ok(None),
            Ok(some) => Ok(some),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn next_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        if let Some(job) = self.inflating.take() {
            return self.run_inflate(job);
        }
        loop {
            let mut f = match self.frame {
                Some(f) => f,
                None => {
                    let Some((header, n)) = parse_header(&self.rbuf)? else {
                        return Ok(None);
                    };
                    let f = self.admit(header)?;
                    self.rbuf.advance(n);
                    f
                }
            };
            // Unmask and validate the payload bytes that arrived since last time.
            let in_buf = f.processed - f.consumed;
            let avail = self.rbuf.len().min(f.len - f.consumed);
            if avail > in_buf {
                let fresh = &mut self.rbuf[in_buf..avail];
                if let Some(key) = f.mask {
                    apply_mask(fresh, key, f.processed);
                }
                if f.text {
                    self.utf8
                        .feed(fresh)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                f.processed += avail - in_buf;
            }
            if f.streaming {
                let take = f.processed - f.consumed;
                if take > 0 {
                    if !self.append_to_message(take)? {
                        // Paused by the budget: resume from here.
                        self.frame = Some(f);
                        return Ok(None);
                    }
                    f.consumed += take;
                }
                if f.consumed < f.len {
                    self.frame = Some(f);
                    return Ok(None);
                }
                self.frame = None;
                if f.fin {
                    return self.finish_message();
                }
                continue;
            }
            if f.processed < f.len {
                self.frame = Some(f);
                return Ok(None);
            }
            if f.compressed {
                self.frame = None;
                // The compressed bytes stay charged with the read buffer.
                let input = self.rbuf.split_to(f.len).freeze();
                return self.run_inflate(Box::new(Inflating {
                    input,
                    pos: 0,
                    out: Vec::new(),
                    text: f.message_text,
                    input_charge: 0,
                }));
            }
            let payload = if f.opcode.is_control() {
                self.take_payload(f.len)
            } else {
                match self.take_data_payload(f.len) {
                    Some(payload) => payload,
                    None => {
                        // Paused by the budget: the frame is whole; retry.
                        self.frame = Some(f);
                        return Ok(None);
                    }
                }
            };
            self.frame = None;
            return self.complete_frame(f.opcode, payload).map(Some);
        }
    }

    /// Checks a header against the role, the limits and the message state,
    /// before any byte of its payload is buffered.
    fn admit(&mut self, h: FrameHeader) -> Result<InFrame, ProtocolError> {
        // RSV1 marks a compressed message: legal only on the first frame of
        // a data message, and only once permessage-deflate is negotiated.
        let compressed_start = h.rsv == 0b100
            && self.deflate.is_some()
            && matches!(h.opcode, OpCode::Text | OpCode::Binary);
        if h.rsv != 0 && !compressed_start {
            return Err(ProtocolError::ReservedBits(h.rsv));
        }
        match (self.role, h.mask.is_some()) {
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLarge { len: h.payload_len });
            }
        }
        let max_frame = self.limits.max_frame_payload;
        if h.payload_len > max_frame as u64 {
            return Err(ProtocolError::FrameTooLarge {
                len: h.payload_len,
                max: max_frame,
            });
        }
        // Within max_frame_payload, so it fits usize.
        let len = h.payload_len as usize;
        let mut text = false;
        let mut streaming = false;
        let mut compressed = compressed_start;
        let mut message_text = false;
        match (h.opcode, &mut self.reasm) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(r)) => {
                let total = r.buf.len() as u64 + h.payload_len;
                if total > self.limits.max_message as u64 {
                    return Err(ProtocolError::MessageTooLarge {
                        len: total,
                        max: self.limits.max_message,
                    });
                }
                r.frames += 1;
                if r.frames > self.limits.max_fragments {
                    return Err(ProtocolError::TooManyFragments {
                        max: self.limits.max_fragments,
                    });
                }
                message_text = r.text;
                compressed = r.compressed;
                text = r.text && !compressed;
                streaming = true;
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            (op @ (OpCode::Text | OpCode::Binary), None) => {
                message_text = op == OpCode::Text;
                text = message_text && !compressed;
                self.utf8.reset();
                if !h.fin {
                    streaming = true;
                    self.reasm = Some(Reassembly {
                        text: message_text,
                        compressed,
                        buf: Vec::new(),
                        frames: 1,
                    });
                }
            }
            (OpCode::Close | OpCode::Ping | OpCode::Pong, _) => {}
        }
        Ok(InFrame {
            fin: h.fin,
            opcode: h.opcode,
            mask: h.mask,
            len,
            processed: 0,
            consumed: 0,
            streaming,
            text,
            compressed,
            message_text,
        })
    }

    /// Moves `n` processed payload bytes from the read buffer into the
    /// message being reassembled, growing it (charged) by doubling up to
    /// `max_message`. False when the budget refused the growth (nothing
    /// moved).
    fn append_to_message(&mut self, n: usize) -> Result<bool, ProtocolError> {
        let Some(r) = &mut self.reasm else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let need = r.buf.len() + n;
        if need > r.buf.capacity() {
            let cap = r.buf.capacity();
            let new_cap = need.max(cap.saturating_mul(2).min(self.limits.max_message));
            if !self.account.try_charge(new_cap - cap) {
                self.blocked = new_cap - cap;
                return Ok(false);
            }
            r.buf.reserve_exact(new_cap - r.buf.len());
            // Keep the books on the true capacity.
            let actual = r.buf.capacity();
            if actual > new_cap {
                self.account.charge_forced(actual - new_cap);
            }
        }
        r.buf.extend_from_slice(&self.rbuf[..n]);
        self.rbuf.advance(n);
        Ok(true)
    }

    fn finish_message(&mut self) -> Result<Option<Event>, ProtocolError> {
        let Some(r) = self.reasm.take() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let cap = r.buf.capacity();
        if r.compressed {
            return self.run_inflate(Box::new(Inflating {
                input: Bytes::from(r.buf),
                pos: 0,
                out: Vec::new(),
                text: r.text,
                input_charge: cap,
            }));
        }
        if r.text && self.utf8.finish().is_err() {
            self.account.refund(cap);
            return Err(ProtocolError::InvalidUtf8);
        }
        let payload = self.hand_out(r.buf, cap);
        Ok(Some(Event::Message(if r.text {
            Message::Text(Utf8Bytes::from_validated(payload))
        } else {
            Message::Binary(payload)
        })))
    }

    /// Hands `buf`, charged `charge` bytes, to the application: the charge
    /// goes with the payload until its last reference is dropped.
    fn hand_out<B>(&mut self, buf: B, charge: usize) -> Bytes
    where
        B: AsRef<[u8]> + Send + 'static,
        Bytes: From<B>,
    {
        match self.account.hand_over(charge) {
            Some(budget) if charge > 0 => charged_bytes(buf, budget, charge),
            _ => Bytes::from(buf),
        }
    }

    /// Takes a complete, unmasked payload off the front of the read buffer.
    fn take_payload(&mut self, len: usize) -> Bytes {
        if len <= COPY_OUT_MAX {
            let payload = Bytes::copy_from_slice(&self.rbuf[..len]);
            self.rbuf.advance(len);
            payload
        } else {
            self.rbuf.split_to(len).freeze()
        }
    }

    /// Takes a data frame's payload off the front of the read buffer, with
    /// its charge when a budget is attached; `None` when the budget refused
    /// the copy (nothing changed, `blocked` is set).
    fn take_data_payload(&mut self, len: usize) -> Option<Bytes> {
        if !self.account.has_budget() {
            return Some(self.take_payload(len));
        }
        let whole = self.rbuf_charge;
        let rest = self.rbuf.len() - len;
        if len > COPY_OUT_MAX
            && whole > 0
            && whole <= len + len / 4 + ZERO_COPY_SLACK
            && rest <= REMAINDER_MOVE_MAX
        {
            // No copy of the payload: it takes the allocation and all its
            // charge; the few bytes after it move to a fresh buffer.
            let room = if rest == 0 { 0 } else { rest.max(MIN_GROW) };
            if !self.account.try_charge(room) {
                self.blocked = room;
                return None;
            }
            let mut piece = std::mem::take(&mut self.rbuf);
            let tail = piece.split_off(len);
            if room > 0 {
                self.rbuf = BytesMut::with_capacity(room);
                self.rbuf.extend_from_slice(&tail);
            }
            drop(tail);
            self.rbuf_charge = room;
            self.sync_rbuf_charge();
            return Some(self.hand_out(piece, whole));
        }
        let charge = len + PAYLOAD_OVERHEAD;
        if !self.account.try_charge(charge) {
            self.blocked = charge;
            return None;
        }
        let copy = self.rbuf[..len].to_vec();
        self.rbuf.advance(len);
        Some(self.hand_out(copy, charge))
    }

    fn complete_frame(&mut self, opcode: OpCode, payload: Bytes) -> Result<Event, ProtocolError> {
        Ok(match opcode {
            OpCode::Text => {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                Event::Message(Message::Text(Utf8Bytes::from_validated(payload)))
            }
            OpCode::Binary => Event::Message(Message::Binary(payload)),
            OpCode::Ping => {
                self.answer_ping(payload.clone());
                Event::Ping(payload)
            }
            OpCode::Pong => Event::Pong(payload),
            OpCode::Close => {
                let frame = parse_close_payload(payload)?;
                // Our reply echoes the peer's code, as RFC 6455 §5.5.1
                // suggests (unless our own close is already due or queued).
                self.close.receive(frame.as_ref());
                self.discard_input();
                Event::Close(frame)
            }
            OpCode::Continuation => return Err(ProtocolError::UnexpectedContinuation),
        })
    }
}

impl Protocol {
    /// Inflates one compressed message, bounded by `max_message` and by
    /// the budget while it runs. A growth the budget refuses pauses it (the
    /// job is kept, `blocked` set, `Ok(None)`); the next `poll_event`
    /// resumes exactly where it stopped, context included.
    fn run_inflate(&mut self, mut job: Box<Inflating>) -> Result<Option<Event>, ProtocolError> {
        let max = self.limits.max_message;
        let Some(state) = self.deflate.as_mut() else {
            self.account.refund(job.input_charge + job.out.capacity());
            return Err(ProtocolError::ReservedBits(0b100));
        };
        let mut ctx = match state.inflater.take() {
            Some(ctx) => ctx,
            None => {
                if !self.account.try_charge(INFLATE_CONTEXT_BYTES) {
                    self.blocked = INFLATE_CONTEXT_BYTES;
                    self.inflating = Some(job);
                    return Ok(None);
                }
                Box::new(new_inflater())
            }
        };
        let account = &mut self.account;
        let mut grow = |n: usize| {
            if account.try_charge(n) {
                Ok(())
            } else {
                Err(())
            }
        };
        let Inflating {
            input, pos, out, ..
        } = &mut *job;
        let result = inflate_bounded(&mut ctx, input, pos, max, out, &mut grow);
        match result {
            Ok(()) => {
                // Without context takeover the window starts empty for every
                // message: reset, and keep the context for the next one while
                // traffic flows (`release_idle_buffers` frees it when quiet).
                if state.params.server_no_context_takeover {
                    ctx.reset(false);
                }
                state.inflater = Some(ctx);
                let Inflating {
                    out,
                    text,
                    input_charge,
                    ..
                } = *job;
                self.account.refund(input_charge);
                self.inflated_message(text, out).map(Some)
            }
            Err(InflateError::Budget) => {
                // Keep the context (and its charge) with the paused job.
                state.inflater = Some(ctx);
                self.blocked = INFLATE_CHUNK;
                self.inflating = Some(job);
                Ok(None)
            }
            Err(e) => {
                self.account
                    .refund(INFLATE_CONTEXT_BYTES + job.input_charge + job.out.capacity());
                Err(match e {
                    InflateError::TooLarge(len) => ProtocolError::MessageTooLarge {
                        len: len as u64,
                        max,
                    },
                    InflateError::Budget | InflateError::Corrupt => {
                        ProtocolError::InvalidCompressedData
                    }
                })
            }
        }
    }

    /// The message for an inflated (charged) buffer, handed out with its charge.
    fn inflated_message(&mut self, text: bool, inflated: Vec<u8>) -> Result<Event, ProtocolError> {
        let cap = inflated.capacity();
        if text && utf8::validate(&inflated).is_err() {
            self.account.refund(cap);
            return Err(ProtocolError::InvalidUtf8);
        }
        let payload = self.hand_out(inflated, cap);
        Ok(Event::Message(if text {
            Message::Text(Utf8Bytes::from_validated(payload))
        } else {
            Message::Binary(payload)
        }))
    }
}

fn parse_close_payload(payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        n if n < CLOSE_CODE_LEN => Err(ProtocolError::InvalidClosePayload),
        _ => {
            let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.as_u16()));
            }
            let reason = payload.slice(CLOSE_CODE_LEN..);
            utf8::validate(&reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_validated(reason),
            }))
        }
    }
}
