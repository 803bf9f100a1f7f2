//! End-to-end tests of the pipeline: the real `sentinel run` loads the real programs into the
//! running kernel, the tests trigger real events (a process, a connection, a busy loop, a
//! burst) and assert on what the agent stored and streams, through the real CLI.
//! Tests that load programs need root and say so loudly when skipped.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Agent, BIN, own_comm, require_root, serial, write};
use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn exec_of_a_short_process_carries_its_lineage() {
    if !require_root("exec_of_a_short_process_carries_its_lineage") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    let marker = format!("sentinel-e2e-{}", std::process::id());

    // A ~1 ms process, direct child of this test.
    let child = Command::new("/bin/true").arg(&marker).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let ev = agent.wait_for("exec", "for /bin/true", |e| e["pid"] == pid);
    assert_eq!(ev["ppid"], std::process::id(), "{ev}");
    assert_eq!(s(&ev["comm"]), "true");
    assert_eq!(s(&ev["filename"]), "/bin/true");
    assert_eq!(ev["argv"], serde_json::json!(["/bin/true", marker]));
    assert_eq!(ev["uid"], 0);
    assert_eq!(s(&ev["ancestors"][0]), own_comm(), "{ev}");
    assert!(
        !s(&ev["host"]).is_empty() && s(&ev["ts"]).ends_with('Z'),
        "{ev}"
    );

    // A grandchild through a forking shell: the tree comes from fork records.
    let sh = Command::new("/bin/sh")
        .args(["-c", &format!("/bin/true {marker}-nested; exit 0")])
        .spawn()
        .unwrap();
    let sh_pid = sh.id();
    sh.wait_with_output().unwrap();
    let ev = agent.wait_for("exec", "for the nested /bin/true", |e| {
        e["argv"][1] == format!("{marker}-nested")
    });
    assert_eq!(ev["ppid"], sh_pid, "{ev}");
    let ancestors: Vec<&str> = ev["ancestors"].as_array().unwrap().iter().map(s).collect();
    assert_eq!(ancestors[0], "sh", "{ev}");
    assert_eq!(ancestors[1], own_comm(), "{ev}");

    // status reports every sensor attached and the events it has seen.
    let st = agent.status();
    for sensor in ["exec", "connect", "cpu"] {
        assert_eq!(st["sensors"][sensor]["attached"], true, "{st}");
        assert!(st["sensors"][sensor]["lost"].is_u64(), "{st}");
    }
    assert!(st["sensors"]["exec"]["seen"].as_u64().unwrap() >= 2, "{st}");
    // (The counts are the whole machine's: any process may have a decision by now.)
    assert!(
        st["uptime_s"].is_u64() && st["pending"].is_u64() && st["blocks"].is_u64(),
        "{st}"
    );
    // The store's bounds: the default cap, and what the queue dropped and the cap evicted.
    let store = &st["store"];
    assert_eq!(store["max_bytes"], 1024 * 1024 * 1024, "{st}");
    assert!(
        ["queued", "dropped", "evicted", "bytes"]
            .iter()
            .all(|k| store[k].is_u64()),
        "{st}"
    );

    // Only root may talk to the agent.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
}

#[test]
fn loopback_connects_over_ipv4_and_ipv6() {
    if !require_root("loopback_connects_over_ipv4_and_ipv6") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    let me = std::process::id();
    for (bind, family, daddr) in [("127.0.0.1:0", 4, "127.0.0.1"), ("[::1]:0", 6, "::1")] {
        let listener = TcpListener::bind(bind).unwrap();
        let port = listener.local_addr().unwrap().port();
        let _conn = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let ev = agent.wait_for("connect", &format!("to {daddr}:{port}"), |e| {
            e["pid"] == me && e["dport"] == port
        });
        assert_eq!(ev["family"], family, "{ev}");
        assert_eq!(s(&ev["daddr"]), daddr, "{ev}");
        assert_eq!(ev["uid"], 0, "{ev}");
        assert_eq!(s(&ev["comm"]), own_comm(), "{ev}");
        assert!(ev["country"].is_null(), "{ev}");
    }
}

