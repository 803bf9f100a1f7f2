//! The dead man's switch. An alert with a remote address to act on opens a pending decision
//! with a deadline; it ends exactly once: `safe` (a human said so), `blocked` (a human
//! confirmed) or `auto-blocked` (nobody answered in time). Silence is consent to defend.
//!
//! A decision holds a *set* of targets: every untrusted destination the offending process tree
//! reaches while it is pending joins it (an attacker cannot shield a C2 behind a decoy), and
//! one address never has two open decisions. All targets pass the enforcement gate
//! ([`BlockGuard`]) when the decision ends; what it refuses is recorded on the decision.
//!
//! This state machine lives on the event loop and never blocks: committing to the ledger,
//! running `nft` and announcing in chat are jobs for the [`worker`] thread, which does them in
//! order (committed before announced or enforced) and in batches. Countdowns run on the boot
//! clock ([`clock`]); pending deadlines and blocks survive restarts ([`resume`]).

pub mod answer;
mod blocked;
mod charge;
pub mod clock;
pub mod decision;
pub mod ledger;
pub mod origin;
mod queries;
mod resume;
mod split;
pub mod worker;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::mpsc::Sender,
    time::{Duration, SystemTime},
};

use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::{
    enforce::BlockGuard,
    enrich::trust::{ActionableAddr, TrustSet},
    event::AlertBody,
    switch::{
        clock::Now,
        decision::{AnswerError, Decision, Refused, State, Verdict},
        ledger::{Block, Kill, Ledger, Open},
        worker::{Ending, Job},
    },
};

/// The switch's timings (`[switch]`, `enforce.block_ttl`).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub countdown: Duration,
    pub safe_ttl: Duration,
    pub block_ttl: Duration,
}

/// Caps that keep a flood of decisions bounded (`switch.max_targets`, `switch.max_pending`,
/// `switch.max_auto_blocks`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_targets: usize,
    pub max_pending: usize,
    /// Addresses the timer may block per origin in any hour ([`origin::Budget`]).
    pub max_auto_blocks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_targets: 16_384,
            max_pending: 256,
            max_auto_blocks: 32,
        }
    }
}

/// How far off a decision that waits for a human is due: never, in practice.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A decision changed: the alert's new state (to store) and the decision (to emit).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub alert: AlertBody,
    pub alert_at: SystemTime,
    pub decision: Decision,
}

/// A pending decision as the switch keeps it.
#[derive(Debug, Clone)]
struct Pending {
    open: Open,
    /// The deadline on the boot clock.
    due: Duration,
    /// Target count at the last announcement (follow-ups at each order of magnitude).
    announced: usize,
    /// When it was last announced, on the boot clock.
    announced_at: Duration,
    /// Its target set changed since the worker last wrote it.
    dirty: bool,
    /// Who it is charged to ([`origin`]).
    origin: String,
}

impl Pending {
    /// A decision just announced with `announced` targets, at `at` on the boot clock, due at
    /// `due`; its ledger row is as the worker last wrote it.
    fn announced(
        open: Open,
        due: Duration,
        announced: usize,
        at: Duration,
        origin: String,
    ) -> Self {
        Pending {
            open,
            due,
            announced,
            announced_at: at,
            dirty: false,
            origin,
        }
    }
}

/// The order of magnitude that earns a follow-up message.
const GROWTH_FACTOR: usize = 10;
/// At most one follow-up message per decision this often.
const FOLLOW_UP_EVERY: Duration = Duration::from_secs(60);

pub struct Switch {
    /// Reads only: answers about decisions that ended before this run.
    reader: Ledger,
    jobs: Sender<Job>,
    timings: Timings,
    limits: Limits,
    host: String,
    dry_run: bool,
    pub gate: BlockGuard,
    pending: HashMap<String, Pending>,
    /// Which pending decision holds each target.
    by_target: HashMap<IpAddr, String>,
    /// The one open decision of each origin.
    by_origin: HashMap<String, String>,
    /// What the timer blocked per origin in the last hour.
    budget: origin::Budget,
    safe: HashMap<IpAddr, SystemTime>,
    /// Addresses blocked now (decided this run, shared by the fleet or re-asserted at start):
    /// not decided again until their block ends.
    blocked: blocked::Blocked,
    /// Decisions ended during this run, and how.
    ended: HashMap<String, State>,
}

