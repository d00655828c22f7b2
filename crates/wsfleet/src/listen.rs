//! The accept loop of this crate's servers (admin, echo, chaos): every
//! accepted connection served in a task of its own, a bounded number at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The pause after a failed accept (EMFILE and friends) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts on `listener` until aborted (or `permits` is closed). Each
/// connection is served by the future `serve` makes for it, in a task of its
/// own holding one of `permits` until it is done: at most that many are
/// served at once, and further clients wait in the listen backlog. A failed
/// accept is logged, naming `server`, and retried after a pause: the server
/// keeps serving.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    server: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "{server}: accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let served = serve(tcp, peer);
        tokio::spawn(async move {
            let _permit = permit;
            served.await;
        });
    }
}
