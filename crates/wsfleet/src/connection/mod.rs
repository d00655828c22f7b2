//! One WebSocket client connection on tokio.
//!
//! [`Connection`] owns its socket and its [`Protocol`] machine; it makes
//! progress only inside its async methods. Drive [`Connection::recv`]
//! continuously (it answers pings, sends keepalive pings and detects a
//! silent peer); send from the same task, for example with
//! `tokio::select!` over `recv()` and your own channel — `recv` is
//! cancel-safe, because all state lives in the protocol machine, not in the
//! future. Each async method says what dropping its future does.

mod accept;
mod config;
mod driver;
mod error;
mod handshake;
mod keepalive;
mod progress;
mod redirect;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};
use wsfleet_proto::{
    CloseCode, CloseFrame, Event, HandshakeError, Message, Protocol, Role, SendError,
};

pub use config::ConnectionConfig;
pub use error::Error;
pub(crate) use handshake::{HeadError, read_head};
pub use keepalive::Keepalive;
pub use progress::Progress;

use crate::connect::credential::{self, Resolved};
use crate::connect::{self, ConnectError, MaybeTlsStream, Target};
use crate::fleet::budget::{ConnBudget, Verdict};
use crate::keys::OsRngKeys;
use keepalive::KeepaliveState;
use progress::{MessageProgress, ProgressLimits};

/// Counters of one connection, as a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Bytes read from the socket (after TLS).
    pub bytes_in: u64,
    /// Bytes written to the socket (before TLS).
    pub bytes_out: u64,
    /// Messages received.
    pub msgs_in: u64,
    /// Messages queued by `send`.
    pub msgs_out: u64,
    /// Buffer bytes held now.
    pub buffered_bytes: usize,
    /// Most buffer bytes ever held.
    pub peak_buffered_bytes: usize,
    /// Pongs that answered one of our keepalive pings (wrapping).
    pub pongs: u32,
    /// The round trip of the last keepalive ping answered, in µs (at
    /// least 1; 0 before the first answer). 32 bits: every connection
    /// carries it.
    pub last_ping_rtt_us: u32,
}

/// One WebSocket client connection.
///
/// `Send`, not `Sync`: one task drives it (every I/O method takes
/// `&mut self`), and it can move between tasks and threads.
///
/// Dropping it closes the socket at once, without a close frame: the peer
/// sees the connection end abnormally (1006), and messages still queued are
/// lost. Its budget charges are released; messages already received keep
/// theirs until they are dropped. To end it cleanly, await
/// [`close`](Self::close) (or [`begin_close`](Self::begin_close) and
/// [`recv`](Self::recv) until `None`) first. Connections of a fleet belong to
/// it, which closes them cleanly on [`Fleet::shutdown`](crate::fleet::Fleet::shutdown).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use wsfleet::{Connection, ConnectionConfig, Message};
/// let mut conn = Connection::connect("ws://127.0.0.1:9001/", &ConnectionConfig::default()).await?;
/// conn.send(Message::text("hello")).await?;
/// while let Some(message) = conn.recv().await {
///     println!("{:?}", message?);
/// }
/// # Ok(()) }
/// ```
pub struct Connection {
    stream: MaybeTlsStream,
    proto: Protocol,
    /// `host:port` of the peer, for errors and logs.
    peer: String,
    protocol: Option<String>,
    /// WebSocket bytes that arrived with the handshake response.
    leftover: Bytes,
    keepalive: KeepaliveState,
    /// One timer for keepalive and buffer release, at the earlier deadline.
    timer: Option<Pin<Box<Sleep>>>,
    keepalive_at: Option<Instant>,
    /// When to free buffers that went quiet (see `driver::IDLE_RELEASE`).
    release_at: Option<Instant>,
    deadlines: connect::Deadlines,
    peer_close: Option<CloseFrame>,
    /// recv() has reported the end (None or an error) already.
    finished: bool,
    /// When the close handshake began, plus the close deadline: every
    /// wait of the close ends by then, however often `recv()` is cancelled.
    close_deadline: Option<Instant>,
    /// How `recv()` ends once the close under way is finished. Set before
    /// the close is awaited, so a `recv()` dropped meanwhile resumes it.
    /// Boxed: a rare path, and every idle connection carries the field.
    ending: Option<Box<Ending>>,
    need_flush: bool,
    stats: ConnectionStats,
    /// The fleet's budget decisions for this connection, if in a fleet.
    gate: Option<Arc<ConnBudget>>,
    /// Progress deadlines in force, and the message under way's progress.
    progress_limits: ProgressLimits,
    progress: MessageProgress,
}

