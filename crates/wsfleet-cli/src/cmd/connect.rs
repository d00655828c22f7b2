//! `wsfleet connect`: one connection bridged to stdin and stdout.
//!
//! Everything runs in one task: `tokio::select!` over the next stdin line
//! and `Connection::recv` (cancel-safe), and a send happens after the select
//! has dropped the `recv` future, never while it is held. At EOF on stdin,
//! `Connection::begin_close` queues the close frame and `recv` goes on
//! returning what the peer sent before its own close frame, so nothing in
//! flight is lost.

use std::io;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use wsfleet::{CloseCode, Connection, ConnectionConfig, Message};

use super::escape::escape;
use crate::cli::ConnectArgs;

/// Longest time spent printing late messages after EOF on stdin.
const LINGER_CAP: Duration = Duration::from_secs(5);

/// Connects, bridges stdin/stdout until EOF on stdin or the end of the
/// connection.
///
/// # Errors
/// A failed connect (naming its phase), a failed connection, an unusable
/// stdin line, or a peer that closed with an error code.
pub(crate) async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let config = connection_config(&args)?;
    let max_line = config.limits.max_message;
    let mut conn = Connection::connect(&args.url, &config).await?;
    tracing::debug!(peer = conn.peer(), protocol = ?conn.protocol(), deflate = ?conn.deflate(), "connected");

    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut stdout = BufWriter::new(tokio::io::stdout());
    let mut line = Vec::new();
    let mut line_number = 0u64;
    loop {
        tokio::select! {
            read = read_line(&mut stdin, &mut line, max_line) => {
                match read.context("cannot read stdin")? {
                    ReadLine::Eof => break,
                    ReadLine::TooLong => bail!(
                        "stdin line {} is longer than the largest message ({max_line} bytes; see --max-message)",
                        line_number + 1
                    ),
                    ReadLine::Line => {}
                }
                line_number += 1;
                let payload = std::mem::take(&mut line);
                let message = if args.binary {
                    Message::binary(payload)
                } else {
                    match String::from_utf8(payload) {
                        Ok(text) => Message::text(text),
                        Err(_) => {
                            tracing::warn!(line = line_number, "stdin line is not valid UTF-8; skipped (use --binary to send bytes)");
                            continue;
                        }
                    }
                };
                if let Err(send_error) = conn.send(message).await {
                    // The connection is ending: its own reason (a protocol
                    // error, say) says more than the refused send.
                    return finish_after_failed_send(&mut conn, &mut stdout, send_error, args.raw).await;
                }
            }
            received = conn.recv() => {
                match on_received(&conn, received, &mut stdout, args.raw).await? {
                    Flow::Continue => {}
                    Flow::Ended => return Ok(()),
                    Flow::StdoutClosed => return close(&mut conn).await,
                }
            }
        }
    }

    // EOF on stdin: with --linger, wait for late answers first.
    if !args.linger.is_zero() {
        let cap = tokio::time::sleep(LINGER_CAP);
        tokio::pin!(cap);
        loop {
            tokio::select! {
                () = &mut cap => break,
                received = tokio::time::timeout(args.linger, conn.recv()) => {
                    let Ok(received) = received else { break };
                    match on_received(&conn, received, &mut stdout, args.raw).await? {
                        Flow::Continue => {}
                        Flow::Ended => return Ok(()),
                        Flow::StdoutClosed => return close(&mut conn).await,
                    }
                }
            }
        }
    }
    // Close, and print what the peer sent before its close frame.
    conn.begin_close(CloseCode::NORMAL, "")
        .context("cannot start the close handshake")?;
    let mut printing = true;
    loop {
        let received = conn.recv().await;
        if !printing && matches!(received, Some(Ok(_))) {
            continue;
        }
        match on_received(&conn, received, &mut stdout, args.raw).await? {
            Flow::Continue => {}
            Flow::Ended => return Ok(()),
            Flow::StdoutClosed => printing = false,
        }
    }
}

/// After a send was refused: prints what still arrives and fails with why
/// the connection ended, or with the send error if it ended cleanly.
async fn finish_after_failed_send<W: AsyncWrite + Unpin>(
    conn: &mut Connection,
    out: &mut W,
    send_error: wsfleet::Error,
    raw: bool,
) -> anyhow::Result<()> {
    loop {
        let received = conn.recv().await;
        let ended = received.is_none();
        match on_received(conn, received, out, raw).await? {
            Flow::Continue | Flow::StdoutClosed if !ended => {}
            _ => return Err(send_error).context("send failed"),
        }
    }
}

/// The configuration the flags ask for.
fn connection_config(args: &ConnectArgs) -> anyhow::Result<ConnectionConfig> {
    let mut config = ConnectionConfig::default().limits(super::limits(args.max_message)?);
    for protocol in &args.protocols {
        config = config.protocol(protocol.clone());
    }
    for (name, value) in &args.headers {
        config = config.header(name.clone(), value.clone());
    }
    let t = &args.transport;
    super::Transport {
        ca_files: args.ca_files.clone(),
        insecure: args.insecure,
        native_roots: t.native_roots,
        client_cert: t.client_cert.clone(),
        client_key: t.client_key.clone(),
        origin: t.origin.clone(),
        deflate: t.deflate,
        proxy: t.proxy.clone(),
        no_proxy: t.no_proxy,
        max_redirects: t.max_redirects.unwrap_or(0),
        redirect_forward: t.redirect_forward.clone(),
        redirect_keep_tls: t.redirect_keep_tls,
    }
    .apply(config)
}

