//! Bounded capture of a child's output, for error messages.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

/// Keeps the last `LIMIT` bytes a child wrote.
#[derive(Debug, Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

const LIMIT: usize = 64 << 10;

impl Captured {
    /// Reads `from` to its end in a background task, keeping the tail. The handle
    /// finishes when `from` reaches its end.
    pub(crate) fn spawn_reader<R>(mut from: R) -> (Self, JoinHandle<()>)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let captured = Captured::default();
        let sink = captured.clone();
        let done = tokio::spawn(async move {
            let mut chunk = vec![0u8; 8 << 10];
            loop {
                match from.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.push(&chunk[..n]),
                }
            }
        });
        (captured, done)
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend_from_slice(bytes);
        if buf.len() > LIMIT {
            let excess = buf.len() - LIMIT;
            buf.drain(..excess);
        }
    }

    /// The captured text so far (lossy UTF-8).
    pub(crate) fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}
