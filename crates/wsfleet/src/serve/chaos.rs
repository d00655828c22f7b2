//! A hostile server for testing clients: every failure this project exists
//! for, on demand (`wsfleet serve --chaos MODE`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use wsfleet_proto::frame::MAX_CONTROL_PAYLOAD;
use wsfleet_proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_header, parse_header};
use wsfleet_proto::handshake::{accept_response, parse_request};
use wsfleet_proto::internals::apply_mask;
use wsfleet_proto::{ConfigError, Limits};

use crate::connection::{HeadError, read_head};
use crate::listen::accept_loop;

/// Longest a hostile connection is kept: every flood and stall ends by then.
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(300);
/// Most hostile connections served at once.
const MAX_CONNECTIONS: usize = 10_000;
/// Largest buffer a setting may make the server allocate (the `stream`
/// filler, the `pin` prefix). Allocated once per server and shared by its
/// connections; zeroes, so untouched pages cost no memory.
const MAX_SHARED_BUFFER: usize = 1 << 30;
/// Largest payload length a frame header can declare (RFC 6455 §5.2: the
/// top bit of the 64-bit length must be 0).
const MAX_DECLARED_LEN: u64 = (1 << 63) - 1;
/// Length of the sequence number that starts every `stream` message.
const SEQ_LEN: usize = 8;
/// Control frames (pongs, the close reply) the `stream` reader may hand its
/// writer before it drops pongs: a client's ping flood costs no memory.
const CONTROL_QUEUE: usize = 4;
/// Pause between the pieces of a handshake or a message that never ends.
const DRIP: Duration = Duration::from_millis(1);
/// `lying-length`: pause between the 64-byte pieces of its payload.
const LYING_TRICKLE: Duration = Duration::from_millis(100);
/// How long a connection stays open after its bad frame, for the client to
/// close first.
const AFTER_BAD_FRAME: Duration = Duration::from_secs(10);

/// How the chaos server misbehaves after (or instead of) the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChaosMode {
    /// A binary frame header claiming 2^62 bytes, then a trickle of payload.
    LyingLength,
    /// A text message that never ends: a continuation frame of 1 KiB every
    /// millisecond, never FIN.
    EndlessFragments,
    /// Half of a 64 KiB frame, then silence with the socket open.
    PartialThenSilence,
    /// The handshake, then nothing: never reads, never answers a ping.
    Silent,
    /// Random-looking bytes right after the handshake.
    Junk,
    /// Pings as fast as the socket takes them.
    PingFlood,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// Accepts TCP and never answers the handshake.
    StallHandshake,
    /// A handshake response whose headers never end.
    EndlessHandshake,
    /// Answers the handshake with 503 and `Retry-After: 5`.
    Busy,
    /// Binary messages of [`ChaosSettings::message_size`] bytes, as fast as
    /// the socket takes them or one every [`ChaosSettings::interval`], each
    /// starting with its 8-byte big-endian sequence number (0, 1, 2, … per
    /// connection). A peer for backpressure tests: a client that stops
    /// reading only makes the server wait.
    Stream,
    /// One binary frame declaring [`ChaosSettings::pin_frame`] bytes:
    /// [`ChaosSettings::pin_prefix`] of them at once, then one byte every
    /// [`ChaosSettings::trickle`], never the last one. Pins memory in a
    /// client that buffers frames whole, while the trickle keeps its
    /// keepalive satisfied.
    Pin,
}

