//! The agent's data flow, in order: kernel records → process tree → events (stored and
//! streamed) → detectors → alerts → the dead man's switch. One task owns all of it, so the
//! tree, the detectors' state and the switch never need a lock.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, atomic::Ordering, mpsc as std_mpsc},
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, error, info, warn};

use crate::{
    daemon::control::{Shared, Unblock},
    detect::{self, Alerts, Culprit, Finding, Outcome},
    enforce::kill::Killer,
    enrich::geo::Geo,
    enrich::tree::{ProcessTree, is_alive, read_stat},
    enrich::trust::{TrustSet, Untrusted},
    event::{AlertBody, Body, BootClock, ConnectBody, CpuBody, DecisionBody, ExecBody, Record},
    sensors::{
        KernelEvent,
        cpu::{CpuTracker, SampleMap, cpu_percent, read_totals},
    },
    store::Write,
    switch::decision::Answer,
    switch::ledger::Kill,
    switch::{Change, Switch},
};

/// The detectors and what they need beside the tree.
pub struct Detectors {
    pub geoip: Option<Geo>,
    pub trust: TrustSet,
    pub lineage: detect::lineage::Lineage,
    pub geo: detect::geo::Geo,
    pub resource: detect::resource::Resource,
    pub alerts: Alerts,
}

/// Turns kernel records into events and alerts and alerts into decisions; owns the process
/// tree and the switch.
pub struct Pipeline {
    pub tree: ProcessTree,
    pub clock: BootClock,
    pub agent_tgid: u32,
    pub proc_root: PathBuf,
    pub store_tx: std_mpsc::Sender<Write>,
    pub shared: Arc<Shared>,
    pub cpu: CpuTracker,
    pub cpu_map: Option<SampleMap>,
    pub cpu_hz: u64,
    pub cpu_report_percent: f64,
    pub cpu_last: Instant,
    pub ncpus: usize,
    pub detect: Detectors,
    pub switch: Switch,
    /// `lineage`/`resource` alerts with nothing to block yet: the first outbound connection
    /// of the process (or a descendant) gives their decision its target.
    pub awaiting: HashMap<u32, (AlertBody, SystemTime)>,
    /// The last untrusted address each process connected to.
    pub last_connect: HashMap<u32, Untrusted>,
    /// `enforce.kill`: the process response, when on.
    pub killer: Option<Killer>,
    /// `enforce.mode = "dry-run"`: decide and record, touch nothing (no kills either).
    pub dry_run: bool,
    /// Exits not applied yet: (when seen, tgid, start). Each sensor has its own ring buffer,
    /// so a process's connect can be read after its exit; the exit waits [`EXIT_GRACE`] so
    /// the process (and its ancestry) is still known then.
    pub exits: VecDeque<(Instant, u32, u64)>,
    /// `[fleet]`: the outbox every commit point writes to, when the fleet store is on.
    pub fleet: Option<crate::fleet::Recorder>,
}

/// How long a process stays in the tree after its exit record.
const EXIT_GRACE: Duration = Duration::from_secs(1);

impl Pipeline {
    fn store(&self, write: Write) {
        if let (Some(fleet), Write::Insert(r) | Write::Update(r)) = (&self.fleet, &write) {
            fleet.alert(r);
        }
        if self.store_tx.send(write).is_err() {
            error!("the store writer has stopped; event not stored");
        }
    }

    fn emit(&self, at: SystemTime, body: Body) {
        let record = Arc::new(Record::new(at, &self.shared.host, body));
        self.store(Write::Insert(record.clone()));
        self.shared.hub.publish(record);
    }

    /// Score, de-duplicate and emit what a detector found; `origin_ns` is the kernel time
    /// (CLOCK_BOOTTIME) of the event that triggered it, for the latency in the log.
    fn raise(&mut self, finding: Finding, origin_ns: Option<u64>) {
        let now = SystemTime::now();
        if let Some(t) = finding.target
            && self.switch.is_safe(t.ip(), now)
        {
            debug!(target = %t, "not alerting: marked safe");
            return;
        }
        let culprit_pid = finding.culprit.pid;
        let ancestors: Vec<String> = finding
            .culprit
            .ancestry
            .iter()
            .map(|(_, c)| c.clone())
            .collect();
        let target = finding
            .target
            .or_else(|| self.last_connect.get(&culprit_pid).copied());
        match self.detect.alerts.raise(finding, Instant::now()) {
            Outcome::New(alert) => {
                let alert = Box::new(alert);
                let latency_us = origin_ns.map(|t| boot_ns().saturating_sub(t) / 1000);
                warn!(
                    id = %alert.id,
                    anomaly = %alert.anomaly,
                    risk = alert.risk,
                    pid = alert.pid,
                    latency_us,
                    "alert: {}",
                    alert.detail
                );
                *self
                    .shared
                    .alerts
                    .lock()
                    .expect("alerts lock")
                    .entry(alert.anomaly.clone())
                    .or_default() += 1;
                self.emit(now, Body::Alert(Box::new((*alert).clone())));
                self.respond(culprit_pid, &alert);
                match target {
                    Some(t) => self.open_decision(&alert, now, ancestors, t),
                    None if alert.anomaly != "geo" => {
                        self.awaiting.insert(culprit_pid, (*alert, now));
                    }
                    None => {}
                }
            }
            Outcome::Repeat(alert, first) => {
                debug!(id = %alert.id, count = alert.count, "repeat of an open alert");
                self.respond(culprit_pid, &alert);
                let record = Record::new(first, &self.shared.host, Body::Alert(Box::new(alert)));
                self.store(Write::Update(Arc::new(record)));
            }
        }
    }

