//! SSH trust end to end, with a real OpenSSH server and a real `ssh` client: only the peer of
//! an *admin's* authenticated session (root's here) is trusted, and only while the session
//! lasts. Neither a bare TCP connection to the same sshd, nor a non-admin user's own session,
//! nor a forged utmp record naming an address grants anything: the agent still alerts on
//! those addresses and blocks them.
//!
//! The test starts its own sshd (`common::sshd`) listening on this side of the test veth, never
//! the machine's sshd and never port 22. The clients run inside the test host namespace
//! (`TestNet`), so the agent sees connections *from* test host addresses the test GeoIP db puts
//! in Russia. The non-admin is a throwaway account `sntest-<pid>` (`useradd`, in no admin
//! group), deleted on drop even when the test fails. sshd records each pty login in the
//! machine's utmp (`/run/utmp`), and the test adds a forged record there the way `utempter`
//! would (the user's name, a C2 address as host, a pid inside the user's session), ended on
//! drop; it creates the file when the machine lacks it and removes it afterwards.

mod common;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsFd,
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent,
    netns::{RU4, TestNet},
    nft::Table,
    require_root, serial,
    sshd::{ForgedLogin, Sshd, TestUser, Utmp, process_of},
};
use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket},
};

/// This side of the test veth (the "server" the test hosts reach).
const LOCAL4: &str = "198.51.100.1";
/// A second high-risk test host (RU), added to the namespace: the bare TCP connection, and the
/// address the forged utmp record names.
const RU4_BARE: &str = "198.51.100.3";
/// A third (RU): where the non-admin user logs in from.
const RU4_USER: &str = "198.51.100.4";

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

/// Whether geo alert `a` names `addr`: as its own target, or as one it gathered since (the
/// test process's knocks on several hosts are one alert, repeated).
fn geo_names(a: &serde_json::Value, addr: &str) -> bool {
    let gathered = a["targets"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x == addr));
    a["anomaly"] == "geo" && (a["target_ip"] == addr || gathered)
}

/// Geo alerts naming `addr`.
fn geo_alerts_for(agent: &Agent, addr: &str) -> Vec<serde_json::Value> {
    agent
        .events("alert")
        .into_iter()
        .filter(|a| geo_names(a, addr))
        .collect()
}

/// Every set of trusted SSH peers the agent logged so far.
fn peer_sets(agent: &Agent) -> Vec<String> {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("authenticated SSH peers (trusted) changed"))
        .map(str::to_string)
        .collect()
}

/// Wait until the agent has re-read the sessions at least `rounds` times since it first saw
/// `user`'s session from `peer` (and declined it, not being in `trust.ssh_users`).
fn wait_declined(agent: &Agent, user: &str, peer: &str, rounds: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = agent.log();
        let seen = log
            .lines()
            .filter(|l| {
                l.contains("SSH session of a user not in trust.ssh_users")
                    && l.contains(user)
                    && l.contains(peer)
            })
            .count();
        if seen >= rounds {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never saw {user}'s session from {peer} {rounds} times; its log:\n{log}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Knock on `addr` until a geo alert names it, then wait for a decision to auto-block it (an
/// alert of the same process tree may fold into an earlier one's id: the decision is found by
/// its targets).
fn alert_and_block(agent: &Agent, addr: &str, first_port: u16, what: &str) {
    knock_until(agent, addr, first_port, "alert", what, |a, _| {
        geo_names(a, addr)
    });
    agent.wait_for("decision", &format!("{addr} auto-blocked"), |d| {
        d["state"] == "auto-blocked"
            && d["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == addr))
    });
}

#[test]
fn only_an_admins_ssh_session_is_trusted_and_only_while_it_lasts() {
    if !require_root("only_an_admins_ssh_session_is_trusted_and_only_while_it_lasts") {
        return;
    }
    let _serial = serial();
    let net =
        TestNet::try_new("t", &[RU4_BARE, RU4_USER]).unwrap_or_else(|e| panic!("test host: {e}"));
    let _utmp = Utmp::ensure();
    let user = TestUser::create();
    let table = Table::new("trust");
    let sshd = Sshd::start(LOCAL4);
    // trust.ssh_users at its default: root and the sudo/admin/wheel groups.
    let agent = Agent::start_with("", &config(&table, sshd.port));
    let me = std::process::id();

    // Someone opens a TCP connection to sshd and sits there, unauthenticated.
    let sshd_addr = SocketAddr::new(LOCAL4.parse().unwrap(), sshd.port);
    let _bare = bare_connect(net.ns(), RU4_BARE, sshd_addr);
    sshd.wait_log(&format!("Connection from {RU4_BARE}"));
    // An admin (root) logs in with a key from another address in the same high-risk country.
    let session = sshd.login(net.ns(), RU4, "root");
    // A non-admin logs in too, from a third one: sshd records that login in utmp.
    let _user_session = sshd.login(net.ns(), RU4_USER, &user.name);
    // And forges a login record for the bare connection's address, with a pid inside its own
    // session (what the agent trusted before: record + process below sshd + connection up).
    let inside = process_of(user.uid, "sleep");
    let _forged = ForgedLogin::write(&user.name, RU4_BARE, inside);

    // The agent has seen the non-admin's session and declined it, twice (so a refresh with
    // the forged record in place is over too), and only the admin's session counts.
    wait_declined(&agent, &user.name, RU4_USER, 2);
    wait_peers(&agent, &format!("{{{RU4}}}"));
    for line in peer_sets(&agent) {
        assert!(
            !line.contains(RU4_USER) && !line.contains(RU4_BARE),
            "trusted at some point: {line}"
        );
    }

    // This host connects to all three: the admin's peer is trusted, the others are not.
    knock_until(
        &agent,
        RU4,
        9201,
        "connect",
        "to the admin's peer",
        |c, port| c["daddr"] == RU4 && c["dport"] == port && c["pid"] == me,
    );
    alert_and_block(&agent, RU4_BARE, 9221, "on the bare connection's peer");
    alert_and_block(&agent, RU4_USER, 9281, "on the non-admin's peer");
    let mut blocked: Vec<String> = table.elements("block4").into_iter().map(|e| e.0).collect();
    blocked.sort();
    assert_eq!(
        blocked,
        [RU4_BARE, RU4_USER],
        "only the addresses without an admin's session are blocked"
    );
    // Geo alerts only: sshd's re-exec'd connection child holds the client's socket on its
    // stdin, which other detectors may read as they will; whatever they decide, the peer of a
    // live admin session is never blocked (checked above and below).
    assert!(
        geo_alerts_for(&agent, RU4).is_empty(),
        "the admin's peer was alerted on: {:?}",
        geo_alerts_for(&agent, RU4)
    );
    // Still trusted later in the session (and still not in any block).
    knock_until(
        &agent,
        RU4,
        9241,
        "connect",
        "to the admin's peer again",
        |c, port| c["daddr"] == RU4 && c["dport"] == port && c["pid"] == me,
    );
    assert!(geo_alerts_for(&agent, RU4).is_empty());
    let blocked: Vec<String> = table.elements("block4").into_iter().map(|e| e.0).collect();
    assert!(
        !blocked.iter().any(|b| b == RU4),
        "the admin's peer was blocked"
    );

    // The session ends: so does the trust.
    drop(session);
    wait_peers(&agent, "{}");
    knock_until(
        &agent,
        RU4,
        9261,
        "alert",
        "on the peer once logged out",
        |a, _| geo_names(a, RU4),
    );
}