impl ChaosMode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [ChaosMode; 12] = [
        Self::LyingLength,
        Self::EndlessFragments,
        Self::PartialThenSilence,
        Self::Silent,
        Self::Junk,
        Self::PingFlood,
        Self::InvalidUtf8,
        Self::StallHandshake,
        Self::EndlessHandshake,
        Self::Busy,
        Self::Stream,
        Self::Pin,
    ];

    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::LyingLength => "lying-length",
            Self::EndlessFragments => "endless-fragments",
            Self::PartialThenSilence => "partial-then-silence",
            Self::Silent => "silent",
            Self::Junk => "junk",
            Self::PingFlood => "ping-flood",
            Self::InvalidUtf8 => "invalid-utf8",
            Self::StallHandshake => "stall-handshake",
            Self::EndlessHandshake => "endless-handshake",
            Self::Busy => "busy",
            Self::Stream => "stream",
            Self::Pin => "pin",
        }
    }

    /// One line on what it does and what a sound client does about it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::LyingLength => {
                "frame header claims 2^62 bytes; a sound client refuses it at the header (close 1009) without allocating"
            }
            Self::EndlessFragments => {
                "a text message that never ends; a sound client stops at its message limit (close 1009)"
            }
            Self::PartialThenSilence => {
                "half a 64 KiB frame, then silence; a sound client's ping goes unanswered and it gives up"
            }
            Self::Silent => {
                "handshake, then never reads or answers pings; a sound client times out"
            }
            Self::Junk => "garbage after the handshake; a sound client closes with 1002",
            Self::PingFlood => {
                "pings as fast as possible; a sound client neither queues pongs without bound nor \
                 lets it eat its CPU (wsfleet closes with 1008 past 100 pings a second)"
            }
            Self::InvalidUtf8 => {
                "a text message that is not UTF-8; a sound client closes with 1007"
            }
            Self::StallHandshake => {
                "accepts TCP, never answers the upgrade; a sound client's handshake deadline fires"
            }
            Self::EndlessHandshake => {
                "response headers that never end; a sound client stops at its byte limit"
            }
            Self::Busy => "answers 503 with Retry-After: 5; a sound client waits before retrying",
            Self::Stream => {
                "binary messages of --message-size (default 4 MiB), each starting with an 8-byte \
                 big-endian sequence number, as fast as the socket takes them or one every \
                 --interval; a sound client keeps up or pushes back, and loses none"
            }
            Self::Pin => {
                "declares a --pin-frame binary frame (default 16 MiB), sends --pin-prefix of it \
                 (12 MiB), then a byte every --trickle (5 s), never finishing; a sound client \
                 bounds what it holds and drops this peer, not healthy ones"
            }
        }
    }
}

impl fmt::Display for ChaosMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChaosMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
                format!("unknown chaos mode {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// What the configurable modes ([`ChaosMode::Stream`], [`ChaosMode::Pin`])
/// send. Other modes ignore it.
///
/// ```
/// use std::time::Duration;
/// use wsfleet::serve::ChaosSettings;
/// let s = ChaosSettings::default()
///     .with_message_size(64 << 10)
///     .with_interval(Duration::from_millis(100));
/// assert!(s.validate().is_ok());
/// let bad = ChaosSettings::default().with_pin_prefix(20 << 20);
/// assert_eq!(bad.validate().unwrap_err().field, "pin_prefix");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChaosSettings {
    /// `stream`: size of each message in bytes, the 8-byte sequence number
    /// included. Default 4 MiB; at least 8, at most 1 GiB (one zeroed
    /// buffer per server, shared by its connections).
    pub message_size: usize,
    /// `stream`: pause after each message. Default zero: as fast as the
    /// socket takes them. At most 300 s (the longest a chaos connection
    /// lives).
    pub interval: Duration,
    /// `pin`: payload length the frame header declares, in bytes. Default
    /// 16 MiB (wsfleet's default frame limit, so a client with default
    /// limits accepts the header). Above `pin_prefix`, at most 2^63 - 1.
    pub pin_frame: usize,
    /// `pin`: payload bytes sent at once after the header. Default 12 MiB;
    /// below `pin_frame`, at most 1 GiB (one zeroed buffer per server).
    pub pin_prefix: usize,
    /// `pin`: pause between the single payload bytes that follow the
    /// prefix. Default 5 s, below the 10 s a default client waits for some
    /// byte after a ping. Above zero, at most 300 s.
    pub trickle: Duration,
}

