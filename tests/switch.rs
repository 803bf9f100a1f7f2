//! End-to-end tests of the dead man's switch with real nftables: a connection to a test host
//! (network namespace, documentation range the test GeoIP database puts in a high-risk
//! country) opens a pending decision; silence blocks it, a human's `safe` or `block` decides
//! it; blocks survive restarts and `kill -9`; `unblock` restores connectivity; dry-run touches
//! nothing. Each test uses its own nftables table and removes it, even on failure.

mod common;

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, SystemTime},
};

use common::{
    Agent,
    netns::{TestNet, knock},
    nft::Table,
    require_root, serial,
};
use serde_json::Value;

/// These tests' web server is a copy of the shell named `node` that never listens: name it a
/// server daemon (by name) instead of making it accept connections.
const NODE_BY_NAME: &str = "[lineage]\nweb_servers = [\"node\"]\n";

fn config(table: &Table, countdown: &str, extra: &str) -> String {
    format!(
        "[switch]\ncountdown = \"{countdown}\"\n[enforce]\ntable = \"{}\"\nconnect_guard = false\n{extra}\n",
        table.0
    )
}

/// How a connection attempt to the test host ends.
#[derive(Debug, PartialEq)]
enum Reach {
    /// The host answered (a reset: nothing listens there).
    Reachable,
    /// No answer: dropped.
    Dropped,
    /// Refused before leaving (the in-kernel connect guard).
    Denied,
}

fn reach(addr: &str, port: u16) -> Reach {
    let ip: IpAddr = addr.parse().unwrap();
    match TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(1500)) {
        Ok(_) => Reach::Reachable,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Reach::Reachable,
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            Reach::Dropped
        }
        Err(e) if e.raw_os_error() == Some(libc_eperm()) => Reach::Denied,
        Err(e) => panic!("unexpected connect error to {addr}: {e:?}"),
    }
}

fn libc_eperm() -> i32 {
    1
}

/// Whether `addr` is a test host's: only this test's own processes reach those (their network
/// namespace is the test's), so what other processes on the machine make the agent decide
/// never counts here.
fn test_host(addr: &str) -> bool {
    addr.starts_with("198.51.100.") || addr.starts_with("2001:db8:")
}

/// The open decisions on test hosts.
fn pending(agent: &Agent) -> Vec<Value> {
    let mut p = agent.json_lines(&["pending", "--json"]);
    p.retain(|d| d["target_ip"].as_str().is_some_and(test_host));
    p
}

/// The blocks of test hosts.
fn blocks(agent: &Agent) -> Vec<Value> {
    let mut b = agent.json_lines(&["blocks", "--json"]);
    b.retain(|d| d["addr"].as_str().is_some_and(test_host));
    b
}

/// The elements of `set` in the agent's table that are test hosts.
fn elements(table: &Table, set: &str) -> Vec<(String, Option<u64>)> {
    let mut els = table.elements(set);
    els.retain(|(addr, _)| test_host(addr));
    els
}

/// The decision events about test hosts.
fn decisions(agent: &Agent) -> Vec<Value> {
    let mut d = agent.events("decision");
    d.retain(|d| d["target_ip"].as_str().is_some_and(test_host));
    d
}

/// Knock on `addr` and wait for the pending decision it opens.
fn open_decision(agent: &Agent, addr: &str, port: u16) -> Value {
    knock(addr, port);
    agent.wait_for("decision", &format!("pending for {addr}"), |d| {
        d["target_ip"] == addr && d["state"] == "pending"
    })
}

fn ts(v: &Value, key: &str) -> SystemTime {
    humantime::parse_rfc3339(v[key].as_str().unwrap()).unwrap()
}

