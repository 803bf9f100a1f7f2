//! The host's infrastructure, which no block may ever cut off: its own addresses, its default
//! gateways, the DNS resolvers it uses (`/etc/resolv.conf` and systemd-resolved's upstreams in
//! `/run/systemd/resolve/resolv.conf`), the addresses of the configured chat endpoints, its NTP
//! servers, the literal addresses of its package sources ([`super::sources`]), the fleet store
//! and where its admins logged in from lately ([`super::logins`]). Discovering them reads
//! files and resolves the chat host names, so it runs on a thread of its own, again every
//! [`REFRESH_EVERY`]: DNS answers, routes and logins change while the agent runs.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs},
    path::Path,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tracing::warn;

use super::{logins, seen::Seen, sources};
use crate::{config::Config, enrich::trust::canonical};

/// How often the infrastructure is discovered again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Resolver files read, in order.
const RESOLV_FILES: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Infrastructure {
    pub gateways: HashSet<IpAddr>,
    pub resolvers: HashSet<IpAddr>,
    /// (address, host name) of every chat endpoint.
    pub chat: Vec<(IpAddr, String)>,
    /// Every address on every interface of the host.
    pub local: HashSet<IpAddr>,
    /// NTP servers: literal ones in chrony's and timesyncd's configuration, and those seen in
    /// use (connected UDP sockets to port 123; kept for a week).
    pub ntp: HashSet<IpAddr>,
    /// (address, file) of literal package sources: apt URIs, npm and pip registries.
    pub packages: Vec<(IpAddr, String)>,
    /// The fleet store's literal addresses (`fleet.postgres_url`).
    pub fleet: HashSet<IpAddr>,
    /// (address, user) of recent SSH logins by admins (`trust.recent_logins`).
    pub admin_logins: Vec<(IpAddr, String)>,
}

/// What discovery needs from the config.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub chat_urls: Vec<String>,
    /// `fleet.postgres_url`.
    pub fleet_url: String,
    /// `trust.recent_logins`.
    pub recent_logins: Duration,
}

impl Inputs {
    pub fn from_config(config: &Config) -> Self {
        Self {
            chat_urls: chat_urls(config),
            fleet_url: config.fleet.postgres_url.clone(),
            recent_logins: config.trust.recent_logins,
        }
    }
}

/// Every address on every interface (`getifaddrs`, i.e. netlink).
pub fn local_addresses() -> HashSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        warn!("cannot list this host's addresses: they are not protected from blocks");
        return HashSet::new();
    };
    addrs
        .filter_map(|a| {
            let a = a.address?;
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .map(canonical)
        .collect()
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

/// Gateways of the default routes in `/proc/net/route` (IPv4, little-endian hex).
pub fn parse_route_v4(text: &str) -> HashSet<IpAddr> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags … Mask: a default route has both zero.
            let (dest, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
            if *dest != "00000000" || *mask != "00000000" {
                return None;
            }
            let g = u32::from_str_radix(gw, 16).ok().filter(|g| *g != 0)?;
            Some(IpAddr::V4(Ipv4Addr::from(g.to_le_bytes())))
        })
        .collect()
}

/// Gateways of the default routes in `/proc/net/ipv6_route`.
pub fn parse_route_v6(text: &str) -> HashSet<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // dest dest_len src src_len next_hop metric refcnt use flags dev
            let (dest, len, hop) = (f.first()?, f.get(1)?, f.get(4)?);
            if dest.chars().any(|c| c != '0') || *len != "00" {
                return None;
            }
            let g = u128::from_str_radix(hop, 16).ok().filter(|g| *g != 0)?;
            Some(IpAddr::V6(Ipv6Addr::from(g)))
        })
        .collect()
}

