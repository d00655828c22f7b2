//! The WebSocket state machine for one connection, either role.

mod account;
mod close;
mod recv;
mod send;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::budget::MemoryBudget;
use crate::deflate::{DeflateParams, INFLATE_CONTEXT_BYTES, deflate_context_bytes};
use crate::error::ProtocolError;
use crate::frame::{CloseFrame, OpCode};
use crate::keys::MaskKeys;
use crate::limits::Limits;
use crate::utf8::Utf8Validator;

use account::Account;
use close::Close;

/// Which end of the connection this machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Masks what it sends; rejects masked frames.
    Client,
    /// Sends unmasked; rejects unmasked frames.
    Server,
}

/// One WebSocket connection's protocol state, without I/O.
///
/// # Driving contract
///
/// The runtime owns the socket and moves bytes; this machine owns every
/// buffer and every rule. It has no clock and no randomness: keepalive and
/// close deadlines are the runtime's policy, masking keys come from the
/// [`MaskKeys`] source given at construction.
///
/// - **Inputs.** [`read_buf`](Self::read_buf) lends spare capacity of the
///   read buffer (grown by at most [`Limits::read_chunk`] or by doubling what
///   has *arrived*, never by what a header claims, and charged to the budget
///   first); the runtime reads socket bytes straight into it.
///   [`feed`](Self::feed) copies a slice in (for tests and fuzzers).
/// - **Commands.** [`send`](Self::send), [`ping`](Self::ping),
///   [`close`](Self::close). A message that is not accepted is handed back in
///   a [`crate::SendError`].
/// - **Outputs.** [`poll_transmit`](Self::poll_transmit) returns the bytes to
///   write next and [`advance_transmit`](Self::advance_transmit) consumes
///   what was written. [`poll_event`](Self::poll_event) parses buffered
///   input into the next [`Event`](crate::Event).
/// - **Order.** After reading, call `poll_event` until it returns
///   `Ok(None)` before lending the read buffer again (that is what keeps the
///   read buffer within one frame). After any input or command, write what
///   `poll_transmit` returns: pongs and close replies are produced there.
/// - **Backpressure.** [`wants_read`](Self::wants_read) is false while more
///   than [`Limits::max_outbound_bytes`] wait to be written: stop reading
///   until the peer takes our bytes, and nothing grows.
/// - **Failure is sticky.** The first [`ProtocolError`] is kept: it is
///   returned by every later `poll_event`, a close frame with its
///   [`close_code`](ProtocolError::close_code) is scheduled (unless ours
///   was due or sent already: a failure is a close like any other, and the
///   first close wins), sends are refused and further input is discarded.
/// - **Close.** [`is_closed`](Self::is_closed) is true once close frames
///   went both ways and ours was written. A client then waits (bounded) for
///   the server to end TCP; a server ends it.
///
/// ```
/// use wsfleet_proto::{Event, FixedKey, Limits, Message, Protocol};
/// let mut client = Protocol::client(Limits::default(), Box::new(FixedKey([1, 2, 3, 4])));
/// let mut server = Protocol::server(Limits::default());
/// client.send(Message::text("hello")).unwrap();
/// let wire = client.poll_transmit().to_vec();
/// client.advance_transmit(wire.len());
/// server.feed(&wire).unwrap();
/// assert_eq!(server.poll_event().unwrap(), Some(Event::Message(Message::text("hello"))));
/// ```
pub struct Protocol {
    role: Role,
    limits: Limits,
    keys: Option<Box<dyn MaskKeys>>,
    account: Account,
    /// The close handshake. A failure moves it too (our close frame with the
    /// error's code), so every "may this still happen?" asks only this.
    close: Close,
    /// The first fatal error, kept for `poll_event` to return again.
    error: Option<ProtocolError>,
    /// Bytes received and not yet parsed. Starts empty (no allocation).
    rbuf: BytesMut,
    /// Bytes charged for `rbuf`'s current allocation.
    rbuf_charge: usize,
    /// The frame whose payload is arriving.
    frame: Option<InFrame>,
    /// A fragmented message being reassembled.
    reasm: Option<Reassembly>,
    /// UTF-8 state of the text message in progress (one at a time).
    utf8: Utf8Validator,
    /// Bytes to write; `wbuf[wpos..]` is still unwritten.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Newest unanswered ping payload (one slot: a ping flood costs 125 bytes).
    pending_pong: Option<Bytes>,
    /// Bytes ever appended to / written from the outbound queue.
    queued_total: u64,
    written_total: u64,
    /// permessage-deflate, when negotiated.
    deflate: Option<DeflateState>,
    /// Bytes the last refused growth asked for, while the step that asked
    /// can be retried (see [`Protocol::budget_blocked`]); 0: none (a
    /// reservation of nothing is never refused).
    blocked: usize,
    /// A compressed message whose inflation the budget paused.
    inflating: Option<Box<Inflating>>,
}

