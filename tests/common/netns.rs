//! Test hosts in a network namespace of their own, reached over a veth pair, on addresses that
//! cannot collide with this machine's network: IPv4 inside 198.51.100.0/24 and IPv6 inside
//! 2001:db8::/32 (the machines use the 192.0.2 network for themselves and reach the package
//! registries inside the 203.0.113 network). Before adding anything the harness reads every address
//! and route the machine has (`ip -j addr`, `ip -j route show table all`) and refuses, naming the
//! overlap, to add an address or route that would shadow one of them. One test host exists at a
//! time on the machine (an exclusive lock), and it is removed on drop, even on failure.
//!
//! Shared by the end-to-end tests and `cargo xtask bench-switch` (through `#[path]`), so it uses
//! only std and serde_json, and reports errors as strings.

use std::{
    fs::File,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

/// A high-risk test host (RU in the test GeoIP database).
pub const RU4: &str = "198.51.100.2";
/// A low-risk test host (DE).
pub const DE4: &str = "198.51.100.130";
/// A high-risk test host that tests put in `trust.ips` (CN).
pub const CN4: &str = "198.51.100.194";
/// An IPv6 high-risk test host (KP).
pub const KP6: &str = "2001:db8:1::2";
/// An IPv6 low-risk test host (FR).
pub const FR6: &str = "2001:db8:2::2";

/// The networks on the veth: this side's address and the test host's, per network.
const NETWORKS: [(&str, &str); 5] = [
    ("198.51.100.1/25", "198.51.100.2/25"),
    ("198.51.100.129/26", "198.51.100.130/26"),
    ("198.51.100.193/26", "198.51.100.194/26"),
    ("2001:db8:1::1/64", "2001:db8:1::2/64"),
    ("2001:db8:2::1/64", "2001:db8:2::2/64"),
];

/// The only ranges test hosts may use.
const ALLOWED: [&str; 2] = ["198.51.100.0/24", "2001:db8::/32"];

/// Serialises test hosts across test binaries, benchmarks and concurrent runs.
const LOCK: &str = "/run/sentinel-test-hosts.lock";

pub struct TestNet {
    ns: String,
    veth: String,
    _lock: File,
}

/// An IP network: address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Net {
    pub addr: IpAddr,
    pub len: u8,
}

impl Net {
    pub fn parse(s: &str) -> Result<Net, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .split('%')
            .next()
            .unwrap_or(a)
            .parse()
            .map_err(|e| format!("{s}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.parse().map_err(|e| format!("{s}: {e}"))?
        };
        if len > max {
            return Err(format!("{s}: prefix longer than {max}"));
        }
        Ok(Net { addr, len })
    }

    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// True when `self` holds `addr`.
    pub fn contains(&self, addr: IpAddr) -> bool {
        if self.addr.is_ipv4() != addr.is_ipv4() {
            return false;
        }
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let shift = width - u32::from(self.len);
        if shift >= 128 {
            return true;
        }
        Self::bits(self.addr) >> shift == Self::bits(addr) >> shift
    }

    /// True when the two networks share any address.
    pub fn overlaps(&self, other: &Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Something this machine already has: an address on an interface or a route.
#[derive(Debug)]
pub struct Existing {
    pub net: Net,
    pub what: String,
}

fn ip_json(args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("ip {}: {e}", args.join(" ")))
}

/// Every address and every non-default route of the machine (its own namespace).
pub fn machine_network() -> Result<Vec<Existing>, String> {
    let mut found = Vec::new();
    for link in ip_json(&["-j", "addr", "show"])?
        .as_array()
        .into_iter()
        .flatten()
    {
        let dev = link["ifname"].as_str().unwrap_or("?");
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
                continue;
            };
            let net = Net::parse(&format!("{local}/{len}"))?;
            found.push(Existing {
                net,
                what: format!("address {local}/{len} on {dev}"),
            });
        }
    }
    for fam in ["-4", "-6"] {
        for r in ip_json(&["-j", fam, "route", "show", "table", "all"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            let dst = r["dst"].as_str().unwrap_or("default");
            if dst == "default" {
                continue;
            }
            // Multicast and link-local routes are per-interface plumbing, never shadowed here.
            let net = Net::parse(dst)?;
            if net.addr.is_multicast() || dst.starts_with("fe80:") {
                continue;
            }
            let dev = r["dev"].as_str().unwrap_or("?");
            let table = r["table"].as_str().unwrap_or("main");
            found.push(Existing {
                net,
                what: format!("route {dst} dev {dev} (table {table})"),
            });
        }
    }
    Ok(found)
}

