//! Helpers shared by the test binaries that start the real `wsfleet`
//! binary: child processes killed when dropped, the address a server
//! prints, plain HTTP/1.1 GETs of the admin endpoint, `/proc` readings.
//! Each test binary uses a part of them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_wsfleet");

/// Kills the child when dropped (a failing test leaves nothing running).
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Starts `wsfleet ARGS` with stdout piped; returns it and a channel of
    /// its stdout lines.
    pub(crate) fn start(args: &[&str]) -> (Self, mpsc::Receiver<String>) {
        let mut running = Self::spawn(args, Stdio::piped(), Stdio::inherit());
        let stdout = running.0.stdout.take().expect("piped stdout");
        (running, lines_of(stdout))
    }

    /// Starts `wsfleet ARGS` with the given stdout and stderr, without
    /// `RUST_LOG`.
    pub(crate) fn spawn(args: &[&str], stdout: Stdio, stderr: Stdio) -> Self {
        let child = StdCommand::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn wsfleet");
        Self(child)
    }

    /// Starts `wsfleet serve --listen 127.0.0.1:0 EXTRA...` (stderr
    /// discarded); returns it and the URL it prints.
    pub(crate) fn serve(extra: &[&str]) -> (Self, String) {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut running = Self::spawn(&args, Stdio::piped(), Stdio::null());
        let stdout = running.0.stdout.take().expect("piped stdout");
        let lines = lines_of(stdout);
        let url = listening_url(&lines);
        (running, url)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = StdCommand::new("kill")
            .arg(format!("-{name}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    pub(crate) fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(t0.elapsed() < within, "did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A channel of `reader`'s lines, read by a thread.
pub(crate) fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The URL of `listening on URL`, the first line `wsfleet serve` prints.
pub(crate) fn listening_url(lines: &mpsc::Receiver<String>) -> String {
    let first = lines
        .recv_timeout(Duration::from_secs(15))
        .expect("serve prints its address");
    first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned()
}

/// A port nothing listens on now (bound, then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `GET path` over plain HTTP/1.1; the status code and the body.
pub(crate) fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    read_response(tcp)
}

/// `POST path` with a JSON `body` over plain HTTP/1.1, with `Authorization:
/// Bearer TOKEN` if a token is given; the status code and the body.
pub(crate) fn http_post(
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    read_response(tcp)
}

/// Reads an HTTP/1.1 answer to its end (`Connection: close`): the status
/// code and the body.
fn read_response(mut tcp: TcpStream) -> std::io::Result<(u16, String)> {
    let mut response = String::new();
    tcp.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET path` until `done` says yes to the answer (at most 15 s).
pub(crate) fn http_until(
    addr: &str,
    path: &str,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let t0 = Instant::now();
    loop {
        if let Ok((status, body)) = http_get(addr, path)
            && done(status, &body)
        {
            return (status, body);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "GET {path} never answered as expected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
