//! The switch's hands: a thread of its own that commits what the switch decided to the ledger
//! and enforces it, so the event loop never waits on an fsync or on `nft`. It takes every job
//! queued since its last round at once: one SQLite transaction (one fsync) and one nftables
//! transaction for all of them, so thousands of decisions coming due together cost one of
//! each. Order holds: a decision is committed before it is announced or enforced, and a block
//! is committed before `nft` runs (a crash in between re-asserts it at start).
//!
//! A block that `nft` refuses is not reported as a block: the decision becomes `block-failed`
//! (the connect guard already holds the address), enforcement health turns unhealthy, and the
//! worker retries with backoff until it lands, then restores `blocked` / `auto-blocked`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc::UnboundedSender, oneshot};
use tracing::{error, info, warn};

use super::{
    Change,
    decision::{AnswerError, Decision, Notice, State},
    ledger::{self, Block, Kill, Ledger},
};
use crate::enforce::{Admitted, Enforcer};

/// Longest wait between two retries of a failed block.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A decision that ended, with what it brings.
#[derive(Debug)]
pub struct Ending {
    pub change: Change,
    /// Admitted targets to block and for how long (empty: safe, dry-run or all refused).
    pub blocks: Vec<(Admitted, Duration)>,
    /// `safe`: its targets are not alerted on again until then.
    pub safe_until: Option<SystemTime>,
    /// Who waits for the outcome (a human's answer).
    pub reply: Option<oneshot::Sender<Result<Decision, AnswerError>>>,
}

/// What the switch asks of its worker.
#[derive(Debug)]
pub enum Job {
    /// Record a new pending decision, then announce it.
    Open(Box<super::ledger::Open>),
    /// A pending decision's target set changed; `announce`: a follow-up message.
    Grow {
        decision: Box<Decision>,
        announce: bool,
    },
    /// Decisions that ended: record them with their blocks, enforce, announce, reply.
    End(Vec<Ending>),
    /// Lift the block on an address.
    Unblock {
        ip: IpAddr,
        reply: Option<oneshot::Sender<Result<bool, String>>>,
    },
    Kill(Box<Kill>),
    /// A block no local decision brought (a fleet-shared block), admitted by the gate:
    /// record it, then enforce it with the batch.
    SharedBlock {
        block: Block,
        target: Admitted,
        ttl: Duration,
    },
    /// At start: blocks recorded before, put back with their remaining time.
    Reassert(Vec<(Admitted, Duration)>),
    /// At start: decisions left `block-failed`, with their targets, to retry.
    Retry(Vec<(super::ledger::Open, Vec<(Admitted, Duration)>)>),
    /// Say something in chat in order with the rest (e.g. resumed decisions).
    Announce(Box<Notice>),
}

/// What the worker tells the event loop.
#[derive(Debug)]
pub enum Report {
    /// Decisions that ended, in their state after enforcement (`block-failed` when nft
    /// refused; later `blocked` / `auto-blocked` when a retry lands).
    Changed(Vec<Change>),
    /// Blocks in force now.
    Blocks(u64),
    /// Block rows that went into force (a decision's, after enforcement; a shared one).
    Enforced(Vec<Block>),
    /// A block row lifted (`unblock`).
    Lifted(Block),
}

/// Enforcement health, for `status` and Prometheus.
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("health lock").clone()
    }

    fn set(&self, result: Result<(), String>) {
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        if let Err(e) = result {
            *self.last_error.lock().expect("health lock") = Some(e);
        }
    }
}

/// Blocks that have not landed yet: a decision's (`change`), or a shared block's (none).
struct Failed {
    change: Option<Change>,
    targets: Vec<(Admitted, Duration)>,
    /// The rows recorded for them, reported once they land.
    rows: Vec<Block>,
}

pub struct Worker {
    ledger: Ledger,
    enforcer: Enforcer,
    notices: Option<UnboundedSender<Notice>>,
    reports: Option<UnboundedSender<Report>>,
    health: Arc<Health>,
    failed: Vec<Failed>,
    backoff: Duration,
    next_retry: Option<Instant>,
    /// The nftables table exists (made at start, or at the first block that follows).
    prepared: bool,
}