/// Refuses any of `wanted` that lies outside the test ranges or overlaps something in
/// `existing`, naming both.
pub fn check_no_overlap(wanted: &[Net], existing: &[Existing]) -> Result<(), String> {
    let allowed: Vec<Net> = ALLOWED.iter().map(|a| Net::parse(a).unwrap()).collect();
    for w in wanted {
        if !allowed.iter().any(|a| a.contains(w.addr) && a.len <= w.len) {
            return Err(format!(
                "test network {w} is outside the test ranges ({})",
                ALLOWED.join(", ")
            ));
        }
        if let Some(e) = existing.iter().find(|e| e.net.overlaps(w)) {
            return Err(format!(
                "test network {w} overlaps this machine's {}: refusing to shadow it \
                 (a leftover test host? `ip link` shows it; remove it with `ip link del DEV`)",
                e.what
            ));
        }
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Waits (up to 20 minutes: another run may hold it for a whole test binary) for the
/// machine-wide test-host lock.
pub fn take_lock() -> Result<File, String> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(|e| format!("{LOCK}: {e}"))?;
    let start = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("{LOCK}: {e}")),
        }
        if start.elapsed() > Duration::from_secs(1200) {
            return Err(format!("{LOCK}: another test host held it for 20 minutes"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl TestNet {
    /// Create the test host; panics with the reason when it cannot (tests).
    pub fn new(tag: &str) -> TestNet {
        Self::try_new(tag, &[]).unwrap_or_else(|e| panic!("test host: {e}"))
    }

    /// Create the namespace and the veth pair with the standard test networks, plus `extra`
    /// host-side addresses (inside those networks, e.g. more high-risk hosts for a benchmark).
    /// `tag` names it. Nothing is added when a check fails.
    pub fn try_new(tag: &str, extra: &[&str]) -> Result<TestNet, String> {
        let lock = take_lock()?;
        let id = format!("{}{}", tag, std::process::id() % 100_000);
        let ns = format!("sentinel-test-{id}");
        let veth = format!("snt{id}");
        let peer = format!("snp{id}");
        // Holding the lock, any test host still here is a leftover of a run that died.
        remove_leftovers();

        let wanted: Vec<Net> = NETWORKS
            .iter()
            .map(|(local, _)| Net::parse(local).map(|n| network_of(&n)))
            .collect::<Result<_, _>>()?;
        check_no_overlap(&wanted, &machine_network()?)?;
        for e in extra {
            let a = Net::parse(e)?;
            if !wanted.iter().any(|w| w.contains(a.addr)) {
                return Err(format!(
                    "extra host address {e} is outside the test networks"
                ));
            }
        }

        let net = TestNet {
            ns,
            veth,
            _lock: lock,
        };
        ip(&["netns", "add", &net.ns])?;
        ip(&[
            "link", "add", &net.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &net.ns])?;
        for (local, _) in NETWORKS {
            add_addr(None, local, &net.veth)?;
        }
        ip(&["link", "set", &net.veth, "up"])?;
        for (_, host) in NETWORKS {
            add_addr(Some(&net.ns), host, &peer)?;
        }
        for e in extra {
            let bare = e.split('/').next().unwrap_or(e);
            let full = if bare.contains(':') {
                format!("{bare}/128")
            } else {
                format!("{bare}/32")
            };
            add_addr(Some(&net.ns), &full, &peer)?;
        }
        ip(&["netns", "exec", &net.ns, "ip", "link", "set", &peer, "up"])?;
        ip(&["netns", "exec", &net.ns, "ip", "link", "set", "lo", "up"])?;
        net.check_routes()?;
        Ok(net)
    }

    /// Each test host is reached through this veth and nothing else.
    fn check_routes(&self) -> Result<(), String> {
        for host in [RU4, DE4, CN4, KP6, FR6] {
            let out = Command::new("ip")
                .args(["route", "get", host])
                .output()
                .map_err(|e| format!("running ip: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains(&format!("dev {} ", self.veth)) {
                return Err(format!(
                    "{host} is not routed through the test veth {}: {text}",
                    self.veth
                ));
            }
        }
        Ok(())
    }

    /// Make the test host answer every address of an IPv6 `prefix` (a `local` route on its
    /// loopback) and route the prefix to it from this side — after the same overlap checks.
    /// For floods of distinct destinations.
    pub fn answer_prefix_v6(&self, prefix: &str) -> Result<(), String> {
        let net = Net::parse(prefix)?;
        if net.addr.is_ipv4() {
            return Err(format!("{prefix}: an IPv6 prefix is needed"));
        }
        let mine: Vec<Net> = NETWORKS
            .iter()
            .map(|(l, _)| Net::parse(l).map(|n| network_of(&n)))
            .collect::<Result<_, _>>()?;
        if let Some(m) = mine.iter().find(|m| m.overlaps(&net)) {
            return Err(format!("{prefix} overlaps the test network {m}"));
        }
        check_no_overlap(&[net], &machine_network()?)?;
        ip(&[
            "netns", "exec", &self.ns, "ip", "-6", "route", "add", "local", prefix, "dev", "lo",
        ])?;
        ip(&["-6", "route", "add", prefix, "via", KP6, "dev", &self.veth])
    }

    /// The host side of the veth to the test hosts.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn ns(&self) -> &str {
        &self.ns
    }
}

/// The network a `local/len` address sits in.
fn network_of(n: &Net) -> Net {
    let width = if n.addr.is_ipv4() { 32 } else { 128 };
    let shift = width - u32::from(n.len);
    let bits = if shift >= 128 {
        0
    } else {
        (Net::bits(n.addr) >> shift) << shift
    };
    let addr = match n.addr {
        IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(bits.into()),
    };
    Net { addr, len: n.len }
}

fn add_addr(ns: Option<&str>, addr: &str, dev: &str) -> Result<(), String> {
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = ns {
        args.extend(["netns", "exec", ns, "ip"]);
    }
    args.extend(["addr", "add", addr, "dev", dev]);
    if addr.contains(':') {
        args.push("nodad");
    }
    ip(&args)
}

/// Removes test hosts (namespaces `sentinel-test-*`, veths `snt*`) left by a run that died.
fn remove_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("sentinel-test-") {
                eprintln!("test host: removing leftover namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    if let Ok(v) = ip_json(&["-j", "link", "show"]) {
        for link in v.as_array().into_iter().flatten() {
            let name = link["ifname"].as_str().unwrap_or("");
            if name.starts_with("snt") {
                eprintln!("test host: removing leftover link {name}");
                let _ = Command::new("ip").args(["link", "del", name]).output();
            }
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// Start a TCP connection to `addr:port` (a SYN is all the sensor needs; the test host
/// answers with a reset since nothing listens there).
pub fn knock(addr: &str, port: u16) {
    let ip: IpAddr = addr.parse().unwrap();
    let _ = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::new(ip, port),
        Duration::from_secs(2),
    );
}
