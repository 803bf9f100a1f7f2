//! What the host's time and packages come from, read from its own configuration so a block
//! never cuts it off: the NTP servers of chrony and systemd-timesyncd, the URIs of apt's
//! sources, npm's and pip's registries and the fleet store. Only literal addresses count here:
//! the agent sends no DNS query of its own, so a host name is protected once its addresses are
//! seen in use ([`ntp_peers`] for time, the pipeline's package-manager connects for packages).
//! Everything here runs on the infrastructure thread, never on the event loop.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use crate::enrich::trust::{canonical, parse_endpoint};

use super::infra::url_host;

/// chrony's configuration files and the directory of its `*.sources` files.
const CHRONY_FILES: [&str; 2] = ["/etc/chrony/chrony.conf", "/etc/chrony.conf"];
const CHRONY_SOURCES_DIR: &str = "/etc/chrony/sources.d";
const TIMESYNCD_FILE: &str = "/etc/systemd/timesyncd.conf";
const TIMESYNCD_DIR: &str = "/etc/systemd/timesyncd.conf.d";
const APT_LIST: &str = "/etc/apt/sources.list";
const APT_DIR: &str = "/etc/apt/sources.list.d";
/// npm's global and root's user configuration.
const NPM_FILES: [&str; 3] = ["/etc/npmrc", "/usr/etc/npmrc", "/root/.npmrc"];
/// pip's global and root's user configuration.
const PIP_FILES: [&str; 4] = [
    "/etc/pip.conf",
    "/etc/xdg/pip/pip.conf",
    "/root/.config/pip/pip.conf",
    "/root/.pip/pip.conf",
];
/// The NTP port, as `/proc/net/udp` prints remote ports.
const NTP_PORT: u16 = 123;

/// An address, when `text` is a literal one (`[v6]` and a `%zone` suffix allowed).
pub fn literal(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    let text = text.split('%').next()?;
    text.parse().ok().map(canonical)
}

/// The host named by each `server`, `pool` and `peer` line of a chrony configuration.
pub fn chrony_hosts(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let directive = words.next()?;
            ["server", "pool", "peer"]
                .contains(&directive)
                .then(|| words.next().map(str::to_string))?
        })
        .collect()
}

/// The hosts of the `NTP=` and `FallbackNTP=` assignments of a timesyncd configuration.
pub fn timesyncd_hosts(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with(['#', ';']))
        .filter_map(|l| l.split_once('='))
        .filter(|(key, _)| matches!(key.trim(), "NTP" | "FallbackNTP"))
        .flat_map(|(_, value)| value.split_whitespace().map(str::to_string))
        .collect()
}

/// The URIs of an apt `.list` file (`deb [options] uri suite …`) or a deb822 `.sources` file
/// (`URIs: uri …`).
pub fn apt_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(uris) = line.strip_prefix("URIs:") {
            out.extend(uris.split_whitespace().map(str::to_string));
            continue;
        }
        let Some(rest) = line
            .strip_prefix("deb-src ")
            .or_else(|| line.strip_prefix("deb "))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(opts) => opts.split_once(']').map_or("", |(_, after)| after),
            None => rest,
        };
        out.extend(rest.split_whitespace().next().map(str::to_string));
    }
    out
}

/// The registry URLs of an npmrc (`registry=`, `@scope:registry=`) or a pip.conf
/// (`index-url`, `extra-index-url`, `find-links`).
pub fn registry_urls(text: &str) -> Vec<String> {
    const KEYS: [&str; 3] = ["index-url", "extra-index-url", "find-links"];
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(key, _)| {
            let key = key.trim();
            key == "registry" || key.ends_with(":registry") || KEYS.contains(&key)
        })
        .flat_map(|(_, value)| value.split_whitespace().map(str::to_string))
        .collect()
}

/// The literal address of a URL's host, if it has one.
pub fn url_literal(url: &str) -> Option<IpAddr> {
    literal(&url_host(url)?.0)
}

