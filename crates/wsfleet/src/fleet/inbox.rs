//! The bounded queue of messages waiting to be written on one connection,
//! and the supervisor's one request that it drain.
//!
//! Why not `tokio::sync::mpsc`: a bounded mpsc channel allocates its first
//! block of 32 slots when it is made, about 1.8 KiB per connection that an
//! idle fleet of 10,000 pays for nothing. This queue holds a `VecDeque` that
//! allocates on the first message and gives bursts' room back once empty,
//! so an idle connection's inbox is one small allocation. One consumer (the
//! connection's task), any number of producers.
//!
//! The drain request rides here too, rather than in a oneshot channel of
//! its own: the task already waits on this queue's waker, so a request
//! costs no second allocation per connection (about 128 B) and no second
//! poll on every turn of the task.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use wsfleet_proto::Message;

use super::conn_task::Drain;
use super::room;

/// A bounded multi-producer, single-consumer queue of messages.
pub(crate) struct Inbox {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes producers waiting for room, or all of them when it closes.
    writable: Notify,
}

struct State {
    queue: VecDeque<Message>,
    closed: bool,
    /// The consumer's waker while it waits: kept under the queue's lock,
    /// so a wait costs no registration in a list and a producer wakes it
    /// with what it already holds (one lock per message, not three).
    consumer: Option<Waker>,
    /// Whether the waiting consumer takes messages now: one that cannot
    /// (no room on its socket) waits only for a drain request or the close,
    /// and is not woken by every message queued meanwhile.
    wants_messages: bool,
    /// The supervisor's request to close, until the consumer takes it
    /// (boxed: asked once in a connection's life).
    drain: Option<Box<Drain>>,
}

/// What the consumer of an inbox is handed next.
pub(super) enum Next {
    /// The supervisor asks the connection to close.
    Drain(Box<Drain>),
    /// A message to write.
    Message(Message),
    /// The inbox is closed and empty.
    Closed,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Inbox")
            .field("queued", &state.queue.len())
            .field("capacity", &self.capacity)
            .field("closed", &state.closed)
            .finish()
    }
}

/// Why [`Inbox::try_send`] did not take a message, with the message.
pub(crate) enum TrySendError {
    Full(Message),
    Closed(Message),
}