impl Default for ChaosSettings {
    fn default() -> Self {
        Self {
            message_size: 4 << 20,
            interval: Duration::ZERO,
            pin_frame: 16 << 20,
            pin_prefix: 12 << 20,
            trickle: Duration::from_secs(5),
        }
    }
}

impl ChaosSettings {
    /// Sets [`ChaosSettings::message_size`].
    #[must_use]
    pub const fn with_message_size(mut self, bytes: usize) -> Self {
        self.message_size = bytes;
        self
    }

    /// Sets [`ChaosSettings::interval`].
    #[must_use]
    pub const fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets [`ChaosSettings::pin_frame`].
    #[must_use]
    pub const fn with_pin_frame(mut self, bytes: usize) -> Self {
        self.pin_frame = bytes;
        self
    }

    /// Sets [`ChaosSettings::pin_prefix`].
    #[must_use]
    pub const fn with_pin_prefix(mut self, bytes: usize) -> Self {
        self.pin_prefix = bytes;
        self
    }

    /// Sets [`ChaosSettings::trickle`].
    #[must_use]
    pub const fn with_trickle(mut self, trickle: Duration) -> Self {
        self.trickle = trickle;
        self
    }

    /// Checks every field, whichever mode uses it.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, value: String, problem| {
            Err(ConfigError {
                field,
                value,
                problem,
            })
        };
        if self.message_size < SEQ_LEN {
            return err(
                "message_size",
                self.message_size.to_string(),
                "must be at least 8 bytes (the sequence number)",
            );
        }
        if self.message_size > MAX_SHARED_BUFFER {
            return err(
                "message_size",
                self.message_size.to_string(),
                "must be at most 1 GiB",
            );
        }
        if self.interval > MAX_CONNECTION_LIFE {
            return err(
                "interval",
                format!("{:?}", self.interval),
                "must be at most 300 s (the longest a chaos connection lives)",
            );
        }
        if u64::try_from(self.pin_frame).map_or(true, |n| n > MAX_DECLARED_LEN) {
            return err(
                "pin_frame",
                self.pin_frame.to_string(),
                "must be at most 2^63 - 1 bytes (what a frame header can declare)",
            );
        }
        if self.pin_prefix >= self.pin_frame {
            return err(
                "pin_prefix",
                self.pin_prefix.to_string(),
                "must be below pin_frame (the frame must never finish)",
            );
        }
        if self.pin_prefix > MAX_SHARED_BUFFER {
            return err(
                "pin_prefix",
                self.pin_prefix.to_string(),
                "must be at most 1 GiB",
            );
        }
        if self.trickle.is_zero() || self.trickle > MAX_CONNECTION_LIFE {
            return err(
                "trickle",
                format!("{:?}", self.trickle),
                "must be above zero and at most 300 s",
            );
        }
        Ok(())
    }
}

/// What every connection of one server shares: the mode, its settings and
/// the buffers built once from them.
#[derive(Debug)]
struct Plan {
    mode: ChaosMode,
    settings: ChaosSettings,
    /// `stream`: the message after its sequence number (zeroes). Empty for
    /// other modes.
    filler: Bytes,
    /// `pin`: the prefix of the frame's payload (zeroes). Empty for other
    /// modes.
    prefix: Bytes,
}

impl Plan {
    fn new(mode: ChaosMode, settings: ChaosSettings) -> Self {
        // Zeroed allocations: pages the kernel only ever reads from stay
        // unbacked, so a 16 MiB prefix costs far less than 16 MiB of RSS.
        let zeroes = |n: usize| Bytes::from(vec![0u8; n]);
        let (filler, prefix) = match mode {
            ChaosMode::Stream => (
                zeroes(settings.message_size.saturating_sub(SEQ_LEN)),
                Bytes::new(),
            ),
            ChaosMode::Pin => (Bytes::new(), zeroes(settings.pin_prefix)),
            _ => (Bytes::new(), Bytes::new()),
        };
        Self {
            mode,
            settings,
            filler,
            prefix,
        }
    }
}

