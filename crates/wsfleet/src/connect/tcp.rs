//! DNS resolution and TCP connect, each bounded by its deadline.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::error::{ConnectError, ConnectErrorKind, Phase};
use super::local::LocalAddresses;
use super::timer::PhaseTimer;

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
/// An IP literal is used as is, without a lookup: `literal` is `host` parsed
/// as one (by the caller, which needs it too).
///
/// The lookup is `tokio::net::lookup_host` (the system resolver on the blocking
/// pool). On timeout the blocking lookup itself cannot be cancelled; it finishes in
/// the background and its result is dropped.
pub(crate) async fn resolve(
    host: &str,
    literal: Option<IpAddr>,
    port: u16,
    limit: Duration,
) -> Result<Vec<SocketAddr>, ConnectError> {
    if let Some(ip) = literal {
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

/// Connects to the first of `addrs` that accepts, in order, with TCP_NODELAY on,
/// each from the source address `local` picks for it (see [`LocalPick`]).
/// `authority` (`host:port`) and `host_is_ip` only shape error messages;
/// `timer` bounds each attempt.
pub(crate) async fn connect_tcp(
    authority: &str,
    host_is_ip: bool,
    addrs: &[SocketAddr],
    limit: Duration,
    local: LocalPick<'_>,
    timer: &mut PhaseTimer<'_>,
) -> Result<TcpStream, ConnectError> {
    let started = Instant::now();
    // The label names the target in an error only: built then, not per connect.
    let label = || tcp_label(authority, host_is_ip, addrs);
    let dial = |remote| dial(remote, local.source_for(remote));
    let (stream, addr) = connect_each(label, addrs, limit, timer, dial).await?;
    stream
        .set_nodelay(true)
        .map_err(|e| ConnectError::new(Phase::Tcp, addr.to_string(), ConnectErrorKind::Io(e)))?;
    tracing::debug!(%addr, elapsed = ?started.elapsed(), "tcp connected");
    Ok(stream)
}

/// Which source address a connection binds to: none configured (the system
/// chooses), or one of [`LocalAddresses`], the slot's if it has one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LocalPick<'a> {
    /// The configured addresses, if any.
    pub(crate) addresses: Option<&'a LocalAddresses>,
    /// The fleet slot; `None` takes the addresses in turn.
    pub(crate) slot: Option<usize>,
}

impl LocalPick<'_> {
    /// The address to bind to for `remote`; `None` lets the system choose.
    fn source_for(&self, remote: SocketAddr) -> Option<IpAddr> {
        self.addresses?.choose(self.slot, remote)
    }

    /// Drops the destinations no configured source address can reach (of a
    /// family with none), keeping the order.
    ///
    /// # Errors
    /// [`ConnectErrorKind::NoLocalAddressOfFamily`] when none is left.
    pub(crate) fn keep_reachable(
        &self,
        label: &str,
        addrs: &mut Vec<SocketAddr>,
    ) -> Result<(), ConnectError> {
        let (Some(local), Some(&first)) = (self.addresses, addrs.first()) else {
            return Ok(());
        };
        addrs.retain(|a| local.has_family_of(*a));
        if addrs.is_empty() {
            return Err(ConnectError::new(
                Phase::Tcp,
                label,
                ConnectErrorKind::NoLocalAddressOfFamily { remote: first },
            ));
        }
        Ok(())
    }
}

/// Opens one TCP connection to `remote`, bound to `local` first if given
/// (port 0: the kernel picks the source port).
async fn dial(remote: SocketAddr, local: Option<IpAddr>) -> Result<TcpStream, ConnectErrorKind> {
    let Some(local) = local else {
        return TcpStream::connect(remote)
            .await
            .map_err(|e| socket_error(Step::Connect, e, None, remote));
    };
    let socket = if remote.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ConnectErrorKind::Io)?;
    socket
        .bind(SocketAddr::new(local, 0))
        .map_err(|e| socket_error(Step::Bind, e, Some(local), remote))?;
    socket
        .connect(remote)
        .await
        .map_err(|e| socket_error(Step::Connect, e, Some(local), remote))
}

/// The socket call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Bind,
    Connect,
}

