//! A hostile server for testing clients: every failure this project exists
//! for, on demand (`wsfleet serve --chaos MODE`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use wsfleet_proto::Limits;
use wsfleet_proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_header};
use wsfleet_proto::handshake::{accept_response, parse_request};

/// Longest a hostile connection is kept: every flood and stall ends by then.
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(300);
/// Most hostile connections served at once.
const MAX_CONNECTIONS: usize = 10_000;

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
}

impl ChaosMode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [ChaosMode; 10] = [
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

/// A server that misbehaves in one [`ChaosMode`] on every connection.
/// Stops when dropped.
#[derive(Debug)]
pub struct ChaosServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ChaosServer {
    /// Listens on `addr`.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: impl ToSocketAddrs, mode: ChaosMode) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, mode));
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

async fn accept_loop(listener: TcpListener, mode: ChaosMode) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "chaos server: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(MAX_CONNECTION_LIFE, misbehave(tcp, mode)).await;
        });
    }
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
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 2048];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf, &limits) {
            Ok(Some((request, _))) => return Ok(Some(request)),
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
    }
}

async fn misbehave(mut tcp: TcpStream, mode: ChaosMode) -> io::Result<()> {
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
                tokio::time::sleep(Duration::from_millis(1)).await;
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
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ChaosMode::EndlessFragments => {
            tcp.write_all(&frame(false, OpCode::Text, b"start "))
                .await?;
            let piece = frame(false, OpCode::Continuation, &[b'x'; 1024]);
            loop {
                tcp.write_all(&piece).await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
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
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        ChaosMode::PingFlood => {
            let batch: Vec<u8> = (0..256)
                .flat_map(|_| frame(true, OpCode::Ping, b"flood"))
                .collect();
            // Drain what the client sends (pongs) so only the client's
            // handling is tested, not TCP backpressure.
            let (mut read, mut write) = tcp.split();
            let drain = async {
                let mut sink = vec![0u8; 64 << 10];
                while read.read(&mut sink).await.unwrap_or(0) > 0 {}
            };
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
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        ChaosMode::StallHandshake | ChaosMode::EndlessHandshake | ChaosMode::Busy => {}
    }
    Ok(())
}
