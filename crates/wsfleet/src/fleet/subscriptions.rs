//! Subscriptions as state: what each slot's connection must send to start
//! (and end) the streams it carries. The fleet replays a slot's
//! subscriptions on every new connection of that slot — after a drop, a
//! reconnect or a rotation — before the connection counts as ready, and
//! sends start or end messages on the live connections when a subscription
//! is added or removed at runtime.
//!
//! The table is plain data, tested without sockets; the fleet holds it
//! under a lock and does the sending (`running::open` replays,
//! `running::start` catches up with changes made while a connection was
//! opening, [`Fleet::subscribe`](super::Fleet::subscribe) and
//! [`Fleet::unsubscribe`](super::Fleet::unsubscribe) reach the live ones).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use wsfleet_proto::Message;

/// A stream the fleet keeps subscribed: the message(s) that start it on a
/// connection and, optionally, the message that ends it.
///
/// ```
/// use wsfleet::fleet::Subscription;
/// use wsfleet::Message;
/// let trades = Subscription::new("trades.BTC", Message::text(r#"{"op":"subscribe","channel":"trades.BTC"}"#))
///     .end(Message::text(r#"{"op":"unsubscribe","channel":"trades.BTC"}"#));
/// assert_eq!(trades.key(), "trades.BTC");
/// ```
#[derive(Debug, Clone)]
pub struct Subscription {
    key: Arc<str>,
    start: Vec<Message>,
    end: Option<Message>,
    placement: Placement,
}

impl Subscription {
    /// A subscription named `key` (unique in a fleet; when messages are
    /// attributed to streams, the stream's key) started by `start`.
    pub fn new(key: impl Into<String>, start: Message) -> Self {
        Self {
            key: Arc::from(key.into()),
            start: vec![start],
            end: None,
            placement: Placement::Every,
        }
    }

    /// Which connections carry it (default [`Placement::Every`]).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// One more message to send, after the previous ones, to start it.
    pub fn then(mut self, start: Message) -> Self {
        self.start.push(start);
        self
    }

    /// The message that ends it on a live connection when it is removed.
    /// Without one, removing a subscription only stops its replay.
    pub fn end(mut self, end: Message) -> Self {
        self.end = Some(end);
        self
    }

    /// Its key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The messages that start it, in order.
    pub fn start_messages(&self) -> &[Message] {
        &self.start
    }

    /// The message that ends it, if any.
    pub fn end_message(&self) -> Option<&Message> {
        self.end.as_ref()
    }

    pub(crate) fn shared_key(&self) -> &Arc<str> {
        &self.key
    }
}

/// Which connections carry a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Placement {
    /// Every connection carries every subscription (default): redundant
    /// copies of each stream, or a per-connection preamble (auth, login).
    #[default]
    Every,
    /// One slot carries it: the one carrying the fewest spread
    /// subscriptions (the lowest slot on a tie), refused when that one
    /// carries `per_connection` already — as upstreams that cap channels
    /// per connection require. A slot keeps its subscriptions across its
    /// reconnects and rotations.
    Spread {
        /// The most spread subscriptions one connection carries.
        per_connection: usize,
    },
}

/// Why a subscription was not added or removed; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// [`Placement::Spread`] with `per_connection` 0.
    ZeroPerConnection {
        /// The key.
        key: String,
    },
    /// A subscription with this key exists already.
    Duplicate {
        /// The key.
        key: String,
    },
    /// Spread placement: every slot carries its maximum already.
    NoRoom {
        /// The key that found no slot.
        key: String,
        /// The maximum per connection.
        per_connection: usize,
        /// The slots of this fleet (or shard).
        slots: usize,
    },
    /// No subscription has this key.
    Unknown {
        /// The key.
        key: String,
    },
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duplicate { key } => write!(f, "subscription {key:?} exists already"),
            Self::ZeroPerConnection { key } => {
                write!(f, "subscription {key:?}: per_connection must be at least 1")
            }
            Self::NoRoom {
                key,
                per_connection,
                slots,
            } => write!(
                f,
                "no room for subscription {key:?}: all {slots} connections carry {per_connection} \
                 subscriptions (the maximum per connection); add connections or raise the maximum"
            ),
            Self::Unknown { key } => write!(f, "no subscription {key:?}"),
        }
    }
}