/// Without a cgroup v2 hierarchy the connect sensor falls back to `sock/inet_sock_set_state`:
/// the agent runs in a mount namespace of its own where every cgroup2 mount is gone (the
/// machine's own mounts are untouched), says so, and still sees connects over IPv4 and IPv6.
#[test]
fn connects_are_seen_through_the_tracepoint_without_cgroup_v2() {
    if !require_root("connects_are_seen_through_the_tracepoint_without_cgroup_v2") {
        return;
    }
    let _serial = serial();
    let no_cgroup2 = "grep -F ' - cgroup2 ' /proc/self/mountinfo | cut -d' ' -f5 | \
                      while read -r m; do umount -l \"$m\" || exit 1; done; exec \"$@\"";
    let agent = Agent::start_wrapped(&[
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        no_cgroup2,
        "sh",
    ]);
    let log = agent.log();
    assert!(
        log.contains("connects are seen through sock/inet_sock_set_state instead"),
        "{log}"
    );
    let me = std::process::id();
    for (bind, daddr) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")] {
        let listener = TcpListener::bind(bind).unwrap();
        let port = listener.local_addr().unwrap().port();
        let _conn = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let ev = agent.wait_for("connect", &format!("to {daddr}:{port}"), |e| {
            e["pid"] == me && e["dport"] == port
        });
        assert_eq!(s(&ev["daddr"]), daddr, "{ev}");
        // The tracepoint sees the connect once the source is chosen.
        assert_eq!(s(&ev["saddr"]), daddr, "{ev}");
    }
    // The machine's own cgroup2 mount is still there.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.contains(" - cgroup2 "), "{mounts}");
}

#[test]
fn busy_process_shows_high_cpu() {
    if !require_root("busy_process_shows_high_cpu") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    let mut busy = // At the highest priority: a normal one gets well under half a CPU while two
    // builds share this machine's two, and the test would measure the load, not the agent.
    Command::new("nice")
        .args(["-n", "-19", "/bin/sh", "-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = busy.id();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        agent.wait_for("cpu", "at ≥ 50 % for the busy loop", |e| {
            e["pid"] == pid && e["cpu_pct"].as_f64().unwrap_or(0.0) >= 50.0
        })
    }));
    let _ = busy.kill();
    let _ = busy.wait();
    let ev = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(s(&ev["comm"]), "sh", "{ev}");
}

#[test]
fn full_ring_buffer_counts_lost_events_and_keeps_running() {
    if !require_root("full_ring_buffer_counts_lost_events_and_keeps_running") {
        return;
    }
    let _serial = serial();
    // One page per ring buffer: a few exec records fit.
    let agent = Agent::start("ring_buffer_kib = 4");
    let total = |st: &Value| {
        let e = &st["sensors"]["exec"];
        e["seen"].as_u64().unwrap() + e["lost"].as_u64().unwrap()
    };
    let before = agent.status();

    const THREADS: usize = 8;
    const PER_THREAD: usize = 250;
    let spawned: Vec<_> = (0..THREADS)
        .map(|_| {
            thread::spawn(|| {
                for _ in 0..PER_THREAD {
                    Command::new("/bin/true").status().unwrap();
                }
            })
        })
        .collect();
    spawned.into_iter().for_each(|t| t.join().unwrap());
    let burst = (THREADS * PER_THREAD) as u64;

    // Every process of the burst is a fork, an exec and an exit record: each was either
    // delivered (seen) or counted as lost in the kernel.
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let st = agent.status();
        if total(&st) - total(&before) >= 3 * burst || Instant::now() > deadline {
            break st;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let lost = after["sensors"]["exec"]["lost"].as_u64().unwrap();
    eprintln!(
        "burst of {burst} processes: exec seen+lost grew by {}, lost {lost}",
        total(&after) - total(&before)
    );
    assert!(
        lost > 0,
        "a 4 KiB ring buffer lost nothing in a burst: {after}"
    );
    assert!(
        total(&after) - total(&before) >= 3 * burst,
        "seen + lost grew by {} for a burst of {burst} processes (3 records each): {before} → {after}",
        total(&after) - total(&before)
    );
    // Still alive and still delivering.
    let child = Command::new("/bin/true")
        .arg("after-the-burst")
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait_with_output().unwrap();
    agent.wait_for("exec", "after the burst", |e| e["pid"] == pid);
}

/// Start `threads` × `each` `/bin/true` processes as fast as possible.
fn exec_burst(threads: usize, each: usize) {
    let spawned: Vec<_> = (0..threads)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..each {
                    Command::new("/bin/true").status().unwrap();
                }
            })
        })
        .collect();
    spawned.into_iter().for_each(|t| t.join().unwrap());
}

/// The `blind` alerts about the exec sensor.
fn exec_blind_alerts(agent: &Agent) -> Vec<Value> {
    agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == "blind" && a["comm"] == "exec sensor")
        .collect()
}

