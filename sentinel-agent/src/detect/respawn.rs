//! `respawn`: persistence by restarting. A program killed — by the agent, or by anyone: an
//! exit by SIGKILL or SIGTERM — that comes back within `respawn.window` from the same origin
//! (the same executable under the same parent, or from the same cron daemon or systemd
//! unit); or a program started more than `respawn.max_spawns` times in a minute by the same
//! parent. The alert names the origin that restarts it. T1053 when cron restarts it, T1543
//! otherwise.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::HashMap;
use serde::Deserialize;

use super::{Anomaly, Culprit, Finding};

/// Words in the detail of a respawn of a program the agent killed: the kill engine acts on
/// those (escalating to the origin).
pub const AFTER_AGENT_KILL: &str = "after the agent killed it";

/// Whether `f` (a `respawn` finding) is a killed program that came back, rather than a
/// program started too often.
pub fn is_comeback(f: &Finding) -> bool {
    f.detail.contains(COMEBACK)
}

const COMEBACK: &str = " came back ";
const SIGTERM: u8 = 15;
const SIGKILL: u8 = 9;
const MINUTE: Duration = Duration::from_secs(60);
/// Killed programs remembered at most.
const MAX_KILLED: usize = 4096;

/// `[respawn]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespawnConfig {
    /// A killed program back within this long is a respawn.
    #[serde(deserialize_with = "crate::config::duration")]
    pub window: Duration,
    /// More starts of one program by one parent within a minute raise `respawn` too.
    pub max_spawns: u32,
}

impl Default for RespawnConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            max_spawns: 120,
        }
    }
}

impl RespawnConfig {
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(86_400) {
            out.push((
                "respawn.window",
                format!(
                    "{} is not between 1s and 24h",
                    humantime::format_duration(self.window)
                ),
            ));
        }
        if !(2..=1_000_000).contains(&self.max_spawns) {
            out.push((
                "respawn.max_spawns",
                format!("{} is not between 2 and 1000000", self.max_spawns),
            ));
        }
        out
    }
}

/// Who starts a process again: its cron daemon, its systemd unit, or its parent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The comms are the process tree's (shared, not copied per exec).
    Cron {
        pid: u32,
        comm: Arc<str>,
    },
    Systemd {
        unit: String,
    },
    Parent {
        pid: u32,
        comm: Arc<str>,
    },
}

impl Origin {
    /// The origin of `culprit`: a cron daemon among its ancestors; else, for a child of
    /// systemd, its service unit (`unit` reads it from the cgroup); else its parent.
    pub fn of(culprit: &Culprit, unit: impl FnOnce() -> Option<String>) -> Option<Origin> {
        if let Some((pid, comm)) = culprit
            .ancestry
            .iter()
            .find(|(_, c)| matches!(&**c, "cron" | "crond" | "anacron" | "atd"))
        {
            return Some(Origin::Cron {
                pid: *pid,
                comm: comm.clone(),
            });
        }
        let (pid, comm) = culprit.ancestry.first()?;
        if (*pid == 1 || &**comm == "systemd")
            && let Some(unit) = unit()
        {
            return Some(Origin::Systemd { unit });
        }
        Some(Origin::Parent {
            pid: *pid,
            comm: comm.clone(),
        })
    }

    fn describe(&self) -> String {
        match self {
            Origin::Cron { pid, comm } => format!("cron ({comm}, pid {pid})"),
            Origin::Systemd { unit } => format!("systemd unit {unit}"),
            Origin::Parent { pid, comm } => format!("its parent {comm} (pid {pid})"),
        }
    }
}

/// The systemd service unit a process runs in, from the text of `/proc/<pid>/cgroup`
/// (`0::/system.slice/nginx.service`); `None` outside a service.
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|path| path.split('/'))
        .rfind(|part| part.ends_with(".service"))
        .map(String::from)
}

#[derive(Debug, Clone)]
struct Killed {
    at: Instant,
    signal: u8,
    by_agent: bool,
}

pub struct Respawn {
    config: RespawnConfig,
    /// (exe, origin) of killed programs. Keys are paths a process may choose: a hash with a
    /// per-map random seed (foldhash), several times cheaper than SipHash per exec.
    killed: HashMap<(String, Origin), Killed>,
    /// Start times of each program by each parent pid within the last minute (parent first:
    /// a program started again looks its entry up without allocating a key).
    starts: HashMap<u32, HashMap<String, VecDeque<Instant>>>,
}

impl Respawn {
    pub fn new(config: RespawnConfig) -> Self {
        Self {
            config,
            killed: HashMap::default(),
            starts: HashMap::default(),
        }
    }

