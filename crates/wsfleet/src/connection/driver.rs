//! The I/O step: write what the protocol wants written, read into its
//! buffer, run the keepalive timer — in one poll, so no branch holds state
//! across an await and every caller is cancel-safe.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::mem::MaybeUninit;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use std::time::Duration;

use super::keepalive::Action;
use super::{Connection, Error};
use crate::connect::MaybeTlsStream;

/// Quiet time after which a connection frees its (empty) read and write
/// buffers: long enough that a busy connection keeps reusing them, short
/// enough that an idle fleet holds none.
const IDLE_RELEASE: Duration = Duration::from_millis(200);

/// Bytes read into the stack at a message boundary (see `poll_step`).
pub(super) const STACK_READ: usize = 4096;

/// What one step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Bytes were written or read, or a timer did its work.
    Progress,
    /// The peer ended the stream.
    Eof,
    /// Reading needs this many bytes the budget does not have now.
    Blocked(usize),
}

impl Connection {
    /// Waits until some I/O progress is made. With `read`, also reads and
    /// runs the keepalive timer.
    pub(super) async fn step(&mut self, read: bool) -> Result<Step, Error> {
        poll_fn(|cx| self.poll_step(cx, read)).await
    }

    /// Writes what can be written now without waiting.
    pub(super) fn write_now(&mut self) -> Result<(), Error> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match self.poll_write_all(&mut cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>, read: bool) -> Poll<Result<Step, Error>> {
        let wrote = match self.poll_write_all(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => n > 0,
            Poll::Pending => false,
        };
        if read && self.proto.wants_read() {
            // A spent budget: read nothing, not even into the stack (that
            // would be charged past the budget).
            if self
                .gate
                .as_ref()
                .is_some_and(|g| g.fleet.used() >= g.fleet.max())
            {
                self.progress.pause();
                return Poll::Ready(Ok(Step::Blocked(STACK_READ)));
            }
            // Was a message under way while we wait for these bytes?
            let mid_message = self.proto.is_mid_message();
            let read = match &mut self.stream {
                // Plain TCP between messages, without a roomy buffer: read
                // into the stack and keep only what arrived, so an idle
                // connection holds no read buffer and one trading small
                // messages holds one of their size, not a whole chunk.
                MaybeTlsStream::Plain(tcp)
                    if self.proto.read_spare() < STACK_READ && !self.proto.is_mid_message() =>
                {
                    let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
                    let mut buf = ReadBuf::uninit(&mut stack);
                    match Pin::new(tcp).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) => {
                            let n = buf.filled().len();
                            if n > 0 {
                                self.proto.feed(buf.filled()).map_err(Error::Protocol)?;
                            }
                            Poll::Ready(Ok(n))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                }
                // Otherwise read straight into the protocol's buffer (plain
                // TCP once readable, so no buffer is lent while waiting).
                MaybeTlsStream::Plain(tcp) if tcp.poll_read_ready(cx).is_pending() => Poll::Pending,
                stream => {
                    let Some(mut buf) = self.proto.try_read_buf().map_err(Error::Protocol)? else {
                        let wanted = self.proto.budget_blocked().unwrap_or(STACK_READ);
                        self.progress.pause();
                        return Poll::Ready(Ok(Step::Blocked(wanted)));
                    };
                    tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut buf)
                }
            };
            match read {
                Poll::Ready(Ok(0)) => {
                    self.proto.release_idle_buffers();
                    return Poll::Ready(Ok(Step::Eof));
                }
                Poll::Ready(Ok(n)) => {
                    let now = Instant::now();
                    self.stats.bytes_in += n as u64;
                    self.keepalive.on_receive(now);
                    if let Err(s) =
                        self.progress
                            .on_read(now, n, mid_message, &self.progress_limits)
                    {
                        return Poll::Ready(Err(Error::MessageStalled {
                            waited: s.waited,
                            received: s.received,
                        }));
                    }
                    return Poll::Ready(Ok(Step::Progress));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => self.progress.on_pending(mid_message),
            }
            // Nothing to read now: free the buffers if it stays quiet.
            if self.release_at.is_none() && self.proto.buffered_bytes() > 0 {
                self.release_at = Some(Instant::now() + IDLE_RELEASE);
                self.arm_timer();
            }
        }
        if read {
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_ready() {
                    let now = Instant::now();
                    if self.release_at.is_some_and(|at| at <= now) {
                        // Quiet means nothing arrived for IDLE_RELEASE: if
                        // bytes came since the deadline was set, look again
                        // then (checked lazily, so a busy connection pays no
                        // timer reset per read and keeps its buffers).
                        let quiet_until = self.keepalive.last_rx() + IDLE_RELEASE;
                        if quiet_until > now {
                            self.release_at = Some(quiet_until);
                        } else {
                            self.release_at = None;
                            if !self.proto.is_mid_message() {
                                self.proto.release_idle_buffers();
                            }
                        }
                    }
                    if self.keepalive_at.is_some_and(|at| at <= now) {
                        match self.keepalive.on_timer(now) {
                            Action::Wait(at) => self.keepalive_at = Some(at),
                            Action::Ping(at) => {
                                self.keepalive_at = Some(at);
                                // A full queue already proves we are not idle.
                                let _ = self.proto.ping(bytes::Bytes::new());
                            }
                            Action::Dead => {
                                let waited = self.keepalive_timeout();
                                return Poll::Ready(Err(Error::PongTimeout(waited)));
                            }
                        }
                    }
                    self.arm_timer();
                    return Poll::Ready(Ok(Step::Progress));
                }
            }
        }
        if wrote {
            Poll::Ready(Ok(Step::Progress))
        } else {
            Poll::Pending
        }
    }

    /// Points the one timer at the earlier of the keepalive and release
    /// deadlines (far in the future when neither is set).
    fn arm_timer(&mut self) {
        let next = match (self.keepalive_at, self.release_at) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(at) => at,
                None => Instant::now() + super::keepalive::NOTHING_DUE,
            },
        };
        match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != next {
                    timer.as_mut().reset(next);
                }
            }
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(next))),
        }
    }

    fn keepalive_timeout(&self) -> Duration {
        self.keepalive.pong_timeout()
    }

    /// Writes until the protocol has nothing more or the socket is full.
    /// Returns how many bytes were written; `Pending` only if nothing could be.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        let mut written = 0;
        loop {
            let out = self.proto.poll_transmit();
            if out.is_empty() {
                break;
            }
            match Pin::new(&mut self.stream).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.proto.advance_transmit(n);
                    self.stats.bytes_out += n as u64;
                    written += n;
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => {
                    return if written > 0 {
                        Poll::Ready(Ok(written))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
        if self.need_flush {
            // TLS buffers records; plain TCP flush is a no-op.
            ready!(Pin::new(&mut self.stream).poll_flush(cx)).map_err(Error::Io)?;
            self.need_flush = false;
        }
        Poll::Ready(Ok(written))
    }
}
