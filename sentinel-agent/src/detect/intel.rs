//! Behaviour intelligence: what the agent remembers about each executable — seen before in
//! an alert, respawned after being killed, how often it is started — and about each name an
//! alert's target was resolved from (how many alerts named it, when last), and the terms it
//! adds to an alert's risk score. The history outlives restarts: the daemon loads it from the
//! store at start and writes back what changed ([`Intel::take_changes`],
//! [`Intel::take_name_changes`]).

use std::time::{Duration, SystemTime};

use foldhash::HashMap;

use super::{Culprit, patterns};

/// Starts of one executable within an hour that count as a high spawn count.
pub const HIGH_SPAWNS_PER_HOUR: u32 = 600;
/// Executables remembered at most; the least recently started go first.
const MAX_EXES: usize = 20_000;
/// Names remembered at most; the least recently alerted go first.
const MAX_NAMES: usize = 20_000;
const HOUR: u64 = 3600;

/// A term of the risk score, with why it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    /// The executable was in an earlier alert (this run or a previous one): +10.
    SeenBefore,
    /// The executable came back after being killed: +10.
    Respawned,
    /// Started more than [`HIGH_SPAWNS_PER_HOUR`] times within an hour: +5.
    HighSpawnCount,
    /// A miner keyword in its name or path (`xmrig`, `cryptonight`, …): +10.
    MinerKeyword,
    /// The name the target was resolved from was in an earlier alert (any process's, this
    /// run or a previous one): +10.
    NameSeenBefore,
}

impl Term {
    pub fn points(self) -> u32 {
        match self {
            Term::SeenBefore | Term::Respawned | Term::MinerKeyword | Term::NameSeenBefore => 10,
            Term::HighSpawnCount => 5,
        }
    }
}

/// What is remembered about one executable (one row of the store's `intel` table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExeHistory {
    pub exe: String,
    /// Alerts raised on it.
    pub alerts: u32,
    /// Times it came back after a kill.
    pub respawns: u32,
    /// The hour (seconds since the epoch / 3600) `spawns` counts, and the peak of any hour.
    pub hour: u64,
    pub spawns: u32,
    pub peak_spawns: u32,
    /// When it last started (seconds since the epoch).
    pub last_seen: u64,
}

/// What is remembered about one name an alert's target was resolved from (one row of the
/// store's `intel_names` table). The name is in the strict form of `enrich::names`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameHistory {
    pub name: String,
    /// Alerts whose target it named.
    pub alerts: u32,
    /// When it was last in an alert (seconds since the epoch).
    pub last_seen: u64,
}

#[derive(Debug, Default)]
pub struct Intel {
    /// By name (attacker-chosen, bounded by [`MAX_NAMES`]): foldhash, seeded per map.
    names: HashMap<String, NameHistory>,
    /// The names whose history changed since the store last took them.
    changed_names: Vec<String>,
    /// By executable path (a process may choose it): foldhash, seeded per map.
    exes: HashMap<String, Tracked>,
    /// The executables whose history changed since the store last took them.
    changed: Vec<String>,
}

