//! The dead man's switch. An alert with a remote address to act on opens a pending decision
//! (committed to the ledger before anything is sent or enforced) with a deadline; it ends
//! exactly once: `safe` (a human said so), `blocked` (a human confirmed) or `auto-blocked`
//! (nobody answered in time). Silence is consent to defend. Pending deadlines and blocks
//! survive restarts: they are resumed and re-asserted from the ledger at start.

pub mod decision;
pub mod ledger;

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::{
    enforce::Enforcer,
    enrich::trust::{TrustSet, Untrusted},
    event::AlertBody,
    switch::decision::{AnswerError, Decision, Notice, State, Verdict},
    switch::ledger::{Block, Ledger, LedgerError, Open},
};

/// The switch's timings (`[switch]`, `enforce.block_ttl`).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub countdown: Duration,
    pub safe_ttl: Duration,
    pub block_ttl: Duration,
}

/// A decision changed: the alert's new state (to store) and the decision (to emit).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub alert: AlertBody,
    pub alert_at: SystemTime,
    pub decision: Decision,
}

pub struct Switch {
    ledger: Ledger,
    enforcer: Enforcer,
    timings: Timings,
    host: String,
    pending: HashMap<String, Open>,
    safe: HashMap<IpAddr, SystemTime>,
    notices: Option<UnboundedSender<Notice>>,
}

impl Switch {
    pub fn new(ledger: Ledger, enforcer: Enforcer, timings: Timings, host: String) -> Self {
        Self {
            ledger,
            enforcer,
            timings,
            host,
            pending: HashMap::new(),
            safe: HashMap::new(),
            notices: None,
        }
    }

    /// Where opened and ended decisions are announced (the chat channels).
    pub fn set_notices(&mut self, notices: UnboundedSender<Notice>) {
        self.notices = Some(notices);
    }

    fn announce(&self, notice: Notice) {
        if let Some(tx) = &self.notices {
            let _ = tx.send(notice);
        }
    }

    /// At start: prepare the table, re-assert every unexpired block with its remaining time,
    /// and resume pending decisions with their original deadlines (one that passed while the
    /// agent was down is enforced at the next tick), announcing them again.
    pub fn resume(&mut self, trust: &TrustSet, now: SystemTime) -> Result<(), LedgerError> {
        if let Err(e) = self.enforcer.prepare() {
            error!("preparing the enforcement table failed: {e}");
        }
        for block in self.ledger.blocks(now)? {
            let left = block.expires.duration_since(now).unwrap_or_default();
            match self.enforcer.admit(trust, block.addr) {
                Ok(target) => match self.enforcer.apply(target, left) {
                    Ok(()) => {
                        info!(addr = %block.addr, left = %humantime::format_duration(round(left)), "block re-asserted")
                    }
                    Err(e) => error!(addr = %block.addr, "re-asserting a block failed: {e}"),
                },
                Err(why) => {
                    warn!(addr = %block.addr, "dropping a recorded block: {why}");
                    self.enforcer.remove(block.addr).ok();
                    self.ledger.remove_block(block.addr)?;
                }
            }
        }
        self.safe = self.ledger.safe_targets(now)?.into_iter().collect();
        for open in self.ledger.pending()? {
            info!(id = %open.decision.id, "resuming a pending decision");
            // Announced again: the chat message from before the restart may never have left.
            self.announce(Notice::Opened(open.decision.clone()));
            self.pending.insert(open.decision.id.clone(), open);
        }
        Ok(())
    }

    /// Whether `ip` was marked safe and is still within `switch.safe_ttl`.
    pub fn is_safe(&self, ip: IpAddr, now: SystemTime) -> bool {
        self.safe.get(&ip).is_some_and(|until| *until > now)
    }