    /// A process of `exe` from `origin` ended with `signal` (0: not by a signal); `by_agent`
    /// when the agent's kill engine terminated it. Remembered when it was killed.
    pub fn on_exit(&mut self, exe: &str, origin: Origin, signal: u8, by_agent: bool, now: Instant) {
        if !(by_agent || signal == SIGKILL || signal == SIGTERM) {
            return;
        }
        if self.killed.len() >= MAX_KILLED {
            let window = self.config.window;
            self.killed.retain(|_, k| now.duration_since(k.at) < window);
            if self.killed.len() >= MAX_KILLED {
                return;
            }
        }
        self.killed.insert(
            (exe.to_string(), origin),
            Killed {
                at: now,
                signal,
                by_agent,
            },
        );
    }

    /// `culprit` (running `exe`, from `origin`) just started: a finding when it is a killed
    /// program back from the same origin, or a start too many.
    pub fn on_exec(
        &mut self,
        culprit: &Culprit,
        exe: &str,
        origin: Option<Origin>,
        now: Instant,
    ) -> Option<Finding> {
        // Nothing killed (nearly always): no key to build.
        let back = origin
            .as_ref()
            .filter(|_| !self.killed.is_empty())
            .and_then(|o| {
                let k = self.killed.remove(&(exe.to_string(), o.clone()))?;
                (now.duration_since(k.at) < self.config.window).then_some((o, k))
            });
        if let Some((origin, k)) = back {
            let how = if k.by_agent {
                AFTER_AGENT_KILL.to_string()
            } else {
                format!("after it was killed by signal {}", k.signal)
            };
            let cron = matches!(origin, Origin::Cron { .. });
            return Some(self.finding(
                culprit,
                Anomaly::Respawn { cron },
                format!(
                    "{exe}{COMEBACK}{:.1}s {how}, restarted by {}",
                    now.duration_since(k.at).as_secs_f64(),
                    origin.describe()
                ),
            ));
        }
        self.count_start(culprit, exe, origin, now)
    }

