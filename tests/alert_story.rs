//! One alert, one story (issue "turn the switch against its owner" §5 and §8), end to end with
//! real processes: an alert lists every destination it gathered and keeps the first as its
//! `target_ip` (the one its text names) through every decision it opens; an alerted tree's
//! decision follows every member, an orphan that never execs included. (That a respawn alert
//! is about the program that came back is a unit test of `detect::alerts`; a respawn is a
//! program the agent killed coming back, end to end in tests/kill.rs.)
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
