//! The fleet's event stream, drained without pause (a consumer that stops
//! would stop the sockets: backpressure by design) into `--output` on
//! stdout and a few counts for the summary.

use std::borrow::Cow;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wsfleet::Message;
use wsfleet::fleet::{ConnId, Event, EventKind, Events, SlotId};

use crate::cli::OutputFormat;
use crate::cmd::escape::escape;

/// Events handled between two flushes of stdout at most.
const BATCH: usize = 512;

/// Where received messages go (`--output`), and whether text goes as
/// received (`--raw`, for `text` only) instead of escaped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Output {
    /// The format.
    pub(crate) format: OutputFormat,
    /// Text payloads as received, control characters and all.
    pub(crate) raw: bool,
}

/// What the consumer counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Messages received (message events).
    pub(crate) messages: u64,
    /// Messages accepted by `send` that never reached a socket.
    pub(crate) undelivered: u64,
}

/// Drains `events` until `finish` is cancelled (then takes what is left)
/// or the stream ends. If stdout goes away (a closed pipe), output stops
/// and `stdout_gone` is cancelled, so the run can stop too.
pub(crate) fn spawn(
    events: Events,
    output: Output,
    finish: CancellationToken,
    stdout_gone: CancellationToken,
) -> JoinHandle<Tally> {
    tokio::spawn(async move {
        let mut consumer = Consumer {
            output,
            out: BufWriter::new(tokio::io::stdout()),
            tally: Tally::default(),
            stdout_gone,
        };
        consumer.run(events, finish).await;
        consumer.tally
    })
}

struct Consumer<W> {
    output: Output,
    out: BufWriter<W>,
    tally: Tally,
    stdout_gone: CancellationToken,
}

impl<W: AsyncWrite + Unpin> Consumer<W> {
    async fn run(&mut self, mut events: Events, finish: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                event = events.recv() => event,
                () = finish.cancelled() => None,
            };
            let Some(first) = first else { break };
            self.handle(first).await;
            for _ in 1..BATCH {
                let Some(event) = events.try_recv() else {
                    break;
                };
                self.handle(event).await;
            }
            self.flush().await;
        }
        // The fleet has shut down: what it emitted last is still queued.
        while let Some(event) = events.try_recv() {
            self.handle(event).await;
        }
        self.flush().await;
    }

    async fn handle(&mut self, event: Event) {
        match &event.kind {
            EventKind::Message(message) => {
                self.tally.messages += 1;
                if self.output.format != OutputFormat::None {
                    let line = format_line(self.output, event.conn, event.slot, message, unix_ms());
                    if let Err(e) = self.out.write_all(line.as_bytes()).await {
                        self.stdout_failed(&e);
                    }
                }
            }
            EventKind::Undelivered(_) => self.tally.undelivered += 1,
            // Drops and restart pauses are logged by the fleet itself.
            _ => {}
        }
    }

    async fn flush(&mut self) {
        if self.output.format != OutputFormat::None {
            if let Err(e) = self.out.flush().await {
                self.stdout_failed(&e);
            }
        }
    }

    /// Stops writing; a closed pipe also stops the run.
    fn stdout_failed(&mut self, error: &io::Error) {
        self.output.format = OutputFormat::None;
        if error.kind() == io::ErrorKind::BrokenPipe {
            tracing::info!("stdout closed: stopping");
        } else {
            tracing::error!(%error, "cannot write to stdout: stopping");
        }
        self.stdout_gone.cancel();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One `--output` line for a received message, with its line ending.
fn format_line(output: Output, conn: ConnId, slot: SlotId, message: &Message, ts: u64) -> String {
    match output.format {
        OutputFormat::Jsonl => {
            let (kind, payload) = match message.as_text() {
                Some(text) => ("text", Cow::Borrowed(text)),
                None => (
                    "binary",
                    Cow::Owned(base64::engine::general_purpose::STANDARD.encode(message.payload())),
                ),
            };
            let line = JsonLine {
                conn: conn.0,
                slot: slot.0,
                ts,
                kind,
                payload: &payload,
            };
            // Serialising plain fields cannot fail.
            let mut json = serde_json::to_string(&line).unwrap_or_default();
            json.push('\n');
            json
        }
        OutputFormat::Text => match message.as_text() {
            Some(text) if output.raw => format!("{conn} {slot} text {text}\n"),
            Some(text) => format!("{conn} {slot} text {}\n", escape(text)),
            None => format!("{conn} {slot} binary {}\n", hex(message.payload())),
        },
        OutputFormat::None => String::new(),
    }
}

/// A `--output jsonl` line.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    conn: u64,
    slot: u32,
    ts: u64,
    kind: &'static str,
    payload: &'a str,
}

/// Lowercase hex, two digits a byte.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(format: OutputFormat, raw: bool) -> Output {
        Output { format, raw }
    }

    #[test]
    fn jsonl_lines_have_every_field() {
        let line = format_line(
            output(OutputFormat::Jsonl, false),
            ConnId(7),
            SlotId(3),
            &Message::text("hé \"x\"\n"),
            1_700_000_000_123,
        );
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"conn": 7, "slot": 3, "ts": 1_700_000_000_123u64, "kind": "text", "payload": "hé \"x\"\n"})
        );
        let line = format_line(
            output(OutputFormat::Jsonl, false),
            ConnId(1),
            SlotId(0),
            &Message::binary(vec![0u8, 0xff, b'a']),
            5,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "binary");
        assert_eq!(v["payload"], "AP9h");
    }

    #[test]
    fn text_lines() {
        let line = |m: &Message, raw| {
            format_line(output(OutputFormat::Text, raw), ConnId(12), SlotId(3), m, 0)
        };
        let text = |m: &Message| line(m, false);
        assert_eq!(
            text(&Message::text("a\nb\\ \x1b[2J\u{9b}")),
            "c12 s3 text a\\nb\\ \\x1b[2J\\u{9b}\n"
        );
        assert_eq!(
            line(&Message::text("a\nb\x1b"), true),
            "c12 s3 text a\nb\x1b\n"
        );
        assert_eq!(
            text(&Message::binary(vec![0u8, 0xab])),
            "c12 s3 binary 00ab\n"
        );
        assert_eq!(
            format_line(
                output(OutputFormat::None, false),
                ConnId(1),
                SlotId(1),
                &Message::text("x"),
                0
            ),
            ""
        );
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
    }
}
