//! Process response (`enforce.kill`): terminate the offending process tree of a `lineage`,
//! `resource` or `reverse_shell` alert (`enforce.kill_on`) — SIGTERM, then SIGKILL after
//! `enforce.kill_grace` — once per alert.
//!
//! It widens to the parent only on a **real respawn**: after a kill, a *new* process running
//! the same executable appears under the same parent (same pid and start time) and is itself
//! alerted on. A repeat of an alert already acted on (the killed process lingering through its
//! grace period, a burner that ignores SIGTERM) changes nothing. The parent is never pid 1,
//! the agent or an ancestor of it, a subreaper (a process that adopted an orphan it did not
//! fork), nor any process whose subtree holds sshd or a login session (a login program, or a
//! session leader with a terminal such as a login shell); then only the new process is killed.
//!
//! Protected programs are recognised by the identity of the file they run, never by the name a
//! process gives itself (`comm` is attacker-controlled) nor by the path it shows
//! ([`super::protect`]).
//!
//! The culprit is the process (pid, start time) the alert's finding named: when its pid now
//! belongs to another process (it exited and the pid was reused before the response), nothing
//! is signalled. Every target is checked again by (pid, start time) before each signal, so a
//! reused pid is never hit. Every kill is recorded by the pipeline.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sentinel_common::events::exec::ExeId;
use tracing::{info, warn};

use super::protect::{ALWAYS_PROTECTED, Protection, identity};
use crate::enrich::tree::{ProcessTree, is_alive, read_stat};

/// How long a kill is remembered: a new instance after that is a fresh start, not a respawn.
const RESPAWN_WINDOW: Duration = Duration::from_secs(120);

/// Executables whose presence in a subtree means a login session lives there.
const LOGIN_EXES: [&str; 5] = [
    "sshd",
    "sshd-session",
    "sshd-auth",
    "login",
    "systemd-logind",
];

/// One process to signal, as identified when the decision was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    /// Start time in clock ticks (as in the tree and `/proc/<pid>/stat`).
    pub start: u64,
    pub exe: String,
}

/// What the killer knows of one live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub ppid: u32,
    pub start: u64,
    pub comm: String,
    /// Absolute path of the executable, when known.
    pub exe: Option<String>,
    /// Identity of the file it runs (`stat` of `/proc/PID/exe`), when it can be read.
    pub exe_id: Option<ExeId>,
    /// The process that forked it (0: unknown).
    pub forked_by: u32,
    /// It leads its session and has a controlling terminal (a login shell).
    pub login_leader: bool,
}

impl Facts {
    /// The executable, or the name when it is unknown (for records and respawn matching).
    fn program(&self) -> String {
        self.exe
            .clone()
            .unwrap_or_else(|| format!("[{}]", self.comm))
    }
}

/// The live processes, read at the moment of a decision.
pub type Snapshot = HashMap<u32, Facts>;

/// Read every process in `proc_root` (live parents, sessions), with executables from the
/// tree (what the kernel reported at exec) or `/proc/PID/exe`, and the identity of the file
/// each runs.
pub fn snapshot(tree: &ProcessTree, proc_root: &Path) -> Snapshot {
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Snapshot::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let s = read_stat(proc_root, pid)?;
            let known = tree.get(pid).filter(|p| p.start == s.start);
            let link = proc_root.join(pid.to_string()).join("exe");
            let exe = known
                .and_then(|p| p.filename.as_deref().map(str::to_owned))
                .filter(|f| f.starts_with('/'))
                .or_else(|| {
                    fs::read_link(&link)
                        .ok()
                        .map(|p| p.to_string_lossy().into_owned())
                });
            let facts = Facts {
                ppid: s.ppid,
                start: s.start,
                comm: s.comm,
                exe,
                exe_id: identity(&link),
                forked_by: known.map_or(0, |p| p.forked_by),
                login_leader: s.session == pid && s.tty != 0,
            };
            Some((pid, facts))
        })
        .collect()
}

/// A kill the killer remembers, to recognise a respawn and repeats.
#[derive(Debug)]
struct Acted {
    alert: String,
    at: Instant,
    /// Everything signalled.
    killed: HashSet<(u32, u64)>,
    /// The culprit's parent (pid, start) and program.
    parent: (u32, u64),
    program: String,
    /// Processes of that program under that parent at the time: not respawns.
    before: HashSet<(u32, u64)>,
}

