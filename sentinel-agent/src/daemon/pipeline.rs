//! The agent's data flow, in order: kernel records → process tree → events (stored and
//! streamed) → detectors → alerts → the dead man's switch. One task owns all of it, so the
//! tree, the detectors' state and the switch never need a lock. Findings become decisions in
//! `decisions.rs`; what comes back about them (answers, deadlines, the worker's reports) is
//! handled in `outcomes.rs`; the behaviour detectors' hooks are in `behaviour.rs`; what the
//! timers drive (CPU samples, the blind check, pruning) is in `ticks.rs`.

use rustc_hash::FxHashMap;
use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use sentinel_common::events::exec::ExeId;
use tracing::{debug, error, info, warn};

use super::decisions::{Group, Tracked};
use crate::{
    daemon::control::Shared,
    detect::{
        self, Alerts, Culprit, Finding,
        lineage::{Ancestor, Roles},
    },
    enforce::kill::Killer,
    enrich::container::Containers,
    enrich::geo::CountryDb,
    enrich::listeners::still_listens,
    enrich::names::Names,
    enrich::outbound::Outbound,
    enrich::shells::Shells,
    enrich::ssh::is_sshd,
    enrich::tree::{Proc, ProcessTree, read_stat},
    enrich::trust::{ActionableAddr, TrustSet},
    event::{AlertBody, Body, BootClock, ConnectBody, ExecBody, Record},
    sensors::{
        KernelEvent,
        cpu::{CpuTracker, Samples},
    },
    store::{StoreTx, Write, queue::NotQueued},
    switch::{Switch, ledger::Kill},
};

/// The detectors and what they need beside the tree.
pub struct Detectors {
    pub geoip: Option<CountryDb>,
    pub trust: TrustSet,
    pub lineage: detect::lineage::Lineage,
    /// Who wrote a persistence location (the writes come back as [`detect::Work`]).
    pub persistence: super::persistence::Persistence,
    /// Which executables are shells (by content), for `lineage`.
    pub shells: Shells,
    pub reverse_shell: detect::reverse_shell::ReverseShell,
    pub geo: detect::geo::Geo,
    pub resource: detect::resource::Resource,
    pub blind: detect::blind::Blind,
    /// `miner`, `respawn`, `node_abuse`, `npm` (`cron` comes back as [`detect::Work`]).
    pub behaviour: super::behaviour::Behaviour,
    pub alerts: Alerts,
}

/// Turns kernel records into events and alerts and alerts into decisions; owns the process
/// tree and the switch.
pub struct Pipeline {
    pub tree: ProcessTree,
    pub clock: BootClock,
    pub agent_tgid: u32,
    /// The agent's own executable: its CLI (`sentinel status`, run by the admin or a test from
    /// wherever the binary lives) is the agent's own activity, never a finding.
    pub agent_exe: ExeId,
    pub proc_root: PathBuf,
    pub store_tx: StoreTx,
    pub shared: Arc<Shared>,
    pub cpu: CpuTracker,
    pub cpu_map: Option<Samples>,
    pub cpu_hz: u64,
    pub cpu_report_percent: f64,
    pub cpu_last: Instant,
    /// When [`Pipeline::gc`] last read every tracked process's start time; `None`: at the
    /// next one (start, or the sensors lost records).
    pub gc_full_at: Option<Instant>,
    pub ncpus: usize,
    pub detect: Detectors,
    pub switch: Switch,
    /// Alerted process trees: every member's pid (checked against its start time) → the
    /// alert whose decision their untrusted destinations join. Members are added at fork and
    /// exec, so an orphan adopted by init or a subreaper stays in its tree.
    pub tracked: FxHashMap<u32, Tracked>,
    /// The alerts with a tracked tree, by id.
    pub groups: HashMap<String, Group>,
    /// The last untrusted address each process connected to.
    pub last_connect: FxHashMap<u32, ActionableAddr>,
    /// The peers of recent outbound connects: a socket on stdio that reaches one is a
    /// reverse shell, any other an accepted connection.
    pub outbound: Outbound,
    /// The names processes resolved addresses from (the `dns` sensor's answers).
    pub names: Names,
    /// The names of blocked decisions' targets, which their blocks follow.
    pub followed: super::follow::Followed,
    /// `enforce.kill`: the process response, when on.
    pub killer: Option<Killer>,
    /// `enforce.mode = "dry-run"`: decide and record, touch nothing (no kills either).
    pub dry_run: bool,
    /// Exits not applied yet: (when the reader read the exit record, on the records' clock;
    /// tgid; start). Records arrive in order, but an alert raised on a process may still want
    /// its ancestry (a decision's ancestors, a late connect of a child) just after it ends:
    /// the exit waits [`EXIT_GRACE`]. The record's own time, not a clock read per exit
    /// (~180 instructions per exec with the comparisons, callgrind).
    pub exits: VecDeque<(u64, u32, u64)>,
    /// `[fleet]`: the outbox every commit point writes to, when the fleet store is on.
    pub fleet: Option<crate::fleet::Recorder>,
    /// Which container each cgroup is (cached by cgroup id).
    pub containers: Containers,
    /// Asks for the live SSH sessions to be re-read when sshd's processes change.
    pub ssh_nudge: super::ssh_watch::Nudge,
    /// Repeats of open alerts not written yet: the latest version of each goes out once per
    /// loop round ([`Pipeline::flush_alert_repeats`]).
    pub alert_repeats: super::repeats::Repeats,
}

