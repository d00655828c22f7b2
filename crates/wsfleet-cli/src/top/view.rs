//! Drawing [`TopState`] with ratatui: the header (link, totals, rates,
//! budget gauge), the table of connections (only the rows on screen are
//! built, so 10,000 connections cost what 40 do), the selected
//! connection's last error, and the keys.

use std::time::{Duration, Instant, SystemTime};

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize as _};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, LineGauge, Paragraph, Row, Table, TableState, Wrap};
use wsfleet::fleet::{ConnState, ConnectionInfo};

use super::state::{Link, SortKey, TopState};
use crate::units::format_size;

/// Lines of the header.
const HEADER: u16 = 5;
/// Lines of the last-error pane, borders included.
const ERROR_PANE: u16 = 4;

/// Draws everything. `now` and `wall` are the monotonic and wall clocks at
/// this frame (for "updated … ago" and the age column).
pub(crate) fn render(frame: &mut Frame<'_>, state: &mut TopState, now: Instant, wall: SystemTime) {
    let [header, table, error, keys] = Layout::vertical([
        Constraint::Length(HEADER),
        Constraint::Min(3),
        Constraint::Length(ERROR_PANE),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_header(frame, header, state, now);
    render_table(frame, table, state, wall);
    render_error(frame, error, state);
    frame.render_widget(Paragraph::new(keys_line(state)), keys);
}

fn render_header(frame: &mut Frame<'_>, area: Rect, state: &TopState, now: Instant) {
    let [link, conns, traffic, budget, pools] =
        Layout::vertical([Constraint::Length(1); 5]).areas(area);
    frame.render_widget(Paragraph::new(link_line(state, now)), link);
    if state.updated.is_none() {
        let waiting = Paragraph::new(
            " no data yet: totals, rates and the budget show after the first answer",
        )
        .dim();
        frame.render_widget(waiting, conns);
        return;
    }

    let m = &state.metrics;
    let n = &state.counts;
    let ready = m.ready.map_or(n.ready, |r| r as usize);
    let target = m
        .target
        .map_or_else(|| state.total().to_string(), |t| t.to_string());
    let ready_style = if m.target.is_some_and(|t| ready as u64 >= t) {
        Style::new().green().bold()
    } else {
        Style::new().yellow().bold()
    };
    let mut spans = vec![
        " ready ".into(),
        Span::styled(format!("{ready}/{target}"), ready_style),
        "  connecting ".into(),
        count(n.connecting, Color::Yellow),
        "  backoff ".into(),
        count(n.backoff, Color::Red),
        "  draining ".into(),
        count(n.draining, Color::Magenta),
    ];
    if n.paused > 0 {
        spans.extend(["  paused ".into(), count(n.paused, Color::Yellow)]);
    }
    if n.closed > 0 {
        spans.extend(["  closed ".into(), count(n.closed, Color::Gray)]);
    }
    spans.extend([
        "   reconnects ".into(),
        Span::styled(
            m.reconnects_total.map_or("–".into(), |r| r.to_string()),
            Style::new().bold(),
        ),
        format!(" ({})", per_second(state.rates.reconnects)).into(),
    ]);
    frame.render_widget(Paragraph::new(Line::from(spans)), conns);

    frame.render_widget(Paragraph::new(pools_line(state)), pools);

    let r = &state.rates;
    let buffered = m.buffered_bytes.unwrap_or_else(|| {
        // Not in /metrics: add it up from the rows.
        state.rows().iter().map(|c| c.buffered_bytes as u64).sum()
    });
    let line = Line::from(vec![
        " msgs in ".into(),
        Span::styled(per_second(r.msgs_in), Style::new().bold()),
        " out ".into(),
        Span::styled(per_second(r.msgs_out), Style::new().bold()),
        "   bytes in ".into(),
        Span::styled(bytes_per_second(r.bytes_in), Style::new().bold()),
        " out ".into(),
        Span::styled(bytes_per_second(r.bytes_out), Style::new().bold()),
        "   buffered ".into(),
        Span::styled(format_size(buffered), Style::new().cyan().bold()),
    ]);
    frame.render_widget(Paragraph::new(line), traffic);

    match (m.budget_used_bytes, m.budget_max_bytes) {
        (Some(used), Some(max)) if max > 0 => {
            #[allow(clippy::cast_precision_loss)] // A gauge.
            let ratio = (used as f64 / max as f64).clamp(0.0, 1.0);
            let color = match ratio {
                r if r >= 0.9 => Color::Red,
                r if r >= 0.7 => Color::Yellow,
                _ => Color::Green,
            };
            let peak = m
                .budget_peak_bytes
                .map_or(String::new(), |p| format!(", peak {}", format_size(p)));
            let gauge = LineGauge::default()
                .ratio(ratio)
                .label(format!(
                    " budget {} / {} ({:.1}%{peak}) ",
                    format_size(used),
                    format_size(max),
                    ratio * 100.0
                ))
                .line_set(symbols::line::THICK)
                .filled_style(Style::new().fg(color))
                .unfilled_style(Style::new().fg(Color::DarkGray));
            frame.render_widget(gauge, budget);
        }
        (used, _) => {
            let used = used.map_or("–".into(), format_size);
            frame.render_widget(Paragraph::new(format!(" budget {used} (no limit)")), budget);
        }
    }
}

/// One summary per pool (ready of target, paused), the shown pool marked.
pub(crate) fn pools_line(state: &TopState) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = vec![" pools".into()];
    for p in state.pools() {
        let shown = state.pool_filter() == Some(p.pool.as_str());
        let name = Span::styled(format!(" {}", p.pool), Style::new().bold());
        spans.push(if shown { name.underlined() } else { name });
        let style = if p.ready >= p.target {
            Style::new().green()
        } else {
            Style::new().yellow()
        };
        spans.push(Span::styled(format!(" {}/{}", p.ready, p.target), style));
        if p.paused {
            spans.push(Span::styled(" paused", Style::new().yellow().bold()));
        }
        spans.push(" ·".into());
    }
    if state.pools().is_empty() {
        spans.push(" –".into());
    } else {
        spans.pop();
    }
    Line::from(spans)
}

fn link_line(state: &TopState, now: Instant) -> Line<'static> {
    let title = Span::styled(" wsfleet top ", Style::new().bold().reversed());
    let every = format!("every {}", duration(state.interval));
    let ago = state
        .updated
        .map(|at| duration(now.saturating_duration_since(at)));
    match &state.link {
        Link::Waiting => Line::from(vec![
            title,
            Span::styled(
                format!(" connecting to {} …", state.addr),
                Style::new().yellow(),
            ),
        ]),
        Link::Up => Line::from(vec![
            title,
            Span::styled(
                format!(" connected to {}", state.addr),
                Style::new().green(),
            ),
            format!(
                " · refresh {every} · updated {} ago",
                ago.unwrap_or_default()
            )
            .into(),
        ]),
        Link::Down(error) => {
            let mut spans = vec![
                title,
                Span::styled(
                    format!(" cannot reach {}: {error}, retrying {every}", state.addr),
                    Style::new().red().bold(),
                ),
            ];
            if let Some(ago) = ago {
                spans.push(format!(" · data below is {ago} old").into());
            }
            Line::from(spans)
        }
    }
}

