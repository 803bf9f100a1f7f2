//! Floods of alerts are counted, not stored one by one. A web server that runs `sh -c true` in
//! a loop would otherwise raise hundreds of alerts a second: every one stored and streamed,
//! the chat limits spent on them and the real alert lost among them. Each origin (the
//! culprit's uid and executable) gets a budget of new alerts per window; past it, its
//! findings fold into one `switch_flood` alert per origin and window whose count grows.
//! Folding only concerns the alert row: the pipeline still tracks the folded finding's tree
//! and offers its target to the switch, so a flood never costs a decision. Another origin's
//! budget is its own: one origin's flood never folds another's alerts.
//!
//! The map of origins is keyed by something a process controls (its executable's path), so it
//! is bounded: past [`MAX_ORIGINS`] live origins, new ones share one overflow bucket and the
//! overflow is counted ([`FloodStats`]).

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use super::{Anomaly, Culprit};
use crate::{
    event::AlertBody,
    untrusted::{escape, escaped},
};

/// At most this many origins are budgeted apart at once; the rest share one bucket.
pub const MAX_ORIGINS: usize = 10_000;

/// The window a budget (and its folded alert) covers.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What `status --json` shows under `alerts`: findings folded into a `switch_flood` alert, and
/// entries a bounded map could not take (origins past the bound, de-duplication entries evicted
/// early).
#[derive(Debug, Default)]
pub struct FloodStats {
    pub folded: AtomicU64,
    pub overflow: AtomicU64,
}

impl FloodStats {
    pub fn overflowed(&self) {
        self.overflow.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who an alert is charged to: the culprit's uid and executable (its name when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    uid: u32,
    exe: Arc<str>,
}

impl Origin {
    pub fn of(culprit: &Culprit) -> Self {
        let exe = culprit.exe.as_deref().unwrap_or(&culprit.comm);
        Self {
            uid: culprit.uid,
            exe: exe.into(),
        }
    }

