//! What `wsfleet top` shows, without the terminal: the latest rows, their
//! order and filter, the selection, the header totals and the rates
//! computed from successive snapshots. Pure (time comes in as arguments),
//! so every rule here is unit-tested.
//!
//! Rows are kept as fetched; `view` holds the indices of the rows that pass
//! the filter, in display order. It is rebuilt once per refresh (and when
//! the sort or the filter changes), never per frame.

use std::cmp::Reverse;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wsfleet::fleet::{ConnId, ConnState, ConnectionInfo, PoolInfo, SlotId};

use super::client::{Metrics, Snapshot};

/// What the rows are ordered by (largest first; pressing the key of the
/// current order again reverses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SortKey {
    /// Buffer bytes held now: who holds the memory.
    Buffered,
    /// Reconnects of the slot.
    Reconnects,
    /// Time since the connection became ready (not ready: youngest).
    Age,
    /// Bytes in plus bytes out on the current connection.
    Traffic,
}

impl SortKey {
    /// The column title it sorts by.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Buffered => "buffered",
            Self::Reconnects => "reconnects",
            Self::Age => "age",
            Self::Traffic => "traffic",
        }
    }

    /// The number rows are ordered by, larger first. Age is read from
    /// `connected_since`, so no clock is needed to sort.
    fn magnitude(self, c: &ConnectionInfo) -> u64 {
        match self {
            Self::Buffered => c.buffered_bytes as u64,
            Self::Reconnects => c.reconnects,
            Self::Traffic => c.bytes_in.saturating_add(c.bytes_out),
            Self::Age => match c.connected_since {
                // Earlier is older is larger; never 0, which means "not connected".
                Some(t) => u64::MAX - unix_ms(t).min(u64::MAX - 1),
                None => 0,
            },
        }
    }
}

/// Which states are shown; `s` cycles through them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateFilter {
    /// Every row.
    All,
    /// Only this state.
    Only(ConnState),
}

impl StateFilter {
    /// The filter after this one.
    pub(crate) fn next(self) -> Self {
        match self {
            Self::All => Self::Only(ConnState::Ready),
            Self::Only(ConnState::Ready) => Self::Only(ConnState::Connecting),
            Self::Only(ConnState::Connecting) => Self::Only(ConnState::Backoff),
            Self::Only(ConnState::Backoff) => Self::Only(ConnState::Draining),
            Self::Only(_) => Self::All,
        }
    }

    /// How the keys line names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Only(state) => state.as_str(),
        }
    }

    fn admits(self, c: &ConnectionInfo) -> bool {
        match self {
            Self::All => true,
            // Paused rows are ready ones waiting for the budget.
            Self::Only(ConnState::Ready) => {
                matches!(c.state, ConnState::Ready | ConnState::Paused)
            }
            Self::Only(state) => c.state == state,
        }
    }
}

/// Whether the admin endpoint answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// Nothing fetched yet.
    Waiting,
    /// The last fetch worked.
    Up,
    /// The last fetch failed with this error; data shown (if any) is older.
    Down(String),
}

/// One fetch, as the fetching task hands it over.
#[derive(Debug)]
pub(crate) struct Update {
    /// When the answer arrived.
    pub(crate) at: Instant,
    /// The snapshot, or why there is none.
    pub(crate) result: Result<Snapshot, String>,
}

/// A per-second rate of each counter the header shows; `None` until two
/// snapshots were seen, or when a counter went down (the fleet restarted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Rates {
    /// Messages received per second, whole fleet.
    pub(crate) msgs_in: Option<f64>,
    /// Messages sent per second.
    pub(crate) msgs_out: Option<f64>,
    /// Bytes read per second.
    pub(crate) bytes_in: Option<f64>,
    /// Bytes written per second.
    pub(crate) bytes_out: Option<f64>,
    /// Reconnects per second.
    pub(crate) reconnects: Option<f64>,
}

/// `(now - before) / elapsed`, per second. `None` without a previous value,
/// without elapsed time, or when the counter went down.
pub(crate) fn rate(before: Option<u64>, now: Option<u64>, elapsed: Duration) -> Option<f64> {
    let (before, now) = (before?, now?);
    let secs = elapsed.as_secs_f64();
    if now < before || secs < 1e-3 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // A rate, not an exact count.
    Some((now - before) as f64 / secs)
}

