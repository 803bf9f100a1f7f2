//! `respawn`: persistence by restarting. A program the agent killed that comes back within
//! `respawn.window` from the same origin (the same executable under the same parent, or from
//! the same cron daemon or systemd unit); or a program restarted after dying by a signal more
//! than `respawn.max_spawns` times in a minute by the same parent (or container, for a
//! container's init). The alert names the origin that restarts it. T1053 when cron restarts
//! it, T1543 otherwise.
//!
//! A container's init (its PID 1, or the program under its `tini`/`docker-init`) is started by
//! the runtime: a new monitor (`conmon`, `containerd-shim`) each time the container starts, so
//! its origin is the container's runtime and id, not that process. A container whose init the
//! agent killed and whose restart policy (`--restart=always`, `on-failure`) brings it back is a
//! respawn restarted by the runtime. Its starts after a death by a signal are counted per
//! container (its id), not per monitor: a container crash-looping through its restart policy
//! crosses `respawn.max_spawns` like any crash loop.
//!
//! What is not a respawn, and why:
//! - A program someone else stopped (`systemctl restart` sends SIGTERM, an admin's `kill`, a
//!   container's restart policy, a supervisor) and its manager started again: restarting is
//!   what managers are for, and the agent cannot tell the admin's stop from an attacker's. A
//!   program the agent killed coming back is unambiguous: something fights the response.
//! - A loop's work: `while :; do work; sleep 1; done` starts `sleep` (and `work`) for ever,
//!   and `make -j`, `xargs -P` and CGI servers start the same program many times a minute.
//!   Each of those ends on its own (any exit status), so only starts that follow a death by a
//!   signal count (SIGPIPE aside: it is how a pipeline's writer ends): a crash or kill loop.
//!
//! An attacker's loop restarting a miner the agent never killed is not a respawn either: the
//! miner is judged by what it does (`miner` on CPU use, a stratum port or a pool; a shell under
//! a web server by `lineage`; its destinations by `geo`); once the agent kills it
//! (`enforce.kill`), its comeback is a respawn and the kill engine escalates to the loop.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::HashMap;
use serde::Deserialize;

use super::{Anomaly, Culprit, Finding};
use crate::enrich::container::Container;

/// Words in the detail of a respawn of a program the agent killed: the kill engine acts on
/// those (escalating to the origin).
pub const AFTER_AGENT_KILL: &str = "after the agent killed it";

/// Whether `f` (a `respawn` finding) is a killed program that came back, rather than a
/// program started too often.
pub fn is_comeback(f: &Finding) -> bool {
    f.detail.contains(COMEBACK)
}

const COMEBACK: &str = " came back ";
/// The writer of a pipeline whose reader is done ends by SIGPIPE: not a crash.
const SIGPIPE: u8 = 13;
const MINUTE: Duration = Duration::from_secs(60);
/// Killed programs remembered at most.
const MAX_KILLED: usize = 4096;

/// `[respawn]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespawnConfig {
    /// A program the agent killed back within this long is a respawn.
    #[serde(deserialize_with = "crate::config::duration")]
    pub window: Duration,
    /// More restarts of one program by one parent (a container's init: by one container)
    /// within a minute, each after the program died by a signal, raise `respawn` too. Starts
    /// after a normal exit never count.
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
    /// A container's runtime, starting the container's init (its restart policy): the same
    /// origin whatever monitor process (a new one per start) ran it.
    Runtime {
        container: Arc<Container>,
        /// The monitor's name (`conmon`, `containerd-shim`).
        monitor: Arc<str>,
    },
}

/// The runtimes' monitors, which start a container's init: Podman's `conmon`, containerd's
/// shims (`containerd-shim-runc-v2`, seen as `containerd-shim`), and the OCI runtimes
/// themselves when nothing stays in between.
fn is_runtime_monitor(comm: &str) -> bool {
    comm == "conmon" || comm.starts_with("containerd-shim") || matches!(comm, "runc" | "crun")
}