/// A server that misbehaves in one [`ChaosMode`] on every connection.
/// Stops when dropped.
#[derive(Debug)]
pub struct ChaosServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ChaosServer {
    /// Listens on `addr`, with [`ChaosSettings::default`]. Cancel-safe:
    /// dropped before it returns, it leaves nothing listening.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: impl ToSocketAddrs, mode: ChaosMode) -> io::Result<Self> {
        Self::bind_with(addr, mode, ChaosSettings::default()).await
    }

    /// Listens on `addr`, with `settings` for the modes that read them
    /// (cancel-safe as [`bind`](Self::bind)).
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] wrapping the [`ConfigError`] that
    /// names the field, if `settings` do not
    /// [validate](ChaosSettings::validate); otherwise the bind error.
    pub async fn bind_with(
        addr: impl ToSocketAddrs,
        mode: ChaosMode,
        settings: ChaosSettings,
    ) -> io::Result<Self> {
        settings
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, Arc::new(Plan::new(mode, settings))));
        Ok(Self { local_addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://ADDR/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.local_addr)
    }
}

impl Drop for ChaosServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Misbehaves on every connection, each for at most [`MAX_CONNECTION_LIFE`].
async fn serve(listener: TcpListener, plan: Arc<Plan>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    accept_loop(listener, permits, "chaos server", move |tcp, _| {
        let plan = Arc::clone(&plan);
        async move {
            let _ = tokio::time::timeout(MAX_CONNECTION_LIFE, misbehave(tcp, &plan)).await;
        }
    })
    .await;
}

fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    header(fin, opcode, payload.len() as u64)
        .into_iter()
        .chain(payload.iter().copied())
        .collect()
}

fn header(fin: bool, opcode: OpCode, len: u64) -> Vec<u8> {
    let h = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: None,
        payload_len: len,
    };
    let mut out = [0; MAX_HEADER_LEN];
    let n = encode_header(&h, &mut out);
    out[..n].to_vec()
}

/// Reads the upgrade request (bounded by the default handshake limits).
async fn read_request(
    tcp: &mut TcpStream,
) -> io::Result<Option<wsfleet_proto::handshake::ServerRequest>> {
    let limits = Limits::default();
    let parse = |buf: &[u8]| parse_request(buf, &limits);
    match read_head(tcp, limits.max_handshake_bytes, parse).await {
        Ok((request, _)) => Ok(Some(request)),
        Err(HeadError::Io(e)) => Err(e),
        Err(HeadError::Eof(_) | HeadError::Invalid(_)) => Ok(None),
    }
}