/// What a failed bind or connect means. `EADDRNOTAVAIL` at bind: `local` is
/// not this host's. Otherwise `EADDRNOTAVAIL` or `EADDRINUSE`: no source
/// port is left (bind with port 0 finds none free, or connect finds no
/// free (source port, destination) pair). Anything else is an I/O error.
fn socket_error(
    step: Step,
    e: io::Error,
    local: Option<IpAddr>,
    remote: SocketAddr,
) -> ConnectErrorKind {
    match (e.kind(), step, local) {
        (io::ErrorKind::AddrNotAvailable, Step::Bind, Some(local)) => {
            ConnectErrorKind::LocalAddressNotAvailable { local }
        }
        (io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse, _, _) => {
            ConnectErrorKind::SourcePortsExhausted { local, remote }
        }
        _ => ConnectErrorKind::Io(e),
    }
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
/// `label` names the target in that error (called only then); `timer`
/// bounds each attempt.
async fn connect_each<T, F, Fut>(
    label: impl FnOnce() -> String,
    addrs: &[SocketAddr],
    limit: Duration,
    timer: &mut PhaseTimer<'_>,
    mut connect: F,
) -> Result<(T, SocketAddr), ConnectError>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, ConnectErrorKind>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error: Option<ConnectErrorKind> = None;
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
        match timer.within(attempt, connect(addr)).await {
            Some(Ok(stream)) => return Ok((stream, addr)),
            Some(Err(e)) => {
                tracing::debug!(%addr, error = ?e, "tcp connect attempt failed");
                last_error = Some(e);
            }
            None => {
                tracing::debug!(%addr, ?attempt, "tcp connect attempt timed out");
                last_error = None;
            }
        }
    }
    // `last_error` is `None` when the deadline ran out (the last attempt timed out,
    // or no time was left for the next address).
    let kind = match last_error {
        _ if addrs.is_empty() => ConnectErrorKind::NoAddresses,
        Some(kind) => kind,
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
    use std::pin::pin;

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
        let addrs = resolve("::1", "::1".parse().ok(), 9001, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(addrs, vec![addr("[::1]:9001")]);
        let addrs = resolve(
            "127.0.0.1",
            "127.0.0.1".parse().ok(),
            80,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(addrs, vec![addr("127.0.0.1:80")]);
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let addrs = resolve("localhost", None, 80, Duration::from_secs(5))
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
            &mut PhaseTimer::new(pin!(tokio::time::sleep(Duration::ZERO))),
            |a| async move {
                if a.is_ipv6() {
                    pending::<Result<u32, ConnectErrorKind>>().await
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
            &mut PhaseTimer::new(pin!(tokio::time::sleep(Duration::ZERO))),
            |a| {
                tried.set(tried.get() + 1);
                async move {
                    if a == last {
                        Ok(())
                    } else {
                        pending::<Result<(), ConnectErrorKind>>().await
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
            &mut PhaseTimer::new(pin!(tokio::time::sleep(Duration::ZERO))),
            |_| pending::<Result<(), ConnectErrorKind>>(),
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
            &mut PhaseTimer::new(pin!(tokio::time::sleep(Duration::ZERO))),
            |a| async move {
                Err::<(), _>(ConnectErrorKind::Io(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    a.to_string(),
                )))
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
    fn socket_errors_name_what_ran_out() {
        let remote = addr("127.0.0.1:9");
        let local: IpAddr = "127.0.0.2".parse().unwrap();
        let err = |kind| io::Error::from(kind);
        // A bind to an address the host does not have.
        let e = socket_error(
            Step::Bind,
            err(io::ErrorKind::AddrNotAvailable),
            Some(local),
            remote,
        );
        assert!(matches!(e, ConnectErrorKind::LocalAddressNotAvailable { local: l } if l == local));
        // Bind with port 0 finding no free port, or connect finding no free
        // (port, destination) pair.
        for (step, kind) in [
            (Step::Bind, io::ErrorKind::AddrInUse),
            (Step::Connect, io::ErrorKind::AddrNotAvailable),
            (Step::Connect, io::ErrorKind::AddrInUse),
        ] {
            let e = socket_error(step, err(kind), Some(local), remote);
            assert!(
                matches!(e, ConnectErrorKind::SourcePortsExhausted { local: Some(l), remote: r } if l == local && r == remote),
                "{step:?} {kind:?}: {e:?}"
            );
        }
        // Without a bound address, the system's ran out.
        let e = socket_error(
            Step::Connect,
            err(io::ErrorKind::AddrNotAvailable),
            None,
            remote,
        );
        assert!(matches!(
            e,
            ConnectErrorKind::SourcePortsExhausted { local: None, .. }
        ));
        // Anything else stays an I/O error.
        let e = socket_error(
            Step::Connect,
            err(io::ErrorKind::ConnectionRefused),
            Some(local),
            remote,
        );
        assert!(
            matches!(e, ConnectErrorKind::Io(ref io) if io.kind() == io::ErrorKind::ConnectionRefused)
        );
    }

    #[test]
    fn exhausted_ports_say_what_to_do() {
        let remote = addr("127.0.0.1:9");
        let e = ConnectError::new(
            Phase::Tcp,
            "127.0.0.1:9",
            ConnectErrorKind::SourcePortsExhausted {
                local: Some("127.0.0.2".parse().unwrap()),
                remote,
            },
        );
        assert_eq!(
            e.to_string(),
            "tcp connect to 127.0.0.1:9 failed: no source port left from 127.0.0.2 to \
             127.0.0.1:9 (about 28,000 per source address); add \
             addresses with --local-address"
        );
        let e = ConnectError::new(
            Phase::Tcp,
            "127.0.0.1:9",
            ConnectErrorKind::SourcePortsExhausted {
                local: None,
                remote,
            },
        );
        assert!(
            e.to_string()
                .contains("from this host's default source address to 127.0.0.1:9"),
            "{e}"
        );
    }

    #[test]
    fn destinations_without_a_source_of_their_family_are_left_out() {
        let only4: LocalAddresses = "127.0.0.2".parse().unwrap();
        let pick = LocalPick {
            addresses: Some(&only4),
            slot: Some(0),
        };
        let mut addrs = vec![addr("[::1]:9"), addr("127.0.0.1:9"), addr("[::2]:9")];
        pick.keep_reachable("localhost:9", &mut addrs).unwrap();
        assert_eq!(addrs, [addr("127.0.0.1:9")]);

        let mut addrs = vec![addr("[::1]:9")];
        let e = pick.keep_reachable("localhost:9", &mut addrs).unwrap_err();
        assert!(
            matches!(e.kind(), ConnectErrorKind::NoLocalAddressOfFamily { .. }),
            "{e:?}"
        );
        assert_eq!(e.phase(), Phase::Tcp);
        assert_eq!(
            e.to_string(),
            "tcp connect to localhost:9 failed: no local address is configured for an IPv6 \
             destination ([::1]:9)"
        );

        // Without local addresses every destination stays.
        let mut addrs = vec![addr("[::1]:9"), addr("127.0.0.1:9")];
        LocalPick::default()
            .keep_reachable("localhost:9", &mut addrs)
            .unwrap();
        assert_eq!(addrs.len(), 2);
    }

    #[tokio::test]
    async fn a_bound_connection_comes_from_its_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let remote = listener.local_addr().unwrap();
        let remotes = [remote];
        let local: LocalAddresses = "127.0.0.2-127.0.0.3".parse().unwrap();
        for slot in 0..4 {
            let pick = LocalPick {
                addresses: Some(&local),
                slot: Some(slot),
            };
            let sleep = pin!(tokio::time::sleep(Duration::ZERO));
            let mut timer = PhaseTimer::new(sleep);
            let (stream, accepted) = tokio::join!(
                connect_tcp(
                    "127.0.0.1",
                    true,
                    &remotes,
                    Duration::from_secs(5),
                    pick,
                    &mut timer
                ),
                listener.accept()
            );
            let stream = stream.unwrap();
            let (_, peer) = accepted.unwrap();
            let want: IpAddr = format!("127.0.0.{}", 2 + slot % 2).parse().unwrap();
            assert_eq!(stream.local_addr().unwrap().ip(), want);
            assert_eq!(peer.ip(), want);
            assert!(stream.nodelay().unwrap());
        }
    }

    #[tokio::test]
    async fn an_address_not_of_this_host_is_named() {
        // TEST-NET-2 (RFC 5737): never assigned, so the bind fails and
        // nothing is sent (the destination is loopback in any case).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let remote = listener.local_addr().unwrap();
        let local: LocalAddresses = "198.51.100.7".parse().unwrap();
        let pick = LocalPick {
            addresses: Some(&local),
            slot: Some(0),
        };
        let e = connect_tcp(
            "127.0.0.1",
            true,
            &[remote],
            Duration::from_secs(5),
            pick,
            &mut PhaseTimer::new(pin!(tokio::time::sleep(Duration::ZERO))),
        )
        .await
        .unwrap_err();
        assert_eq!(e.phase(), Phase::Tcp);
        assert!(
            matches!(e.kind(), ConnectErrorKind::LocalAddressNotAvailable { local } if local.to_string() == "198.51.100.7"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "tcp connect to {remote} failed: local address 198.51.100.7 is not an address \
                 of this host"
            )
        );
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