impl Connection {
    /// Opens `url` (`ws://` or `wss://`): DNS, TCP, TLS and the handshake,
    /// each within its deadline.
    ///
    /// Cancel-safe: dropping the future abandons the attempt and closes its
    /// socket (a DNS lookup under way finishes in the background).
    ///
    /// # Errors
    /// A [`ConnectError`] naming the phase that failed and the target.
    pub async fn connect(url: &str, config: &ConnectionConfig) -> Result<Self, ConnectError> {
        let target = Target::parse(url)?;
        Self::connect_target(target, config).await
    }

    /// As [`connect`](Self::connect), for an already parsed target
    /// (cancel-safe as it is).
    ///
    /// # Errors
    /// A [`ConnectError`] naming the phase that failed and the target.
    pub async fn connect_target(
        mut target: Target,
        config: &ConnectionConfig,
    ) -> Result<Self, ConnectError> {
        config.limits.validate().map_err(|e| {
            ConnectError::new(
                connect::Phase::Config,
                target.authority(),
                connect::ConnectErrorKind::Other(Box::new(e)),
            )
        })?;
        let credentials = if config.credentials.is_empty() {
            Resolved::default()
        } else {
            credential::resolve(&config.credentials, &mut target.path_and_query)
                .await
                .map_err(|e| {
                    ConnectError::new(
                        connect::Phase::Credential,
                        target.authority(),
                        connect::ConnectErrorKind::Credential(Box::new(e)),
                    )
                })?
        };
        if config.max_redirects == 0 {
            return Self::connect_once(&target, config, &credentials, true).await;
        }
        let d = &config.deadlines;
        let overall = d.dns + d.tcp + d.proxy + d.tls + d.handshake;
        let authority = target.authority();
        tokio::time::timeout(
            overall,
            Self::follow_redirects(target, config, &credentials),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::new(
                connect::Phase::Handshake,
                authority,
                connect::ConnectErrorKind::Timeout(overall),
            ))
        })
    }

    /// Connects to `target`, following up to `max_redirects` redirects.
    async fn follow_redirects(
        target: Target,
        config: &ConnectionConfig,
        credentials: &Resolved,
    ) -> Result<Self, ConnectError> {
        let configured = target.clone();
        let mut target = target;
        let mut same_origin = true;
        let mut hops = 0u8;
        loop {
            let e = match Self::connect_once(&target, config, credentials, same_origin).await {
                Ok(conn) => return Ok(conn),
                Err(e) => e,
            };
            let connect::ConnectErrorKind::Handshake(HandshakeError::Redirect { status, location }) =
                e.kind()
            else {
                return Err(e);
            };
            if hops == config.max_redirects {
                return Err(ConnectError::new(
                    connect::Phase::Handshake,
                    target.authority(),
                    connect::ConnectErrorKind::TooManyRedirects {
                        limit: config.max_redirects,
                    },
                ));
            }
            let next = redirect::next_hop(&target, *status, location.as_deref())?;
            same_origin &= redirect::same_origin(&configured, &next);
            tracing::info!(
                from = %target.redacted(),
                to = %next.redacted(),
                status,
                same_origin,
                "following a redirect"
            );
            hops += 1;
            target = next;
        }
    }

    /// One attempt at `target`: proxy choice, DNS, TCP, TLS, handshake.
    /// Off the configured origin (`same_origin` false) the configured TLS
    /// (client certificate, roots, skipped verification) stays behind
    /// unless `keep_tls_on_redirect`: `None` is the default TLS.
    async fn connect_once(
        target: &Target,
        config: &ConnectionConfig,
        credentials: &Resolved,
        same_origin: bool,
    ) -> Result<Self, ConnectError> {
        let proxy = config.proxy.for_target(target)?;
        let tls = if same_origin || config.keep_tls_on_redirect {
            config.tls.as_ref()
        } else {
            None
        };
        // `host:port` names the peer, in errors and logs of every phase:
        // formatted once per attempt.
        let peer = target.authority();
        let local = connect::LocalPick {
            addresses: config.local_addresses.as_deref(),
            slot: config.local_slot,
        };
        // One timer for TCP, TLS and the handshake, each at its deadline.
        let sleep = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer = connect::PhaseTimer::new(sleep);
        let mut stream = connect::open_at(
            target,
            &peer,
            proxy.as_ref(),
            tls,
            &config.deadlines,
            local,
            &mut timer,
        )
        .await?;
        let (response, leftover) = handshake::client_handshake(
            &mut stream,
            target,
            &peer,
            config,
            credentials,
            same_origin,
            &mut timer,
        )
        .await?;
        let mut proto = Protocol::client(config.limits, Box::new(OsRngKeys));
        if let Some(budget) = &config.budget {
            proto = proto.with_budget(budget.clone());
        }
        if let Some(params) = response.deflate {
            proto = proto.with_deflate(params);
        }
        tracing::debug!(peer = %peer, protocol = ?response.protocol, "websocket connected");
        Ok(Self::from_parts(
            stream,
            proto,
            peer,
            response.protocol,
            leftover,
            config,
        ))
    }

    fn from_parts(
        stream: MaybeTlsStream,
        proto: Protocol,
        peer: String,
        protocol: Option<String>,
        leftover: Bytes,
        config: &ConnectionConfig,
    ) -> Self {
        let keepalive = KeepaliveState::new(config.keepalive, Instant::now());
        let keepalive_at = keepalive.first_deadline();
        let timer = keepalive_at.map(|at| Box::pin(tokio::time::sleep_until(at)));
        Self {
            stream,
            proto,
            peer,
            protocol,
            leftover,
            keepalive,
            timer,
            keepalive_at,
            release_at: None,
            deadlines: config.deadlines,
            peer_close: None,
            finished: false,
            close_deadline: None,
            ending: None,
            need_flush: false,
            stats: ConnectionStats::default(),
            gate: config.gate.clone(),
            progress_limits: config.progress.into(),
            progress: MessageProgress::default(),
        }
    }

    /// The subprotocol the server chose.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// permessage-deflate as negotiated, if it was.
    pub fn deflate(&self) -> Option<&wsfleet_proto::deflate::DeflateParams> {
        self.proto.deflate_params()
    }

    /// The peer, as `host:port`.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Client or server end.
    pub fn role(&self) -> Role {
        self.proto.role()
    }

    /// The peer's close frame, once received.
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.peer_close.as_ref()
    }

    /// Counters and buffer use.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            buffered_bytes: self.proto.buffered_bytes(),
            peak_buffered_bytes: self.proto.peak_buffered_bytes(),
            ..self.stats
        }
    }

    /// Outbound offsets `(queued, written)`: a message sent when `queued`
    /// read `q` has reached the socket once `written >= q`.
    pub fn outbound_offsets(&self) -> (u64, u64) {
        (
            self.proto.bytes_queued_total(),
            self.proto.bytes_written_total(),
        )
    }

    /// The next message. `None` once the connection is closed cleanly (the
    /// peer's close frame, if any, is in [`close_frame`](Self::close_frame)).
    /// An error ends the connection: after a protocol error a close frame
    /// with the matching code has been sent (within the close deadline).
    ///
    /// Cancel-safe: dropping the future loses nothing. A close under way
    /// (ours, the peer's, or one after an error) resumes in the next call,
    /// within the deadline counted from when it began, with no second close
    /// frame.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        if self.finished {
            return None;
        }
        if self.ending.is_some() {
            // A close was under way when an earlier recv() was dropped.
            let result = Box::pin(self.finish_ending()).await;
            self.finished = true;
            return result.err().map(Err);
        }
        // Rare paths (closing, errors) are boxed inside: the future an idle
        // connection parks in stays small, which is most of its memory.
        let result = match self.close_deadline {
            None => self.recv_inner().await,
            Some(at) => {
                let close = self.deadlines.close;
                match Box::pin(tokio::time::timeout_at(at, self.recv_inner())).await {
                    Ok(r) => r,
                    Err(_) => Some(Err(Error::CloseTimeout(close))),
                }
            }
        };
        if !matches!(result, Some(Ok(_))) {
            self.finished = true;
            // An ended connection waits for nothing: its pause is over.
            self.end_pause();
        }
        result
    }

    async fn recv_inner(&mut self) -> Option<Result<Message, Error>> {
        loop {
            // No await inside these matches: what they bind is gone before
            // the one (boxed) await of the rare paths, so the future an idle
            // connection parks in stays small.
            let rare = match self.poll_input() {
                Input::Message(m) => return Some(Ok(m)),
                Input::Rare(rare) => rare,
                Input::Read => match self.step(true).await {
                    Ok(driver::Step::Progress) => {
                        self.end_pause();
                        continue;
                    }
                    Ok(driver::Step::Eof) => {
                        return Some(Err(Error::AbnormalClosure {
                            mid_message: self.proto.is_mid_message(),
                        }));
                    }
                    Ok(driver::Step::Blocked(wanted)) => Rare::WaitForBudget(wanted),
                    Err(e @ Error::Protocol(_)) => Rare::End(Ending::Failed(e)),
                    Err(e @ (Error::PongTimeout(_) | Error::MessageStalled { .. })) => {
                        Rare::Abandon(e)
                    }
                    Err(e) => return Some(Err(e)),
                },
            };
            if let Some(end) = Box::pin(self.rare(rare)).await {
                return end;
            }
        }
    }

    /// Everything `recv` does without I/O: the next parsed event, handled.
    fn poll_input(&mut self) -> Input {
        loop {
            if self.gate.as_ref().is_some_and(|g| g.is_evicted()) {
                self.fail_for_budget(0);
            }
            match self.proto.poll_event() {
                Ok(Some(Event::Message(m))) => {
                    self.stats.msgs_in += 1;
                    self.end_pause();
                    return Input::Message(m);
                }
                Ok(Some(Event::Close(frame))) => {
                    tracing::debug!(peer = %self.peer, close = ?frame, "peer closed");
                    self.peer_close = frame;
                    // Our reply is queued: write it and end TCP, bounded.
                    return Input::Rare(Rare::End(Ending::Clean));
                }
                Ok(Some(Event::Ping(_))) => {
                    if let Err(e) = self.keepalive.on_peer_ping(Instant::now()) {
                        return Input::Rare(Rare::Abandon(e));
                    }
                }
                Ok(Some(_pong)) => {
                    if let Some(rtt) = self.keepalive.on_pong(Instant::now()) {
                        self.stats.pongs = self.stats.pongs.wrapping_add(1);
                        self.stats.last_ping_rtt_us =
                            u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1);
                    }
                }
                Ok(None) => {
                    if let Some(wanted) = self.proto.budget_blocked() {
                        return Input::Rare(Rare::WaitForBudget(wanted));
                    }
                    if self.leftover.is_empty() {
                        return Input::Read;
                    }
                    match self.feed_leftover() {
                        Ok(None) => {}
                        // The budget is spent: wait as for a socket read.
                        Ok(Some(wanted)) => return Input::Rare(Rare::WaitForBudget(wanted)),
                        Err(e) => {
                            return Input::Rare(Rare::End(Ending::Failed(Error::Protocol(e))));
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "protocol error; closing");
                    return Input::Rare(Rare::End(Ending::Failed(Error::Protocol(e))));
                }
            }
        }
    }

    /// The rare paths of `recv`: closing, giving up, waiting for memory.
    /// `Some` ends `recv` with its value; `None` goes on reading.
    async fn rare(&mut self, rare: Rare) -> Option<Option<Result<Message, Error>>> {
        match rare {
            Rare::End(ending) => Some(self.end_with(ending).await),
            Rare::Abandon(error) => {
                tracing::debug!(peer = %self.peer, %error, "closing");
                Some(self.abandon(error).await)
            }
            Rare::WaitForBudget(wanted) => match self.wait_for_budget(wanted).await {
                Ok(()) => None,
                Err(e) => Some(self.end_with(Ending::Failed(e)).await),
            },
        }
    }

    /// The budget refused `wanted` bytes: waits (reading paused, so TCP
    /// pushes back on the peer) until the fleet has room, or fails the
    /// connection with 1009 when the fleet's rule picks it (it holds the
    /// most) or there is no fleet to wait on. Cancel-safe: a later `recv()`
    /// asks again.
    async fn wait_for_budget(&mut self, wanted: usize) -> Result<(), Error> {
        let Some(gate) = self.gate.clone() else {
            return Err(self.fail_for_budget(wanted));
        };
        if gate.begin_pause() {
            tracing::debug!(peer = %self.peer, wanted, "memory budget spent: pausing reads");
        }
        // Pongs and replies already queued still go out.
        self.write_now()?;
        loop {
            if gate.fleet.on_refused(&gate, wanted) == Verdict::Refuse {
                return Err(self.fail_for_budget(wanted));
            }
            tokio::select! {
                () = gate.fleet.room_for(wanted) => {}
                () = gate.evicted() => return Err(self.fail_for_budget(0)),
            }
            if gate.fleet.used().saturating_add(wanted) <= gate.fleet.max() {
                return Ok(());
            }
        }
    }

    /// Reading goes on after a pause for memory: the pause is counted, and
    /// keepalive starts its quiet interval afresh (we did not read, so the
    /// peer's silence meant nothing).
    fn end_pause(&mut self) {
        if self.gate.as_ref().is_some_and(|g| g.end_pause()) {
            self.keepalive.on_resume(Instant::now());
        }
    }

    /// Ends the connection for the budget (`wanted`: what it asked for; 0
    /// when another connection needed its memory): close 1009, buffers
    /// released; the next `recv()` finishes the close and reports it.
    pub(crate) fn fail_for_budget(&mut self, wanted: usize) -> Error {
        if let Some(e) = self.proto.error() {
            return Error::Protocol(e.clone());
        }
        Error::Protocol(self.proto.fail_for_budget(Some(wanted)))
    }

    /// Ends the connection on our side with `error` (a flood, a silent or
    /// stalled peer): queues a close frame (1008) for a peer that may still
    /// listen and gives it at most [`ABANDON_FLUSH`] to go out, without
    /// waiting for an answer. The ending is recorded first, so a `recv()`
    /// cancelled meanwhile still reports it.
    async fn abandon(&mut self, error: Error) -> Option<Result<Message, Error>> {
        let reason = match &error {
            Error::PingFlood { .. } => "ping flood",
            Error::PongTimeout(_) => "pong timeout",
            Error::MessageStalled { .. } => "message stalled",
            _ => "giving up",
        };
        let _ = self.proto.close(CloseCode::POLICY_VIOLATION, reason);
        // Nothing more will be read: what was half received goes now.
        self.proto.discard_input();
        self.end_with(Ending::Abandoned(error)).await
    }

    /// Records how `recv()` ends, then finishes the close under way: if the
    /// future is dropped meanwhile, the next `recv()` resumes from here.
    async fn end_with(&mut self, ending: Ending) -> Option<Result<Message, Error>> {
        self.ending = Some(Box::new(ending));
        self.finish_ending().await.err().map(Err)
    }

    /// Finishes the close (within the deadline set when it began) and
    /// reports the recorded ending: a clean close is `Ok` unless the close
    /// itself failed; a failure is reported as it was.
    async fn finish_ending(&mut self) -> Result<(), Error> {
        if matches!(self.ending.as_deref(), Some(Ending::Abandoned(_))) {
            let _ = tokio::time::timeout(ABANDON_FLUSH, self.flush()).await;
            if let Some(Ending::Abandoned(e)) = self.ending.take().map(|e| *e) {
                return Err(e);
            }
        }
        let closed = self.finish_close().await;
        match self.ending.take().map(|e| *e) {
            Some(Ending::Failed(e) | Ending::Abandoned(e)) => Err(e),
            // Once the peer's close frame is in, a socket error (a reset
            // racing our reply or the end of TCP, as ejabberd's close does)
            // cannot undo it: the close is clean, with the peer's code.
            Some(Ending::Clean) | None => match closed {
                Err(Error::Io(e)) if self.proto.close_received() => {
                    tracing::debug!(peer = %self.peer, error = %e, "socket error after the peer's close; closed");
                    Ok(())
                }
                closed => closed,
            },
        }
    }

    /// Feeds bytes that came with the handshake response to the protocol,
    /// as many as its read buffer takes. `Ok(Some(wanted))`, nothing fed,
    /// when the budget refused the buffer: the caller waits for memory as
    /// it would before a socket read (a connection opened while consumers
    /// hold the budget pauses; it is not dropped).
    fn feed_leftover(&mut self) -> Result<Option<usize>, wsfleet_proto::ProtocolError> {
        let room = match self.proto.try_read_buf()? {
            Some(buf) => bytes::BufMut::remaining_mut(&buf),
            None => {
                return Ok(Some(
                    self.proto.budget_blocked().unwrap_or(driver::STACK_READ),
                ));
            }
        };
        let piece = self.leftover.split_to(room.min(self.leftover.len()));
        self.proto.feed(&piece).map(|()| None)
    }

    /// Queues `message` and writes as much as the socket takes without
    /// waiting. When the outbound queue is full, waits for it to drain
    /// first (backpressure).
    ///
    /// Cancel-safe once the message is queued, not before: dropping the
    /// future while it waits for room drops the message with it (it was
    /// never queued). Once queued, it stays queued and any later call
    /// (`recv`, `flush`, `send`) writes it; bytes half written are never
    /// lost or repeated. A caller that must not lose a message to
    /// cancellation checks [`has_room`](Self::has_room) and uses
    /// [`try_send`](Self::try_send), which hands it back.
    ///
    /// # Errors
    /// [`Error::Send`] hands the message back if the connection is closing
    /// or the budget refused it; an I/O error if the socket failed.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        let mut message = message;
        loop {
            match self.proto.send(message) {
                Ok(()) => {
                    self.stats.msgs_out += 1;
                    break;
                }
                Err(SendError::Full(m)) => {
                    message = m;
                    self.write_step().await?;
                }
                Err(e) => return Err(Error::Send(e)),
            }
        }
        self.write_now()
    }

    /// Queues `message` without waiting and writes what the socket takes now.
    /// For a driver that must never block on a slow peer (the fleet): check
    /// [`has_room`](Self::has_room) first.
    ///
    /// # Errors
    /// [`Error::Send`] hands the message back (`Full` if the queue is above
    /// its limit); an I/O error if the socket failed.
    pub fn try_send(&mut self, message: Message) -> Result<(), Error> {
        self.proto.send(message).map_err(Error::Send)?;
        self.stats.msgs_out += 1;
        self.write_now()
    }

    /// True while the outbound queue is below its limit.
    pub fn has_room(&self) -> bool {
        self.proto.pending_out() < self.proto.limits().max_outbound_bytes
    }

    /// Sends a ping (payload cut to 125 bytes).
    ///
    /// Cancel-safe: it does not wait; the ping is queued on the first poll
    /// (or not at all, if the future is dropped unpolled).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn ping(&mut self, payload: Bytes) -> Result<(), Error> {
        self.proto.ping(payload).map_err(Error::Send)?;
        self.write_now()
    }

    /// Waits until everything queued is written.
    ///
    /// Cancel-safe: dropping the future loses nothing; what was written
    /// stays written, the rest stays queued for the next call.
    ///
    /// # Errors
    /// An I/O error if the socket failed.
    pub async fn flush(&mut self) -> Result<(), Error> {
        while self.proto.has_transmit() || self.need_flush {
            self.write_step().await?;
        }
        Ok(())
    }

    /// One write step, within the write progress deadline: a peer that
    /// takes nothing for [`Progress::write`] ends the wait with
    /// [`Error::WriteStalled`].
    async fn write_step(&mut self) -> Result<(), Error> {
        let limit = self.progress_limits.write();
        match tokio::time::timeout(limit, self.step(false)).await {
            Ok(step) => step.map(drop),
            Err(_) => Err(Error::WriteStalled(limit)),
        }
    }

    /// Closes cleanly: sends a close frame with `code` and `reason`, waits
    /// (within the close deadline) for the peer's close frame and for the
    /// server to end TCP. Messages that arrive meanwhile are dropped.
    ///
    /// Cancel-safe: the close frame is queued once, on the first poll.
    /// Dropped meanwhile, the close resumes in the next `close` (whose code
    /// and reason are then ignored) or `recv`, within the deadline counted
    /// from when it began.
    ///
    /// # Errors
    /// [`Error::InvalidCloseCode`] for a code that may not be sent;
    /// [`Error::CloseTimeout`] if the peer did not answer in time.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        if self.finished {
            return Ok(());
        }
        if self.ending.is_none() {
            self.proto
                .close(code, reason)
                .map_err(Error::InvalidCloseCode)?;
            self.ending = Some(Box::new(Ending::Clean));
        }
        // Dropped meanwhile, the close resumes in the next call or `recv()`.
        let result = self.finish_ending().await;
        self.finished = true;
        result
    }

    /// Starts the close handshake without waiting: the close frame is queued
    /// (after everything already queued) and written as the socket allows.
    /// Keep calling [`recv`](Self::recv): it returns the messages the peer
    /// sent before its close frame, then `None` — within the close deadline,
    /// or `Err(Error::CloseTimeout)`. This is how a connection drains without
    /// losing what was in flight.
    ///
    /// # Errors
    /// [`Error::InvalidCloseCode`] for a code that may not be sent.
    pub fn begin_close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.proto
            .close(code, reason)
            .map_err(Error::InvalidCloseCode)?;
        if self.close_deadline.is_none() {
            self.close_deadline = Some(Instant::now() + self.deadlines.close);
        }
        self.write_now()
    }

    /// After a close frame was queued (ours, a reply, or an error's): writes
    /// it, reads until the peer's close frame and the end of TCP, all within
    /// the close deadline, then shuts the socket.
    async fn finish_close(&mut self) -> Result<(), Error> {
        let deadline = self.deadlines.close;
        // Absolute from when the close began: a resumed close keeps it.
        let at = *self
            .close_deadline
            .get_or_insert_with(|| Instant::now() + deadline);
        let drain = async {
            loop {
                // Input after our close is parsed only for the peer's close.
                match self.proto.poll_event() {
                    Ok(Some(Event::Close(frame))) => {
                        self.peer_close = frame;
                        continue;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => {}
                }
                // RFC 6455 §7.1.1: the server ends TCP first, so a client
                // reads until EOF even after both close frames.
                if self.proto.role() == Role::Server && self.proto.is_closed() && !self.need_flush {
                    return Ok(());
                }
                match self.step(true).await? {
                    driver::Step::Eof => return Ok(()),
                    // Input after our close only matters for the peer's
                    // close frame: wait for memory briefly, or stop here.
                    driver::Step::Blocked(wanted) => match &self.gate {
                        Some(gate) => gate.fleet.room_for(wanted).await,
                        None => return Ok(()),
                    },
                    driver::Step::Progress => continue,
                }
            }
        };
        let result = match tokio::time::timeout_at(at, drain).await {
            Ok(r) => r,
            Err(_) => Err(Error::CloseTimeout(deadline)),
        };
        use tokio::io::AsyncWriteExt;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.stream.shutdown()).await;
        result
    }
}

/// What `poll_input` found.
enum Input {
    /// A message for the caller.
    Message(Message),
    /// Nothing parsed: read from the socket.
    Read,
    /// One of the rare paths.
    Rare(Rare),
}

/// A rare path of `recv`, taken outside the hot loop (boxed).
enum Rare {
    /// Finish the close under way and end as recorded.
    End(Ending),
    /// Give up on the peer with this error.
    Abandon(Error),
    /// The budget refused this many bytes: wait or go.
    WaitForBudget(usize),
}

/// How `recv()` reports the end of a connection whose close is under way.
enum Ending {
    /// The peer closed: `None`, unless finishing the close fails.
    Clean,
    /// An error ended the connection; reported once the close is done.
    Failed(Error),
    /// We gave up on the peer (it floods, is silent, or stalls): our close
    /// frame gets a moment to go out, no answer is awaited.
    Abandoned(Error),
}

/// How long an abandoned connection's close frame may take to go out.
const ABANDON_FLUSH: Duration = Duration::from_millis(100);

/// How long the TCP (or TLS close_notify) shutdown after a finished close
/// may take: the close is done, this is courtesy.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .field("proto", &self.proto)
            .finish_non_exhaustive()
    }
}