/// A compressed message being inflated (kept while the budget pauses it).
struct Inflating {
    /// The compressed payload.
    input: Bytes,
    /// Bytes of `input` (then of the sync-flush trailer) inflated so far.
    pos: usize,
    /// Inflated so far; charged by its capacity.
    out: Vec<u8>,
    text: bool,
    /// Bytes charged for `input` (a reassembled buffer), refunded when done.
    input_charge: usize,
}

/// Negotiated compression and its (charged) contexts.
struct DeflateState {
    params: DeflateParams,
    inflater: Option<Box<flate2::Decompress>>,
    deflater: Option<Box<flate2::Compress>>,
}

/// The frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: usize,
    /// Payload bytes unmasked and validated so far.
    processed: usize,
    /// Payload bytes moved out of the read buffer (streamed frames only).
    consumed: usize,
    /// Part of a fragmented message: streamed into the reassembly buffer as
    /// it arrives, instead of being kept whole in the read buffer.
    streaming: bool,
    /// Payload must be UTF-8 as it arrives (a text frame or a continuation
    /// of text, uncompressed: compressed text is checked after inflating).
    text: bool,
    /// Part of a compressed message (RSV1 on its first frame).
    compressed: bool,
    /// The message is text (for compressed frames, whose `text` is false).
    message_text: bool,
}

struct Reassembly {
    text: bool,
    compressed: bool,
    buf: Vec<u8>,
    frames: usize,
}

impl Protocol {
    /// A client-role machine: frames it sends are masked with keys from `keys`.
    pub fn client(limits: Limits, keys: Box<dyn MaskKeys>) -> Self {
        Self::new(Role::Client, limits, Some(keys))
    }

    /// A server-role machine.
    pub fn server(limits: Limits) -> Self {
        Self::new(Role::Server, limits, None)
    }

    fn new(role: Role, limits: Limits, keys: Option<Box<dyn MaskKeys>>) -> Self {
        Self {
            role,
            limits,
            keys,
            account: Account::default(),
            close: Close::Open,
            error: None,
            rbuf: BytesMut::new(),
            rbuf_charge: 0,
            frame: None,
            reasm: None,
            utf8: Utf8Validator::new(),
            wbuf: Vec::new(),
            wpos: 0,
            pending_pong: None,
            queued_total: 0,
            written_total: 0,
            deflate: None,
            blocked: 0,
            inflating: None,
        }
    }

    /// Charges every buffer growth of this connection to `budget` as well.
    #[must_use]
    pub fn with_budget(mut self, budget: Arc<dyn MemoryBudget>) -> Self {
        self.account.set_budget(budget);
        self
    }

    /// Enables permessage-deflate with the parameters the handshake
    /// negotiated (client role: see [`crate::deflate::DeflateConfig::accept`]).
    #[must_use]
    pub fn with_deflate(mut self, params: DeflateParams) -> Self {
        self.deflate = Some(DeflateState {
            params,
            inflater: None,
            deflater: None,
        });
        self
    }

