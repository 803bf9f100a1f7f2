//! What the switch knows, asked by the event loop, the detectors and the CLI: whether an
//! address is safe, blocked or already decided, and which decisions are pending. Read-only.

use std::{net::IpAddr, time::SystemTime};

#[cfg(test)]
use super::decision::Decision;
use super::{Switch, clock::Now};

impl Switch {
    /// Whether `ip` was marked safe and is still within `switch.safe_ttl`.
    pub fn is_safe(&self, ip: IpAddr, now: SystemTime) -> bool {
        self.safe.get(&ip).is_some_and(|until| *until > now)
    }

    /// Whether `ip` is blocked now (its block has not ended; never in dry-run).
    pub fn is_blocked(&self, ip: IpAddr, now: Now) -> bool {
        self.blocked.holds(ip, now.boot)
    }

    /// Whether a decision on `ip` would be moot: held by a pending decision, marked safe, or
    /// blocked (and its block has not ended).
    pub(super) fn is_decided(&self, ip: IpAddr, now: Now) -> bool {
        self.by_target.contains_key(&ip)
            || self.is_safe(ip, now.wall)
            || self.blocked.holds(ip, now.boot)
    }

    #[cfg(test)]
    pub fn pending(&self) -> impl Iterator<Item = &Decision> {
        self.pending.values().map(|p| &p.open.decision)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Whether decision `id` is pending.
    pub fn is_pending(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    /// The open decision charged to `origin`, if any: a new finding of the origin joins it.
    pub fn pending_of(&self, origin: &str) -> Option<&str> {
        self.by_origin.get(origin).map(String::as_str)
    }

    /// The wall-clock deadline of pending decision `id`.
    pub fn deadline_of(&self, id: &str) -> Option<SystemTime> {
        self.pending.get(id).map(|p| p.open.decision.deadline)
    }

    /// The pending decision holding `ip`, if any.
    #[cfg(test)]
    pub fn holder_of(&self, ip: IpAddr) -> Option<&str> {
        self.by_target.get(&ip).map(String::as_str)
    }
}