/// The literal addresses among `fleet.postgres_url`'s hosts. A host name is not resolved
/// (the fleet connection is the agent's own, which the sensors do not report).
pub fn fleet_literals(url: &str) -> Vec<IpAddr> {
    let Ok(config) = tokio_postgres::Config::from_str(url) else {
        return Vec::new();
    };
    config
        .get_hosts()
        .iter()
        .filter_map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => literal(name),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => None,
        })
        .chain(config.get_hostaddrs().iter().copied().map(canonical))
        .collect()
}

/// Remote addresses of UDP sockets connected to port 123 in a `/proc/net/udp{,6}` table:
/// the NTP servers chronyd and timesyncd are talking to, whatever names they resolved.
pub fn ntp_peers(text: &str) -> HashSet<IpAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let (ip, port) = parse_endpoint(line.split_whitespace().nth(2)?)?;
            (port == NTP_PORT && !ip.is_unspecified()).then(|| canonical(ip))
        })
        .collect()
}

/// Files in `dir` whose name ends with `suffix`, sorted.
fn files_in(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| suffixes.iter().any(|s| n.ends_with(s)))
        })
        .collect();
    out.sort();
    out
}

/// Reads configuration files below a root (`/` on a real host).
pub struct Reader<'a>(pub &'a Path);

