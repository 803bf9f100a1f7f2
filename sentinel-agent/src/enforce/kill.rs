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
//! Protected programs are recognised by executable — the path the kernel reported at exec, or
//! `/proc/PID/exe` — not by the name a process gives itself (`comm` is attacker-controlled);
//! only a process whose executable is unknown (running since before the agent, unreadable) is
//! also protected by name, which can only spare it.
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
use tracing::{info, warn};

use crate::{
    config::name_matches,
    enrich::tree::{ProcessTree, is_alive, read_stat},
};

/// How long a kill is remembered: a new instance after that is a fresh start, not a respawn.
const RESPAWN_WINDOW: Duration = Duration::from_secs(120);

/// Executables never killed and never escalated over: sshd and its session binaries, init and
/// systemd (also the per-user manager), login and logind.
const ALWAYS_PROTECTED: [&str; 14] = [
    "/usr/sbin/sshd",
    "/sbin/sshd",
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/openssh/sshd-auth",
    "/usr/libexec/openssh/sshd-session",
    "/usr/libexec/openssh/sshd-auth",
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
    "/sbin/init",
    "/usr/sbin/init",
    "/usr/lib/systemd/systemd-logind",
    "/lib/systemd/systemd-logind",
    "/usr/bin/login",
    "/bin/login",
];