impl Rates {
    fn between(before: &Metrics, now: &Metrics, elapsed: Duration) -> Self {
        Self {
            msgs_in: rate(before.messages_in_total, now.messages_in_total, elapsed),
            msgs_out: rate(before.messages_out_total, now.messages_out_total, elapsed),
            bytes_in: rate(before.bytes_in_total, now.bytes_in_total, elapsed),
            bytes_out: rate(before.bytes_out_total, now.bytes_out_total, elapsed),
            reconnects: rate(before.reconnects_total, now.reconnects_total, elapsed),
        }
    }
}

/// Rows per state, counted once per refresh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StateCounts {
    /// Ready rows, paused ones included.
    pub(crate) ready: usize,
    /// Of `ready`: paused rows (waiting for room in the memory budget).
    pub(crate) paused: usize,
    /// Connecting rows.
    pub(crate) connecting: usize,
    /// Rows in backoff.
    pub(crate) backoff: usize,
    /// Draining rows.
    pub(crate) draining: usize,
    /// Closed (or unknown) rows.
    pub(crate) closed: usize,
}

impl StateCounts {
    fn of<'a>(rows: impl Iterator<Item = &'a ConnectionInfo>) -> Self {
        let mut n = Self::default();
        for c in rows {
            match c.state {
                ConnState::Ready => n.ready += 1,
                ConnState::Paused => {
                    n.ready += 1;
                    n.paused += 1;
                }
                ConnState::Connecting => n.connecting += 1,
                ConnState::Backoff => n.backoff += 1,
                ConnState::Draining => n.draining += 1,
                _ => n.closed += 1,
            }
        }
        n
    }
}

/// Everything `top` shows.
#[derive(Debug)]
pub(crate) struct TopState {
    /// The admin endpoint, as given.
    pub(crate) addr: String,
    /// How often it is fetched.
    pub(crate) interval: Duration,
    /// Reachability of the endpoint.
    pub(crate) link: Link,
    /// When data was last fetched successfully.
    pub(crate) updated: Option<Instant>,
    /// The last metrics fetched.
    pub(crate) metrics: Metrics,
    /// Rates between the last two successful fetches.
    pub(crate) rates: Rates,
    /// Rows per state, all rows of the pool shown (not only those the
    /// state filter passes).
    pub(crate) counts: StateCounts,
    /// Every pool, in the server's order (or in the rows' order when the
    /// server has no `/pools`).
    pools: Vec<PoolInfo>,
    /// Only this pool's rows are shown (`--pool`, the `p` key); `None`:
    /// every pool.
    pool: Option<String>,
    rows: Vec<ConnectionInfo>,
    view: Vec<usize>,
    sort: SortKey,
    reverse: bool,
    filter: StateFilter,
    /// Index into `view` of the selected row.
    selected: usize,
    /// The selected connection (pool, id, slot), followed across
    /// refreshes and re-sorts.
    selected_conn: Option<(String, ConnId, SlotId)>,
    /// Index into `view` of the first row on screen.
    offset: usize,
    /// Rows on screen at the last draw (for page up/down).
    page: usize,
    previous: Option<(Instant, Metrics)>,
}

impl TopState {
    /// Nothing fetched yet, sorted by buffered bytes, no filter.
    pub(crate) fn new(addr: String, interval: Duration) -> Self {
        Self {
            addr,
            interval,
            link: Link::Waiting,
            updated: None,
            metrics: Metrics::default(),
            rates: Rates::default(),
            counts: StateCounts::default(),
            pools: Vec::new(),
            pool: None,
            rows: Vec::new(),
            view: Vec::new(),
            sort: SortKey::Buffered,
            reverse: false,
            filter: StateFilter::All,
            selected: 0,
            selected_conn: None,
            offset: 0,
            page: 10,
            previous: None,
        }
    }

    /// Shows only `pool`'s rows (`None`: every pool's).
    pub(crate) fn with_pool(mut self, pool: Option<String>) -> Self {
        self.pool = pool;
        self.rebuild();
        self
    }

