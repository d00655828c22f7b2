//! [`LocalAddresses`]: the source addresses connections are bound to, so a
//! fleet can hold more connections to one `host:port` than one source
//! address has ports.
//!
//! A TCP connection is named by (source address, source port, destination
//! address, destination port). With one source address, connections to one
//! destination differ only by their source port, taken from the kernel's
//! ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999 on Linux by
//! default: about 28,000 ports). Each further source address brings another
//! range. A connection binds to its chosen address (port 0: the kernel picks
//! the port) before it connects.
//!
//! Which address a connection uses is decided without I/O here
//! ([`LocalAddresses::for_slot`]); the dial is in `tcp.rs`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most addresses one [`LocalAddresses`] holds: 65,536 (an IPv4 `/16`
/// or an IPv6 `/112`), already room for millions of connections to one
/// destination. Bounds what a range or block in a configuration can make
/// the process allocate.
pub const MAX_LOCAL_ADDRESSES: usize = 65_536;

/// Source addresses to bind connections to, IPv4 and IPv6 kept apart: a
/// connection to an IPv4 destination binds one of the IPv4 addresses, to an
/// IPv6 destination one of the IPv6 addresses. A destination of a family
/// with no address here is not dialled
/// ([`ConnectErrorKind::NoLocalAddressOfFamily`](super::ConnectErrorKind::NoLocalAddressOfFamily)
/// if none is left).
///
/// Built from specs, each a single address (`127.0.0.2`, `::1`), an
/// inclusive range (`127.0.0.2-127.0.0.9`) or a block in CIDR notation
/// (`127.0.1.0/28`; for IPv4 blocks of 4 addresses or more, the network and
/// broadcast addresses are left out). Duplicates are dropped, the order is
/// kept, at most [`MAX_LOCAL_ADDRESSES`] in all; unspecified (`0.0.0.0`)
/// and multicast addresses are refused. Every address must be one of this
/// host's (on Linux all of `127.0.0.0/8` is): one that is not fails its
/// connections with
/// [`ConnectErrorKind::LocalAddressNotAvailable`](super::ConnectErrorKind::LocalAddressNotAvailable).
///
/// ```
/// use wsfleet::connect::LocalAddresses;
///
/// let addrs: LocalAddresses = "127.0.0.2-127.0.0.5, 127.0.1.0/30".parse()?;
/// assert_eq!(addrs.len(), 6);
/// // Slot i of a fleet uses address i % 6 of its destination's family.
/// let dest = "127.0.0.1:9001".parse()?;
/// assert_eq!(addrs.for_slot(7, dest), Some("127.0.0.3".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LocalAddresses {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    /// Round robin for connections that have no slot (a bare
    /// [`Connection`](crate::Connection) sharing the configuration).
    next: AtomicUsize,
}

impl LocalAddresses {
    /// Parses `specs` (see the type's documentation); each may itself be a
    /// comma-separated list.
    ///
    /// # Errors
    /// A [`LocalAddressError`] naming the spec at fault, or
    /// [`LocalAddressProblem::Empty`] when no address was given.
    pub fn parse<I, S>(specs: I) -> Result<Self, LocalAddressError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = Builder::default();
        for spec in specs {
            for item in spec.as_ref().split(',').map(str::trim) {
                if !item.is_empty() {
                    builder.add_spec(item)?;
                }
            }
        }
        builder.finish()
    }

    /// The given addresses (duplicates dropped, order kept).
    ///
    /// # Errors
    /// An unspecified or multicast address, more than
    /// [`MAX_LOCAL_ADDRESSES`], or none.
    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Result<Self, LocalAddressError> {
        let mut builder = Builder::default();
        for addr in addrs {
            builder.add(addr, &addr.to_string())?;
        }
        builder.finish()
    }

    /// How many addresses, both families together.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Always false: an empty set is refused when built (kept for the
    /// `len`/`is_empty` pair).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every address: the IPv4 ones, then the IPv6 ones, each in the order given.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.v4.iter().map(|a| IpAddr::V4(*a));
        v4.chain(self.v6.iter().map(|a| IpAddr::V6(*a)))
    }

    /// The address slot `slot` binds to for `remote`: address `slot % n`
    /// of the `n` addresses of `remote`'s family, so a slot keeps its
    /// source address across reconnects and the slots spread evenly.
    /// `None` when no address of that family is configured.
    pub fn for_slot(&self, slot: usize, remote: SocketAddr) -> Option<IpAddr> {
        match remote {
            SocketAddr::V4(_) => pick(&self.v4, slot).map(IpAddr::V4),
            SocketAddr::V6(_) => pick(&self.v6, slot).map(IpAddr::V6),
        }
    }

    /// Whether an address of `remote`'s family is configured.
    pub(crate) fn has_family_of(&self, remote: SocketAddr) -> bool {
        match remote {
            SocketAddr::V4(_) => !self.v4.is_empty(),
            SocketAddr::V6(_) => !self.v6.is_empty(),
        }
    }

    /// The address a connection to `remote` binds to: its slot's (see
    /// [`for_slot`](Self::for_slot)), or the next in turn without one.
    pub(crate) fn choose(&self, slot: Option<usize>, remote: SocketAddr) -> Option<IpAddr> {
        let slot = slot.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed));
        self.for_slot(slot, remote)
    }
}