async fn misbehave(mut tcp: TcpStream, plan: &Plan) -> io::Result<()> {
    let mode = plan.mode;
    if mode == ChaosMode::StallHandshake {
        tokio::time::sleep(MAX_CONNECTION_LIFE).await;
        return Ok(());
    }
    let Some(request) = read_request(&mut tcp).await? else {
        return Ok(());
    };
    match mode {
        ChaosMode::Busy => {
            tcp.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n",
            )
            .await?;
            return Ok(());
        }
        ChaosMode::EndlessHandshake => {
            tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\n")
                .await?;
            let line = format!("X-Chaos: {}\r\n", "z".repeat(100));
            loop {
                tcp.write_all(line.as_bytes()).await?;
                tokio::time::sleep(DRIP).await;
            }
        }
        _ => tcp.write_all(&accept_response(&request, None)).await?,
    }
    match mode {
        ChaosMode::LyingLength => {
            tcp.write_all(&header(true, OpCode::Binary, 1 << 62))
                .await?;
            loop {
                tcp.write_all(&[0u8; 64]).await?;
                tokio::time::sleep(LYING_TRICKLE).await;
            }
        }
        ChaosMode::EndlessFragments => {
            tcp.write_all(&frame(false, OpCode::Text, b"start "))
                .await?;
            let piece = frame(false, OpCode::Continuation, &[b'x'; 1024]);
            loop {
                tcp.write_all(&piece).await?;
                tokio::time::sleep(DRIP).await;
            }
        }
        ChaosMode::PartialThenSilence => {
            tcp.write_all(&header(true, OpCode::Binary, 64 << 10))
                .await?;
            tcp.write_all(&[0u8; 32 << 10]).await?;
            tokio::time::sleep(MAX_CONNECTION_LIFE).await;
        }
        ChaosMode::Silent => tokio::time::sleep(MAX_CONNECTION_LIFE).await,
        ChaosMode::Junk => {
            let junk: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x0C)
                .collect();
            tcp.write_all(&junk).await?;
            tokio::time::sleep(AFTER_BAD_FRAME).await;
        }
        ChaosMode::PingFlood => {
            let batch: Vec<u8> = (0..256)
                .flat_map(|_| frame(true, OpCode::Ping, b"flood"))
                .collect();
            // Drain what the client sends (pongs) so only the client's
            // handling is tested, not TCP backpressure.
            let (mut read, mut write) = tcp.split();
            let drain = async { tokio::io::copy(&mut read, &mut tokio::io::sink()).await };
            let flood = async {
                loop {
                    if write.write_all(&batch).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            };
            tokio::select! { _ = drain => {}, _ = flood => {} }
        }
        ChaosMode::InvalidUtf8 => {
            tcp.write_all(&frame(true, OpCode::Text, &[b'o', b'k', 0xED, 0xA0, 0x80]))
                .await?;
            tokio::time::sleep(AFTER_BAD_FRAME).await;
        }
        ChaosMode::Stream => stream(tcp, plan).await,
        ChaosMode::Pin => pin(tcp, plan).await,
        ChaosMode::StallHandshake | ChaosMode::EndlessHandshake | ChaosMode::Busy => {}
    }
    Ok(())
}

/// A control frame the `stream` reader asks its writer to send.
#[derive(Debug)]
enum Control {
    /// Answer a ping with this payload.
    Pong(Vec<u8>),
    /// Answer a close with this payload, then end.
    Close(Vec<u8>),
}

/// `stream`: numbered messages until the client closes or goes away.
async fn stream(mut tcp: TcpStream, plan: &Plan) {
    // The header and sequence number are written together with the filler
    // in one writev, but pongs and close replies are small on their own.
    let _ = tcp.set_nodelay(true);
    let (read, write) = tcp.split();
    let (control, controls) = mpsc::channel(CONTROL_QUEUE);
    // The reader ends on EOF, an error or the client's close, dropping its
    // sender: the writer sees that (or the close) and ends the connection.
    // The writer alone decides when, so a close reply is never cut off.
    let reader = async {
        let _ = read_client(read, control).await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = reader => {}
        _ = write_stream(write, controls, plan) => {}
    }
}

