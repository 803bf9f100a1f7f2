//! A decision split in two: the first targets stay, the rest move to a follow-up decision of
//! the same alert and origin, announced. The timer's budget ([`super::charge`]) keeps what it
//! may block and leaves the rest waiting for a human; a SAFE from a chat message covers the
//! targets that message showed, and the ones that joined since keep the deadline.

use super::{NEVER, Pending, Switch, worker::Job};
use crate::switch::clock::Now;
use tracing::info;

impl Switch {
    /// A SAFE from a message covers the targets that message showed: the ones that joined
    /// since the last announcement move to a follow-up decision that keeps the deadline and
    /// is announced (the CLI's `safe` answers what `pending` shows now: all of them).
    pub(super) fn keep_unseen_targets(&mut self, id: &str, now: Now) {
        let Some(p) = self.pending.get(id) else {
            return;
        };
        let shown = p.announced.max(1);
        if p.open.decision.targets.len() > shown {
            info!(
                id,
                shown,
                targets = p.open.decision.targets.len(),
                "SAFE covers the targets its message showed; the rest wait, announced"
            );
            self.split_off(id, shown, None, now);
        }
    }

    /// Keep the first `keep` targets on decision `id`; the rest move to a new decision of the
    /// same alert and origin, announced: one that waits for a human (`why`), or, without a
    /// reason, one that keeps `id`'s deadline.
    pub(super) fn split_off(&mut self, id: &str, keep: usize, why: Option<String>, now: Now) {
        let Some(alert_id) = self.pending.get(id).map(|p| p.open.alert.id.clone()) else {
            return;
        };
        let new_id = self.fresh_id(&alert_id);
        let Some(p) = self.pending.get_mut(id) else {
            return;
        };
        let rest = p.open.decision.targets.split_off(keep);
        if rest.is_empty() {
            return;
        }
        p.dirty = true;
        let mut open = p.open.clone();
        let origin = p.origin.clone();
        let due = match why {
            Some(_) => now.boot + NEVER,
            None => p.due,
        };
        let d = &mut open.decision;
        d.id = new_id.clone();
        d.target_ip = rest.first().copied();
        d.domain = d.target_ip.and_then(|t| d.names.get(&t).cloned());
        d.names.retain(|ip, _| rest.contains(ip));
        d.targets = rest;
        d.refused.clear();
        d.overflow = 0;
        d.created = now.wall;
        if why.is_some() {
            d.deadline = now.wall + NEVER;
        }
        d.waiting = why;
        for t in &d.targets {
            self.by_target.insert(*t, new_id.clone());
        }
        self.by_origin.insert(origin.clone(), new_id.clone());
        let announced = open.decision.targets.len();
        self.send(Job::Open(Box::new(open.clone())));
        self.pending.insert(
            new_id,
            Pending::announced(open, due, announced, now.boot, origin),
        );
    }
}
