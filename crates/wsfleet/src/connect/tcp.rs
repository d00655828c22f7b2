//! DNS resolution and TCP connect, each bounded by its deadline.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::{ConnectError, ConnectErrorKind, Phase};

/// Runs `fut`, turning "not done within `limit`" into a [`ConnectErrorKind::Timeout`]
/// for `phase` and `target`.
pub(crate) async fn with_deadline<T, F>(
    phase: Phase,
    target: &str,
    limit: Duration,
    fut: F,
) -> Result<T, ConnectError>
where
    F: Future<Output = Result<T, ConnectError>>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ConnectError::new(
            phase,
            target,
            ConnectErrorKind::Timeout(limit),
        )),
    }
}

/// Resolves `host` to socket addresses, in the resolver's order, without duplicates.
/// An IP literal is used as is, without a lookup.
///
/// The lookup is `tokio::net::lookup_host` (the system resolver on the blocking
/// pool). On timeout the blocking lookup itself cannot be cancelled; it finishes in
/// the background and its result is dropped.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    limit: Duration,
) -> Result<Vec<SocketAddr>, ConnectError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let started = Instant::now();
    let addrs = with_deadline(Phase::Dns, host, limit, async {
        let found = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::new(Phase::Dns, host, ConnectErrorKind::Resolve(e)))?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Ok(addrs)
    })
    .await?;
    if addrs.is_empty() {
        return Err(ConnectError::new(
            Phase::Dns,
            host,
            ConnectErrorKind::NoAddresses,
        ));
    }
    tracing::debug!(host, ?addrs, elapsed = ?started.elapsed(), "dns resolved");
    Ok(addrs)
}

/// Connects to the first of `addrs` that accepts, in order, with TCP_NODELAY on.
/// `authority` (`host:port`) and `host_is_ip` only shape error messages.
pub(crate) async fn connect_tcp(
    authority: &str,
    host_is_ip: bool,
    addrs: &[SocketAddr],
    limit: Duration,
) -> Result<TcpStream, ConnectError> {
    let started = Instant::now();
    // The label names the target in an error only: built then, not per connect.
    let label = || tcp_label(authority, host_is_ip, addrs);
    let (stream, addr) = connect_each(label, addrs, limit, TcpStream::connect).await?;
    stream
        .set_nodelay(true)
        .map_err(|e| ConnectError::new(Phase::Tcp, addr.to_string(), ConnectErrorKind::Io(e)))?;
    tracing::debug!(%addr, elapsed = ?started.elapsed(), "tcp connected");
    Ok(stream)
}

/// The shortest time one address gets while later addresses are still waiting, so a
/// black-holed first address cannot starve the rest (Go's `net.Dialer` uses the same
/// floor). The last address always gets all the time that is left.
const MIN_ATTEMPT: Duration = Duration::from_secs(2);

/// Tries `connect` on each address in order until one succeeds, all within `limit`.
///
/// Each attempt gets an equal share of the remaining time (at least [`MIN_ATTEMPT`],
/// never more than what remains), so one address that never answers does not use up
/// the whole deadline. If the deadline runs out the error is
/// [`ConnectErrorKind::Timeout`]`(limit)`; otherwise it is the last address's error.
/// `label` names the target in that error (called only then).
async fn connect_each<T, F, Fut>(
    label: impl FnOnce() -> String,
    addrs: &[SocketAddr],
    limit: Duration,
    mut connect: F,
) -> Result<(T, SocketAddr), ConnectError>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error: Option<io::Error> = None;
    for (i, &addr) in addrs.iter().enumerate() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            last_error = None;
            break;
        }
        let left = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        let attempt = if left == 1 {
            remaining
        } else {
            (remaining / left).max(MIN_ATTEMPT.min(remaining))
        };
        match tokio::time::timeout(attempt, connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "tcp connect attempt failed");
                last_error = Some(e);
            }
            Err(_elapsed) => {
                tracing::debug!(%addr, ?attempt, "tcp connect attempt timed out");
                last_error = None;
            }
        }
    }
    // `last_error` is `None` when the deadline ran out (the last attempt timed out,
    // or no time was left for the next address).
    let kind = match last_error {
        _ if addrs.is_empty() => ConnectErrorKind::NoAddresses,
        Some(e) => ConnectErrorKind::Io(e),
        None => ConnectErrorKind::Timeout(limit),
    };
    Err(ConnectError::new(Phase::Tcp, label(), kind))
}

