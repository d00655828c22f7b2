//! Receiving: read buffer growth, header admission, payload, reassembly.

use bytes::buf::Limit;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{InFrame, Protocol, Reassembly, Role};
use crate::deflate::{
    INFLATE_CHUNK, INFLATE_CONTEXT_BYTES, InflateError, inflate_bounded, new_inflater,
};
use crate::error::ProtocolError;
use crate::event::Event;
use crate::frame::{
    CloseCode, CloseFrame, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, parse_header,
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

impl Protocol {
    /// Lends spare capacity of the read buffer, to append received bytes to
    /// (for example with `tokio_util::io::poll_read_buf`). The buffer grows
    /// only here, by [`Limits::read_chunk`](crate::Limits::read_chunk) or by
    /// doubling what has arrived of the current frame, charged to the budget
    /// before it is allocated.
    ///
    /// # Errors
    /// [`ProtocolError::BudgetExhausted`] when the budget refuses the growth
    /// (the error is sticky, as any other).
    pub fn read_buf(&mut self) -> Result<Limit<&mut BytesMut>, ProtocolError> {
        self.rewind_empty_rbuf();
        let spare = self.read_spare();
        if spare == 0 {
            if let Err(e) = self.grow_rbuf(self.limits.read_chunk) {
                return Err(self.fail(e));
            }
        }
        let spare = self.read_spare();
        Ok((&mut self.rbuf).limit(spare))
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
    /// # Errors
    /// As [`read_buf`](Self::read_buf).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProtocolError> {
        self.rewind_empty_rbuf();
        while !bytes.is_empty() {
            if self.read_spare() == 0 {
                if let Err(e) = self.grow_rbuf(bytes.len().max(MIN_GROW)) {
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
        if self.rbuf.is_empty() && self.read_spare() < self.rbuf_charge / 2 {
            let _ = self.rbuf.try_reclaim(self.rbuf_charge);
        }
    }

    /// Grows the read buffer by at least `floor` bytes (more while a large
    /// frame is arriving).
    fn grow_rbuf(&mut self, floor: usize) -> Result<(), ProtocolError> {
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
            return Err(ProtocolError::MessageTooLarge {
                len: len as u64,
                max: hard_cap,
            });
        }
        if self.rbuf_charge > 0 && self.rbuf.try_reclaim(grow) {
            return Ok(());
        }
        // Grow in place (realloc: a large buffer moves by remapping pages,
        // not by copying), to what `Vec` amortisation will allocate: twice
        // the capacity, at least what is needed, at most the hard cap.
        // That is charged first; a refusal fails the connection.
        let target = (len + grow)
            .max(self.rbuf.capacity().saturating_mul(2))
            .min(hard_cap.max(len + grow));
        if target > self.rbuf_charge {
            self.account.charge(target - self.rbuf_charge)?;
            self.rbuf_charge = target;
        }
        self.rbuf.reserve(target - len);
        // The allocator may round up; the true size is what is charged.
        if self.rbuf.capacity() > self.rbuf_charge {
            self.account
                .charge_forced(self.rbuf.capacity() - self.rbuf_charge);
            self.rbuf_charge = self.rbuf.capacity();
        }
        Ok(())
    }

    /// Parses buffered input into the next event.
    ///
    /// `Ok(None)`: more bytes are needed (or the peer's close was received:
    /// nothing after it is parsed).
    ///
    /// # Errors
    /// The first protocol violation, again on every later call.
    pub fn poll_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        if let Some(e) = &self.error {
            let e = e.clone();
            self.discard_input();
            return Err(e);
        }
        if self.close_received {
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
                    self.append_to_message(take)?;
                    f.consumed += take;
                }
                if f.consumed < f.len {
                    self.frame = Some(f);
                    return Ok(None);
                }
                self.frame = None;
                if f.fin {
                    return self.finish_message().map(Some);
                }
                continue;
            }
            if f.processed < f.len {
                self.frame = Some(f);
                return Ok(None);
            }
            self.frame = None;
            if f.compressed {
                let compressed = self.rbuf.split_to(f.len);
                let inflated = self.inflate(&compressed);
                return self.inflated_message(f.message_text, inflated?).map(Some);
            }
            let payload = self.take_payload(f.len);
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
    /// `max_message`.
    fn append_to_message(&mut self, n: usize) -> Result<(), ProtocolError> {
        let Some(r) = &mut self.reasm else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let need = r.buf.len() + n;
        if need > r.buf.capacity() {
            let cap = r.buf.capacity();
            let new_cap = need.max(cap.saturating_mul(2).min(self.limits.max_message));
            self.account.charge(new_cap - cap)?;
            r.buf.reserve_exact(new_cap - r.buf.len());
            // Keep the books on the true capacity.
            let actual = r.buf.capacity();
            if actual > new_cap {
                self.account.charge_forced(actual - new_cap);
            }
        }
        r.buf.extend_from_slice(&self.rbuf[..n]);
        self.rbuf.advance(n);
        Ok(())
    }

    fn finish_message(&mut self) -> Result<Event, ProtocolError> {
        let Some(r) = self.reasm.take() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        if r.compressed {
            let inflated = self.inflate(&r.buf);
            self.account.refund(r.buf.capacity());
            return self.inflated_message(r.text, inflated?);
        }
        self.account.refund(r.buf.capacity());
        let payload = Bytes::from(r.buf);
        let message = if r.text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            Message::Text(Utf8Bytes::from_validated(payload))
        } else {
            Message::Binary(payload)
        };
        Ok(Event::Message(message))
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
                self.close_received = true;
                if !self.close_sent() {
                    // Echo the peer's code, as RFC 6455 §5.5.1 suggests.
                    self.pending_close = Some(frame.as_ref().map(|f| CloseFrame::new(f.code, "")));
                }
                self.discard_input();
                Event::Close(frame)
            }
            OpCode::Continuation => return Err(ProtocolError::UnexpectedContinuation),
        })
    }
}