impl Worker {
    pub fn new(ledger: Ledger, enforcer: Enforcer, health: Arc<Health>) -> Self {
        Self {
            ledger,
            enforcer,
            notices: None,
            reports: None,
            health,
            failed: Vec::new(),
            backoff: Duration::from_secs(1),
            next_retry: None,
            prepared: false,
        }
    }

    /// Where decisions are announced (the chat channels).
    pub fn set_notices(&mut self, notices: UnboundedSender<Notice>) {
        self.notices = Some(notices);
    }

    /// Where outcomes known only after enforcement go (the event loop).
    pub fn set_reports(&mut self, reports: UnboundedSender<Report>) {
        self.reports = Some(reports);
    }

    /// Prepare the nftables table (at start).
    pub fn prepare(&mut self) {
        match self.enforcer.prepare() {
            Ok(()) => self.prepared = true,
            Err(e) => {
                error!("preparing the enforcement table failed (retried with the next block): {e}");
                self.health.set(Err(e.to_string()));
            }
        }
    }

    fn announce(&self, notice: Notice) {
        if let Some(tx) = &self.notices {
            let _ = tx.send(notice);
        }
    }

    fn report(&self, report: Report) {
        if let Some(tx) = &self.reports {
            let _ = tx.send(report);
        }
    }