impl Switch {
    pub fn new(
        reader: Ledger,
        jobs: Sender<Job>,
        timings: Timings,
        limits: Limits,
        host: String,
        dry_run: bool,
        gate: BlockGuard,
    ) -> Self {
        Self {
            reader,
            jobs,
            timings,
            limits,
            host,
            dry_run,
            gate,
            pending: HashMap::new(),
            by_target: HashMap::new(),
            by_origin: HashMap::new(),
            budget: Default::default(),
            safe: HashMap::new(),
            blocked: Default::default(),
            ended: HashMap::new(),
        }
    }

    fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            warn!("the switch worker has stopped: a decision's work is lost");
        }
    }

    pub fn reader(&self) -> &Ledger {
        &self.reader
    }

    /// Record a process the agent terminated.
    pub fn record_kill(&self, kill: Kill) {
        self.send(Job::Kill(Box::new(kill)));
    }

    /// A fresh decision id for `alert`: its own id the first time, then `ID.2`, `ID.3`, …
    fn fresh_id(&self, alert_id: &str) -> String {
        let taken = |id: &str| {
            self.pending.contains_key(id)
                || self.ended.contains_key(id)
                || self.reader.get(id).ok().flatten().is_some()
        };
        if !taken(alert_id) {
            return alert_id.to_string();
        }
        (2..)
            .map(|n| format!("{alert_id}.{n}"))
            .find(|id| !taken(id))
            .expect("an unused id")
    }

    /// Open a pending decision for `alert` against `target`, charged to `origin` (the caller
    /// first offers the target to the origin's open decision, [`Switch::pending_of`]). None when
    /// the target was marked safe or another pending decision already holds it. Past
    /// `switch.max_pending` the new decision waits for a human: no countdown, never blocked at
    /// once (a flood must not turn the switch into an instant block).
    pub fn open(
        &mut self,
        alert: &AlertBody,
        alert_at: SystemTime,
        ancestors: Vec<String>,
        target: ActionableAddr,
        origin: &str,
        now: Now,
    ) -> Option<Change> {
        let ip = target.ip();
        if self.is_decided(ip, now) {
            return None;
        }
        let id = self.fresh_id(&alert.id);
        let full = self.pending.len() >= self.limits.max_pending;
        let waiting = full.then(|| {
            format!(
                "switch.max_pending ({}) reached: it waits for a human, no automatic block",
                self.limits.max_pending
            )
        });
        let wait = if full { NEVER } else { self.timings.countdown };
        let deadline = now.wall + wait;
        let decision = Decision {
            id: id.clone(),
            anomaly: alert.anomaly.clone(),
            severity: alert.severity.clone(),
            risk: alert.risk,
            mitre: alert.mitre.clone(),
            host: self.host.clone(),
            pid: alert.pid,
            comm: alert.comm.clone(),
            exe: alert.exe.clone(),
            ancestors,
            target_ip: Some(ip),
            targets: vec![ip],
            refused: Vec::new(),
            overflow: 0,
            country: alert.country.clone(),
            // The alert's name is its first target's.
            domain: alert.domain.clone().filter(|_| alert.target_ip == Some(ip)),
            names: alert
                .domain
                .iter()
                .filter(|_| alert.target_ip == Some(ip))
                .map(|n| (ip, n.clone()))
                .collect(),
            detail: alert.detail.clone(),
            created: now.wall,
            deadline,
            state: State::Pending,
            decided_by: None,
            reason: None,
            origin: Some(origin.to_string()),
            waiting,
            container: alert.container.clone(),
        };
        let mut alert = alert.clone();
        alert.state = State::Pending.as_str().into();
        alert.gather(ip);
        alert.deadline = Some(humantime::format_rfc3339_millis(deadline).to_string());
        let open = Open {
            decision: decision.clone(),
            alert: alert.clone(),
            alert_at,
        };
        self.send(Job::Open(Box::new(open.clone())));
        self.by_target.insert(ip, id.clone());
        self.by_origin.insert(origin.to_string(), id.clone());
        self.pending.insert(
            id.clone(),
            Pending::announced(open, now.boot + wait, 1, now.boot, origin.to_string()),
        );
        if full {
            warn!(id = %id, %origin, max_pending = self.limits.max_pending, "switch.max_pending reached: the decision waits for a human");
        } else {
            info!(id = %id, target = %ip, %origin, deadline = %humantime::format_rfc3339_seconds(deadline), "pending decision opened");
        }
        Some(Change {
            alert,
            alert_at,
            decision,
        })
    }

    /// `target` joins pending decision `id` (another destination of the same offending process
    /// tree). False when it did not: already held by a pending decision, marked safe, or the
    /// decision is full (counted as overflow). Reaching `switch.max_targets` makes the decision
    /// due at once (fail closed).
    pub fn join(&mut self, id: &str, target: ActionableAddr, now: Now) -> bool {
        let ip = target.ip();
        if self.is_decided(ip, now) {
            return false;
        }
        let max = self.limits.max_targets;
        let Some(p) = self.pending.get_mut(id) else {
            return false;
        };
        let d = &mut p.open.decision;
        if d.targets.len() >= max {
            d.overflow += 1;
            p.dirty = true;
            return false;
        }
        d.targets.push(ip);
        p.dirty = true;
        self.by_target.insert(ip, id.to_string());
        if d.targets.len() == max {
            warn!(
                id,
                max_targets = max,
                "switch.max_targets reached: blocking now (fail closed)"
            );
            d.reason = Some(format!(
                "switch.max_targets ({max}) reached: blocked without waiting (fail closed)"
            ));
            p.due = now.boot;
        }
        true
    }

    /// `ip`, a target of a pending decision, was resolved from `name`: its block will be
    /// recorded under it. Nothing when no pending decision holds `ip` or it is named already.
    pub fn name_target(&mut self, ip: IpAddr, name: &str) {
        let Some(p) = self
            .by_target
            .get(&ip)
            .and_then(|id| self.pending.get_mut(id))
        else {
            return;
        };
        let names = &mut p.open.decision.names;
        if names.len() < self.limits.max_targets && !names.contains_key(&ip) {
            names.insert(ip, name.to_string());
            p.dirty = true;
        }
    }

    /// Hand the worker every decision whose target set changed (once per loop round, so a
    /// burst of joins costs one write). A set that grew by an order of magnitude since it was
    /// last announced gets a follow-up message, at most one every [`FOLLOW_UP_EVERY`].
    pub fn flush(&mut self, now: Now) {
        let mut jobs = Vec::new();
        for p in self.pending.values_mut().filter(|p| p.dirty) {
            p.dirty = false;
            let n = p.open.decision.targets.len();
            let announce = n >= p.announced * GROWTH_FACTOR
                && now.boot.saturating_sub(p.announced_at) >= FOLLOW_UP_EVERY;
            if announce {
                p.announced = n;
                p.announced_at = now.boot;
            }
            jobs.push(Job::Grow {
                decision: Box::new(p.open.decision.clone()),
                announce,
            });
        }
        for job in jobs {
            self.send(job);
        }
    }

    /// A human's answer. The reply goes out once the outcome is committed (and enforced).
    pub fn answer(
        &mut self,
        trust: &TrustSet,
        id: &str,
        verdict: Verdict,
        via: &str,
        now: Now,
        reply: Option<oneshot::Sender<Result<Decision, AnswerError>>>,
    ) -> Result<Change, AnswerError> {
        let state = match verdict {
            Verdict::Safe => State::Safe,
            Verdict::Block => State::Blocked,
        };
        if verdict == Verdict::Safe && via != "cli" {
            self.keep_unseen_targets(id, now);
        }
        let Some(mut ending) = self.finish(trust, id, state, via, now) else {
            let err = match self.ended.get(id).copied() {
                Some(state) => AnswerError::Ended {
                    id: id.into(),
                    state,
                },
                None => match self.reader.get(id) {
                    Ok(Some(d)) => AnswerError::Ended {
                        id: id.into(),
                        state: d.state,
                    },
                    _ => AnswerError::Unknown(id.into()),
                },
            };
            if let Some(reply) = reply {
                let _ = reply.send(Err(err.clone()));
            }
            return Err(err);
        };
        ending.reply = reply;
        let change = ending.change.clone();
        self.send(Job::End(vec![ending]));
        Ok(change)
    }

    /// End every decision whose deadline has passed on the boot clock, as one batch, and
    /// forget the blocks that have ended.
    pub fn tick(&mut self, trust: &TrustSet, now: Now) -> Vec<Change> {
        let ended = self.blocked.prune(now.boot);
        if ended > 0 {
            info!(
                blocks = ended,
                "blocks ended: their addresses are judged afresh"
            );
        }
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now.boot)
            .map(|(id, _)| id.clone())
            .collect();
        let mut endings: Vec<Ending> = Vec::new();
        for id in &due {
            if let Some(ending) = self.charge_timer(trust, id, now) {
                endings.push(ending);
            }
        }
        self.budget.prune(now.boot);
        let changes = endings.iter().map(|e| e.change.clone()).collect();
        if !endings.is_empty() {
            self.send(Job::End(endings));
        }
        changes
    }

    /// Admit each target through the gate: (blocks to make, refusals).
    fn admitted(
        &self,
        trust: &TrustSet,
        targets: &[IpAddr],
    ) -> (Vec<(crate::enforce::Admitted, Duration)>, Vec<Refused>) {
        let mut blocks = Vec::new();
        let mut refused = Vec::new();
        for ip in targets {
            match self.gate.admit(trust, *ip) {
                Ok(a) => blocks.push((a, self.timings.block_ttl)),
                Err(why) => refused.push(Refused {
                    ip: *ip,
                    reason: why.to_string(),
                }),
            }
        }
        (blocks, refused)
    }

    /// End decision `id` in `state`. None if it was not pending.
    fn finish(
        &mut self,
        trust: &TrustSet,
        id: &str,
        state: State,
        via: &str,
        now: Now,
    ) -> Option<Ending> {
        let p = self.pending.remove(id)?;
        if self.by_origin.get(&p.origin).is_some_and(|d| d == id) {
            self.by_origin.remove(&p.origin);
        }
        let mut decision = p.open.decision;
        for t in targets_of(&decision) {
            self.by_target.remove(&t);
        }
        decision.state = state;
        decision.decided_by = Some(via.to_string());
        let mut blocks = Vec::new();
        let mut safe_until = None;
        match state {
            State::Safe => {
                let until = now.wall + self.timings.safe_ttl;
                for t in targets_of(&decision) {
                    self.safe.insert(t, until);
                }
                safe_until = Some(until);
            }
            _ => {
                let (admitted, refused) = self.admitted(trust, &targets_of(&decision));
                for r in &refused {
                    warn!(id, target = %r.ip, "block refused: {}", r.reason);
                }
                if admitted.is_empty()
                    && let Some(first) = refused.first()
                {
                    decision.reason = Some(format!("block refused: {}", first.reason));
                } else if self.dry_run {
                    decision.reason =
                        Some("dry-run: decided and recorded, nothing enforced".into());
                } else {
                    for (a, ttl) in &admitted {
                        self.blocked.insert(a.ip(), now.boot + *ttl);
                    }
                    blocks = admitted;
                }
                decision.refused = refused;
            }
        }
        self.ended.insert(id.to_string(), state);
        let mut alert = p.open.alert;
        alert.state = state.as_str().into();
        Some(Ending {
            change: Change {
                alert,
                alert_at: p.open.alert_at,
                decision,
            },
            blocks,
            safe_until,
            reply: None,
        })
    }

    /// Lift the block on `ip`; the reply says whether one was recorded.
    pub fn unblock(&mut self, ip: IpAddr, reply: Option<oneshot::Sender<Result<bool, String>>>) {
        self.blocked.remove(crate::enrich::trust::canonical(ip));
        self.send(Job::Unblock { ip, reply });
    }

    /// Block `ip` because a human confirmed it as hostile on another host of the fleet:
    /// through this host's own gate, recorded under `tag` (`fleet:HOST/ID`) for
    /// `enforce.block_ttl`, and not decided again here until the block ends. Ok(false) when it
    /// is blocked here already (or in dry-run); Err(why) when the gate refuses it.
    pub fn block_shared(
        &mut self,
        trust: &TrustSet,
        ip: IpAddr,
        tag: &str,
        domain: Option<&str>,
        now: Now,
    ) -> Result<bool, String> {
        let target = self.gate.admit(trust, ip).map_err(|why| why.to_string())?;
        if self.dry_run || self.blocked.holds(target.ip(), now.boot) {
            return Ok(false);
        }
        let ttl = self.timings.block_ttl;
        self.blocked.insert(target.ip(), now.boot + ttl);
        self.send(Job::SharedBlock {
            block: Block {
                addr: target.ip(),
                expires: now.wall + ttl,
                decision_id: tag.into(),
                domain: domain.map(str::to_string),
            },
            target,
            ttl,
        });
        Ok(true)
    }

    /// Time until the earliest pending deadline on the boot clock.
    pub fn next_due(&self, now: Now) -> Option<Duration> {
        self.pending
            .values()
            .map(|p| p.due.saturating_sub(now.boot))
            .min()
    }

    /// The worker reported a state known only after enforcement.
    pub fn note_changed(&mut self, change: &Change) {
        self.ended
            .insert(change.decision.id.clone(), change.decision.state);
    }
}

