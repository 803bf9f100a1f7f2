//! Nobody on the host can choose what the switch cuts off. An unprivileged user (uid 65534,
//! the test's own processes) starts 40 processes that each connect to a decoy address of its
//! choosing and put the socket on stdin and stdout — 40 `reverse_shell` alerts, one per
//! process, on 40 addresses. Before origins, each was a decision of its own and every one was
//! auto-blocked (and past `switch.max_pending` the rest were blocked at once). Now they are
//! charged to one origin (`uid 65534`): one open decision at a time, and the timer blocks at
//! most `switch.max_auto_blocks` (default 32) of its addresses in an hour; the other 8 wait for
//! a human, who can still block them all. Root, real nftables (the test's own table), real
//! processes; the decoys are unanswered addresses of the low-risk test network.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Agent, netns::TestNet, nft::Table, require_root, serial};
use serde_json::Value;

const DECOYS: std::ops::Range<u32> = 140..180;
const NOBODY: u32 = 65534;

fn decoy(i: u32) -> String {
    format!("198.51.100.{i}")
}

/// The process group of the decoys, SIGKILLed on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// As uid 65534: one python per decoy, each its own process (a new tree for the old switch),
/// connecting without waiting for an answer and putting the socket on stdin and stdout.
fn flood_decoys() -> Group {
    let python = "import os, socket, sys, time\n\
        s = socket.socket(); s.setblocking(False)\n\
        try: s.connect((sys.argv[1], 4444))\n\
        except BlockingIOError: pass\n\
        os.dup2(s.fileno(), 0); os.dup2(s.fileno(), 1)\n\
        time.sleep(120)\n";
    let addrs: Vec<String> = DECOYS.map(decoy).collect();
    let script = format!(
        "for a in {}; do /usr/bin/python3 -c \"$P\" \"$a\" & done; echo started >&2; wait",
        addrs.join(" ")
    );
    let mut child = Command::new("/bin/bash")
        .args(["-c", &script])
        .env("P", python)
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "started");
    Group(child)
}

fn decoy_set() -> BTreeSet<String> {
    DECOYS.map(decoy).collect()
}

fn blocked(table: &Table) -> BTreeSet<String> {
    let decoys = decoy_set();
    table
        .elements("block4")
        .into_iter()
        .map(|(a, _)| a)
        .filter(|a| decoys.contains(a))
        .collect()
}

fn pending_decoys(agent: &Agent) -> Vec<Value> {
    let decoys = decoy_set();
    agent
        .json_lines(&["pending", "--json"])
        .into_iter()
        .filter(|p| {
            p["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|a| decoys.contains(a.as_str().unwrap_or(""))))
        })
        .collect()
}

#[test]
fn one_unprivileged_user_gets_at_most_max_auto_blocks_addresses_blocked_by_the_timer() {
    if !require_root(
        "one_unprivileged_user_gets_at_most_max_auto_blocks_addresses_blocked_by_the_timer",
    ) {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("or");
    let table = Table::new("origin");
    let agent = Agent::start_with(
        "",
        &format!(
            "[switch]\ncountdown = \"3s\"\n[enforce]\ntable = \"{}\"\nconnect_guard = false\n",
            table.0
        ),
    );
    let _decoys = flood_decoys();

    // Every decoy is seen and decided on: blocked by the timer, or waiting for a human.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (auto, waiting) = loop {
        let auto = blocked(&table);
        let waiting = pending_decoys(&agent);
        let held: BTreeSet<String> = waiting
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap().clone())
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let all: BTreeSet<String> = auto.union(&held).cloned().collect();
        if all == decoy_set() && waiting.iter().all(|p| p["waiting"].is_string()) {
            break (auto, waiting);
        }
        assert!(
            Instant::now() < deadline,
            "not every decoy decided: blocked {auto:?}, pending {waiting:?}\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(auto.len(), 32, "switch.max_auto_blocks: {auto:?}");
    assert_eq!(
        waiting.len(),
        1,
        "one open decision per origin: {waiting:?}"
    );
    let w = &waiting[0];
    assert_eq!(w["targets"].as_array().unwrap().len(), 8, "{w}");
    assert!(
        w["waiting"]
            .as_str()
            .unwrap()
            .contains("max_auto_blocks (32)"),
        "{w}"
    );
    // Every decision of the flood was charged to that one user.
    let decisions: Vec<Value> = agent
        .events("decision")
        .into_iter()
        .filter(|d| {
            d["targets"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|a| decoy_set().contains(a.as_str().unwrap_or("")))
            })
        })
        .collect();
    assert!(
        decisions.iter().all(|d| d["origin"] == "uid 65534"),
        "{decisions:?}"
    );
    // Silence does not block the rest …
    thread::sleep(Duration::from_secs(5));
    assert_eq!(blocked(&table).len(), 32);
    // … a human can.
    let out = agent.cli(&["block", w["id"].as_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while blocked(&table) != decoy_set() {
        assert!(
            Instant::now() < deadline,
            "CONFIRM BLOCK did not block all 40"
        );
        thread::sleep(Duration::from_millis(250));
    }
}