/// Ancestors kept inline by [`Pipeline::ancestors`]; a deeper tree spills to the heap.
const ANCESTORS_INLINE: usize = 8;

/// An exec's ancestors as `lineage` sees them.
pub(super) type Ancestors<'a> = smallvec::SmallVec<[Ancestor<'a>; ANCESTORS_INLINE]>;

/// What the tree held of an ancestor for `lineage` (`None`: not in the tree), taken as the
/// ancestry walk passes it so that no ancestor is looked up twice per exec.
type KnownAncestors = smallvec::SmallVec<[Option<Known>; ANCESTORS_INLINE]>;

#[derive(Clone, Copy)]
struct Known {
    listening: bool,
    package_manager: bool,
    /// The node's cached `Roles` bits, if an earlier exec asked.
    class: Option<u8>,
}

impl Known {
    fn of(p: &Proc) -> Self {
        Self {
            listening: p.listening,
            package_manager: p.package_manager,
            class: p.comm_class,
        }
    }
}

/// How long a process stays in the tree after its exit record.
const EXIT_GRACE: Duration = Duration::from_secs(1);

impl Pipeline {
    pub(super) fn store(&self, write: Write) {
        let (Write::Insert(r) | Write::Update(r)) = &write;
        if let Body::Alert(a) = &r.body {
            self.alert_repeats.supersede(&a.id);
        }
        if let Some(fleet) = &self.fleet {
            fleet.alert(r);
        }
        // A full queue drops (and counts) the write itself: never wait for the disk here.
        if self.store_tx.send(write) == Err(NotQueued::Stopped) {
            error!("the store writer has stopped; event not stored");
        }
    }

    /// A repeat of an open alert: written at the end of the loop round, only its latest
    /// version (unless a newer version of the alert is written first).
    pub(super) fn store_alert_repeat(&self, id: String, record: Record) {
        self.alert_repeats.defer(id, record);
    }

    /// Write the repeats of this loop round.
    pub fn flush_alert_repeats(&self) {
        for record in self.alert_repeats.take() {
            self.store(Write::Update(record));
        }
    }

    pub(super) fn emit(&self, at: SystemTime, body: Body) {
        let record = Arc::new(Record::new(at, self.shared.host.clone(), body));
        self.store(Write::Insert(record.clone()));
        self.shared.hub.publish(record);
    }

    /// `enforce.kill`: terminate the offending process tree of alert `alert` on `culprit`,
    /// the process (pid, start time) the finding named.
    pub(super) fn respond(&mut self, culprit: (u32, u64), alert: &AlertBody) {
        if !detect::kills(alert) || culprit.0 == 0 {
            return;
        }
        let Some(killer) = &mut self.killer else {
            return;
        };
        if !killer.responds_to(&alert.anomaly) {
            return;
        }
        // A repeat about a process already dealt with costs no /proc scan.
        if killer.settled(&alert.id, culprit.0, culprit.1) {
            return;
        }
        let snapshot = killer.snapshot(&self.tree);
        let plan = killer.plan(&snapshot, &alert.id, culprit, Instant::now());
        if let Some(note) = &plan.note {
            info!(id = %alert.id, pid = culprit.0, "process response: {note}");
        }
        let (targets, respawned) = (plan.targets, plan.escalated);
        if targets.is_empty() {
            return;
        }
        let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
        if self.dry_run {
            info!(id = %alert.id, ?pids, respawned, "dry-run: would terminate");
            return;
        }
        let mut reason = format!("{} alert {}: {}", alert.anomaly, alert.id, alert.detail);
        if respawned {
            reason.push_str(" (respawned: escalated to the parent that respawns it)");
        } else if let Some(note) = plan.note {
            reason.push_str(&format!(" ({note})"));
        }
        let hit = killer.terminate(targets);
        for t in hit {
            warn!(pid = t.pid, exe = %t.exe, id = %alert.id, respawned, "terminated");
            let kill = Kill {
                pid: t.pid,
                exe: t.exe,
                reason: reason.clone(),
                confidence: alert.risk,
                at: SystemTime::now(),
            };
            if let Some(fleet) = &self.fleet {
                fleet.kill(&kill);
            }
            self.switch.record_kill(kill);
            self.shared.kills.fetch_add(1, Ordering::Relaxed);
            self.killed_by_agent(t.pid);
        }
    }

