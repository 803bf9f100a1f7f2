//! Who a decision is charged to, and how much of the switch each one may spend. Any local
//! user can make a process connect to an address of their choosing and put the socket on its
//! standard streams: a `reverse_shell` decision on that address, auto-blocked at the deadline.
//! Unbudgeted, that lets `www-data` cut the host off from its admin, its package mirror or its
//! payment API, or fill `switch.max_pending` with decoys. So every decision has an *origin* —
//! the user it runs as, and for root the top of the alerted tree — and:
//! - an origin holds at most one open decision: its later findings join that decision's
//!   target set (no origin can reach `switch.max_pending` alone);
//! - the timer blocks at most `switch.max_auto_blocks` addresses per origin in any hour
//!   ([`Budget`]); past that, targets wait for a human (a human's CONFIRM BLOCK is never capped).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

/// The window of `switch.max_auto_blocks`.
pub const HOUR: Duration = Duration::from_secs(3600);

/// The origin of a finding about a process of user `uid` whose ancestry (parent first) is
/// `ancestry`. An unprivileged user is one origin however many trees it starts (a `setsid` or a
/// double fork makes a new tree at will); root's processes are told apart by the top of their
/// tree (the ancestor just below init), so one root service's alerts do not hold another's.
pub fn of(uid: u32, pid: u32, comm: &str, ancestry: &[(u32, Arc<str>)]) -> String {
    if uid != 0 {
        return format!("uid {uid}");
    }
    let top = ancestry
        .iter()
        .take_while(|(p, _)| *p > 1)
        .last()
        .map_or((pid, comm), |(p, c)| (*p, &**c));
    format!("uid 0, tree of {} (pid {})", top.1, top.0)
}

/// Addresses the timer blocked per origin, on the boot clock, over the last [`HOUR`].
#[derive(Debug, Default)]
pub struct Budget {
    spent: HashMap<String, VecDeque<Duration>>,
}

impl Budget {
    /// How many more addresses `origin` may have auto-blocked now, of `max`.
    pub fn left(&mut self, origin: &str, max: usize, now: Duration) -> usize {
        let Some(times) = self.spent.get_mut(origin) else {
            return max;
        };
        while times
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= HOUR)
        {
            times.pop_front();
        }
        if times.is_empty() {
            self.spent.remove(origin);
            return max;
        }
        max.saturating_sub(times.len())
    }

    /// `origin` had `n` addresses auto-blocked at `now`.
    pub fn spend(&mut self, origin: &str, n: usize, now: Duration) {
        if n == 0 {
            return;
        }
        let times = self.spent.entry(origin.to_string()).or_default();
        times.extend(std::iter::repeat_n(now, n));
    }

    /// Forget the origins whose hour is over (bounded by the origins active in the last hour).
    pub fn prune(&mut self, now: Duration) {
        self.spent
            .retain(|_, times| times.back().is_some_and(|t| now.saturating_sub(*t) < HOUR));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(links: &[(u32, &str)]) -> Vec<(u32, Arc<str>)> {
        links.iter().map(|(p, c)| (*p, Arc::from(*c))).collect()
    }

    #[test]
    fn a_user_is_one_origin_root_is_told_apart_by_its_tree() {
        let web = chain(&[(900, "php-fpm"), (800, "php-fpm"), (1, "systemd")]);
        let detached = chain(&[(1, "systemd")]);
        assert_eq!(of(33, 1000, "sh", &web), "uid 33");
        assert_eq!(of(33, 1001, "python3", &detached), "uid 33");
        assert_eq!(of(0, 1000, "sh", &web), "uid 0, tree of php-fpm (pid 800)");
        assert_eq!(
            of(0, 1002, "node", &detached),
            "uid 0, tree of node (pid 1002)"
        );
        assert_eq!(of(0, 1003, "x", &[]), "uid 0, tree of x (pid 1003)");
    }

    #[test]
    fn the_budget_is_per_origin_and_refills_after_an_hour() {
        let mut b = Budget::default();
        let t0 = Duration::from_secs(100);
        assert_eq!(b.left("uid 33", 32, t0), 32);
        b.spend("uid 33", 30, t0);
        assert_eq!(b.left("uid 33", 32, t0), 2);
        assert_eq!(b.left("uid 1000", 32, t0), 32);
        b.spend("uid 33", 2, t0 + Duration::from_secs(60));
        assert_eq!(b.left("uid 33", 32, t0 + Duration::from_secs(61)), 0);
        // An hour after the first 30: they are back, the last 2 still count.
        assert_eq!(b.left("uid 33", 32, t0 + HOUR), 30);
        b.prune(t0 + HOUR + Duration::from_secs(60));
        assert_eq!(
            b.left("uid 33", 32, t0 + HOUR + Duration::from_secs(60)),
            32
        );
    }
}
