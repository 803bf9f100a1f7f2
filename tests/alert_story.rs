//! One alert, one story (issue "turn the switch against its owner" §5 and §8), end to end with
//! real processes: an alert lists every destination it gathered and keeps the first as its
//! `target_ip` (the one its text names) through every decision it opens; a respawn alert is
//! about the program that came back, not about every program its parent restarts; an alerted
//! tree's decision follows every member, an orphan that never execs included.
//!
//! The geo test's culprit is the test process itself (it knocks on the test hosts), so the
//! tests of this binary run one at a time (`serial`). Every assertion is about this test's own
//! processes or its test hosts.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Agent,
    netns::{CN4, DE4, RU4, TestNet, knock},
    nft::Table,
    procs::Procs,
    require_root, serial,
};
use serde_json::Value;

fn config(table: &Table) -> String {
    format!(
        "[switch]\ncountdown = \"5m\"\n[enforce]\ntable = \"{}\"\nconnect_guard = false\n",
        table.0
    )
}

/// The stored alert `id`, as the store has it now.
fn alert(agent: &Agent, id: &str) -> Value {
    agent
        .events("alert")
        .into_iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("no alert {id}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_repeated_geo_alert_keeps_its_first_target_and_lists_every_one() {
    if !require_root("a_repeated_geo_alert_keeps_its_first_target_and_lists_every_one") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("st");
    let table = Table::new("story");
    let agent = Agent::start_with("", &config(&table));
    let me = std::process::id();

    // The first high-risk destination: an alert and its decision; a human blocks it.
    knock(RU4, 9501);
    let first = agent.wait_for("decision", "pending for the first target", |d| {
        d["target_ip"] == RU4 && d["state"] == "pending" && d["pid"] == me
    });
    let id = first["id"].as_str().unwrap().to_string();
    let out = agent.cli(&["block", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same process reaches another: a repeat of the alert, which opens the next decision.
    knock(CN4, 9502);
    let second = agent.wait_for("decision", "pending for the second target", |d| {
        d["target_ip"] == CN4 && d["state"] == "pending" && d["pid"] == me
    });
    assert_ne!(second["id"], first["id"]);

    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        let a = alert(&agent, &id);
        if strings(&a["targets"]).len() >= 2 || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        a["target_ip"], RU4,
        "the alert's own target stays the first: {a}"
    );
    assert_eq!(strings(&a["targets"]), vec![RU4, CN4], "{a}");
    let detail = a["detail"].as_str().unwrap();
    assert!(
        detail.contains(RU4) && !detail.contains(CN4),
        "the text names the alert's target_ip: {a}"
    );
    assert!(a["count"].as_u64().unwrap() >= 2, "{a}");
    assert_eq!(
        a["state"], "pending",
        "the alert follows its current decision: {a}"
    );
}

/// A bash that runs `python3` (which reaches `DE4` once) and `sleep` as its own children and
/// restarts each one that ends; prints "ready" once both run.
const RESTARTER: &str = r#"
start_py() { python3 -c 'import socket, time
time.sleep(0.5)
s = socket.socket(); s.settimeout(1)
try: s.connect(("DE4", 9510))
except OSError: pass
time.sleep(300)' & py=$!; }
start_sl() { sleep 300 & sl=$!; }
start_py; start_sl
echo "ready $py $sl"
while :; do
  wait -n
  kill -0 $py 2>/dev/null || { start_py; echo "py $py"; }
  kill -0 $sl 2>/dev/null || { start_sl; echo "sl $sl"; }
done
"#;

#[test]
fn a_respawn_alert_is_about_the_program_that_came_back() {
    if !require_root("a_respawn_alert_is_about_the_program_that_came_back") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("sr");
    let table = Table::new("respawn");
    let agent = Agent::start_with("", &config(&table));
    let mut procs = Procs::default();
    let child = procs.spawn(
        Command::new("bash")
            .args(["-c", &RESTARTER.replace("DE4", DE4)])
            .stdout(Stdio::piped()),
    );
    let bash = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("restarter ended").expect("read");
    let ready = next();
    let pids: Vec<u32> = ready
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let (py, sl) = (pids[0], pids[1]);
    // Let the agent see both start before they are killed.
    std::thread::sleep(Duration::from_secs(1));

    let respawn_of = |agent: &Agent, comm: &str| {
        agent.wait_for("alert", &format!("respawn of {comm}"), |a| {
            a["anomaly"] == "respawn"
                && a["comm"] == comm
                && a["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("(pid {bash})")))
        })
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(py as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let new_py: u32 = next().trim_start_matches("py ").parse().unwrap();
    let py_alert = respawn_of(&agent, "python3");
    assert_eq!(py_alert["pid"], new_py, "{py_alert}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sl as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let new_sl: u32 = next().trim_start_matches("sl ").parse().unwrap();
    let sl_alert = respawn_of(&agent, "sleep");
    assert_ne!(
        sl_alert["id"], py_alert["id"],
        "the sleep that came back is its own alert, not a repeat of python3's"
    );
    assert_eq!(sl_alert["pid"], new_sl, "{sl_alert}");
    assert!(
        sl_alert["detail"].as_str().unwrap().contains("sleep"),
        "{sl_alert}"
    );

    // The python3 that came back reaches DE4: its alert gathers it; the sleep's never does.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = alert(&agent, py_alert["id"].as_str().unwrap());
        if strings(&a["targets"]).contains(&DE4.to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "python3's destination never joined its alert: {a}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = alert(&agent, sl_alert["id"].as_str().unwrap());
    assert!(strings(&s["targets"]).is_empty(), "{s}");
    assert_eq!(strings(&s["targets"]).len(), 0);
}

#[test]
fn a_double_forked_orphan_that_never_execs_still_joins_its_trees_decision() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root("a_double_forked_orphan_that_never_execs_still_joins_its_trees_decision") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("so");
    let table = Table::new("orphan");
    let sections = format!("{}[lineage]\nweb_servers = [\"node\"]\n", config(&table));
    let agent = Agent::start_with("", &sections);
    // A copy of sh named `node` (a web server by name) runs a shell: a lineage alert. The
    // shell's python3 double-forks and setsid()s; the grandchild, adopted by init once its
    // parent is gone (and forgotten by the agent), reaches DE4 without ever exec'ing.
    let node = agent.dir.path().join("node");
    std::fs::copy("/bin/sh", &node).unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
    let orphan = format!(
        "import os, socket, time\n\
         if os.fork(): os._exit(0)\n\
         os.setsid()\n\
         if os.fork(): os._exit(0)\n\
         print(os.getpid(), flush=True)\n\
         time.sleep(2.5)\n\
         s = socket.socket(); s.settimeout(1)\n\
         s.connect_ex(('{DE4}', 9601))\n"
    );
    let script = agent.dir.path().join("orphan.py");
    std::fs::write(&script, orphan).unwrap();
    let mut procs = Procs::default();
    let child = procs.spawn(
        Command::new(&node)
            .args([
                "-c",
                &format!("/bin/sh -c 'python3 {}; true'; true", script.display()),
            ])
            .stdout(Stdio::piped()),
    );
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let grandchild: u32 = out
        .next()
        .expect("orphan pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alert = agent.wait_for("alert", "lineage", |a| {
        a["anomaly"] == "lineage" && a["comm"] == "sh"
    });
    let d = agent.wait_for("decision", "the orphan's destination", |d| {
        d["target_ip"] == DE4 && d["state"] == "pending"
    });
    assert_eq!(d["id"], alert["id"], "the tree's decision holds it: {d}");
    let connects = agent.events("connect");
    assert!(
        connects
            .iter()
            .any(|c| c["pid"] == grandchild && c["daddr"] == DE4),
        "the connect was the orphan's"
    );
}
