//! Enforcement: turning a block decision into kernel state, and never against the wrong
//! address. Every block target passes [`BlockGuard::admit`] — the one gate that refuses
//! loopback, trusted addresses, live SSH peers, link-local addresses (cloud metadata), the
//! host's own addresses, the default gateways, the DNS resolvers in use, the chat endpoints,
//! the NTP servers, the package sources, the fleet store, recent admin login sources and
//! private ranges — and only what it admits can reach [`Enforcer::apply`]. The nftables table is the authority
//! (it outlives the agent); the in-kernel connect guard mirrors it and is written first, so it
//! holds an address even when `nft` fails.
//!
//! The gate runs on the event loop (pure look-ups); the [`Enforcer`] runs on the switch's
//! worker thread, because `nft` is a child process the loop must never wait for.

pub mod guard;
pub mod infra;
pub mod kill;
pub mod logins;
pub mod nftables;
pub mod protect;
pub mod seen;
pub mod sources;

use std::{
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    config::{Config, EnforceMode},
    enrich::trust::{TrustReason, TrustSet, canonical},
};
pub use infra::Infrastructure;

/// Why an address may not be blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Trusted(TrustReason),
    /// Link-local (169.254.0.0/16, fe80::/10): the cloud metadata service lives there.
    LinkLocal,
    /// Multicast or broadcast: never a peer.
    NotUnicast,
    /// One of the host's default gateways.
    Gateway,
    /// One of the host's DNS resolvers (resolv.conf, systemd-resolved's upstreams).
    Resolver,
    /// The address of a configured chat endpoint: blocking it would cut the alerts.
    ChatEndpoint(String),
    /// An address on one of the host's own interfaces.
    LocalAddress,
    /// One of the host's NTP servers (configured literally, or seen in use).
    NtpServer,
    /// A package source: how it is known ("seen used by apt", "in /etc/apt/sources.list").
    PackageSource(String),
    /// The fleet store (`fleet.postgres_url`).
    FleetStore,
    /// The source of a recent SSH login by this admin (`trust.recent_logins`).
    AdminLogin(String),
    /// A private or unique-local address, and `enforce.block_private` is off.
    Private,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Trusted(r) => write!(f, "trusted address ({r})"),
            Refusal::LinkLocal => write!(f, "link-local address (cloud metadata lives there)"),
            Refusal::NotUnicast => write!(f, "not a unicast address"),
            Refusal::Gateway => write!(f, "one of this host's default gateways"),
            Refusal::Resolver => write!(f, "one of this host's DNS resolvers"),
            Refusal::ChatEndpoint(host) => write!(f, "the address of chat endpoint {host}"),
            Refusal::LocalAddress => write!(f, "one of this host's own addresses"),
            Refusal::NtpServer => write!(f, "one of this host's NTP servers"),
            Refusal::PackageSource(how) => write!(f, "package source ({how})"),
            Refusal::FleetStore => write!(f, "the fleet store (fleet.postgres_url)"),
            Refusal::AdminLogin(user) => {
                write!(f, "source of a recent SSH login by admin {user}")
            }
            Refusal::Private => write!(
                f,
                "private address (set enforce.block_private = true to allow)"
            ),
        }
    }
}

/// An address the gate admitted as a block target. Only [`BlockGuard::admit`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Admitted(IpAddr);

impl Admitted {
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("nftables: {0}")]
    Nft(#[from] nftables::NftError),
}

/// The one gate every block target passes: trust first, then the host's infrastructure.
#[derive(Debug, Clone, Default)]
pub struct BlockGuard {
    pub infra: Infrastructure,
    /// `enforce.block_private`.
    pub block_private: bool,
    /// Package sources seen used by the host's package managers ([`BlockGuard::note_package_source`]).
    pub package_sources: seen::Seen,
}

/// RFC 1918, CGNAT (100.64/10) and IPv6 unique-local (fc00::/7).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || (a.octets()[0] == 100 && a.octets()[1] & 0xc0 == 64),
        IpAddr::V6(a) => a.segments()[0] & 0xfe00 == 0xfc00,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_not_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    }
}

impl BlockGuard {
    pub fn from_config(config: &Config, infra: Infrastructure) -> Self {
        Self {
            infra,
            block_private: config.enforce.block_private,
            package_sources: seen::Seen::default(),
        }
    }

    /// The package manager `who` connected to `ip`: a package source from now on (a week).
    pub fn note_package_source(&mut self, ip: IpAddr, who: &str) {
        self.package_sources
            .note(canonical(ip), who, Instant::now());
    }

    /// The gate every block target passes through.
    pub fn admit(&self, trust: &TrustSet, ip: IpAddr) -> Result<Admitted, Refusal> {
        let ip = canonical(ip);
        trust.check(ip).map_err(Refusal::Trusted)?;
        if is_link_local(ip) {
            return Err(Refusal::LinkLocal);
        }
        if is_not_unicast(ip) {
            return Err(Refusal::NotUnicast);
        }
        self.infrastructure(ip)?;
        if !self.block_private && is_private(ip) {
            return Err(Refusal::Private);
        }
        Ok(Admitted(ip))
    }

