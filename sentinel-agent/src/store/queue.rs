//! The bounded channel from the event loop to the store writer. A flood of exec, connect or
//! cpu events must not grow the agent's memory without end while the disk catches up, and the
//! event loop must never wait for the disk: a send never blocks. When the queue is three
//! quarters full, routine events (exec, connect, cpu) are dropped and counted; the last
//! quarter is kept for alerts and decisions, which are dropped (and counted, and logged as
//! errors) only when the queue is entirely full. What was dropped shows in `sentinel status`
//! (`store.dropped`) and Prometheus (`sentinel_store_dropped_total`).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
    mpsc::{self, Receiver, RecvError, SyncSender, TryRecvError, TrySendError},
};

use tracing::{error, warn};

use super::Write;
use crate::event::{Body, Kind};

/// Writes the queue holds at most (an event is a few hundred bytes: a few MiB at most).
pub const QUEUE_MAX: usize = 16_384;

/// The store's counters, shared with `sentinel status` and Prometheus.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Writes waiting for the writer.
    pub queued: AtomicU64,
    /// Writes dropped because the queue was full.
    pub dropped: AtomicU64,
    /// New events committed to the store.
    pub written: AtomicU64,
    /// Routine events deleted to keep the store under `agent.max_db_mb`.
    pub evicted: AtomicU64,
    /// The store's size on disk (database and WAL), as last measured.
    pub bytes: AtomicU64,
    /// `agent.max_db_mb` in bytes.
    pub max_bytes: AtomicU64,
    /// The writer thread, woken early for an alert or a decision (see [`StoreTx::send`]).
    pub writer: std::sync::OnceLock<std::thread::Thread>,
}

/// Why a write was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// The queue was full: dropped and counted.
    Full,
    /// The writer has stopped.
    Stopped,
}

/// The event loop's end: never blocks.
#[derive(Clone)]
pub struct StoreTx {
    tx: SyncSender<Write>,
    stats: Arc<StoreStats>,
    /// Queued writes above which routine events are dropped.
    routine_max: u64,
}

/// The writer's end.
pub struct StoreRx {
    rx: Receiver<Write>,
    stats: Arc<StoreStats>,
}

/// A queue of `capacity` writes; routine events may fill three quarters of it.
pub fn channel(capacity: usize, stats: Arc<StoreStats>) -> (StoreTx, StoreRx) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let tx = StoreTx {
        tx,
        stats: stats.clone(),
        routine_max: (capacity as u64 * 3 / 4).max(1),
    };
    (tx, StoreRx { rx, stats })
}

/// Exec, connect and cpu events: what may be dropped under load, and evicted first.
pub fn is_routine(write: &Write) -> bool {
    match write {
        Write::Insert(r) => matches!(r.body.kind(), Kind::Exec | Kind::Connect | Kind::Cpu),
        Write::Update(_) => false,
    }
}

impl StoreTx {
    /// Queue `write` for the writer, or drop it (counted) when the queue is full.
    pub fn send(&self, write: Write) -> Result<(), NotQueued> {
        let routine = is_routine(&write);
        let queued = self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if routine && queued >= self.routine_max {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped(&write);
            return Err(NotQueued::Full);
        }
        match self.tx.try_send(write) {
            Ok(()) => {
                // Routine events wait for the writer's next batch; an alert or a decision is
                // committed at once, so a crash right after it was raised does not lose it.
                if !routine && let Some(writer) = self.stats.writer.get() {
                    writer.unpark();
                }
                Ok(())
            }
            Err(TrySendError::Full(write)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                self.dropped(&write);
                Err(NotQueued::Full)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Err(NotQueued::Stopped)
            }
        }
    }

    /// Count a dropped write; say so on the first and every 10,000th, and always for an
    /// alert or a decision.
    fn dropped(&self, write: &Write) {
        let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let (Write::Insert(record) | Write::Update(record)) = write;
        if matches!(record.body, Body::Alert(_) | Body::Decision(_)) {
            error!(
                kind = record.body.kind().as_str(),
                dropped = n,
                "the store cannot keep up: an alert or decision event was not stored (the decision ledger has it)"
            );
        } else if n == 1 || n.is_multiple_of(10_000) {
            warn!(
                dropped = n,
                "the store cannot keep up: dropping exec/connect/cpu events"
            );
        }
    }
}

#[cfg(feature = "sensors-only")]
impl StoreTx {
    /// The `sensors-only` benchmark build: `n` records discarded, counted as written.
    pub fn count_as_written(&self, n: usize) {
        self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl StoreRx {
    /// The counters this queue keeps.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// The next write, waiting for one; `Err` once every sender is gone and the queue empty.
    pub fn recv(&self) -> Result<Write, RecvError> {
        let write = self.rx.recv()?;
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        Ok(write)
    }

    /// The next write if one is waiting.
    pub fn try_recv(&self) -> Result<Write, TryRecvError> {
        let write = self.rx.try_recv()?;
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        Ok(write)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::event::{AlertBody, CpuBody, Record, sample_alert};

    fn cpu(pid: u32) -> Write {
        Write::Insert(Arc::new(Record::new(
            UNIX_EPOCH + Duration::from_secs(1),
            "h",
            Body::Cpu(CpuBody {
                pid,
                comm: "x".into(),
                cpu_pct: 1.0,
                container: None,
            }),
        )))
    }

    fn alert(id: &str) -> Write {
        Write::Insert(Arc::new(Record::new(
            UNIX_EPOCH,
            "h",
            Body::Alert(Box::new(AlertBody {
                ..sample_alert(id, "198.51.100.2")
            })),
        )))
    }

    /// The writer waits out its batch window parked; an alert wakes it, a routine event not.
    #[test]
    fn an_alert_wakes_the_parked_writer() {
        let stats = Arc::new(StoreStats::default());
        let (tx, _rx) = channel(16, stats.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn({
            let stats = stats.clone();
            move || {
                stats.writer.set(std::thread::current()).unwrap();
                ready_tx.send(()).unwrap();
                let start = std::time::Instant::now();
                std::thread::park_timeout(Duration::from_secs(60));
                start.elapsed()
            }
        });
        ready_rx.recv().unwrap();
        tx.send(cpu(1)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!writer.is_finished(), "a routine event woke the writer");
        tx.send(alert("a1")).unwrap();
        let parked = writer.join().unwrap();
        assert!(
            parked < Duration::from_secs(30),
            "parked {parked:?}: the alert did not wake it"
        );
    }

    #[test]
    fn a_full_queue_drops_routine_events_first_and_counts_everything() {
        let stats = Arc::new(StoreStats::default());
        let (tx, rx) = channel(8, stats.clone());
        // Routine events take 6 of the 8 places.
        let sent = (0..20).filter(|i| tx.send(cpu(*i)).is_ok()).count();
        assert_eq!(sent, 6);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 14);
        // Alerts still get in, up to the capacity.
        assert!(tx.send(alert("a1")).is_ok());
        assert!(tx.send(alert("a2")).is_ok());
        assert_eq!(tx.send(alert("a3")), Err(NotQueued::Full));
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 15);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 8);
        // The writer drains: room again, and the count follows.
        for _ in 0..8 {
            rx.try_recv().unwrap();
        }
        assert_eq!(stats.queued.load(Ordering::Relaxed), 0);
        assert!(tx.send(cpu(99)).is_ok());
        drop(rx);
        assert_eq!(tx.send(cpu(100)), Err(NotQueued::Stopped));
        assert_eq!(
            stats.queued.load(Ordering::Relaxed),
            1,
            "the one still queued"
        );
    }
}