/// Writes `stream` messages, and the pongs and close reply `controls`
/// asks for between them. Ends after the close reply, when the reader has
/// ended, or on a write error (the client went away).
async fn write_stream(
    mut write: WriteHalf<'_>,
    mut controls: mpsc::Receiver<Control>,
    plan: &Plan,
) -> io::Result<()> {
    let size = plan.settings.message_size as u64;
    let interval = plan.settings.interval;
    let mut head = [0u8; MAX_HEADER_LEN + SEQ_LEN];
    let head_len = {
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = encode_header(
            &FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Binary,
                mask: None,
                payload_len: size,
            },
            &mut h,
        );
        head[..n].copy_from_slice(&h[..n]);
        n + SEQ_LEN
    };
    // Bounded by MAX_CONNECTION_LIFE (the caller's timeout), a close, the
    // reader's end or a write error.
    let mut seq: u64 = 0;
    loop {
        // Controls that arrived while the last message was written.
        loop {
            match controls.try_recv() {
                Ok(c) => {
                    if answer(&mut write, c).await? {
                        return Ok(());
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        head[head_len - SEQ_LEN..head_len].copy_from_slice(&seq.to_be_bytes());
        // One writev of the small head and the shared filler: the large
        // buffer is never copied. A client that stops reading makes this
        // wait (TCP backpressure), nothing else.
        let mut message = Buf::chain(&head[..head_len], &plan.filler[..]);
        write.write_all_buf(&mut message).await?;
        seq = seq.wrapping_add(1);
        if interval.is_zero() {
            continue;
        }
        let next = tokio::time::Instant::now() + interval;
        // Answers controls while it waits; each turn takes a control from
        // the client, and the wait ends at `next` regardless.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                c = controls.recv() => match c {
                    Some(c) => {
                        if answer(&mut write, c).await? {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                },
            }
        }
    }
}

/// Writes the answer to `control`; true once the connection should end
/// (a close was answered).
async fn answer(write: &mut WriteHalf<'_>, control: Control) -> io::Result<bool> {
    match control {
        Control::Pong(payload) => {
            write
                .write_all(&frame(true, OpCode::Pong, &payload))
                .await?;
            Ok(false)
        }
        Control::Close(payload) => {
            // Echo the status code only (RFC 6455 §5.5.1), then end TCP
            // first, as a server does (§7.1.1).
            let code = payload.get(..2).unwrap_or(&[]);
            write.write_all(&frame(true, OpCode::Close, code)).await?;
            write.shutdown().await?;
            Ok(true)
        }
    }
}

/// Reads the client's frames: drops data, asks the writer to answer pings
/// (dropping pongs when it is behind) and a close. Ends at the client's
/// close, EOF, an error or a frame that breaks the protocol.
async fn read_client(read: ReadHalf<'_>, controls: mpsc::Sender<Control>) -> io::Result<()> {
    let mut read = BufReader::with_capacity(8 << 10, read);
    // Bounded by the connection's life: every turn consumes a frame.
    loop {
        let mut raw = [0u8; MAX_HEADER_LEN];
        if read.fill_buf().await?.is_empty() {
            return Ok(());
        }
        read.read_exact(&mut raw[..2]).await?;
        let extended = match raw[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = if raw[1] & 0x80 != 0 { 4 } else { 0 };
        let len = 2 + extended + masked;
        read.read_exact(&mut raw[2..len]).await?;
        let Ok(Some((header, _))) = parse_header(&raw[..len]) else {
            return Ok(());
        };
        if !header.opcode.is_control() {
            // Data the client sends is not the point: skip it unread.
            let mut skip = (&mut read).take(header.payload_len);
            tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
            continue;
        }
        let Ok(n) = usize::try_from(header.payload_len) else {
            return Ok(());
        };
        if n > MAX_CONTROL_PAYLOAD {
            return Ok(());
        }
        let mut payload = vec![0u8; n];
        read.read_exact(&mut payload).await?;
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        match header.opcode {
            OpCode::Ping => {
                // Full: the writer is behind (a paused client); this pong
                // is dropped rather than queued.
                let _ = controls.try_send(Control::Pong(payload));
            }
            OpCode::Close => {
                let _ = controls.send(Control::Close(payload)).await;
                return Ok(());
            }
            _ => {}
        }
    }
}

/// `pin`: the header, the prefix, then a byte every trickle, never the
/// frame's last byte. Ends when the client goes away.
async fn pin(mut tcp: TcpStream, plan: &Plan) {
    let settings = plan.settings;
    let (mut read, mut write) = tcp.split();
    // Drain pings and the close (unanswerable mid-frame) so the client's
    // writes never block; its EOF ends the connection.
    let drain = async { tokio::io::copy(&mut read, &mut tokio::io::sink()).await };
    let hold = async {
        let declared = settings.pin_frame as u64;
        write
            .write_all(&header(true, OpCode::Binary, declared))
            .await?;
        write.write_all(&plan.prefix).await?;
        // Never the last byte: the frame must stay unfinished. Bounded by
        // the count and by MAX_CONNECTION_LIFE.
        let mut left = declared - settings.pin_prefix as u64 - 1;
        while left > 0 {
            tokio::time::sleep(settings.trickle).await;
            write.write_all(&[0]).await?;
            left -= 1;
        }
        tokio::time::sleep(MAX_CONNECTION_LIFE).await;
        io::Result::Ok(())
    };
    tokio::select! {
        _ = drain => {}
        _ = hold => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(settings: ChaosSettings) -> &'static str {
        settings.validate().expect_err("out of range").field
    }

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let d = ChaosSettings::default();
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.message_size, 4 << 20);
        assert_eq!(d.interval, Duration::ZERO);
        assert_eq!(d.pin_frame, 16 << 20);
        assert_eq!(d.pin_prefix, 12 << 20);
        assert_eq!(d.trickle, Duration::from_secs(5));
    }

    #[test]
    fn each_field_is_checked_at_its_bounds() {
        let d = ChaosSettings::default();
        assert_eq!(d.with_message_size(SEQ_LEN).validate(), Ok(()));
        assert_eq!(field_of(d.with_message_size(SEQ_LEN - 1)), "message_size");
        assert_eq!(
            field_of(d.with_message_size(MAX_SHARED_BUFFER + 1)),
            "message_size"
        );
        assert_eq!(d.with_interval(MAX_CONNECTION_LIFE).validate(), Ok(()));
        assert_eq!(
            field_of(d.with_interval(MAX_CONNECTION_LIFE + Duration::from_millis(1))),
            "interval"
        );
        assert_eq!(d.with_pin_prefix(0).validate(), Ok(()));
        assert_eq!(
            d.with_pin_frame(2).with_pin_prefix(1).validate(),
            Ok(()),
            "one byte left to trickle is enough"
        );
        assert_eq!(field_of(d.with_pin_prefix(16 << 20)), "pin_prefix");
        assert_eq!(field_of(d.with_pin_prefix(20 << 20)), "pin_prefix");
        assert_eq!(
            field_of(d.with_pin_frame(0).with_pin_prefix(0)),
            "pin_prefix"
        );
        assert_eq!(
            field_of(d.with_pin_frame(usize::MAX).with_pin_prefix(0)),
            "pin_frame"
        );
        assert_eq!(
            field_of(
                d.with_pin_frame(usize::MAX >> 1)
                    .with_pin_prefix(MAX_SHARED_BUFFER + 1)
            ),
            "pin_prefix"
        );
        assert_eq!(field_of(d.with_trickle(Duration::ZERO)), "trickle");
        assert_eq!(
            field_of(d.with_trickle(MAX_CONNECTION_LIFE + Duration::from_millis(1))),
            "trickle"
        );
    }

    #[test]
    fn new_modes_parse_from_their_names() {
        assert_eq!("stream".parse::<ChaosMode>(), Ok(ChaosMode::Stream));
        assert_eq!("pin".parse::<ChaosMode>(), Ok(ChaosMode::Pin));
        assert!("pinned".parse::<ChaosMode>().is_err());
        for mode in ChaosMode::ALL {
            assert_eq!(mode.to_string().parse::<ChaosMode>(), Ok(mode));
        }
    }

    #[tokio::test]
    async fn bind_with_refuses_invalid_settings_as_invalid_input() {
        let bad = ChaosSettings::default().with_pin_prefix(20 << 20);
        let err = ChaosServer::bind_with("127.0.0.1:0", ChaosMode::Pin, bad)
            .await
            .expect_err("invalid");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("pin_prefix"), "{err}");
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<ConfigError>());
        assert_eq!(inner.map(|e| e.field), Some("pin_prefix"));
    }
}