    /// Refuse what the host needs to run and to be reached: `ip` is canonical.
    fn infrastructure(&self, ip: IpAddr) -> Result<(), Refusal> {
        let infra = &self.infra;
        let find =
            |list: &[(IpAddr, String)]| list.iter().find(|(a, _)| *a == ip).map(|(_, s)| s.clone());
        if infra.local.contains(&ip) {
            return Err(Refusal::LocalAddress);
        }
        if infra.gateways.contains(&ip) {
            return Err(Refusal::Gateway);
        }
        if infra.resolvers.contains(&ip) {
            return Err(Refusal::Resolver);
        }
        if let Some(host) = find(&infra.chat) {
            return Err(Refusal::ChatEndpoint(host));
        }
        if infra.ntp.contains(&ip) {
            return Err(Refusal::NtpServer);
        }
        if let Some(who) = self.package_sources.used_by(ip, Instant::now()) {
            return Err(Refusal::PackageSource(format!("seen used by {who}")));
        }
        if let Some(file) = find(&infra.packages) {
            return Err(Refusal::PackageSource(format!("in {file}")));
        }
        if infra.fleet.contains(&ip) {
            return Err(Refusal::FleetStore);
        }
        if let Some(user) = find(&infra.admin_logins) {
            return Err(Refusal::AdminLogin(user));
        }
        Ok(())
    }
}

/// Where blocks go.
pub enum Backend {
    Nft(nftables::Nft),
    /// `enforce.mode = "dry-run"`: decide and record, touch nothing.
    DryRun,
    /// Tests: remember what would have been added.
    #[cfg(test)]
    Recording(Vec<IpAddr>),
}

pub struct Enforcer {
    backend: Backend,
    /// The in-kernel connect guard, when attached (`enforce.connect_guard`).
    connect_guard: Option<guard::ConnectGuard>,
}