/// What to do after one `recv`.
enum Flow {
    /// Keep going.
    Continue,
    /// The connection is over (closed by the peer, cleanly).
    Ended,
    /// Nobody reads stdout any more: close and stop.
    StdoutClosed,
}

/// Prints a message (`raw`: text as received), or turns the end of the
/// connection into a result.
async fn on_received<W: AsyncWrite + Unpin>(
    conn: &Connection,
    received: Option<Result<Message, wsfleet::Error>>,
    out: &mut W,
    raw: bool,
) -> anyhow::Result<Flow> {
    match received {
        Some(Ok(message)) => match print_message(out, &message, raw).await {
            Ok(()) => Ok(Flow::Continue),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Flow::StdoutClosed),
            Err(e) => Err(e).context("cannot write to stdout"),
        },
        Some(Err(e)) => Err(e).context("connection failed"),
        None => {
            let frame = conn.close_frame();
            tracing::debug!(close = ?frame, "peer closed the connection");
            match frame {
                Some(frame)
                    if frame.code != CloseCode::NORMAL && frame.code != CloseCode::GOING_AWAY =>
                {
                    bail!("peer closed the connection with {frame}")
                }
                _ => Ok(Flow::Ended),
            }
        }
    }
}

/// One stdout line: text with its control characters escaped (as it is
/// if `raw`), binary as lowercase hex.
async fn print_message<W: AsyncWrite + Unpin>(
    out: &mut W,
    message: &Message,
    raw: bool,
) -> io::Result<()> {
    match message.as_text() {
        Some(text) if !raw => out.write_all(escape(text).as_bytes()).await?,
        Some(_) => out.write_all(message.payload()).await?,
        None => out.write_all(hex(message.payload()).as_bytes()).await?,
    }
    out.write_all(b"\n").await?;
    out.flush().await
}

/// Closes with 1000 and waits for the close handshake.
async fn close(conn: &mut Connection) -> anyhow::Result<()> {
    conn.close(CloseCode::NORMAL, "")
        .await
        .context("close handshake failed")
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum ReadLine {
    /// `line` holds one line, without its line ending.
    Line,
    /// The line is longer than allowed.
    TooLong,
    /// End of input; `line` is empty.
    Eof,
}

/// Reads one line of at most `max` bytes (plus `\n` or `\r\n`) into `line`.
///
/// Cancel-safe as long as `line` is kept: bytes already read stay in it, and
/// the next call goes on from there.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<ReadLine> {
    let allowed = max.saturating_add(2);
    let room = allowed.saturating_sub(line.len());
    let read = (&mut *reader)
        .take(u64::try_from(room).unwrap_or(u64::MAX))
        .read_until(b'\n', line)
        .await?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() >= allowed {
        return Ok(ReadLine::TooLong);
    } else if read == 0 && line.is_empty() {
        return Ok(ReadLine::Eof);
    }
    // Otherwise: the last line, without a line ending, before EOF.
    if line.len() > max {
        return Ok(ReadLine::TooLong);
    }
    Ok(ReadLine::Line)
}

/// Lowercase hex, two digits a byte.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, ReadLine>> {
        let mut reader = BufReader::with_capacity(3, input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader, &mut line, max).await.unwrap() {
                ReadLine::Line => out.push(Ok(std::mem::take(&mut line))),
                ReadLine::Eof => return out,
                ReadLine::TooLong => {
                    out.push(Err(ReadLine::TooLong));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        assert_eq!(
            lines(b"a\r\nbc\n\nlast", 10).await,
            vec![
                Ok(b"a".to_vec()),
                Ok(b"bc".to_vec()),
                Ok(vec![]),
                Ok(b"last".to_vec())
            ]
        );
        assert_eq!(lines(b"", 10).await, vec![]);
        assert_eq!(lines(b"12345\n", 5).await, vec![Ok(b"12345".to_vec())]);
        assert_eq!(lines(b"12345\r\n", 5).await, vec![Ok(b"12345".to_vec())]);
        assert_eq!(lines(b"123456\n", 5).await, vec![Err(ReadLine::TooLong)]);
        assert_eq!(lines(b"123456", 5).await, vec![Err(ReadLine::TooLong)]);
        assert_eq!(
            lines(b"ok\n1234567890", 5).await,
            vec![Ok(b"ok".to_vec()), Err(ReadLine::TooLong)]
        );
    }

    #[tokio::test]
    async fn binary_prints_as_hex() {
        let mut out = Vec::new();
        print_message(&mut out, &Message::binary(vec![1u8, 0xfe]), false)
            .await
            .unwrap();
        print_message(&mut out, &Message::text("héllo"), false)
            .await
            .unwrap();
        assert_eq!(out, "01fe\nhéllo\n".as_bytes());
    }

    #[tokio::test]
    async fn text_is_one_escaped_line_unless_raw() {
        let message = Message::text("\x1b]0;pwned\x07a\nb\u{9b}");
        let mut out = Vec::new();
        print_message(&mut out, &message, false).await.unwrap();
        assert_eq!(out, b"\\x1b]0;pwned\\x07a\\nb\\u{9b}\n");
        let mut out = Vec::new();
        print_message(&mut out, &message, true).await.unwrap();
        assert_eq!(out, "\x1b]0;pwned\x07a\nb\u{9b}\n".as_bytes());
    }
}