    /// `enforce.kill`: terminate the offending process tree of a lineage or resource alert.
    fn respond(&mut self, culprit: u32, alert: &AlertBody) {
        if !matches!(alert.anomaly.as_str(), "lineage" | "resource") {
            return;
        }
        let Some(killer) = &mut self.killer else {
            return;
        };
        let (targets, respawned) = killer.plan(&self.tree, culprit, Instant::now());
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
        }
        for t in killer.terminate(targets) {
            warn!(pid = t.pid, exe = %t.exe, id = %alert.id, respawned, "terminated");
            let kill = Kill {
                pid: t.pid,
                exe: t.exe,
                reason: reason.clone(),
                confidence: alert.risk,
                at: SystemTime::now(),
            };
            if let Err(e) = self.switch.ledger().add_kill(&kill) {
                error!("recording a kill failed: {e}");
            }
            if let Some(fleet) = &self.fleet {
                fleet.kill(&kill);
            }
            self.shared.kills.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn open_decision(
        &mut self,
        alert: &AlertBody,
        at: SystemTime,
        ancestors: Vec<String>,
        target: Untrusted,
    ) {
        match self
            .switch
            .open(alert, at, ancestors, target, SystemTime::now())
        {
            Ok(Some(change)) => self.apply(change),
            Ok(None) => {}
            Err(e) => error!(id = %alert.id, "opening a decision failed: {e}"),
        }
    }

    /// Store and announce a decision's transition.
    fn apply(&mut self, change: Change) {
        let d = &change.decision;
        if let Some(fleet) = &self.fleet {
            fleet.decision(d);
            let blocks = self.switch.ledger().blocks(SystemTime::now());
            for b in blocks.iter().flatten().filter(|b| b.decision_id == d.id) {
                fleet.block(b, false);
            }
        }
        let body = DecisionBody {
            id: d.id.clone(),
            anomaly: d.anomaly.clone(),
            state: d.state.as_str().into(),
            pid: d.pid,
            comm: d.comm.clone(),
            target_ip: d.target_ip,
            country: d.country.clone(),
            deadline: humantime::format_rfc3339_millis(d.deadline).to_string(),
            decided_by: d.decided_by.clone(),
            reason: d.reason.clone(),
        };
        let alert = self.detect.alerts.sync_state(change.alert);
        let alert = Record::new(
            change.alert_at,
            &self.shared.host,
            Body::Alert(Box::new(alert)),
        );
        self.store(Write::Update(Arc::new(alert)));
        self.emit(SystemTime::now(), Body::Decision(Box::new(body)));
        self.refresh_counts();
    }

    /// Keep the status counters (pending decisions, blocks in force) current.
    pub fn refresh_counts(&self) {
        self.shared
            .pending
            .store(self.switch.pending().count() as u64, Ordering::Relaxed);
        let blocks = self
            .switch
            .ledger()
            .blocks(SystemTime::now())
            .map_or(0, |b| b.len());
        self.shared.blocks.store(blocks as u64, Ordering::Relaxed);
    }

    /// A human answered (CLI, chat, signed link).
    pub fn answer(&mut self, answer: Answer) {
        let outcome = self.switch.answer(
            &self.detect.trust,
            &answer.id,
            answer.verdict,
            &answer.via,
            SystemTime::now(),
        );
        let reply = match outcome {
            Ok(change) => {
                let decision = change.decision.clone();
                self.apply(change);
                Ok(decision)
            }
            Err(e) => {
                warn!(id = %answer.id, via = %answer.via, "answer not applied: {e}");
                Err(e)
            }
        };
        let _ = answer.reply.send(reply);
    }

    /// Enforce the decisions whose deadline passed.
    pub fn tick(&mut self) {
        for change in self.switch.tick(&self.detect.trust, SystemTime::now()) {
            self.apply(change);
        }
    }

    pub fn unblock(&mut self, request: Unblock) {
        let outcome = self.lift(request.addr);
        let _ = request.reply.send(outcome);
    }

    /// Lift the block on `addr` (recording it for the fleet).
    fn lift(&mut self, addr: std::net::IpAddr) -> Result<bool, String> {
        let now = SystemTime::now();
        let held = self.switch.ledger().blocks(now).unwrap_or_default();
        let outcome = self.switch.unblock(addr);
        if let (Some(fleet), Ok(true)) = (&self.fleet, &outcome) {
            for b in held.iter().filter(|b| b.addr == addr) {
                fleet.block(b, true);
            }
        }
        match &outcome {
            Ok(was) => info!(%addr, recorded = was, "unblocked"),
            Err(e) => warn!(%addr, "unblock failed: {e}"),
        }
        self.refresh_counts();
        outcome
    }

    /// A shared block or a lift from the fleet (`fleet.share_blocks`).
    pub fn fleet_command(&mut self, command: crate::fleet::Command) {
        let now = SystemTime::now();
        match command {
            crate::fleet::Command::Block { addr, tag } => {
                match self
                    .switch
                    .block_shared(&self.detect.trust, addr, &tag, now)
                {
                    Ok(Some(block)) => {
                        info!(%addr, by = %tag, "blocked: shared by the fleet");
                        if let Some(fleet) = &self.fleet {
                            fleet.block(&block, false);
                        }
                        self.refresh_counts();
                    }
                    Ok(None) => {
                        debug!(%addr, by = %tag, "shared block: already held here (or dry-run)")
                    }
                    Err(why) => warn!(%addr, by = %tag, "shared block refused: {why}"),
                }
            }
            crate::fleet::Command::Lift { addr, only_shared } => {
                let held = self.switch.ledger().blocks(now).unwrap_or_default();
                let Some(b) = held.iter().find(|b| b.addr == addr) else {
                    return;
                };
                if only_shared && !b.decision_id.starts_with("fleet:") {
                    return;
                }
                let _ = self.lift(addr);
            }
        }
    }

    /// The process `tgid` as the detectors see it.
    fn culprit(&mut self, tgid: u32, comm: String, uid: Option<u32>) -> Culprit {
        let exe = self.tree.get(tgid).and_then(|p| p.filename.clone());
        let uid = uid.unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(self.proc_root.join(tgid.to_string())).map_or(u32::MAX, |m| m.uid())
        });
        Culprit {
            pid: tgid,
            comm,
            exe,
            uid,
            ancestry: self.tree.ancestry(tgid, &self.proc_root),
        }
    }

    /// The agent's own children (e.g. `nft` later) are its own activity: not reported.
    fn is_agent(&self, tgid: u32) -> bool {
        self.tree.descends_from(tgid, self.agent_tgid)
    }

    pub fn handle(&mut self, event: KernelEvent) {
        match event {
            KernelEvent::Fork(f) => self
                .tree
                .on_fork(f.parent, f.child, f.child_start_ns, &f.comm),
            KernelEvent::Exit(e) => {
                self.exits.push_back((Instant::now(), e.tgid, e.start_ns));
            }
            KernelEvent::Exec(e) => {
                self.tree
                    .on_exec(e.tgid, e.ppid, e.start_ns, &e.comm, &e.filename);
                if self.is_agent(e.tgid) {
                    return;
                }
                let culprit = self.culprit(e.tgid, e.comm.clone(), Some(e.uid));
                let finding = self.detect.lineage.on_exec(&culprit, &e.argv);
                let ppid = self.tree.get(e.tgid).map_or(e.ppid, |p| p.ppid);
                self.emit(
                    self.clock.wall(e.ts_ns),
                    Body::Exec(ExecBody {
                        pid: e.tgid,
                        ppid,
                        uid: e.uid,
                        comm: e.comm,
                        filename: e.filename,
                        argv: e.argv,
                        ancestors: culprit.ancestry.into_iter().map(|(_, c)| c).collect(),
                    }),
                );
                if let Some(finding) = finding {
                    self.raise(finding, Some(e.ts_ns));
                }
            }
            KernelEvent::Connect(c) => {
                if self.is_agent(c.tgid) {
                    return;
                }
                let comm = self.tree.get(c.tgid).map_or(c.comm, |p| p.comm.clone());
                let country = self.detect.geoip.as_ref().and_then(|g| g.country(c.daddr));
                // The process's identity and ancestry are only needed for a high-risk
                // destination or an alert waiting for a target: most connects skip the walk.
                let culprit = (self.detect.geo.is_high_risk(country.as_deref())
                    || !self.awaiting.is_empty())
                .then(|| self.culprit(c.tgid, comm.clone(), Some(c.uid)));
                let finding = culprit.as_ref().and_then(|culprit| {
                    self.detect.geo.on_connect(
                        culprit,
                        c.daddr,
                        c.dport,
                        country.as_deref(),
                        &self.detect.trust,
                    )
                });
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
                    }),
                );
                if let Some(finding) = finding {
                    self.raise(finding, Some(c.ts_ns));
                }
                if let Ok(target) = self.detect.trust.check(c.daddr) {
                    self.last_connect.insert(c.tgid, target);
                    if let Some(culprit) = &culprit {
                        self.give_target(c.tgid, target, &culprit.ancestry);
                    }
                }
            }
        }
        self.shared
            .processes
            .store(self.tree.len() as u64, Ordering::Relaxed);
    }

    /// Apply the exits older than [`EXIT_GRACE`].
    pub fn reap(&mut self) {
        while let Some(&(seen, tgid, start_ns)) = self.exits.front() {
            if seen.elapsed() < EXIT_GRACE {
                break;
            }
            self.exits.pop_front();
            self.tree.on_exit(tgid, start_ns);
            self.detect.alerts.forget(tgid);
            self.awaiting.remove(&tgid);
            self.last_connect.remove(&tgid);
            if let Some(map) = &mut self.cpu_map {
                let _ = map.remove(&tgid);
            }
        }
    }

    /// Read the sample counts and emit a `cpu` event for every busy process.
    pub fn sample_cpu(&mut self) {
        let Some(map) = &self.cpu_map else { return };
        let elapsed = self.cpu_last.elapsed();
        self.cpu_last = Instant::now();
        let deltas = self.cpu.deltas(read_totals(map));
        let samples: u64 = deltas.iter().map(|(_, d)| d).sum();
        self.shared.counters[2]
            .seen
            .fetch_add(samples, Ordering::Relaxed);
        let now = SystemTime::now();
        let procs: Vec<(u32, f64)> = deltas
            .iter()
            .filter(|(tgid, _)| !self.is_agent(*tgid))
            .map(|&(tgid, delta)| (tgid, cpu_percent(delta, self.cpu_hz, elapsed)))
            .collect();
        let host_pct = (procs.iter().map(|(_, p)| p).sum::<f64>() / self.ncpus as f64).min(100.0);
        for hit in self
            .detect
            .resource
            .observe(Instant::now(), &procs, host_pct)
        {
            let Some(comm) = self.comm_of(hit.pid) else {
                continue;
            };
            let culprit = self.culprit(hit.pid, comm, None);
            self.raise(detect::resource::Resource::finding(culprit, hit), None);
        }
        for (tgid, pct) in procs {
            if pct < self.cpu_report_percent {
                continue;
            }
            let Some(comm) = self.comm_of(tgid) else {
                continue; // already gone
            };
            self.emit(
                now,
                Body::Cpu(CpuBody {
                    pid: tgid,
                    comm,
                    cpu_pct: (pct * 10.0).round() / 10.0,
                }),
            );
        }
    }

    /// A process connected to `target`: an alert waiting for a target on it or one of its
    /// ancestors (a shell under a web server, then its reverse shell) gets its decision.
    fn give_target(&mut self, tgid: u32, target: Untrusted, ancestry: &[(u32, String)]) {
        let owner = std::iter::once(tgid)
            .chain(ancestry.iter().map(|(p, _)| *p))
            .find(|p| self.awaiting.contains_key(p));
        if let Some(owner) = owner
            && let Some((alert, at)) = self.awaiting.remove(&owner)
        {
            let ancestors = self
                .tree
                .ancestry(alert.pid, &self.proc_root)
                .into_iter()
                .map(|(_, c)| c)
                .collect();
            let mut alert = alert;
            alert.target_ip = Some(target.ip());
            self.open_decision(&alert, at, ancestors, target);
        }
    }

    fn comm_of(&self, tgid: u32) -> Option<String> {
        match self.tree.get(tgid) {
            Some(p) => Some(p.comm.clone()),
            None => read_stat(&self.proc_root, tgid).map(|s| s.comm),
        }
    }

    /// Drop tree entries (and sample-map entries) for processes that are gone but whose exit
    /// the agent missed.
    pub fn gc(&mut self) {
        let root = self.proc_root.clone();
        let dropped = self
            .tree
            .retain_alive(|tgid, start| is_alive(&root, tgid, start));
        if dropped > 0 {
            debug!(dropped, "pruned processes whose exit was missed");
        }
        if let Some(map) = &mut self.cpu_map {
            let stale: Vec<u32> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|tgid| self.tree.get(*tgid).is_none())
                .collect();
            for tgid in stale {
                let _ = map.remove(&tgid);
            }
        }
        self.shared
            .processes
            .store(self.tree.len() as u64, Ordering::Relaxed);
    }
}

/// Now on the kernel's event clock (CLOCK_BOOTTIME), in ns.
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}
