//! From decisions to outcomes: what comes back to the loop about the dead man's switch. Human
//! answers (CLI, chat, signed links), passed deadlines, the worker's reports of what it
//! committed and enforced, unblock requests and the fleet's shared blocks; each decision's
//! transition is stored, streamed and shipped here. Part of the [`Pipeline`] (same loop, same
//! state), the counterpart of `decisions.rs`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::SystemTime,
};

use tracing::{debug, info, warn};

use super::{control::Unblock, pipeline::Pipeline};
use crate::{
    event::{Body, DecisionBody, Record},
    store::Write,
    switch::{Change, clock::Now, decision::Answer, worker::Report},
};

impl Pipeline {
    /// Store and announce a decision's transition.
    pub(super) fn apply(&mut self, change: Change) {
        let d = &change.decision;
        if let Some(fleet) = &self.fleet {
            fleet.decision(d);
        }
        self.follow_names_of(d);
        let body = DecisionBody {
            id: d.id.clone(),
            anomaly: d.anomaly.clone(),
            state: d.state.as_str().into(),
            pid: d.pid,
            comm: d.comm.clone(),
            target_ip: d.target_ip,
            targets: d.targets.clone(),
            refused: d.refused.iter().map(|r| r.ip).collect(),
            country: d.country.clone(),
            domain: d.domain.clone(),
            deadline: humantime::format_rfc3339_millis(d.deadline).to_string(),
            decided_by: d.decided_by.clone(),
            reason: d.reason.clone(),
            origin: d.origin.clone(),
            waiting: d.waiting.clone(),
            container: d.container.clone(),
        };
        let mut alert = change.alert;
        if let Some(g) = self.groups.get_mut(&alert.id) {
            alert.gather_from(&g.alert);
            g.alert.state.clone_from(&alert.state);
            g.alert.deadline.clone_from(&alert.deadline);
        }
        let alert = self.detect.alerts.sync_state(alert);
        let alert = Record::new(
            change.alert_at,
            self.shared.host.clone(),
            Body::Alert(Box::new(alert)),
        );
        self.store(Write::Update(Arc::new(alert)));
        self.emit(SystemTime::now(), Body::Decision(Box::new(body)));
        self.refresh_counts();
    }

    /// Keep the status counter of pending decisions current.
    pub fn refresh_counts(&self) {
        self.shared
            .pending
            .store(self.switch.pending_count() as u64, Ordering::Relaxed);
    }

    /// A human answered (CLI, chat, signed link). The reply leaves once the outcome is
    /// committed and enforced.
    pub fn answer(&mut self, answer: Answer) {
        let outcome = self.switch.answer(
            &self.detect.trust,
            &answer.id,
            answer.verdict,
            &answer.via,
            Now::read(),
            Some(answer.reply),
        );
        // The outcome is stored and streamed when the worker reports it committed/enforced.
        if let Err(e) = outcome {
            warn!(id = %answer.id, via = %answer.via, "answer not applied: {e}");
        }
        self.refresh_counts();
    }

    /// End the decisions whose deadline passed (their outcome comes back as a report).
    pub fn tick(&mut self) {
        self.switch.tick(&self.detect.trust, Now::read());
        self.refresh_counts();
    }

    /// The end of a loop round: decisions whose target set grew go to the worker once.
    pub fn flush(&mut self) {
        self.switch.flush(Now::read());
    }

    /// What the switch's worker learnt while enforcing.
    pub fn report(&mut self, report: Report) {
        match report {
            Report::Changed(changes) => {
                for change in changes {
                    self.switch.note_changed(&change);
                    self.apply(change);
                }
            }
            Report::Blocks(n) => self.shared.blocks.store(n, Ordering::Relaxed),
            Report::Enforced(blocks) => {
                if let Some(fleet) = &self.fleet {
                    for b in &blocks {
                        fleet.block(b, false);
                    }
                }
            }
            Report::Lifted(block) => {
                info!(addr = %block.addr, "unblocked");
                if let Some(fleet) = &self.fleet {
                    fleet.block(&block, true);
                }
            }
        }
    }

    pub fn unblock(&mut self, request: Unblock) {
        info!(addr = %request.addr, "unblock requested");
        self.switch.unblock(request.addr, Some(request.reply));
    }

    /// A shared block or a lift from the fleet (`fleet.share_blocks`). The worker records and
    /// enforces it; the fleet hears of it when it reports the block in force (or lifted).
    pub fn fleet_command(&mut self, command: crate::fleet::Command) {
        match command {
            crate::fleet::Command::Block { addr, tag, domain } => {
                // Recorded under the name this host last resolved the address from, else the
                // one the sharing host did.
                let domain = self
                    .names
                    .name_for(0, addr, crate::sensors::boot_ns())
                    .map(|r| r.name.to_string())
                    .or(domain);
                match self.switch.block_shared(
                    &self.detect.trust,
                    addr,
                    &tag,
                    domain.as_deref(),
                    Now::read(),
                ) {
                    Ok(true) => debug!(%addr, by = %tag, "shared block: queued"),
                    Ok(false) => {
                        debug!(%addr, by = %tag, "shared block: already held here (or dry-run)")
                    }
                    Err(why) => warn!(%addr, by = %tag, "shared block refused: {why}"),
                }
            }
            crate::fleet::Command::Lift { addr, only_shared } => {
                let held = self.switch.reader().blocks(SystemTime::now());
                let held = held.unwrap_or_default();
                let Some(b) = held.iter().find(|b| b.addr == addr) else {
                    return;
                };
                if only_shared && !b.decision_id.starts_with("fleet:") {
                    return;
                }
                info!(%addr, "unblock requested by the fleet");
                self.switch.unblock(addr, None);
            }
        }
    }
}
