//! The fleet's event stream, drained without pause (a consumer that stops
//! would stop the sockets: backpressure by design) into `--output` on
//! stdout and a few counts for the summary.
//!
//! Memory: a received message carries its budget charge until this
//! consumer drops it, and its line is written in pieces of at most
//! [`PIECE`] input bytes (encoded on the fly), so a slow stdout holds one
//! message and one piece — never a second, encoded copy of a large message.

use std::borrow::Cow;
use std::io;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsfleet::Message;
use wsfleet::fleet::{ConnId, Event, EventKind, Events, SlotId};
use wsfleet_bus::{NatsSink, Received, Sink as _, SinkMetrics};

use crate::cli::OutputFormat;
use crate::cmd::escape::escape;

/// Events handled between two flushes of stdout at most.
const BATCH: usize = 512;

/// Payload bytes encoded and written at a time: a multiple of 3, so base64
/// pieces concatenate into the base64 of the whole.
const PIECE: usize = 48 * 1024;

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
    /// The sink's counters at the end, with `--sink`.
    pub(crate) sink: Option<SinkMetrics>,
    /// Received messages never handed to the sink: the run was stopping
    /// and the sink had no room for [`SINK_GRACE`].
    pub(crate) not_published: u64,
}

/// How long a stopping run waits for the sink, all told (one deadline from
/// the stop on): to take what the fleet emitted last, then to have it all
/// acknowledged.
pub(crate) const SINK_GRACE: Duration = Duration::from_secs(10);

/// Drains `events` until `finish` is cancelled (then takes what is left)
/// or the stream ends. If stdout goes away (a closed pipe), output stops
/// and `stdout_gone` is cancelled, so the run can stop too.
///
/// With a `sink`, every received message is also published to it (after
/// its `--output` line, if any); the consumer waits while the sink has no
/// room, which pauses the fleet. Once `finish` is cancelled the sink gets
/// [`SINK_GRACE`] to take the rest and have it acknowledged. Once `hurry`
/// is cancelled (another signal) nothing is waited for: what is left is
/// counted, not written or published.
pub(crate) fn spawn(
    events: Events,
    output: Output,
    sink: Option<NatsSink>,
    finish: CancellationToken,
    hurry: CancellationToken,
    stdout_gone: CancellationToken,
) -> JoinHandle<Tally> {
    tokio::spawn(async move {
        let mut consumer = Consumer {
            output,
            out: BufWriter::new(tokio::io::stdout()),
            tally: Tally::default(),
            stdout_gone,
            sink,
            finish: finish.clone(),
            hurry,
            grace_until: OnceLock::new(),
        };
        consumer.run(events, finish).await;
        consumer.finish_sink().await;
        consumer.tally
    })
}