    /// Run on a thread of its own until the switch is dropped.
    pub fn spawn(mut self, jobs: Receiver<Job>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("switch".into())
            .spawn(move || {
                loop {
                    let wait = self.next_retry.map_or(Duration::from_secs(3600), |t| {
                        t.saturating_duration_since(Instant::now())
                    });
                    match jobs.recv_timeout(wait) {
                        Ok(job) => {
                            let mut batch = vec![job];
                            batch.extend(jobs.try_iter());
                            self.run(batch);
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    self.retry_due();
                }
            })
            .expect("spawn the switch worker")
    }

    /// Carry out a batch of jobs, in order, with one commit and one nftables transaction.
    pub fn run(&mut self, jobs: Vec<Job>) {
        // Only the last target set of a decision needs writing.
        let mut last_grow: HashMap<String, usize> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            if let Job::Grow { decision, .. } = job {
                last_grow.insert(decision.id.clone(), i);
            }
        }
        let at = SystemTime::now();
        let committed = self.ledger.batch(|tx| {
            let mut ended = Vec::new();
            for (i, job) in jobs.iter().enumerate() {
                match job {
                    Job::Open(open) => {
                        ledger::insert_in(tx, open)?;
                    }
                    Job::Grow { decision, .. } if last_grow.get(&decision.id) == Some(&i) => {
                        ledger::update_pending_in(tx, decision)?;
                    }
                    Job::End(endings) => {
                        for e in endings {
                            ended.push(commit_ending(tx, e, at)?);
                        }
                    }
                    Job::Kill(kill) => {
                        ledger::add_kill_in(tx, kill)?;
                    }
                    Job::SharedBlock { block, .. } => {
                        ledger::add_block_in(tx, block)?;
                    }
                    _ => {}
                }
            }
            Ok(ended)
        });
        let ended = match committed {
            Ok(ended) => ended,
            Err(e) => {
                // Defend anyway: the blocks still go in; a restart may not know about them.
                error!("recording the switch's work failed (enforcing it anyway): {e}");
                Vec::new()
            }
        };
        let mut blocks_changed = false;
        let mut to_block: Vec<(Admitted, Duration)> = Vec::new();
        let mut shared: Vec<(Admitted, Duration, Block)> = Vec::new();
        let mut endings = Vec::new();
        let mut i_end = 0;
        for job in jobs {
            match job {
                Job::Open(open) => self.announce(Notice::Opened(open.decision)),
                Job::Grow {
                    decision,
                    announce: true,
                } => self.announce(Notice::Grew(*decision)),
                Job::Grow { .. } | Job::Kill(_) => {}
                Job::End(list) => {
                    for e in list {
                        // Skipped by the ledger: already ended elsewhere (never enforced twice).
                        let fresh = ended.get(i_end).copied().unwrap_or(true);
                        i_end += 1;
                        if fresh {
                            to_block.extend(e.blocks.iter().copied());
                            endings.push(e);
                        } else if let Some(reply) = e.reply {
                            let _ = reply.send(Err(AnswerError::Ended {
                                id: e.change.decision.id.clone(),
                                state: e.change.decision.state,
                            }));
                        }
                    }
                }
                Job::SharedBlock { block, target, ttl } => {
                    to_block.push((target, ttl));
                    shared.push((target, ttl, block));
                }
                Job::Reassert(list) => {
                    blocks_changed = true;
                    to_block.extend(list);
                }
                Job::Retry(list) => {
                    for (open, targets) in list {
                        let rows = rows_of(&open.decision, &targets, SystemTime::now());
                        self.failed.push(Failed {
                            change: Some(Change {
                                alert: open.alert,
                                alert_at: open.alert_at,
                                decision: open.decision,
                            }),
                            targets,
                            rows,
                        });
                    }
                    self.next_retry = Some(Instant::now());
                }
                Job::Unblock { ip, reply } => {
                    blocks_changed = true;
                    let outcome = self.unblock(ip);
                    if let Ok(Some(block)) = &outcome {
                        self.report(Report::Lifted(block.clone()));
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome.map(|b| b.is_some()));
                    }
                }
                Job::Announce(notice) => self.announce(*notice),
            }
        }
        let enforced = self.enforce(&to_block);
        blocks_changed |= !to_block.is_empty();
        let mut in_force = Vec::new();
        for (target, ttl, block) in shared {
            if enforced.is_ok() {
                info!(addr = %block.addr, by = %block.decision_id, "blocked: shared by the fleet");
                in_force.push(block);
            } else {
                self.failed.push(Failed {
                    change: None,
                    targets: vec![(target, ttl)],
                    rows: vec![block],
                });
                self.next_retry.get_or_insert(Instant::now() + self.backoff);
            }
        }
        let mut changed = Vec::new();
        for mut e in endings {
            let blocking = !e.blocks.is_empty();
            let rows = rows_of(&e.change.decision, &e.blocks, at);
            if blocking && let Err(err) = &enforced {
                e.change.decision.state = State::BlockFailed;
                e.change.decision.reason = Some(format!("nftables refused the block: {err}"));
                e.change.alert.state = State::BlockFailed.as_str().into();
                let from = intended(&e.change.decision).as_str();
                if let Err(x) = self
                    .ledger
                    .batch(|tx| ledger::transition_in(tx, &e.change.decision, from))
                {
                    error!("recording block-failed failed: {x}");
                }
                self.failed.push(Failed {
                    change: Some(e.change.clone()),
                    targets: e.blocks.clone(),
                    rows,
                });
                self.next_retry.get_or_insert(Instant::now() + self.backoff);
                changed.push(e.change.clone());
            } else {
                if blocking {
                    info!(id = %e.change.decision.id, targets = e.blocks.len(), "blocked");
                }
                in_force.extend(rows);
                changed.push(e.change.clone());
            }
            info!(id = %e.change.decision.id, state = %e.change.decision.state, "decision ended");
            self.announce(Notice::Ended(e.change.decision.clone()));
            if let Some(reply) = e.reply {
                let _ = reply.send(Ok(e.change.decision));
            }
        }
        if !changed.is_empty() {
            self.report(Report::Changed(changed));
        }
        if !in_force.is_empty() {
            self.report(Report::Enforced(in_force));
        }
        if blocks_changed {
            self.report_blocks();
        }
    }

    fn report_blocks(&self) {
        match self.ledger.block_count(SystemTime::now()) {
            Ok(n) => self.report(Report::Blocks(n)),
            Err(e) => warn!("counting blocks: {e}"),
        }
    }