    /// Takes one fetch in: new rows (sorted and filtered once, here) and
    /// rates, or the error (the last rows stay on screen).
    pub(crate) fn apply(&mut self, update: Update) {
        match update.result {
            Ok(snapshot) => {
                if let Some((at, before)) = &self.previous {
                    self.rates =
                        Rates::between(before, &snapshot.metrics, update.at.duration_since(*at));
                }
                self.previous = Some((update.at, snapshot.metrics));
                self.metrics = snapshot.metrics;
                self.rows = snapshot.connections;
                self.pools = if snapshot.pools.is_empty() {
                    pools_of(&self.rows)
                } else {
                    snapshot.pools
                };
                self.link = Link::Up;
                self.updated = Some(update.at);
                self.rebuild();
            }
            Err(error) => self.link = Link::Down(error),
        }
    }

    /// Orders by `key`; the current key again reverses the order.
    pub(crate) fn sort_by(&mut self, key: SortKey) {
        if self.sort == key {
            self.reverse = !self.reverse;
        } else {
            self.sort = key;
            self.reverse = false;
        }
        self.rebuild();
    }

    /// The next pool filter: every pool, then each pool in turn.
    pub(crate) fn cycle_pool(&mut self) {
        let names: Vec<&str> = self.pools.iter().map(|p| p.pool.as_str()).collect();
        let at = self
            .pool
            .as_deref()
            .and_then(|p| names.iter().position(|n| *n == p));
        self.pool = match at {
            None => names.first(),
            Some(i) => names.get(i + 1),
        }
        .map(|n| (*n).to_owned());
        self.rebuild();
    }

    /// The pool shown, `None` for every pool.
    pub(crate) fn pool_filter(&self) -> Option<&str> {
        self.pool.as_deref()
    }

    /// Every pool, as last fetched.
    pub(crate) fn pools(&self) -> &[PoolInfo] {
        &self.pools
    }

    /// Whether rows of more than one pool came in (the table then shows
    /// a pool column).
    pub(crate) fn multi_pool(&self) -> bool {
        self.pools.len() > 1
    }

    /// The next state filter.
    pub(crate) fn cycle_filter(&mut self) {
        self.filter = self.filter.next();
        self.rebuild();
    }

    /// Moves the selection by `delta` rows, stopping at either end.
    pub(crate) fn move_selection(&mut self, delta: isize) {
        if self.view.is_empty() {
            return;
        }
        let last = self.view.len() - 1;
        self.selected = self.selected.saturating_add_signed(delta).min(last);
        self.remember_selection();
    }

    /// Moves the selection by one screen.
    pub(crate) fn page_selection(&mut self, down: bool) {
        let page = isize::try_from(self.page.max(1)).unwrap_or(isize::MAX);
        self.move_selection(if down { page } else { -page });
    }

    /// Selects the first (`false`) or last (`true`) row.
    pub(crate) fn select_end(&mut self, last: bool) {
        if self.view.is_empty() {
            return;
        }
        self.selected = if last { self.view.len() - 1 } else { 0 };
        self.remember_selection();
    }

    /// The sort order and whether it is reversed.
    pub(crate) fn sort(&self) -> (SortKey, bool) {
        (self.sort, self.reverse)
    }

    /// The state filter.
    pub(crate) fn filter(&self) -> StateFilter {
        self.filter
    }

    /// Rows that pass the filter.
    pub(crate) fn shown(&self) -> usize {
        self.view.len()
    }

    /// Every row fetched, in fetch order.
    pub(crate) fn rows(&self) -> &[ConnectionInfo] {
        &self.rows
    }

    /// Rows fetched.
    pub(crate) fn total(&self) -> usize {
        self.rows.len()
    }

    /// The selected row, if any row is shown.
    pub(crate) fn selected(&self) -> Option<&ConnectionInfo> {
        self.view.get(self.selected).map(|&i| &self.rows[i])
    }

    /// Index (among the shown rows) of the selection.
    #[cfg(test)]
    pub(crate) fn selected_index(&self) -> usize {
        self.selected
    }

    /// The rows that fit in `height` lines, scrolled so the selection is
    /// among them, and the selection's index in that window.
    pub(crate) fn window(&mut self, height: usize) -> (&[usize], &[ConnectionInfo], usize) {
        self.page = height.max(1);
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if height > 0 && self.selected >= self.offset + height {
            self.offset = self.selected + 1 - height;
        }
        // Keep the screen full when rows went away below it.
        self.offset = self.offset.min(self.view.len().saturating_sub(height));
        let end = (self.offset + height).min(self.view.len());
        (
            &self.view[self.offset..end],
            &self.rows,
            self.selected - self.offset.min(self.selected),
        )
    }