    /// The negotiated compression, if any.
    pub fn deflate_params(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref().map(|d| &d.params)
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes of buffer this connection holds now (read buffer, reassembly,
    /// outbound queue), as charged to the budget. O(1).
    pub fn buffered_bytes(&self) -> usize {
        self.account.held()
    }

    /// The most [`buffered_bytes`](Self::buffered_bytes) ever held.
    pub fn peak_buffered_bytes(&self) -> usize {
        self.account.peak()
    }

    /// `Some(bytes)` when the last [`poll_event`](Self::poll_event) or
    /// [`try_read_buf`](Self::try_read_buf) stopped because the budget
    /// refused `bytes`: nothing was lost, and the same call goes on from
    /// there once the budget has room. A runtime either waits for memory
    /// (stops reading: backpressure) or gives up with
    /// [`fail_for_budget`](Self::fail_for_budget).
    pub fn budget_blocked(&self) -> Option<usize> {
        (self.blocked > 0).then_some(self.blocked)
    }

    /// Ends the connection because the budget cannot give it what it asked
    /// for: the sticky [`ProtocolError::BudgetExhausted`], a close frame
    /// with 1009, and every buffered byte released.
    ///
    /// `requested`: what the refused step asked for, for the error (`None`:
    /// what [`budget_blocked`](Self::budget_blocked) says).
    pub fn fail_for_budget(&mut self, requested: Option<usize>) -> ProtocolError {
        let requested = requested.unwrap_or(std::mem::take(&mut self.blocked));
        let held = self.account.held();
        self.fail(ProtocolError::BudgetExhausted { requested, held })
    }

    /// The sticky error, if the connection failed.
    pub fn error(&self) -> Option<&ProtocolError> {
        self.error.as_ref()
    }

    /// False while the outbound queue is above [`Limits::max_outbound_bytes`]:
    /// the runtime should stop reading until it drains.
    pub fn wants_read(&self) -> bool {
        self.pending_out() <= self.limits.max_outbound_bytes
    }

    /// Bytes ever queued for writing (every frame, control frames included).
    /// A message sent when this read `q` has reached the socket once
    /// [`bytes_written_total`](Self::bytes_written_total) `>= q`.
    pub fn bytes_queued_total(&self) -> u64 {
        self.queued_total
    }

    /// Bytes ever reported written with [`advance_transmit`](Self::advance_transmit).
    pub fn bytes_written_total(&self) -> u64 {
        self.written_total
    }

    /// A close frame was received from the peer.
    pub fn close_received(&self) -> bool {
        self.close.received()
    }

    /// Our close frame was queued for writing (it may not be written yet).
    pub fn close_sent(&self) -> bool {
        self.close.started()
    }

    /// Close frames went both ways and ours is written: the WebSocket is
    /// closed and only TCP remains to be ended.
    pub fn is_closed(&self) -> bool {
        self.close == Close::Closed && self.pending_out() == 0
    }

    /// True while a frame or fragmented message is partly received: an EOF
    /// now would cut it.
    pub fn is_mid_message(&self) -> bool {
        self.frame.is_some()
            || self.reasm.is_some()
            || self.inflating.is_some()
            || !self.rbuf.is_empty()
    }

    /// Frees buffers that hold nothing (an empty read buffer, a flushed
    /// write buffer). Buffers are otherwise kept for reuse while traffic
    /// flows; call this once a connection has gone quiet, so an idle
    /// connection holds no buffer memory.
    pub fn release_idle_buffers(&mut self) {
        // A buffer charged nothing may still be a view into an allocation a
        // handed-out payload owns: drop it too, so it pins nothing.
        if self.rbuf.is_empty() && (self.rbuf_charge > 0 || self.rbuf.capacity() > 0) {
            self.rbuf = BytesMut::new();
            self.account.refund(self.rbuf_charge);
            self.rbuf_charge = 0;
        }
        if self.pending_out() == 0 && self.wbuf.capacity() > 0 {
            self.account.refund(self.wbuf.capacity());
            self.wbuf = Vec::new();
            self.wpos = 0;
        }
        // Compression contexts without context takeover hold no state
        // between messages: free them too (with takeover they must stay,
        // and so must the inflater of a message the budget paused).
        if let Some(state) = self.deflate.as_mut().filter(|_| self.inflating.is_none()) {
            let p = state.params;
            if p.server_no_context_takeover && state.inflater.take().is_some() {
                self.account.refund(INFLATE_CONTEXT_BYTES);
            }
            if p.client_no_context_takeover && state.deflater.take().is_some() {
                self.account
                    .refund(deflate_context_bytes(p.client_max_window_bits));
            }
        }
    }

    /// Records the first fatal error, schedules the close frame it deserves
    /// (unless ours is already due or queued) and drops everything
    /// half-received.
    fn fail(&mut self, error: ProtocolError) -> ProtocolError {
        if self.error.is_none() {
            self.close
                .start(CloseFrame::new(error.close_code(), error.as_str()));
            self.error = Some(error.clone());
        }
        self.discard_input();
        error
    }

    /// Forgets every received byte and partial message, returning their
    /// memory: for a runtime that gives up on the peer and reads no more.
    pub fn discard_input(&mut self) {
        self.frame = None;
        if let Some(r) = self.reasm.take() {
            self.account.refund(r.buf.capacity());
        }
        if let Some(job) = self.inflating.take() {
            self.account.refund(job.input_charge + job.out.capacity());
        }
        self.blocked = 0;
        self.rbuf.clear();
        self.release_idle_buffers();
    }
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol")
            .field("role", &self.role)
            .field("buffered_bytes", &self.account.held())
            .field("error", &self.error)
            .field("close", &self.close)
            .finish_non_exhaustive()
    }
}