/// The host part of an http(s) URL, if it has one.
pub fn url_host(url: &str) -> Option<(String, u16)> {
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

/// The chat endpoint URLs configured in `config`.
pub fn chat_urls(config: &Config) -> Vec<String> {
    let n = &config.notify;
    [
        n.slack.webhook_url.clone(),
        n.teams.webhook_url.clone(),
        if n.telegram.bot_token.is_empty() {
            String::new()
        } else {
            n.telegram.api_base.clone()
        },
    ]
    .into_iter()
    .filter(|u| !u.is_empty())
    .collect()
}

impl Infrastructure {
    /// Read routes, resolvers, NTP and package sources and logins from `root` (`/` on a real
    /// host), list the interfaces' addresses and resolve the chat URLs.
    pub fn discover(root: &Path, inputs: &Inputs) -> Self {
        let read = |p: &str| std::fs::read_to_string(root.join(p.trim_start_matches('/')));
        let mut infra = Infrastructure::default();
        for file in RESOLV_FILES {
            if let Ok(text) = read(file) {
                infra.resolvers.extend(parse_resolvers(&text));
            }
        }
        if let Ok(text) = read("/proc/net/route") {
            infra.gateways.extend(parse_route_v4(&text));
        }
        if let Ok(text) = read("/proc/net/ipv6_route") {
            infra.gateways.extend(parse_route_v6(&text));
        }
        infra.resolve_chat(inputs.chat_urls.iter().map(String::as_str));
        infra.local = local_addresses();
        let reader = sources::Reader(root);
        infra.ntp = reader.ntp_literals();
        infra.ntp.extend(reader.ntp_in_use());
        infra.packages = reader.package_literals();
        infra.fleet = sources::fleet_literals(&inputs.fleet_url)
            .into_iter()
            .collect();
        infra.admin_logins = logins::recent(root, inputs.recent_logins);
        infra
    }

    /// Resolve the chat endpoints' addresses.
    pub fn resolve_chat<'a>(&mut self, urls: impl Iterator<Item = &'a str>) {
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
}

/// Discover the infrastructure now, and again every [`REFRESH_EVERY`] on a thread of its own;
/// the receiver always holds the latest. Chat addresses that stop resolving are kept: an
/// endpoint once protected stays protected.
pub fn watch(config: &Config) -> watch::Receiver<Infrastructure> {
    let inputs = Inputs::from_config(config);
    let mut ntp_seen = Seen::default();
    let first = Infrastructure::discover(Path::new("/"), &inputs);
    remember_ntp(&mut ntp_seen, &first);
    let (tx, rx) = watch::channel(first);
    std::thread::Builder::new()
        .name("infrastructure".into())
        .spawn(move || {
            loop {
                std::thread::sleep(REFRESH_EVERY);
                if tx.is_closed() {
                    return;
                }
                let mut next = Infrastructure::discover(Path::new("/"), &inputs);
                next.ntp.extend(remember_ntp(&mut ntp_seen, &next));
                tx.send_if_modified(|current| {
                    for kept in &current.chat {
                        if !next.chat.contains(kept) {
                            next.chat.push(kept.clone());
                        }
                    }
                    let changed = *current != next;
                    if changed {
                        *current = std::mem::take(&mut next);
                    }
                    changed
                });
            }
        })
        .expect("spawn the infrastructure thread");
    rx
}

/// Remember the NTP servers in `infra` (a week, bounded); all those remembered.
fn remember_ntp(seen: &mut Seen, infra: &Infrastructure) -> Vec<IpAddr> {
    let now = Instant::now();
    for ip in &infra.ntp {
        seen.note(*ip, "ntp", now);
    }
    seen.addresses(now).collect()
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
    fn default_gateways_are_read() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t016433C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_route_v4(v4), [ip("198.51.100.1")].into());
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
                  20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n";
        assert_eq!(parse_route_v6(v6), [ip("2001:db8::1")].into());
    }

    #[test]
    fn discovery_reads_both_resolver_files_and_the_routes() {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        };
        w("etc/resolv.conf", "nameserver 127.0.0.53\n");
        w(
            "run/systemd/resolve/resolv.conf",
            "nameserver 198.51.100.53\n",
        );
        w(
            "proc/net/route",
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
             eth0\t00000000\t016433C6\t0003\t0\t0\t0\t00000000\n",
        );
        let inputs = Inputs {
            chat_urls: vec!["http://127.0.0.1:9/x".into()],
            fleet_url: "postgresql://agent@198.51.100.50/fleet".into(),
            recent_logins: Duration::from_secs(86_400),
        };
        let infra = Infrastructure::discover(dir.path(), &inputs);
        assert_eq!(infra.fleet, [ip("198.51.100.50")].into());
        assert!(infra.local.contains(&ip("127.0.0.1")), "{:?}", infra.local);
        assert!(infra.resolvers.contains(&ip("198.51.100.53")));
        assert!(infra.resolvers.contains(&ip("127.0.0.53")));
        assert_eq!(infra.gateways, [ip("198.51.100.1")].into());
        assert_eq!(infra.chat, [(ip("127.0.0.1"), "127.0.0.1".to_string())]);
    }
}
