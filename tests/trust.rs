//! SSH trust end to end, with a real OpenSSH server and a real `ssh` client: only the peer of
//! an *authenticated* session is trusted, and only while the session lasts. A bare TCP
//! connection to the same sshd from another high-risk address grants nothing: the agent still
//! alerts on it and blocks it.
//!
//! The test starts its own `sshd -D -f <tmp>/sshd_config` (own host key, port, authorized
//! keys, pid file; `UsePAM no`) listening on this side of the test veth, never the machine's
//! sshd and never port 22. The clients run inside the test host namespace (`TestNet`), so the
//! agent sees connections *from* test host addresses the test GeoIP db puts in Russia.
//! sshd records the login in the machine's utmp (`/run/utmp`), as it does for every pty
//! session; the test creates that file when the machine lacks it and removes it afterwards.

mod common;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::{fd::AsFd, unix::fs::PermissionsExt},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent,
    netns::{RU4, TestNet},
    nft::Table,
    require_root, serial,
};
use nix::{
    sched::{CloneFlags, setns},
    sys::{
        signal::{Signal, kill},
        socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket},
    },
    unistd::Pid,
};

/// This side of the test veth (the "server" the test hosts reach).
const LOCAL4: &str = "198.51.100.1";
/// A second high-risk test host (RU), added to the namespace: the bare TCP connection.
const RU4_BARE: &str = "198.51.100.3";

/// Kill `pid` and every process below it (sshd's session processes start sessions of their
/// own, so a process group would miss them).
fn kill_tree(pid: u32) {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
            if ppid == parent && !pids.contains(&child) {
                pids.push(child);
            }
        }
        i += 1;
    }
    for p in pids {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
}

/// A child process killed (with its descendants) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        kill_tree(self.0.id());
        let _ = self.0.wait();
    }
}

/// `/run/utmp`, created (as systemd-tmpfiles does at boot) when the machine has none, and
/// removed again on drop in that case.
struct Utmp {
    created: bool,
}

impl Utmp {
    const PATH: &str = "/run/utmp";

    fn ensure() -> Utmp {
        if Path::new(Self::PATH).exists() {
            return Utmp { created: false };
        }
        fs::write(Self::PATH, b"").unwrap();
        fs::set_permissions(Self::PATH, fs::Permissions::from_mode(0o664)).unwrap();
        Utmp { created: true }
    }
}

impl Drop for Utmp {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(Self::PATH);
        }
    }
}

/// The test's own OpenSSH server and the client key it accepts.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    _proc: Proc,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path));
}

/// A port free on [`LOCAL4`] right now.
fn free_port() -> u16 {
    let l = TcpListener::bind((LOCAL4, 0)).unwrap();
    l.local_addr().unwrap().port()
}

impl Sshd {
    fn start() -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "openssh-server is not installed (scripts/setup.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd's privilege-separation directory (Debian's unit creates it at start).
        fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        assert_ne!(port, 22);
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress {LOCAL4}\nHostKey {host}\n\
                 AuthorizedKeysFile {keys}\nPidFile {pid}\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUseDNS no\nPrintMotd no\nLogLevel VERBOSE\n",
                host = d.join("host_key").display(),
                keys = d.join("authorized_keys").display(),
                pid = d.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let log = d.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let sshd = Sshd {
            dir,
            port,
            _proc: Proc(child),
        };
        sshd.wait_log("Server listening");
        sshd
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "sshd log has no {what:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A logged-in session from `src` inside `ns`: `ssh -tt` (a pty, so sshd records the
    /// login) running `sleep` on the server until dropped.
    fn login(&self, ns: &str, src: &str) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "ssh", "-tt", "-F", "/dev/null", "-i"])
            .arg(self.dir.path().join("client_key"))
            .args(["-p", &self.port.to_string(), "-b", src])
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("root@{LOCAL4}"))
            .args(["sleep", "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Proc(child);
        self.wait_log(&format!("Accepted publickey for root from {src}"));
        p
    }
}

/// A bare TCP connection to `to` from `src`, made inside namespace `ns` (no SSH at all: what
/// anyone on the internet can open).
fn bare_connect(ns: &str, src: &str, to: SocketAddr) -> TcpStream {
    let ns_file = fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let src: Ipv4Addr = src.parse().unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    // setns changes only the calling thread's namespace: do it on a thread of its own.
    thread::spawn(move || {
        setns(ns_file.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(src, 0)),
        )
        .unwrap();
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).unwrap();
        TcpStream::from(fd)
    })
    .join()
    .unwrap()
}

/// Connect from this host to `addr` on fresh ports (from `first_port`) until the agent has
/// stored an event of `kind` that `pred` accepts for that port. On this busy shared machine a
/// record can be lost to a full ring buffer: that costs a retry, not the test. Connection
/// errors other than a reset are kept for the failure message (another agent's connect
/// guard refusing the address, say).
fn knock_until(
    agent: &Agent,
    addr: &str,
    first_port: u16,
    kind: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value, u16) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut errors = Vec::new();
    for port in first_port.. {
        let to = SocketAddr::new(addr.parse().unwrap(), port);
        if let Err(e) = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            && e.kind() != std::io::ErrorKind::ConnectionRefused
        {
            errors.push(format!("{port}: {e}"));
        }
        let round = Instant::now() + Duration::from_secs(2);
        while Instant::now() < round {
            if let Some(ev) = agent.events(kind).into_iter().find(|e| pred(e, port)) {
                return ev;
            }
            thread::sleep(Duration::from_millis(200));
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event {what} within 20 s; connect errors: {errors:?}\nagent log:\n{}",
            agent.log()
        );
    }
    unreachable!()
}