    /// Re-filters and re-sorts the rows, then finds the selected connection
    /// again: by id, else by slot (it reconnected), else the selection keeps
    /// its place, clamped to the rows now shown.
    fn rebuild(&mut self) {
        let (rows, filter, key) = (&self.rows, self.filter, self.sort);
        let pool = self.pool.as_deref();
        let in_pool = |c: &ConnectionInfo| pool.is_none_or(|p| c.pool == p);
        self.counts = StateCounts::of(rows.iter().filter(|c| in_pool(c)));
        self.view.clear();
        self.view
            .extend((0..rows.len()).filter(|&i| in_pool(&rows[i]) && filter.admits(&rows[i])));
        // Ties break by slot then id, so equal rows do not jump around.
        if self.reverse {
            self.view
                .sort_unstable_by_key(|&i| (key.magnitude(&rows[i]), rows[i].slot, rows[i].id));
        } else {
            self.view.sort_unstable_by_key(|&i| {
                (Reverse(key.magnitude(&rows[i])), rows[i].slot, rows[i].id)
            });
        }
        if let Some((pool, id, slot)) = &self.selected_conn {
            let position = self
                .view
                .iter()
                .position(|&i| rows[i].id == *id && rows[i].pool == *pool)
                .or_else(|| {
                    self.view
                        .iter()
                        .position(|&i| rows[i].slot == *slot && rows[i].pool == *pool)
                });
            if let Some(position) = position {
                self.selected = position;
            }
        }
        self.selected = self.selected.min(self.view.len().saturating_sub(1));
        self.remember_selection();
    }

    fn remember_selection(&mut self) {
        if let Some(&i) = self.view.get(self.selected) {
            let c = &self.rows[i];
            self.selected_conn = Some((c.pool.clone(), c.id, c.slot));
        }
    }
}