    /// The bucket every origin past [`MAX_ORIGINS`] shares.
    fn overflow() -> Self {
        Self {
            uid: u32::MAX,
            exe: "".into(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::overflow() {
            return write!(
                f,
                "more origins than the agent tracks apart ({MAX_ORIGINS})"
            );
        }
        write!(f, "uid {} ({})", self.uid, self.exe)
    }
}

/// The aggregated alert of one origin and window, and what it holds.
#[derive(Debug, Clone)]
struct Fold {
    first: SystemTime,
    alert: AlertBody,
    /// Folded findings by anomaly name, in the order they first came.
    by_anomaly: Vec<(&'static str, u64)>,
}

#[derive(Debug)]
struct Bucket {
    since: Instant,
    raised: u32,
    fold: Option<Fold>,
}

/// A finding past its origin's budget, folded: the aggregated alert as it should now be stored
/// (first raised at `first`); `fresh` when this finding opened it.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    pub alert: AlertBody,
    pub first: SystemTime,
    pub fresh: bool,
}

/// New alerts per origin and window, and the folded alert of each origin over its budget.
pub struct Budget {
    per_window: u32,
    buckets: HashMap<Origin, Bucket>,
    last_prune: Option<Instant>,
    pub stats: Arc<FloodStats>,
}

impl Budget {
    /// At most `per_window` new alerts per origin and minute (0: no budget).
    pub fn new(per_window: u32, stats: Arc<FloodStats>) -> Self {
        Self {
            per_window,
            buckets: HashMap::new(),
            last_prune: None,
            stats,
        }
    }

    /// Whether `origin` may raise one more alert of its own now (and charge it).
    pub fn spend(&mut self, origin: &Origin, now: Instant) -> bool {
        if self.per_window == 0 {
            return true;
        }
        let per_window = self.per_window;
        let (_, bucket) = self.bucket(origin, now);
        if bucket.raised < per_window {
            bucket.raised += 1;
            return true;
        }
        false
    }

    /// Fold a finding of `anomaly` (risk `risk`, by `culprit`) into its origin's aggregated
    /// alert, opening it with an id from `next_id` when it is the window's first.
    pub fn fold(
        &mut self,
        culprit: &Culprit,
        anomaly: Anomaly,
        risk: u8,
        (now, wall): (Instant, SystemTime),
        next_id: &mut dyn FnMut() -> String,
    ) -> Folded {
        self.stats.folded.fetch_add(1, Ordering::Relaxed);
        let (origin, bucket) = self.bucket(&Origin::of(culprit), now);
        let fresh = bucket.fold.is_none();
        let fold = bucket.fold.get_or_insert_with(|| Fold {
            first: wall,
            alert: aggregate(next_id(), culprit),
            by_anomaly: Vec::new(),
        });
        match fold
            .by_anomaly
            .iter_mut()
            .find(|(a, _)| *a == anomaly.name())
        {
            Some((_, n)) => *n += 1,
            None => fold.by_anomaly.push((anomaly.name(), 1)),
        }
        let total: u64 = fold.by_anomaly.iter().map(|(_, n)| n).sum();
        fold.alert.count = u32::try_from(total).unwrap_or(u32::MAX);
        fold.alert.risk = fold.alert.risk.max(risk);
        fold.alert.detail = escaped(detail(&origin, &fold.by_anomaly, total));
        Folded {
            alert: fold.alert.clone(),
            first: fold.first,
            fresh,
        }
    }

    /// The aggregated alert `id`, while its bucket lasts.
    pub fn alert_mut(&mut self, id: &str) -> Option<&mut AlertBody> {
        self.buckets
            .values_mut()
            .filter_map(|b| b.fold.as_mut())
            .map(|f| &mut f.alert)
            .find(|a| a.id == id)
    }

    /// `origin`, or the shared overflow bucket when the map is full (counted).
    fn resolve(&mut self, origin: &Origin) -> Origin {
        if self.buckets.contains_key(origin) || self.buckets.len() < MAX_ORIGINS {
            return origin.clone();
        }
        self.stats.overflowed();
        Origin::overflow()
    }

    /// The current window's bucket of `origin` (or of the overflow, see [`Budget::resolve`]):
    /// a new one when its window passed.
    fn bucket(&mut self, origin: &Origin, now: Instant) -> (Origin, &mut Bucket) {
        self.prune(now);
        let origin = self.resolve(origin);
        let bucket = self.buckets.entry(origin.clone()).or_insert(Bucket {
            since: now,
            raised: 0,
            fold: None,
        });
        if now.saturating_duration_since(bucket.since) >= WINDOW {
            *bucket = Bucket {
                since: now,
                raised: 0,
                fold: None,
            };
        }
        (origin, bucket)
    }

    /// Drop the buckets whose window passed (at most once a second: a full map sends new
    /// origins to the overflow bucket meanwhile).
    fn prune(&mut self, now: Instant) {
        let due = self
            .last_prune
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if !due {
            return;
        }
        self.last_prune = Some(now);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.since) < WINDOW);
    }
}

/// The aggregated alert of `culprit`'s origin, before anything is counted in it.
fn aggregate(id: String, culprit: &Culprit) -> AlertBody {
    let anomaly = Anomaly::SwitchFlood { unreadable: false };
    AlertBody {
        id,
        anomaly: anomaly.name().into(),
        severity: anomaly.severity().as_str().into(),
        risk: 50,
        mitre: anomaly.mitre(),
        pid: culprit.pid,
        comm: escaped(culprit.comm.clone()),
        exe: culprit.exe.as_deref().map(|e| escape(e).into_owned()),
        target_ip: None,
        targets: Vec::new(),
        country: None,
        domain: None,
        state: "none".into(),
        deadline: None,
        count: 0,
        detail: String::new(),
        container: culprit.container.as_deref().cloned(),
    }
}

/// "1,204 more alerts from uid 33 (/usr/bin/python3) in the last minute, folded: lineage ×1200,
/// miner ×4" (most frequent first).
pub fn detail(origin: &Origin, by_anomaly: &[(&'static str, u64)], total: u64) -> String {
    let mut parts = by_anomaly.to_vec();
    parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    let parts: Vec<String> = parts.iter().map(|(a, n)| format!("{a} ×{n}")).collect();
    let what = if total == 1 { "alert" } else { "alerts" };
    format!(
        "{} more {what} from {origin} in the last minute, folded: {}",
        thousands(total),
        parts.join(", ")
    )
}

/// `1204` as "1,204".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::culprit;

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("agg{n}")
        }
    }