impl Clone for LocalAddresses {
    /// The same addresses; the turn of connections without a slot starts over.
    fn clone(&self) -> Self {
        Self {
            v4: self.v4.clone(),
            v6: self.v6.clone(),
            next: AtomicUsize::new(0),
        }
    }
}

impl PartialEq for LocalAddresses {
    /// The same addresses in the same order (whose turn it is aside).
    fn eq(&self, other: &Self) -> bool {
        self.v4 == other.v4 && self.v6 == other.v6
    }
}

impl Eq for LocalAddresses {}

/// `list[i % len]`, `None` for an empty list.
fn pick<T: Copy>(list: &[T], i: usize) -> Option<T> {
    (!list.is_empty()).then(|| list[i % list.len()])
}

impl FromStr for LocalAddresses {
    type Err = LocalAddressError;

    /// A comma-separated list of specs (see [`LocalAddresses::parse`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse([s])
    }
}

/// Collects addresses, dropping duplicates, within the bound.
#[derive(Default)]
struct Builder {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    seen: HashSet<IpAddr>,
}

impl Builder {
    fn count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Adds one spec: an address, a range or a block.
    fn add_spec(&mut self, spec: &str) -> Result<(), LocalAddressError> {
        let fail = |problem| Err(LocalAddressError::new(spec, problem));
        let (first, last) = if let Some((a, b)) = spec.split_once('-') {
            let (Ok(a), Ok(b)) = (parse_ip(a), parse_ip(b)) else {
                return fail(LocalAddressProblem::NotAnAddress);
            };
            (a, b)
        } else if let Some((network, prefix)) = spec.split_once('/') {
            let Ok(network) = parse_ip(network) else {
                return fail(LocalAddressProblem::NotAnAddress);
            };
            match block(network, prefix.trim()) {
                Ok(range) => range,
                Err(problem) => return fail(problem),
            }
        } else {
            let Ok(addr) = parse_ip(spec) else {
                return fail(LocalAddressProblem::NotAnAddress);
            };
            (addr, addr)
        };
        let (start, end) = match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
            _ => return fail(LocalAddressProblem::MixedFamilies),
        };
        if end < start {
            return fail(LocalAddressProblem::Reversed);
        }
        // Checked before anything is added: a huge range costs nothing.
        // (Duplicates do not count: `add` checks the exact total.)
        if end - start >= MAX_LOCAL_ADDRESSES as u128 {
            return fail(LocalAddressProblem::TooMany {
                limit: MAX_LOCAL_ADDRESSES,
            });
        }
        for n in start..=end {
            self.add(numbered(n, first.is_ipv4()), spec)?;
        }
        Ok(())
    }

    /// Adds one address; `spec` names it in an error.
    fn add(&mut self, addr: IpAddr, spec: &str) -> Result<(), LocalAddressError> {
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(LocalAddressError::new(spec, LocalAddressProblem::Unusable));
        }
        if !self.seen.insert(addr) {
            return Ok(());
        }
        if self.count() == MAX_LOCAL_ADDRESSES {
            return Err(LocalAddressError::new(
                spec,
                LocalAddressProblem::TooMany {
                    limit: MAX_LOCAL_ADDRESSES,
                },
            ));
        }
        match addr {
            IpAddr::V4(a) => self.v4.push(a),
            IpAddr::V6(a) => self.v6.push(a),
        }
        Ok(())
    }

    fn finish(self) -> Result<LocalAddresses, LocalAddressError> {
        if self.count() == 0 {
            return Err(LocalAddressError::new("", LocalAddressProblem::Empty));
        }
        Ok(LocalAddresses {
            v4: self.v4,
            v6: self.v6,
            next: AtomicUsize::new(0),
        })
    }
}

