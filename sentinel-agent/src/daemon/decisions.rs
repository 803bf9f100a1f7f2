//! From findings to decisions. A detector's finding is scored and de-duplicated into an alert;
//! the alert's process tree is *tracked*, so every untrusted destination the tree reaches joins
//! the alert's decision (or opens one when the last has ended): a repeat folds into its alert
//! but never costs a decision, and a decoy cannot shield the real C2. Part of the [`Pipeline`]
//! (same loop, same state), kept apart so the event loop's file reads as the data flow.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use tracing::{debug, warn};

use super::pipeline::Pipeline;
use crate::sensors::boot_ns;
use crate::{
    detect::{self, Finding, Outcome},
    enrich::trust::ActionableAddr,
    event::{AlertBody, Body, Record},
    store::Write,
    switch::clock::Now,
};

/// A member of an alerted process tree: the process (by its start time, so a reused pid is
/// not one) and the alert whose decision its destinations join.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub start: u64,
    pub id: String,
}

/// An alert whose process tree is tracked, and its current decision.
#[derive(Debug, Clone)]
pub struct Group {
    pub alert: AlertBody,
    pub at: SystemTime,
    /// The pending (or last) decision every new destination joins.
    pub decision: Option<String>,
    /// Trees alerted for this group.
    pub roots: Vec<u32>,
    /// Who its decisions are charged to ([`crate::switch::origin`]).
    pub origin: String,
}

impl Group {
    /// `geo` is about the destination: only its high-risk destinations join (through the
    /// detector). Every other anomaly is about the process: all its untrusted destinations do.
    pub(super) fn joins_every_destination(&self) -> bool {
        self.alert.anomaly != "geo"
    }
}

