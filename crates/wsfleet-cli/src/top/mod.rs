//! `wsfleet top`: a live, full-screen view of a running fleet, read from
//! its admin endpoint, sortable by memory.
//!
//! Three parts: [`client`] fetches `/connections` and `/metrics` every
//! interval in a tokio task; [`state`] keeps what is shown (order, filter,
//! selection, rates), pure and unit-tested; [`view`] draws it with ratatui.
//! This module runs the terminal: raw mode and the alternate screen, always
//! restored (on quit, on error, on a signal and on a panic), and the input
//! loop, which polls crossterm with a timeout so neither input nor a slow
//! endpoint blocks the other.

mod client;
mod state;
mod view;

use std::io::{BufWriter, Stdout};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};
use tokio::sync::mpsc::{self, error::TryRecvError};

pub(crate) use client::{AdminClient, parse_admin_addr, poll};
pub(crate) use state::Update;
use state::{SortKey, TopState};

/// Longest wait for input before looking for new data or a stop request.
const INPUT_POLL: Duration = Duration::from_millis(100);
/// Redraw at least this often (the "updated … ago" and ages move on).
const REDRAW_EVERY: Duration = Duration::from_secs(1);

/// Runs the view on this (blocking) thread until `q`, Esc, Ctrl-C or
/// `stop`, showing each [`Update`] as it arrives; only `pool`'s
/// connections at first, when given.
///
/// # Errors
/// If the terminal cannot be set up or written to, or the fetching task is
/// gone.
pub(crate) fn run_ui(
    addr: String,
    interval: Duration,
    pool: Option<String>,
    mut updates: mpsc::Receiver<Update>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut terminal = Screen::enter()?;
    let mut state = TopState::new(addr, interval).with_pool(pool);
    let mut drawn: Option<Instant> = None;
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) {
        loop {
            match updates.try_recv() {
                Ok(update) => {
                    state.apply(update);
                    dirty = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => bail!("the fetching task stopped"),
            }
        }
        if dirty || drawn.is_none_or(|at| at.elapsed() >= REDRAW_EVERY) {
            terminal
                .0
                .draw(|frame| view::render(frame, &mut state, Instant::now(), SystemTime::now()))
                .context("cannot draw")?;
            drawn = Some(Instant::now());
            dirty = false;
        }
        // Every pending event is handled before the next draw.
        let mut timeout = INPUT_POLL;
        while event::poll(timeout).context("cannot read the terminal")? {
            timeout = Duration::ZERO;
            match event::read().context("cannot read the terminal")? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    match on_key(&mut state, key) {
                        Flow::Quit => return Ok(()),
                        Flow::Redraw => dirty = true,
                        Flow::Ignore => {}
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    Ok(())
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Quit,
    Redraw,
    Ignore,
}

/// The keys, as the bottom line lists them.
fn on_key(state: &mut TopState, key: KeyEvent) -> Flow {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        // Raw mode turns Ctrl-C into a key instead of SIGINT.
        return match key.code {
            KeyCode::Char('c') => Flow::Quit,
            _ => Flow::Ignore,
        };
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => return Flow::Quit,
        KeyCode::Char('b') => state.sort_by(SortKey::Buffered),
        KeyCode::Char('r') => state.sort_by(SortKey::Reconnects),
        KeyCode::Char('a') => state.sort_by(SortKey::Age),
        KeyCode::Char('t') => state.sort_by(SortKey::Traffic),
        KeyCode::Char('s') => state.cycle_filter(),
        KeyCode::Char('p') => state.cycle_pool(),
        KeyCode::Up | KeyCode::Char('k') => state.move_selection(-1),
        KeyCode::Down | KeyCode::Char('j') => state.move_selection(1),
        KeyCode::PageUp => state.page_selection(false),
        KeyCode::PageDown | KeyCode::Char(' ') => state.page_selection(true),
        KeyCode::Home | KeyCode::Char('g') => state.select_end(false),
        KeyCode::End | KeyCode::Char('G') => state.select_end(true),
        _ => return Flow::Ignore,
    }
    Flow::Redraw
}

/// Whether the terminal is in raw mode on the alternate screen, so that
/// restoring happens once whoever gets there first: the guard's drop or
/// the panic hook.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The terminal in raw mode on the alternate screen; restored on drop.
struct Screen(Terminal<CrosstermBackend<BufWriter<Stdout>>>);

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        install_panic_hook();
        enable_raw_mode().context("cannot put the terminal in raw mode")?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on, an early return drops `guard` and restores.
        let guard = Restore;
        let mut out = BufWriter::new(std::io::stdout());
        execute!(out, EnterAlternateScreen, cursor::Hide)
            .context("cannot switch to the alternate screen")?;
        let terminal =
            Terminal::new(CrosstermBackend::new(out)).context("cannot use the terminal")?;
        std::mem::forget(guard);
        Ok(Self(terminal))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the terminal when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen, shows the cursor, ends raw mode; once.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// A panic anywhere (a fetch task, the view) first puts the terminal back,
/// then reports as usual, so the message is readable and the shell usable.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::client::{Metrics, Snapshot};
    use super::state::tests::row;

    fn press(state: &mut TopState, code: KeyCode) -> Flow {
        on_key(state, KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn keys() {
        let mut state = TopState::new("h:1".into(), Duration::from_secs(1));
        state.apply(Update {
            at: Instant::now(),
            result: Ok(Snapshot {
                connections: vec![
                    row(1, 0, "ready", 5, 3, Some(1), 0),
                    row(2, 1, "backoff", 9, 1, None, 0),
                ],
                metrics: Metrics::default(),
                pools: Vec::new(),
            }),
        });
        assert_eq!(press(&mut state, KeyCode::Char('r')), Flow::Redraw);
        assert_eq!(state.sort(), (SortKey::Reconnects, false));
        assert_eq!(press(&mut state, KeyCode::Char('r')), Flow::Redraw);
        assert_eq!(state.sort(), (SortKey::Reconnects, true));
        press(&mut state, KeyCode::Char('a'));
        assert_eq!(state.sort().0, SortKey::Age);
        press(&mut state, KeyCode::Char('t'));
        assert_eq!(state.sort().0, SortKey::Traffic);
        press(&mut state, KeyCode::Char('b'));
        assert_eq!(state.selected().unwrap().id.0, 2);
        press(&mut state, KeyCode::Char('j'));
        assert_eq!(state.selected().unwrap().id.0, 1);
        press(&mut state, KeyCode::Up);
        assert_eq!(state.selected().unwrap().id.0, 2);
        press(&mut state, KeyCode::Char('G'));
        assert_eq!(state.selected_index(), 1);
        press(&mut state, KeyCode::Home);
        assert_eq!(state.selected_index(), 0);
        press(&mut state, KeyCode::Char('s'));
        assert_eq!(state.shown(), 1, "ready only");
        assert_eq!(press(&mut state, KeyCode::Char('x')), Flow::Ignore);
        assert_eq!(press(&mut state, KeyCode::Char('q')), Flow::Quit);
        assert_eq!(press(&mut state, KeyCode::Esc), Flow::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(on_key(&mut state, ctrl_c), Flow::Quit);
    }
}
