//! The behaviour detectors in the event loop: where `miner`, `respawn`, `node_abuse` and
//! `npm` see exec, exit, connect and CPU records, where the background work of `cron` (the
//! file watcher) and `npm` (the scanner) comes back as alerts, and where the behaviour
//! history ([`detect::intel`]) is kept current and saved. The pipeline calls one hook per
//! record kind; the detectors themselves live in `detect/`.

use rustc_hash::{FxHashMap, FxHashSet};
use std::{
    path::Path,
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{error, warn};

use super::pipeline::Pipeline;
use crate::{
    config::Config,
    detect::{
        self, Culprit, Finding, Work,
        intel::Intel,
        miner::Miner,
        node_abuse::{NodeAbuse, is_node, listens},
        npm::{self, Npm},
        respawn::{Origin, Respawn, unit_from_cgroup},
    },
    enrich::container::is_pid_namespace_init,
    sensors::exec::Exit,
    store::history::History,
};

/// The behaviour detectors' state.
pub struct Behaviour {
    pub miner: Miner,
    pub respawn: Respawn,
    pub node_abuse: NodeAbuse,
    pub npm: Npm,
    /// Where the behaviour history is saved (none when the store could not be opened).
    history: Option<History>,
    /// Executable, parent pid and origin of each process seen starting, for `respawn` at
    /// its exit.
    origins: FxHashMap<u32, (Arc<str>, u32, Origin)>,
    /// Processes the kill engine signalled, so their exit counts as a kill.
    killed_by_agent: FxHashSet<u32>,
}

impl Behaviour {
    /// The detectors from `config`, the history loaded from `db` (returned, for the alerts'
    /// risk score), and the npm scanner started; its findings go to `work`.
    pub fn start(config: &Config, db: &Path, work: mpsc::UnboundedSender<Work>) -> (Self, Intel) {
        let history = History::open(db)
            .map_err(|e| error!("behaviour history unavailable (risk terms start empty): {e}"))
            .ok();
        let intel = history
            .as_ref()
            .and_then(|h| h.load_intel().map_err(|e| warn!("{e}")).ok())
            .map_or_else(Intel::default, Intel::load);
        let names = history
            .as_ref()
            .and_then(|h| h.load_intel_names().map_err(|e| warn!("{e}")).ok())
            .unwrap_or_default();
        let intel = intel.with_names(names);
        let scanner = npm::spawn_scanner(config.npm.blocklist.clone(), work);
        let behaviour = Self {
            miner: Miner::new(config.miner.clone()),
            respawn: Respawn::new(config.respawn.clone()),
            node_abuse: NodeAbuse::new(config.node_abuse.clone()),
            npm: Npm::new(scanner),
            history,
            origins: FxHashMap::default(),
            killed_by_agent: FxHashSet::default(),
        };
        (behaviour, intel)
    }
}

/// The absolute executable of `pid` when the exec record's filename is relative or a file
/// descriptor (`fexecve`: `/dev/fd/3`, which is `/memfd:x (deleted)` for a memfd).
/// `known` is the tree's (shared, returned as it is when absolute), else the comm stands in.
fn resolve_exe(proc_root: &Path, pid: u32, known: Option<&Arc<str>>, comm: &str) -> Arc<str> {
    let filename = known.map_or(comm, |f| &**f);
    if filename.starts_with('/')
        && !filename.starts_with("/dev/fd/")
        && !filename.starts_with("/proc/")
    {
        return known.map_or_else(|| Arc::from(filename), Arc::clone);
    }
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe")).map_or_else(
        |_| Arc::from(filename),
        |p| Arc::from(p.display().to_string()),
    )
}

fn read_unit(proc_root: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    unit_from_cgroup(&text)
}

impl Pipeline {
    /// A process exec'd: what `respawn`, `miner`, `node_abuse` and `npm` make of it. They see
    /// the culprit with its executable resolved; `culprit` is handed back as it came.
    pub(super) fn behaviour_exec(
        &mut self,
        culprit: &mut Culprit,
        argv: &[String],
    ) -> Vec<Finding> {
        let now = Instant::now();
        let root = &self.proc_root;
        let pid = culprit.pid;
        let resolved = resolve_exe(root, pid, culprit.exe.as_ref(), &culprit.comm);
        let given = culprit.exe.replace(resolved);
        let c = &*culprit;
        let exe = c.exe.as_deref().unwrap_or_default();
        let intel = &mut self.detect.alerts.signals.intel;
        intel.spawned(exe, SystemTime::now());
        let b = &mut self.detect.behaviour;
        let origin = Origin::runtime_of(c, |init| is_pid_namespace_init(root, init))
            .or_else(|| Origin::of(c, || read_unit(root, pid)));
        let mut out = Vec::new();
        if let Some(f) = b.respawn.on_exec(c, exe, origin.clone(), now) {
            if detect::respawn::is_comeback(&f) {
                intel.respawned(exe);
            }
            out.push(f);
        }
        out.extend(b.miner.on_exec(c, argv));
        out.extend(b.node_abuse.on_exec(c, argv));
        b.npm.on_exec(c, argv, || {
            std::fs::read_link(root.join(pid.to_string()).join("cwd")).ok()
        });
        let parent = c.ancestry.first().map_or(0, |(p, _)| *p);
        let exe = std::mem::replace(&mut culprit.exe, given).unwrap_or_default();
        if let Some(origin) = origin {
            b.origins.insert(pid, (exe, parent, origin));
        }
        out
    }

