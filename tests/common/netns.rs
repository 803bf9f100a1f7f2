//! A test host in its own network namespace, reached over a veth pair, holding addresses in
//! the documentation ranges (never any other address). Removed on drop, even on failure.

use std::process::Command;

/// Addresses on the test host's side; the test GeoIP database gives each range a country.
pub const HOST_ADDRS: [&str; 5] = [
    "192.0.2.2/24",
    "198.51.100.2/24",
    "203.0.113.2/24",
    "2001:db8:1::2/64",
    "2001:db8:2::2/64",
];
/// The same ranges on this side of the veth.
const LOCAL_ADDRS: [&str; 5] = [
    "192.0.2.1/24",
    "198.51.100.1/24",
    "203.0.113.1/24",
    "2001:db8:1::1/64",
    "2001:db8:2::1/64",
];

pub struct TestNet {
    ns: String,
    veth: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNet {
    /// Create the namespace and the veth pair; `tag` keeps concurrent test binaries apart.
    pub fn new(tag: &str) -> TestNet {
        let id = format!("{}{}", tag, std::process::id() % 100_000);
        let net = TestNet {
            ns: format!("sentinel-test-{id}"),
            veth: format!("snt{id}"),
        };
        let peer = format!("snp{id}");
        let _ = Command::new("ip").args(["netns", "del", &net.ns]).output();
        let _ = Command::new("ip").args(["link", "del", &net.veth]).output();
        ip(&["netns", "add", &net.ns]);
        ip(&[
            "link", "add", &net.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &net.ns]);
        for a in LOCAL_ADDRS {
            let fam = if a.contains(':') { "-6" } else { "-4" };
            if fam == "-6" {
                ip(&[fam, "addr", "add", a, "dev", &net.veth, "nodad"]);
            } else {
                ip(&[fam, "addr", "add", a, "dev", &net.veth]);
            }
        }
        ip(&["link", "set", &net.veth, "up"]);
        for a in HOST_ADDRS {
            let mut args = vec![
                "netns", "exec", &net.ns, "ip", "addr", "add", a, "dev", &peer,
            ];
            if a.contains(':') {
                args.push("nodad");
            }
            ip(&args);
        }
        ip(&["netns", "exec", &net.ns, "ip", "link", "set", &peer, "up"]);
        ip(&["netns", "exec", &net.ns, "ip", "link", "set", "lo", "up"]);
        net
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
    let ip: std::net::IpAddr = addr.parse().unwrap();
    let _ = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::new(ip, port),
        std::time::Duration::from_secs(2),
    );
}