impl Protocol {
    /// Inflates one compressed message, bounded by `max_message` and the
    /// budget while it runs. The returned buffer is charged; the caller
    /// refunds it when it hands the message out.
    fn inflate(&mut self, compressed: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let max = self.limits.max_message;
        let Some(state) = self.deflate.as_mut() else {
            return Err(ProtocolError::ReservedBits(0b100));
        };
        let mut ctx = match state.inflater.take() {
            Some(ctx) => ctx,
            None => {
                self.account.charge(INFLATE_CONTEXT_BYTES)?;
                Box::new(new_inflater())
            }
        };
        let mut out = Vec::new();
        let account = &mut self.account;
        let mut grow = |n: usize| account.charge(n).map_err(|_| ());
        let result = inflate_bounded(&mut ctx, compressed, max, &mut out, &mut grow);
        if result.is_ok() {
            // Without context takeover the window starts empty for every
            // message: reset, and keep the context for the next one while
            // traffic flows (`release_idle_buffers` frees it when quiet).
            if state.params.server_no_context_takeover {
                ctx.reset(false);
            }
            state.inflater = Some(ctx);
        } else {
            self.account.refund(INFLATE_CONTEXT_BYTES);
        }
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                let held = self.account.held();
                self.account.refund(out.capacity());
                Err(match e {
                    InflateError::TooLarge(len) => ProtocolError::MessageTooLarge {
                        len: len as u64,
                        max,
                    },
                    InflateError::Budget => ProtocolError::BudgetExhausted {
                        requested: INFLATE_CHUNK,
                        held,
                    },
                    InflateError::Corrupt => ProtocolError::InvalidCompressedData,
                })
            }
        }
    }

    fn inflated_message(&mut self, text: bool, inflated: Vec<u8>) -> Result<Event, ProtocolError> {
        self.account.refund(inflated.capacity());
        let payload = Bytes::from(inflated);
        Ok(Event::Message(if text {
            utf8::validate(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
            Message::Text(Utf8Bytes::from_validated(payload))
        } else {
            Message::Binary(payload)
        }))
    }
}

fn parse_close_payload(payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::InvalidClosePayload),
        _ => {
            let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.as_u16()));
            }
            let reason = payload.slice(2..);
            utf8::validate(&reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_validated(reason),
            }))
        }
    }
}
