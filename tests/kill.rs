//! The process response (`enforce.kill`) end to end, on the resource detector: a CPU burner is
//! killed and nothing else is; the agent widens to the parent only when a killed burner really
//! comes back under it; a burner run as `/usr/sbin/sshd` through a bind mount in its own mount
//! namespace is no sshd. And on the lineage detector: a shell whose pid was reused before the
//! agent responded is never "killed" through the new process.
//!
//! Confinement, so that a wrong response can only hurt the test's own processes: the test
//! process makes itself a child subreaper, so orphans it creates land under it, never under the
//! machine's pid 1. The burner is a C program the test compiles: 16 spinning threads in a
//! session (and so a scheduler autogroup) of its own at autogroup nice -15, so it takes most of
//! the machine's two CPUs however busy the machine is, and `resource.cpu_percent` is set above
//! what any single-threaded process can reach (150 % of one CPU for 2 s), which nothing else
//! reaches while the burner runs. Only resource alerts get the process response
//! (`enforce.kill_on`: other tests' shells under their web servers are none of this agent's
//! business), and common heavy tools are in `enforce.protect` besides. The lineage test answers
//! lineage alerts only, and its only web server is the test's own program, by a name nothing
//! else uses.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Agent, nft::Table, require_root, serial};
use nix::{
    sys::{
        prctl,
        signal::{Signal, kill},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};

/// Spins `THREADS` threads in a session and autogroup of its own at nice -15, and ignores
/// SIGTERM: only SIGKILL stops it.
const BURNER: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#define THREADS 16
static void *spin(void *arg) { volatile unsigned long n = 0; for (;;) n++; return arg; }
int main(void) {
    signal(SIGTERM, SIG_IGN);
    setsid();
    FILE *f = fopen("/proc/self/autogroup", "w");
    if (f) { fputs("-15", f); fclose(f); }
    pthread_t t;
    for (int i = 1; i < THREADS; i++) pthread_create(&t, 0, spin, 0);
    spin(0);
}
"#;

/// The test's web server: runs a shell (`sh -c 'exit 0'`) and reaps it, then 0.1 s later
/// starts `sleep 300` with the shell's pid (clone3 with `set_tid`: the pid reused at once), prints
/// "SHELL SLEEP" and waits.
const WWW: &str = r#"
#define _GNU_SOURCE
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    pid_t shell = fork();
    if (shell == 0) { execl("/bin/sh", "sh", "-c", "exit 0", (char *)0); _exit(127); }
    waitpid(shell, 0, 0);
    /* Start times are in clock ticks: a process started in the same tick with the same pid
       is the same process as far as /proc can tell. */
    usleep(100000);
    pid_t tid = shell;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    args.set_tid = (uint64_t)(uintptr_t)&tid;
    args.set_tid_size = 1;
    long again = syscall(SYS_clone3, &args, sizeof args);
    if (again == 0) { execl("/bin/sleep", "sleep", "300", (char *)0); _exit(127); }
    if (again < 0) { perror("clone3"); return 1; }
    printf("%d %ld\n", shell, again);
    fflush(stdout);
    for (;;) pause();
}
"#;

/// The test web server's name (its comm): `lineage.web_servers` holds only it.
const WWW_NAME: &str = "sntkillwww";

/// Build the burner in `dir` (gcc is installed by scripts/setup.sh).
fn build_burner(dir: &Path) -> PathBuf {
    build(dir, "burn", BURNER)
}