/// How TCP errors name their target: the address itself for an IP literal
/// (`127.0.0.1:9`), otherwise `host:port` with the addresses tried
/// (`localhost:9 (127.0.0.1:9)`).
fn tcp_label(authority: &str, host_is_ip: bool, addrs: &[SocketAddr]) -> String {
    const SHOWN: usize = 4;
    match addrs {
        [only] if host_is_ip => only.to_string(),
        _ => {
            let mut label = format!("{authority} (");
            for (i, addr) in addrs.iter().take(SHOWN).enumerate() {
                if i > 0 {
                    label.push_str(", ");
                }
                label.push_str(&addr.to_string());
            }
            if addrs.len() > SHOWN {
                label.push_str(&format!(", +{} more", addrs.len() - SHOWN));
            }
            label.push(')');
            label
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn with_deadline_times_out_a_pending_future() {
        let started = Instant::now();
        let e = with_deadline(
            Phase::Tcp,
            "127.0.0.1:1",
            Duration::from_secs(10),
            pending::<Result<(), ConnectError>>(),
        )
        .await
        .unwrap_err();
        assert!(e.is_timeout());
        assert_eq!(e.phase(), Phase::Tcp);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(
            e.to_string(),
            "tcp connect to 127.0.0.1:1 timed out after 10s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_deadline_passes_results_through() {
        let ok = with_deadline(Phase::Dns, "h", Duration::from_secs(1), async {
            Ok::<_, ConnectError>(7)
        })
        .await
        .unwrap();
        assert_eq!(ok, 7);
    }

    #[tokio::test]
    async fn ip_literal_skips_dns() {
        let addrs = resolve("::1", 9001, Duration::from_secs(1)).await.unwrap();
        assert_eq!(addrs, vec![addr("[::1]:9001")]);
        let addrs = resolve("127.0.0.1", 80, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(addrs, vec![addr("127.0.0.1:80")]);
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let addrs = resolve("localhost", 80, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_address_gets_only_its_share() {
        let addrs = [addr("[::1]:1"), addr("127.0.0.1:1")];
        let started = Instant::now();
        let (value, used) = connect_each(
            || "h:1".into(),
            &addrs,
            Duration::from_secs(10),
            |a| async move {
                if a.is_ipv6() {
                    pending::<io::Result<u32>>().await
                } else {
                    Ok(42)
                }
            },
        )
        .await
        .unwrap();
        assert_eq!((value, used), (42, addrs[1]));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn share_has_a_floor() {
        // 10 addresses in 10s would be 1s each; the floor is 2s, so 5 silent
        // attempts use the whole deadline and the good last address is never tried.
        let addrs: Vec<SocketAddr> = (1..=10).map(|p| addr(&format!("127.0.0.1:{p}"))).collect();
        let last = addrs[9];
        let tried = std::cell::Cell::new(0);
        let started = Instant::now();
        let e = connect_each(
            || "h:1".into(),
            &addrs,
            Duration::from_secs(10),
            |a| {
                tried.set(tried.get() + 1);
                async move {
                    if a == last {
                        Ok(())
                    } else {
                        pending::<io::Result<()>>().await
                    }
                }
            },
        )
        .await
        .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(tried.get(), 5);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn all_silent_is_a_timeout_for_the_whole_deadline() {
        let addrs = [addr("[::1]:1"), addr("127.0.0.1:1")];
        let e = connect_each(
            || "h:1 ([::1]:1, 127.0.0.1:1)".into(),
            &addrs,
            Duration::from_secs(10),
            |_| pending::<io::Result<()>>(),
        )
        .await
        .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(
            e.to_string(),
            "tcp connect to h:1 ([::1]:1, 127.0.0.1:1) timed out after 10s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn all_refused_reports_the_last_error() {
        let addrs = [addr("[::1]:1"), addr("127.0.0.1:1")];
        let e = connect_each(
            || "h:1".into(),
            &addrs,
            Duration::from_secs(10),
            |a| async move {
                Err::<(), _>(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    a.to_string(),
                ))
            },
        )
        .await
        .unwrap_err();
        match e.kind() {
            ConnectErrorKind::Io(io) => {
                assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
                assert_eq!(io.to_string(), "127.0.0.1:1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tcp_labels() {
        let one = [addr("127.0.0.1:9")];
        assert_eq!(tcp_label("127.0.0.1:9", true, &one), "127.0.0.1:9");
        assert_eq!(
            tcp_label("localhost:9", false, &one),
            "localhost:9 (127.0.0.1:9)"
        );
        let many: Vec<SocketAddr> = (1..=6).map(|p| addr(&format!("127.0.0.{p}:9"))).collect();
        assert_eq!(
            tcp_label("h:9", false, &many),
            "h:9 (127.0.0.1:9, 127.0.0.2:9, 127.0.0.3:9, 127.0.0.4:9, +2 more)"
        );
    }
}