    /// The agent's own children (e.g. `nft` later) are its own activity: not reported.
    pub(super) fn is_agent(&self, tgid: u32) -> bool {
        self.tree.descends_from(tgid, self.agent_tgid)
    }

    pub fn handle(&mut self, event: KernelEvent) {
        match event {
            KernelEvent::Fork(f) => {
                let comm = f.comm.text();
                if is_sshd(&comm) {
                    self.ssh_nudge.send();
                }
                self.tree
                    .on_fork(f.parent, f.child, f.child_start_ns, &comm);
                // A tracked tree's forks are members from birth, whatever their parent link
                // becomes (setsid, a double fork, adoption by init), exec or not.
                if !self.tracked.is_empty()
                    && let Some(id) = self.tracked_ancestor(f.parent)
                {
                    self.track(&id, f.child);
                }
            }
            KernelEvent::Exit(e) => {
                if self.tree.get(e.tgid).is_some_and(|p| is_sshd(&p.comm)) {
                    self.ssh_nudge.send();
                }
                self.behaviour_exit(&e);
                self.exits.push_back((e.ts_ns, e.tgid, e.start_ns));
            }
            KernelEvent::Exec(mut e) => {
                self.tree
                    .on_exec(e.tgid, e.ppid, e.start_ns, &e.comm, e.filename.clone());
                self.tree
                    .set_exec_details(e.tgid, e.exe, e.uid, e.cgroup_id);
                // One walk up the tree says whether the agent started it and, if not, is
                // the culprit's ancestry (it was two walks).
                let mut known = KnownAncestors::new();
                let ancestry = self
                    .tree
                    .ancestry_with(e.tgid, &self.proc_root, |p| known.push(Some(Known::of(p))));
                if e.tgid == self.agent_tgid || ancestry.iter().any(|(p, _)| *p == self.agent_tgid)
                {
                    return;
                }
                if is_sshd(&e.comm) || self.tree.get(e.ppid).is_some_and(|p| is_sshd(&p.comm)) {
                    self.ssh_nudge.send();
                }
                if self.detect.reverse_shell.waits(e.tgid) {
                    self.stdio_at_exec(e.tgid, &e.filename, e.ts_ns);
                }
                // The comm goes to the culprit and from it to the event (no copy).
                let mut culprit =
                    self.culprit_with(e.tgid, std::mem::take(&mut e.comm), Some(e.uid), ancestry);
                // A tracked tree's new programs stay tracked, even after their root exits.
                if !self.tracked.is_empty()
                    && self.tracked_id(e.tgid).is_none()
                    && let Some(id) = self.group_of(e.tgid, &culprit.ancestry)
                {
                    self.track(&id, e.tgid);
                }
                let own_cli = e.exe == self.agent_exe && e.exe != ExeId::default();
                let (finding, behaviour) = if own_cli {
                    (None, Vec::new())
                } else {
                    (
                        self.lineage(&culprit, &known, &e.filename, &e.argv, e.exe),
                        self.behaviour_exec(&mut culprit, &e.argv),
                    )
                };
                let ppid = self.tree.get(e.tgid).map_or(e.ppid, |p| p.ppid);
                self.emit(
                    self.clock.wall(e.ts_ns),
                    Body::Exec(ExecBody {
                        pid: e.tgid,
                        ppid,
                        uid: e.uid,
                        comm: culprit.comm,
                        filename: e.filename,
                        argv: e.argv,
                        ancestors: culprit.ancestry.into_iter().map(|(_, c)| c).collect(),
                        container: culprit.container,
                    }),
                );
                for finding in finding.into_iter().chain(behaviour) {
                    self.raise(finding, Some(e.ts_ns));
                }
            }
            KernelEvent::Listen(l) => {
                debug!(pid = l.tgid, comm = %l.comm, fd = l.fd, "listens");
                self.tree.on_listen(l.tgid, &self.proc_root);
            }
            KernelEvent::Stdio(s) => self.on_stdio(s),
            KernelEvent::Dns(d) => self.on_dns(d),
            KernelEvent::Connect(c) => {
                if self.is_agent(c.tgid) {
                    return;
                }
                self.outbound.connected(c.daddr, c.dport);
                if let Some(manager) = self.tree.package_manager_of(c.tgid) {
                    self.switch.gate.note_package_source(c.daddr, &manager);
                }
                // Who connected is what the kernel saw at connect time, not what the process
                // may have exec'd since.
                let comm = if c.comm.is_empty() {
                    self.tree
                        .get(c.tgid)
                        .map_or_else(String::new, |p| p.comm.to_string())
                } else {
                    c.comm
                };
                let country = self.detect.geoip.as_ref().and_then(|g| g.country(c.daddr));
                let domain = self
                    .names
                    .name_for(c.tgid, c.daddr, c.ts_ns)
                    .map(|r| r.name.to_string());
                // The process's identity and ancestry are only needed for a high-risk
                // destination or an alert waiting for a target: most connects skip the walk.
                let culprit = (self.detect.geo.is_high_risk(country.as_deref())
                    || self.in_tracked_tree(c.tgid))
                .then(|| {
                    let mut culprit = self.culprit(c.tgid, comm.clone(), Some(c.uid));
                    // The tree's executable is the connecting program's only when the kernel's
                    // identity at connect time agrees.
                    let known = |id: ExeId| id != ExeId::default();
                    if let Some(p) = self.tree.get(c.tgid)
                        && known(p.exe)
                        && known(c.exe)
                        && p.exe != c.exe
                    {
                        culprit.exe = None;
                    }
                    culprit
                });
                let finding = culprit.as_ref().and_then(|culprit| {
                    self.detect.geo.on_connect(
                        culprit,
                        c.daddr,
                        c.dport,
                        country.as_deref(),
                        domain.as_deref(),
                        &self.detect.trust,
                    )
                });
                let miner = self.behaviour_connect(
                    c.tgid,
                    &comm,
                    c.uid,
                    c.daddr,
                    c.dport,
                    domain.as_deref(),
                );
                let container = match &culprit {
                    Some(culprit) => culprit.container.clone(),
                    None => self
                        .container_of(c.tgid)
                        .or_else(|| self.relay_container(c.tgid, &comm)),
                };
                self.emit(
                    self.clock.wall(c.ts_ns),
                    Body::Connect(ConnectBody {
                        pid: c.tgid,
                        comm,
                        uid: c.uid,
                        family: c.family,
                        saddr: c.saddr,
                        daddr: c.daddr,
                        dport: c.dport,
                        country,
                        container,
                        domain,
                    }),
                );
                for finding in finding.into_iter().chain(miner) {
                    self.raise(finding, Some(c.ts_ns));
                }
                if let Ok(target) = self.detect.trust.check(c.daddr) {
                    self.last_connect.insert(c.tgid, target);
                    if let Some(culprit) = &culprit
                        && let Some(id) = self.group_of(c.tgid, &culprit.ancestry)
                        && self
                            .groups
                            .get(&id)
                            .is_some_and(Group::joins_every_destination)
                    {
                        self.offer(&id, target);
                    }
                }
            }
        }
        self.shared
            .processes
            .store(self.tree.len() as u64, Ordering::Relaxed);
    }