impl Reader<'_> {
    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }

    /// Every file named by `files` plus those in `dir` with one of `suffixes`, with its text.
    fn texts(&self, files: &[&str], dir: Option<(&str, &[&str])>) -> Vec<(String, String)> {
        let mut paths: Vec<PathBuf> = files.iter().map(|f| self.path(f)).collect();
        if let Some((dir, suffixes)) = dir {
            paths.extend(files_in(&self.path(dir), suffixes));
        }
        paths
            .into_iter()
            .filter_map(|p| {
                let text = std::fs::read_to_string(&p).ok()?;
                let shown = Path::new("/").join(p.strip_prefix(self.0).unwrap_or(&p));
                Some((shown.display().to_string(), text))
            })
            .collect()
    }

    /// The literal addresses of the configured NTP servers (chrony and timesyncd).
    pub fn ntp_literals(&self) -> HashSet<IpAddr> {
        let chrony = self
            .texts(&CHRONY_FILES, Some((CHRONY_SOURCES_DIR, &[".sources"])))
            .into_iter()
            .flat_map(|(_, t)| chrony_hosts(&t));
        let timesyncd = self
            .texts(&[TIMESYNCD_FILE], Some((TIMESYNCD_DIR, &[".conf"])))
            .into_iter()
            .flat_map(|(_, t)| timesyncd_hosts(&t));
        chrony
            .chain(timesyncd)
            .filter_map(|h| literal(&h))
            .collect()
    }

    /// The NTP servers in use now (connected UDP sockets to port 123).
    pub fn ntp_in_use(&self) -> HashSet<IpAddr> {
        self.texts(&["/proc/net/udp", "/proc/net/udp6"], None)
            .into_iter()
            .flat_map(|(_, t)| ntp_peers(&t))
            .collect()
    }

    /// (literal address, file naming it) of every package source: apt, npm, pip.
    pub fn package_literals(&self) -> Vec<(IpAddr, String)> {
        let apt = self
            .texts(&[APT_LIST], Some((APT_DIR, &[".list", ".sources"])))
            .into_iter()
            .map(|(f, t)| (f, apt_uris(&t)));
        let registries = self
            .texts(&NPM_FILES, None)
            .into_iter()
            .chain(self.texts(&PIP_FILES, None))
            .map(|(f, t)| (f, registry_urls(&t)));
        apt.chain(registries)
            .flat_map(|(file, urls)| {
                urls.into_iter()
                    .filter_map(|u| url_literal(&u))
                    .map(move |ip| (ip, file.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn chrony_servers_pools_and_peers() {
        let text = "# comment\npool 2.debian.pool.ntp.org iburst\nserver 198.51.100.123 iburst\n\
                    peer 2001:db8::123\n! server 198.51.100.9\nmakestep 1 3\nsourcedir /run/chrony\n";
        assert_eq!(
            chrony_hosts(text),
            ["2.debian.pool.ntp.org", "198.51.100.123", "2001:db8::123"]
        );
    }

    #[test]
    fn timesyncd_ntp_and_fallback() {
        let text = "[Time]\n#NTP=198.51.100.1\nNTP=198.51.100.123 time.example.org\n\
                    FallbackNTP=2001:db8::123\nRootDistanceMaxSec=5\n";
        assert_eq!(
            timesyncd_hosts(text),
            ["198.51.100.123", "time.example.org", "2001:db8::123"]
        );
    }

    #[test]
    fn apt_lists_and_deb822_sources() {
        let list = "# deb http://198.51.100.7/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://198.51.100.40/debian bookworm main\n\
                    deb-src http://deb.debian.org/debian bookworm main\n";
        assert_eq!(
            apt_uris(list),
            [
                "http://198.51.100.40/debian",
                "http://deb.debian.org/debian"
            ]
        );
        let sources = "Types: deb\nURIs: http://[2001:db8::40]/debian https://mirror.example\n\
                       Suites: bookworm\n";
        assert_eq!(
            apt_uris(sources),
            ["http://[2001:db8::40]/debian", "https://mirror.example"]
        );
    }

    #[test]
    fn npm_and_pip_registries() {
        let npmrc = "registry=http://198.51.100.41:4873/\n@corp:registry=https://npm.example\n";
        assert_eq!(
            registry_urls(npmrc),
            ["http://198.51.100.41:4873/", "https://npm.example"]
        );
        let pip = "[global]\nindex-url = http://198.51.100.42/simple\ntimeout = 5\n";
        assert_eq!(registry_urls(pip), ["http://198.51.100.42/simple"]);
        assert_eq!(
            url_literal("http://198.51.100.42/simple"),
            Some(ip("198.51.100.42"))
        );
        assert_eq!(url_literal("https://npm.example"), None);
    }

    #[test]
    fn fleet_store_literals_only() {
        assert_eq!(
            fleet_literals("postgresql://agent@198.51.100.50:5432/fleet"),
            [ip("198.51.100.50")]
        );
        assert!(fleet_literals("postgresql://agent@db.example/fleet").is_empty());
        assert_eq!(
            fleet_literals("host=db.example hostaddr=198.51.100.51 user=agent"),
            [ip("198.51.100.51")]
        );
        assert!(fleet_literals("").is_empty());
    }

    #[test]
    fn ntp_peers_are_connected_udp_sockets_to_port_123() {
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                   1: 0A00000A:9C40 7B6433C6:007B 01 00000000:00000000 00:00000000 00000000   107        0 1 2 0 0\n\
                   2: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2 2 0 0\n\
                   3: 0A00000A:9C41 016433C6:0035 01 00000000:00000000 00:00000000 00000000     0        0 3 2 0 0\n";
        assert_eq!(ntp_peers(udp), [ip("198.51.100.123")].into());
    }

    #[test]
    fn files_below_a_root_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        };
        w("etc/chrony/chrony.conf", "pool pool.example iburst\n");
        w(
            "etc/chrony/sources.d/local.sources",
            "server 198.51.100.123\n",
        );
        w(
            "etc/chrony/sources.d/ignored.conf",
            "server 198.51.100.124\n",
        );
        w(
            "etc/systemd/timesyncd.conf.d/x.conf",
            "[Time]\nNTP=198.51.100.125\n",
        );
        w(
            "etc/apt/sources.list.d/mirror.list",
            "deb http://198.51.100.40/d x main\n",
        );
        w(
            "etc/pip.conf",
            "[global]\nindex-url = http://198.51.100.42/simple\n",
        );
        let r = Reader(dir.path());
        assert_eq!(
            r.ntp_literals(),
            [ip("198.51.100.123"), ip("198.51.100.125")].into()
        );
        let mut pkgs = r.package_literals();
        pkgs.sort();
        assert_eq!(
            pkgs,
            [
                (
                    ip("198.51.100.40"),
                    "/etc/apt/sources.list.d/mirror.list".into()
                ),
                (ip("198.51.100.42"), "/etc/pip.conf".into()),
            ]
        );
    }
}