/// A decision's targets (older rows have only `target_ip`).
fn targets_of(d: &Decision) -> Vec<IpAddr> {
    if d.targets.is_empty() {
        d.target_ip.into_iter().collect()
    } else {
        d.targets.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, mpsc};

    use proptest::prelude::*;

    use super::*;
    use crate::{
        enforce::{Backend, Enforcer},
        event::sample_alert as alert,
        switch::{
            decision::Notice,
            worker::{Health, Worker},
        },
    };

    const T: Timings = Timings {
        countdown: Duration::from_secs(300),
        safe_ttl: Duration::from_secs(3600),
        block_ttl: Duration::from_secs(86400),
    };

    /// The switch with its worker run synchronously: `sync()` carries out the queued jobs.
    struct Rig {
        sw: Switch,
        worker: Worker,
        rx: mpsc::Receiver<Job>,
    }

    impl Rig {
        fn new(dir: &std::path::Path) -> Rig {
            Self::with_limits(dir, Limits::default())
        }

        fn with_limits(dir: &std::path::Path, limits: Limits) -> Rig {
            let path = dir.join("s.db");
            let ledger = Ledger::open(&path).unwrap();
            let worker = Worker::new(
                ledger,
                Enforcer::new(Backend::Recording(Vec::new())),
                Arc::new(Health::default()),
            );
            let (tx, rx) = mpsc::channel();
            let reader = Ledger::open_existing(&path, false).unwrap();
            let sw = Switch::new(
                reader,
                tx,
                T,
                limits,
                "h".into(),
                false,
                BlockGuard::default(),
            );
            Rig { sw, worker, rx }
        }

        fn sync(&mut self) {
            let jobs: Vec<Job> = self.rx.try_iter().collect();
            if !jobs.is_empty() {
                self.worker.run(jobs);
            }
        }

        fn recorded(&self) -> Vec<IpAddr> {
            self.worker.enforcer().recorded().to_vec()
        }

        fn open(&mut self, id: &str, target: &str, now: Now) -> Option<Change> {
            let trust = TrustSet::default();
            let t = trust.check(target.parse().unwrap()).unwrap();
            // Each alert its own origin here; tests/origin.rs charges several to one.
            let origin = format!("origin of {id}");
            let c = self
                .sw
                .open(&alert(id, target), now.wall, vec![], t, &origin, now);
            self.sync();
            c
        }

        fn join(&mut self, id: &str, target: &str, now: Now) -> bool {
            let t = TrustSet::default().check(target.parse().unwrap()).unwrap();
            let joined = self.sw.join(id, t, now);
            self.sw.flush(now);
            self.sync();
            joined
        }

        fn tick(&mut self, trust: &TrustSet, now: Now) -> Vec<Change> {
            let c = self.sw.tick(trust, now);
            self.sync();
            c
        }

        fn answer(
            &mut self,
            trust: &TrustSet,
            id: &str,
            v: Verdict,
            now: Now,
        ) -> Result<Change, AnswerError> {
            let c = self.sw.answer(trust, id, v, "cli", now, None);
            self.sync();
            c
        }
    }

    fn t0() -> Now {
        Now::read()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn silence_blocks_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let t0 = t0();
        let c = r.open("a1", "198.51.100.9", t0).unwrap();
        assert_eq!(c.alert.state, "pending");
        assert!(c.alert.deadline.is_some());
        let trust = TrustSet::default();
        assert!(
            r.tick(&trust, t0.after(Duration::from_secs(299)))
                .is_empty()
        );
        let ended = r.tick(&trust, t0.after(Duration::from_secs(300)));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].decision.state, State::AutoBlocked);
        assert_eq!(ended[0].alert.state, "auto-blocked");
        assert_eq!(r.recorded(), [ip("198.51.100.9")]);
        let blocks = r.worker.ledger().blocks(t0.wall).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].decision_id, "a1");
        // Exactly once: answering now says it ended, and changes nothing.
        let err = r
            .answer(
                &trust,
                "a1",
                Verdict::Safe,
                t0.after(Duration::from_secs(301)),
            )
            .unwrap_err();
        assert_eq!(
            err,
            AnswerError::Ended {
                id: "a1".into(),
                state: State::AutoBlocked
            }
        );
        assert_eq!(r.recorded().len(), 1);
    }

    #[test]
    fn safe_means_no_block_and_no_new_decision() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let t0 = t0();
        let trust = TrustSet::default();
        r.open("a1", "198.51.100.9", t0).unwrap();
        let c =
            r.sw.answer(&trust, "a1", Verdict::Safe, "slack:U1", t0, None)
                .unwrap();
        r.sync();
        assert_eq!(c.decision.state, State::Safe);
        assert_eq!(c.decision.decided_by.as_deref(), Some("slack:U1"));
        assert!(
            r.tick(&trust, t0.after(Duration::from_secs(1000)))
                .is_empty()
        );
        assert!(r.recorded().is_empty());
        assert!(
            r.open("a2", "198.51.100.9", t0.after(Duration::from_secs(10)))
                .is_none()
        );
        // Once safe_ttl is over, the target can be decided on again.
        assert!(
            r.open("a3", "198.51.100.9", t0.after(Duration::from_secs(3601)))
                .is_some()
        );
        assert_eq!(
            r.answer(&trust, "nope", Verdict::Block, t0).unwrap_err(),
            AnswerError::Unknown("nope".into())
        );
    }

    #[test]
    fn pending_decisions_and_blocks_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = t0();
        let trust = TrustSet::default();
        {
            let mut r = Rig::new(dir.path());
            r.open("a1", "198.51.100.9", t0).unwrap();
            r.join("a1", "198.51.100.10", t0);
            r.open("a2", "2001:db8::9", t0).unwrap();
            r.answer(&trust, "a2", Verdict::Block, t0).unwrap();
        } // "killed"
        let mut r = Rig::new(dir.path());
        let later = t0.after(Duration::from_secs(10));
        r.sw.resume(&trust, later).unwrap();
        r.sync();
        // The block is re-asserted; the pending one keeps its original deadline and targets.
        assert_eq!(r.recorded(), [ip("2001:db8::9")]);
        assert_eq!(r.sw.next_due(later), Some(Duration::from_secs(290)));
        assert_eq!(r.sw.holder_of(ip("198.51.100.10")), Some("a1"));
        assert!(
            r.tick(&trust, t0.after(Duration::from_secs(299)))
                .is_empty()
        );
        let ended = r.tick(&trust, t0.after(Duration::from_secs(301)));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].decision.targets.len(), 2);
    }

    #[test]
    fn a_trusted_target_is_refused_and_the_decision_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let t0 = t0();
        r.open("a1", "198.51.100.9", t0).unwrap();
        // The operator trusts the address while the decision is pending.
        let trust = TrustSet::new(&["198.51.100.0/24".parse().unwrap()], &[]);
        let c = r.answer(&trust, "a1", Verdict::Block, t0).unwrap();
        assert_eq!(c.decision.state, State::Blocked);
        assert!(c.decision.reason.unwrap().contains("trusted"));
        assert_eq!(c.decision.refused.len(), 1);
        assert!(r.recorded().is_empty());
        assert!(r.worker.ledger().blocks(t0.wall).unwrap().is_empty());
    }

    #[test]
    fn every_destination_joins_and_all_are_blocked_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let t0 = t0();
        let trust = TrustSet::default();
        r.open("a1", "198.51.100.9", t0).unwrap(); // the decoy
        assert!(r.join("a1", "198.51.100.77", t0)); // the real C2
        assert!(!r.join("a1", "198.51.100.77", t0), "already held");
        // One address never has two open decisions.
        assert!(r.open("b1", "198.51.100.77", t0).is_none());
        let ended = r.tick(&trust, t0.after(T.countdown));
        assert_eq!(ended.len(), 1);
        assert_eq!(
            ended[0].decision.targets,
            [ip("198.51.100.9"), ip("198.51.100.77")]
        );
        let mut got = r.recorded();
        got.sort();
        assert_eq!(got, [ip("198.51.100.9"), ip("198.51.100.77")]);
    }

    #[test]
    fn growth_earns_one_follow_up_a_minute_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        r.worker.set_notices(tx);
        let t0 = t0();
        r.open("a1", "198.51.100.1", t0).unwrap();
        for i in 2..=20 {
            r.join("a1", &format!("198.51.100.{i}"), t0);
        }
        let later = t0.after(FOLLOW_UP_EVERY);
        r.join("a1", "198.51.100.21", later);
        r.join("a1", "198.51.100.22", later);
        let mut kinds = Vec::new();
        while let Ok(n) = rx.try_recv() {
            kinds.push(match n {
                Notice::Opened(d) => format!("opened {}", d.targets.len()),
                Notice::Grew(d) => format!("grew {}", d.targets.len()),
                Notice::Ended(d) => format!("ended {}", d.targets.len()),
            });
        }
        assert_eq!(kinds, ["opened 1", "grew 21"]);
    }

    #[test]
    fn caps_fail_closed_and_a_full_switch_waits_for_a_human() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::with_limits(
            dir.path(),
            Limits {
                max_targets: 3,
                max_pending: 2,
                max_auto_blocks: 32,
            },
        );
        let t0 = t0();
        let trust = TrustSet::default();
        r.open("a1", "198.51.100.1", t0).unwrap();
        assert!(r.join("a1", "198.51.100.2", t0));
        assert!(r.join("a1", "198.51.100.3", t0));
        // Full: the next one overflows, and the decision is due now, not in 5 minutes.
        assert!(!r.join("a1", "198.51.100.4", t0));
        let ended = r.tick(&trust, t0);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].decision.overflow, 1);
        assert!(
            ended[0]
                .decision
                .reason
                .as_deref()
                .unwrap()
                .contains("max_targets")
        );
        // Past max_pending, a new decision is never blocked at once: it waits for a human,
        // past its countdown too.
        r.open("b1", "198.51.100.11", t0).unwrap();
        r.open("b2", "198.51.100.12", t0).unwrap();
        let c = r.open("b3", "198.51.100.13", t0).unwrap();
        assert_eq!(c.decision.state, State::Pending);
        assert!(
            c.decision
                .waiting
                .as_deref()
                .unwrap()
                .contains("max_pending")
        );
        let later = t0.after(Duration::from_secs(3600));
        let mut ended: Vec<String> = r
            .tick(&trust, later)
            .into_iter()
            .map(|c| c.decision.id)
            .collect();
        ended.sort();
        assert_eq!(ended, ["b1", "b2"]);
        assert!(!r.recorded().contains(&ip("198.51.100.13")));
        assert!(r.sw.is_pending("b3"));
        let stored = r.worker.ledger().get("b3").unwrap().unwrap();
        assert_eq!(stored.state, State::Pending);
        // A human's answer still blocks it.
        r.answer(&trust, "b3", Verdict::Block, later).unwrap();
        assert!(r.recorded().contains(&ip("198.51.100.13")));
    }

    #[test]
    fn a_wall_clock_step_neither_fires_nor_delays() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let t0 = t0();
        let trust = TrustSet::default();
        r.open("a1", "198.51.100.9", t0).unwrap();
        // NTP steps the wall clock an hour forward: nothing fires.
        let stepped = Now {
            wall: t0.wall + Duration::from_secs(3600),
            boot: t0.boot + Duration::from_secs(1),
        };
        assert!(r.tick(&trust, stepped).is_empty());
        // An hour back: the deadline still comes after the countdown on the boot clock.
        let back = Now {
            wall: t0.wall - Duration::from_secs(3600),
            boot: t0.boot + T.countdown,
        };
        assert_eq!(r.tick(&trust, back).len(), 1);
    }

    #[test]
    fn the_ids_of_later_decisions_of_one_alert_are_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let t0 = t0();
        let trust = TrustSet::default();
        r.open("a1", "198.51.100.9", t0).unwrap();
        r.tick(&trust, t0.after(T.countdown));
        let c = r
            .open("a1", "198.51.100.10", t0.after(T.countdown))
            .unwrap();
        assert_eq!(c.decision.id, "a1.2");
    }

    #[derive(Debug, Clone)]
    enum Step {
        Open(u8, u32),
        Join(u8, u32),
        Answer(u8, bool),
        Tick(u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(i, a)| Step::Open(i, a)),
            (any::<u8>(), any::<u32>()).prop_map(|(i, a)| Step::Join(i, a)),
            (any::<u8>(), any::<bool>()).prop_map(|(i, b)| Step::Answer(i, b)),
            any::<u16>().prop_map(Step::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever happens — decisions opened and joined on any address (trust changing under
        /// them), answers, timers, restarts — no trusted address is ever put in a set, and no
        /// address is ever held by two pending decisions.
        #[test]
        fn no_sequence_blocks_a_trusted_address(steps in prop::collection::vec(step(), 1..40),
                                                trusted in prop::collection::vec(any::<u32>(), 1..4)) {
            let dir = tempfile::tempdir().unwrap();
            let mut r = Rig::new(dir.path());
            let nets: Vec<ipnet::IpNet> = trusted
                .iter()
                .map(|a| ipnet::IpNet::new(IpAddr::V4((*a).into()), 24).unwrap().trunc())
                .collect();
            let open_trust = TrustSet::default();
            let trust = TrustSet::new(&nets, &[]);
            let mut now = Now::read();
            let pick = |i: u8, a: u32| {
                // Half the time, pick an address inside a trusted network.
                if a.is_multiple_of(2) {
                    let IpNet::V4(n) = nets[i as usize % nets.len()] else { unreachable!() };
                    IpAddr::V4((u32::from(n.network()) | (a & 0xff)).into())
                } else {
                    IpAddr::V4(a.into())
                }
            };
            for s in steps {
                match s {
                    Step::Open(i, a) => {
                        let addr = pick(i, a);
                        // Decisions open while the address was not (yet) trusted.
                        if let Ok(t) = open_trust.check(addr) {
                            r.sw.open(&alert(&format!("d{i}"), &addr.to_string()), now.wall, vec![], t, &format!("o{i}"), now);
                        }
                    }
                    Step::Join(i, a) => {
                        if let Ok(t) = open_trust.check(pick(i, a)) {
                            r.sw.join(&format!("d{}", i % 8), t, now);
                        }
                    }
                    Step::Answer(i, block) => {
                        let v = if block { Verdict::Block } else { Verdict::Safe };
                        let _ = r.sw.answer(&trust, &format!("d{i}"), v, "cli", now, None);
                    }
                    Step::Tick(secs) => {
                        now = now.after(Duration::from_secs(secs as u64));
                        r.sw.tick(&trust, now);
                    }
                }
                r.sw.flush(now);
                r.sync();
                let mut held = std::collections::HashSet::new();
                for d in r.sw.pending() {
                    for t in &d.targets {
                        prop_assert!(held.insert(*t), "{t} held twice");
                    }
                }
            }
            // And a restart re-asserts nothing trusted either.
            let recorded = r.recorded();
            drop(r);
            let mut again = Rig::new(dir.path());
            again.sw.resume(&trust, now).unwrap();
            again.sync();
            for ip in recorded.iter().chain(again.recorded().iter()) {
                prop_assert!(trust.check(*ip).is_ok(), "{ip} was blocked");
            }
        }
    }

    #[test]
    fn a_shared_block_passes_the_gate_is_enforced_reported_and_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        r.worker.set_reports(tx);
        let t0 = t0();
        let trust = TrustSet::new(&["198.51.100.128/25".parse().unwrap()], &[]);
        // This host's own trust wins over the fleet.
        let err =
            r.sw.block_shared(&trust, ip("198.51.100.130"), "fleet:b/x", None, t0)
                .unwrap_err();
        assert!(err.contains("trust"), "{err}");
        assert_eq!(
            r.sw.block_shared(&trust, ip("198.51.100.2"), "fleet:b/x", None, t0),
            Ok(true)
        );
        assert_eq!(
            r.sw.block_shared(&trust, ip("198.51.100.2"), "fleet:c/y", None, t0),
            Ok(false),
            "held already"
        );
        r.sync();
        assert_eq!(r.recorded(), [ip("198.51.100.2")]);
        let rows = r.worker.ledger().blocks(t0.wall).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].decision_id, "fleet:b/x");
        assert!(rows[0].expires >= t0.wall + T.block_ttl);
        let mut enforced = Vec::new();
        while let Ok(report) = reports.try_recv() {
            if let worker::Report::Enforced(b) = report {
                enforced.extend(b);
            }
        }
        assert_eq!(enforced, rows);
        // A blocked address is never decided again.
        assert!(r.open("a1", "198.51.100.2", t0).is_none());

        let (reply, answer) = oneshot::channel();
        r.sw.unblock(ip("198.51.100.2"), Some(reply));
        r.sync();
        assert_eq!(answer.blocking_recv().unwrap(), Ok(true));
        let lifted: Vec<Block> = std::iter::from_fn(|| reports.try_recv().ok())
            .filter_map(|report| match report {
                worker::Report::Lifted(b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(lifted, rows);
        assert!(r.worker.ledger().blocks(t0.wall).unwrap().is_empty());
    }

    #[test]
    fn a_decisions_block_rows_are_reported_once_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rig::new(dir.path());
        let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        r.worker.set_reports(tx);
        let t0 = t0();
        r.open("a1", "198.51.100.9", t0).unwrap();
        r.join("a1", "198.51.100.10", t0);
        r.tick(&TrustSet::default(), t0.after(T.countdown));
        let enforced: Vec<Block> = std::iter::from_fn(|| reports.try_recv().ok())
            .filter_map(|report| match report {
                worker::Report::Enforced(b) => Some(b),
                _ => None,
            })
            .flatten()
            .collect();
        let mut rows = r.worker.ledger().blocks(t0.wall).unwrap();
        rows.sort_by_key(|b| b.addr);
        assert_eq!(rows.len(), 2);
        let mut enforced = enforced;
        enforced.sort_by_key(|b| b.addr);
        assert_eq!(enforced, rows, "the rows the ledger holds, as committed");
        assert!(enforced.iter().all(|b| b.decision_id == "a1"));
    }

    use ipnet::IpNet;

    mod expiry;
    mod names;
    mod origin;
    mod safe;
}
