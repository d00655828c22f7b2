//! Sending: the bounded outbound queue, reply slots and the close frame.

use bytes::Bytes;

use super::{Protocol, Role};
use crate::deflate::{
    MIN_DEFLATE_WINDOW_BITS, deflate_context_bytes, deflate_message, new_deflater,
};
use crate::error::{ConfigError, SendError};
use crate::frame::{
    CLOSE_CODE_LEN, CloseCode, CloseFrame, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
    OpCode, encode_header,
};
use crate::mask::mask_into_uninit;
use crate::message::Message;

impl Protocol {
    /// Queues a message as one frame (masked in the client role, which copies
    /// the payload once into the outbound buffer).
    ///
    /// # Errors
    /// The message comes back in a [`SendError`]: `Full` when the queue
    /// already holds data and this message would take it past
    /// [`Limits::max_outbound_bytes`](crate::Limits::max_outbound_bytes)
    /// (a larger message is accepted into an empty queue), `Closed` after a
    /// close frame was queued or the connection failed, `BudgetExhausted`
    /// when the budget refuses the bytes.
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        if self.close.started() {
            return Err(SendError::Closed(message));
        }
        let (opcode, payload) = match &message {
            Message::Text(t) => (OpCode::Text, t.as_bytes()),
            Message::Binary(b) => (OpCode::Binary, b),
        };
        let pending = self.pending_out();
        if pending > 0 && pending + MAX_HEADER_LEN + payload.len() > self.limits.max_outbound_bytes
        {
            return Err(SendError::Full(message));
        }
        let compressed = match self.compress(payload) {
            Ok(c) => c,
            Err(()) => return Err(SendError::BudgetExhausted(message)),
        };
        let (rsv, body): (u8, &[u8]) = match &compressed {
            Some(c) => (0b100, c),
            None => (0, payload),
        };
        if self
            .reserve_out(MAX_HEADER_LEN + body.len(), false)
            .is_err()
        {
            if compressed.is_some() {
                // The compressor's window now holds a message the peer will
                // never see; with context takeover a later message could
                // refer back into it. Start afresh (the stream is byte
                // aligned after the sync flush, so the peer's inflater
                // simply sees new blocks that refer to nothing earlier).
                if let Some(ctx) = self.deflate.as_mut().and_then(|d| d.deflater.as_mut()) {
                    ctx.reset();
                }
            }
            return Err(SendError::BudgetExhausted(message));
        }
        self.write_frame_rsv(opcode, rsv, body);
        Ok(())
    }

    /// Queues a ping. A control frame carries at most
    /// [`MAX_CONTROL_PAYLOAD`] (125) bytes (RFC 6455 §5.5), so a longer
    /// `payload` is cut to its first 125 bytes.
    ///
    /// # Errors
    /// `Full`, `Closed` or `BudgetExhausted` as for [`send`](Self::send),
    /// with the payload handed back as a binary message.
    pub fn ping(&mut self, payload: Bytes) -> Result<(), SendError> {
        let payload = payload.slice(..payload.len().min(MAX_CONTROL_PAYLOAD));
        if self.close.started() {
            return Err(SendError::Closed(Message::Binary(payload)));
        }
        let pending = self.pending_out();
        let frame_len = MAX_HEADER_LEN + payload.len();
        if pending > 0 && pending + frame_len > self.limits.max_outbound_bytes {
            return Err(SendError::Full(Message::Binary(payload)));
        }
        if self.reserve_out(frame_len, false).is_err() {
            return Err(SendError::BudgetExhausted(Message::Binary(payload)));
        }
        self.write_frame(OpCode::Ping, &payload);
        Ok(())
    }

    /// Starts the close handshake: a close frame with `code` and `reason`
    /// (cut to [`MAX_CLOSE_REASON`](crate::frame::MAX_CLOSE_REASON) (123) bytes at a character boundary) goes out after what is
    /// already queued. Later sends are refused. Calling it again, or after
    /// the peer's close was answered, does nothing.
    ///
    /// # Errors
    /// A [`ConfigError`] if `code` may not be sent (1005, 1006, 1015, codes
    /// outside 1000–4999, reserved ones).
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), ConfigError> {
        if !code.is_valid_on_wire() {
            return Err(ConfigError {
                field: "close code",
                value: code.as_u16().to_string(),
                problem: "may not be sent in a close frame",
            });
        }
        self.close.start(CloseFrame::new(code, reason));
        Ok(())
    }

    /// The bytes to write next (empty when there is nothing to send). Due
    /// control replies are appended here: the close frame first, which also
    /// cancels a pending pong; else the newest pong.
    pub fn poll_transmit(&mut self) -> &[u8] {
        if let Some(close) = self.close.take_due() {
            self.pending_pong = None;
            let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
            let n = match &close {
                None => 0,
                Some(f) => {
                    let (code, reason) = payload.split_at_mut(CLOSE_CODE_LEN);
                    code.copy_from_slice(&f.code.as_u16().to_be_bytes());
                    reason[..f.reason.len()].copy_from_slice(f.reason.as_bytes());
                    CLOSE_CODE_LEN + f.reason.len()
                }
            };
            // Forced: the close must go out even when the budget is spent.
            let _ = self.reserve_out(MAX_HEADER_LEN + n, true);
            self.write_frame(OpCode::Close, &payload[..n]);
        } else if let Some(pong) = self.pending_pong.take() {
            if !self.close.started() {
                let _ = self.reserve_out(MAX_HEADER_LEN + pong.len(), true);
                self.write_frame(OpCode::Pong, &pong);
            }
        }
        &self.wbuf[self.wpos..]
    }

    /// Marks `n` bytes returned by [`poll_transmit`](Self::poll_transmit) as
    /// written. A fully written buffer is kept for reuse until
    /// [`release_idle_buffers`](Self::release_idle_buffers).
    pub fn advance_transmit(&mut self, n: usize) {
        let n = n.min(self.pending_out());
        self.written_total += n as u64;
        self.wpos += n;
        if self.wpos == self.wbuf.len() {
            // Kept for the next frame; `release_idle_buffers` frees it.
            self.wbuf.clear();
            self.wpos = 0;
        }
    }

    /// Queues the pong for a received ping. While the outbound queue has
    /// room, every ping gets its pong, in order with what we send after it
    /// (so an echoed message never overtakes the pong for a ping received
    /// before it). Beyond [`Limits::max_outbound_bytes`](crate::Limits)
    /// only the newest waits, in one slot: a ping flood against a peer that
    /// does not read costs at most 125 bytes more.
    pub(super) fn answer_ping(&mut self, payload: Bytes) {
        if self.close.started() {
            return;
        }
        let frame_len = MAX_HEADER_LEN + payload.len();
        if self.pending_out() + frame_len <= self.limits.max_outbound_bytes {
            self.pending_pong = None;
            let _ = self.reserve_out(frame_len, true);
            self.write_frame(OpCode::Pong, &payload);
        } else {
            self.pending_pong = Some(payload);
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// True when there are bytes to write or a control reply is due.
    pub fn has_transmit(&self) -> bool {
        self.pending_out() > 0
            || self.close.is_due()
            || (self.pending_pong.is_some() && !self.close.started())
    }

    /// Makes room for `n` more bytes in the write buffer, compacting written
    /// bytes away first and charging any growth.
    fn reserve_out(&mut self, n: usize, forced: bool) -> Result<(), ()> {
        if self.wbuf.capacity() - self.wbuf.len() >= n {
            return Ok(());
        }
        if self.wpos > 0 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
            if self.wbuf.capacity() - self.wbuf.len() >= n {
                return Ok(());
            }
        }
        let cap = self.wbuf.capacity();
        let need = self.wbuf.len() + n;
        // Double for amortised growth, but not past the outbound limit
        // unless this one frame needs it.
        let new_cap = need.max(cap.saturating_mul(2).min(self.limits.max_outbound_bytes));
        if forced {
            self.account.charge_forced(new_cap - cap);
        } else {
            self.account.charge(new_cap - cap).map_err(|_| ())?;
        }
        self.wbuf.reserve_exact(new_cap - self.wbuf.len());
        let actual = self.wbuf.capacity();
        if actual > new_cap {
            self.account.charge_forced(actual - new_cap);
        }
        Ok(())
    }

    /// Compresses an outgoing payload when permessage-deflate is on and it
    /// is worth it (at least the threshold; and never with a window of 8,
    /// which zlib cannot honour: such messages go uncompressed, as RFC 7692
    /// allows per message). The compressor is charged while it lives.
    ///
    /// `Ok(None)`: send `payload` as it is. `Err(())`: the budget refused
    /// the compressor (or zlib failed, which it does not for a valid
    /// context); the caller hands the message back.
    fn compress(&mut self, payload: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let Some(state) = self.deflate.as_mut() else {
            return Ok(None);
        };
        let p = state.params;
        if payload.len() < p.threshold || p.client_max_window_bits < MIN_DEFLATE_WINDOW_BITS {
            return Ok(None);
        }
        let cost = deflate_context_bytes(p.client_max_window_bits);
        let mut ctx = match state.deflater.take() {
            Some(ctx) => ctx,
            None => {
                self.account.charge(cost).map_err(|_| ())?;
                Box::new(new_deflater(p.level, p.client_max_window_bits))
            }
        };
        let mut out = Vec::new();
        let result = deflate_message(&mut ctx, payload, &mut out);
        if result.is_err() {
            self.account.refund(cost);
        } else if let Some(state) = self.deflate.as_mut() {
            // Without context takeover: reset, and keep it while traffic
            // flows (`release_idle_buffers` frees it when quiet).
            if p.client_no_context_takeover {
                ctx.reset();
            }
            state.deflater = Some(ctx);
        }
        result.map(|()| Some(out))
    }

    /// Appends one whole frame; room was reserved by the caller.
    fn write_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        self.write_frame_rsv(opcode, 0, payload);
    }

    /// Appends one whole frame with RSV bits; room was reserved by the caller.
    fn write_frame_rsv(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]) {
        let mask = match (self.role, &mut self.keys) {
            (Role::Client, Some(keys)) => Some(keys.next_key()),
            _ => None,
        };
        let header = FrameHeader {
            fin: true,
            rsv,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&header, &mut head);
        self.queued_total += (n + payload.len()) as u64;
        self.wbuf.extend_from_slice(&head[..n]);
        match mask {
            Some(key) => {
                let start = self.wbuf.len();
                self.wbuf.reserve(payload.len());
                mask_into_uninit(
                    &mut self.wbuf.spare_capacity_mut()[..payload.len()],
                    payload,
                    key,
                );
                // SAFETY: the call above initialised the `payload.len()`
                // bytes after `start`, within the reserved capacity.
                #[allow(unsafe_code)]
                unsafe {
                    self.wbuf.set_len(start + payload.len());
                }
            }
            None => self.wbuf.extend_from_slice(payload),
        }
    }
}