    /// `lineage` for the exec of `culprit`: its ancestors' roles come from the tree, and the
    /// executable is hashed (cached) only when a web server is above it. Whether the new
    /// program is a package manager (for the walks of its descendants) is settled here too:
    /// it needs the same ancestors, since none below a web server is one.
    fn lineage(
        &mut self,
        culprit: &Culprit,
        known: &[Option<Known>],
        filename: &str,
        argv: &[String],
        exe: ExeId,
    ) -> Option<Finding> {
        let mut ancestors = self.ancestors_known(culprit, known);
        let below_server = || self.detect.lineage.web_server(&ancestors).is_some();
        if self
            .detect
            .lineage
            .is_package_manager(filename, argv, below_server)
        {
            self.tree.mark_package_manager(culprit.pid);
        }
        let Detectors {
            lineage, shells, ..
        } = &mut self.detect;
        let proc_root = &self.proc_root;
        let mut is_shell = None;
        for _ in 0..4 {
            let found = lineage.on_exec(culprit, argv, &ancestors, || {
                *is_shell.get_or_insert_with(|| {
                    shells.is_shell(proc_root, culprit.pid, filename, &culprit.comm, exe)
                })
            })?;
            // A server by a listening socket is one while it holds it: one that closed it
            // since is not, and the judgement is made again without it.
            let Some(a) = ancestors
                .iter_mut()
                .find(|a| a.pid == found.subject && a.listening)
            else {
                return Some(found);
            };
            if still_listens(proc_root, a.pid) {
                return Some(found);
            }
            a.listening = false;
            self.tree.stopped_listening(found.subject);
        }
        None
    }