    /// A process ended: an agent kill or a death by a signal is remembered for `respawn`; an
    /// install is scanned.
    pub(super) fn behaviour_exit(&mut self, e: &Exit) {
        let b = &mut self.detect.behaviour;
        b.npm.on_exit(e.tgid);
        let by_agent = b.killed_by_agent.remove(&e.tgid);
        if let Some((exe, parent, origin)) = b.origins.remove(&e.tgid) {
            b.respawn
                .on_exit(&exe, parent, origin, e.signal, by_agent, Instant::now());
        }
        b.miner.forget(e.tgid);
        b.node_abuse.forget(e.tgid);
    }

    /// An outbound connection: a stratum port makes the process a `miner` suspect, and a
    /// temp-location binary talking stratum a high alert whose target is the pool; so does an
    /// address resolved from a mining pool's name (`miner.pool_domains`), on any port.
    pub(super) fn behaviour_connect(
        &mut self,
        tgid: u32,
        comm: &str,
        uid: u32,
        daddr: std::net::IpAddr,
        dport: u16,
        domain: Option<&str>,
    ) -> Option<Finding> {
        let miner = &self.detect.behaviour.miner;
        if !miner.watches_port(dport) && domain.and_then(|d| miner.pool_of(d)).is_none() {
            return None;
        }
        let c = self.culprit(tgid, comm.to_string(), Some(uid));
        let mut f = self
            .detect
            .behaviour
            .miner
            .on_connect(|| c, dport, domain)?;
        f.target = self.detect.trust.check(daddr).ok();
        Some(f)
    }

    /// One CPU interval (pid, % of one CPU): miners at work, node servers burning CPU.
    pub(super) fn behaviour_cpu(&mut self, procs: &[(u32, f64)]) {
        let now = Instant::now();
        for f in self.detect.behaviour.miner.on_cpu(now, procs) {
            self.raise(f, None);
        }
        let node: Vec<(u32, f64)> = procs
            .iter()
            .filter(|(pid, _)| self.comm_of(*pid).is_some_and(|c| is_node(&c)))
            .copied()
            .collect();
        for (pid, pct, held) in self.detect.behaviour.node_abuse.on_cpu(now, &node) {
            let ports = listens(&self.proc_root, pid);
            if ports.is_empty() {
                continue;
            }
            let Some(comm) = self.comm_of(pid) else {
                continue;
            };
            let culprit = self.culprit(pid, comm, None);
            let f = self
                .detect
                .behaviour
                .node_abuse
                .finding(culprit, pct, held, &ports);
            self.raise(f, None);
        }
    }

    /// The kill engine signalled `pid`.
    pub(super) fn killed_by_agent(&mut self, pid: u32) {
        self.detect.behaviour.killed_by_agent.insert(pid);
    }

    /// Background work: a changed cron file to judge, a finding from the npm scanner, a write to
    /// a persistence location.
    pub fn work(&mut self, work: Work) {
        match work {
            Work::CronChanged(change) => {
                if let Some(f) = detect::cron::judge(&change) {
                    self.detect.persistence.cron_suspicious(change.path);
                    self.raise(f, None);
                }
            }
            Work::Found(f) => self.raise(*f, None),
            Work::Persisted(write) => self.persisted(write),
        }
    }

    /// Now and then: expire old state and save the behaviour history.
    pub fn behaviour_gc(&mut self) {
        self.detect.behaviour.respawn.expire(Instant::now());
        let tree = &self.tree;
        let b = &mut self.detect.behaviour;
        b.origins.retain(|pid, _| tree.get(*pid).is_some());
        b.killed_by_agent.retain(|pid| tree.get(*pid).is_some());
        self.save_intel();
    }