#[test]
fn silence_auto_blocks_the_target_and_only_it() {
    if !require_root("silence_auto_blocks_the_target_and_only_it") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("a");
    let table = Table::new("auto");
    let agent = Agent::start_with("", &config(&table, "2s", ""));
    let d = open_decision(&agent, "198.51.100.2", 9101);
    let id = d["id"].as_str().unwrap().to_string();
    // The alert says so too, and `pending` lists it with its countdown.
    let alert = agent.wait_for("alert", "in state pending", |a| {
        a["id"] == id.as_str() && a["state"] == "pending"
    });
    assert!(alert["deadline"].is_string(), "{alert}");
    let p = pending(&agent);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0]["id"], id.as_str());
    assert_eq!(p[0]["target_ip"], "198.51.100.2");
    assert!(p[0]["seconds_left"].as_u64().unwrap() <= 2, "{p:?}");

    let ended = agent.wait_for("decision", "auto-blocked", |d| {
        d["id"] == id.as_str() && d["state"] == "auto-blocked"
    });
    assert_eq!(ended["decided_by"], "timer", "{ended}");
    let els = elements(&table, "block4");
    assert_eq!(els.len(), 1, "{els:?}");
    assert_eq!(els[0].0, "198.51.100.2");
    assert_eq!(
        els[0].1,
        Some(86_400),
        "element timeout = enforce.block_ttl: {els:?}"
    );
    assert_eq!(reach("198.51.100.2", 9102), Reach::Dropped);
    assert_eq!(
        reach("198.51.100.130", 9103),
        Reach::Reachable,
        "another host was cut off"
    );
    let b = blocks(&agent);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(
        (b[0]["addr"].as_str(), b[0]["decision_id"].as_str()),
        (Some("198.51.100.2"), Some(id.as_str()))
    );
    assert_eq!(b[0]["in_kernel"], true, "{b:?}");
    agent.wait_for("alert", "in state auto-blocked", |a| {
        a["id"] == id.as_str() && a["state"] == "auto-blocked"
    });
    assert_eq!(
        (pending(&agent).len(), blocks(&agent).len()),
        (0, 1),
        "{:?} {:?}",
        pending(&agent),
        blocks(&agent)
    );
}