/// An address, `[::1]` brackets allowed.
fn parse_ip(s: &str) -> Result<IpAddr, std::net::AddrParseError> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse()
}

/// The first and last address of the block `network/prefix` to use: all of
/// it, but for IPv4 blocks of 4 addresses or more without the network and
/// broadcast addresses.
fn block(network: IpAddr, prefix: &str) -> Result<(IpAddr, IpAddr), LocalAddressProblem> {
    let bits: u32 = if network.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix.parse::<u8>() {
        Ok(p) if u32::from(p) <= bits => u32::from(p),
        _ => return Err(LocalAddressProblem::BadPrefix { max: bits as u8 }),
    };
    let host_bits = bits - prefix;
    // 2^17 addresses are more than any set may hold; stop before the
    // arithmetic gets large.
    if host_bits > 16 {
        return Err(LocalAddressProblem::TooMany {
            limit: MAX_LOCAL_ADDRESSES,
        });
    }
    let size = 1u128 << host_bits;
    let start = match network {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let v4 = bits == 32;
    if start % size != 0 {
        return Err(LocalAddressProblem::HostBitsSet {
            network: numbered(start - start % size, v4),
            prefix: prefix as u8,
        });
    }
    let (mut first, mut last) = (start, start + size - 1);
    if v4 && host_bits >= 2 {
        first += 1;
        last -= 1;
    }
    Ok((numbered(first, v4), numbered(last, v4)))
}

/// The address numbered `n` of its family.
fn numbered(n: u128, v4: bool) -> IpAddr {
    if v4 {
        // Callers pass numbers of IPv4 addresses (at most 32 bits).
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// A spec of [`LocalAddresses`] that cannot be used: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddressError {
    value: String,
    problem: LocalAddressProblem,
}

impl LocalAddressError {
    fn new(value: &str, problem: LocalAddressProblem) -> Self {
        Self {
            value: value.to_owned(),
            problem,
        }
    }

    /// The spec as given (empty for [`LocalAddressProblem::Empty`]).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &LocalAddressProblem {
        &self.problem
    }
}

/// What is wrong with a spec of [`LocalAddresses`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalAddressProblem {
    /// Not an address, a range `A-B` or a block `A/N`.
    NotAnAddress,
    /// A range from an IPv4 to an IPv6 address or back.
    MixedFamilies,
    /// A range whose end is before its start.
    Reversed,
    /// A block's prefix length is not a number from 0 to `max`.
    BadPrefix {
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// A block's address has bits set past its prefix.
    HostBitsSet {
        /// The block's network address, what was likely meant.
        network: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
    /// More than `limit` addresses in all.
    TooMany {
        /// [`MAX_LOCAL_ADDRESSES`].
        limit: usize,
    },
    /// The unspecified address (`0.0.0.0`, `::`) or a multicast one: no
    /// connection can come from it.
    Unusable,
    /// No address was given at all.
    Empty,
}

impl fmt::Display for LocalAddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problem == LocalAddressProblem::Empty {
            return f.write_str("local addresses: none given");
        }
        write!(f, "local address {:?}: ", self.value)?;
        match &self.problem {
            LocalAddressProblem::NotAnAddress => f.write_str(
                "not an IP address, a range (127.0.0.2-127.0.0.9) or a block (127.0.1.0/28)",
            ),
            LocalAddressProblem::MixedFamilies => {
                f.write_str("a range must be all IPv4 or all IPv6")
            }
            LocalAddressProblem::Reversed => f.write_str("the range ends before it starts"),
            LocalAddressProblem::BadPrefix { max } => {
                write!(f, "the prefix length must be a number from 0 to {max}")
            }
            LocalAddressProblem::HostBitsSet { network, prefix } => {
                write!(
                    f,
                    "bits are set past the prefix; the block is {network}/{prefix}"
                )
            }
            LocalAddressProblem::TooMany { limit } => {
                write!(f, "more than {limit} local addresses in all")
            }
            LocalAddressProblem::Unusable => {
                f.write_str("an unspecified or multicast address cannot be a source")
            }
            LocalAddressProblem::Empty => Ok(()),
        }
    }
}