/// A history and whether it is in `changed` already: a program started again costs one
/// lookup and no allocation.
#[derive(Debug)]
struct Tracked {
    history: ExeHistory,
    changed: bool,
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Intel {
    /// The history read back from the store.
    pub fn load(rows: impl IntoIterator<Item = ExeHistory>) -> Self {
        Self {
            exes: rows
                .into_iter()
                .map(|history| {
                    let tracked = Tracked {
                        changed: false,
                        history,
                    };
                    (tracked.history.exe.clone(), tracked)
                })
                .collect(),
            changed: Vec::new(),
            ..Default::default()
        }
    }

    /// [`Intel::load`] with the names' history read back from the store too.
    pub fn with_names(mut self, rows: impl IntoIterator<Item = NameHistory>) -> Self {
        self.names = rows
            .into_iter()
            .take(MAX_NAMES)
            .map(|h| (h.name.clone(), h))
            .collect();
        self
    }

    /// An alert's target was resolved from `name`, at `now`.
    pub fn alerted_name(&mut self, name: &str, now: SystemTime) {
        if !self.names.contains_key(name) && self.names.len() >= MAX_NAMES {
            self.evict_names();
        }
        let h = self
            .names
            .entry(name.to_string())
            .or_insert_with(|| NameHistory {
                name: name.to_string(),
                ..Default::default()
            });
        h.alerts = h.alerts.saturating_add(1);
        h.last_seen = epoch_secs(now);
        if !self.changed_names.iter().any(|n| n == name) {
            self.changed_names.push(name.to_string());
        }
    }

    /// Forget the tenth of names alerted on longest ago.
    fn evict_names(&mut self) {
        let mut by_age: Vec<(u64, String)> = self
            .names
            .values()
            .map(|h| (h.last_seen, h.name.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, name) in by_age.into_iter().take(MAX_NAMES / 10) {
            self.names.remove(&name);
        }
    }

    /// What is remembered about `name`.
    #[cfg(test)]
    pub fn name(&self, name: &str) -> Option<&NameHistory> {
        self.names.get(name)
    }

    /// The risk term a target resolved from `name` earns.
    pub fn name_terms(&self, name: Option<&str>) -> Option<Term> {
        name.and_then(|n| self.names.get(n))
            .filter(|h| h.alerts > 0)
            .map(|_| Term::NameSeenBefore)
    }

    /// The names' histories changed since the last call, for the store.
    pub fn take_name_changes(&mut self) -> Vec<NameHistory> {
        std::mem::take(&mut self.changed_names)
            .into_iter()
            .filter_map(|n| self.names.get(&n).cloned())
            .collect()
    }

    /// Apply `update` to `exe`'s history (a new one when unknown) and mark it changed.
    fn update(&mut self, exe: &str, update: impl FnOnce(&mut ExeHistory)) {
        if let Some(t) = self.exes.get_mut(exe) {
            update(&mut t.history);
            if !t.changed {
                t.changed = true;
                self.changed.push(exe.to_string());
            }
            return;
        }
        if self.exes.len() >= MAX_EXES {
            self.evict();
        }
        let mut history = ExeHistory {
            exe: exe.to_string(),
            ..Default::default()
        };
        update(&mut history);
        self.exes.insert(
            exe.to_string(),
            Tracked {
                history,
                changed: true,
            },
        );
        self.changed.push(exe.to_string());
    }

    /// Forget the tenth of executables started longest ago (never those alerted on).
    fn evict(&mut self) {
        let mut quiet: Vec<(u64, String)> = self
            .exes
            .values()
            .map(|t| &t.history)
            .filter(|h| h.alerts == 0 && h.respawns == 0)
            .map(|h| (h.last_seen, h.exe.clone()))
            .collect();
        quiet.sort_unstable();
        for (_, exe) in quiet.into_iter().take(MAX_EXES / 10) {
            self.exes.remove(&exe);
        }
    }

    /// `exe` was started at `now`.
    pub fn spawned(&mut self, exe: &str, now: SystemTime) {
        let secs = epoch_secs(now);
        let hour = secs / HOUR;
        self.update(exe, |h| {
            if h.hour != hour {
                h.hour = hour;
                h.spawns = 0;
            }
            h.spawns = h.spawns.saturating_add(1);
            h.peak_spawns = h.peak_spawns.max(h.spawns);
            h.last_seen = secs;
        });
    }

    /// An alert was raised on `exe`.
    pub fn alerted(&mut self, exe: &str) {
        self.update(exe, |h| h.alerts = h.alerts.saturating_add(1));
    }

    /// `exe` came back after being killed.
    pub fn respawned(&mut self, exe: &str) {
        self.update(exe, |h| h.respawns = h.respawns.saturating_add(1));
    }

    /// What is remembered about `exe`.
    pub fn get(&self, exe: &str) -> Option<&ExeHistory> {
        self.exes.get(exe).map(|t| &t.history)
    }

    /// The risk terms that apply to `culprit`.
    pub fn terms(&self, culprit: &Culprit) -> Vec<Term> {
        let mut terms = Vec::new();
        if let Some(h) = culprit.exe.as_deref().and_then(|e| self.get(e)) {
            if h.alerts > 0 {
                terms.push(Term::SeenBefore);
            }
            if h.respawns > 0 {
                terms.push(Term::Respawned);
            }
            if h.peak_spawns > HIGH_SPAWNS_PER_HOUR {
                terms.push(Term::HighSpawnCount);
            }
        }
        let named = patterns::miner_marker(&culprit.comm).is_some()
            || culprit
                .exe
                .as_deref()
                .is_some_and(|e| patterns::miner_marker(e).is_some());
        if named {
            terms.push(Term::MinerKeyword);
        }
        terms
    }

    /// The histories changed since the last call, for the store (one that was evicted in the
    /// meantime is gone).
    pub fn take_changes(&mut self) -> Vec<ExeHistory> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .filter_map(|exe| {
                let t = self.exes.get_mut(&exe)?;
                t.changed = false;
                Some(t.history.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::culprit;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn each_term_is_earned_and_worth_its_points() {
        let mut intel = Intel::default();
        let c = culprit(7, "worker", &[]);
        assert!(intel.terms(&c).is_empty());
        intel.alerted("/usr/bin/worker");
        assert_eq!(intel.terms(&c), [Term::SeenBefore]);
        intel.respawned("/usr/bin/worker");
        assert_eq!(intel.terms(&c), [Term::SeenBefore, Term::Respawned]);
        for _ in 0..=HIGH_SPAWNS_PER_HOUR {
            intel.spawned("/usr/bin/worker", at(10 * HOUR + 5));
        }
        assert_eq!(
            intel.terms(&c),
            [Term::SeenBefore, Term::Respawned, Term::HighSpawnCount]
        );
        let sum: u32 = intel.terms(&c).iter().map(|t| t.points()).sum();
        assert_eq!(sum, 25);
        let m = culprit(8, "xmrig", &[]);
        assert_eq!(intel.terms(&m), [Term::MinerKeyword]);
        assert_eq!(Term::MinerKeyword.points(), 10);
    }

    #[test]
    fn spawn_counts_are_per_hour_and_the_peak_stays() {
        let mut intel = Intel::default();
        for _ in 0..5 {
            intel.spawned("/bin/true", at(HOUR));
        }
        intel.spawned("/bin/true", at(2 * HOUR + 1));
        let h = intel.get("/bin/true").unwrap();
        assert_eq!((h.spawns, h.peak_spawns, h.hour), (1, 5, 2));
    }

    #[test]
    fn history_round_trips_through_its_rows() {
        let mut intel = Intel::default();
        intel.spawned("/tmp/x", at(100));
        intel.alerted("/tmp/x");
        let rows = intel.take_changes();
        assert_eq!(rows.len(), 1);
        assert!(intel.take_changes().is_empty(), "changes are taken once");
        let again = Intel::load(rows);
        let mut c = culprit(1, "x", &[]);
        c.exe = Some("/tmp/x".into());
        assert_eq!(again.terms(&c), [Term::SeenBefore]);
    }

    #[test]
    fn a_name_in_an_earlier_alert_earns_its_term_and_outlives_a_restart() {
        let mut intel = Intel::default();
        assert_eq!(intel.name_terms(Some("c2.example")), None);
        intel.alerted_name("c2.example", at(50));
        intel.alerted_name("c2.example", at(60));
        assert_eq!(
            intel.name_terms(Some("c2.example")),
            Some(Term::NameSeenBefore)
        );
        assert_eq!(Term::NameSeenBefore.points(), 10);
        assert_eq!(intel.name_terms(Some("other.example")), None);
        assert_eq!(intel.name_terms(None), None);
        let rows = intel.take_name_changes();
        assert_eq!(
            rows,
            [NameHistory {
                name: "c2.example".into(),
                alerts: 2,
                last_seen: 60
            }]
        );
        assert!(intel.take_name_changes().is_empty(), "taken once");
        let again = Intel::default().with_names(rows);
        assert_eq!(again.name("c2.example").map(|h| h.alerts), Some(2));
        assert_eq!(
            again.name_terms(Some("c2.example")),
            Some(Term::NameSeenBefore)
        );
    }

    #[test]
    fn remembered_names_are_bounded_and_the_oldest_go_first() {
        let mut intel = Intel::default();
        for i in 0..MAX_NAMES + 10 {
            intel.alerted_name(&format!("n{i}.example"), at(i as u64));
        }
        assert!(intel.names.len() <= MAX_NAMES);
        assert!(intel.name("n0.example").is_none());
        assert!(intel.name(&format!("n{}.example", MAX_NAMES + 9)).is_some());
    }

    #[test]
    fn memory_is_bounded_and_alerted_exes_stay() {
        let mut intel = Intel::default();
        intel.alerted("/keep");
        for i in 0..MAX_EXES + 10 {
            intel.spawned(&format!("/x/{i}"), at(i as u64));
        }
        assert!(intel.exes.len() <= MAX_EXES);
        assert!(intel.get("/keep").is_some());
        assert!(intel.get("/x/0").is_none(), "the oldest go first");
    }
}