fn render_table(frame: &mut Frame<'_>, area: Rect, state: &mut TopState, wall: SystemTime) {
    let (sort, reverse) = state.sort();
    let arrow = if reverse { "▲" } else { "▼" };
    let title = format!(
        " connections: {} shown of {} · sort {} {arrow} · state {} · pool {} ",
        state.shown(),
        state.total(),
        sort.name(),
        state.filter().name(),
        state.pool_filter().unwrap_or("all"),
    );
    let with_pool = state.multi_pool();
    let block = Block::bordered().title(title);
    // Borders and the column titles take 3 lines.
    let height = usize::from(area.height.saturating_sub(3));
    let mark = |key: SortKey, name: &'static str| -> Cell<'static> {
        if key == sort {
            Cell::from(Line::from(format!("{name}{arrow}")).right_aligned()).underlined()
        } else {
            Cell::from(Line::from(name).right_aligned())
        }
    };
    let mut titles = Vec::with_capacity(12);
    if with_pool {
        titles.push(Cell::from("POOL"));
    }
    titles.extend([
        Cell::from(Line::from("ID").right_aligned()),
        Cell::from(Line::from("SLOT").right_aligned()),
        Cell::from("STATE"),
        mark(SortKey::Age, "AGE"),
        mark(SortKey::Reconnects, "RECONN"),
        mark(SortKey::Buffered, "BUFFERED"),
        Cell::from(Line::from("PEAK").right_aligned()),
        mark(SortKey::Traffic, "BYTES IN"),
        Cell::from(Line::from("BYTES OUT").right_aligned()),
        Cell::from(Line::from("MSGS IN/OUT").right_aligned()),
        Cell::from("URL"),
    ]);
    let header = Row::new(titles).style(Style::new().bold());
    let (window, rows, at) = state.window(height);
    let rows: Vec<Row<'_>> = window
        .iter()
        .map(|&i| row(&rows[i], wall, with_pool))
        .collect();
    let mut widths = Vec::with_capacity(12);
    if with_pool {
        widths.push(Constraint::Length(14));
    }
    widths.extend([
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(15),
        Constraint::Fill(1),
    ]);
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut table_state = TableState::default().with_selected((!window.is_empty()).then_some(at));
    frame.render_stateful_widget(table, area, &mut table_state);
}

