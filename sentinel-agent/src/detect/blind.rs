//! `blind`: a sensor lost events because its ring buffer was full. Busy hosts can do that,
//! but so can an attacker who floods the exec or connect sensor (thousands of short
//! processes or connections) so that the one that matters is never seen. Lost events are
//! therefore a signal of their own: high, T1562 Impair Defenses. The kernel keeps a lost
//! counter per sensor; the agent reads them every second and this detector finds the
//! sensors whose count grew. It is rate-limited twice: at most one finding per sensor per
//! read, and repeats within `alerts.dedup_window` fold into one alert whose `count` goes up.

use super::{Anomaly, Culprit, Finding};

/// Remembers each sensor's lost count at the last read.
#[derive(Debug, Default)]
pub struct Blind {
    last: Vec<(&'static str, u64)>,
}

impl Blind {
    pub fn new() -> Self {
        Self::default()
    }

    /// The lost counts now, per sensor: a finding for every sensor whose count grew.
    pub fn observe(&mut self, counts: &[(&'static str, u64)]) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (index, &(sensor, lost)) in counts.iter().enumerate() {
            let before = match self.last.iter_mut().find(|(name, _)| *name == sensor) {
                Some((_, last)) => std::mem::replace(last, lost),
                None => {
                    self.last.push((sensor, lost));
                    0
                }
            };
            // A counter that went down (maps re-created) is a new baseline, not a loss.
            if lost > before {
                findings.push(finding(sensor, index as u32, lost - before, lost));
            }
        }
        findings
    }
}

/// De-duplication key of the persistence watcher's overflow (past every `SENSORS` index).
const PERSISTENCE_QUEUE: u32 = 100;

/// The persistence watcher's kernel queue (fanotify, 16,384 events) overflowed: writes to
/// persistence locations went unseen. Flooding a watched directory is how to hide one.
pub fn queue_overflow() -> Finding {
    let mut f = finding("persistence", PERSISTENCE_QUEUE, 0, 0);
    f.detail = "the persistence sensor's kernel queue overflowed: writes to persistence \
                locations (cron, units, authorized_keys, …) went unseen. Someone may be \
                flooding a watched directory to hide one"
        .into();
    f
}

/// The finding for `sensor` (its index in `SENSORS`, which keys de-duplication).
fn finding(sensor: &str, index: u32, new: u64, total: u64) -> Finding {
    Finding {
        domain: None,
        anomaly: Anomaly::Blind,
        // No process to blame: the flood may come from anywhere. pid 0 never matches a
        // process, so no kill and no decision can follow.
        culprit: Culprit {
            pid: 0,
            start: 0,
            comm: format!("{sensor} sensor"),
            exe: None,
            uid: u32::MAX,
            ancestry: Vec::new(),
            container: None,
        },
        target: None,
        country: None,
        detail: format!(
            "the {sensor} sensor lost {new} events ({total} since start): its ring buffer was \
             full. Someone may be flooding it to hide what they run; if this host is simply \
             busy, raise agent.ring_buffer_kib"
        ),
        subject: index,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::detect::{Alerts, Outcome};

    #[test]
    fn a_persistence_queue_overflow_is_blind_about_no_process() {
        let f = queue_overflow();
        assert_eq!((f.anomaly, f.culprit.pid), (Anomaly::Blind, 0));
        assert!(f.detail.contains("persistence sensor"), "{}", f.detail);
    }

    #[test]
    fn growth_of_a_lost_counter_is_a_finding() {
        let mut blind = Blind::new();
        assert!(blind.observe(&[("exec", 0), ("connect", 0)]).is_empty());
        let found = blind.observe(&[("exec", 120), ("connect", 0)]);
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!(f.anomaly, Anomaly::Blind);
        assert_eq!((f.culprit.pid, f.culprit.comm.as_str()), (0, "exec sensor"));
        assert!(f.target.is_none());
        assert!(
            f.detail.contains("lost 120 events (120 since start)"),
            "{}",
            f.detail
        );
        // Unchanged: nothing. Grown again: only the growth is reported.
        assert!(blind.observe(&[("exec", 120), ("connect", 0)]).is_empty());
        let found = blind.observe(&[("exec", 150), ("connect", 7)]);
        assert_eq!(found.len(), 2);
        assert!(found[0].detail.contains("lost 30 events (150 since start)"));
        assert_eq!(found[1].culprit.comm, "connect sensor");
        assert_eq!(found[1].subject, 1);
    }

    #[test]
    fn losses_already_counted_at_the_first_read_are_reported() {
        let mut blind = Blind::new();
        let found = blind.observe(&[("exec", 5)]);
        assert_eq!(found.len(), 1);
        assert!(
            blind.observe(&[("exec", 2)]).is_empty(),
            "a reset is no loss"
        );
    }

    #[test]
    fn a_lasting_flood_is_one_alert_with_a_count() {
        let mut blind = Blind::new();
        let mut alerts = Alerts::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let mut new = Vec::new();
        for i in 1..=30u64 {
            for f in blind.observe(&[("exec", i * 100), ("connect", 0)]) {
                match alerts.raise(f, t0 + Duration::from_secs(i)) {
                    Outcome::New(a) => new.push(a),
                    Outcome::Repeat(a, _) => assert_eq!(a.count as u64, i),
                    Outcome::Folded(..) => panic!("one alert is within any budget"),
                }
            }
        }
        assert_eq!(new.len(), 1, "one alert for 30 lost batches");
        let a = &new[0];
        assert_eq!((a.anomaly.as_str(), a.severity.as_str()), ("blind", "high"));
        assert_eq!(a.mitre.technique, "T1562");
        assert_eq!(a.risk, 50, "high, no process, not root");
        assert_eq!(a.state, "none");
        // Another sensor going blind is another alert.
        let f = blind.observe(&[("exec", 3000), ("connect", 9)]);
        assert!(
            matches!(alerts.raise(f[0].clone(), t0), Outcome::New(ref a) if a.comm == "connect sensor")
        );
    }
}