/// Compile C `source` to `dir/name`.
fn build(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    fs::write(&src, source).unwrap();
    let out = Command::new("gcc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn config(table: &Table) -> String {
    format!(
        "[resource]\ncpu_percent = 150\nsustain = \"2s\"\nbaseline_deviation = 100\n\
         [enforce]\ntable = \"{}\"\nconnect_guard = false\nkill = true\nkill_grace = \"1s\"\n\
         kill_on = [\"resource\"]\n\
         protect = [\"rustc\", \"cargo\", \"cc1\", \"ld\", \"node\", \"clippy-driver\", \"sentinel\"]\n",
        table.0
    )
}

/// Processes the test started, and every process running the burner; SIGKILLed (and reaped)
/// on drop, even when the test fails.
struct Started {
    pids: Vec<u32>,
    burner: PathBuf,
}

impl Started {
    fn new(burner: &Path) -> Self {
        Self {
            pids: Vec::new(),
            burner: burner.into(),
        }
    }

    fn add(&mut self, pid: u32) -> u32 {
        self.pids.push(pid);
        pid
    }

    /// A child of this test: killed and reaped (by pid) on drop like the others.
    fn child(&mut self, child: Child) -> u32 {
        self.add(child.id())
    }

    /// Live processes running the burner.
    fn burners(&self) -> Vec<u32> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == self.burner)
                    && state(*pid).is_some()
            })
            .collect()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let mut all = self.pids.clone();
        all.extend(self.burners());
        for &pid in &all {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for &pid in &all {
            let _ = waitpid(Pid::from_raw(pid as i32), None);
        }
        // Orphans that died under this subreaper (the agent, started later, is already
        // stopped and reaped).
        while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if s == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// Run `script` with sh and return the pid it prints (the pid of a background job, which
/// becomes an orphan of this subreaper when sh exits).
fn orphan(script: &str) -> u32 {
    let out = Command::new("sh")
        .args(["-c", &format!("{script} >/dev/null 2>&1 & echo $!")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `pid`'s state letter, or None when it is gone. A dead orphan of ours is reaped here.
fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let s = stat[stat.rfind(')')? + 2..].chars().next()?;
    if s == 'Z' {
        let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
        return None;
    }
    Some(s)
}

fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while state(pid).is_some() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
    true
}

fn kills(agent: &Agent) -> u64 {
    agent.status()["kills"].as_u64().unwrap()
}

fn become_subreaper() {
    prctl::set_child_subreaper(true).unwrap();
}

/// SIGSTOP `pid` now, SIGCONT on drop (even when the test fails).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGCONT);
    }
}

/// (device, inode) of the file at `path`.
fn file_id(path: &str) -> (u64, u64) {
    let m = fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

#[test]
fn a_double_forked_burner_is_killed_and_nothing_else() {
    if !require_root("a_double_forked_burner_is_killed_and_nothing_else") {
        return;
    }
    let _serial = serial();
    become_subreaper();
    let table = Table::new("kill2f");
    let dir = tempfile::tempdir().unwrap();
    let burn = build_burner(dir.path());
    let mut started = Started::new(&burn);
    let agent = Agent::start_with("", &config(&table));
    // An orphaned bystander, then the burner, double-forked the same way: both are children
    // of this test now, as they would be of pid 1 without the subreaper.
    let bystander = started.add(orphan("sleep 300"));
    let burner = started.add(orphan(&burn.display().to_string()));

    let alert = agent.wait_for("alert", "resource on the burner", |a| {
        a["anomaly"] == "resource" && a["pid"] == burner
    });
    assert!(
        wait_gone(burner, Duration::from_secs(15)),
        "the burner survived:\n{}",
        agent.log()
    );
    // Its repeats kept coming while it ignored SIGTERM; none widened the response. Give the
    // agent a few CPU intervals more to do something wrong.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        state(bystander).map(|s| s != 'Z'),
        Some(true),
        "the orphaned bystander was killed:\n{}",
        agent.log()
    );
    assert_eq!(kills(&agent), 1, "only the burner: {}", agent.log());
    assert!(
        !agent.log().contains("escalated"),
        "alert {alert} escalated:\n{}",
        agent.log()
    );
}

