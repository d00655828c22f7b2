//! The echo server process every client talks to.
//!
//! Default: tokio-websockets' server (`ServerBuilder`, default limits:
//! 64 MiB messages), echoing text as text and binary as binary, each echo
//! as one frame (`frame_size` raised from its 4 MiB default to 16 MiB, so a
//! 16 MiB message comes back as the single frame it was sent as). It is a
//! third party to wsfleet and, measured here, the faster of the two: with
//! wsfleet's own [`wsfleet::serve::EchoServer`] (`--impl wsfleet`) the server
//! is the bottleneck of the echo scenarios. Either way it is one process on
//! one tokio thread, shared by every client and repetition, so it costs every
//! client the same.

use std::io::{BufRead, Write};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

/// Which echo server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ServerImpl {
    /// `wsfleet::serve::EchoServer`.
    Wsfleet,
    /// tokio-websockets' `ServerBuilder`, echoing text and binary.
    TokioWebsockets,
}

impl ServerImpl {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Wsfleet => "wsfleet",
            Self::TokioWebsockets => "tokio-websockets",
        }
    }
}

/// Runs the server until standard input closes (the orchestrator exits or
/// drops its end), printing `LISTENING <port>` once bound.
pub(crate) fn run(listen: &str, which: ServerImpl) -> Result<(), String> {
    let nofile = crate::sys::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // The orchestrator holds our stdin: when it goes away, so do we.
    std::thread::spawn(|| {
        let mut sink = String::new();
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        while matches!(lock.read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
        std::process::exit(0);
    });
    rt.block_on(async move {
        match which {
            ServerImpl::Wsfleet => {
                let server =
                    wsfleet::serve::EchoServer::bind(listen, wsfleet::ConnectionConfig::default())
                        .await
                        .map_err(|e| format!("bind {listen}: {e}"))?;
                announce(server.local_addr().port(), nofile);
                std::future::pending::<()>().await;
                drop(server);
                Ok(())
            }
            ServerImpl::TokioWebsockets => {
                let listener = TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("bind {listen}: {e}"))?;
                let port = listener.local_addr().map_err(|e| e.to_string())?.port();
                announce(port, nofile);
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(async move {
                        let config = tokio_websockets::Config::default().frame_size(16 << 20);
                        let Ok((_req, mut ws)) = tokio_websockets::ServerBuilder::new()
                            .config(config)
                            .accept(tcp)
                            .await
                        else {
                            return;
                        };
                        while let Some(Ok(msg)) = ws.next().await {
                            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        }
    })
}

fn announce(port: u16, nofile: u64) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "LISTENING {port}");
    let _ = writeln!(out, "NOFILE {nofile}");
    let _ = out.flush();
}
