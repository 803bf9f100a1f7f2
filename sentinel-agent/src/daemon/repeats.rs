//! Repeats of open alerts, written once per loop round. Every record of a flood repeats the
//! same alert (one origin, one anomaly), and each version carries every target so far:
//! written one by one, a 10,000-address flood queued thousands of growing copies for the
//! store and the fleet's outbox at once (the agent's peak memory doubled, measured with
//! `cargo xtask bench-flood`). Only the latest version of each alert is kept until the end of
//! the round, and a newer version written meanwhile (a decision opened on it) cancels it, so
//! the stored row is the one the writes in order would have left.

use std::{cell::RefCell, collections::HashMap, sync::Arc};

use crate::event::Record;

/// The repeats waiting for the end of the loop round, by alert id.
#[derive(Debug, Default)]
pub struct Repeats(RefCell<HashMap<String, Arc<Record>>>);

impl Repeats {
    /// Alert `id` repeated: `record` replaces any version of it still waiting.
    pub fn defer(&self, id: String, record: Record) {
        self.0.borrow_mut().insert(id, Arc::new(record));
    }

    /// A newer version of alert `id` is being written: its waiting repeat must not follow.
    pub fn supersede(&self, id: &str) {
        if !self.0.borrow().is_empty() {
            self.0.borrow_mut().remove(id);
        }
    }

    /// The waiting repeats, to write now (none wait afterwards).
    pub fn take(&self) -> Vec<Arc<Record>> {
        if self.0.borrow().is_empty() {
            return Vec::new();
        }
        self.0.borrow_mut().drain().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::event::{Body, sample_alert};

    fn version(id: &str, count: u32) -> Record {
        let mut alert = sample_alert(id, "198.51.100.2");
        alert.count = count;
        Record::new(
            UNIX_EPOCH + Duration::from_secs(1),
            "h",
            Body::Alert(Box::new(alert)),
        )
    }

    fn counts(records: Vec<Arc<Record>>) -> Vec<(String, u32)> {
        let mut out: Vec<_> = records
            .iter()
            .map(|r| match &r.body {
                Body::Alert(a) => (a.id.clone(), a.count),
                _ => unreachable!(),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_flood_of_repeats_leaves_one_latest_version_per_alert() {
        let r = Repeats::default();
        for n in 1..=10_000 {
            r.defer("a1".into(), version("a1", n));
        }
        r.defer("a2".into(), version("a2", 2));
        assert_eq!(
            counts(r.take()),
            [("a1".to_string(), 10_000), ("a2".to_string(), 2)]
        );
        assert!(r.take().is_empty(), "nothing waits after a take");
    }

    #[test]
    fn a_newer_version_written_first_cancels_the_waiting_repeat() {
        let r = Repeats::default();
        r.defer("a1".into(), version("a1", 5));
        r.defer("a2".into(), version("a2", 3));
        r.supersede("a1");
        assert_eq!(counts(r.take()), [("a2".to_string(), 3)]);
        // A repeat after the newer version waits again.
        r.defer("a1".into(), version("a1", 6));
        assert_eq!(counts(r.take()), [("a1".to_string(), 6)]);
    }
}