impl std::error::Error for LocalAddressError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(addrs: &LocalAddresses) -> Vec<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    fn problem(specs: &[&str]) -> LocalAddressError {
        LocalAddresses::parse(specs).unwrap_err()
    }

    fn v4(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 9)
    }

    #[test]
    fn single_addresses_and_lists() {
        let a = LocalAddresses::parse(["127.0.0.2", "127.0.0.3, ::1", " [::2] "]).unwrap();
        assert_eq!(ips(&a), ["127.0.0.2", "127.0.0.3", "::1", "::2"]);
        assert_eq!(a.len(), 4);
        assert!(!a.is_empty());
        let b: LocalAddresses = "10.0.0.1,10.0.0.2,".parse().unwrap();
        assert_eq!(ips(&b), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn ranges_are_inclusive() {
        let a: LocalAddresses = "127.0.0.2-127.0.0.5".parse().unwrap();
        assert_eq!(
            ips(&a),
            ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        );
        // Across an octet boundary, and a range of one.
        let a: LocalAddresses = "10.0.0.254 - 10.0.1.1, 10.9.9.9-10.9.9.9".parse().unwrap();
        assert_eq!(
            ips(&a),
            [
                "10.0.0.254",
                "10.0.0.255",
                "10.0.1.0",
                "10.0.1.1",
                "10.9.9.9"
            ]
        );
        let a: LocalAddresses = "fd00::ffff-fd00::1:1".parse().unwrap();
        assert_eq!(ips(&a), ["fd00::ffff", "fd00::1:0", "fd00::1:1"]);
    }

    #[test]
    fn blocks_leave_out_ipv4_network_and_broadcast() {
        let a: LocalAddresses = "127.0.1.0/28".parse().unwrap();
        assert_eq!(a.len(), 14);
        assert_eq!(a.iter().next().unwrap().to_string(), "127.0.1.1");
        assert_eq!(a.iter().last().unwrap().to_string(), "127.0.1.14");
        let a: LocalAddresses = "127.0.1.0/31, 127.0.2.7/32".parse().unwrap();
        assert_eq!(ips(&a), ["127.0.1.0", "127.0.1.1", "127.0.2.7"]);
        let a: LocalAddresses = "fd00::/126".parse().unwrap();
        assert_eq!(ips(&a), ["fd00::", "fd00::1", "fd00::2", "fd00::3"]);
        // A /16 less its two ends fits the bound.
        let a: LocalAddresses = "10.1.0.0/16".parse().unwrap();
        assert_eq!(a.len(), 65_534);
    }

    #[test]
    fn duplicates_are_dropped_in_order() {
        let a: LocalAddresses = "127.0.0.3, 127.0.0.2-127.0.0.4, 127.0.0.3".parse().unwrap();
        assert_eq!(ips(&a), ["127.0.0.3", "127.0.0.2", "127.0.0.4"]);
        let a = LocalAddresses::from_addrs(["::1".parse().unwrap(), "::1".parse().unwrap()]);
        assert_eq!(a.unwrap().len(), 1);
    }

    #[test]
    fn the_bound_holds_before_anything_is_made() {
        let e = problem(&["10.0.0.0-10.255.255.255"]);
        assert_eq!(e.value(), "10.0.0.0-10.255.255.255");
        assert_eq!(
            e.problem(),
            &LocalAddressProblem::TooMany {
                limit: MAX_LOCAL_ADDRESSES
            }
        );
        // The whole IPv6 space: refused at once, not counted.
        assert!(matches!(
            problem(&["::1-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]).problem(),
            LocalAddressProblem::TooMany { .. }
        ));
        assert!(matches!(
            problem(&["fd00::/64"]).problem(),
            LocalAddressProblem::TooMany { .. }
        ));
        // Exactly the bound is fine; one more, in a later spec, is not.
        let full = "fd00::-fd00::ffff";
        assert_eq!(
            LocalAddresses::parse([full]).unwrap().len(),
            MAX_LOCAL_ADDRESSES
        );
        let e = problem(&[full, "127.0.0.2"]);
        assert_eq!(e.value(), "127.0.0.2");
        assert!(matches!(e.problem(), LocalAddressProblem::TooMany { .. }));
        // Duplicates do not count against it.
        assert!(LocalAddresses::parse([full, "fd00::7"]).is_ok());
    }

    #[test]
    fn errors_name_the_value() {
        let cases: [(&str, LocalAddressProblem, &str); 9] = [
            (
                "localhost",
                LocalAddressProblem::NotAnAddress,
                "local address \"localhost\": not an IP address, a range (127.0.0.2-127.0.0.9) or a block (127.0.1.0/28)",
            ),
            (
                "127.0.0.2-x",
                LocalAddressProblem::NotAnAddress,
                "not an IP",
            ),
            (
                "300.0.0.1/24",
                LocalAddressProblem::NotAnAddress,
                "not an IP",
            ),
            (
                "127.0.0.2-::1",
                LocalAddressProblem::MixedFamilies,
                "all IPv4 or all IPv6",
            ),
            (
                "127.0.0.9-127.0.0.2",
                LocalAddressProblem::Reversed,
                "local address \"127.0.0.9-127.0.0.2\": the range ends before it starts",
            ),
            (
                "127.0.0.0/33",
                LocalAddressProblem::BadPrefix { max: 32 },
                "from 0 to 32",
            ),
            (
                "::/x",
                LocalAddressProblem::BadPrefix { max: 128 },
                "from 0 to 128",
            ),
            (
                "127.0.1.5/28",
                LocalAddressProblem::HostBitsSet {
                    network: "127.0.1.0".parse().unwrap(),
                    prefix: 28,
                },
                "the block is 127.0.1.0/28",
            ),
            (
                "0.0.0.0",
                LocalAddressProblem::Unusable,
                "local address \"0.0.0.0\": an unspecified or multicast address cannot be a source",
            ),
        ];
        for (spec, want, text) in cases {
            let e = problem(&[spec]);
            assert_eq!(e.value(), spec);
            assert_eq!(e.problem(), &want, "{spec}");
            assert!(e.to_string().contains(text), "{spec}: {e}");
            assert!(e.to_string().contains(spec), "{spec}: {e}");
        }
        assert_eq!(
            problem(&["224.0.0.1"]).problem(),
            &LocalAddressProblem::Unusable
        );
        assert_eq!(problem(&["::"]).problem(), &LocalAddressProblem::Unusable);
    }

    #[test]
    fn nothing_given_is_an_error() {
        for specs in [&[][..], &[""], &[" , "]] {
            let e = LocalAddresses::parse(specs).unwrap_err();
            assert_eq!(e.problem(), &LocalAddressProblem::Empty);
            assert_eq!(e.to_string(), "local addresses: none given");
        }
        assert!(LocalAddresses::from_addrs([]).is_err());
    }

    #[test]
    fn slots_spread_evenly_and_keep_their_address() {
        let a: LocalAddresses = "127.0.0.2-127.0.0.5".parse().unwrap();
        let dest = v4("127.0.0.1");
        let mut per_address = std::collections::HashMap::new();
        for slot in 0..1000 {
            let chosen = a.for_slot(slot, dest).unwrap();
            assert_eq!(chosen.to_string(), format!("127.0.0.{}", 2 + slot % 4));
            // The same slot, asked again (a reconnect), gets the same one.
            assert_eq!(a.choose(Some(slot), dest), Some(chosen));
            *per_address.entry(chosen).or_insert(0) += 1;
        }
        assert_eq!(per_address.len(), 4);
        assert!(per_address.values().all(|&n| n == 250), "{per_address:?}");
    }

    #[test]
    fn each_family_has_its_own_spread() {
        let a: LocalAddresses = "127.0.0.2, ::2, 127.0.0.3, ::3, ::4".parse().unwrap();
        let (d4, d6): (SocketAddr, SocketAddr) =
            ("127.0.0.1:9".parse().unwrap(), "[::1]:9".parse().unwrap());
        let got4: Vec<String> = (0..4)
            .map(|s| a.for_slot(s, d4).unwrap().to_string())
            .collect();
        assert_eq!(got4, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
        let got6: Vec<String> = (0..4)
            .map(|s| a.for_slot(s, d6).unwrap().to_string())
            .collect();
        assert_eq!(got6, ["::2", "::3", "::4", "::2"]);
        let only4: LocalAddresses = "127.0.0.2".parse().unwrap();
        assert_eq!(only4.for_slot(0, d6), None);
        assert!(!only4.has_family_of(d6));
        assert!(only4.has_family_of(d4));
    }

    #[test]
    fn without_a_slot_the_addresses_take_turns() {
        let a: LocalAddresses = "127.0.0.2-127.0.0.4".parse().unwrap();
        let dest = v4("127.0.0.1");
        let got: Vec<String> = (0..5)
            .map(|_| a.choose(None, dest).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
                "127.0.0.2",
                "127.0.0.3"
            ]
        );
    }
}
