//! Who is never a target: loopback, the operator's `trust.ips`, and the peers of live
//! **authenticated** SSH sessions of the users in `trust.ssh_users` (found by `enrich::ssh`: the
//! TCP connection an sshd session process holds, to a `trust.ssh_ports` port; a bare TCP
//! connection, another user's session or a login record is not one). Trust comes before every
//! detector and every block.
//!
//! A detector can only name a remote address in an alert through [`ActionableAddr`], and the only
//! way to get one is [`TrustSet::check`]: a trusted address cannot reach an alert or a block by
//! construction, whatever path the code takes.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use crate::enrich::ssh::{Sources, SshTrust, authenticated_peers};
use serde::{Serialize, Serializer};

/// Why an address is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustReason {
    Loopback,
    Unspecified,
    /// Inside this `trust.ips` entry.
    Configured(IpNet),
    /// The peer of a live authenticated SSH session of a user in `trust.ssh_users`.
    SshPeer,
}

impl fmt::Display for TrustReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustReason::Loopback => write!(f, "loopback"),
            TrustReason::Unspecified => write!(f, "unspecified address"),
            TrustReason::Configured(net) => write!(f, "in trust.ips ({net})"),
            TrustReason::SshPeer => write!(f, "peer of a live SSH session of a trusted user"),
        }
    }
}

/// An address that passed [`TrustSet::check`]. Only this module can make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionableAddr(IpAddr);

impl ActionableAddr {
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for ActionableAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for ActionableAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The trusted addresses, with the SSH peers refreshed while the agent runs.
#[derive(Debug, Clone, Default)]
pub struct TrustSet {
    nets: Vec<IpNet>,
    ssh: SshTrust,
    ssh_peers: HashSet<IpAddr>,
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl TrustSet {
    /// `ssh_ports` empty: SSH peers are not trusted. The sessions of the admins count (see
    /// [`Self::with_ssh_users`]).
    pub fn new(nets: &[IpNet], ssh_ports: &[u16]) -> Self {
        Self {
            nets: nets.iter().map(IpNet::trunc).collect(),
            ssh: SshTrust::new(ssh_ports, &crate::enrich::accounts::ADMINS),
            ssh_peers: HashSet::new(),
        }
    }

    /// Trust the SSH sessions of `users` only (names and `%groups`, `trust.ssh_users`).
    pub fn with_ssh_users<S: AsRef<str>>(mut self, users: &[S]) -> Self {
        self.ssh = SshTrust::new(&self.ssh.ports, users);
        self
    }

    /// Why `ip` is trusted, if it is.
    pub fn why_trusted(&self, ip: IpAddr) -> Option<TrustReason> {
        let ip = canonical(ip);
        if ip.is_loopback() {
            return Some(TrustReason::Loopback);
        }
        if ip.is_unspecified() {
            return Some(TrustReason::Unspecified);
        }
        if let Some(net) = self.nets.iter().find(|n| n.contains(&ip)) {
            return Some(TrustReason::Configured(*net));
        }
        if self.ssh_peers.contains(&ip) {
            return Some(TrustReason::SshPeer);
        }
        None
    }

    /// The gate every alert and block target passes through.
    pub fn check(&self, ip: IpAddr) -> Result<ActionableAddr, TrustReason> {
        match self.why_trusted(ip) {
            Some(reason) => Err(reason),
            None => Ok(ActionableAddr(canonical(ip))),
        }
    }

    /// Re-read the live SSH sessions of the trusted users from `src`. Returns how many peers
    /// are trusted now.
    pub fn refresh_ssh_peers(&mut self, src: &Sources) -> usize {
        let peers = authenticated_peers(src, &self.ssh);
        self.set_ssh_peers(peers)
    }

    /// Replace the trusted SSH peers (read elsewhere with [`authenticated_peers`]).
    pub fn set_ssh_peers(&mut self, peers: HashSet<IpAddr>) -> usize {
        self.ssh_peers = peers;
        self.ssh_peers.len()
    }

    /// Whose sessions, to which ports, are trusted.
    pub fn ssh(&self) -> &SshTrust {
        &self.ssh
    }

    #[cfg(test)]
    pub fn with_ssh_peers(mut self, peers: impl IntoIterator<Item = IpAddr>) -> Self {
        self.ssh_peers = peers.into_iter().map(canonical).collect();
        self
    }
}

/// `0100007F:0016` (IPv4) or 32 hex digits `:port` (IPv6), as the kernel prints them: each
/// 32-bit word in host (little-endian) byte order.
pub(crate) fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(|w| w.to_le_bytes());
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(&addr[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ssh_peers_are_trusted_until_replaced() {
        let mut t = TrustSet::new(&[], &[22]);
        let peers = HashSet::from([ip("2001:db8::9"), ip("198.51.0.10")]);
        assert_eq!(t.set_ssh_peers(peers), 2);
        assert_eq!(t.why_trusted(ip("2001:db8::9")), Some(TrustReason::SshPeer));
        assert_eq!(
            t.why_trusted(ip("::ffff:198.51.0.10")),
            Some(TrustReason::SshPeer)
        );
        // Sessions end: trust ends with them.
        assert_eq!(t.set_ssh_peers(HashSet::new()), 0);
        assert!(t.check(ip("2001:db8::9")).is_ok());
        // With SSH trust off, nothing is read.
        let mut off = TrustSet::new(&[], &[]);
        assert_eq!(off.refresh_ssh_peers(&Sources::default()), 0);
    }

    #[test]
    fn loopback_and_mapped_loopback_are_trusted() {
        let t = TrustSet::default();
        for a in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(t.check(ip(a)), Err(TrustReason::Loopback), "{a}");
        }
        assert!(t.check(ip("0.0.0.0")).is_err());
        assert_eq!(t.check(ip("203.0.113.9")).unwrap().ip(), ip("203.0.113.9"));
        assert_eq!(
            t.check(ip("::ffff:203.0.113.9")).unwrap().ip(),
            ip("203.0.113.9")
        );
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        ]
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        any_ip().prop_flat_map(|ip| {
            let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
            (Just(ip), 0u8..=max).prop_map(|(ip, len)| IpNet::new(ip, len).unwrap().trunc())
        })
    }

