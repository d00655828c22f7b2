//! Scripted raw-TCP peers: a real socket on loopback whose every byte the
//! test chooses, for the misbehaviour no library server will produce.

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use wsfleet::proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_header};
use wsfleet::proto::handshake::{accept_response, parse_request};
use wsfleet::proto::{Event, Limits, Protocol};

/// Accepts one connection; with `handshake`, answers the upgrade first; then
/// hands the socket to the script.
pub(crate) struct ScriptServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ScriptServer {
    pub(crate) async fn start<F, Fut>(handshake: bool, script: F) -> Self
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            if handshake {
                accept_upgrade(&mut tcp).await;
            }
            script(tcp).await;
        });
        Self { addr, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn accept_upgrade(tcp: &mut TcpStream) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.expect("read request");
        assert!(n > 0, "client closed during handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((request, _)) = parse_request(&buf, &Limits::default()).expect("valid request")
        {
            tcp.write_all(&accept_response(&request, None))
                .await
                .expect("write answer");
            return;
        }
    }
}

/// An unmasked server frame.
pub(crate) fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    };
    let mut head = [0; MAX_HEADER_LEN];
    let n = encode_header(&header, &mut head);
    [&head[..n], payload].concat()
}

/// Reads what the client sends, parsed by a server-role machine, until the
/// client's close frame (its code) or EOF (`None`). Pongs seen on the way
/// are collected.
pub(crate) async fn read_until_close(tcp: &mut TcpStream) -> (Option<u16>, Vec<Vec<u8>>) {
    let mut server = Protocol::server(Limits::default());
    let mut pongs = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return (None, pongs);
        }
        server.feed(&chunk[..n]).expect("feed");
        while let Ok(Some(event)) = server.poll_event() {
            match event {
                Event::Close(frame) => return (frame.map(|f| f.code.as_u16()), pongs),
                Event::Pong(p) => pongs.push(p.to_vec()),
                _ => {}
            }
        }
    }
}