/// What to do about one alert.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub targets: Vec<Target>,
    /// The parent that respawned the culprit is among the targets.
    pub escalated: bool,
    /// Why the plan is smaller than it could be (for the log and the kill record).
    pub note: Option<String>,
}

pub struct Killer {
    /// `enforce.kill_on`: the anomalies responded to.
    anomalies: Vec<String>,
    grace: Duration,
    protection: Protection,
    agent_tgid: u32,
    proc_root: PathBuf,
    acted: Vec<Acted>,
}

impl Killer {
    /// `protect` is `enforce.protect`; its paths and the built-in ones are resolved now, in
    /// the agent's (the host's) mount namespace.
    pub fn new(grace: Duration, protect: Vec<String>, agent_tgid: u32, proc_root: &Path) -> Self {
        Self {
            anomalies: crate::config::KILLABLE.map(String::from).to_vec(),
            grace,
            protection: Protection::new(&ALWAYS_PROTECTED, protect),
            agent_tgid,
            proc_root: proc_root.into(),
            acted: Vec::new(),
        }
    }

    /// Respond only to these anomalies (`enforce.kill_on`).
    pub fn responding_to(mut self, anomalies: Vec<String>) -> Self {
        self.anomalies = anomalies;
        self
    }

    /// Whether an alert of `anomaly` gets the process response.
    pub fn responds_to(&self, anomaly: &str) -> bool {
        self.anomalies.iter().any(|a| a == anomaly)
    }

    /// The live processes, for [`Killer::plan`] (the protected paths are resolved again).
    pub fn snapshot(&mut self, tree: &ProcessTree) -> Snapshot {
        self.protection.refresh();
        snapshot(tree, &self.proc_root)
    }

    /// Why `pid` is never signalled, if it is not.
    pub fn protected_reason(&self, snap: &Snapshot, pid: u32) -> Option<String> {
        if pid <= 1 {
            return Some("pid 1".into());
        }
        if self.agent_line(snap).contains(&pid) {
            return Some("the agent or one of its ancestors".into());
        }
        self.protection.reason(snap.get(&pid)?)
    }

    /// The agent and its ancestors.
    fn agent_line(&self, snap: &Snapshot) -> HashSet<u32> {
        let mut line = HashSet::from([self.agent_tgid]);
        let mut cur = self.agent_tgid;
        while let Some(p) = snap.get(&cur) {
            if p.ppid == 0 || !line.insert(p.ppid) {
                break;
            }
            cur = p.ppid;
        }
        line
    }

    /// Why the parent `pid` of a respawned program must not be terminated, if so.
    fn escalation_refusal(&self, snap: &Snapshot, pid: u32) -> Option<String> {
        if let Some(why) = self.protected_reason(snap, pid) {
            return Some(why);
        }
        if snap
            .iter()
            .any(|(_, c)| c.ppid == pid && c.forked_by != 0 && c.forked_by != pid)
        {
            return Some("it is a subreaper (it adopted an orphan)".into());
        }
        let subtree = std::iter::once(pid).chain(descendants(snap, pid));
        for q in subtree {
            let Some(p) = snap.get(&q) else { continue };
            let base = p.exe.as_deref().map(|e| e.rsplit('/').next().unwrap_or(e));
            if base.is_some_and(|b| LOGIN_EXES.contains(&b)) {
                return Some(format!("its subtree holds {} (pid {q})", p.program()));
            }
            if p.login_leader {
                return Some(format!("its subtree holds a login session (pid {q})"));
            }
            if let Some(why) = self.protected_reason(snap, q) {
                return Some(format!("its subtree holds pid {q}: {why}"));
            }
        }
        None
    }

    /// Whether the process `pid` (started at `start`) was already dealt with for `alert`: a
    /// repeat needs no look at `/proc`.
    pub fn settled(&self, alert: &str, pid: u32, start: u64) -> bool {
        let me = (pid, start);
        self.acted
            .iter()
            .any(|a| a.killed.contains(&me) || (a.alert == alert && a.before.contains(&me)))
    }