/// Names that protect a process whose executable is unknown.
const PROTECTED_NAMES: [&str; 5] = ["sshd", "sshd-session", "systemd", "init", "login"];

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
/// tree (what the kernel reported at exec) or `/proc/PID/exe`.
pub fn snapshot(tree: &ProcessTree, proc_root: &Path) -> Snapshot {
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Snapshot::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let s = read_stat(proc_root, pid)?;
            let known = tree.get(pid).filter(|p| p.start == s.start);
            let exe = known
                .and_then(|p| p.filename.clone())
                .filter(|f| f.starts_with('/'))
                .or_else(|| {
                    fs::read_link(proc_root.join(pid.to_string()).join("exe"))
                        .ok()
                        .map(|p| p.to_string_lossy().into_owned())
                });
            let facts = Facts {
                ppid: s.ppid,
                start: s.start,
                comm: s.comm,
                exe,
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
    protect: Vec<String>,
    agent_tgid: u32,
    proc_root: PathBuf,
    acted: Vec<Acted>,
}

/// Whether `protect` (an `enforce.protect` entry: a name, or an absolute path) names `exe`.
fn names(entry: &str, exe: &str) -> bool {
    if entry.starts_with('/') {
        return entry == exe;
    }
    let base = exe.rsplit('/').next().unwrap_or(exe);
    name_matches(entry, base)
}

impl Killer {
    pub fn new(grace: Duration, protect: Vec<String>, agent_tgid: u32, proc_root: &Path) -> Self {
        Self {
            anomalies: crate::config::KILLABLE.map(String::from).to_vec(),
            grace,
            protect,
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

    /// The live processes, for [`Killer::plan`].
    pub fn snapshot(&self, tree: &ProcessTree) -> Snapshot {
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
        let p = snap.get(&pid)?;
        match &p.exe {
            Some(exe) if ALWAYS_PROTECTED.contains(&exe.as_str()) => {
                Some(format!("{exe} is always protected"))
            }
            Some(exe) => self
                .protect
                .iter()
                .find(|n| names(n, exe))
                .map(|n| format!("{exe} is in enforce.protect ({n})")),
            None => {
                let mut all = PROTECTED_NAMES
                    .iter()
                    .copied()
                    .chain(self.protect.iter().map(String::as_str));
                all.any(|n| name_matches(n, &p.comm))
                    .then(|| format!("{} (executable unknown) is protected by name", p.comm))
            }
        }
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
mod tests {
    use super::*;

    const AGENT: u32 = 99;

    fn p(ppid: u32, comm: &str, exe: Option<&str>, forked_by: u32) -> Facts {
        Facts {
            ppid,
            start: 1000,
            comm: comm.into(),
            exe: exe.map(Into::into),
            forked_by,
            login_leader: false,
        }
    }

    /// systemd (1) → sshd (5) → session (6) → login shell (7); systemd → node (10) → sh (20)
    /// → /tmp/xmrig (21); systemd → the agent (99).
    fn host() -> Snapshot {
        let mut s = Snapshot::from([
            (1, p(0, "systemd", Some("/usr/lib/systemd/systemd"), 0)),
            (5, p(1, "sshd", Some("/usr/sbin/sshd"), 1)),
            (6, p(5, "sshd", Some("/usr/sbin/sshd"), 5)),
            (7, p(6, "bash", Some("/usr/bin/bash"), 6)),
            (10, p(1, "node", Some("/usr/bin/node"), 1)),
            (20, p(10, "sh", Some("/usr/bin/dash"), 10)),
            (21, p(20, "xmrig", Some("/tmp/xmrig"), 20)),
            (AGENT, p(1, "sentinel", Some("/usr/local/bin/sentinel"), 1)),
        ]);
        s.get_mut(&7).unwrap().login_leader = true;
        s
    }

    fn killer() -> Killer {
        Killer::new(Duration::from_secs(1), vec![], AGENT, Path::new("/proc"))
    }

    /// `pid` as an alert names it: with its start time.
    fn at(snap: &Snapshot, pid: u32) -> (u32, u64) {
        (pid, snap[&pid].start)
    }

    fn pids(plan: &Plan) -> Vec<u32> {
        plan.targets.iter().map(|t| t.pid).collect()
    }

    /// `pid` exits and `new` (same program) appears under its parent, started later.
    fn respawn(snap: &mut Snapshot, pid: u32, new: u32) {
        let mut f = snap.remove(&pid).unwrap();
        f.start += 500;
        f.forked_by = f.ppid;
        snap.insert(new, f);
    }

    #[test]
    fn kills_the_subtree_once_and_repeats_change_nothing() {
        let mut snap = host();
        snap.insert(22, p(10, "sh", Some("/usr/bin/dash"), 10));
        let mut k = killer();
        let now = Instant::now();
        let plan = k.plan(&snap, "a1", at(&snap, 20), now);
        assert_eq!((pids(&plan), plan.escalated), (vec![20, 21], false));
        // A repeat while the process lingers (SIGTERM ignored, grace running): nothing.
        let again = k.plan(&snap, "a1", at(&snap, 20), now + Duration::from_secs(1));
        assert!(again.targets.is_empty(), "{again:?}");
        assert!(k.settled("a1", 20, 1000));
        // A repeat of the same alert naming another process that was already there.
        snap.remove(&20);
        let other = k.plan(&snap, "a1", at(&snap, 22), now + Duration::from_secs(2));
        assert!(other.targets.is_empty(), "{other:?}");
    }

    #[test]
    fn a_reused_pid_is_never_planned() {
        // The alert named /tmp/xmrig (21, started at 1000); it exited and its pid now belongs
        // to another process, with a child of its own.
        let mut snap = host();
        let alerted = at(&snap, 21);
        let bystander = snap.get_mut(&21).unwrap();
        (bystander.start, bystander.comm) = (2000, "postgres".into());
        bystander.exe = Some("/usr/lib/postgresql/bin/postgres".into());
        snap.insert(
            25,
            p(21, "postgres", Some("/usr/lib/postgresql/bin/postgres"), 21),
        );
        let mut k = killer();
        let plan = k.plan(&snap, "a1", alerted, Instant::now());
        assert!(plan.targets.is_empty(), "{plan:?}");
        assert!(plan.note.unwrap().contains("another process"));
        // Nothing was recorded: an alert on the process that holds the pid now is answered.
        assert_eq!(
            pids(&k.plan(&snap, "a2", at(&snap, 21), Instant::now())),
            [21, 25]
        );
    }

    #[test]
    fn a_double_forked_burner_under_pid_1_never_widens() {
        // The burner's forking parent (40) exited: it was adopted by pid 1.
        let mut snap = host();
        snap.insert(50, p(1, "burn", Some("/tmp/burn"), 40));
        snap.insert(60, p(1, "bystander", Some("/usr/bin/sleep"), 41));
        let mut k = killer();
        let now = Instant::now();
        assert_eq!(pids(&k.plan(&snap, "r1", at(&snap, 50), now)), [50]);
        for i in 1..5 {
            let plan = k.plan(&snap, "r1", at(&snap, 50), now + Duration::from_secs(i));
            assert!(plan.targets.is_empty(), "{plan:?}");
        }
        // It comes back under pid 1 (a service manager restarting it): only the new one.
        respawn(&mut snap, 50, 51);
        let plan = k.plan(&snap, "r2", at(&snap, 51), now + Duration::from_secs(6));
        assert_eq!(pids(&plan), [51]);
        assert!(!plan.escalated);
        assert!(plan.note.unwrap().contains("pid 1"));
    }

    #[test]
    fn a_real_respawn_escalates_to_the_loop_that_respawns() {
        let mut snap = host();
        let mut k = killer();
        let now = Instant::now();
        assert_eq!(pids(&k.plan(&snap, "r1", at(&snap, 21), now)), [21]);
        respawn(&mut snap, 21, 23);
        let plan = k.plan(&snap, "r2", at(&snap, 23), now + Duration::from_secs(3));
        assert!(plan.escalated, "{plan:?}");
        assert_eq!(pids(&plan), [20, 23]);
        // Long after the kill it is a fresh start, not a respawn.
        let mut k = killer();
        let mut snap = host();
        k.plan(&snap, "r1", at(&snap, 21), now);
        respawn(&mut snap, 21, 24);
        let late = k.plan(&snap, "r3", at(&snap, 24), now + RESPAWN_WINDOW);
        assert_eq!((pids(&late), late.escalated), (vec![24], false));
    }

    #[test]
    fn never_escalates_to_a_subreaper() {
        // 70 adopted 71 (forked by 72, gone), and also forks burners itself.
        let mut snap = host();
        snap.insert(70, p(1, "supervise", Some("/usr/bin/supervise"), 1));
        snap.insert(71, p(70, "orphan", Some("/usr/bin/sleep"), 72));
        snap.insert(73, p(70, "burn", Some("/tmp/burn"), 70));
        let mut k = killer();
        let now = Instant::now();
        k.plan(&snap, "r1", at(&snap, 73), now);
        respawn(&mut snap, 73, 74);
        let plan = k.plan(&snap, "r2", at(&snap, 74), now + Duration::from_secs(3));
        assert_eq!((pids(&plan), plan.escalated), (vec![74], false));
        assert!(plan.note.unwrap().contains("subreaper"));
    }

    #[test]
    fn never_escalates_over_a_login_session_or_sshd() {
        // A burner respawned by the operator's login shell: the shell is spared.
        let mut snap = host();
        snap.insert(80, p(7, "burn", Some("/tmp/burn"), 7));
        let mut k = killer();
        let now = Instant::now();
        k.plan(&snap, "r1", at(&snap, 80), now);
        respawn(&mut snap, 80, 81);
        let plan = k.plan(&snap, "r2", at(&snap, 81), now + Duration::from_secs(3));
        assert_eq!((pids(&plan), plan.escalated), (vec![81], false));
        assert!(plan.note.unwrap().contains("login session"));
        // A loop started from that shell is fair game: its subtree holds no login.
        snap.insert(90, p(7, "bash", Some("/usr/bin/bash"), 7));
        snap.insert(91, p(90, "burn2", Some("/tmp/burn2"), 90));
        k.plan(&snap, "r3", at(&snap, 91), now);
        respawn(&mut snap, 91, 92);
        let plan = k.plan(&snap, "r4", at(&snap, 92), now + Duration::from_secs(3));
        assert_eq!((pids(&plan), plan.escalated), (vec![90, 92], true));
        // A supervisor whose subtree holds sshd is never a target.
        let mut snap = host();
        snap.insert(30, p(1, "runsv", Some("/usr/bin/runsv"), 1));
        let sshd = snap.get_mut(&5).unwrap();
        (sshd.ppid, sshd.forked_by) = (30, 30);
        snap.insert(31, p(30, "burn", Some("/tmp/burn"), 30));
        let mut k = killer();
        k.plan(&snap, "r1", at(&snap, 31), now);
        respawn(&mut snap, 31, 32);
        let plan = k.plan(&snap, "r2", at(&snap, 32), now + Duration::from_secs(3));
        assert_eq!((pids(&plan), plan.escalated), (vec![32], false));
        assert!(plan.note.unwrap().contains("/usr/sbin/sshd"));
    }

    #[test]
    fn protection_goes_by_executable_not_by_name() {
        let mut snap = host();
        // A miner calling itself sshd is no sshd; sshd renamed is still sshd.
        snap.insert(40, p(10, "sshd", Some("/tmp/.x/sshd"), 10));
        snap.insert(41, p(10, "xmrig", Some("/usr/sbin/sshd"), 10));
        // Unknown executable (running since before the agent): the name can only spare it.
        snap.insert(42, p(10, "sshd", None, 0));
        snap.insert(43, p(10, "node", None, 0));
        let k = Killer::new(
            Duration::from_secs(1),
            vec!["node".into(), "/opt/app/bin/worker".into()],
            AGENT,
            Path::new("/proc"),
        );
        assert_eq!(k.protected_reason(&snap, 40), None);
        assert!(k.protected_reason(&snap, 41).is_some());
        assert!(k.protected_reason(&snap, 42).is_some());
        assert!(
            k.protected_reason(&snap, 43).is_some(),
            "enforce.protect by name"
        );
        assert!(
            k.protected_reason(&snap, 10).is_some(),
            "/usr/bin/node by name"
        );
        assert!(k.protected_reason(&snap, 1).is_some());
        assert!(k.protected_reason(&snap, AGENT).is_some());
        assert!(k.protected_reason(&snap, 20).is_none());
        snap.insert(44, p(10, "worker", Some("/opt/app/bin/worker"), 10));
        snap.insert(45, p(10, "worker", Some("/tmp/worker"), 10));
        assert!(k.protected_reason(&snap, 44).is_some(), "by path");
        assert!(
            k.protected_reason(&snap, 45).is_none(),
            "a path names one file"
        );
    }

    #[test]
    fn the_agent_and_its_ancestors_are_never_targets() {
        // The agent runs below the culprit (e.g. started from a shell the alert names).
        let mut snap = host();
        snap.get_mut(&AGENT).unwrap().ppid = 21;
        let mut k = killer();
        let plan = k.plan(&snap, "a", at(&snap, 20), Instant::now());
        assert!(plan.targets.is_empty(), "{plan:?}");
        // Beside the culprit's own child: that child still goes.
        snap.get_mut(&AGENT).unwrap().ppid = 20;
        let mut k = killer();
        assert_eq!(
            pids(&k.plan(&snap, "a", at(&snap, 20), Instant::now())),
            [21]
        );
    }
}
