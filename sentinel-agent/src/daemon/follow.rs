//! A blocked decision follows its name. When a decision ends blocked, the names its targets
//! were resolved from (by the decision's process, else by the host) are remembered with the
//! decision's origin; when a process of the same origin later receives an answer that
//! resolves one of those names to a new address while the block lasts, that address is
//! blocked too, under the same decision (a C2 rotating its address does not escape). Part of
//! the [`Pipeline`]: the DNS answers come through here on their way into the name cache (and,
//! at most once a minute, drop the names of processes that exited).

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use tracing::{debug, info, warn};

use super::pipeline::Pipeline;
use crate::sensors::boot_ns;
use crate::{
    sensors::dns::Dns,
    switch::{clock::Now, decision::Decision},
};

/// Most names followed at once; past it the oldest decision's names are let go.
pub const MAX_FOLLOWED: usize = 4096;

/// One blocked decision's claim on a name.
#[derive(Debug, Clone)]
struct Follow {
    origin: String,
    decision: String,
    /// The decision's addresses for this name: the block lasts while one of them is blocked.
    blocked: Vec<IpAddr>,
}

/// Names of blocked targets → the decisions that follow them.
#[derive(Debug, Default)]
pub struct Followed {
    by_name: HashMap<Arc<str>, Vec<Follow>>,
    /// Names in the order they were first followed (for the cap).
    order: std::collections::VecDeque<Arc<str>>,
}

impl Followed {
    fn add(&mut self, name: Arc<str>, origin: &str, decision: &str, ip: IpAddr) {
        let follows = self.by_name.entry(name.clone()).or_default();
        if follows.is_empty() {
            self.order.push_back(name);
        }
        match follows
            .iter_mut()
            .find(|f| f.origin == origin && f.decision == decision)
        {
            Some(f) if !f.blocked.contains(&ip) => f.blocked.push(ip),
            Some(_) => {}
            None => follows.push(Follow {
                origin: origin.to_string(),
                decision: decision.to_string(),
                blocked: vec![ip],
            }),
        }
        while self.order.len() > MAX_FOLLOWED
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_name.remove(&oldest);
        }
    }

    fn of(&self, name: &str) -> Option<&[Follow]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// Forget the names no block holds any more (`held` says whether an address is still
    /// blocked).
    fn prune(&mut self, held: impl Fn(IpAddr) -> bool) {
        self.by_name.retain(|_, follows| {
            follows.retain(|f| f.blocked.iter().any(|ip| held(*ip)));
            !follows.is_empty()
        });
        let by_name = &self.by_name;
        self.order.retain(|n| by_name.contains_key(n));
    }
}

impl Pipeline {
    /// A DNS answer delivered to a process: into the name cache, and any address it gives a
    /// name that a block of the process's origin follows is blocked too.
    pub(super) fn on_dns(&mut self, d: Dns) {
        let tree = &self.tree;
        if let Some(n) = self
            .names
            .sweep_exited(d.ts_ns, |tgid| tree.get(tgid).is_some())
        {
            debug!(dropped = n, "names of exited processes dropped");
        }
        // A TCP answer in several segments comes in several records: parsed once whole.
        let Some(message) = self.names.whole_message(&d) else {
            return;
        };
        if message.len() != d.message.len() {
            debug!(pid = d.tgid, server = %d.server, len = message.len(), counts = ?self.names.tcp_counts(), "dns answer over tcp put together from its segments");
        }
        let answer = match self.names.learn(d.tgid, d.ts_ns, &message) {
            Ok(a) => a,
            Err(e) => {
                // The sender's problem, not an event: a debug line (a flood of bad answers
                // must not flood the log).
                debug!(pid = d.tgid, server = %d.server, cut = d.cut, "dns answer skipped: {e}");
                return;
            }
        };
        if answer.addrs.is_empty() || d.tgid == 0 || self.followed.of(&answer.name).is_none() {
            return;
        }
        let now = Now::read();
        let followed = self
            .followed
            .of(&answer.name)
            .unwrap_or_default()
            .iter()
            .filter(|f| f.blocked.iter().any(|ip| self.switch.is_blocked(*ip, now)))
            .cloned()
            .collect::<Vec<_>>();
        if followed.is_empty() {
            return;
        }
        let comm = self
            .tree
            .get(d.tgid)
            .map_or_else(String::new, |p| p.comm.to_string());
        let culprit = self.culprit(d.tgid, comm, Some(d.uid));
        let origin =
            crate::switch::origin::of(d.uid, culprit.pid, &culprit.comm, &culprit.ancestry);
        for f in followed.iter().filter(|f| f.origin == origin) {
            for &(ip, _) in &answer.addrs {
                self.block_by_name(f, &answer.name, ip, now);
            }
        }
    }

    /// Block `ip`, a new address of `name`, under `f`'s decision.
    fn block_by_name(&mut self, f: &Follow, name: &str, ip: IpAddr, now: Now) {
        match self
            .switch
            .block_shared(&self.detect.trust, ip, &f.decision, Some(name), now)
        {
            Ok(true) => {
                info!(decision = %f.decision, %ip, name, "the block follows its name: a new address of a blocked name is blocked");
                let name: Arc<str> = name.into();
                self.followed.add(name, &f.origin, &f.decision, ip);
            }
            Ok(false) => {}
            Err(why) => {
                warn!(decision = %f.decision, %ip, name, "a blocked name's new address is not blocked: {why}")
            }
        }
    }

    /// A decision changed: when it ended blocked, its targets' names are followed.
    pub(super) fn follow_names_of(&mut self, d: &Decision) {
        let now = Now::read();
        let switch = &self.switch;
        self.followed.prune(|ip| switch.is_blocked(ip, now));
        if !matches!(d.state.as_str(), "blocked" | "auto-blocked") {
            return;
        }
        let origin = d.origin.clone().unwrap_or_default();
        for &ip in &d.targets {
            if let Some(r) = self.names.name_for(d.pid, ip, boot_ns()) {
                self.followed.add(r.name, &origin, &d.id, ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_followed_per_origin_and_pruned_with_their_blocks() {
        let mut f = Followed::default();
        f.add("c2.test".into(), "uid 33", "d1", ip("198.51.100.2"));
        f.add("c2.test".into(), "uid 33", "d1", ip("198.51.100.3"));
        f.add("c2.test".into(), "uid 48", "d2", ip("198.51.100.2"));
        let follows = f.of("c2.test").unwrap();
        assert_eq!(follows.len(), 2);
        assert_eq!(follows[0].blocked.len(), 2);
        // d1's .3 is still blocked, d2's only address is not.
        f.prune(|a| a == ip("198.51.100.3"));
        let follows = f.of("c2.test").unwrap();
        assert_eq!(follows.len(), 1);
        assert_eq!(follows[0].decision, "d1");
        f.prune(|_| false);
        assert!(f.of("c2.test").is_none());
        assert!(f.order.is_empty());
    }

    #[test]
    fn the_number_of_followed_names_is_capped() {
        let mut f = Followed::default();
        for i in 0..(MAX_FOLLOWED + 10) {
            f.add(
                format!("n{i}.test").into(),
                "uid 1",
                "d",
                ip("198.51.100.2"),
            );
        }
        assert_eq!(f.by_name.len(), MAX_FOLLOWED);
        assert!(f.of("n0.test").is_none());
        assert!(f.of(&format!("n{}.test", MAX_FOLLOWED + 9)).is_some());
    }
}