impl Pipeline {
    /// Score, de-duplicate and emit what a detector found; `origin_ns` is the kernel time
    /// (CLOCK_BOOTTIME) of the event that triggered it, for the latency in the log. A repeat
    /// folds into the alert, and a finding past its origin's budget into the origin's
    /// aggregated `switch_flood` alert, but neither costs a decision: its tree is tracked and
    /// its target joins the alert's decision.
    pub(super) fn raise(&mut self, mut finding: Finding, origin_ns: Option<u64>) {
        let now = SystemTime::now();
        // The alert says which name its target was resolved from (the culprit's, else the
        // host's): every alert with a target, whichever detector found it.
        if let Some(t) = finding.target
            && let Some(r) = self.names.name_for(finding.culprit.pid, t.ip(), boot_ns())
        {
            finding.detail = crate::enrich::names::with_name(&finding.detail, t.ip(), &r.name);
            finding.domain = Some(r.name.to_string());
        }
        if let Some(t) = finding.target
            && self.switch.is_safe(t.ip(), now)
        {
            debug!(target = %t, "not alerting: marked safe");
            return;
        }
        let culprit_pid = finding.culprit.pid;
        let culprit = (culprit_pid, finding.culprit.start);
        let origin = crate::switch::origin::of(
            finding.culprit.uid,
            culprit_pid,
            &finding.culprit.comm,
            &finding.culprit.ancestry,
        );
        // `blind` names no process, `cron`, `npm` and `switch_flood` name files: no tree to
        // track. A high `persistence` alert (root wrote it) is for a human to read; only a
        // critical one (a web server's tree, a service user) puts its tree's destinations in
        // a decision.
        let has_process = culprit_pid != 0
            && !matches!(
                finding.anomaly,
                detect::Anomaly::Blind
                    | detect::Anomaly::Cron { .. }
                    | detect::Anomaly::Npm
                    | detect::Anomaly::SwitchFlood { .. }
                    | detect::Anomaly::Persistence {
                        critical: false,
                        ..
                    }
            );
        let subject = finding.subject;
        let chain: Vec<u32> = finding.culprit.ancestry.iter().map(|(p, _)| *p).collect();
        // What the tree reached before the alert: the culprit's and its ancestors' below the
        // subject (a python that connects, then runs a shell).
        let mut targets: Vec<ActionableAddr> = finding.target.into_iter().collect();
        for pid in
            std::iter::once(culprit_pid).chain(chain.iter().copied().take_while(|p| *p != subject))
        {
            if let Some(t) = self.last_connect.get(&pid) {
                targets.push(*t);
            }
        }
        if finding.anomaly == detect::Anomaly::Geo {
            targets.truncate(1);
        }
        // `lineage` and a critical `persistence` below a web server name the server as
        // their subject; a `persistence` alert names the writer otherwise (a service user's
        // shell: its own destinations only), and a high one joins no decision.
        let walks_to_server = match finding.anomaly {
            detect::Anomaly::Lineage => true,
            detect::Anomaly::Persistence { critical, .. } => {
                if !critical {
                    targets.clear();
                } else if subject == culprit_pid {
                    targets.truncate(usize::from(self.last_connect.contains_key(&culprit_pid)));
                }
                critical && subject != culprit_pid
            }
            _ => false,
        };
        let below_server: Vec<u32> = if walks_to_server {
            chain
                .iter()
                .copied()
                .take_while(|p| *p != subject)
                .collect()
        } else {
            Vec::new()
        };
        // A descendant of a tree already alerted for the same anomaly joins its decision.
        let inherited = self
            .group_of(culprit_pid, &finding.culprit.ancestry)
            .and_then(|id| self.groups.get(&id))
            .filter(|g| g.alert.anomaly == finding.anomaly.name())
            .and_then(|g| g.decision.clone());
        // A geo finding is about its destination only: tracked under an aggregated alert,
        // every destination of its tree would join, so only its target does.
        let geo = finding.anomaly == detect::Anomaly::Geo;
        let (id, track) = match self.detect.alerts.raise(finding, Instant::now()) {
            Outcome::New(alert) => {
                self.raised(&alert, origin_ns, Some(culprit));
                (self.group(alert, now, inherited, origin), has_process)
            }
            Outcome::Repeat(alert, first) => {
                debug!(id = %alert.id, count = alert.count, "repeat of an open alert");
                self.respond(culprit, &alert);
                (self.update(alert, first, origin), has_process)
            }
            Outcome::Folded(folded, alert) => {
                // The alert it would have been still gets its response; the row is the
                // origin's aggregated alert.
                self.respond(culprit, &alert);
                let id = self.aggregate(folded, origin_ns, inherited, origin);
                (id, has_process && !geo)
            }
        };
        if track {
            self.track(&id, culprit_pid);
            // Below a web server, what stands between it and the culprit is the payload too
            // (`python3 -c` that connected out and runs `id`): its later destinations join.
            for pid in below_server {
                self.track(&id, pid);
            }
        }
        for target in targets {
            self.offer(&id, target);
        }
    }

    /// A finding folded into its origin's aggregated alert: raised when fresh, updated
    /// otherwise. Returns the aggregated alert's id, whose group the finding joins.
    fn aggregate(
        &mut self,
        folded: detect::budget::Folded,
        origin_ns: Option<u64>,
        inherited: Option<String>,
        origin: String,
    ) -> String {
        if folded.fresh {
            self.raised(&folded.alert, origin_ns, None);
            return self.group(folded.alert, folded.first, inherited, origin);
        }
        debug!(id = %folded.alert.id, count = folded.alert.count, "folded into a flood alert");
        self.update(folded.alert, folded.first, origin)
    }

    /// A new alert: log, count, emit and respond to it (on `culprit`, the (pid, start) its
    /// finding named, if any).
    fn raised(&mut self, alert: &AlertBody, origin_ns: Option<u64>, culprit: Option<(u32, u64)>) {
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
        self.emit(SystemTime::now(), Body::Alert(Box::new(alert.clone())));
        if let Some(culprit) = culprit {
            self.respond(culprit, alert);
        }
    }