    pub fn pending(&self) -> impl Iterator<Item = &Decision> {
        self.pending.values().map(|o| &o.decision)
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Open a pending decision for `alert` against `target`. None when this alert already
    /// has a decision (one per alert, pending or ended), or the target was marked safe.
    pub fn open(
        &mut self,
        alert: &AlertBody,
        alert_at: SystemTime,
        ancestors: Vec<String>,
        target: Untrusted,
        now: SystemTime,
    ) -> Result<Option<Change>, LedgerError> {
        if self.pending.contains_key(&alert.id)
            || self.is_safe(target.ip(), now)
            || self.ledger.get(&alert.id)?.is_some()
        {
            return Ok(None);
        }
        let deadline = now + self.timings.countdown;
        let decision = Decision {
            id: alert.id.clone(),
            anomaly: alert.anomaly.clone(),
            severity: alert.severity.clone(),
            risk: alert.risk,
            mitre: alert.mitre.clone(),
            host: self.host.clone(),
            pid: alert.pid,
            comm: alert.comm.clone(),
            exe: alert.exe.clone(),
            ancestors,
            target_ip: Some(target.ip()),
            country: alert.country.clone(),
            detail: alert.detail.clone(),
            created: now,
            deadline,
            state: State::Pending,
            decided_by: None,
            reason: None,
        };
        let mut alert = alert.clone();
        alert.state = State::Pending.as_str().into();
        alert.target_ip = Some(target.ip());
        alert.deadline = Some(humantime::format_rfc3339_millis(deadline).to_string());
        let open = Open {
            decision: decision.clone(),
            alert: alert.clone(),
            alert_at,
        };
        // Committed before anything is sent or enforced.
        self.ledger.insert(&open)?;
        self.pending.insert(decision.id.clone(), open);
        info!(id = %decision.id, target = %target, deadline = %humantime::format_rfc3339_seconds(deadline), "pending decision opened");
        self.announce(Notice::Opened(decision.clone()));
        Ok(Some(Change {
            alert,
            alert_at,
            decision,
        }))
    }

    /// A human's answer.
    pub fn answer(
        &mut self,
        trust: &TrustSet,
        id: &str,
        verdict: Verdict,
        via: &str,
        now: SystemTime,
    ) -> Result<Change, AnswerError> {
        if !self.pending.contains_key(id) {
            return Err(match self.ledger.get(id) {
                Ok(Some(d)) => AnswerError::Ended {
                    id: id.into(),
                    state: d.state,
                },
                _ => AnswerError::Unknown(id.into()),
            });
        }
        let state = match verdict {
            Verdict::Safe => State::Safe,
            Verdict::Block => State::Blocked,
        };
        self.finish(trust, id, state, via, now)
            .ok_or_else(|| AnswerError::Unknown(id.into()))
    }

    /// Enforce every decision whose deadline has passed.
    pub fn tick(&mut self, trust: &TrustSet, now: SystemTime) -> Vec<Change> {
        let due: Vec<String> = self
            .pending
            .values()
            .filter(|o| o.decision.deadline <= now)
            .map(|o| o.decision.id.clone())
            .collect();
        due.iter()
            .filter_map(|id| self.finish(trust, id, State::AutoBlocked, "timer", now))
            .collect()
    }

    /// End decision `id` in `state`. None if it was not pending (here or in the ledger).
    fn finish(
        &mut self,
        trust: &TrustSet,
        id: &str,
        state: State,
        via: &str,
        now: SystemTime,
    ) -> Option<Change> {
        let open = self.pending.get(id)?.clone();
        let mut decision = open.decision.clone();
        decision.state = state;
        decision.decided_by = Some(via.to_string());
        let target = decision.target_ip?;
        let mut block = None;
        let mut admitted = None;
        match state {
            State::Safe => {
                let until = now + self.timings.safe_ttl;
                if let Err(e) = self.ledger.add_safe(target, until, id) {
                    error!("recording {target} as safe failed: {e}");
                }
                self.safe.insert(target, until);
            }
            State::Blocked | State::AutoBlocked => match self.enforcer.admit(trust, target) {
                Ok(t) if self.enforcer.is_dry_run() => {
                    decision.reason =
                        Some("dry-run: decided and recorded, nothing enforced".into());
                    admitted = Some(t);
                }
                Ok(t) => {
                    admitted = Some(t);
                    block = Some(Block {
                        addr: target,
                        expires: now + self.timings.block_ttl,
                        decision_id: id.into(),
                    });
                }
                Err(why) => {
                    warn!(id, %target, "block refused: {why}");
                    decision.reason = Some(format!("block refused: {why}"));
                }
            },
            State::Pending => return None,
        }
        // The outcome is committed first; a crash after this re-asserts the block at start.
        match self.ledger.end(&decision, block.as_ref()) {
            Ok(true) => {}
            Ok(false) => {
                self.pending.remove(id);
                return None;
            }
            Err(e) => {
                error!(
                    id,
                    "recording the outcome failed, decision stays pending: {e}"
                );
                return None;
            }
        }
        self.pending.remove(id);
        if let Some(t) = admitted {
            if let Err(e) = self.enforcer.apply(t, self.timings.block_ttl) {
                error!(id, %target, "enforcing the block failed (it is recorded and re-asserted at restart): {e}");
            } else if !self.enforcer.is_dry_run() {
                info!(id, %target, ttl = %humantime::format_duration(self.timings.block_ttl), "blocked");
            }
        }
        info!(id, state = %state, by = via, "decision ended");
        self.announce(Notice::Ended(decision.clone()));
        let mut alert = open.alert;
        alert.state = state.as_str().into();
        Some(Change {
            alert,
            alert_at: open.alert_at,
            decision,
        })
    }

    /// Block `ip` because a human confirmed it as hostile on another host of the fleet: through
    /// this host's own guard, recorded under `tag` like any block. Ok(None) when it is
    /// already blocked here (or in dry-run), Err(why) when the guard refuses it.
    pub fn block_shared(
        &mut self,
        trust: &TrustSet,
        ip: IpAddr,
        tag: &str,
        now: SystemTime,
    ) -> Result<Option<Block>, String> {
        let admitted = self
            .enforcer
            .admit(trust, ip)
            .map_err(|why| why.to_string())?;
        let held = self.ledger.blocks(now).map_err(|e| e.to_string())?;
        if self.enforcer.is_dry_run() || held.iter().any(|b| b.addr == ip) {
            return Ok(None);
        }
        let block = Block {
            addr: ip,
            expires: now + self.timings.block_ttl,
            decision_id: tag.into(),
        };
        self.ledger.add_block(&block).map_err(|e| e.to_string())?;
        self.enforcer
            .apply(admitted, self.timings.block_ttl)
            .map_err(|e| e.to_string())?;
        Ok(Some(block))
    }

    /// Lift the block on `ip`; true if one was recorded.
    pub fn unblock(&mut self, ip: IpAddr) -> Result<bool, String> {
        self.enforcer.remove(ip).map_err(|e| e.to_string())?;
        self.ledger.remove_block(ip).map_err(|e| e.to_string())
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.pending.values().map(|o| o.decision.deadline).min()
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{enforce::Backend, event::sample_alert as alert};

    const T: Timings = Timings {
        countdown: Duration::from_secs(300),
        safe_ttl: Duration::from_secs(3600),
        block_ttl: Duration::from_secs(86400),
    };

    fn switch(dir: &std::path::Path) -> Switch {
        let ledger = Ledger::open(&dir.join("s.db")).unwrap();
        Switch::new(
            ledger,
            Enforcer::new(Backend::Recording(Vec::new())),
            T,
            "h".into(),
        )
    }

    fn open(sw: &mut Switch, id: &str, target: &str, now: SystemTime) -> Option<Change> {
        let trust = TrustSet::default();
        let t = trust.check(target.parse().unwrap()).unwrap();
        sw.open(&alert(id, target), now, vec![], t, now).unwrap()
    }

    #[test]
    fn silence_blocks_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut sw = switch(dir.path());
        let t0 = SystemTime::now();
        let c = open(&mut sw, "a1", "198.51.100.9", t0).unwrap();
        assert_eq!(c.alert.state, "pending");
        assert!(c.alert.deadline.is_some());
        let trust = TrustSet::default();
        assert!(sw.tick(&trust, t0 + Duration::from_secs(299)).is_empty());
        let ended = sw.tick(&trust, t0 + Duration::from_secs(300));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].decision.state, State::AutoBlocked);
        assert_eq!(ended[0].alert.state, "auto-blocked");
        assert_eq!(
            sw.enforcer.recorded(),
            ["198.51.100.9".parse::<IpAddr>().unwrap()]
        );
        let blocks = sw.ledger.blocks(t0).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].decision_id, "a1");
        // Exactly once: answering now says it ended, and changes nothing.
        let err = sw
            .answer(&trust, "a1", Verdict::Safe, "cli", t0)
            .unwrap_err();
        assert_eq!(
            err,
            AnswerError::Ended {
                id: "a1".into(),
                state: State::AutoBlocked
            }
        );
        assert_eq!(sw.enforcer.recorded().len(), 1);
    }

    #[test]
    fn safe_means_no_block_and_no_new_decision() {
        let dir = tempfile::tempdir().unwrap();
        let mut sw = switch(dir.path());
        let t0 = SystemTime::now();
        let trust = TrustSet::default();
        open(&mut sw, "a1", "198.51.100.9", t0).unwrap();
        let c = sw
            .answer(&trust, "a1", Verdict::Safe, "slack:U1", t0)
            .unwrap();
        assert_eq!(c.decision.state, State::Safe);
        assert_eq!(c.decision.decided_by.as_deref(), Some("slack:U1"));
        assert!(sw.tick(&trust, t0 + Duration::from_secs(1000)).is_empty());
        assert!(sw.enforcer.recorded().is_empty());
        assert!(open(&mut sw, "a2", "198.51.100.9", t0 + Duration::from_secs(10)).is_none());
        // Once safe_ttl is over, the target can be decided on again.
        assert!(
            open(
                &mut sw,
                "a3",
                "198.51.100.9",
                t0 + Duration::from_secs(3601)
            )
            .is_some()
        );
        assert_eq!(
            sw.answer(&trust, "nope", Verdict::Block, "cli", t0)
                .unwrap_err(),
            AnswerError::Unknown("nope".into())
        );
    }

    #[test]
    fn pending_decisions_and_blocks_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now();
        let trust = TrustSet::default();
        {
            let mut sw = switch(dir.path());
            open(&mut sw, "a1", "198.51.100.9", t0).unwrap();
            open(&mut sw, "a2", "2001:db8::9", t0).unwrap();
            sw.answer(&trust, "a2", Verdict::Block, "cli", t0).unwrap();
        } // "killed"
        let mut sw = switch(dir.path());
        sw.resume(&trust, t0 + Duration::from_secs(10)).unwrap();
        // The block is re-asserted; the pending one keeps its original deadline.
        assert_eq!(
            sw.enforcer.recorded(),
            ["2001:db8::9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(sw.next_deadline(), Some(t0 + Duration::from_secs(300)));
        assert!(sw.tick(&trust, t0 + Duration::from_secs(299)).is_empty());
        assert_eq!(sw.tick(&trust, t0 + Duration::from_secs(301)).len(), 1);
    }

    #[test]
    fn a_trusted_target_is_refused_and_the_decision_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut sw = switch(dir.path());
        let t0 = SystemTime::now();
        open(&mut sw, "a1", "198.51.100.9", t0).unwrap();
        // The operator trusts the address while the decision is pending.
        let trust = TrustSet::new(&["198.51.100.0/24".parse().unwrap()], &[]);
        let c = sw.answer(&trust, "a1", Verdict::Block, "cli", t0).unwrap();
        assert_eq!(c.decision.state, State::Blocked);
        assert!(c.decision.reason.unwrap().contains("trusted"));
        assert!(sw.enforcer.recorded().is_empty());
        assert!(sw.ledger.blocks(t0).unwrap().is_empty());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Open(u8, u32),
        Answer(u8, bool),
        Tick(u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(i, a)| Step::Open(i, a)),
            (any::<u8>(), any::<bool>()).prop_map(|(i, b)| Step::Answer(i, b)),
            any::<u16>().prop_map(Step::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever happens — decisions opened on any address (trust changing under them),
        /// answers, timers, restarts — no trusted address is ever put in a set.
        #[test]
        fn no_sequence_blocks_a_trusted_address(steps in prop::collection::vec(step(), 1..40),
                                                trusted in prop::collection::vec(any::<u32>(), 1..4)) {
            let dir = tempfile::tempdir().unwrap();
            let mut sw = switch(dir.path());
            let nets: Vec<ipnet::IpNet> = trusted
                .iter()
                .map(|a| ipnet::IpNet::new(IpAddr::V4((*a).into()), 24).unwrap().trunc())
                .collect();
            let open_trust = TrustSet::default();
            let trust = TrustSet::new(&nets, &[]);
            let mut now = SystemTime::now();
            for s in steps {
                match s {
                    Step::Open(i, a) => {
                        // Half the time, pick an address inside a trusted network.
                        let addr = if a % 2 == 0 {
                            let n = nets[i as usize % nets.len()];
                            let IpNet::V4(n) = n else { unreachable!() };
                            IpAddr::V4((u32::from(n.network()) | (a & 0xff)).into())
                        } else {
                            IpAddr::V4(a.into())
                        };
                        // Decisions open while the address was not (yet) trusted.
                        if let Ok(t) = open_trust.check(addr) {
                            sw.open(&alert(&format!("d{i}"), &addr.to_string()), now, vec![], t, now).unwrap();
                        }
                    }
                    Step::Answer(i, block) => {
                        let v = if block { Verdict::Block } else { Verdict::Safe };
                        let _ = sw.answer(&trust, &format!("d{i}"), v, "cli", now);
                    }
                    Step::Tick(secs) => {
                        now += Duration::from_secs(secs as u64);
                        sw.tick(&trust, now);
                    }
                }
            }
            // And a restart re-asserts nothing trusted either.
            let recorded = sw.enforcer.recorded().to_vec();
            drop(sw);
            let mut again = switch(dir.path());
            again.resume(&trust, now).unwrap();
            for ip in recorded.iter().chain(again.enforcer.recorded()) {
                prop_assert!(trust.check(*ip).is_ok(), "{ip} was blocked");
            }
        }
    }

    use ipnet::IpNet;
}
