//! Enforcement: turning a block decision into kernel state, and never against the wrong
//! address. Every block target passes [`Enforcer::admit`] — the one admission check that refuses
//! loopback, trusted addresses, live SSH peers, the chat endpoints and the host's DNS
//! resolvers — and only what it admits can reach [`Enforcer::apply`]. The nftables table is
//! the authority (it outlives the agent); the in-kernel connect guard mirrors it.

pub mod guard;
pub mod kill;
pub mod nftables;

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, ToSocketAddrs},
    path::Path,
    time::Duration,
};

use tracing::{info, warn};

use crate::{
    config::{Config, EnforceMode},
    enrich::trust::{TrustReason, TrustSet, canonical},
};

/// Why an address may not be blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Trusted(TrustReason),
    /// One of the host's DNS resolvers (`/etc/resolv.conf`).
    Resolver,
    /// The address of a configured chat endpoint: blocking it would cut the alerts.
    ChatEndpoint(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Trusted(r) => write!(f, "trusted address ({r})"),
            Refusal::Resolver => write!(f, "one of this host's DNS resolvers"),
            Refusal::ChatEndpoint(host) => write!(f, "the address of chat endpoint {host}"),
        }
    }
}

/// An address the admission check admitted as a block target. Only [`Enforcer::admit`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Admitted(IpAddr);

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("nftables: {0}")]
    Nft(#[from] nftables::NftError),
}

/// Where blocks go.
pub enum Backend {
    Nft(nftables::Nft),
    /// `enforce.mode = "dry-run"`: decide and record, touch nothing.
    DryRun,
    /// Tests of the admission check: remember what would have been added.
    #[cfg(test)]
    Recording(Vec<IpAddr>),
}

pub struct Enforcer {
    backend: Backend,
    /// The in-kernel connect guard, when attached (`enforce.connect_guard`).
    connect_guard: Option<guard::ConnectGuard>,
    resolvers: HashSet<IpAddr>,
    /// (address, host name) of every chat endpoint.
    chat: Vec<(IpAddr, String)>,
}

/// `nameserver` lines of a resolv.conf.
pub fn parse_resolvers(text: &str) -> HashSet<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            rest.split_whitespace()
                .next()?
                .split('%')
                .next()?
                .parse()
                .ok()
        })
        .map(canonical)
        .collect()
}

/// The host part of an http(s) URL, if it has one.
fn url_host(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let default = if scheme == "https" { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default);
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

impl Enforcer {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            connect_guard: None,
            resolvers: HashSet::new(),
            chat: Vec::new(),
        }
    }

    /// The enforcer for `config`, knowing this host's resolvers and chat endpoints.
    pub fn from_config(config: &Config) -> Self {
        let backend = match config.enforce.mode {
            EnforceMode::Nftables => Backend::Nft(nftables::Nft::new(&config.enforce.table)),
            EnforceMode::DryRun => Backend::DryRun,
        };
        let mut enforcer = Self::new(backend);
        enforcer.resolvers = std::fs::read_to_string(Path::new("/etc/resolv.conf"))
            .map(|t| parse_resolvers(&t))
            .unwrap_or_default();
        let n = &config.notify;
        let urls = [
            n.slack.webhook_url.clone(),
            n.teams.webhook_url.clone(),
            if n.telegram.bot_token.is_empty() {
                String::new()
            } else {
                n.telegram.api_base.clone()
            },
        ];
        enforcer.refresh_chat_endpoints(urls.iter().filter(|u| !u.is_empty()).map(String::as_str));
        enforcer
    }

    /// Resolve the chat endpoints' addresses (at start; DNS can change, so the daemon may
    /// call this again).
    pub fn refresh_chat_endpoints<'a>(&mut self, urls: impl Iterator<Item = &'a str>) {
        let mut chat = Vec::new();
        for url in urls {
            let Some((host, port)) = url_host(url) else {
                continue;
            };
            match (host.as_str(), port).to_socket_addrs() {
                Ok(addrs) => chat.extend(addrs.map(|a| (canonical(a.ip()), host.clone()))),
                Err(e) => warn!(
                    "cannot resolve chat endpoint {host} (it is not protected from blocks until it resolves): {e}"
                ),
            }
        }
        self.chat = chat;
    }

    /// Mirror blocks into the in-kernel connect guard from now on.
    pub fn set_guard(&mut self, guard: guard::ConnectGuard) {
        self.connect_guard = Some(guard);
    }

    pub fn is_dry_run(&self) -> bool {
        matches!(self.backend, Backend::DryRun)
    }

    /// The admission check every block target passes through.
    pub fn admit(&self, trust: &TrustSet, ip: IpAddr) -> Result<Admitted, Refusal> {
        let ip = canonical(ip);
        trust.check(ip).map_err(Refusal::Trusted)?;
        if self.resolvers.contains(&ip) {
            return Err(Refusal::Resolver);
        }
        if let Some((_, host)) = self.chat.iter().find(|(a, _)| *a == ip) {
            return Err(Refusal::ChatEndpoint(host.clone()));
        }
        Ok(Admitted(ip))
    }

    /// Make sure the table, its sets and its rules exist.
    pub fn prepare(&mut self) -> Result<(), EnforceError> {
        if let Backend::Nft(nft) = &self.backend {
            nft.ensure()?;
        }
        Ok(())
    }

    /// Block `target` for `ttl` (refreshing the timeout if it is already blocked).
    pub fn apply(&mut self, target: Admitted, ttl: Duration) -> Result<(), EnforceError> {
        match &mut self.backend {
            Backend::Nft(nft) => {
                nft.add(target.0, ttl)?;
                if let Some(g) = &mut self.connect_guard
                    && let Err(e) = g.insert(target.0, ttl)
                {
                    warn!("connect guard: cannot add {}: {e}", target.0);
                }
            }
            Backend::DryRun => info!(
                "dry-run: would block {} for {}",
                target.0,
                humantime::format_duration(ttl)
            ),
            #[cfg(test)]
            Backend::Recording(seen) => seen.push(target.0),
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolvers_are_read() {
        let r = parse_resolvers(
            "# comment\nnameserver 198.51.100.153\nnameserver fe80::1%eth0\noptions edns0\nnameserver   2001:db8::53\n",
        );
        assert!(r.contains(&ip("198.51.100.153")));
        assert!(r.contains(&ip("fe80::1")));
        assert!(r.contains(&ip("2001:db8::53")));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://hooks.example.com/services/x"),
            Some(("hooks.example.com".into(), 443))
        );
        assert_eq!(
            url_host("http://127.0.0.1:9000/x"),
            Some(("127.0.0.1".into(), 9000))
        );
        assert_eq!(
            url_host("http://[2001:db8::1]:81/"),
            Some(("2001:db8::1".into(), 81))
        );
        assert_eq!(url_host("nonsense"), None);
    }

    #[test]
    fn admit_refuses_protected_addresses() {
        let mut e = Enforcer::new(Backend::Recording(Vec::new()));
        e.resolvers = parse_resolvers("nameserver 198.51.100.53\n");
        e.refresh_chat_endpoints(["http://198.51.100.80:8080/hook"].into_iter());
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
        e.apply(ok, Duration::from_secs(1)).unwrap();
        assert_eq!(e.recorded(), [ip("198.51.100.9")]);
    }
}