#[test]
fn a_loop_that_restarts_its_killed_burner_is_killed() {
    if !require_root("a_loop_that_restarts_its_killed_burner_is_killed") {
        return;
    }
    let _serial = serial();
    become_subreaper();
    let table = Table::new("killloop");
    let dir = tempfile::tempdir().unwrap();
    let burn = build_burner(dir.path());
    let mut started = Started::new(&burn);
    let agent = Agent::start_with("", &config(&table));
    let bystander = started.add(orphan("sleep 300"));
    let mut looper = Command::new("bash")
        .args([
            "-c",
            &format!(
                "while :; do {} >/dev/null 2>&1; sleep 0.2; done",
                burn.display()
            ),
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let loop_pid = started.add(looper.id());

    // The first burner is killed alone; the loop starts a new one; that one takes the loop
    // with it.
    let first = agent.wait_for("alert", "resource on the first burner", |a| {
        a["anomaly"] == "resource" && a["exe"] == burn.to_str().unwrap()
    });
    let first_pid = first["pid"].as_u64().unwrap() as u32;
    assert!(wait_gone(first_pid, Duration::from_secs(15)));
    agent.wait_for("alert", "resource on the restarted burner", |a| {
        a["anomaly"] == "resource" && a["pid"] != first_pid && a["exe"] == burn.to_str().unwrap()
    });
    assert!(
        wait_gone(loop_pid, Duration::from_secs(15)),
        "the loop {loop_pid} that restarts the burner survived:\n{}",
        agent.log()
    );
    // The detector agrees: a program the agent killed came back under the loop.
    let respawn = agent.wait_for("alert", "respawn of the burner", |a| {
        a["anomaly"] == "respawn" && a["exe"] == burn.to_str().unwrap()
    });
    let detail = respawn["detail"].as_str().unwrap();
    assert!(
        detail.contains("after the agent killed it")
            && detail.contains(&format!("its parent bash (pid {loop_pid})")),
        "{respawn}"
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("terminated pid={loop_pid} ")) && log.contains("respawned=true"),
        "the loop was not terminated as the respawner:\n{log}"
    );
    assert_eq!(
        state(bystander).map(|s| s != 'Z'),
        Some(true),
        "the bystander was killed:\n{}",
        agent.log()
    );
    // Nothing of the loop is left running (the last burner ignores SIGTERM: it goes at the
    // end of the grace period).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !started.burners().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // Already reaped by `state` when it died; this only keeps the handle honest.
    let _ = looper.wait();
    let left = started.burners();
    assert!(left.is_empty(), "burners left: {left:?}\n{}", agent.log());
}

#[test]
fn a_burner_bind_mounted_over_sshd_is_no_sshd() {
    if !require_root("a_burner_bind_mounted_over_sshd_is_no_sshd") {
        return;
    }
    const SSHD: &str = "/usr/sbin/sshd";
    if !Path::new(SSHD).is_file() {
        eprintln!("\n*** SKIPPED a_burner_bind_mounted_over_sshd_is_no_sshd: no {SSHD} ***\n");
        return;
    }
    let _serial = serial();
    become_subreaper();
    let table = Table::new("killbind");
    let dir = tempfile::tempdir().unwrap();
    let burn = build_burner(dir.path());
    let mut started = Started::new(&burn);
    let sshd_before = file_id(SSHD);
    let agent = Agent::start_with("", &config(&table));
    let bystander = started.add(orphan("sleep 300"));
    // The bind mount lives in the burner's private mount namespace only; unshare and sh exec,
    // so the burner keeps the spawned pid.
    let disguised = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} {SSHD} && exec {SSHD}",
            burn.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let burner = started.child(disguised);

    let alert = agent.wait_for("alert", "resource on the disguised burner", |a| {
        a["anomaly"] == "resource" && a["pid"] == burner
    });
    assert_eq!(
        alert["exe"], SSHD,
        "the burner did not run as {SSHD}: {alert}"
    );
    assert!(
        wait_gone(burner, Duration::from_secs(15)),
        "the burner run as {SSHD} was protected:\n{}",
        agent.log()
    );
    assert_eq!(kills(&agent), 1, "only the burner: {}", agent.log());
    assert_eq!(state(bystander).map(|s| s != 'Z'), Some(true));
    // The host never saw the bind mount.
    assert_eq!(file_id(SSHD), sshd_before);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(SSHD), "{mounts}");
}

#[test]
fn a_reused_pid_is_never_signalled() {
    if !require_root("a_reused_pid_is_never_signalled") {
        return;
    }
    let _serial = serial();
    become_subreaper();
    let table = Table::new("killreuse");
    let dir = tempfile::tempdir().unwrap();
    let www = build(dir.path(), WWW_NAME, WWW);
    let mut started = Started::new(&www);
    let agent = Agent::start_with(
        "",
        &format!(
            "[lineage]\nweb_servers = [\"{WWW_NAME}\"]\ninterpreters = []\nany_listener = false\n\
             [enforce]\ntable = \"{}\"\nconnect_guard = false\nkill = true\nkill_grace = \"1s\"\n\
             kill_on = [\"lineage\"]\n",
            table.0
        ),
    );
    // While the agent is stopped, its events wait in the ring buffer: the shell runs under
    // the web server, exits, and its pid goes to a bystander before the agent hears of it.
    let (shell, bystander) = {
        let _stopped = Stopped::new(agent.pid());
        let mut server = Command::new(&www)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = server.stdout.take().unwrap();
        started.child(server);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let pids: Vec<u32> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{WWW_NAME} printed {line:?}");
        started.add(pids[1]);
        (pids[0], pids[1])
    };
    assert_eq!(shell, bystander, "clone3 set_tid gave another pid");

    agent.wait_for("alert", "lineage on the shell", |a| {
        a["anomaly"] == "lineage" && a["pid"] == shell
    });
    // Time for a wrong kill, SIGTERM and the grace period.
    thread::sleep(Duration::from_secs(3));
    let log = agent.log();
    assert_eq!(
        state(bystander).map(|s| s != 'Z'),
        Some(true),
        "the process that reused the shell's pid was killed:\n{log}"
    );
    assert_eq!(kills(&agent), 0, "{log}");
    assert!(log.contains("is another process now"), "{log}");
}