    /// Keep new alert `alert` (raised at `at`) as a group whose tree and targets can join a
    /// decision. Returns its id.
    fn group(
        &mut self,
        alert: AlertBody,
        at: SystemTime,
        decision: Option<String>,
        origin: String,
    ) -> String {
        let id = alert.id.clone();
        let group = Group {
            alert,
            at,
            decision,
            roots: Vec::new(),
            origin,
        };
        self.groups.insert(id.clone(), group);
        id
    }

    /// An alert raised before (at `first`) changed: its count, its risk. Stored as an update
    /// (not streamed again). Returns its id.
    fn update(&mut self, alert: AlertBody, first: SystemTime, origin: String) -> String {
        let id = alert.id.clone();
        let g = self.groups.entry(id.clone()).or_insert_with(|| Group {
            alert: alert.clone(),
            at: first,
            decision: None,
            roots: Vec::new(),
            origin,
        });
        g.alert.risk = g.alert.risk.max(alert.risk);
        g.alert.count = alert.count;
        g.alert.detail = alert.detail.clone();
        let record = Record::new(
            first,
            self.shared.host.clone(),
            Body::Alert(Box::new(alert)),
        );
        self.store_alert_repeat(id.clone(), record);
        id
    }

    /// ActionableAddr destinations of `root`'s tree join alert `id`'s decision from now on.
    /// A process alerted twice stays with the more severe alert (a `lineage` shell that runs
    /// from /tmp is also a `miner` suspect: its destinations join the critical decision).
    pub(super) fn track(&mut self, id: &str, root: u32) {
        let severity = |id: &str| {
            self.groups
                .get(id)
                .map_or(0, |g| u8::from(g.alert.severity == "critical"))
        };
        if let Some(current) = self.tracked_id(root)
            && current != id
            && severity(current) > severity(id)
        {
            return;
        }
        let start = self.tree.get(root).map_or(0, |p| p.start);
        self.tracked.insert(
            root,
            Tracked {
                start,
                id: id.to_string(),
            },
        );
        if let Some(g) = self.groups.get_mut(id)
            && !g.roots.contains(&root)
        {
            g.roots.push(root);
        }
    }

    /// The alert `pid` is tracked for, when the process holding `pid` now is the one tracked.
    pub(super) fn tracked_id(&self, pid: u32) -> Option<&str> {
        let t = self.tracked.get(&pid)?;
        let same = t.start == 0 || self.tree.get(pid).is_none_or(|p| p.start == t.start);
        same.then_some(t.id.as_str())
    }

    /// The alert whose tracked tree holds `pid` (itself or an ancestor).
    pub(super) fn group_of(&self, pid: u32, ancestry: &[(u32, Arc<str>)]) -> Option<String> {
        std::iter::once(pid)
            .chain(ancestry.iter().map(|(p, _)| *p))
            .find_map(|p| self.tracked_id(p).map(str::to_string))
    }

    /// The alert whose tracked tree holds `pid` or an ancestor, by the tree only (no /proc).
    pub(super) fn tracked_ancestor(&self, pid: u32) -> Option<String> {
        let mut cur = pid;
        for _ in 0..64 {
            if let Some(id) = self.tracked_id(cur) {
                return Some(id.to_string());
            }
            match self.tree.get(cur) {
                Some(p) if p.ppid != 0 && p.ppid != cur => cur = p.ppid,
                _ => return None,
            }
        }
        None
    }