    /// Apply blocks, recording the outcome in the health.
    fn enforce(&mut self, targets: &[(Admitted, Duration)]) -> Result<(), String> {
        if targets.is_empty() {
            return Ok(());
        }
        if !self.prepared {
            self.prepare();
        }
        let outcome = self.enforcer.apply(targets).map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            error!(
                targets = targets.len(),
                "enforcing blocks failed (the connect guard holds them; retrying): {e}"
            );
        }
        self.health.set(outcome.clone());
        outcome
    }

    /// Lift the block on `ip`: the row it had, if one was recorded.
    fn unblock(&mut self, ip: IpAddr) -> Result<Option<Block>, String> {
        self.enforcer.remove(ip).map_err(|e| e.to_string())?;
        // A decision still retrying this address stops trying.
        for f in &mut self.failed {
            f.targets.retain(|(a, _)| a.ip() != ip);
            f.rows.retain(|b| b.addr != ip);
        }
        self.failed
            .retain(|f| f.change.is_some() || !f.targets.is_empty());
        self.ledger.take_block(ip).map_err(|e| e.to_string())
    }

    /// Retry failed blocks whose time has come.
    pub fn retry_due(&mut self) {
        let Some(at) = self.next_retry else { return };
        if Instant::now() < at || self.failed.is_empty() {
            if self.failed.is_empty() {
                self.next_retry = None;
            }
            return;
        }
        let targets: Vec<(Admitted, Duration)> = self
            .failed
            .iter()
            .flat_map(|f| f.targets.iter().copied())
            .collect();
        match self.enforce(&targets) {
            Ok(()) => {
                let mut changed = Vec::new();
                let mut in_force = Vec::new();
                for f in std::mem::take(&mut self.failed) {
                    in_force.extend(f.rows);
                    let Some(mut change) = f.change else {
                        continue;
                    };
                    let d = &mut change.decision;
                    d.state = intended(d);
                    d.reason = None;
                    change.alert.state = d.state.as_str().into();
                    if let Err(e) = self
                        .ledger
                        .batch(|tx| ledger::transition_in(tx, d, State::BlockFailed.as_str()))
                    {
                        error!("recording a landed block failed: {e}");
                    }
                    info!(id = %d.id, state = %d.state, "block landed after a retry");
                    self.announce(Notice::Ended(d.clone()));
                    changed.push(change);
                }
                if !changed.is_empty() {
                    self.report(Report::Changed(changed));
                }
                if !in_force.is_empty() {
                    self.report(Report::Enforced(in_force));
                }
                self.report_blocks();
                self.backoff = Duration::from_secs(1);
                self.next_retry = None;
            }
            Err(_) => {
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.next_retry = Some(Instant::now() + self.backoff);
            }
        }
    }

    #[cfg(test)]
    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    #[cfg(test)]
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

/// What a `block-failed` decision becomes once its block lands: a timer's decision is
/// `auto-blocked`, a human's `blocked`.
fn intended(d: &Decision) -> State {
    if d.decided_by.as_deref() == Some("timer") {
        State::AutoBlocked
    } else {
        State::Blocked
    }
}

/// The block rows of decision `d`'s admitted targets, from `at`, each under its name.
fn rows_of(d: &Decision, targets: &[(Admitted, Duration)], at: SystemTime) -> Vec<Block> {
    targets
        .iter()
        .map(|(a, ttl)| Block {
            addr: a.ip(),
            expires: at + *ttl,
            decision_id: d.id.clone(),
            domain: d.names.get(&a.ip()).cloned(),
        })
        .collect()
}

/// Record one ending in the batch's transaction (its blocks from `at`); false when it had
/// already ended.
fn commit_ending(tx: &rusqlite::Connection, e: &Ending, at: SystemTime) -> rusqlite::Result<bool> {
    let d = &e.change.decision;
    let blocks = rows_of(d, &e.blocks, at);
    let fresh = ledger::end_in(tx, d, &blocks)?;
    if fresh && let Some(until) = e.safe_until {
        for t in &d.targets {
            ledger::add_safe_in(tx, *t, until, &d.id)?;
        }
    }
    Ok(fresh)
}
