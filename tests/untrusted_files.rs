//! End-to-end tests of files a process chose (`sentinel-agent/src/untrusted_file.rs`), with
//! the real agent: an executable in a temp directory replaced by a FIFO right after its exec
//! (`miner` reads the exec'd path for `#!` when the record arrives), and a project whose
//! `node_modules` holds a `package.json` symlinked to `/dev/zero` (`npm` scans the project a
//! `node` process serves). Either used to stop the agent: an `open` waiting for a writer on
//! the single-threaded event loop, a read that never ends. The agent must keep answering,
//! keep handling exec records and keep its memory.
//!
//! Every check is filtered by the pids and paths these tests created: other tests may be
//! running on the same kernel.

mod common;

use std::{
    fs,
    os::unix::{
        fs::{FileTypeExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Agent, BIN, require_root, serial};
use serde_json::Value;

/// Processes a test started, each leading its own process group, SIGKILLed and reaped on drop.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, cmd: &mut Command) -> u32 {
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

/// FIFOs a test made. On drop each is opened for writing (non-blocking) and closed: an agent
/// that did block reading one gets its end of file, so the harness can still stop it.
struct Fifos(Vec<PathBuf>);

impl Drop for Fifos {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        for path in &self.0 {
            let _ = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
        }
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// `sentinel status` answers within `limit` (the CLI waits for ever on a stalled agent, so it
/// is killed past the limit).
fn status_answers_within(agent: &Agent, limit: Duration) -> bool {
    let mut cli = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&agent.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = cli.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = cli.kill();
            let _ = cli.wait();
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The agent answers `status` within 1 s, five times over 2.5 s.
fn assert_responsive(agent: &Agent, when: &str) {
    for round in 0..5 {
        assert!(
            status_answers_within(agent, Duration::from_secs(1)),
            "{when}: status did not answer within 1 s (round {round}). Agent log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// A later exec, of `/bin/true` by this test, still reaches the store.
fn later_exec_arrives(agent: &Agent) {
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    agent.wait_for("exec", "of the later /bin/true", |e| {
        e["pid"] == pid && e["filename"] == "/bin/true"
    });
}

/// The agent's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Runs of the exec-then-swap race: the agent has to lose only one of them to stall.
const ROUNDS: usize = 10;

#[test]
fn an_executable_swapped_for_a_fifo_after_its_exec_does_not_stall_the_agent() {
    if !require_root("an_executable_swapped_for_a_fifo_after_its_exec_does_not_stall_the_agent") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    // /var/tmp: a binary there is a `miner` suspect, so `miner` reads its path for `#!`.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut fifos = Fifos(Vec::new());
    let mut procs = Procs::default();
    let mut pids = Vec::new();
    for round in 0..ROUNDS {
        let path = dir.path().join(format!("a{round}"));
        fs::copy("/bin/sleep", &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let fifo = dir.path().join(format!(".fifo{round}"));
        mkfifo(&fifo);
        fifos.0.push(path.clone());
        // `spawn` returns once the exec has happened (the child's exec closes the pipe it
        // reports failures on); one rename later the path is a FIFO — microseconds, while the
        // exec record still travels through the ring buffer to the agent.
        pids.push(procs.spawn(Command::new(&path).arg("30")));
        fs::rename(&fifo, &path).unwrap();
    }
    for (round, &pid) in pids.iter().enumerate() {
        let path = dir.path().join(format!("a{round}"));
        assert!(
            fs::symlink_metadata(&path).unwrap().file_type().is_fifo(),
            "{} is not a FIFO",
            path.display()
        );
        agent.wait_for("exec", "of a swapped executable", |e| {
            e["pid"] == pid && e["filename"] == path.to_str().unwrap()
        });
    }
    assert_responsive(&agent, "after the swaps");
    later_exec_arrives(&agent);
    drop(procs);
    drop(fifos);
}

/// A `node_modules` package directory `name` in `project` (its `package.json` is the
/// caller's to make).
fn package_dir(project: &Path, name: &str) -> PathBuf {
    let dir = project.join("node_modules").join(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `npm` alert about `project` (served by `node`) whose detail holds `needle`, if any.
fn npm_alert(agent: &Agent, node: u32, project: &Path, needle: &str) -> Option<Value> {
    let project = project.display().to_string();
    agent.events("alert").into_iter().find(|a| {
        a["anomaly"] == "npm"
            && a["pid"] == node
            && a["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&project) && d.contains(needle))
    })
}

#[test]
fn a_package_json_symlinked_to_dev_zero_neither_stalls_nor_fills_the_agent() {
    if !require_root("a_package_json_symlinked_to_dev_zero_neither_stalls_nor_fills_the_agent") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    // Project one: a package.json that never ends, beside a blocklisted package whose finding
    // comes only once the whole scan is done. Project two, scanned after it on the same
    // thread: a package.json that is a FIFO (a finding of its own).
    let zero = tempfile::tempdir().unwrap();
    let link = package_dir(zero.path(), "zero").join("package.json");
    std::os::unix::fs::symlink("/dev/zero", link).unwrap();
    let crossenv = package_dir(zero.path(), "crossenv").join("package.json");
    fs::write(crossenv, r#"{"name":"crossenv","version":"6.1.1"}"#).unwrap();
    let trap = tempfile::tempdir().unwrap();
    let fifo = package_dir(trap.path(), "fifo").join("package.json");
    mkfifo(&fifo);
    let _fifos = Fifos(vec![fifo]);
    let mut procs = Procs::default();
    // `node` serving a project (its working directory): the agent scans its node_modules.
    let mut serve = |project: &Path| {
        procs.spawn(
            Command::new("node")
                .args(["-e", "setTimeout(() => {}, 20000)"])
                .current_dir(project),
        )
    };
    let (node_zero, node_trap) = (serve(zero.path()), serve(trap.path()));
    // Memory is sampled all along the scans: the old agent grew by hundreds of MiB a second.
    let limit_kib = 200 * 1024;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut peak = 0;
    let mut found = (None, None);
    while found.0.is_none() || found.1.is_none() {
        for _ in 0..5 {
            peak = peak.max(rss_kib(agent.pid()));
            assert!(peak < limit_kib, "agent RSS {peak} KiB during the scan");
            thread::sleep(Duration::from_millis(50));
        }
        found.0 = found
            .0
            .or_else(|| npm_alert(&agent, node_zero, zero.path(), "crossenv"));
        found.1 = found
            .1
            .or_else(|| npm_alert(&agent, node_trap, trap.path(), "unreadable: fifo"));
        assert!(
            Instant::now() < deadline,
            "npm alerts within 15 s: {found:?}. Agent log:\n{}",
            agent.log()
        );
    }
    let fifo_alert = found.1.unwrap();
    let detail = fifo_alert["detail"].as_str().unwrap();
    assert!(detail.contains("package fifo@?"), "{detail}");
    assert_responsive(&agent, "after the scans");
    later_exec_arrives(&agent);
    let rss = rss_kib(agent.pid());
    assert!(rss < limit_kib, "agent RSS {rss} KiB after the scans");
}
