//! The timer's side of [`origin`](super::origin): when a decision comes due, its origin's
//! budget (`switch.max_auto_blocks` addresses per hour) decides how many of its targets the
//! timer blocks. Within budget it ends `auto-blocked` as always; past it, the first targets
//! (the alerted one first) are blocked as far as the budget goes and the rest move to a
//! follow-up decision that waits for a human, announced with the reason. A human's CONFIRM
//! BLOCK is never charged.

use tracing::warn;

use super::{NEVER, Switch, worker::Ending};
use crate::{
    enrich::trust::TrustSet,
    switch::{clock::Now, decision::State, worker::Job},
};

impl Switch {
    /// Decision `id` came due: end it within its origin's budget. None when nothing ends now
    /// (it waits for a human).
    pub(super) fn charge_timer(&mut self, trust: &TrustSet, id: &str, now: Now) -> Option<Ending> {
        let p = self.pending.get(id)?;
        let origin = p.origin.clone();
        let wanted = p.open.decision.targets.len().max(1);
        let max = self.limits.max_auto_blocks;
        let left = self.budget.left(&origin, max, now.boot);
        if left < wanted {
            let why = format!(
                "switch.max_auto_blocks ({max}) reached for {origin} in the last hour: \
                 it waits for a human, no automatic block"
            );
            warn!(id, %origin, left, wanted, "{why}");
            if left == 0 {
                self.wait_for_human(id, why, now);
                return None;
            }
            self.split_off(id, left, Some(why), now);
        }
        let ending = self.finish(trust, id, State::AutoBlocked, "timer", now)?;
        self.budget.spend(&origin, ending.blocks.len(), now.boot);
        Some(ending)
    }

    /// Decision `id` stops counting down: it waits for a human, and says why in chat.
    fn wait_for_human(&mut self, id: &str, why: String, now: Now) {
        let Some(p) = self.pending.get_mut(id) else {
            return;
        };
        p.due = now.boot + NEVER;
        let d = &mut p.open.decision;
        d.deadline = now.wall + NEVER;
        d.waiting = Some(why);
        let decision = d.clone();
        self.send(Job::Grow {
            decision: Box::new(decision.clone()),
            announce: false,
        });
        self.send(Job::Announce(Box::new(super::decision::Notice::Opened(
            decision,
        ))));
    }
}
