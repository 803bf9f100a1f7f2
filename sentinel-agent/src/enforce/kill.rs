//! Process response (`enforce.kill`): terminate the offending process tree of a `lineage` or
//! `resource` alert — SIGTERM, then SIGKILL after `enforce.kill_grace` — and when the same
//! program comes back under the same parent, escalate to the parent that respawns it. Never
//! pid 1, the agent (or an ancestor of it), sshd, or a process named in `enforce.protect`.
//! Every kill is recorded. Processes are checked by (pid, start time) before each signal, so a
//! reused pid is never hit.

use std::{
    collections::HashMap,
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
    enrich::tree::{ProcessTree, is_alive},
};

/// A program killed again under the same parent within this window is a respawn.
const RESPAWN_WINDOW: Duration = Duration::from_secs(120);

/// Names never killed whatever the configuration says.
const ALWAYS_PROTECTED: [&str; 2] = ["sshd", "systemd"];

/// One process to signal, as identified when the decision was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    /// Start time in clock ticks (as in the tree and `/proc/<pid>/stat`).
    pub start: u64,
    pub exe: String,
}

pub struct Killer {
    grace: Duration,
    protect: Vec<String>,
    agent_tgid: u32,
    proc_root: PathBuf,
    /// (parent pid, exe) → when it was last killed.
    recent: HashMap<(u32, String), Instant>,
}

/// Why a process is not touched.
pub fn protected_reason(
    pid: u32,
    comm: &str,
    agent_tgid: u32,
    protect: &[String],
    tree: &ProcessTree,
) -> Option<String> {
    if pid <= 1 {
        return Some("pid 1".into());
    }
    if pid == agent_tgid || tree.descends_from(agent_tgid, pid) {
        return Some("the agent or one of its ancestors".into());
    }
    if ALWAYS_PROTECTED.iter().any(|n| name_matches(n, comm)) {
        return Some(format!("{comm} is always protected"));
    }
    if protect.iter().any(|n| name_matches(n, comm)) {
        return Some(format!("{comm} is in enforce.protect"));
    }
    None
}

impl Killer {
    pub fn new(grace: Duration, protect: Vec<String>, agent_tgid: u32, proc_root: &Path) -> Self {
        Self {
            grace,
            protect,
            agent_tgid,
            proc_root: proc_root.into(),
            recent: HashMap::new(),
        }
    }

    /// The processes to terminate for an alert on `culprit`: its whole subtree, or — when the
    /// same program was killed under the same parent moments ago — the parent's subtree.
    /// Protected processes are left out (and logged).
    pub fn plan(&mut self, tree: &ProcessTree, culprit: u32, now: Instant) -> (Vec<Target>, bool) {
        self.recent
            .retain(|_, at| now.duration_since(*at) < RESPAWN_WINDOW);
        let Some(p) = tree.get(culprit) else {
            return (Vec::new(), false);
        };
        let exe = p.filename.clone().unwrap_or_else(|| p.comm.clone());
        let key = (p.ppid, exe);
        let respawned = self.recent.contains_key(&key);
        self.recent.insert(key, now);
        let root = if respawned { p.ppid } else { culprit };
        let mut pids = vec![(root, tree.get(root).map_or(0, |p| p.start))];
        pids.extend(tree.descendants(root));
        let targets = pids
            .into_iter()
            .filter_map(|(pid, start)| {
                let proc = tree.get(pid)?;
                if let Some(why) =
                    protected_reason(pid, &proc.comm, self.agent_tgid, &self.protect, tree)
                {
                    info!(pid, comm = %proc.comm, "not killing: {why}");
                    return None;
                }
                Some(Target {
                    pid,
                    start,
                    exe: proc.filename.clone().unwrap_or_else(|| proc.comm.clone()),
                })
            })
            .collect();
        (targets, respawned)
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

#[cfg(test)]
mod tests {
    use super::*;

    const NS: u64 = 10_000_000;

    fn tree() -> ProcessTree {
        let mut t = ProcessTree::new(100);
        t.on_exec(1, 0, 0, "systemd", "/sbin/init");
        t.on_fork(1, 5, NS, "systemd");
        t.on_exec(5, 1, NS, "sshd", "/usr/sbin/sshd");
        t.on_fork(1, 10, 2 * NS, "systemd");
        t.on_exec(10, 1, 2 * NS, "node", "/usr/bin/node");
        t.on_fork(10, 20, 3 * NS, "node");
        t.on_exec(20, 10, 3 * NS, "sh", "/bin/sh");
        t.on_fork(20, 21, 4 * NS, "sh");
        t.on_exec(21, 20, 4 * NS, "xmrig", "/tmp/xmrig");
        t.on_fork(1, 99, 5 * NS, "systemd");
        t.on_exec(99, 1, 5 * NS, "sentinel", "/usr/local/bin/sentinel");
        t
    }

    #[test]
    fn kills_the_subtree_then_escalates_on_respawn() {
        let t = tree();
        let mut k = Killer::new(Duration::from_secs(1), vec![], 99, Path::new("/proc"));
        let now = Instant::now();
        let (targets, respawned) = k.plan(&t, 20, now);
        assert!(!respawned);
        let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
        assert_eq!(pids, [20, 21]);
        // The same program under the same parent again: the parent is the target now.
        let (targets, respawned) = k.plan(&t, 20, now + Duration::from_secs(5));
        assert!(respawned);
        assert_eq!(targets[0].pid, 10);
        assert!(targets.iter().any(|t| t.pid == 21));
        // Long after, it is a fresh start.
        let (_, respawned) = k.plan(&t, 20, now + Duration::from_secs(500));
        assert!(!respawned);
    }

    #[test]
    fn protected_processes_are_never_targets() {
        let t = tree();
        let agent = 99;
        assert!(protected_reason(1, "systemd", agent, &[], &t).is_some());
        assert!(protected_reason(99, "sentinel", agent, &[], &t).is_some());
        assert!(protected_reason(5, "sshd", agent, &[], &t).is_some());
        assert!(protected_reason(10, "node", agent, &["node".into()], &t).is_some());
        assert!(protected_reason(20, "sh", agent, &[], &t).is_none());
        // Escalating to a protected parent leaves the parent alone.
        let mut k = Killer::new(
            Duration::from_secs(1),
            vec!["node".into()],
            agent,
            Path::new("/proc"),
        );
        let now = Instant::now();
        k.plan(&t, 20, now);
        let (targets, respawned) = k.plan(&t, 20, now);
        assert!(respawned);
        assert!(targets.iter().all(|t| t.pid != 10), "{targets:?}");
    }
}
