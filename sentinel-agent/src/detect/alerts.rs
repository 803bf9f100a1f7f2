//! Alerts: a finding becomes an alert with an id and a risk score, once per (anomaly,
//! process) and `alerts.dedup_window` (repeats count on it) and within its origin's budget
//! ([`super::budget`]; past it, it folds into the origin's aggregated alert). Kept apart from
//! the detectors' shared types so each stays short.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{Anomaly, Finding, Signals, budget, risk};
use crate::{
    event::AlertBody,
    untrusted::{escape, escaped},
};

/// What to do with a finding after de-duplication.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A new alert: store and stream it.
    New(AlertBody),
    /// The same anomaly again within the window: the stored alert (first raised at the
    /// given time) gets the new count.
    Repeat(AlertBody, SystemTime),
    /// A new alert past its origin's budget: the origin's aggregated alert (stored when fresh,
    /// updated otherwise) and the alert it would have been (carrying the aggregated alert's
    /// id), for the response and the decision it must not cost.
    Folded(budget::Folded, Box<AlertBody>),
}

/// At most this many open alerts are remembered for de-duplication; past it the oldest goes
/// (counted in [`budget::FloodStats::overflow`]).
pub const MAX_OPEN: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    anomaly: Anomaly,
    subject: u32,
    /// For `respawn` (whose subject is the parent that restarts), the program that came back:
    /// a `sh` restarted by the same bash is not a repeat of its python3. For `persistence`
    /// (whose subject is the web server above the writer), what was written by whom: each
    /// file an exploited server's tree writes is an alert of its own.
    program: Option<String>,
}

impl Key {
    fn of(finding: &Finding) -> Self {
        let program = match finding.anomaly {
            Anomaly::Respawn { .. } => Some(
                finding
                    .culprit
                    .exe
                    .as_deref()
                    .map_or_else(|| finding.culprit.comm.clone(), str::to_owned),
            ),
            Anomaly::Persistence { .. } => Some(finding.detail.clone()),
            _ => None,
        };
        Key {
            anomaly: finding.anomaly,
            subject: finding.subject,
            program,
        }
    }
}

/// Scores findings and folds repeats into one alert per (anomaly, process) and window, and
/// floods into one alert per origin and minute ([`budget`]). A repeat or a folded finding never
/// costs a decision (its target joins the alert's decision, see the pipeline); a repeat raises
/// the alert's risk when new signals joined since.
pub struct Alerts {
    window: Duration,
    open: HashMap<Key, (Instant, SystemTime, AlertBody)>,
    last_prune: Option<Instant>,
    pub signals: Signals,
    /// New alerts per origin and minute.
    pub budget: budget::Budget,
    next_id: Box<dyn FnMut() -> String + Send>,
}

impl Alerts {
    pub fn new(window: Duration) -> Self {
        Self::with_ids(window, Box::new(random_id))
    }

    pub fn with_ids(window: Duration, next_id: Box<dyn FnMut() -> String + Send>) -> Self {
        Self {
            window,
            open: HashMap::new(),
            last_prune: None,
            signals: Signals::default(),
            budget: budget::Budget::new(20, Arc::default()),
            next_id,
        }
    }

    pub fn raise(&mut self, finding: Finding, now: Instant) -> Outcome {
        self.raise_at(finding, now, SystemTime::now())
    }

    /// [`Alerts::raise`] with the wall-clock time given.
    pub fn raise_at(&mut self, finding: Finding, now: Instant, wall: SystemTime) -> Outcome {
        self.prune(now);
        let key = Key::of(&finding);
        if let Some((since, first, alert)) = self.open.get_mut(&key)
            && now.saturating_duration_since(*since) < self.window
        {
            alert.count += 1;
            alert.risk = alert.risk.max(risk(&finding, &self.signals));
            return Outcome::Repeat(alert.clone(), *first);
        }
        let risk = risk(&finding, &self.signals);
        self.signals.mark(finding.culprit.pid, finding.anomaly);
        if let Some(exe) = &finding.culprit.exe {
            self.signals.intel.alerted(exe);
        }
        if let Some(name) = &finding.domain {
            self.signals.intel.alerted_name(name, wall);
        }
        if !self
            .budget
            .spend(&budget::Origin::of(&finding.culprit), now)
        {
            let folded = self.budget.fold(
                &finding.culprit,
                finding.anomaly,
                risk,
                (now, wall),
                &mut *self.next_id,
            );
            let alert = body(folded.alert.id.clone(), finding, risk);
            return Outcome::Folded(folded, Box::new(alert));
        }
        let alert = body((self.next_id)(), finding, risk);
        self.remember(key, (now, wall, alert.clone()));
        Outcome::New(alert)
    }

