//! The room a connection's small queues keep: its inbox and its messages in
//! flight. A steady connection has one message at a time in each, and ten
//! thousand of them keep what their queues hold after traffic: a queue
//! starts with one slot (a plain push would reserve four), and gives a
//! burst's room back once it is empty again.

use std::collections::VecDeque;

/// Room a queue keeps once a burst drains: steady one-or-two in flight
/// without reallocating, small enough to be nothing when idle.
pub(super) const KEEP_ROOM: usize = 4;

/// Appends `item`, reserving one slot (not four) when the queue has none.
pub(super) fn push_back<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.capacity() == 0 {
        queue.reserve_exact(1);
    }
    queue.push_back(item);
}

/// Gives a drained burst's room back: an empty queue keeps at most
/// [`KEEP_ROOM`] slots.
pub(super) fn give_back<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > KEEP_ROOM {
        queue.shrink_to(KEEP_ROOM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_keeps_one_slot_and_a_burst_gives_its_room_back() {
        let mut q = VecDeque::new();
        for i in 0..100 {
            push_back(&mut q, i);
            assert_eq!(q.pop_front(), Some(i));
            give_back(&mut q);
        }
        assert_eq!(q.capacity(), 1, "steady one in flight keeps one slot");
        for i in 0..64 {
            push_back(&mut q, i);
        }
        assert!(q.capacity() >= 64);
        give_back(&mut q);
        assert!(
            q.capacity() >= 64,
            "a queue still holding its burst keeps it"
        );
        q.clear();
        give_back(&mut q);
        assert!(q.capacity() <= KEEP_ROOM);
        // Two in flight keep their room: no reallocation each time.
        push_back(&mut q, 1);
        push_back(&mut q, 2);
        let cap = q.capacity();
        q.clear();
        give_back(&mut q);
        assert_eq!(q.capacity(), cap);
    }
}
