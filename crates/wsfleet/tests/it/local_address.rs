//! Source address selection on loopback: each slot connects from its own
//! address of `127.0.0.2-127.0.0.5` (all of 127/8 is this host's on Linux)
//! and keeps it across reconnects; an address the host does not have fails
//! the connect with a typed error naming it, backed off like any failure.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use wsfleet::connect::{ConnectErrorKind, LocalAddresses, Phase};
use wsfleet::fleet::{Backoff, DisconnectReason, EventKind, Events, Fleet, SlotId};
use wsfleet::serve::EchoServer;
use wsfleet::{Connection, ConnectionConfig};
use wsfleet_testkit::{Mode, RustServer, bounded};

/// The client address the server reported in its first message (the
/// headers mode's `":peer"`), for each slot that connected, until `slots`
/// have; each connection counted once.
async fn peers(events: &mut Events, slots: usize) -> HashMap<SlotId, SocketAddr> {
    let mut seen = HashMap::new();
    bounded("every slot reports its peer", async {
        while seen.len() < slots {
            let event = events.recv().await.expect("event");
            if let EventKind::Message(m) = event.kind {
                let headers: serde_json::Value =
                    serde_json::from_str(m.as_text().expect("text")).expect("json");
                let peer = headers[":peer"].as_str().expect(":peer").parse().unwrap();
                assert!(
                    seen.insert(event.slot, peer).is_none(),
                    "{} twice",
                    event.slot
                );
            }
        }
    })
    .await;
    seen
}

/// Address `2 + slot % 4` of 127.0.0.0/8.
fn expected(slot: SlotId) -> IpAddr {
    format!("127.0.0.{}", 2 + slot.0 % 4).parse().unwrap()
}

#[tokio::test]
async fn each_slot_connects_from_its_address_and_keeps_it() {
    let server = RustServer::start(Mode::Headers).await.expect("server");
    let local: LocalAddresses = "127.0.0.2-127.0.0.5".parse().unwrap();
    let mut fleet = Fleet::builder(server.url())
        .connections(12)
        .connect_rate(1000.0)
        .connection_config(crate::config())
        .local_addresses(local)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let first = peers(&mut events, 12).await;
    for (slot, peer) in &first {
        assert_eq!(peer.ip(), expected(*slot), "{slot}");
    }
    let per_address = first.values().fold(HashMap::new(), |mut n, p| {
        *n.entry(p.ip()).or_insert(0) += 1;
        n
    });
    assert_eq!(per_address.len(), 4, "{per_address:?}");
    assert!(per_address.values().all(|&n| n == 3), "{per_address:?}");

    // Dropped, every slot reconnects: a new connection, the same address.
    let control = fleet.control();
    for slot in first.keys() {
        control.drop_slot(*slot).expect("drop");
    }
    let again = peers(&mut events, 12).await;
    for (slot, peer) in &again {
        assert_eq!(peer.ip(), expected(*slot), "{slot} after its reconnect");
        assert_ne!(peer, &first[slot], "{slot}: a new connection");
    }
    assert!(server.errors().is_empty(), "{:?}", server.errors());
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_bare_connection_binds_its_address() {
    let server = RustServer::start(Mode::Headers).await.expect("server");
    let config = crate::config().local_addresses("127.0.0.7".parse().unwrap());
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config))
        .await
        .expect("connect");
    let first = bounded("recv", conn.recv())
        .await
        .expect("ended")
        .expect("recv");
    let headers: serde_json::Value =
        serde_json::from_str(first.as_text().expect("text")).expect("json");
    let peer: SocketAddr = headers[":peer"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.7");
}

/// TEST-NET-2 (RFC 5737): assigned to no host, so binding to it fails with
/// EADDRNOTAVAIL before anything is sent (and the destination is loopback).
const NOT_HERE: &str = "198.51.100.7";

#[tokio::test]
async fn an_address_not_of_this_host_is_a_typed_connect_failure_backed_off() {
    let server = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind");
    let mut fleet = Fleet::builder(server.url())
        .connections(1)
        .connection_config(crate::config())
        .local_addresses(NOT_HERE.parse().unwrap())
        .backoff(Backoff::new(Duration::from_millis(50), Duration::from_millis(200)).unwrap())
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut failures = 0;
    let watched = Duration::from_secs(1);
    let _ = tokio::time::timeout(watched, async {
        while let Some(event) = events.recv().await {
            match event.kind {
                EventKind::Disconnected(DisconnectReason::ConnectFailed {
                    phase, error, ..
                }) => {
                    assert_eq!(phase, Phase::Tcp);
                    assert!(
                        matches!(
                            error.kind(),
                            ConnectErrorKind::LocalAddressNotAvailable { local }
                                if local.to_string() == NOT_HERE
                        ),
                        "{error:?}"
                    );
                    assert_eq!(
                        error.to_string(),
                        format!(
                            "tcp connect to {} failed: local address {NOT_HERE} is not an \
                             address of this host",
                            server.local_addr()
                        )
                    );
                    failures += 1;
                }
                EventKind::Connected { .. } => panic!("connected from {NOT_HERE}"),
                _ => {}
            }
        }
    })
    .await;
    // Failing at once, without backoff it would retry thousands of times a
    // second; with a 50-200 ms backoff it is a handful.
    assert!(
        (1..=30).contains(&failures),
        "{failures} failed attempts in {watched:?}"
    );
    let stats = fleet.stats();
    assert_eq!(stats.ready, 0);
    let error = stats.connections[0].last_error.clone().unwrap_or_default();
    assert!(error.contains(NOT_HERE), "{error}");
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_destination_of_another_family_is_not_dialled_without_a_source() {
    let server = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind");
    let config = ConnectionConfig::default().local_addresses("::1".parse().unwrap());
    let e = bounded("connect", Connection::connect(&server.url(), &config))
        .await
        .unwrap_err();
    assert_eq!(e.phase(), Phase::Tcp);
    assert!(
        matches!(e.kind(), ConnectErrorKind::NoLocalAddressOfFamily { remote } if *remote == server.local_addr()),
        "{e:?}"
    );
    assert!(e.to_string().contains("IPv4 destination"), "{e}");
}