    /// Keep `alert` for de-duplication; the oldest goes when the map is full.
    fn remember(&mut self, key: Key, alert: (Instant, SystemTime, AlertBody)) {
        if self.open.len() >= MAX_OPEN
            && let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, (since, _, _))| *since)
                .map(|(k, _)| k.clone())
        {
            self.open.remove(&oldest);
            self.budget.stats.overflowed();
        }
        self.open.insert(key, alert);
    }

    /// Forget the open alerts whose window passed (at most once a second; a lookup checks the
    /// age itself).
    fn prune(&mut self, now: Instant) {
        if self
            .last_prune
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_prune = Some(now);
        self.open
            .retain(|_, (since, _, _)| now.saturating_duration_since(*since) < self.window);
    }

    /// The kept copy of alert `id`: the open one, or the origin's aggregated one.
    fn kept_mut(&mut self, id: &str) -> Option<&mut AlertBody> {
        match self.open.values_mut().find(|(_, _, a)| a.id == id) {
            Some((_, _, open)) => Some(open),
            None => self.budget.alert_mut(id),
        }
    }

    /// The switch moved `alert` to a new state: later repeats must carry it. Returns the alert
    /// as it should be stored: the new state on the kept copy (count, detail, every target).
    pub fn sync_state(&mut self, alert: AlertBody) -> AlertBody {
        let Some(kept) = self.kept_mut(&alert.id) else {
            return alert;
        };
        kept.state.clone_from(&alert.state);
        kept.deadline.clone_from(&alert.deadline);
        kept.gather_from(&alert);
        kept.clone()
    }

    /// `alert` gathered targets: the kept copy gets them. Returns the alert as it should be
    /// stored (the kept copy's state, count and detail win over `alert`'s).
    pub fn sync_targets(&mut self, alert: AlertBody) -> AlertBody {
        let Some(kept) = self.kept_mut(&alert.id) else {
            return alert;
        };
        kept.gather_from(&alert);
        kept.clone()
    }

    /// Open alerts remembered for de-duplication.
    #[cfg(test)]
    pub(super) fn open_len(&self) -> usize {
        self.open.len()
    }

    /// The process ended: its signals go with it.
    pub fn forget(&mut self, pid: u32) {
        self.signals.forget(pid);
    }
}

/// The alert `finding` raises, with its id and risk.
fn body(id: String, finding: Finding, risk: u8) -> AlertBody {
    AlertBody {
        id,
        anomaly: finding.anomaly.name().into(),
        severity: finding.anomaly.severity().as_str().into(),
        risk,
        mitre: finding.anomaly.mitre(),
        pid: finding.culprit.pid,
        // Escaped at intake already; again here so no detector can let raw text through.
        comm: escaped(finding.culprit.comm),
        exe: finding
            .culprit
            .exe
            .as_deref()
            .map(|e| escape(e).into_owned()),
        target_ip: finding.target.map(|t| t.ip()),
        targets: finding.target.map(|t| t.ip()).into_iter().collect(),
        country: finding.country,
        domain: finding.domain,
        state: "none".into(),
        deadline: None,
        count: 1,
        detail: escaped(finding.detail),
        container: finding.culprit.container.map(|c| (*c).clone()),
    }
}