struct Consumer<W> {
    output: Output,
    out: BufWriter<W>,
    tally: Tally,
    stdout_gone: CancellationToken,
    sink: Option<NatsSink>,
    finish: CancellationToken,
    hurry: CancellationToken,
    /// The end of the sink's grace, set when the stop begins.
    grace_until: OnceLock<Instant>,
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
        match event.kind {
            EventKind::Message(message) => {
                self.tally.messages += 1;
                if self.output.format != OutputFormat::None {
                    let ts = unix_ms();
                    for piece in line_pieces(self.output, event.conn, event.slot, &message, ts) {
                        let written = tokio::select! {
                            r = self.out.write_all(piece.as_bytes()) => r,
                            () = self.hurry.cancelled() => {
                                // A stalled stdout must not hold the stop.
                                self.output.format = OutputFormat::None;
                                break;
                            }
                        };
                        if let Err(e) = written {
                            self.stdout_failed(&e);
                            break;
                        }
                    }
                }
                self.publish(event.conn, event.slot, message).await;
            }
            EventKind::Disconnected(_) => {
                if let Some(sink) = &mut self.sink {
                    sink.connection_ended(event.conn);
                }
            }
            EventKind::Undelivered(_) => self.tally.undelivered += 1,
            // Restart pauses are logged by the fleet itself.
            _ => {}
        }
    }

    /// Hands one received message to the sink (the message itself: its
    /// budget charge goes along until the sink has it acknowledged).
    async fn publish(&mut self, conn: ConnId, slot: SlotId, message: Message) {
        let (grace_until, hurry) = (&self.grace_until, &self.hurry);
        let Some(sink) = &mut self.sink else { return };
        let received = Received {
            conn,
            slot,
            message,
            received_at: SystemTime::now(),
        };
        let finish = self.finish.clone();
        let give_up = async {
            finish.cancelled().await;
            let until = *grace_until.get_or_init(|| Instant::now() + SINK_GRACE);
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = hurry.cancelled() => {}
            }
        };
        tokio::select! {
            result = sink.publish(received) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "--sink stopped: received messages are no longer published");
                    self.sink = None;
                    self.tally.not_published += 1;
                }
            }
            () = give_up => self.tally.not_published += 1,
        }
    }

    /// Waits (bounded) until the sink has everything acknowledged, and
    /// keeps its counters for the summary.
    async fn finish_sink(&mut self) {
        let until = *self.grace_until.get_or_init(|| Instant::now() + SINK_GRACE);
        let Some(sink) = &mut self.sink else { return };
        let within = until.saturating_duration_since(Instant::now());
        let flushed = tokio::select! {
            r = sink.flush(within) => r,
            () = self.hurry.cancelled() => Ok(()),
        };
        if let Err(e) = flushed {
            tracing::error!(error = %e, "--sink: stopping with messages unacknowledged");
        }
        self.tally.sink = Some(sink.metrics());
        if self.tally.not_published > 0 {
            tracing::error!(
                messages = self.tally.not_published,
                "--sink: received messages never published (the sink had no room while stopping)"
            );
        }
    }

    async fn flush(&mut self) {
        if self.output.format != OutputFormat::None
            && let Err(e) = self.out.flush().await
        {
            self.stdout_failed(&e);
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
#[cfg(test)]
fn format_line(output: Output, conn: ConnId, slot: SlotId, message: &Message, ts: u64) -> String {
    line_pieces(output, conn, slot, message, ts).collect()
}

/// One `--output` line for a received message, in pieces to write one
/// after the other: the head, the payload encoded [`PIECE`] bytes at a
/// time, the end of the line.
fn line_pieces<'a>(
    output: Output,
    conn: ConnId,
    slot: SlotId,
    message: &'a Message,
    ts: u64,
) -> Box<dyn Iterator<Item = Cow<'a, str>> + Send + 'a> {
    let text = message.as_text();
    let kind = if text.is_some() { "text" } else { "binary" };
    match output.format {
        OutputFormat::None => Box::new(std::iter::empty()),
        OutputFormat::Jsonl => {
            let head = format!(
                r#"{{"conn":{},"slot":{},"ts":{ts},"kind":"{kind}","payload":""#,
                conn.0, slot.0
            );
            let body: Box<dyn Iterator<Item = Cow<'a, str>> + Send> = match text {
                Some(text) => Box::new(str_pieces(text).map(|piece| {
                    // The piece as a JSON string, without its quotes.
                    let quoted = serde_json::to_string(piece).unwrap_or_default();
                    Cow::Owned(quoted[1..quoted.len() - 1].to_owned())
                })),
                None => Box::new(message.payload().chunks(PIECE).map(|piece| {
                    Cow::Owned(base64::engine::general_purpose::STANDARD.encode(piece))
                })),
            };
            Box::new(
                std::iter::once(Cow::Owned(head))
                    .chain(body)
                    .chain(std::iter::once(Cow::Borrowed("\"}\n"))),
            )
        }
        OutputFormat::Text => {
            let head = format!("{conn} {slot} {kind} ");
            let body: Box<dyn Iterator<Item = Cow<'a, str>> + Send> = match text {
                Some(text) if output.raw => Box::new(str_pieces(text).map(Cow::Borrowed)),
                Some(text) => Box::new(str_pieces(text).map(escape)),
                None => Box::new(
                    message
                        .payload()
                        .chunks(PIECE)
                        .map(|piece| Cow::Owned(hex(piece))),
                ),
            };
            Box::new(
                std::iter::once(Cow::Owned(head))
                    .chain(body)
                    .chain(std::iter::once(Cow::Borrowed("\n"))),
            )
        }
    }
}

/// `text` in pieces of about [`PIECE`] bytes, cut at character boundaries.
fn str_pieces(text: &str) -> impl Iterator<Item = &str> + Send {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(PIECE);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
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
    fn large_messages_are_written_in_pieces_that_add_up_to_the_line() {
        let binary: Vec<u8> = (0..5 * PIECE as u32 + 7).map(|i| (i * 7) as u8).collect();
        let message = Message::binary(binary.clone());
        let out = output(OutputFormat::Jsonl, false);
        let pieces: Vec<_> = line_pieces(out, ConnId(1), SlotId(2), &message, 9).collect();
        assert!(pieces.len() >= 7, "{} pieces", pieces.len());
        assert!(pieces.iter().all(|p| p.len() <= PIECE * 4 / 3 + 64));
        let v: serde_json::Value = serde_json::from_str(&pieces.concat()).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, binary);
        // Text cut at character boundaries, escaped piece by piece.
        let text = "é\"\u{1b}x".repeat(PIECE / 3);
        let message = Message::text(text.clone());
        let line = format_line(out, ConnId(1), SlotId(2), &message, 9);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["payload"], text.as_str());
        let text_out = output(OutputFormat::Text, false);
        let line = format_line(text_out, ConnId(1), SlotId(2), &message, 9);
        assert_eq!(line, format!("c1 s2 text {}\n", escape(&text)));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
    }
}