    /// What the tree knows of `culprit`'s ancestors, for `lineage`'s judgements (inline up
    /// to [`ANCESTORS_INLINE`]: no allocation for most execs).
    pub(super) fn ancestors<'a>(&mut self, culprit: &'a Culprit) -> Ancestors<'a> {
        let known: KnownAncestors = culprit
            .ancestry
            .iter()
            .map(|(pid, _)| self.tree.get(*pid).map(Known::of))
            .collect();
        self.ancestors_known(culprit, &known)
    }

    /// [`Self::ancestors`] from what the walk that made `culprit.ancestry` saw (`known`, one
    /// per ancestor, in the same order).
    fn ancestors_known<'a>(
        &mut self,
        culprit: &'a Culprit,
        known: &[Option<Known>],
    ) -> Ancestors<'a> {
        let mut ancestors = Ancestors::with_capacity(culprit.ancestry.len());
        for ((pid, comm), known) in culprit.ancestry.iter().zip(known) {
            // `None` for a process the tree does not hold; else its cached class, if any.
            let (listening, package_manager, class) = known.map_or((false, false, None), |k| {
                (k.listening, k.package_manager, Some(k.class))
            });
            ancestors.push(Ancestor {
                pid: *pid,
                comm,
                listening,
                package_manager,
                roles: class.map(|class| self.roles_of(*pid, comm, class)),
            });
        }
        ancestors
    }

    /// What `comm`, the name of tree node `pid` (the ancestry walk just copied it from the
    /// node), is to `lineage`: the node's cached `class` when an earlier exec asked, else
    /// looked up and kept on the node.
    fn roles_of(&mut self, pid: u32, comm: &str, class: Option<u8>) -> Roles {
        match class {
            Some(bits) => Roles::from_bits(bits),
            None => {
                let roles = self.detect.lineage.roles(comm);
                self.tree.set_comm_class(pid, roles.to_bits());
                roles
            }
        }
    }

    /// Apply the exits older than [`EXIT_GRACE`], and judge the sockets held on stdio.
    pub fn reap(&mut self) {
        self.judge_stdio_candidates();
        let now = crate::sensors::boot_ns();
        let grace = EXIT_GRACE.as_nanos() as u64;
        while let Some(&(seen, tgid, start_ns)) = self.exits.front() {
            if now.saturating_sub(seen) < grace {
                break;
            }
            self.exits.pop_front();
            // The tree's start time of the process that ended (a tracked pid reused since
            // belongs to another process and stays).
            let start = self.tree.get(tgid).map(|p| p.start);
            self.tree.on_exit(tgid, start_ns);
            self.detect.alerts.forget(tgid);
            self.detect.reverse_shell.forget(tgid);
            self.last_connect.remove(&tgid);
            if self
                .tracked
                .get(&tgid)
                .is_some_and(|t| start.is_none_or(|s| s == t.start))
                && let Some(Tracked { id, .. }) = self.tracked.remove(&tgid)
                && let Some(g) = self.groups.get_mut(&id)
            {
                g.roots.retain(|r| *r != tgid);
                if g.roots.is_empty() {
                    self.groups.remove(&id);
                }
            }
            // Its CPU-sample entry was removed by the kernel at exit (no system call here).
        }
    }

    pub(super) fn comm_of(&self, tgid: u32) -> Option<String> {
        match self.tree.get(tgid) {
            Some(p) => Some(p.comm.to_string()),
            None => read_stat(&self.proc_root, tgid).map(|s| s.comm),
        }
    }
}