/// 8 hex digits from the kernel's random pool: short enough to type in `sentinel safe ID`.
fn random_id() -> String {
    let mut bytes = [0u8; 4];
    // SAFETY: writes at most 4 bytes into `bytes`. getrandom(2) does not fail for 4 bytes
    // once the pool is initialised (it is, after boot); on failure the time stands in.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        bytes = t.subsec_nanos().to_ne_bytes();
    }
    format!("{:08x}", u32::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::{culprit, finding, ids};

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn repeats_within_the_window_are_counted_not_raised() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let t0 = Instant::now();
        let c = culprit(7, "curl", &[]);
        let first = alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.9")), t0);
        assert!(matches!(first, Outcome::New(ref a) if a.id == "id1" && a.count == 1));
        for n in 2..=5 {
            let again = alerts.raise(
                finding(Anomaly::Geo, c.clone(), Some("203.0.113.9")),
                t0 + Duration::from_secs(n),
            );
            assert!(
                matches!(again, Outcome::Repeat(ref a, _) if a.id == "id1" && a.count == n as u32)
            );
        }
        // Another target of the same process folds in too (its target joins the decision).
        let other = alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.10")), t0);
        assert!(matches!(other, Outcome::Repeat(ref a, _) if a.id == "id1" && a.count == 6));
        // Another process is another alert.
        let elsewhere = alerts.raise(
            finding(Anomaly::Geo, culprit(8, "wget", &[]), Some("203.0.113.9")),
            t0,
        );
        assert!(matches!(elsewhere, Outcome::New(ref a) if a.id == "id2"));
        // After the window, a new alert.
        let later = alerts.raise(
            finding(Anomaly::Geo, c, Some("203.0.113.9")),
            t0 + Duration::from_secs(61),
        );
        assert!(matches!(later, Outcome::New(ref a) if a.id == "id3" && a.count == 1));
    }

    #[test]
    fn a_repeat_with_new_signals_raises_the_risk() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let t0 = Instant::now();
        let web = culprit(7, "sh", &[(5, "node")]);
        let first = alerts.raise(finding(Anomaly::Lineage, web.clone(), None), t0);
        let Outcome::New(a) = first else { panic!() };
        // The shell's tree connects to a high-risk country: a new signal on the tree.
        alerts.signals.mark(7, Anomaly::Geo);
        let Outcome::Repeat(b, _) = alerts.raise(finding(Anomaly::Lineage, web, None), t0) else {
            panic!()
        };
        assert!(b.risk > a.risk, "{} then {}", a.risk, b.risk);
    }

    #[test]
    fn repeats_keep_the_state_the_switch_gave() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let t0 = Instant::now();
        let c = culprit(7, "curl", &[]);
        let Outcome::New(mut a) =
            alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.9")), t0)
        else {
            panic!()
        };
        let _ = alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.9")), t0);
        a.state = "pending".into();
        a.deadline = Some("2026-11-22T21:00:00Z".into());
        let stored = alerts.sync_state(a);
        assert_eq!((stored.state.as_str(), stored.count), ("pending", 2));
        let Outcome::Repeat(again, _) =
            alerts.raise(finding(Anomaly::Geo, c, Some("203.0.113.9")), t0)
        else {
            panic!()
        };
        assert_eq!((again.state.as_str(), again.count), ("pending", 3));
        assert!(again.deadline.is_some());
    }

    #[test]
    fn an_alert_keeps_its_first_target_and_gathers_the_rest() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let t0 = Instant::now();
        let c = culprit(7, "curl", &[]);
        let Outcome::New(a) =
            alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.13")), t0)
        else {
            panic!()
        };
        assert_eq!(a.targets, vec![ip("203.0.113.13")]);
        // The pipeline gathers the repeat's target (it joins a decision, maybe a new one).
        let Outcome::Repeat(mut b, _) =
            alerts.raise(finding(Anomaly::Geo, c, Some("203.0.113.14")), t0)
        else {
            panic!()
        };
        assert!(b.gather(ip("203.0.113.14")));
        assert!(!b.gather(ip("203.0.113.14")), "once");
        let stored = alerts.sync_targets(b);
        assert_eq!(stored.target_ip, Some(ip("203.0.113.13")));
        assert_eq!(stored.targets, vec![ip("203.0.113.13"), ip("203.0.113.14")]);
        assert_eq!(stored.count, 2);
        // A decision of the switch's (its copy knows one target) changes the state only.
        let mut switched = a.clone();
        switched.state = "auto-blocked".into();
        let stored = alerts.sync_state(switched);
        assert_eq!(stored.state, "auto-blocked");
        assert_eq!(stored.targets.len(), 2);
        assert_eq!(stored.target_ip, Some(ip("203.0.113.13")));
    }

    #[test]
    fn a_respawn_is_grouped_by_the_program_that_came_back() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let t0 = Instant::now();
        let back = |pid, comm: &str, exe: &str| {
            let mut c = culprit(pid, comm, &[(5, "bash")]);
            c.exe = Some(exe.into());
            Finding {
                domain: None,
                subject: 5,
                ..finding(Anomaly::Respawn { cron: false }, c, None)
            }
        };
        let py = alerts.raise(back(10, "python3", "/usr/bin/python3"), t0);
        let sh = alerts.raise(back(11, "sh", "/usr/bin/dash"), t0);
        let py_again = alerts.raise(back(12, "python3", "/usr/bin/python3"), t0);
        assert!(matches!(py, Outcome::New(ref a) if a.id == "id1"));
        assert!(matches!(sh, Outcome::New(ref a) if a.id == "id2"), "{sh:?}");
        assert!(matches!(py_again, Outcome::Repeat(ref a, _) if a.id == "id1"));
    }

    #[test]
    fn an_alert_gathers_at_most_max_targets() {
        let mut a = crate::event::sample_alert("x", "198.51.100.2");
        for i in 0..1000u32 {
            a.gather(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                0x0a00_0000 + i,
            )));
        }
        assert_eq!(a.targets.len(), AlertBody::MAX_TARGETS);
        assert_eq!(a.target_ip, Some(ip("198.51.100.2")));
    }

    #[test]
    fn random_ids_look_right() {
        let a = random_id();
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_id());
    }

    #[test]
    fn the_dedup_map_is_bounded_and_pruned_by_age() {
        let mut alerts = Alerts::new(Duration::from_secs(60));
        alerts.budget = budget::Budget::new(0, Arc::default());
        let t0 = Instant::now();
        let finding = |subject: u32| Finding {
            domain: None,
            anomaly: Anomaly::Lineage,
            culprit: culprit(subject + 1, "sh", &[]),
            target: None,
            country: None,
            detail: String::new(),
            subject,
        };
        for subject in 0..=MAX_OPEN as u32 {
            alerts.raise(finding(subject), t0);
        }
        assert_eq!(alerts.open.len(), MAX_OPEN);
        assert_eq!(
            alerts
                .budget
                .stats
                .overflow
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        alerts.raise(finding(0), t0 + Duration::from_secs(61));
        assert_eq!(alerts.open.len(), 1);
    }
}
