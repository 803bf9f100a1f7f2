//! The host's infrastructure, which no block may ever cut off: its default gateways, the DNS
//! resolvers it uses (`/etc/resolv.conf` and systemd-resolved's upstreams in
//! `/run/systemd/resolve/resolv.conf`) and the addresses of the configured chat endpoints.
//! Discovering them reads files and resolves host names, so it runs on a thread of its own,
//! again every [`REFRESH_EVERY`]: DNS answers and routes change while the agent runs.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs},
    path::Path,
    time::Duration,
};

use tokio::sync::watch;
use tracing::warn;

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
    /// Read routes and resolvers from `root` (`/` on a real host) and resolve `chat_urls`.
    pub fn discover(root: &Path, chat_urls: &[String]) -> Self {
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
        infra.resolve_chat(chat_urls.iter().map(String::as_str));
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
    let urls = chat_urls(config);
    let first = Infrastructure::discover(Path::new("/"), &urls);
    let (tx, rx) = watch::channel(first);
    std::thread::Builder::new()
        .name("infrastructure".into())
        .spawn(move || {
            loop {
                std::thread::sleep(REFRESH_EVERY);
                if tx.is_closed() {
                    return;
                }
                let mut next = Infrastructure::discover(Path::new("/"), &urls);
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
        let infra = Infrastructure::discover(dir.path(), &["http://127.0.0.1:9/x".into()]);
        assert!(infra.resolvers.contains(&ip("198.51.100.53")));
        assert!(infra.resolvers.contains(&ip("127.0.0.53")));
        assert_eq!(infra.gateways, [ip("198.51.100.1")].into());
        assert_eq!(infra.chat, [(ip("127.0.0.1"), "127.0.0.1".to_string())]);
    }
}