    fn budget(n: u32) -> Budget {
        Budget::new(n, Arc::default())
    }

    #[test]
    fn each_origin_has_its_own_budget() {
        let mut b = budget(3);
        let t0 = Instant::now();
        let web = Origin::of(&culprit(1, "sh", &[]));
        let mut other = culprit(2, "sh", &[]);
        other.uid = 65534;
        let other = Origin::of(&other);
        assert!((0..3).all(|_| b.spend(&web, t0)));
        assert!(!b.spend(&web, t0));
        // Another uid, same program: its own budget.
        assert!((0..3).all(|_| b.spend(&other, t0)));
        // Another program, same uid: its own budget too.
        assert!(b.spend(&Origin::of(&culprit(3, "python3", &[])), t0));
        // A new window, a new budget.
        assert!(b.spend(&web, t0 + WINDOW));
        // No budget at all with 0.
        let mut free = budget(0);
        assert!((0..100).all(|_| free.spend(&web, t0)));
    }

    #[test]
    fn folds_count_into_one_alert_per_origin_and_window() {
        let mut b = budget(1);
        let mut next = ids();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let c = culprit(7, "sh", &[]);
        let first = b.fold(&c, Anomaly::Lineage, 70, (t0, wall), &mut next);
        assert!(first.fresh);
        assert_eq!(
            (first.alert.id.as_str(), first.alert.anomaly.as_str()),
            ("agg1", "switch_flood")
        );
        assert_eq!(
            (first.alert.severity.as_str(), first.alert.count),
            ("high", 1)
        );
        assert_eq!(first.alert.mitre.technique, "T1562");
        for _ in 0..1199 {
            b.fold(&c, Anomaly::Lineage, 70, (t0, wall), &mut next);
        }
        for _ in 0..3 {
            b.fold(&c, Anomaly::Miner { cpu: false }, 60, (t0, wall), &mut next);
        }
        let last = b.fold(&c, Anomaly::Miner { cpu: true }, 60, (t0, wall), &mut next);
        assert!(!last.fresh);
        assert_eq!((last.alert.id.as_str(), last.alert.count), ("agg1", 1204));
        assert_eq!(last.first, wall);
        assert_eq!(
            last.alert.detail,
            "1,204 more alerts from uid 1000 (/usr/bin/sh) in the last minute, folded: \
             lineage ×1200, miner ×4"
        );
        assert_eq!(last.alert.risk, 70);
        assert_eq!(b.stats.folded.load(Ordering::Relaxed), 1204);
        // Another origin: another aggregated alert.
        let other = b.fold(
            &culprit(8, "python3", &[]),
            Anomaly::Lineage,
            70,
            (t0, wall),
            &mut next,
        );
        assert!(other.fresh && other.alert.id == "agg2");
        // The next window: a new one.
        let later = b.fold(&c, Anomaly::Lineage, 70, (t0 + WINDOW, wall), &mut next);
        assert!(later.fresh && later.alert.id == "agg3" && later.alert.count == 1);
    }