    /// Write the behaviour history that changed to the store.
    pub fn save_intel(&mut self) {
        let intel = &mut self.detect.alerts.signals.intel;
        let (rows, names) = (intel.take_changes(), intel.take_name_changes());
        if let Some(h) = &mut self.detect.behaviour.history
            && let Err(e) = h
                .save_intel(&rows)
                .and_then(|()| h.save_intel_names(&names))
        {
            warn!("saving the behaviour history: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        detect::Anomaly,
        event::{Body, Record, sample_alert},
        notify::summary::Summary,
        store::Store,
        switch::ledger::Ledger,
    };

    #[test]
    fn the_daily_summary_counts_the_behaviour_anomalies() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let mut store = Store::open(&db, 64 * 1024 * 1024).unwrap();
        let anomalies = [
            Anomaly::Cron { critical: true },
            Anomaly::Npm,
            Anomaly::Miner { cpu: false },
            Anomaly::Miner { cpu: true },
            Anomaly::Respawn { cron: false },
            Anomaly::NodeAbuse {
                dynamic_code: false,
            },
        ];
        let records: Vec<Arc<Record>> = anomalies
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut alert = sample_alert(&format!("id{i}"), "198.51.100.2");
                alert.anomaly = a.name().into();
                alert.severity = a.severity().as_str().into();
                alert.mitre = a.mitre();
                alert.target_ip = None;
                Arc::new(Record::new(
                    SystemTime::now(),
                    "h",
                    Body::Alert(Box::new(alert)),
                ))
            })
            .collect();
        store.insert(&records).unwrap();
        let counts = Ledger::open(&db)
            .unwrap()
            .summary_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let summary = Summary {
            alerts_by_anomaly: counts.alerts_by_anomaly,
            ..Default::default()
        };
        assert_eq!(
            summary.lines()[0],
            "Alerts: 6 (cron 1, miner 2, node_abuse 1, npm 1, respawn 1)"
        );
    }

    #[test]
    fn the_daily_summary_counts_alerts_per_container() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let mut store = Store::open(&db, 64 * 1024 * 1024).unwrap();
        let in_container = |id: &str, name: Option<&str>| {
            Some(crate::enrich::container::Container {
                id: id.repeat(32),
                runtime: "podman".into(),
                name: name.map(str::to_string),
                image: None,
                network_relay: None,
            })
        };
        let containers = [
            in_container("ab", Some("web")),
            in_container("ab", Some("web")),
            in_container("cd", None),
            None,
        ];
        let records: Vec<Arc<Record>> = containers
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut alert = sample_alert(&format!("id{i}"), "198.51.100.2");
                alert.container = c;
                Arc::new(Record::new(
                    SystemTime::now(),
                    "h",
                    Body::Alert(Box::new(alert)),
                ))
            })
            .collect();
        store.insert(&records).unwrap();
        let counts = Ledger::open(&db)
            .unwrap()
            .summary_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let summary = Summary {
            alerts_by_anomaly: counts.alerts_by_anomaly,
            alerts_by_container: counts.alerts_by_container,
            ..Default::default()
        };
        assert_eq!(summary.lines()[0], "Alerts: 4 (geo 4)");
        assert_eq!(
            summary.lines()[1],
            "Alerts in containers: 3 (cdcdcdcdcdcd 1, web 2)"
        );
        // Without containers the line is not there.
        assert!(!Summary::default().lines()[1].contains("containers"));
    }

    #[test]
    fn relative_and_descriptor_executables_resolve_through_proc() {
        let me = std::process::id();
        let real = std::fs::read_link("/proc/self/exe").unwrap();
        let proc_root = Path::new("/proc");
        let known = |f: &str| Some(Arc::from(f));
        let path = known("/usr/bin/x");
        let shared = resolve_exe(proc_root, me, path.as_ref(), "x");
        assert_eq!(&*shared, "/usr/bin/x");
        assert!(Arc::ptr_eq(&shared, path.as_ref().unwrap()), "not copied");
        let real = real.display().to_string();
        assert_eq!(
            *resolve_exe(proc_root, me, known("./x").as_ref(), "x"),
            *real
        );
        assert_eq!(
            *resolve_exe(proc_root, me, known("/dev/fd/3").as_ref(), "3"),
            *real
        );
        // No filename known: the comm stands in.
        assert_eq!(*resolve_exe(proc_root, me, None, "x"), *real);
        // Gone: the record's own name stays.
        assert_eq!(
            *resolve_exe(proc_root, u32::MAX, known("./x").as_ref(), "x"),
            *"./x"
        );
        assert_eq!(*resolve_exe(proc_root, u32::MAX, None, "x"), *"x");
    }
}