impl Enforcer {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            connect_guard: None,
        }
    }

    /// The backend `enforce.mode` asks for; in nftables mode, fails when the system has no
    /// `nft` (see [`nftables::locate`]).
    pub fn from_config(config: &Config) -> Result<Self, nftables::NftError> {
        Ok(Self::new(match config.enforce.mode {
            EnforceMode::Nftables => Backend::Nft(
                nftables::Nft::new(&config.enforce.table)?.with_ssh_ports(&config.trust.ssh_ports),
            ),
            EnforceMode::DryRun => Backend::DryRun,
        }))
    }

    /// Mirror blocks into the in-kernel connect guard from now on.
    pub fn set_guard(&mut self, guard: guard::ConnectGuard) {
        self.connect_guard = Some(guard);
    }

    pub fn is_dry_run(&self) -> bool {
        matches!(self.backend, Backend::DryRun)
    }

    /// Make sure the table, its sets and its rules exist.
    pub fn prepare(&mut self) -> Result<(), EnforceError> {
        if let Backend::Nft(nft) = &self.backend {
            nft.ensure()?;
        }
        Ok(())
    }

    /// Block every target for its time, in one nftables transaction (refreshing the timeout
    /// of those already blocked). The connect guard takes them first, whatever nft says.
    pub fn apply(&mut self, targets: &[(Admitted, Duration)]) -> Result<(), EnforceError> {
        if targets.is_empty() {
            return Ok(());
        }
        match &mut self.backend {
            Backend::Nft(nft) => {
                if let Some(g) = &mut self.connect_guard {
                    for (t, ttl) in targets {
                        if let Err(e) = g.insert(t.0, *ttl) {
                            warn!("connect guard: cannot add {}: {e}", t.0);
                        }
                    }
                }
                let plain: Vec<(IpAddr, Duration)> =
                    targets.iter().map(|(t, ttl)| (t.0, *ttl)).collect();
                nft.add_all(&plain)?;
            }
            Backend::DryRun => {
                for (t, ttl) in targets {
                    info!(
                        "dry-run: would block {} for {}",
                        t.0,
                        humantime::format_duration(*ttl)
                    );
                }
            }
            #[cfg(test)]
            Backend::Recording(seen) => seen.extend(targets.iter().map(|(t, _)| t.0)),
        }
        Ok(())
    }

    /// Lift the block on `ip` (no error if there is none).
    pub fn remove(&mut self, ip: IpAddr) -> Result<(), EnforceError> {
        if let Some(g) = &mut self.connect_guard {
            g.remove(canonical(ip));
        }
        if let Backend::Nft(nft) = &self.backend {
            nft.remove(canonical(ip))?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn recorded(&self) -> &[IpAddr] {
        match &self.backend {
            Backend::Recording(seen) => seen,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::infra::parse_resolvers;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn guard() -> BlockGuard {
        let mut infra = Infrastructure {
            resolvers: parse_resolvers("nameserver 198.51.100.53\n"),
            ..Default::default()
        };
        infra.resolve_chat(["http://198.51.100.80:8080/hook"].into_iter());
        infra.gateways = [ip("198.51.100.254"), ip("2001:db8:ff::1")].into();
        BlockGuard {
            infra,
            block_private: false,
            package_sources: seen::Seen::default(),
        }
    }

    #[test]
    fn guard_refuses_protected_addresses() {
        let e = guard();
        let trust = TrustSet::new(&["198.51.100.192/26".parse().unwrap()], &[]);
        assert!(matches!(
            e.admit(&trust, ip("127.0.0.1")),
            Err(Refusal::Trusted(TrustReason::Loopback))
        ));
        assert!(matches!(
            e.admit(&trust, ip("198.51.100.207")),
            Err(Refusal::Trusted(_))
        ));
        assert_eq!(e.admit(&trust, ip("198.51.100.53")), Err(Refusal::Resolver));
        assert!(matches!(
            e.admit(&trust, ip("198.51.100.80")),
            Err(Refusal::ChatEndpoint(_))
        ));
        let ok = e.admit(&trust, ip("::ffff:198.51.100.9")).unwrap();
        assert_eq!(ok, Admitted(ip("198.51.100.9")));
        let mut enforcer = Enforcer::new(Backend::Recording(Vec::new()));
        enforcer.apply(&[(ok, Duration::from_secs(1))]).unwrap();
        assert_eq!(enforcer.recorded(), [ip("198.51.100.9")]);
    }

    #[test]
    fn infrastructure_is_never_admitted() {
        let e = guard();
        let open = TrustSet::default();
        for (addr, want) in [
            ("169.254.169.254", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("198.51.100.254", Refusal::Gateway),
            ("2001:db8:ff::1", Refusal::Gateway),
            ("10.1.2.3", Refusal::Private),
            ("172.16.0.1", Refusal::Private),
            ("192.168.1.1", Refusal::Private),
            ("100.64.0.1", Refusal::Private),
            ("fd00::5", Refusal::Private),
            ("224.0.0.1", Refusal::NotUnicast),
            ("255.255.255.255", Refusal::NotUnicast),
            ("ff02::1", Refusal::NotUnicast),
        ] {
            assert_eq!(e.admit(&open, ip(addr)), Err(want), "{addr}");
        }
        assert!(matches!(
            e.admit(&open, ip("::")),
            Err(Refusal::Trusted(TrustReason::Unspecified))
        ));
        assert!(matches!(
            e.admit(&open, ip("::1")),
            Err(Refusal::Trusted(TrustReason::Loopback))
        ));
        // Private ranges only when enabled; never link-local or gateways.
        let mut private = guard();
        private.block_private = true;
        assert!(private.admit(&open, ip("10.1.2.3")).is_ok());
        assert!(private.admit(&open, ip("fd00::5")).is_ok());
        assert_eq!(
            private.admit(&open, ip("169.254.169.254")),
            Err(Refusal::LinkLocal)
        );
        // Public addresses pass.
        assert!(e.admit(&open, ip("198.51.100.2")).is_ok());
        assert!(e.admit(&open, ip("2001:db8:1::2")).is_ok());
    }

    #[test]
    fn what_the_host_needs_is_never_admitted() {
        let mut e = guard();
        e.infra.local = [ip("198.51.100.129"), ip("2001:db8:9::1")].into();
        e.infra.ntp = [ip("198.51.100.123")].into();
        e.infra.packages = vec![(ip("198.51.100.40"), "/etc/apt/sources.list".into())];
        e.infra.fleet = [ip("198.51.100.50")].into();
        e.infra.admin_logins = vec![(ip("198.51.100.20"), "alice".into())];
        e.note_package_source(ip("::ffff:198.51.100.41"), "apt");
        let open = TrustSet::default();
        for (addr, want) in [
            ("198.51.100.129", Refusal::LocalAddress),
            ("2001:db8:9::1", Refusal::LocalAddress),
            ("198.51.100.123", Refusal::NtpServer),
            (
                "198.51.100.40",
                Refusal::PackageSource("in /etc/apt/sources.list".into()),
            ),
            (
                "198.51.100.41",
                Refusal::PackageSource("seen used by apt".into()),
            ),
            ("198.51.100.50", Refusal::FleetStore),
            ("198.51.100.20", Refusal::AdminLogin("alice".into())),
        ] {
            assert_eq!(e.admit(&open, ip(addr)), Err(want), "{addr}");
        }
        let reasons: Vec<String> = [
            Refusal::LocalAddress,
            Refusal::NtpServer,
            Refusal::PackageSource("seen used by apt".into()),
            Refusal::FleetStore,
            Refusal::AdminLogin("alice".into()),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            reasons,
            [
                "one of this host's own addresses",
                "one of this host's NTP servers",
                "package source (seen used by apt)",
                "the fleet store (fleet.postgres_url)",
                "source of a recent SSH login by admin alice",
            ]
        );
        assert!(e.admit(&open, ip("198.51.100.2")).is_ok());
    }
}