    #[test]
    fn the_switch_state_sticks_to_the_aggregated_alert() {
        let mut b = budget(1);
        let mut next = ids();
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let c = culprit(7, "sh", &[]);
        let a = b
            .fold(&c, Anomaly::Lineage, 70, (t0, wall), &mut next)
            .alert;
        b.fold(&c, Anomaly::Lineage, 70, (t0, wall), &mut next);
        let kept = b.alert_mut(&a.id).expect("the aggregated alert is kept");
        kept.state = "pending".into();
        assert_eq!(kept.count, 2);
        let again = b.fold(&c, Anomaly::Lineage, 70, (t0, wall), &mut next);
        assert_eq!(
            (again.alert.state.as_str(), again.alert.count),
            ("pending", 3)
        );
        assert!(b.alert_mut("nope").is_none());
    }

    #[test]
    fn origins_are_bounded_and_the_overflow_counted() {
        let mut b = budget(1);
        let t0 = Instant::now();
        let origin = |i: usize| {
            let mut c = culprit(1, "x", &[]);
            c.exe = Some(format!("/tmp/x{i}").into());
            Origin::of(&c)
        };
        for i in 0..MAX_ORIGINS {
            assert!(b.spend(&origin(i), t0));
        }
        assert_eq!(b.buckets.len(), MAX_ORIGINS);
        // Past the bound: one shared bucket, counted.
        assert!(b.spend(&origin(MAX_ORIGINS), t0));
        assert!(!b.spend(&origin(MAX_ORIGINS + 1), t0));
        assert_eq!(b.buckets.len(), MAX_ORIGINS + 1);
        assert_eq!(b.stats.overflow.load(Ordering::Relaxed), 2);
        // A known origin keeps its own bucket.
        assert!(!b.spend(&origin(0), t0));
        assert_eq!(b.stats.overflow.load(Ordering::Relaxed), 2);
        // Pruned by age: a window later the map empties out.
        assert!(b.spend(&origin(0), t0 + WINDOW));
        assert_eq!(b.buckets.len(), 1);
    }

    #[test]
    fn alerts_past_the_budget_fold_and_repeats_cost_nothing() {
        use crate::detect::{Alerts, Finding, Outcome};
        let mut alerts = Alerts::new(Duration::from_secs(600));
        alerts.budget = Budget::new(2, Arc::default());
        let t0 = Instant::now();
        let shell = |pid: u32, server: u32, uid: u32| {
            let mut c = culprit(pid, "sh", &[(server, "python3")]);
            c.uid = uid;
            Finding {
                domain: None,
                anomaly: Anomaly::Lineage,
                culprit: c,
                target: None,
                country: None,
                detail: "shell below a web server".into(),
                subject: server,
            }
        };
        let new = |o: &Outcome| matches!(o, Outcome::New(_));
        assert!(new(&alerts.raise(shell(11, 10, 33), t0)));
        // A repeat (same server) is counted on its alert, not charged to the budget.
        assert!(matches!(
            alerts.raise(shell(12, 10, 33), t0),
            Outcome::Repeat(..)
        ));
        assert!(new(&alerts.raise(shell(21, 20, 33), t0)));
        let Outcome::Folded(first, would) = alerts.raise(shell(31, 30, 33), t0) else {
            panic!()
        };
        assert!(first.fresh);
        assert_eq!((would.anomaly.as_str(), would.pid), ("lineage", 31));
        assert_eq!(would.id, first.alert.id);
        let Outcome::Folded(second, _) = alerts.raise(shell(41, 40, 33), t0) else {
            panic!()
        };
        assert!(!second.fresh);
        assert_eq!((second.alert.id, second.alert.count), (first.alert.id, 2));
        // Another uid is never folded by this flood.
        assert!(new(&alerts.raise(shell(51, 50, 65534), t0)));
        assert_eq!(alerts.budget.stats.folded.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn numbers_read_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1204), "1,204");
        assert_eq!(thousands(1_234_567), "1,234,567");
        let one = detail(&Origin::overflow(), &[("lineage", 1)], 1);
        assert!(one.starts_with("1 more alert from more origins"), "{one}");
    }
}
