//! Addresses remembered from what the host was seen doing: the package sources its package
//! managers connect to. The agent resolves no names of its own, so this is how a mirror known
//! only by name gets protected. Bounded ([`CAPACITY`]) and forgetful ([`KEEP_FOR`]): a mirror
//! unused for a week may move, and a flood of connects cannot grow it without limit (the
//! oldest entry makes room).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Most addresses remembered.
pub const CAPACITY: usize = 256;
/// How long an address is remembered after it was last used.
pub const KEEP_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Address → (who used it, when last).
    entries: HashMap<IpAddr, (String, Instant)>,
}

impl Seen {
    /// `who` (a package manager's name) used `ip` at `now`.
    pub fn note(&mut self, ip: IpAddr, who: &str, now: Instant) {
        if let Some((name, last)) = self.entries.get_mut(&ip) {
            *last = now;
            if name != who {
                *name = who.to_string();
            }
            return;
        }
        self.forget_older_than(now);
        if self.entries.len() >= CAPACITY
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(a, _)| *a)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(ip, (who.to_string(), now));
    }

    fn forget_older_than(&mut self, now: Instant) {
        self.entries
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < KEEP_FOR);
    }

    /// Who used `ip` within [`KEEP_FOR`] of `now`.
    pub fn used_by(&self, ip: IpAddr, now: Instant) -> Option<&str> {
        self.entries
            .get(&ip)
            .filter(|(_, t)| now.saturating_duration_since(*t) < KEEP_FOR)
            .map(|(who, _)| who.as_str())
    }

    /// Every address remembered at `now`.
    pub fn addresses(&self, now: Instant) -> impl Iterator<Item = IpAddr> + '_ {
        self.entries
            .iter()
            .filter(move |(_, (_, t))| now.saturating_duration_since(*t) < KEEP_FOR)
            .map(|(ip, _)| *ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_for_a_week_and_bounded() {
        let t0 = Instant::now();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i));
        let mut seen = Seen::default();
        seen.note(ip(1), "apt", t0);
        assert_eq!(seen.used_by(ip(1), t0 + KEEP_FOR / 2), Some("apt"));
        assert_eq!(seen.used_by(ip(1), t0 + KEEP_FOR), None);
        assert_eq!(seen.used_by(ip(2), t0), None);
        for i in 0..(CAPACITY as u32 + 10) {
            seen.note(
                ip(100 + i),
                "pip",
                t0 + Duration::from_secs(u64::from(i) + 1),
            );
        }
        assert_eq!(seen.entries.len(), CAPACITY);
        // The oldest made room; the newest are there.
        assert_eq!(seen.used_by(ip(1), t0 + Duration::from_secs(1000)), None);
        let last = ip(100 + CAPACITY as u32 + 9);
        assert_eq!(
            seen.used_by(last, t0 + Duration::from_secs(1000)),
            Some("pip")
        );
    }
}