fn row(c: &ConnectionInfo, wall: SystemTime, with_pool: bool) -> Row<'_> {
    let age = c.connected_since.map_or("–".into(), |t| {
        duration(wall.duration_since(t).unwrap_or_default())
    });
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let mut cells = Vec::with_capacity(12);
    if with_pool {
        cells.push(Cell::from(c.pool.as_str()));
    }
    cells.extend([
        right(c.id.to_string()),
        right(c.slot.to_string()),
        Cell::from(c.state.as_str()).style(state_style(c.state)),
        right(age),
        right(c.reconnects.to_string()),
        right(format_size(c.buffered_bytes as u64)),
        right(format_size(c.peak_buffered_bytes as u64)),
        right(format_size(c.bytes_in)),
        right(format_size(c.bytes_out)),
        right(format!("{}/{}", c.msgs_in, c.msgs_out)),
        Cell::from(c.url.as_str()),
    ]);
    Row::new(cells)
}

fn render_error(frame: &mut Frame<'_>, area: Rect, state: &TopState) {
    let (title, text) = match state.selected() {
        None => (
            " last error ".to_owned(),
            Line::from("no connection selected").dim(),
        ),
        Some(c) => (
            format!(" last error of {} (slot {}, {}) ", c.id, c.slot, c.url),
            match &c.last_error {
                Some(e) => Line::from(e.as_str()).red(),
                None => Line::from("none recorded").dim(),
            },
        ),
    };
    let pane = Paragraph::new(text)
        .wrap(Wrap { trim: true })
        .block(Block::bordered().title(title));
    frame.render_widget(pane, area);
}

fn keys_line(state: &TopState) -> Line<'static> {
    let (sort, _) = state.sort();
    let key = |k: &'static str| Span::styled(k, Style::new().black().on_cyan().bold());
    let label = |text: String, on: bool| {
        let span = Span::raw(text);
        if on { span.bold().underlined() } else { span }
    };
    let mut spans = Vec::new();
    for (k, key_sort) in [
        ("b", SortKey::Buffered),
        ("r", SortKey::Reconnects),
        ("a", SortKey::Age),
        ("t", SortKey::Traffic),
    ] {
        spans.extend([
            " ".into(),
            key(k),
            label(format!(" {}", key_sort.name()), key_sort == sort),
        ]);
    }
    spans.extend([
        " (again: reverse)  ".into(),
        key("s"),
        format!(" state: {}  ", state.filter().name()).into(),
        key("p"),
        format!(" pool: {}  ", state.pool_filter().unwrap_or("all")).into(),
        key("↑↓ j k"),
        " select  ".into(),
        key("PgUp PgDn g G"),
        " scroll  ".into(),
        key("q"),
        " quit".into(),
    ]);
    Line::from(spans)
}

fn count(n: usize, color: Color) -> Span<'static> {
    let style = if n > 0 {
        Style::new().fg(color).bold()
    } else {
        Style::new()
    };
    Span::styled(n.to_string(), style)
}