    /// `target` joins alert `id`'s pending decision, or opens a new one.
    pub(super) fn offer(&mut self, id: &str, target: ActionableAddr) {
        let Some(group) = self.groups.get_mut(id) else {
            return;
        };
        if group.alert.gather(target.ip()) {
            // The alert lists every target it gathered, whichever decision takes it.
            let (alert, at) = (group.alert.clone(), group.at);
            self.store_alert(alert, at, detect::Alerts::sync_targets);
        }
        let Some(group) = self.groups.get(id) else {
            return;
        };
        let now = Now::read();
        // The alert's own decision, else its origin's open one: one origin, one decision.
        let open = group
            .decision
            .clone()
            .filter(|d| self.switch.is_pending(d))
            .or_else(|| self.switch.pending_of(&group.origin).map(str::to_string));
        if let Some(d) = open {
            if let Some(g) = self.groups.get_mut(id) {
                g.decision = Some(d.clone());
            }
            let Some(group) = self.groups.get(id) else {
                return;
            };
            if self.switch.join(&d, target, now) && group.alert.state != "pending" {
                self.mark_pending(id, &d);
            }
            self.name_target(id, target.ip());
            return;
        }
        let mut alert = group.alert.clone();
        // The decision is about its target: its country is the target's (a lineage alert has
        // none of its own).
        if let Some(cc) = self
            .detect
            .geoip
            .as_ref()
            .and_then(|g| g.country(target.ip()))
        {
            alert.country = Some(cc);
        }
        let (at, origin) = (group.at, group.origin.clone());
        let ancestors = self
            .tree
            .ancestry(alert.pid, &self.proc_root)
            .into_iter()
            .map(|(_, c)| c.to_string())
            .collect();
        if let Some(change) = self
            .switch
            .open(&alert, at, ancestors, target, &origin, now)
        {
            if let Some(g) = self.groups.get_mut(id) {
                g.decision = Some(change.decision.id.clone());
            }
            self.apply(change);
            self.name_target(id, target.ip());
        }
    }

    /// The decision holding `ip` (a target of alert `id`) learns the name `ip` was resolved
    /// from: by the alert's process, else by the host.
    fn name_target(&mut self, id: &str, ip: std::net::IpAddr) {
        let Some(pid) = self.groups.get(id).map(|g| g.alert.pid) else {
            return;
        };
        if let Some(r) = self.names.name_for(pid, ip, boot_ns()) {
            self.switch.name_target(ip, &r.name);
        }
    }

    /// Store `alert` (raised at `at`), merged with the kept copy by `sync` (its state, or its
    /// targets), and keep the merged targets in its group.
    fn store_alert(
        &mut self,
        alert: AlertBody,
        at: SystemTime,
        sync: fn(&mut detect::Alerts, AlertBody) -> AlertBody,
    ) {
        let alert = sync(&mut self.detect.alerts, alert);
        if let Some(g) = self.groups.get_mut(&alert.id) {
            g.alert.target_ip = alert.target_ip;
            g.alert.targets.clone_from(&alert.targets);
        }
        let record = Record::new(at, self.shared.host.clone(), Body::Alert(Box::new(alert)));
        self.store(Write::Update(Arc::new(record)));
    }

    /// Alert `id` now has its targets in pending decision `decision` (joined, not opened).
    fn mark_pending(&mut self, id: &str, decision: &str) {
        let Some(deadline) = self.switch.deadline_of(decision) else {
            return;
        };
        let Some(g) = self.groups.get_mut(id) else {
            return;
        };
        g.alert.state = "pending".into();
        g.alert.deadline = Some(humantime::format_rfc3339_millis(deadline).to_string());
        let (alert, at) = (g.alert.clone(), g.at);
        self.store_alert(alert, at, detect::Alerts::sync_state);
    }

    /// Whether `tgid` or one of its ancestors is a tracked (alerted) tree: a walk over the
    /// tree only (no allocation, no /proc), so most connects skip building a culprit.
    pub(super) fn in_tracked_tree(&self, tgid: u32) -> bool {
        if self.tracked.is_empty() {
            return false;
        }
        let mut cur = tgid;
        for _ in 0..64 {
            if self.tracked_id(cur).is_some() {
                return true;
            }
            match self.tree.get(cur) {
                Some(p) if p.ppid != 0 && p.ppid != cur => cur = p.ppid,
                // Not in the tree: let the culprit walk (which reads /proc) decide.
                None => return true,
                _ => return false,
            }
        }
        false
    }
}
