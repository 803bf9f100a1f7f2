//! End-to-end test of the gate's promise that a block never locks an admin out: with
//! `trust.ssh_ports` set, a blocked address can still open a connection *in* to a listener on
//! an SSH port of this host, while connections in to any other port and out to it stay
//! dropped. Real nftables (the agent's own table, deleted on drop); the client runs inside the
//! test host's network namespace. Must be run as root.

mod common;

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use common::{
    Agent,
    netns::{DE4, TestNet, knock},
    nft::Table,
    require_root, serial,
};

/// This side's address on the test host's network.
const HERE: &str = "198.51.100.129";
const SSH_PORT: u16 = 9822;
const OTHER_PORT: u16 = 9823;

/// Whether the test host, from inside its namespace, completes a TCP handshake with
/// `HERE:port` within 3 s.
fn connects_in(net: &TestNet, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{HERE}/{port}");
    Command::new("ip")
        .args([
            "netns",
            "exec",
            net.ns(),
            "timeout",
            "3",
            "bash",
            "-c",
            &script,
        ])
        .status()
        .unwrap()
        .success()
}

/// Whether an outbound connection to `addr:port` gets any answer (a reset counts).
fn reaches_out(addr: &str, port: u16) -> bool {
    let ip: IpAddr = addr.parse().unwrap();
    match TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(1500)) {
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
    }
}

/// Accept (and drop) every connection to `port` on this side, on a thread.
fn listen(port: u16) {
    let l = TcpListener::bind((HERE, port)).unwrap();
    std::thread::spawn(move || for _ in l.incoming() {});
}

#[test]
fn a_blocked_address_can_still_reach_the_ssh_port_and_nothing_else() {
    if !require_root("a_blocked_address_can_still_reach_the_ssh_port_and_nothing_else") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("g");
    let table = Table::new("guard_ssh");
    // DE is made high-risk here, so a connection to the test host opens a decision.
    let agent = Agent::start_with(
        "",
        &format!(
            "high_risk_countries = [\"DE\"]\n[switch]\ncountdown = \"5m\"\n[enforce]\n\
             table = \"{}\"\nconnect_guard = false\n[trust]\nssh_ports = [{SSH_PORT}]\n",
            table.0
        ),
    );
    listen(SSH_PORT);
    listen(OTHER_PORT);
    // The decision first: the clients below, run in the test host's namespace, connect to
    // this side's address (which the gate refuses as one of this host's own).
    knock(DE4, 9801);
    let d = agent.wait_for("decision", &format!("pending for {DE4}"), |d| {
        d["target_ip"] == DE4 && d["state"] == "pending"
    });
    let out = agent.cli(&["block", d["id"].as_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let els = table.elements("block4");
    assert!(els.iter().any(|(a, _)| a == DE4), "{els:?}");
    assert!(!els.iter().any(|(a, _)| a == HERE), "{els:?}");

    assert!(connects_in(&net, SSH_PORT), "in to the SSH port must pass");
    assert!(
        !connects_in(&net, OTHER_PORT),
        "in to another port must be dropped"
    );
    assert!(
        !reaches_out(DE4, 9802),
        "out to the blocked address must be dropped"
    );
    // The accept rule sits in the agent's own table only.
    let rules = Command::new("nft")
        .args(["list", "table", "inet", &table.0])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains(&format!("tcp dport {SSH_PORT} accept")),
        "{rules}"
    );
}
