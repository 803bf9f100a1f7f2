//! The process response (`enforce.kill`) end to end, on the resource detector: a CPU burner is
//! killed and nothing else is; the agent widens to the parent only when a killed burner really
//! comes back under it.
//!
//! Confinement, so that a wrong response can only hurt the test's own processes: the test
//! process makes itself a child subreaper, so orphans it creates land under it, never under the
//! machine's pid 1. The burner is a C program the test compiles: 16 spinning threads in a
//! session (and so a scheduler autogroup) of its own at autogroup nice -15, so it takes most of
//! the machine's two CPUs however busy the machine is, and `resource.cpu_percent` is set above
//! what any single-threaded process can reach (150 % of one CPU for 2 s), which nothing else
//! reaches while the burner runs. Only resource alerts get the process response
//! (`enforce.kill_on`: other tests' shells under their web servers are none of this agent's
//! business), and common heavy tools are in `enforce.protect` besides.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
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

/// Build the burner in `dir` (gcc is installed by scripts/setup.sh).
fn build_burner(dir: &Path) -> PathBuf {
    let src = dir.join("burn.c");
    let exe = dir.join("burn");
    fs::write(&src, BURNER).unwrap();
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