/// The pools the rows belong to, in the order they first appear, from a
/// server without `/pools`: target counts the slots (draining rows are
/// extra), ready counts ready and paused rows.
fn pools_of(rows: &[ConnectionInfo]) -> Vec<PoolInfo> {
    let mut pools: Vec<PoolInfo> = Vec::new();
    for c in rows {
        let i = match pools.iter().position(|p| p.pool == c.pool) {
            Some(i) => i,
            None => {
                pools.push(PoolInfo::new(c.pool.clone(), 0, 0, false));
                pools.len() - 1
            }
        };
        let (slot, ready) = match c.state {
            ConnState::Draining => (0, 0),
            ConnState::Ready | ConnState::Paused => (1, 1),
            _ => (1, 0),
        };
        pools[i] = PoolInfo::new(
            c.pool.clone(),
            pools[i].target + slot,
            pools[i].ready + ready,
            false,
        );
    }
    pools
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row as `/connections` would send it (`ConnectionInfo` is
    /// non-exhaustive, so tests build it from JSON too).
    pub(crate) fn row(
        id: u64,
        slot: u32,
        state: &str,
        buffered: usize,
        reconnects: u64,
        since_ms: Option<u64>,
        traffic: u64,
    ) -> ConnectionInfo {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "slot": slot,
            "state": state,
            "url": "ws://127.0.0.1:9001/",
            "connected_since": since_ms,
            "reconnects": reconnects,
            "bytes_in": traffic,
            "bytes_out": 0,
            "msgs_in": 0,
            "msgs_out": 0,
            "buffered_bytes": buffered,
            "peak_buffered_bytes": buffered,
            "last_error": (reconnects > 0).then(|| format!("error of c{id}")),
        }))
        .unwrap()
    }

    fn update(at: Instant, rows: Vec<ConnectionInfo>, metrics: Metrics) -> Update {
        Update {
            at,
            result: Ok(Snapshot {
                connections: rows,
                metrics,
                pools: Vec::new(),
            }),
        }
    }

    fn fixture() -> Vec<ConnectionInfo> {
        vec![
            row(1, 0, "ready", 100, 0, Some(5_000), 10),
            row(2, 1, "ready", 9_000, 1, Some(1_000), 30),
            row(3, 2, "backoff", 0, 7, None, 0),
            row(4, 3, "connecting", 500, 2, None, 20),
            row(5, 4, "ready", 100, 0, Some(3_000), 40),
        ]
    }

    fn state_with(rows: Vec<ConnectionInfo>) -> TopState {
        let mut s = TopState::new("127.0.0.1:9100".into(), Duration::from_secs(1));
        s.apply(update(Instant::now(), rows, Metrics::default()));
        s
    }

    fn order(s: &mut TopState) -> Vec<u64> {
        let (view, rows, _) = s.window(100);
        view.iter().map(|&i| rows[i].id.0).collect()
    }

    #[test]
    fn sorts_by_buffered_bytes_by_default_ties_by_slot() {
        let mut s = state_with(fixture());
        assert_eq!(s.sort(), (SortKey::Buffered, false));
        assert_eq!(order(&mut s), [2, 4, 1, 5, 3]);
        assert_eq!(
            s.selected().unwrap().id,
            ConnId(2),
            "the largest is selected"
        );
    }

    #[test]
    fn sorts_by_each_key_and_the_same_key_reverses() {
        let mut s = state_with(fixture());
        s.sort_by(SortKey::Reconnects);
        assert_eq!(order(&mut s), [3, 4, 2, 1, 5]);
        s.sort_by(SortKey::Age);
        // Oldest first; not connected counts as youngest.
        assert_eq!(order(&mut s), [2, 5, 1, 3, 4]);
        s.sort_by(SortKey::Traffic);
        assert_eq!(order(&mut s), [5, 2, 4, 1, 3]);
        s.sort_by(SortKey::Traffic);
        assert_eq!(s.sort(), (SortKey::Traffic, true));
        assert_eq!(order(&mut s), [3, 1, 4, 2, 5]);
        s.sort_by(SortKey::Buffered);
        assert_eq!(
            s.sort(),
            (SortKey::Buffered, false),
            "a new key starts largest first"
        );
    }

    #[test]
    fn the_state_filter_cycles_and_filters() {
        let mut s = state_with(fixture());
        let mut seen = vec![];
        for _ in 0..5 {
            seen.push((s.filter().name(), order(&mut s)));
            s.cycle_filter();
        }
        assert_eq!(
            seen,
            [
                ("all", vec![2, 4, 1, 5, 3]),
                ("ready", vec![2, 1, 5]),
                ("connecting", vec![4]),
                ("backoff", vec![3]),
                ("draining", vec![]),
            ]
        );
        assert_eq!(s.filter(), StateFilter::All, "and back to all");
        assert_eq!(s.total(), 5);
        assert_eq!(s.counts.ready, 3);
        assert_eq!(s.counts.backoff, 1);
    }

    #[test]
    fn paused_rows_count_and_filter_as_ready() {
        let mut rows = fixture();
        rows.push(row(6, 5, "paused", 100, 0, Some(2_000), 50));
        let mut s = state_with(rows);
        assert_eq!(
            (s.counts.ready, s.counts.paused, s.counts.closed),
            (4, 1, 0)
        );
        s.cycle_filter();
        assert_eq!(s.filter().name(), "ready");
        assert_eq!(order(&mut s), vec![2, 1, 5, 6]);
    }

    #[test]
    fn selection_moves_and_stops_at_the_ends() {
        let mut s = state_with(fixture());
        s.move_selection(-1);
        assert_eq!(s.selected_index(), 0);
        s.move_selection(2);
        assert_eq!(s.selected().unwrap().id, ConnId(1));
        s.move_selection(100);
        assert_eq!(s.selected().unwrap().id, ConnId(3));
        s.select_end(false);
        assert_eq!(s.selected_index(), 0);
        s.select_end(true);
        assert_eq!(s.selected_index(), 4);
    }

    #[test]
    fn selection_follows_the_connection_across_refreshes_and_sorts() {
        let mut s = state_with(fixture());
        s.move_selection(2); // c1
        assert_eq!(s.selected().unwrap().id, ConnId(1));
        // c1's buffer grows to the top.
        let mut rows = fixture();
        rows[0] = row(1, 0, "ready", 1 << 20, 0, Some(5_000), 10);
        s.apply(update(Instant::now(), rows, Metrics::default()));
        assert_eq!(s.selected_index(), 0);
        assert_eq!(s.selected().unwrap().id, ConnId(1));
        // A re-sort keeps it too.
        s.sort_by(SortKey::Reconnects);
        assert_eq!(s.selected().unwrap().id, ConnId(1));
        // It reconnected as c9 in the same slot: the slot is followed.
        let mut rows = fixture();
        rows[0] = row(9, 0, "connecting", 0, 1, None, 0);
        s.apply(update(Instant::now(), rows, Metrics::default()));
        assert_eq!(s.selected().unwrap().id, ConnId(9));
    }

    #[test]
    fn selection_is_clamped_when_rows_go_away() {
        let mut s = state_with(fixture());
        s.select_end(true); // c3, slot 2
        let rows: Vec<_> = fixture().into_iter().take(2).collect();
        s.apply(update(Instant::now(), rows, Metrics::default()));
        assert_eq!(s.selected_index(), 1, "clamped to the last row");
        s.apply(update(Instant::now(), vec![], Metrics::default()));
        assert_eq!(s.selected(), None);
        assert_eq!(s.selected_index(), 0);
        s.move_selection(1);
        s.page_selection(true);
        s.select_end(true);
        assert_eq!(s.window(10).0.len(), 0, "nothing to show, nothing panics");
        // Rows come back: a selection again.
        s.apply(update(Instant::now(), fixture(), Metrics::default()));
        assert!(s.selected().is_some());
    }

    #[test]
    fn an_error_keeps_the_last_rows_and_says_why() {
        let mut s = state_with(fixture());
        s.apply(Update {
            at: Instant::now(),
            result: Err("connection refused".into()),
        });
        assert_eq!(s.link, Link::Down("connection refused".into()));
        assert_eq!(s.total(), 5);
        s.apply(update(Instant::now(), fixture(), Metrics::default()));
        assert_eq!(s.link, Link::Up);
    }

    #[test]
    fn the_window_scrolls_to_keep_the_selection_visible() {
        let rows = (0..100)
            .map(|i| row(i + 1, i as u32, "ready", 1000 - i as usize, 0, None, 0))
            .collect();
        let mut s = state_with(rows);
        let (view, _, at) = s.window(10);
        assert_eq!((view.len(), at), (10, 0));
        s.move_selection(15);
        let (view, rows, at) = s.window(10);
        assert_eq!(at, 9, "the selection is on the last line");
        assert_eq!(rows[view[at]].id, ConnId(16));
        s.page_selection(true);
        assert_eq!(s.selected_index(), 25);
        s.move_selection(-20);
        let (view, rows, at) = s.window(10);
        assert_eq!((at, rows[view[0]].id), (0, ConnId(6)));
        s.select_end(true);
        let (view, _, at) = s.window(10);
        assert_eq!((view.len(), at), (10, 9));
        // The fleet shrinks to 20 rows: the window stays full.
        let rows = (0..20)
            .map(|i| row(i + 1, i as u32, "ready", 1000 - i as usize, 0, None, 0))
            .collect();
        s.apply(update(Instant::now(), rows, Metrics::default()));
        let (view, rows, at) = s.window(10);
        assert_eq!((view.len(), at, rows[view[at]].id), (10, 9, ConnId(20)));
    }

    #[test]
    fn rates_come_from_deltas_between_snapshots() {
        assert_eq!(rate(None, Some(5), Duration::from_secs(1)), None);
        assert_eq!(rate(Some(5), None, Duration::from_secs(1)), None);
        assert_eq!(
            rate(Some(100), Some(350), Duration::from_millis(500)),
            Some(500.0)
        );
        assert_eq!(
            rate(Some(100), Some(50), Duration::from_secs(1)),
            None,
            "reset"
        );
        assert_eq!(rate(Some(1), Some(2), Duration::ZERO), None);

        let t0 = Instant::now();
        let m = |msgs: u64, reconnects: u64| Metrics {
            messages_in_total: Some(msgs),
            messages_out_total: Some(msgs * 2),
            bytes_in_total: Some(msgs * 10),
            bytes_out_total: Some(msgs * 20),
            reconnects_total: Some(reconnects),
            ..Metrics::default()
        };
        let mut s = TopState::new("x:1".into(), Duration::from_secs(1));
        s.apply(update(t0, vec![], m(1_000, 3)));
        assert_eq!(s.rates, Rates::default(), "one snapshot: no rate yet");
        s.apply(update(t0 + Duration::from_secs(2), vec![], m(3_000, 7)));
        assert_eq!(
            s.rates,
            Rates {
                msgs_in: Some(1_000.0),
                msgs_out: Some(2_000.0),
                bytes_in: Some(10_000.0),
                bytes_out: Some(20_000.0),
                reconnects: Some(2.0),
            }
        );
        // A failed fetch in between: the next rate spans the whole gap.
        s.apply(Update {
            at: t0 + Duration::from_secs(3),
            result: Err("down".into()),
        });
        s.apply(update(t0 + Duration::from_secs(6), vec![], m(7_000, 7)));
        assert_eq!(s.rates.msgs_in, Some(1_000.0));
        assert_eq!(s.rates.reconnects, Some(0.0));
    }

    #[test]
    fn sorting_ten_thousand_rows_is_cheap() {
        let rows: Vec<_> = (0..10_000u64)
            .map(|i| {
                let buffered = ((i * 7919) % 10_007) as usize;
                row(i + 1, i as u32, "ready", buffered, i % 13, Some(i), i)
            })
            .collect();
        let mut s = state_with(rows.clone());
        let started = Instant::now();
        for _ in 0..10 {
            s.apply(update(Instant::now(), rows.clone(), Metrics::default()));
        }
        let (view, rows, _) = s.window(40);
        assert_eq!(view.len(), 40);
        assert!(rows[view[0]].buffered_bytes >= rows[view[1]].buffered_bytes);
        // Generous: a debug build on a slow machine; in practice ~1 ms each.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    fn in_pool(mut c: ConnectionInfo, pool: &str) -> ConnectionInfo {
        c.pool = pool.into();
        c
    }

    #[test]
    fn pools_are_derived_from_rows_when_the_server_has_no_pools_route() {
        let mut state = TopState::new("h:1".into(), Duration::from_secs(1));
        assert!(!state.multi_pool());
        state.apply(update(
            Instant::now(),
            vec![
                in_pool(row(1, 0, "ready", 0, 0, Some(1), 0), "a"),
                in_pool(row(2, 1, "paused", 0, 0, Some(1), 0), "a"),
                in_pool(row(3, 0, "backoff", 0, 0, None, 0), "b"),
                in_pool(row(4, 0, "draining", 0, 0, Some(1), 0), "b"),
            ],
            Metrics::default(),
        ));
        assert_eq!(
            state.pools(),
            [
                PoolInfo::new("a", 2, 2, false),
                PoolInfo::new("b", 1, 0, false)
            ]
        );
        assert!(state.multi_pool());
        // Rows of one pool only (a `default` one from an older server) are
        // one pool: no column.
        state.apply(update(Instant::now(), fixture(), Metrics::default()));
        assert_eq!(state.pools().len(), 1);
        assert!(!state.multi_pool());
    }

    #[test]
    fn the_pool_filter_cycles_and_counts_follow_it() {
        let mut state =
            TopState::new("h:1".into(), Duration::from_secs(1)).with_pool(Some("b".into()));
        let rows = vec![
            in_pool(row(1, 0, "ready", 5, 0, Some(1), 0), "a"),
            in_pool(row(2, 1, "ready", 9, 0, Some(1), 0), "a"),
            // Same id and slot as a's first row: another pool's connection.
            in_pool(row(1, 0, "backoff", 1, 2, None, 0), "b"),
        ];
        state.apply(update(Instant::now(), rows.clone(), Metrics::default()));
        assert_eq!(state.pool_filter(), Some("b"));
        assert_eq!((state.shown(), state.total()), (1, 3));
        assert_eq!(state.counts.backoff, 1);
        assert_eq!(state.counts.ready, 0);
        assert_eq!(state.selected().unwrap().pool, "b");
        // --pool b, then p: past the last pool comes every pool.
        state.cycle_pool();
        assert_eq!(state.pool_filter(), None);
        assert_eq!(state.shown(), 3);
        assert_eq!(state.counts.ready, 2);
        // The selection stayed on b's c1, not a's c1.
        assert_eq!(state.selected().unwrap().pool, "b");
        state.cycle_pool();
        assert_eq!(state.pool_filter(), Some("a"));
        assert_eq!(state.shown(), 2);
        state.cycle_pool();
        assert_eq!(state.pool_filter(), Some("b"));
        // A refresh keeps the filter.
        state.apply(update(Instant::now(), rows, Metrics::default()));
        assert_eq!(state.shown(), 1);
    }
}
