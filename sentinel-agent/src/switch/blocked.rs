//! The addresses the switch holds blocked, each until its block ends. A block ends when its
//! nftables element times out (`enforce.block_ttl`); from then on the address is judged afresh:
//! a new finding opens a new decision and a fleet share is applied again. Expiry is kept on
//! the boot clock ([`super::clock`]), like the switch's deadlines, so a wall-clock step
//! neither ends blocks early nor keeps them past their time.

use std::{collections::HashMap, net::IpAddr, time::Duration};

/// Blocked addresses and when (on the boot clock) each block ends.
#[derive(Debug, Default)]
pub struct Blocked {
    until: HashMap<IpAddr, Duration>,
}

impl Blocked {
    /// Hold `ip` blocked until `until` (boot clock); a later end wins over an earlier one.
    pub fn insert(&mut self, ip: IpAddr, until: Duration) {
        let end = self.until.entry(ip).or_insert(until);
        *end = (*end).max(until);
    }

    /// Whether `ip` is blocked at `now` (boot clock).
    pub fn holds(&self, ip: IpAddr, now: Duration) -> bool {
        self.until.get(&ip).is_some_and(|until| *until > now)
    }

    /// Forget `ip` (its block was lifted).
    pub fn remove(&mut self, ip: IpAddr) {
        self.until.remove(&ip);
    }

    /// Forget every block that has ended by `now`; how many went.
    pub fn prune(&mut self, now: Duration) -> usize {
        let before = self.until.len();
        self.until.retain(|_, until| *until > now);
        before - self.until.len()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_block_holds_until_its_end_and_is_pruned_after() {
        let secs = Duration::from_secs;
        let mut b = Blocked::default();
        b.insert(ip("198.51.100.7"), secs(110));
        b.insert(ip("198.51.100.8"), secs(200));
        assert!(b.holds(ip("198.51.100.7"), secs(109)));
        assert!(!b.holds(ip("198.51.100.7"), secs(110)), "ended at its end");
        assert!(!b.holds(ip("198.51.100.9"), secs(0)), "never blocked");
        assert_eq!(b.prune(secs(110)), 1);
        assert_eq!(b.len(), 1);
        assert!(b.holds(ip("198.51.100.8"), secs(110)));
    }

    #[test]
    fn the_later_end_wins_and_a_lift_forgets() {
        let secs = Duration::from_secs;
        let mut b = Blocked::default();
        b.insert(ip("2001:db8::1"), secs(300));
        b.insert(ip("2001:db8::1"), secs(100));
        assert!(b.holds(ip("2001:db8::1"), secs(299)));
        b.remove(ip("2001:db8::1"));
        assert!(!b.holds(ip("2001:db8::1"), secs(0)));
        assert_eq!(b.len(), 0);
    }
}