    /// A random address inside `net`.
    fn inside(net: IpNet, noise: u128) -> IpAddr {
        match net {
            IpNet::V4(n) => {
                let host_bits = 32 - n.prefix_len() as u32;
                let mask = if host_bits == 0 {
                    0
                } else {
                    u32::MAX >> (32 - host_bits)
                };
                IpAddr::V4(Ipv4Addr::from(
                    u32::from(n.network()) | (noise as u32 & mask),
                ))
            }
            IpNet::V6(n) => {
                let host_bits = 128 - n.prefix_len() as u32;
                let mask = if host_bits == 0 {
                    0
                } else {
                    u128::MAX >> (128 - host_bits)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | (noise & mask)))
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any address inside any configured CIDR is refused by the gate, also when written
        /// as IPv4-mapped IPv6.
        #[test]
        fn trusted_cidrs_never_pass(nets in prop::collection::vec(any_net(), 1..8),
                                    pick in any::<prop::sample::Index>(),
                                    noise in any::<u128>()) {
            let t = TrustSet::new(&nets, &[22]);
            let net = nets[pick.index(nets.len())];
            let addr = inside(net, noise);
            prop_assert!(t.check(addr).is_err());
            if let IpAddr::V4(v4) = addr {
                prop_assert!(t.check(IpAddr::V6(v4.to_ipv6_mapped())).is_err());
            }
        }

        /// What passes the gate is outside every trusted network and not loopback.
        #[test]
        fn what_passes_is_untrusted(nets in prop::collection::vec(any_net(), 0..8),
                                    peers in prop::collection::vec(any_ip(), 0..4),
                                    addr in any_ip()) {
            let t = TrustSet::new(&nets, &[22]).with_ssh_peers(peers.clone());
            if let Ok(u) = t.check(addr) {
                let a = u.ip();
                prop_assert!(!a.is_loopback());
                prop_assert!(nets.iter().all(|n| !n.contains(&a)));
                prop_assert!(peers.iter().all(|p| canonical(*p) != a));
            }
        }
    }
}