/// The agent's sensors are host-wide, so they also see the clients in the namespace connect
/// to [`LOCAL4`], which the test GeoIP db puts in Russia too: that address is trusted, as a
/// host's own address would be.
fn config(table: &Table, ssh_port: u16) -> String {
    format!(
        "[trust]\nips = [\"{LOCAL4}\"]\nssh_ports = [{ssh_port}]\n[switch]\ncountdown = \"3s\"\n\
         [enforce]\ntable = \"{}\"\nconnect_guard = false\n",
        table.0
    )
}

/// Wait until the agent logs its trusted SSH peers as exactly `peers` (Debug of the set).
fn wait_peers(agent: &Agent, peers: &str) {
    let line = format!("authenticated SSH peers (trusted) changed peers={peers}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = agent.log();
        let last = log
            .lines()
            .rfind(|l| l.contains("authenticated SSH peers"))
            .unwrap_or_default();
        if last.contains(&line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never trusted exactly {peers}; its log:\n{log}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Geo alerts naming `addr`.
fn geo_alerts_for(agent: &Agent, addr: &str) -> Vec<serde_json::Value> {
    agent
        .events("alert")
        .into_iter()
        .filter(|a| a["target_ip"] == addr && a["anomaly"] == "geo")
        .collect()
}

#[test]
fn only_an_authenticated_ssh_session_is_trusted_and_only_while_it_lasts() {
    if !require_root("only_an_authenticated_ssh_session_is_trusted_and_only_while_it_lasts") {
        return;
    }
    let _serial = serial();
    let net = TestNet::try_new("t", &[RU4_BARE]).unwrap_or_else(|e| panic!("test host: {e}"));
    let _utmp = Utmp::ensure();
    let table = Table::new("trust");
    let sshd = Sshd::start();
    let agent = Agent::start_with("", &config(&table, sshd.port));
    let me = std::process::id();

    // Someone opens a TCP connection to sshd and sits there, unauthenticated.
    let sshd_addr = SocketAddr::new(LOCAL4.parse().unwrap(), sshd.port);
    let _bare = bare_connect(net.ns(), RU4_BARE, sshd_addr);
    sshd.wait_log(&format!("Connection from {RU4_BARE}"));
    // An operator logs in with a key from another address in the same high-risk country.
    let session = sshd.login(net.ns(), RU4);
    // The agent has re-read the sessions with both connections up: only the login counts.
    wait_peers(&agent, &format!("{{{RU4}}}"));

    // This host connects to both: the logged-in peer is trusted, the bare one is not.
    knock_until(
        &agent,
        RU4,
        9201,
        "connect",
        "to the logged-in peer",
        |c, port| c["daddr"] == RU4 && c["dport"] == port && c["pid"] == me,
    );
    let alert = knock_until(
        &agent,
        RU4_BARE,
        9221,
        "alert",
        "on the bare connection's peer",
        |a, _| a["target_ip"] == RU4_BARE && a["anomaly"] == "geo",
    );
    let id = alert["id"].as_str().unwrap().to_string();
    agent.wait_for("decision", "auto-blocked", |d| {
        d["id"] == id.as_str() && d["state"] == "auto-blocked"
    });
    let blocked: Vec<String> = table.elements("block4").into_iter().map(|e| e.0).collect();
    assert_eq!(
        blocked,
        [RU4_BARE],
        "only the unauthenticated peer is blocked"
    );
    // Geo alerts only: sshd's re-exec'd connection child holds the client's socket on its
    // stdin, which other detectors may read as they will; whatever they decide, the peer of a
    // live authenticated session is never blocked (checked above and below).
    assert!(
        geo_alerts_for(&agent, RU4).is_empty(),
        "the logged-in peer was alerted on: {:?}",
        geo_alerts_for(&agent, RU4)
    );
    // Still trusted later in the session (and still not in any block).
    knock_until(
        &agent,
        RU4,
        9241,
        "connect",
        "to the logged-in peer again",
        |c, port| c["daddr"] == RU4 && c["dport"] == port && c["pid"] == me,
    );
    assert!(geo_alerts_for(&agent, RU4).is_empty());
    let blocked: Vec<String> = table.elements("block4").into_iter().map(|e| e.0).collect();
    assert_eq!(blocked, [RU4_BARE], "the logged-in peer was blocked");

    // The session ends: so does the trust.
    drop(session);
    wait_peers(&agent, "{}");
    knock_until(
        &agent,
        RU4,
        9261,
        "alert",
        "on the peer once logged out",
        |a, _| a["target_ip"] == RU4 && a["anomaly"] == "geo",
    );
}