    /// The processes to terminate for alert `alert` on `culprit` (pid, start time, as the
    /// alert's finding knew it): its subtree the first time; nothing for a repeat, nor when
    /// the pid is another process's now; the parent's subtree when `culprit` is a respawn (a
    /// new process of a killed program under the same parent) and the parent may be touched.
    pub fn plan(
        &mut self,
        snap: &Snapshot,
        alert: &str,
        (culprit, start): (u32, u64),
        now: Instant,
    ) -> Plan {
        self.acted
            .retain(|a| now.duration_since(a.at) < RESPAWN_WINDOW);
        let Some(c) = snap.get(&culprit) else {
            return Plan::default();
        };
        if c.start != start {
            return note(&format!(
                "pid {culprit} is another process now ({}, started at tick {}; the alert's \
                 started at {start}): not signalled",
                c.comm, c.start
            ));
        }
        let me = (culprit, c.start);
        if self.acted.iter().any(|a| a.killed.contains(&me)) {
            return note("already terminated");
        }
        let parent = (c.ppid, snap.get(&c.ppid).map_or(0, |p| p.start));
        let program = c.program();
        let respawn = self
            .acted
            .iter()
            .any(|a| a.parent == parent && a.program == program && !a.before.contains(&me));
        if !respawn && self.acted.iter().any(|a| a.alert == alert) {
            return note("this alert was already acted on");
        }
        let (root, escalated, why) = if respawn {
            match self.escalation_refusal(snap, c.ppid) {
                None => (c.ppid, true, None),
                Some(why) => (
                    culprit,
                    false,
                    Some(format!(
                        "{program} respawned under pid {}, not escalating: {why}",
                        c.ppid
                    )),
                ),
            }
        } else {
            (culprit, false, None)
        };
        let targets = self.subtree_targets(snap, root);
        self.acted.push(Acted {
            alert: alert.into(),
            at: now,
            killed: targets.iter().map(|t| (t.pid, t.start)).collect(),
            parent,
            program: program.clone(),
            before: snap
                .iter()
                .filter(|(_, p)| p.ppid == parent.0 && p.program() == program)
                .map(|(pid, p)| (*pid, p.start))
                .collect(),
        });
        Plan {
            targets,
            escalated,
            note: why,
        }
    }

    /// `root` and its descendants, less the protected ones (logged).
    fn subtree_targets(&self, snap: &Snapshot, root: u32) -> Vec<Target> {
        std::iter::once(root)
            .chain(descendants(snap, root))
            .filter_map(|pid| {
                let p = snap.get(&pid)?;
                if let Some(why) = self.protected_reason(snap, pid) {
                    info!(pid, comm = %p.comm, "not killing: {why}");
                    return None;
                }
                Some(Target {
                    pid,
                    start: p.start,
                    exe: p.program(),
                })
            })
            .collect()
    }

    /// Whether `t` is still the process it was (not exited, pid not reused).
    fn same(&self, t: &Target) -> bool {
        is_alive(&self.proc_root, t.pid, t.start)
    }

    /// SIGTERM every target now, SIGKILL the survivors after the grace period (on a thread,
    /// so the event loop never waits). Returns the targets actually signalled.
    pub fn terminate(&self, targets: Vec<Target>) -> Vec<Target> {
        let hit: Vec<Target> = targets
            .into_iter()
            .filter(|t| self.same(t))
            .filter(
                |t| match kill(Pid::from_raw(t.pid as i32), Signal::SIGTERM) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(pid = t.pid, "SIGTERM failed: {e}");
                        false
                    }
                },
            )
            .collect();
        if !hit.is_empty() {
            let survivors = hit.clone();
            let grace = self.grace;
            let root = self.proc_root.clone();
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                for t in survivors {
                    if is_alive(&root, t.pid, t.start) {
                        info!(pid = t.pid, "still alive after the grace period: SIGKILL");
                        let _ = kill(Pid::from_raw(t.pid as i32), Signal::SIGKILL);
                    }
                }
            });
        }
        hit
    }
}

fn note(why: &str) -> Plan {
    Plan {
        note: Some(why.into()),
        ..Plan::default()
    }
}

/// Children, grandchildren, … of `pid` by their live parents (breadth first).
fn descendants(snap: &Snapshot, pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut seen = HashSet::from([pid]);
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        let mut kids: Vec<u32> = snap
            .iter()
            .filter(|(q, p)| p.ppid == parent && seen.insert(**q))
            .map(|(q, _)| *q)
            .collect();
        kids.sort_unstable();
        frontier.extend(&kids);
        out.extend(kids);
    }
    out
}

#[cfg(test)]
mod tests;