impl std::error::Error for SubscribeError {}

/// A subscription in the table: added `order`-th, carried by `slot`.
#[derive(Debug, Clone)]
struct Entry {
    order: u64,
    sub: Arc<Subscription>,
    /// The slot index carrying it (`None` for [`Placement::Every`]: all).
    slot: Option<usize>,
}

/// What the start of a connection must send to carry its slot's
/// subscriptions as they are now, given what it replayed while opening.
#[derive(Debug, Default)]
pub(crate) struct Catchup {
    /// Added since: send their start messages.
    pub(crate) start: Vec<Arc<Subscription>>,
    /// Removed since: send their end messages.
    pub(crate) end: Vec<Arc<Subscription>>,
}

/// Every subscription of a fleet and the slots carrying each.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    next_order: u64,
    by_key: HashMap<Arc<str>, Entry>,
    /// Subscriptions every slot carries, by order.
    every: BTreeMap<u64, Arc<Subscription>>,
    /// Spread subscriptions of each slot, by order.
    per_slot: Vec<BTreeMap<u64, Arc<Subscription>>>,
}

impl Table {
    /// An empty table for `slots` slots.
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            next_order: 0,
            by_key: HashMap::new(),
            every: BTreeMap::new(),
            per_slot: vec![BTreeMap::new(); slots],
        }
    }

    /// Adds `sub`; the slot indexes that carry it (`None`: every slot).
    pub(crate) fn add(&mut self, sub: Subscription) -> Result<Option<usize>, SubscribeError> {
        if self.by_key.contains_key(sub.key()) {
            return Err(SubscribeError::Duplicate {
                key: sub.key().to_owned(),
            });
        }
        let slot = match sub.placement {
            Placement::Every => None,
            Placement::Spread { per_connection: 0 } => {
                return Err(SubscribeError::ZeroPerConnection {
                    key: sub.key().to_owned(),
                });
            }
            Placement::Spread { per_connection } => {
                let (slot, carried) = self.emptiest();
                if carried >= per_connection {
                    return Err(SubscribeError::NoRoom {
                        key: sub.key().to_owned(),
                        per_connection,
                        slots: self.per_slot.len(),
                    });
                }
                Some(slot)
            }
        };
        let order = self.next_order;
        self.next_order += 1;
        let sub = Arc::new(sub);
        match slot {
            Some(slot) => self.per_slot[slot].insert(order, sub.clone()),
            None => self.every.insert(order, sub.clone()),
        };
        self.by_key
            .insert(sub.shared_key().clone(), Entry { order, sub, slot });
        Ok(slot)
    }

    /// The slot carrying the fewest spread subscriptions (the first of
    /// those), and how many it carries.
    fn emptiest(&self) -> (usize, usize) {
        self.per_slot
            .iter()
            .enumerate()
            .map(|(i, subs)| (i, subs.len()))
            .min_by_key(|&(i, n)| (n, i))
            .unwrap_or((0, usize::MAX))
    }

    /// Resizes the table to `slots` slots. Growing adds empty slots;
    /// shrinking moves the spread subscriptions of the slots that go, in
    /// the order they were added, each to the emptiest slot that stays, and
    /// returns them with their new slot. Refused whole (the table
    /// unchanged) if one finds no room.
    pub(crate) fn resize(
        &mut self,
        slots: usize,
    ) -> Result<Vec<(Arc<Subscription>, usize)>, SubscribeError> {
        if slots >= self.per_slot.len() {
            self.per_slot.resize(slots, BTreeMap::new());
            return Ok(Vec::new());
        }
        let mut next = self.clone();
        let mut gone: Vec<(u64, Arc<Subscription>)> =
            next.per_slot.drain(slots..).flatten().collect();
        gone.sort_unstable_by_key(|(order, _)| *order);
        let mut moved = Vec::with_capacity(gone.len());
        for (order, sub) in gone {
            let Placement::Spread { per_connection } = sub.placement else {
                continue; // only spread subscriptions sit on one slot
            };
            let (slot, carried) = next.emptiest();
            if carried >= per_connection {
                return Err(SubscribeError::NoRoom {
                    key: sub.key().to_owned(),
                    per_connection,
                    slots,
                });
            }
            next.per_slot[slot].insert(order, sub.clone());
            if let Some(entry) = next.by_key.get_mut(sub.key()) {
                entry.slot = Some(slot);
            }
            moved.push((sub, slot));
        }
        *self = next;
        Ok(moved)
    }

    /// Removes the subscription `key`: it and the slot carrying it (`None`:
    /// every slot).
    pub(crate) fn remove(
        &mut self,
        key: &str,
    ) -> Result<(Arc<Subscription>, Option<usize>), SubscribeError> {
        let entry = self
            .by_key
            .remove(key)
            .ok_or_else(|| SubscribeError::Unknown {
                key: key.to_owned(),
            })?;
        match entry.slot {
            Some(slot) => self.per_slot[slot].remove(&entry.order),
            None => self.every.remove(&entry.order),
        };
        Ok((entry.sub, entry.slot))
    }

    /// The subscription `key`, if slot `slot` carries it.
    pub(crate) fn carried_key(&self, slot: usize, key: &str) -> Option<Arc<Subscription>> {
        let entry = self.by_key.get(key)?;
        entry
            .slot
            .is_none_or(|s| s == slot)
            .then(|| entry.sub.clone())
    }

    /// Every key, in the order added.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut all: Vec<&Entry> = self.by_key.values().collect();
        all.sort_unstable_by_key(|e| e.order);
        all.into_iter().map(|e| e.sub.key().to_owned()).collect()
    }

    /// What slot `slot` carries, in the order the subscriptions were added.
    pub(crate) fn carried(&self, slot: usize) -> Vec<Arc<Subscription>> {
        let spread = self.per_slot.get(slot);
        let mut all: Vec<(&u64, &Arc<Subscription>)> = self
            .every
            .iter()
            .chain(spread.into_iter().flatten())
            .collect();
        if spread.is_some_and(|s| !s.is_empty()) && !self.every.is_empty() {
            all.sort_unstable_by_key(|(order, _)| **order);
        }
        all.into_iter().map(|(_, s)| s.clone()).collect()
    }

    /// What a connection of `slot` that replayed `replayed` must send now
    /// to carry what the slot carries.
    pub(crate) fn catch_up(&self, slot: usize, replayed: &[Arc<Subscription>]) -> Catchup {
        let now = self.carried(slot);
        let had = |s: &Arc<Subscription>, list: &[Arc<Subscription>]| {
            list.iter().any(|o| Arc::ptr_eq(o, s))
        };
        Catchup {
            start: now.iter().filter(|s| !had(s, replayed)).cloned().collect(),
            end: replayed.iter().filter(|s| !had(s, &now)).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(key: &str) -> Subscription {
        Subscription::new(key, Message::text(format!("sub {key}")))
            .end(Message::text(format!("unsub {key}")))
    }

    fn keys(subs: &[Arc<Subscription>]) -> Vec<&str> {
        subs.iter().map(|s| s.key()).collect()
    }

    #[test]
    fn every_slot_carries_every_subscription_in_the_order_added() {
        let mut table = Table::new(3);
        for k in ["b", "a", "c"] {
            assert_eq!(table.add(sub(k)), Ok(None));
        }
        for slot in 0..3 {
            assert_eq!(keys(&table.carried(slot)), ["b", "a", "c"]);
        }
        let (gone, slot) = table.remove("a").unwrap();
        assert_eq!((gone.key(), slot), ("a", None));
        assert_eq!(keys(&table.carried(1)), ["b", "c"]);
    }

    #[test]
    fn a_key_is_unique_and_removing_an_unknown_one_is_an_error() {
        let mut table = Table::new(1);
        table.add(sub("a")).unwrap();
        assert_eq!(
            table.add(sub("a")),
            Err(SubscribeError::Duplicate { key: "a".into() })
        );
        assert_eq!(table.keys(), ["a"]);
        assert_eq!(
            table.remove("z").unwrap_err(),
            SubscribeError::Unknown { key: "z".into() }
        );
    }

    #[test]
    fn spread_fills_the_emptiest_slot_and_refuses_past_the_cap() {
        let spread = |k: &str| sub(k).placement(Placement::Spread { per_connection: 2 });
        let mut table = Table::new(3);
        let slots: Vec<_> = (0..6)
            .map(|i| table.add(spread(&format!("k{i}"))).unwrap())
            .collect();
        assert_eq!(
            slots,
            [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
        assert_eq!(keys(&table.carried(1)), ["k1", "k4"]);
        let full = table.add(spread("k6")).unwrap_err();
        assert_eq!(
            full,
            SubscribeError::NoRoom {
                key: "k6".into(),
                per_connection: 2,
                slots: 3
            }
        );
        assert!(full.to_string().contains("all 3 connections carry 2"));
        // A removal makes room on the slot it leaves.
        assert_eq!(table.remove("k4").unwrap().1, Some(1));
        assert_eq!(table.add(spread("k6")), Ok(Some(1)));
        // An every-connection subscription goes everywhere, in order.
        assert_eq!(table.add(sub("all")), Ok(None));
        assert_eq!(keys(&table.carried(1)), ["k1", "k6", "all"]);
        assert_eq!(keys(&table.carried(2)), ["k2", "k5", "all"]);
        assert_eq!(
            table.add(sub("z").placement(Placement::Spread { per_connection: 0 })),
            Err(SubscribeError::ZeroPerConnection { key: "z".into() })
        );
    }

    #[test]
    fn shrinking_moves_spread_subscriptions_or_refuses_whole() {
        let spread = |key: &str| sub(key).placement(Placement::Spread { per_connection: 2 });
        let mut table = Table::new(3);
        for key in ["a", "b", "c", "d"] {
            table.add(spread(key)).unwrap();
        }
        table.add(sub("all")).unwrap();
        // a→0, b→1, c→2, d→0: slot 2's "c" moves to slot 1 (the emptiest).
        let moved = table.resize(2).unwrap();
        let moved: Vec<(&str, usize)> = moved.iter().map(|(s, i)| (s.key(), *i)).collect();
        assert_eq!(moved, [("c", 1)]);
        assert_eq!(keys(&table.carried(1)), ["b", "c", "all"]);
        assert_eq!(
            table.carried_key(1, "c").map(|s| s.key().to_owned()),
            Some("c".into())
        );
        // One slot cannot hold four at two each: refused, nothing changed.
        let before = table.clone();
        let err = table.resize(1).unwrap_err();
        assert!(
            matches!(err, SubscribeError::NoRoom { slots: 1, .. }),
            "{err:?}"
        );
        assert_eq!(table.per_slot.len(), 2);
        assert_eq!(keys(&table.carried(0)), keys(&before.carried(0)));
        // Growing adds empty slots that take the next spread subscription.
        table.resize(4).unwrap();
        assert_eq!(table.add(spread("e")).unwrap(), Some(2));
    }

    #[test]
    fn catch_up_starts_what_was_added_and_ends_what_was_removed_meanwhile() {
        let mut table = Table::new(1);
        table.add(sub("a")).unwrap();
        table.add(sub("b")).unwrap();
        let replayed = table.carried(0);
        assert!(table.catch_up(0, &replayed).start.is_empty());
        table.remove("a").unwrap();
        table.add(sub("c")).unwrap();
        // Removed and added again with other messages: a new subscription.
        table.remove("b").unwrap();
        table
            .add(Subscription::new("b", Message::text("sub b again")))
            .unwrap();
        let catchup = table.catch_up(0, &replayed);
        assert_eq!(keys(&catchup.start), ["c", "b"]);
        assert_eq!(keys(&catchup.end), ["a", "b"]);
    }

    #[test]
    fn spread_catch_up_is_per_slot() {
        let spread = |k: &str| sub(k).placement(Placement::Spread { per_connection: 5 });
        let mut table = Table::new(2);
        table.add(spread("a")).unwrap(); // slot 0
        let replayed0 = table.carried(0);
        let replayed1 = table.carried(1);
        table.add(spread("b")).unwrap(); // slot 1
        assert!(table.catch_up(0, &replayed0).start.is_empty());
        assert_eq!(keys(&table.catch_up(1, &replayed1).start), ["b"]);
    }
}
