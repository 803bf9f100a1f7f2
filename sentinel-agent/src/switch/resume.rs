//! Restart safety: what the switch takes back from the ledger when the agent starts. Blocks
//! are re-asserted with the time they have left (or dropped when the gate refuses them now),
//! blocks that had failed are retried, and pending decisions resume with their original
//! deadlines and are announced again, all before the agent reports ready.

use tracing::{info, warn};

use super::{Pending, Switch, targets_of};
use crate::{
    enrich::trust::TrustSet,
    switch::{clock::Now, decision::Notice, ledger::LedgerError, worker::Job},
};

impl Switch {
    /// At start: re-assert every unexpired block with its remaining time (dropping any the
    /// gate refuses now), retry blocks that had failed, and resume pending decisions with their
    /// original deadlines (one that passed while the agent was down is enforced at the next
    /// tick), announcing them again.
    pub fn resume(&mut self, trust: &TrustSet, now: Now) -> Result<(), LedgerError> {
        let mut reassert = Vec::new();
        for block in self.reader.blocks(now.wall)? {
            let left = block.expires.duration_since(now.wall).unwrap_or_default();
            match self.gate.admit(trust, block.addr) {
                Ok(target) => {
                    self.blocked.insert(target.ip(), now.boot + left);
                    reassert.push((target, left));
                }
                Err(why) => {
                    warn!(addr = %block.addr, "dropping a recorded block: {why}");
                    self.send(Job::Unblock {
                        ip: block.addr,
                        reply: None,
                    });
                }
            }
        }
        if !reassert.is_empty() {
            info!(blocks = reassert.len(), "re-asserting recorded blocks");
            self.send(Job::Reassert(reassert));
        }
        let mut retry = Vec::new();
        for open in self.reader.block_failed()? {
            let targets = self.admitted(trust, &open.decision.targets).0;
            retry.push((open, targets));
        }
        if !retry.is_empty() {
            self.send(Job::Retry(retry));
        }
        self.safe = self.reader.safe_targets(now.wall)?.into_iter().collect();
        for open in self.reader.pending()? {
            info!(id = %open.decision.id, "resuming a pending decision");
            // Announced again: the chat message from before the restart may never have left.
            self.send(Job::Announce(Box::new(Notice::Opened(
                open.decision.clone(),
            ))));
            let due = now.boot_deadline(open.decision.deadline);
            for t in targets_of(&open.decision) {
                self.by_target.insert(t, open.decision.id.clone());
            }
            let announced = open.decision.targets.len().max(1);
            // A decision recorded before origins existed is its own origin.
            let origin = open
                .decision
                .origin
                .clone()
                .unwrap_or_else(|| format!("decision {}", open.decision.id));
            self.by_origin
                .insert(origin.clone(), open.decision.id.clone());
            self.pending.insert(
                open.decision.id.clone(),
                Pending::announced(open, due, announced, now.boot, origin),
            );
        }
        Ok(())
    }
}