/// The small inits a runtime may put in a container as its PID 1 (`--init`), with the
/// container's program below them.
const CONTAINER_INITS: [&str; 4] = ["tini", "docker-init", "catatonit", "dumb-init"];

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

    /// The container runtime, when `culprit` is its container's init started by the runtime:
    /// its parent is the runtime's monitor (or an init such as `tini` that the monitor
    /// started) and `is_pid_ns_init(pid)` says the process that monitor started is PID 1 of
    /// its own pid namespace — a name alone is chosen by whoever runs the process, a pid
    /// namespace's init is not. `None` on the host and for a container's other processes.
    pub fn runtime_of(
        culprit: &Culprit,
        is_pid_ns_init: impl FnOnce(u32) -> bool,
    ) -> Option<Origin> {
        let container = culprit.container.as_ref()?;
        let (parent, parent_comm) = culprit.ancestry.first()?;
        let (monitor, init) = if is_runtime_monitor(parent_comm) {
            (parent_comm, culprit.pid)
        } else if CONTAINER_INITS.contains(&&**parent_comm) {
            let (_, grandparent) = culprit.ancestry.get(1)?;
            (grandparent, *parent)
        } else {
            return None;
        };
        (is_runtime_monitor(monitor) && is_pid_ns_init(init)).then(|| Origin::Runtime {
            container: container.clone(),
            monitor: monitor.clone(),
        })
    }

    fn describe(&self) -> String {
        match self {
            Origin::Cron { pid, comm } => format!("cron ({comm}, pid {pid})"),
            Origin::Systemd { unit } => format!("systemd unit {unit}"),
            Origin::Parent { pid, comm } => format!("its parent {comm} (pid {pid})"),
            Origin::Runtime { container, monitor } => format!(
                "the container runtime {} ({monitor}), the restart policy of {}",
                container.runtime,
                container.describe()
            ),
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

/// Restarts of one program by one parent.
#[derive(Debug, Default)]
struct Starts {
    /// When it was restarted after dying by a signal, within the last minute.
    after_death: VecDeque<Instant>,
    /// When an instance last died by a signal, until the next start.
    died: Option<Instant>,
}

pub struct Respawn {
    config: RespawnConfig,
    /// (exe, origin) of programs the agent killed, and when. Keys are paths a process may
    /// choose: a hash with a per-map random seed (foldhash), several times cheaper than
    /// SipHash per exec.
    killed: HashMap<(String, Origin), Instant>,
    /// Each program by each parent pid that died by a signal lately (parent first: a start
    /// looks its entry up without allocating a key; entries are made only at such deaths).
    starts: HashMap<u32, HashMap<String, Starts>>,
    /// The same for containers' inits, by container id: each start of a container has a new
    /// monitor as the init's parent, so the container is what restarts it.
    container_starts: HashMap<String, HashMap<String, Starts>>,
}

impl Respawn {
    pub fn new(config: RespawnConfig) -> Self {
        Self {
            config,
            killed: HashMap::default(),
            starts: HashMap::default(),
            container_starts: HashMap::default(),
        }
    }

    /// A process of `exe` under `parent` (pid), from `origin`, ended with `signal` (0: not by
    /// a signal); `by_agent` when the agent's kill engine terminated it. A death by a signal
    /// is remembered for the parent's (or, for a container's init, the container's) next
    /// start of it; an agent kill for its comeback.
    pub fn on_exit(
        &mut self,
        exe: &str,
        parent: u32,
        origin: Origin,
        signal: u8,
        by_agent: bool,
        now: Instant,
    ) {
        if signal != 0 && signal != SIGPIPE {
            let by_parent = match &origin {
                Origin::Runtime { container, .. } => self
                    .container_starts
                    .entry(container.id.clone())
                    .or_default(),
                _ => self.starts.entry(parent).or_default(),
            };
            match by_parent.get_mut(exe) {
                Some(s) => s.died = Some(now),
                None => {
                    let died = Some(now);
                    let s = Starts {
                        died,
                        ..Starts::default()
                    };
                    by_parent.insert(exe.to_string(), s);
                }
            }
        }
        if !by_agent {
            return;
        }
        if self.killed.len() >= MAX_KILLED {
            let window = self.config.window;
            self.killed.retain(|_, at| now.duration_since(*at) < window);
            if self.killed.len() >= MAX_KILLED {
                return;
            }
        }
        self.killed.insert((exe.to_string(), origin), now);
    }

    /// `culprit` (running `exe`, from `origin`) just started: a finding when it is a program
    /// the agent killed back from the same origin, or a restart after a death too many.
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
                let at = self.killed.remove(&(exe.to_string(), o.clone()))?;
                (now.duration_since(at) < self.config.window).then_some((o, at))
            });
        if let Some((origin, at)) = back {
            let cron = matches!(origin, Origin::Cron { .. });
            return Some(self.finding(
                culprit,
                Anomaly::Respawn { cron },
                format!(
                    "{exe}{COMEBACK}{:.1}s {AFTER_AGENT_KILL}, restarted by {}",
                    now.duration_since(at).as_secs_f64(),
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
        // Nearly every start: its parent (its container, for a container's init) saw nothing
        // of it die by a signal lately.
        let by_starter = match &origin {
            Some(Origin::Runtime { container, .. }) => {
                self.container_starts.get_mut(container.id.as_str())?
            }
            _ => {
                let parent = culprit.ancestry.first().map_or(0, |(p, _)| *p);
                self.starts.get_mut(&parent)?
            }
        };
        let starts = by_starter.get_mut(exe)?;
        let died = starts.died.take()?;
        if now.duration_since(died) >= MINUTE {
            return None;
        }
        let times = &mut starts.after_death;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            times.pop_front();
        }
        times.push_back(now);
        let n = times.len();
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
                "{exe} restarted {n} times within a minute after dying by a signal, by {by} \
                 (respawn.max_spawns = {})",
                self.config.max_spawns
            ),
        ))
    }

    fn finding(&self, c: &Culprit, anomaly: Anomaly, what: String) -> Finding {
        Finding {
            domain: None,
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
        self.killed.retain(|_, at| now.duration_since(*at) < window);
        let recent = |t: &Instant| now.duration_since(*t) < MINUTE;
        for by_parent in self
            .starts
            .values_mut()
            .chain(self.container_starts.values_mut())
        {
            by_parent.retain(|_, s| {
                s.died.as_ref().is_some_and(recent) || s.after_death.back().is_some_and(recent)
            });
        }
        self.starts.retain(|_, by_parent| !by_parent.is_empty());
        self.container_starts
            .retain(|_, by_container| !by_container.is_empty());
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

    /// `c`, running `exe`, ended with `signal` (`by_agent`: the agent killed it).
    fn exit(r: &mut Respawn, c: &Culprit, exe: &str, signal: u8, by_agent: bool, at: Instant) {
        let origin = parent(c).unwrap();
        r.on_exit(exe, c.ancestry[0].0, origin, signal, by_agent, at);
    }

    #[test]
    fn a_program_the_agent_killed_back_under_the_same_parent_is_a_respawn() {
        let mut r = respawn(100);
        let t0 = Instant::now();
        let first = culprit(20, "payload", &[(10, "bash"), (1, "systemd")]);
        assert!(
            r.on_exec(&first, "/usr/bin/payload", parent(&first), t0)
                .is_none()
        );
        exit(&mut r, &first, "/usr/bin/payload", 15, true, t0);
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
        assert!(is_comeback(&f));
        assert!(f.detail.contains(AFTER_AGENT_KILL), "{}", f.detail);
        assert!(
            f.detail.contains("its parent bash (pid 10)"),
            "{}",
            f.detail
        );
        assert_eq!(f.subject, 10);
    }

    #[test]
    fn a_program_someone_else_stopped_and_its_manager_restarted_is_no_respawn() {
        let mut r = respawn(100);
        let t0 = Instant::now();
        // `systemctl restart nginx`: SIGTERM by systemd, the unit starts it again.
        let s = culprit(50, "nginx", &[(1, "systemd")]);
        let unit = || Some("nginx.service".to_string());
        let origin = Origin::of(&s, unit).unwrap();
        r.on_exit("/usr/sbin/nginx", 1, origin, 15, false, t0);
        assert!(
            r.on_exec(&s, "/usr/sbin/nginx", Origin::of(&s, unit), t0)
                .is_none()
        );
        // An admin's `kill -9` of a supervised worker, restarted by its supervisor.
        let w = culprit(60, "worker", &[(59, "supervisord")]);
        exit(&mut r, &w, "/opt/app/worker", 9, false, t0);
        assert!(r.on_exec(&w, "/opt/app/worker", parent(&w), t0).is_none());
    }

    #[test]
    fn cron_and_systemd_origins_are_named() {
        let mut r = respawn(100);
        let t0 = Instant::now();
        let c = culprit(30, "miner", &[(29, "sh"), (28, "cron"), (1, "systemd")]);
        let origin = Origin::of(&c, || None).unwrap();
        assert!(matches!(origin, Origin::Cron { pid: 28, .. }));
        r.on_exit("/tmp/miner", 29, origin.clone(), 9, true, t0);
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
        r.on_exit("/opt/agent", 1, Origin::of(&s, unit).unwrap(), 15, true, t0);
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

    fn in_container(mut c: Culprit, name: &str) -> Culprit {
        c.container = Some(Arc::new(Container {
            id: "ab".repeat(32),
            runtime: "podman".into(),
            name: Some(name.into()),
            image: Some("localhost/app:1".into()),
            network_relay: None,
        }));
        c
    }

    #[test]
    fn a_container_init_the_agent_killed_back_by_the_restart_policy_is_a_respawn_of_the_runtime() {
        let mut r = respawn(100);
        let t0 = Instant::now();
        let init = |pid: u32| pid == 20 || pid == 31;
        // PID 1 of its container under conmon; restarted under a new conmon.
        let first = in_container(culprit(20, "sleep", &[(19, "conmon"), (1, "init")]), "web");
        let origin = Origin::runtime_of(&first, init).unwrap();
        r.on_exit("/usr/bin/sleep", 19, origin, 9, true, t0);
        let again = in_container(culprit(31, "sleep", &[(30, "conmon"), (1, "init")]), "web");
        let f = r
            .on_exec(
                &again,
                "/usr/bin/sleep",
                Origin::runtime_of(&again, init),
                t0 + Duration::from_secs(1),
            )
            .unwrap();
        assert!(is_comeback(&f), "{}", f.detail);
        assert!(
            f.detail.contains(
                "restarted by the container runtime podman (conmon), the restart policy of \
                 container web (localhost/app:1, podman abababababab)"
            ),
            "{}",
            f.detail
        );
        // Another container's init is another origin.
        r.on_exit(
            "/usr/bin/sleep",
            30,
            Origin::runtime_of(&again, init).unwrap(),
            9,
            true,
            t0,
        );
        let other = in_container(culprit(31, "sleep", &[(40, "conmon")]), "db");
        assert!(
            r.on_exec(
                &other,
                "/usr/bin/sleep",
                Origin::runtime_of(&other, init),
                t0
            )
            .is_none()
        );
    }

    #[test]
    fn only_a_container_init_below_the_runtime_has_the_runtime_as_origin() {
        let init = |pid: u32| pid == 20;
        // Below tini (`--init`), itself PID 1 under the shim.
        let tini = in_container(
            culprit(21, "app", &[(20, "tini"), (19, "containerd-shim")]),
            "x",
        );
        let Some(Origin::Runtime { monitor, .. }) = Origin::runtime_of(&tini, init) else {
            panic!("tini's child is the container's program");
        };
        assert_eq!(&*monitor, "containerd-shim");
        // A process named like a monitor inside the container: its child is no pid namespace
        // init.
        let fake = in_container(culprit(22, "miner", &[(21, "conmon")]), "x");
        assert_eq!(Origin::runtime_of(&fake, init), None);
        // A process of the container below its init, and the host's children of conmon.
        let below = in_container(culprit(22, "sh", &[(20, "perl"), (19, "conmon")]), "x");
        assert_eq!(Origin::runtime_of(&below, init), None);
        let host = culprit(20, "sleep", &[(19, "conmon")]);
        assert_eq!(Origin::runtime_of(&host, init), None);
    }

    #[test]
    fn other_parents_and_old_kills_raise_nothing() {
        let mut r = respawn(100);
        let t0 = Instant::now();
        let c = culprit(20, "job", &[(10, "bash")]);
        exit(&mut r, &c, "/usr/bin/job", 9, true, t0);
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

    /// `c` started `n` times, 100 ms apart, each instance ending with `signal`.
    fn flap(r: &mut Respawn, c: &Culprit, exe: &str, signal: u8, n: u64) -> Vec<Finding> {
        let t0 = Instant::now();
        let mut found = Vec::new();
        for i in 0..n {
            let at = t0 + Duration::from_millis(100 * i);
            found.extend(r.on_exec(c, exe, parent(c), at));
            exit(r, c, exe, signal, false, at + Duration::from_millis(50));
        }
        found
    }

    #[test]
    fn too_many_restarts_after_deaths_in_a_minute_raise_once() {
        let mut r = respawn(5);
        let c = culprit(20, "flap", &[(10, "bash")]);
        let found = flap(&mut r, &c, "/usr/bin/flap", 9, 20);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(!is_comeback(&found[0]));
        assert!(
            found[0]
                .detail
                .contains("restarted 6 times within a minute after dying by a signal"),
            "{}",
            found[0].detail
        );
        // A crash loop (SIGSEGV) counts too.
        let mut r = respawn(5);
        assert_eq!(flap(&mut r, &c, "/usr/bin/flap", 11, 20).len(), 1);
        // Spread over more than a minute: nothing.
        let mut r = respawn(5);
        let t0 = Instant::now();
        for i in 0..20 {
            let at = t0 + Duration::from_secs(15 * i);
            assert!(r.on_exec(&c, "/usr/bin/flap", parent(&c), at).is_none());
            exit(&mut r, &c, "/usr/bin/flap", 9, false, at);
        }
    }

    /// A container's init started `n` times under a new monitor each time, 100 ms apart, each
    /// instance ending with `signal`.
    fn crash_loop(r: &mut Respawn, name: &str, signal: u8, n: u32) -> Vec<Finding> {
        let t0 = Instant::now();
        let mut found = Vec::new();
        for i in 0..n {
            let at = t0 + Duration::from_millis(100 * u64::from(i));
            let (monitor, init) = (1000 + 2 * i, 1001 + 2 * i);
            let c = in_container(culprit(init, "app", &[(monitor, "conmon")]), name);
            let origin = Origin::runtime_of(&c, |p| p == init);
            found.extend(r.on_exec(&c, "/app", origin.clone(), at));
            let end = at + Duration::from_millis(50);
            r.on_exit("/app", monitor, origin.unwrap(), signal, false, end);
        }
        found
    }

    #[test]
    fn a_container_crash_looping_through_its_restart_policy_counts_as_one_origin() {
        let mut r = respawn(5);
        let found = crash_loop(&mut r, "web", 11, 20);
        assert_eq!(found.len(), 1, "{found:?}");
        let detail = &found[0].detail;
        assert!(!is_comeback(&found[0]));
        assert!(
            detail.contains(
                "/app restarted 6 times within a minute after dying by a signal, by the \
                 container runtime podman (conmon), the restart policy of container web"
            ),
            "{detail}"
        );
        assert_eq!(
            found[0].culprit.container.as_ref().unwrap().id,
            "ab".repeat(32)
        );
        // An init that ends on its own (an exit status, no signal) is no crash loop.
        let mut r = respawn(5);
        assert!(crash_loop(&mut r, "web", 0, 20).is_empty());
        // Each container counts its own starts: five of one and five of another are not six.
        let mut r = respawn(5);
        let c = |id: &str, pid: u32| {
            let mut c = in_container(culprit(pid, "app", &[(pid - 1, "conmon")]), id);
            if let Some(x) = c.container.as_mut() {
                Arc::make_mut(x).id = id.repeat(64);
            }
            c
        };
        let t0 = Instant::now();
        for i in 0..6u32 {
            for id in ["a", "b"] {
                let pid = 2000 + 10 * i + u32::from(id == "b") * 2;
                let x = c(id, pid);
                let origin = Origin::runtime_of(&x, |p| p == pid);
                assert!(r.on_exec(&x, "/app", origin.clone(), t0).is_none());
                r.on_exit("/app", pid - 1, origin.unwrap(), 9, false, t0);
            }
        }
        // The counts are dropped a minute after the last death.
        r.expire(t0 + MINUTE + Duration::from_secs(1));
        assert!(r.container_starts.is_empty());
    }

    #[test]
    fn a_loop_whose_work_ends_on_its_own_is_no_spawn_abuse() {
        // `while :; do work; sleep 0.5; done`: 120 sleeps a minute, each ending normally;
        // `work` failing every time (exit status 1, no signal) is no different.
        let mut r = respawn(5);
        let c = culprit(20, "sleep", &[(10, "bash")]);
        assert!(flap(&mut r, &c, "/usr/bin/sleep", 0, 120).is_empty());
        // `yes | head -1` in a loop: the writer ends by SIGPIPE.
        let y = culprit(21, "yes", &[(10, "bash")]);
        assert!(flap(&mut r, &y, "/usr/bin/yes", 13, 120).is_empty());
        // Normal ends keep no state.
        r.expire(Instant::now() + MINUTE);
        assert!(r.starts.is_empty());
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