    fn count_start(
        &mut self,
        culprit: &Culprit,
        exe: &str,
        origin: Option<Origin>,
        now: Instant,
    ) -> Option<Finding> {
        let parent = culprit.ancestry.first().map_or(0, |(p, _)| *p);
        let by_parent = self.starts.entry(parent).or_default();
        let n = match by_parent.get_mut(exe) {
            Some(starts) => {
                while starts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= MINUTE)
                {
                    starts.pop_front();
                }
                starts.push_back(now);
                starts.len()
            }
            None => {
                by_parent.insert(exe.to_string(), VecDeque::from([now]));
                1
            }
        };
        // Raise once when the limit is crossed, not on every start after it.
        if n as u64 != u64::from(self.config.max_spawns) + 1 {
            return None;
        }
        let cron = matches!(origin, Some(Origin::Cron { .. }));
        let by = origin.map_or_else(|| "an unknown parent".into(), |o| o.describe());
        Some(self.finding(
            culprit,
            Anomaly::Respawn { cron },
            format!(
                "{exe} started {n} times within a minute by {by} (respawn.max_spawns = {})",
                self.config.max_spawns
            ),
        ))
    }

    fn finding(&self, c: &Culprit, anomaly: Anomaly, what: String) -> Finding {
        Finding {
            anomaly,
            subject: c.ancestry.first().map_or(c.pid, |(p, _)| *p),
            detail: format!("{} (pid {}): {what}", c.comm, c.pid),
            culprit: c.clone(),
            target: None,
            country: None,
        }
    }

    /// Drop what is older than the window (call now and then).
    pub fn expire(&mut self, now: Instant) {
        let window = self.config.window;
        self.killed.retain(|_, k| now.duration_since(k.at) < window);
        for by_parent in self.starts.values_mut() {
            by_parent.retain(|_, s| s.back().is_some_and(|t| now.duration_since(*t) < MINUTE));
        }
        self.starts.retain(|_, by_parent| !by_parent.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::culprit;

    fn respawn(max_spawns: u32) -> Respawn {
        Respawn::new(RespawnConfig {
            window: Duration::from_secs(60),
            max_spawns,
        })
    }

    fn parent(c: &Culprit) -> Option<Origin> {
        Origin::of(c, || None)
    }

    #[test]
    fn a_killed_program_back_under_the_same_parent_is_a_respawn() {
        let mut r = respawn(100);
        let t0 = Instant::now();
        let first = culprit(20, "payload", &[(10, "bash"), (1, "systemd")]);
        assert!(
            r.on_exec(&first, "/usr/bin/payload", parent(&first), t0)
                .is_none()
        );
        r.on_exit("/usr/bin/payload", parent(&first).unwrap(), 9, false, t0);
        let again = culprit(21, "payload", &[(10, "bash"), (1, "systemd")]);
        let f = r
            .on_exec(
                &again,
                "/usr/bin/payload",
                parent(&again),
                t0 + Duration::from_millis(300),
            )
            .unwrap();
        assert_eq!(f.anomaly, Anomaly::Respawn { cron: false });
        assert_eq!(f.anomaly.mitre().technique, "T1543");
        assert!(f.detail.contains("killed by signal 9"), "{}", f.detail);
        assert!(
            f.detail.contains("its parent bash (pid 10)"),
            "{}",
            f.detail
        );
        assert!(!f.detail.contains(AFTER_AGENT_KILL));
        assert_eq!(f.subject, 10);
    }

    #[test]
    fn cron_and_systemd_origins_are_named() {
        let mut r = respawn(100);
        let t0 = Instant::now();
        let c = culprit(30, "miner", &[(29, "sh"), (28, "cron"), (1, "systemd")]);
        let origin = Origin::of(&c, || None).unwrap();
        assert!(matches!(origin, Origin::Cron { pid: 28, .. }));
        r.on_exit("/tmp/miner", origin.clone(), 0, true, t0);
        // Another sh under the same cron daemon: same origin.
        let c2 = culprit(40, "miner", &[(39, "sh"), (28, "cron"), (1, "systemd")]);
        let f = r
            .on_exec(&c2, "/tmp/miner", Origin::of(&c2, || None), t0)
            .unwrap();
        assert_eq!(f.anomaly, Anomaly::Respawn { cron: true });
        assert_eq!(f.anomaly.mitre().technique, "T1053");
        assert!(f.detail.contains(AFTER_AGENT_KILL), "{}", f.detail);
        assert!(f.detail.contains("cron (cron, pid 28)"), "{}", f.detail);

        let s = culprit(50, "agent", &[(1, "systemd")]);
        let unit = || Some("evil.service".to_string());
        r.on_exit("/opt/agent", Origin::of(&s, unit).unwrap(), 15, false, t0);
        let f = r
            .on_exec(&s, "/opt/agent", Origin::of(&s, unit), t0)
            .unwrap();
        // Under another parent, the parent is the origin even inside a service.
        let b = culprit(60, "x", &[(59, "bash"), (1, "systemd")]);
        assert!(matches!(
            Origin::of(&b, unit),
            Some(Origin::Parent { pid: 59, .. })
        ));
        assert!(
            f.detail.contains("systemd unit evil.service"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn normal_exits_other_parents_and_old_kills_raise_nothing() {
        let mut r = respawn(100);
        let t0 = Instant::now();
        let c = culprit(20, "job", &[(10, "bash")]);
        r.on_exit("/usr/bin/job", parent(&c).unwrap(), 0, false, t0);
        assert!(r.on_exec(&c, "/usr/bin/job", parent(&c), t0).is_none());
        // SIGINT (Ctrl-C) is not a kill.
        r.on_exit("/usr/bin/job", parent(&c).unwrap(), 2, false, t0);
        assert!(r.on_exec(&c, "/usr/bin/job", parent(&c), t0).is_none());
        r.on_exit("/usr/bin/job", parent(&c).unwrap(), 9, false, t0);
        let elsewhere = culprit(21, "job", &[(11, "bash")]);
        assert!(
            r.on_exec(&elsewhere, "/usr/bin/job", parent(&elsewhere), t0)
                .is_none()
        );
        assert!(
            r.on_exec(&c, "/usr/bin/job", parent(&c), t0 + Duration::from_secs(61))
                .is_none(),
            "outside the window"
        );
    }

    #[test]
    fn too_many_starts_in_a_minute_raise_once() {
        let mut r = respawn(5);
        let t0 = Instant::now();
        let c = culprit(20, "flap", &[(10, "bash")]);
        let mut found = Vec::new();
        for i in 0..20 {
            let at = t0 + Duration::from_millis(100 * i);
            found.extend(r.on_exec(&c, "/usr/bin/flap", parent(&c), at));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].detail.contains("started 6 times within a minute"),
            "{}",
            found[0].detail
        );
        // Spread over more than a minute: nothing.
        let mut r = respawn(5);
        for i in 0..20 {
            let at = t0 + Duration::from_secs(15 * i);
            assert!(r.on_exec(&c, "/usr/bin/flap", parent(&c), at).is_none());
        }
    }

    #[test]
    fn units_come_from_the_cgroup_path() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/nginx.service\n").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit_from_cgroup("12:pids:/user.slice\n0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(
            unit_from_cgroup(
                "0::/system.slice/docker-abc.scope\n1:name=systemd:/system.slice/cron.service\n"
            )
            .as_deref(),
            Some("cron.service")
        );
    }

    #[test]
    fn config_problems_name_their_keys() {
        let bad = RespawnConfig {
            window: Duration::ZERO,
            max_spawns: 1,
        };
        let keys: Vec<&str> = bad.problems().iter().map(|p| p.0).collect();
        assert_eq!(keys, ["respawn.window", "respawn.max_spawns"]);
        assert!(RespawnConfig::default().problems().is_empty());
    }
}