impl Inbox {
    /// An empty, open inbox holding at most `capacity` messages (≥ 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                consumer: None,
                wants_messages: true,
                drain: None,
            }),
            capacity: capacity.max(1),
            writable: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `message` if there is room.
    pub(crate) fn try_send(&self, message: Message) -> Result<(), TrySendError> {
        let state = self.lock();
        if state.closed {
            return Err(TrySendError::Closed(message));
        }
        if state.queue.len() >= self.capacity {
            return Err(TrySendError::Full(message));
        }
        Self::push(state, message);
        Ok(())
    }

    /// Queues `message` and wakes the consumer if it waits (after the
    /// lock is released).
    fn push(mut state: std::sync::MutexGuard<'_, State>, message: Message) {
        room::push_back(&mut state.queue, message);
        let consumer = if state.wants_messages {
            state.consumer.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = consumer {
            waker.wake();
        }
    }

    /// Queues `message` even past the capacity; gives it back if closed.
    /// Only for what a starting connection must send first (its
    /// subscriptions' catch-up, bounded by the subscription table), queued
    /// under the table's lock where waiting for room is not possible.
    pub(crate) fn force_send(&self, message: Message) -> Result<(), Message> {
        let state = self.lock();
        if state.closed {
            return Err(message);
        }
        Self::push(state, message);
        Ok(())
    }

    /// The consumer gives back the message it just took (its send rate
    /// makes it wait): it goes first again, past the capacity and even if
    /// closed since (a drain then takes it with the rest). The queue holds
    /// at most one over its capacity this way, until the consumer takes it.
    pub(crate) fn put_back(&self, message: Message) {
        self.lock().queue.push_front(message);
    }

    /// Queues `message`, waiting for room (backpressure); gives it back if
    /// the inbox is or becomes closed.
    pub(crate) async fn send(&self, mut message: Message) -> Result<(), Message> {
        loop {
            // Registered before looking, so a pop between the look and the
            // wait still wakes us.
            let room = self.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(message) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => message = back,
            }
            room.await;
        }
    }

    /// Takes the next message without waiting.
    pub(crate) fn try_recv(&self) -> Option<Message> {
        let message = Self::pop(&mut self.lock());
        if message.is_some() {
            self.writable.notify_one();
        }
        message
    }

    /// The front message; a drained queue gives its burst room back.
    /// The caller wakes a producer (room) once the lock is released.
    fn pop(state: &mut State) -> Option<Message> {
        let message = state.queue.pop_front();
        if message.is_some() {
            room::give_back(&mut state.queue);
        }
        message
    }

    /// The next message; `None` once the inbox is closed and empty.
    #[cfg(test)]
    pub(crate) async fn recv(&self) -> Option<Message> {
        std::future::poll_fn(|cx| {
            self.poll_next(cx, true).map(|next| match next {
                Next::Message(m) => Some(m),
                Next::Closed => None,
                Next::Drain(_) => unreachable!("these tests request no drain"),
            })
        })
        .await
    }

    /// What the consumer takes next: a drain request first, then a message
    /// (if `takes`). `Pending` keeps the consumer's waker, woken by the
    /// next message, the close, or a drain request.
    pub(super) fn poll_next(&self, cx: &mut Context<'_>, takes: bool) -> Poll<Next> {
        let mut state = self.lock();
        if let Some(drain) = state.drain.take() {
            return Poll::Ready(Next::Drain(drain));
        }
        if takes {
            if let Some(message) = Self::pop(&mut state) {
                drop(state);
                self.writable.notify_one();
                return Poll::Ready(Next::Message(message));
            }
            if state.closed {
                return Poll::Ready(Next::Closed);
            }
        }
        state.wants_messages = takes;
        match &mut state.consumer {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Asks the consumer to drain (a later request replaces one not yet
    /// taken) and wakes it.
    pub(super) fn request_drain(&self, drain: Drain) {
        let consumer = {
            let mut state = self.lock();
            state.drain = Some(Box::new(drain));
            state.consumer.take()
        };
        if let Some(waker) = consumer {
            waker.wake();
        }
    }

    /// Refuses new messages from now on; those queued can still be taken.
    /// Producers waiting for room get their message back.
    pub(crate) fn close(&self) {
        let consumer = {
            let mut state = self.lock();
            state.closed = true;
            state.consumer.take()
        };
        self.writable.notify_waiters();
        if let Some(waker) = consumer {
            waker.wake();
        }
    }
}

/// The consumer's handle: closes the inbox when dropped, even when its task
/// is aborted, so no producer waits for room that will never come.
pub(crate) struct Receiver(Arc<Inbox>);

impl Receiver {
    pub(crate) fn new(inbox: Arc<Inbox>) -> Self {
        Self(inbox)
    }
}

impl std::ops::Deref for Receiver {
    type Target = Inbox;
    fn deref(&self) -> &Inbox {
        &self.0
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn text(s: &str) -> Message {
        Message::text(s.to_owned())
    }

    fn body(m: Message) -> String {
        match m {
            Message::Text(t) => t.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn bounded_and_ordered() {
        let inbox = Inbox::new(2);
        assert!(inbox.try_send(text("a")).is_ok());
        assert!(inbox.try_send(text("b")).is_ok());
        assert!(
            matches!(inbox.try_send(text("c")), Err(TrySendError::Full(m)) if body(m.clone()) == "c")
        );
        assert_eq!(body(inbox.try_recv().unwrap()), "a");
        assert!(inbox.try_send(text("c")).is_ok());
        assert_eq!(body(inbox.try_recv().unwrap()), "b");
        assert_eq!(body(inbox.try_recv().unwrap()), "c");
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn idle_inbox_gives_burst_room_back() {
        let inbox = Inbox::new(64);
        for i in 0..64 {
            assert!(inbox.try_send(text(&i.to_string())).is_ok());
        }
        assert!(inbox.lock().queue.capacity() >= 64);
        while inbox.try_recv().is_some() {}
        assert!(inbox.lock().queue.capacity() <= room::KEEP_ROOM);
    }

    #[tokio::test]
    async fn close_returns_waiting_and_later_messages_and_ends_recv() {
        let inbox = Arc::new(Inbox::new(1));
        inbox.try_send(text("queued")).ok().unwrap();
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.send(text("waiting")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a full inbox must make send wait");
        inbox.close();
        let back = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("closing wakes a waiting sender")
            .unwrap();
        assert_eq!(body(back.unwrap_err()), "waiting");
        assert!(matches!(
            inbox.try_send(text("late")),
            Err(TrySendError::Closed(_))
        ));
        // What was queued before the close is still delivered, then None.
        assert_eq!(body(inbox.recv().await.unwrap()), "queued");
        assert!(inbox.recv().await.is_none());
    }

    /// Counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_drain_request_comes_first_and_wakes_a_consumer_that_takes_no_messages() {
        use super::super::DisconnectReason;
        let inbox = Inbox::new(4);
        let wakes = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        // A consumer with no room to write waits for a drain or the close
        // only: messages queued meanwhile do not wake it.
        assert!(inbox.poll_next(&mut cx, false).is_pending());
        inbox.try_send(text("a")).ok().unwrap();
        inbox.try_send(text("b")).ok().unwrap();
        assert_eq!(woken(), 0, "a message woke a consumer that takes none");
        inbox.request_drain(Drain {
            reason: DisconnectReason::Rotated,
            forward: None,
        });
        assert_eq!(woken(), 1, "a drain request wakes the consumer");
        // The request goes before the messages queued ahead of it, once.
        match inbox.poll_next(&mut cx, true) {
            Poll::Ready(Next::Drain(d)) => assert!(matches!(d.reason, DisconnectReason::Rotated)),
            _ => panic!("expected the drain request first"),
        }
        match inbox.poll_next(&mut cx, true) {
            Poll::Ready(Next::Message(m)) => assert_eq!(body(m), "a"),
            _ => panic!("expected the first message"),
        }
        // A consumer taking messages is woken by the next one.
        assert!(matches!(
            inbox.poll_next(&mut cx, true),
            Poll::Ready(Next::Message(_))
        ));
        assert!(inbox.poll_next(&mut cx, true).is_pending());
        inbox.try_send(text("c")).ok().unwrap();
        assert_eq!(woken(), 2, "a message wakes a consumer that takes them");
        inbox.close();
        assert!(matches!(
            inbox.poll_next(&mut cx, true),
            Poll::Ready(Next::Message(_))
        ));
        assert!(matches!(
            inbox.poll_next(&mut cx, true),
            Poll::Ready(Next::Closed)
        ));
    }

    #[tokio::test]
    async fn many_producers_one_consumer_lose_nothing() {
        let inbox = Arc::new(Inbox::new(3));
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    for i in 0..500 {
                        inbox.send(text(&format!("{p}:{i}"))).await.ok().unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0usize; 4];
        for _ in 0..2000 {
            let m = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
                .await
                .expect("a producer is always ready")
                .unwrap();
            let m = body(m);
            let (p, i) = m.split_once(':').unwrap();
            let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[p], "messages of one producer arrive in order");
            next[p] += 1;
        }
        for p in producers {
            p.await.unwrap();
        }
        assert_eq!(next, [500; 4]);
    }
}