fn state_style(state: ConnState) -> Style {
    match state {
        ConnState::Ready => Style::new().green(),
        ConnState::Connecting => Style::new().yellow(),
        ConnState::Backoff => Style::new().red(),
        ConnState::Draining => Style::new().magenta(),
        _ => Style::new().dark_gray(),
    }
}

/// `12/s`, `3.4k/s`, `1.2M/s`, or `–/s` without a rate yet.
fn per_second(rate: Option<f64>) -> String {
    match rate {
        None => "–/s".into(),
        Some(r) if r >= 1e6 => format!("{:.1}M/s", r / 1e6),
        Some(r) if r >= 1e4 => format!("{:.1}k/s", r / 1e3),
        Some(r) if r >= 10.0 || r == 0.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
    }
}

fn bytes_per_second(rate: Option<f64>) -> String {
    // Truncation is fine for display.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    rate.map_or("–/s".into(), |r| format!("{}/s", format_size(r as u64)))
}

/// `850ms`, `42s`, `5m03s`, `2h05m`, `3d04h`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.subsec_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::super::client::{Metrics, Snapshot};
    use super::super::state::Update;
    use super::super::state::tests::row as info;

    fn screen(terminal: &Terminal<TestBackend>) -> String {
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn draw(state: &mut TopState, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        terminal
            .draw(|frame| render(frame, state, now, wall))
            .unwrap();
        screen(&terminal)
    }

    fn fetched(state: &mut TopState, at: Instant, msgs: u64) {
        let mut rows = vec![
            info(7, 0, "ready", 3 << 20, 2, Some(880_000), 5_000),
            info(8, 1, "backoff", 0, 9, None, 0),
        ];
        rows.extend(
            (0..200).map(|i| info(100 + i, 2 + i as u32, "ready", 10, 0, Some(999_000), 1)),
        );
        state.apply(Update {
            at,
            result: Ok(Snapshot {
                connections: rows,
                metrics: Metrics {
                    target: Some(203),
                    ready: Some(201),
                    reconnects_total: Some(11),
                    messages_in_total: Some(msgs),
                    messages_out_total: Some(msgs),
                    bytes_in_total: Some(msgs * 100),
                    bytes_out_total: Some(msgs * 100),
                    buffered_bytes: Some(3 << 20),
                    budget_used_bytes: Some(64 << 20),
                    budget_peak_bytes: Some(70 << 20),
                    budget_max_bytes: Some(256 << 20),
                },
                pools: Vec::new(),
            }),
        });
    }

    #[test]
    fn several_pools_get_a_column_and_a_summary_line() {
        use wsfleet::fleet::PoolInfo;
        let mut state = TopState::new("h:1".into(), Duration::from_secs(1));
        let mut spot = info(1, 0, "ready", 0, 0, Some(999_000), 0);
        spot.pool = "spot".into();
        let mut futures = info(1, 0, "backoff", 0, 1, None, 0);
        futures.pool = "futures".into();
        state.apply(Update {
            at: Instant::now(),
            result: Ok(Snapshot {
                connections: vec![spot, futures],
                metrics: Metrics::default(),
                pools: vec![
                    PoolInfo::new("spot", 1, 1, false),
                    PoolInfo::new("futures", 1, 0, true),
                ],
            }),
        });
        let screen = draw(&mut state, 160, 20);
        assert!(
            screen.contains("pools spot 1/1 · futures 0/1 paused"),
            "{screen}"
        );
        assert!(screen.contains("POOL"), "{screen}");
        let row = screen
            .lines()
            .find(|l| l.contains("futures ") && l.contains("backoff"));
        assert!(row.is_some(), "{screen}");
        state.cycle_pool();
        let screen = draw(&mut state, 160, 20);
        assert!(screen.contains("connections: 1 shown of 2"), "{screen}");
        assert!(screen.contains("pool spot"), "{screen}");
        assert!(
            screen.lines().last().unwrap().contains("p pool: spot"),
            "{screen}"
        );
    }

    #[test]
    fn header_rows_error_pane_and_keys_are_drawn() {
        let mut state = TopState::new("127.0.0.1:9100".into(), Duration::from_secs(1));
        let t0 = Instant::now();
        fetched(&mut state, t0, 1_000);
        fetched(&mut state, t0 + Duration::from_secs(1), 3_500);
        let screen = draw(&mut state, 160, 30);

        assert!(screen.contains("connected to 127.0.0.1:9100"), "{screen}");
        assert!(screen.contains("ready 201/203"), "{screen}");
        assert!(screen.contains("backoff 1"), "{screen}");
        assert!(screen.contains("reconnects 11"), "{screen}");
        assert!(screen.contains("msgs in 2500/s out 2500/s"), "{screen}");
        assert!(screen.contains("buffered 3.0 MiB"), "{screen}");
        assert!(
            screen.contains("budget 64.0 MiB / 256.0 MiB (25.0%, peak 70.0 MiB)"),
            "{screen}"
        );
        assert!(screen.contains("connections: 202 shown of 202"), "{screen}");
        assert!(screen.contains("BUFFERED▼"), "{screen}");
        // The biggest buffer is the first row, selected, and its error shows.
        let first = screen
            .lines()
            .find(|l| l.contains("c7 "))
            .expect("row of c7");
        for cell in [
            "s0",
            "ready",
            "2m00s",
            "3.0 MiB",
            "4.9 KiB",
            "ws://127.0.0.1:9001/",
        ] {
            assert!(first.contains(cell), "{cell} in {first}");
        }
        let c7 = screen.find("c7 ").unwrap();
        assert!(c7 < screen.find("c100 ").unwrap(), "sorted by buffered");
        assert!(screen.contains("last error of c7 (slot s0"), "{screen}");
        assert!(screen.contains("error of c7"), "{screen}");
        // Only what fits is drawn: 30 lines cannot hold 202 rows.
        assert!(!screen.contains("c299"), "{screen}");
        let keys = screen.lines().last().unwrap();
        for k in [
            "b buffered",
            "r reconnects",
            "a age",
            "t traffic",
            "s state: all",
            "q quit",
        ] {
            assert!(keys.contains(k), "{k} in {keys}");
        }
    }

    #[test]
    fn a_down_endpoint_is_said_and_the_data_kept() {
        let mut state = TopState::new("127.0.0.1:9100".into(), Duration::from_secs(1));
        let screen = draw(&mut state, 120, 20);
        assert!(screen.contains("connecting to 127.0.0.1:9100"), "{screen}");
        assert!(screen.contains("no data yet"), "{screen}");
        assert!(
            !screen.contains("no limit") && !screen.contains("ready 0/0"),
            "{screen}"
        );
        let t0 = Instant::now();
        fetched(&mut state, t0, 0);
        state.apply(Update {
            at: t0,
            result: Err("Connection refused (os error 111)".into()),
        });
        let screen = draw(&mut state, 160, 20);
        assert!(
            screen.contains(
                "cannot reach 127.0.0.1:9100: Connection refused (os error 111), retrying every 1s"
            ),
            "{screen}"
        );
        assert!(screen.contains("c7 "), "{screen}");
    }

    #[test]
    fn sort_and_filter_show_in_the_title() {
        let mut state = TopState::new("h:1".into(), Duration::from_millis(500));
        fetched(&mut state, Instant::now(), 0);
        state.sort_by(SortKey::Reconnects);
        state.cycle_filter();
        state.cycle_filter();
        state.cycle_filter();
        let screen = draw(&mut state, 160, 20);
        assert!(
            screen.contains("1 shown of 202 · sort reconnects ▼ · state backoff"),
            "{screen}"
        );
        assert!(screen.contains("RECONN▼"), "{screen}");
        assert!(screen.contains("c8 "), "{screen}");
        assert!(!screen.contains("c7 "), "{screen}");
        // A tiny terminal draws without panicking.
        draw(&mut state, 10, 3);
    }

    #[test]
    fn units_for_people() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(303)), "5m03s");
        assert_eq!(duration(Duration::from_secs(7_500)), "2h05m");
        assert_eq!(
            duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d04h"
        );
        assert_eq!(per_second(None), "–/s");
        assert_eq!(per_second(Some(0.0)), "0/s");
        assert_eq!(per_second(Some(0.5)), "0.5/s");
        assert_eq!(per_second(Some(2_500.0)), "2500/s");
        assert_eq!(per_second(Some(25_000.0)), "25.0k/s");
        assert_eq!(bytes_per_second(Some(2048.0)), "2.0 KiB/s");
    }
}