#[test]
fn safe_before_the_deadline_means_no_block() {
    if !require_root("safe_before_the_deadline_means_no_block") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("s");
    let table = Table::new("safe");
    let agent = Agent::start_with("", &config(&table, "3s", ""));
    let d = open_decision(&agent, "198.51.100.2", 9201);
    let id = d["id"].as_str().unwrap();
    let out = agent.cli(&["safe", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("safe"));
    thread::sleep(Duration::from_secs(4)); // past the deadline
    assert!(elements(&table, "block4").is_empty());
    assert_eq!(reach("198.51.100.2", 9202), Reach::Reachable);
    let decisions = agent.events("decision");
    let states: Vec<&str> = decisions
        .iter()
        .filter(|d| d["id"] == id)
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", "safe"], "{decisions:?}");
    // Answering again, or an unknown id, is a clear error that changes nothing.
    let again = agent.cli(&["block", id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already ended: safe"));
    let unknown = agent.cli(&["safe", "nosuchid"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no decision with id nosuchid"));
    assert!(elements(&table, "block4").is_empty());
    // Marked safe: the same target raises nothing new for switch.safe_ttl.
    knock("198.51.100.2", 9203);
    knock("198.51.100.130", 9204); // processed after it: a marker
    agent.wait_for("connect", "marker", |c| {
        c["daddr"] == "198.51.100.130" && c["dport"] == 9204
    });
    // (Other processes on the machine may raise alerts of their own: only ours count.)
    let ours: Vec<Value> = agent
        .events("alert")
        .into_iter()
        .filter(|a| a["pid"] == std::process::id())
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
}

#[test]
fn confirm_block_over_ipv4_and_ipv6_then_unblock() {
    if !require_root("confirm_block_over_ipv4_and_ipv6_then_unblock") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("b");
    let table = Table::new("block");
    let agent = Agent::start_with("", &config(&table, "5m", ""));
    for (addr, set, port) in [
        ("198.51.100.2", "block4", 9301),
        ("2001:db8:1::2", "block6", 9302),
    ] {
        let d = open_decision(&agent, addr, port);
        let id = d["id"].as_str().unwrap();
        let out = agent.cli(&["block", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The command returns once the element is in the kernel.
        let els = elements(&table, set);
        assert!(els.iter().any(|(a, t)| a == addr && t.is_some()), "{els:?}");
        assert_eq!(reach(addr, port + 10), Reach::Dropped);
        let d = agent.wait_for("decision", "blocked", |d| {
            d["id"] == id && d["state"] == "blocked"
        });
        assert_eq!(d["decided_by"], "cli");
    }
    assert_eq!(reach("198.51.100.130", 9310), Reach::Reachable);
    assert_eq!(reach("2001:db8:2::2", 9311), Reach::Reachable);

    // Unblock through the agent…
    let out = agent.cli(&["unblock", "198.51.100.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(elements(&table, "block4").is_empty());
    assert_eq!(reach("198.51.100.2", 9320), Reach::Reachable);
    // …and with the agent down.
    let mut agent = agent;
    assert!(agent.stop().success());
    assert_eq!(
        elements(&table, "block6").len(),
        1,
        "blocks stay in force while the agent is stopped"
    );
    let out = agent.cli(&["unblock", "2001:db8:1::2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(elements(&table, "block6").is_empty());
    assert_eq!(reach("2001:db8:1::2", 9321), Reach::Reachable);
    let out = agent.cli(&["unblock", "2001:db8:1::2"]);
    assert!(
        !out.status.success(),
        "unblocking twice should say it is not blocked"
    );
    let out = agent.cli(&["unblock", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn trusted_address_is_never_blocked() {
    if !require_root("trusted_address_is_never_blocked") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("t");
    let table = Table::new("trust");
    let agent = Agent::start_with(
        "",
        &format!(
            "{}[trust]\nips = [\"198.51.100.0/25\"]\n",
            config(&table, "1s", "")
        ),
    );
    knock("198.51.100.2", 9401);
    knock("198.51.100.130", 9402);
    agent.wait_for("connect", "marker", |c| {
        c["daddr"] == "198.51.100.130" && c["dport"] == 9402
    });
    thread::sleep(Duration::from_secs(2));
    assert!(
        !agent
            .events("alert")
            .iter()
            .any(|a| a["pid"] == std::process::id())
    );
    assert!(decisions(&agent).is_empty());
    assert!(elements(&table, "block4").is_empty());
    assert_eq!(reach("198.51.100.2", 9403), Reach::Reachable);
}

#[test]
fn kill_9_during_the_countdown_keeps_the_original_deadline() {
    if !require_root("kill_9_during_the_countdown_keeps_the_original_deadline") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("k");
    let table = Table::new("kill");
    // Long enough that a restart on a loaded machine (programs loaded, store opened) ends
    // well before the deadline.
    let mut agent = Agent::start_with("", &config(&table, "15s", ""));
    let d = open_decision(&agent, "198.51.100.2", 9501);
    let id = d["id"].as_str().unwrap().to_string();
    let deadline = ts(&d, "deadline");
    agent.kill9();
    thread::sleep(Duration::from_millis(500));
    agent.spawn();
    let p = pending(&agent);
    assert_eq!(
        p.len(),
        1,
        "the pending decision did not survive kill -9: {p:?}"
    );
    assert_eq!(p[0]["deadline"], d["deadline"]);
    let ended = agent.wait_for("decision", "auto-blocked after restart", |x| {
        x["id"] == id.as_str() && x["state"] == "auto-blocked"
    });
    let at = ts(&ended, "ts");
    // `deadline` is printed to the second: the block lands in [deadline, deadline + 1 s] plus
    // the switch's 100 ms tick.
    let late = at
        .duration_since(deadline)
        .unwrap_or_else(|e| panic!("blocked {:?} early", e.duration()));
    assert!(
        late < Duration::from_millis(2000),
        "blocked {late:?} after the deadline"
    );
    assert_eq!(elements(&table, "block4").len(), 1);

    // A deadline that passes while the agent is down is enforced at start.
    let d2 = open_decision(&agent, "2001:db8:1::2", 9502);
    let id2 = d2["id"].as_str().unwrap().to_string();
    agent.kill9();
    let deadline2 = ts(&d2, "deadline");
    while SystemTime::now() < deadline2 + Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(200));
    }
    agent.spawn();
    agent.wait_for("decision", "auto-blocked at start", |x| {
        x["id"] == id2.as_str() && x["state"] == "auto-blocked"
    });
    assert_eq!(elements(&table, "block6").len(), 1);
}

#[test]
fn blocks_are_reasserted_at_start() {
    if !require_root("blocks_are_reasserted_at_start") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("r");
    let table = Table::new("reassert");
    let mut agent = Agent::start_with("", &config(&table, "5m", ""));
    let d = open_decision(&agent, "198.51.100.2", 9601);
    assert!(
        agent
            .cli(&["block", d["id"].as_str().unwrap()])
            .status
            .success()
    );
    assert!(agent.stop().success());
    // Stopping removed nothing.
    assert_eq!(elements(&table, "block4").len(), 1);
    // The element vanishes behind the agent's back (a flush, a reboot without the table)…
    table.delete_element("block4", "198.51.100.2");
    table.delete();
    agent.spawn();
    // …and is back after the start, with its remaining time.
    let els = elements(&table, "block4");
    assert_eq!(els.len(), 1, "{els:?}");
    let (addr, timeout) = &els[0];
    assert_eq!(addr, "198.51.100.2");
    let t = timeout.unwrap();
    assert!(
        (86_300..=86_400).contains(&t),
        "timeout {t} is not the remaining time"
    );
    assert_eq!(reach("198.51.100.2", 9602), Reach::Dropped);
}

#[test]
fn dry_run_records_and_touches_nothing() {
    if !require_root("dry_run_records_and_touches_nothing") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("d");
    let table = Table::new("dry");
    let agent = Agent::start_with("", &config(&table, "1s", "mode = \"dry-run\""));
    let d = open_decision(&agent, "198.51.100.2", 9701);
    let id = d["id"].as_str().unwrap();
    let ended = agent.wait_for("decision", "auto-blocked (dry run)", |x| {
        x["id"] == id && x["state"] == "auto-blocked"
    });
    assert!(
        ended["reason"].as_str().unwrap().contains("dry-run"),
        "{ended}"
    );
    assert!(!table.exists(), "dry-run created the table");
    assert!(blocks(&agent).is_empty());
    assert_eq!(reach("198.51.100.2", 9702), Reach::Reachable);
}

#[test]
fn connect_guard_refuses_blocked_addresses_in_the_kernel() {
    if !require_root("connect_guard_refuses_blocked_addresses_in_the_kernel") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("c");
    let table = Table::new("guard");
    let sections = format!(
        "[switch]\ncountdown = \"5m\"\n[enforce]\ntable = \"{}\"\nconnect_guard = true\n",
        table.0
    );
    let agent = Agent::start_with("", &sections);
    assert!(
        agent.log().contains("connect guard attached"),
        "{}",
        agent.log()
    );
    for (addr, port) in [("198.51.100.2", 9801), ("2001:db8:1::2", 9802)] {
        let d = open_decision(&agent, addr, port);
        assert!(
            agent
                .cli(&["block", d["id"].as_str().unwrap()])
                .status
                .success()
        );
        // Refused at connect(), before a packet leaves.
        assert_eq!(reach(addr, port + 10), Reach::Denied, "{addr}");
    }
    assert_eq!(reach("198.51.100.130", 9810), Reach::Reachable);
    assert!(agent.cli(&["unblock", "198.51.100.2"]).status.success());
    assert_eq!(reach("198.51.100.2", 9811), Reach::Reachable);
    // Stopping the agent detaches the guard; nftables still drops.
    let mut agent = agent;
    assert!(agent.stop().success());
    assert_eq!(reach("2001:db8:1::2", 9812), Reach::Dropped);
}

/// Whether `pid` is gone (or a zombie) within `within`.
fn gone(pid: u32, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        if stat.is_empty() || state == Some("Z") {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_terminates_the_shell_tree_and_escalates_on_respawn() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root("kill_terminates_the_shell_tree_and_escalates_on_respawn") {
        return;
    }
    let _serial = serial();
    let table = Table::new("killer");
    let sections = format!(
        "[enforce]\ntable = \"{}\"\nconnect_guard = false\nkill = true\nkill_grace = \"1s\"\n\
         [miner]\ncpu_percent = 100000\n[node_abuse]\ncpu_percent = 100000\n{NODE_BY_NAME}",
        table.0
    );
    // (This agent kills for real: the CPU kills of `miner` and `node_abuse` are kept out of
    // reach of other processes on the machine.)
    let agent = Agent::start_with("", &sections);
    let node = agent.dir.path().join("node");
    std::fs::copy("/bin/sh", &node).unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();

    // A web server runs a shell once: the shell and its child die, the server lives.
    let mut server = Command::new(&node)
        .args(["-c", "/bin/sh -c 'sleep 60; true'; sleep 60"])
        .spawn()
        .unwrap();
    let alert = agent.wait_for("alert", "lineage", |a| a["anomaly"] == "lineage");
    let shell = alert["pid"].as_u64().unwrap() as u32;
    assert!(
        gone(shell, Duration::from_secs(5)),
        "the shell {shell} survived"
    );
    assert!(
        !gone(server.id(), Duration::from_millis(300)),
        "the web server was killed too"
    );
    let st = agent.status();
    assert!(st["kills"].as_u64().unwrap() >= 1, "{st}");
    let _ = server.kill();
    let _ = server.wait();

    // A web server that respawns its shell: after the first kill, the respawner goes.
    let mut respawner = Command::new(&node)
        .args(["-c", "while :; do /bin/sh -c 'sleep 60; true'; done"])
        .spawn()
        .unwrap();
    let pid = respawner.id();
    let died = gone(pid, Duration::from_secs(10));
    let _ = respawner.kill();
    let _ = respawner.wait();
    assert!(
        died,
        "the respawning parent {pid} was not terminated:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("escalated") || agent.log().contains("respawned"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_shell_under_a_web_server_gets_its_decision_when_it_connects_out() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root("a_shell_under_a_web_server_gets_its_decision_when_it_connects_out") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("l");
    let table = Table::new("lineage");
    let sections = format!("{}{NODE_BY_NAME}", config(&table, "5m", ""));
    let agent = Agent::start_with("", &sections);
    let node = agent.dir.path().join("node");
    std::fs::copy("/bin/sh", &node).unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
    // node → sh → python3, which connects out (to a low-risk country: only the lineage
    // alert can give this connection a decision).
    let connect = "import socket; s = socket.socket(); s.settimeout(0.5); \
                   s.connect_ex(('198.51.100.130', 9901))";
    let status = Command::new(&node)
        .args([
            "-c",
            &format!("/bin/sh -c \"python3 -c \\\"{connect}\\\"; true\"; true"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let alert = agent.wait_for("alert", "lineage", |a| a["anomaly"] == "lineage");
    let d = agent.wait_for("decision", "pending for the lineage alert", |d| {
        d["id"] == alert["id"] && d["state"] == "pending"
    });
    assert_eq!(d["target_ip"], "198.51.100.130", "{d}");
    // Its country is the target's, which the test GeoIP database places in DE.
    assert_eq!(d["country"], "DE", "{d}");
    assert_eq!(d["anomaly"], "lineage", "{d}");
    let p = pending(&agent);
    assert!(p.iter().any(|x| x["id"] == alert["id"]), "{p:?}");
}

/// A copy of /bin/sh named `nginx` (a dedicated web server by name): what it runs is "a
/// shell under a web server".
fn fake_nginx(agent: &Agent) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let nginx = agent.dir.path().join("nginx");
    std::fs::copy("/bin/sh", &nginx).unwrap();
    std::fs::set_permissions(&nginx, std::fs::Permissions::from_mode(0o755)).unwrap();
    nginx
}

#[test]
fn a_decoy_does_not_shield_the_real_c2() {
    if !require_root("a_decoy_does_not_shield_the_real_c2") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("y");
    let table = Table::new("decoy");
    let agent = Agent::start_with("", &config(&table, "4s", ""));
    let nginx = fake_nginx(&agent);
    // nginx → sh → python3: first a decoy (low-risk, v4), then the real C2 (low-risk, v6).
    let connect = "import socket, time\n\
                   for a, f in (('198.51.100.130', socket.AF_INET), ('2001:db8:2::2', socket.AF_INET6)):\n\
                   \x20   s = socket.socket(f); s.settimeout(0.5); s.connect_ex((a, 9911)); time.sleep(0.3)\n";
    let script = agent.dir.path().join("c2.py");
    std::fs::write(&script, connect).unwrap();
    let status = Command::new(&nginx)
        .args([
            "-c",
            &format!("/bin/sh -c \"python3 {}; true\"; true", script.display()),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let alert = agent.wait_for("alert", "lineage", |a| a["anomaly"] == "lineage");
    let opened = agent.wait_for("decision", "pending for the lineage alert", |d| {
        d["id"] == alert["id"] && d["state"] == "pending"
    });
    assert_eq!(opened["target_ip"], "198.51.100.130", "{opened}");
    // The C2 joins the same decision: one decision, both targets, shown by `pending`.
    let mut joined = Value::Null;
    for _ in 0..50 {
        joined = pending(&agent)
            .into_iter()
            .find(|p| p["id"] == alert["id"])
            .unwrap_or_default();
        if joined["targets"].as_array().is_some_and(|t| t.len() == 2) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        joined["targets"],
        serde_json::json!(["198.51.100.130", "2001:db8:2::2"]),
        "{joined}"
    );
    assert_eq!(pending(&agent).len(), 1, "one decision, not two");
    // Silence: both are blocked together.
    let ended = agent.wait_for("decision", "auto-blocked", |d| {
        d["id"] == alert["id"] && d["state"] == "auto-blocked"
    });
    assert_eq!(ended["targets"].as_array().unwrap().len(), 2, "{ended}");
    let v4: Vec<String> = elements(&table, "block4")
        .into_iter()
        .map(|e| e.0)
        .collect();
    let v6: Vec<String> = elements(&table, "block6")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(v4, ["198.51.100.130"]);
    assert_eq!(v6, ["2001:db8:2::2"]);
    let b = blocks(&agent);
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(b.iter().all(|x| x["decision_id"] == alert["id"]), "{b:?}");
}

#[test]
fn a_block_nft_refuses_is_block_failed_until_a_retry_lands() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root("a_block_nft_refuses_is_block_failed_until_a_retry_lands") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("f");
    let table = Table::new("failing");
    // An `nft` that fails while the flag file exists, and is (a copy of) the real one
    // otherwise. The agent finds `nft` only in the system directories, never on PATH: it runs
    // in a private mount namespace where the fake is bind-mounted over the system's nft.
    let bin = tempfile::tempdir().unwrap();
    let flag = bin.path().join("broken");
    std::fs::write(&flag, "").unwrap();
    let system = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nft installed");
    let real = bin.path().join("real-nft");
    std::fs::copy(system, &real).unwrap();
    let fake = bin.path().join("nft");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ -e {} ]; then echo 'nft: simulated failure' >&2; exit 1; fi\nexec {} \"$@\"\n",
            flag.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mount = format!("mount --bind {} {system} && exec \"$@\"", fake.display());
    let sections = format!(
        "[switch]\ncountdown = \"2s\"\n[enforce]\ntable = \"{}\"\nconnect_guard = true\n",
        table.0
    );
    let agent = Agent::start_wrapped_with(
        "",
        &sections,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &mount,
            "sh",
        ],
    );
    let d = open_decision(&agent, "198.51.100.2", 9961);
    let id = d["id"].as_str().unwrap().to_string();
    let failed = agent.wait_for("decision", "block-failed", |x| {
        x["id"] == id.as_str() && x["state"] == "block-failed"
    });
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("simulated failure"),
        "{failed}"
    );
    let status = agent.status();
    assert_eq!(status["enforce"]["healthy"], false, "{status}");
    assert!(
        status["enforce"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("simulated failure"),
        "{status}"
    );
    // Never reported as blocked, and the connect guard holds the address meanwhile.
    assert!(
        !agent
            .events("decision")
            .iter()
            .any(|x| x["id"] == id.as_str() && x["state"] == "auto-blocked")
    );
    assert_eq!(reach("198.51.100.2", 9962), Reach::Denied);
    // nft works again: the retry lands and the decision becomes auto-blocked.
    std::fs::remove_file(&flag).unwrap();
    agent.wait_for("decision", "auto-blocked after the retry", |x| {
        x["id"] == id.as_str() && x["state"] == "auto-blocked"
    });
    let els: Vec<String> = elements(&table, "block4")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(els, ["198.51.100.2"]);
    assert_eq!(agent.status()["enforce"]["healthy"], true);
}

#[test]
fn a_burnt_dedup_window_still_gets_the_reverse_shell_blocked() {
    if !require_root("a_burnt_dedup_window_still_gets_the_reverse_shell_blocked") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("w");
    let table = Table::new("burnt");
    let agent = Agent::start_with("", &config(&table, "3s", ""));
    let nginx = fake_nginx(&agent);
    // One web server: first a harmless RCE (`id`), then one that connects out. Both fall in
    // the same de-duplication window: one alert, counted twice.
    let script = agent.dir.path().join("rce.sh");
    std::fs::write(
        &script,
        "/bin/sh -c 'id >/dev/null'\n\
         /bin/sh -c \"python3 -c \\\"import socket; s = socket.socket(); s.settimeout(0.5); \
         s.connect_ex(('198.51.100.130', 9931))\\\"\"\n",
    )
    .unwrap();
    let status = Command::new(&nginx).arg(&script).status().unwrap();
    assert!(status.success());
    let alert = agent.wait_for("alert", "lineage counted again", |a| {
        a["anomaly"] == "lineage" && a["count"].as_u64().is_some_and(|n| n >= 2)
    });
    let lineage: Vec<Value> = agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == "lineage")
        .collect();
    assert_eq!(lineage.len(), 1, "{lineage:?}");
    // The repeat still costs the attacker the C2: decided and blocked.
    let d = agent.wait_for("decision", "auto-blocked", |d| {
        d["id"] == alert["id"] && d["state"] == "auto-blocked"
    });
    assert_eq!(d["targets"], serde_json::json!(["198.51.100.130"]), "{d}");
    let els: Vec<String> = elements(&table, "block4")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(els, ["198.51.100.130"]);
}