/// Flooding a (tiny) exec ring buffer until it loses events raises a `blind` alert — high,
/// T1562 — and a second flood does not raise another: the alert's count goes up.
#[test]
fn flooded_ring_buffer_raises_one_blind_alert() {
    if !require_root("flooded_ring_buffer_raises_one_blind_alert") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("ring_buffer_kib = 4");
    // (Other work on a busy machine may fill so small a buffer too: the alert may come
    // before the burst. Either way there must be exactly one.)
    let lost = |agent: &Agent| agent.status()["sensors"]["exec"]["lost"].as_u64().unwrap();

    exec_burst(8, 200);
    let first_lost = lost(&agent);
    assert!(first_lost > 0, "a 4 KiB ring buffer lost nothing");
    let alert = agent.wait_for("alert", "blind for the exec sensor", |a| {
        a["anomaly"] == "blind" && a["comm"] == "exec sensor"
    });
    assert_eq!(s(&alert["severity"]), "high", "{alert}");
    assert_eq!(s(&alert["mitre"]["technique"]), "T1562", "{alert}");
    assert_eq!(s(&alert["mitre"]["name"]), "Impair Defenses", "{alert}");
    assert_eq!(
        (alert["pid"].as_u64(), s(&alert["state"])),
        (Some(0), "none")
    );
    assert!(alert["target_ip"].is_null(), "{alert}");
    assert!(s(&alert["detail"]).contains("ring buffer"), "{alert}");

    // A second flood, after the first was reported: the same alert, counted again.
    exec_burst(8, 200);
    assert!(lost(&agent) > first_lost, "the second burst lost nothing");
    let deadline = Instant::now() + Duration::from_secs(15);
    let alerts = loop {
        let alerts = exec_blind_alerts(&agent);
        if alerts.iter().any(|a| a["count"].as_u64() >= Some(2)) || Instant::now() > deadline {
            break alerts;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        alerts.len(),
        1,
        "one blind alert, not one per lost batch: {alerts:?}"
    );
    assert_eq!(alerts[0]["id"], alert["id"]);
    assert!(alerts[0]["count"].as_u64() >= Some(2), "{alerts:?}");
    let logged = agent
        .log()
        .lines()
        .filter(|l| l.contains("alert:") && l.contains("the exec sensor lost"))
        .count();
    assert_eq!(logged, 1, "logged once:\n{}", agent.log());
    // The kernel programs report the drops themselves (aya-log, target `sentinel::kernel`), at each
    // doubling of a CPU's count: a few lines, never one per dropped record.
    let total_lost = lost(&agent);
    let log = agent.log();
    let kernel = log
        .lines()
        .filter(|l| l.contains("sentinel::kernel:") && l.contains("buffer full, record dropped"))
        .count() as u64;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per_cpu_bound = u64::from(64 - total_lost.leading_zeros());
    assert!(
        kernel >= 1 && kernel <= cpus * per_cpu_bound,
        "{kernel} kernel lines for {total_lost} drops on {cpus} CPUs:\n{log}"
    );
    // Nothing to block and nobody to kill: no decision (other work on the machine may open
    // some of its own: only this alert's id counts).
    let decisions = agent.events("decision");
    assert!(
        decisions.iter().all(|d| d["id"] != alert["id"]),
        "{decisions:?}"
    );
}

#[test]
fn tail_follow_streams_live_events() {
    if !require_root("tail_follow_streams_live_events") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    let mut follow = Command::new(BIN)
        .args([
            "tail", "--follow", "--json", "--kind", "exec", "-n", "0", "--config",
        ])
        .arg(&agent.config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    thread::sleep(Duration::from_millis(300)); // let the follower subscribe
    let marker = format!("follow-{}", std::process::id());
    Command::new("/bin/echo")
        .arg(&marker)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = None;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let ev: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(ev["kind"], "exec", "--kind exec let through {ev}");
        if ev["argv"][1] == marker.as_str() {
            found = Some(ev);
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let ev = found.expect("the live stream never showed the marker exec");
    assert_eq!(s(&ev["filename"]), "/bin/echo");
}

#[test]
fn sigterm_stops_cleanly_and_keeps_what_was_seen() {
    if !require_root("sigterm_stops_cleanly_and_keeps_what_was_seen") {
        return;
    }
    let _serial = serial();
    let mut agent = Agent::start("");
    let child = Command::new("/bin/true").arg("last-words").spawn().unwrap();
    let pid = child.id();
    child.wait_with_output().unwrap();
    thread::sleep(Duration::from_millis(300)); // delivered, maybe not yet committed
    let status = agent.stop();
    assert!(
        status.success(),
        "agent exit status {status}:\n{}",
        agent.log()
    );
    assert!(!agent.socket().exists(), "socket left behind");
    let log = agent.log();
    assert!(log.contains("stopped"), "{log}");
    // The store outlives the agent: tail reads it without the daemon.
    assert!(
        agent.events("exec").iter().any(|e| e["pid"] == pid),
        "exec lost at stop"
    );
    // And the CLI says clearly that the daemon is gone.
    let out = agent.cli(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running"), "{err}");
}

#[test]
fn tail_into_a_closed_pipe_exits_quietly() {
    if !require_root("tail_into_a_closed_pipe_exits_quietly") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    for _ in 0..50 {
        Command::new("/bin/true").status().unwrap();
    }
    agent.wait_for("exec", "from the warm-up", |_| true);
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "'{BIN}' tail -n 1000 --config '{}' | head -n 1",
            agent.config.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "tail | head complained"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn second_agent_on_the_same_socket_is_refused() {
    if !require_root("second_agent_on_the_same_socket_is_refused") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(
        agent.status()["pid"],
        agent.pid(),
        "the first agent was disturbed"
    );
}

// --- no root needed ---------------------------------------------------------------------

#[test]
fn readme_and_docs_link_only_to_files_in_the_repository() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        assert!(
            !text.contains("../shared/"),
            "{} points outside the repository",
            page.display()
        );
        for link in text.split("](").skip(1) {
            let target = &link[..link.find(')').unwrap()];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let path = page.parent().unwrap().join(file);
            assert!(
                path.canonicalize()
                    .is_ok_and(|p| p.starts_with(root.canonicalize().unwrap())),
                "{}: link {target} is not a file in the repository",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} links found");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("../shared/"),
        "Cargo.toml points outside the repository"
    );
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/sentinel.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_config_others_can_read_is_refused_when_it_holds_a_secret() {
    use std::{fs, os::unix::fs::PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\ndb = \"{0}/s.db\"\nsocket = \"{0}/s.sock\"\n[geo]\nenabled = false\n\
         [enforce]\nmode = \"dry-run\"\n\
         [notify.telegram]\nbot_token = \"123456:not-a-real-token\"\nchat_id = \"42\"\n",
        dir.path().display()
    );
    let path = write(dir.path(), "sentinel.toml", &text);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let want = format!(
        "config: {p} is readable by others and holds notify.telegram.bot_token: chmod o-rwx {p}",
        p = path.display()
    );
    for command in ["check-config", "run"] {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command} accepted it");
        assert!(err.contains(&want), "{command}: {err}");
        assert!(
            !err.contains("not-a-real-token"),
            "{command} showed the secret: {err}"
        );
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_reports_every_problem_at_once_and_what_run_would_refuse() {
    use std::{fs, os::unix::fs::PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("override.key");
    fs::write(&key, "ab".repeat(32)).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let text = format!(
        "[geo]\nenabled = false\n\n[switch]\ncountdown = \"soon\"\n\n[enforce]\nbogus_key = 1\n\n\
         [override]\npublic_url = \"https://sentinel.example\"\nsecret_file = \"{}\"\n",
        key.display()
    );
    let path = write(dir.path(), "bad.toml", &text);
    let check = || {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check();
    assert!(!ok, "accepted {text}");
    for line in [
        "switch.countdown: invalid duration \"soon\"",
        "(line 5, column 1)",
        "enforce.bogus_key: unknown field `bogus_key`",
        "(line 8, column 1)",
        "override.secret_file: override secret",
        "chmod go-rwx",
    ] {
        assert!(err.contains(line), "{line:?} missing from:\n{err}");
    }
    // With the other two fixed, the key's mode alone still fails the check; fixed, it passes.
    let fixed = text
        .replace("countdown = \"soon\"", "countdown = \"1m\"")
        .replace("bogus_key = 1\n", "");
    fs::write(&path, &fixed).unwrap();
    let (ok, err) = check();
    assert!(
        !ok && err.contains("override.secret_file") && err.lines().count() == 2,
        "{err}"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = check();
    assert!(ok, "{err}");
    fs::remove_file(&key).unwrap();
    let (ok, err) = check();
    assert!(!ok && err.contains("cannot read"), "{err}");
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[agent]\nring_buffer_kib = 3\n", "agent.ring_buffer_kib"),
        ("[agent]\nfavourite_colour = \"red\"\n", "favourite_colour"),
        ("[agent]\nretention = \"forever\"\n", "retention"),
    ] {
        let path = write(dir.path(), "bad.toml", text);
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted {text:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key),
            "error for {text:?} does not name {key}: {err}"
        );
    }
}

#[test]
fn missing_explicit_config_is_an_error_naming_it() {
    let out = Command::new(BIN)
        .args(["status", "--config", "/nonexistent/sentinel.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sentinel.toml"));
}

#[test]
fn bad_cli_arguments_are_refused() {
    let out = Command::new(BIN)
        .args(["tail", "--kind", "sandwich"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sandwich"));
}
