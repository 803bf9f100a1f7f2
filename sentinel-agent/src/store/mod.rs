//! The SQLite event store: every event the agent emits, in one WAL-mode database file,
//! written in batched transactions by one thread so the event loop never waits on disk. The
//! way in is a bounded queue ([`queue`]) and the file has a size cap ([`cap`]): a flood costs
//! routine events, never memory without end, a full disk, alerts or decisions.

pub mod body;
pub mod cap;
pub mod pack;
pub mod queue;
mod write;

pub mod history;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags};
use tracing::{debug, error, warn};

use crate::event::{Kind, Record};
pub use queue::{QUEUE_MAX, StoreRx, StoreStats, StoreTx};

/// One change for the writer thread.
#[derive(Debug, Clone)]
pub enum Write {
    /// A new event.
    Insert(Arc<Record>),
    /// A new version of a stored alert (same id): its count or state changed.
    Update(Arc<Record>),
}

/// The condition of the kind index (`events_rare`): every kind but exec and connect. A query
/// for the other kinds repeats it so that SQLite uses the index.
pub const RARE_KINDS: &str = "WHERE kind NOT IN ('exec', 'connect')";

/// Largest batch written in one transaction.
const BATCH_MAX: usize = 2000;
/// Longest a routine event waits before its batch is committed (an alert or a decision wakes
/// the writer at once). Each commit rewrites the table's and the indexes' last pages into the
/// WAL: fewer, larger commits write less per event.
const BATCH_WINDOW: Duration = Duration::from_millis(250);
/// How often old events are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often the writer says that the cap cannot be kept (only alerts and decisions left).
const OVER_CAP_WARN_EVERY: Duration = Duration::from_secs(3600);

/// What the writer keeps the store within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events older than this are deleted (`agent.retention`).
    pub retention: Duration,
    /// The size cap in bytes (`agent.max_db_mb`).
    pub max_bytes: u64,
}

/// 2: exec and connect bodies may be binary ([`body`]); a version-1 store is taken over as it
/// is (its JSON rows stay readable), and an older agent refuses a version-2 one by name.
/// 3: a row may hold several events ([`pack`]), counted in its `n` column (added to a version
/// 1 or 2 store, where every row holds one).
const SCHEMA_VERSION: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("event store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("no event store at {0} (has the agent ever run with this config?)")]
    Missing(PathBuf),
    #[error("event store {path} has schema version {found}, this sentinel knows {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: i64 },
    #[error("event store {path}: bad stored event #{id}: {source}")]
    Corrupt {
        path: PathBuf,
        id: i64,
        source: body::BodyError,
    },
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The size cap in bytes (0 for a read-only store).
    max_bytes: u64,
    /// The id the next event written gets (a packed row takes one per event).
    next_id: i64,
    /// When the cap must be checked again ([`cap::Pacing`]).
    pacing: cap::Pacing,
    /// The writer's buffers.
    rows: write::Rows,
}

impl Store {
    /// Open (creating if needed) the store for writing, kept under `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.into(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|e| sql(path, e))?;
        let mut store = Self {
            conn,
            path: path.into(),
            max_bytes,
            next_id: 1,
            pacing: cap::Pacing::default(),
            rows: write::Rows::default(),
        };
        store.init()?;
        store.next_id = store.first_free_id()?;
        Ok(store)
    }

    /// Open an existing store read-only (the CLI's `tail`).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.into()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql(path, e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| sql(path, e))?;
        let store = Self {
            conn,
            path: path.into(),
            max_bytes: 0,
            next_id: 0,
            pacing: cap::Pacing::default(),
            rows: write::Rows::default(),
        };
        store.check_version()?;
        Ok(store)
    }

    fn init(&self) -> Result<(), StoreError> {
        let p = &self.path;
        self.conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| sql(p, e))?;
        // Before any table exists: incremental auto-vacuum cannot be turned on later.
        cap::prepare(&self.conn, self.max_bytes).map_err(|e| sql(p, e))?;
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| sql(p, e))?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| sql(p, e))?;
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| sql(p, e))?;
        if (0..SCHEMA_VERSION).contains(&version) {
            self.migrate().map_err(|e| sql(p, e))?;
        }
        // Indexes cost a b-tree insert per event. Stores made before 0.2 carry one on the
        // timestamp (only the hourly prune used it; it walks ids now) and one on every kind;
        // the kind index now leaves out exec and connect, the bulk of the events, whose
        // queries find them walking ids from the newest (see `recent`).
        self.conn
            .execute_batch(&format!(
                "DROP INDEX IF EXISTS events_ts;
                 DROP INDEX IF EXISTS events_kind;
                 CREATE INDEX IF NOT EXISTS events_rare ON events(kind, id) {RARE_KINDS};
                 CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
            ))
            .map_err(|e| sql(p, e))?;
        self.check_version()
    }

    /// Create the table, or bring a version 1 or 2 one to this version: a column counting the
    /// events of each row (1 in every row written before), in one transaction.
    fn migrate(&self) -> rusqlite::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                 id    INTEGER PRIMARY KEY,
                 -- a packed row's: its newest event's
                 ts_ns INTEGER NOT NULL,
                 kind  TEXT NOT NULL,
                 pid   INTEGER NOT NULL,
                 -- an alert's id, so repeats can update its count
                 ref   TEXT,
                 body  TEXT NOT NULL,
                 -- events in the row: they have the ids id .. id + n
                 n     INTEGER NOT NULL DEFAULT 1
             );
             CREATE INDEX IF NOT EXISTS events_ref ON events(ref) WHERE ref IS NOT NULL;",
        )?;
        let counted: bool = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'n'",
            [],
            |r| r.get::<_, i64>(0).map(|c| c > 0),
        )?;
        if !counted {
            tx.execute_batch("ALTER TABLE events ADD COLUMN n INTEGER NOT NULL DEFAULT 1")?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()
    }

    /// The id after the newest row's events, or after the last id handed out before
    /// retention or the cap emptied the table ([`Self::remember_next_id`]): ids never go back,
    /// or the fleet, whose cursor is the last id it shipped, would skip the new events.
    fn first_free_id(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT max(
                     coalesce((SELECT id + n FROM events ORDER BY id DESC LIMIT 1), 1),
                     coalesce((SELECT value FROM store_meta WHERE key = 'next_id'), 1))",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql(&self.path, e))
    }

    /// Keep the next id where a deletion of the newest rows cannot take it (after retention
    /// or the cap deleted rows; a quiet host may lose every row to retention).
    fn remember_next_id(&self) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO store_meta (key, value) VALUES ('next_id', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            )
            .and_then(|mut s| s.execute([self.next_id]))
            .map(|_| ())
            .map_err(|e| sql(&self.path, e))
    }

    fn check_version(&self) -> Result<(), StoreError> {
        let found: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| sql(&self.path, e))?;
        if found != SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path: self.path.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Apply `writes` in one transaction, in order ([`write`]: runs of exec or connect
    /// events share rows).
    pub fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let mut next_id = self.next_id;
        let bytes = write::apply(&self.conn, writes, &mut self.rows, &mut next_id)
            .map_err(|e| sql(&self.path, e))?;
        self.pacing.wrote(bytes);
        // Only once committed: a batch that failed is written again with the same ids.
        self.next_id = next_id;
        Ok(())
    }

    /// Insert `records` in one transaction.
    #[cfg(test)]
    pub fn insert(&mut self, records: &[Arc<Record>]) -> Result<(), StoreError> {
        let writes: Vec<Write> = records.iter().cloned().map(Write::Insert).collect();
        self.apply(&writes)
    }

    /// The newest `limit` events of the given kinds (all kinds when empty), oldest first. The
    /// oldest packed row read may be cut: only its newest events are wanted.
    pub fn recent(&self, kinds: &[Kind], limit: usize) -> Result<Vec<Record>, StoreError> {
        let p = &self.path;
        let mut query = String::from("SELECT id, ts_ns, n, body FROM events");
        if !kinds.is_empty() {
            let list: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
            query.push_str(&format!(" WHERE kind IN ({})", list.join(",")));
            if !kinds
                .iter()
                .any(|k| matches!(k, Kind::Exec | Kind::Connect))
            {
                query.push_str(&RARE_KINDS.replacen("WHERE", " AND", 1));
            }
        }
        // Every row holds at least one event: `limit` rows are enough.
        query.push_str(" ORDER BY id DESC LIMIT ?1");
        let mut stmt = self.conn.prepare(&query).map_err(|e| sql(p, e))?;
        let mut rows = stmt
            .query([limit.min(i64::MAX as usize) as i64])
            .map_err(|e| sql(p, e))?;
        let mut out = Vec::new();
        while out.len() < limit
            && let Some(row) = rows.next().map_err(|e| sql(p, e))?
        {
            let events = read_row(p, row)?;
            // Newest first, as the rows come.
            let wanted = limit - out.len();
            out.extend(events.into_iter().rev().take(wanted));
        }
        out.reverse();
        Ok(out)
    }

    /// Delete the rows before the first one stamped at or after `cutoff` (ids follow the
    /// order events happened in, so this walks the old end of the table without a timestamp
    /// index); returns how many events they held. A packed row is stamped with its newest
    /// event, so a row holding any event at or after the cutoff stays, whole.
    pub fn prune_before(&self, cutoff: SystemTime) -> Result<usize, StoreError> {
        let ns = cutoff
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let p = &self.path;
        let mut delete = self
            .conn
            .prepare(
                "DELETE FROM events WHERE id < coalesce(
                     (SELECT id FROM events WHERE ts_ns >= ?1 ORDER BY id LIMIT 1),
                     (SELECT max(id) + 1 FROM events))
                 RETURNING n",
            )
            .map_err(|e| sql(p, e))?;
        let deleted = sum_returned(&mut delete, [ns]).map_err(|e| sql(p, e))?;
        if deleted > 0 {
            self.remember_next_id()?;
        }
        Ok(deleted)
    }
}

/// The events of one row (`id, ts_ns, n, body`), oldest first.
fn read_row(path: &Path, row: &rusqlite::Row<'_>) -> Result<Vec<Record>, StoreError> {
    let id: i64 = row.get(0).map_err(|e| sql(path, e))?;
    let ts_ns: i64 = row.get(1).map_err(|e| sql(path, e))?;
    let n: i64 = row.get(2).map_err(|e| sql(path, e))?;
    let value = row.get_ref(3).map_err(|e| sql(path, e))?;
    let events = pack::decode_row(ts_ns, n, value).map_err(|source| StoreError::Corrupt {
        path: path.into(),
        id,
        source,
    })?;
    Ok(events)
}

/// Run a `DELETE … RETURNING n` to the end: the events the deleted rows held.
pub(crate) fn sum_returned(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    let mut rows = stmt.query(params)?;
    let mut events = 0;
    while let Some(row) = rows.next()? {
        events += row.get::<_, i64>(0)?.max(0) as usize;
    }
    Ok(events)
}

fn sql(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.into(),
        source,
    }
}

/// Run the writer on its own thread until every sender is dropped; it commits what is left
/// before returning, so a clean stop loses nothing. After each batch it keeps the store under
/// its cap ([`cap::enforce`]) and publishes the size in `stats`.
pub fn spawn_writer(mut store: Store, rx: StoreRx, limits: Limits) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let stats = rx.stats().clone();
            stats.max_bytes.store(limits.max_bytes, Ordering::Relaxed);
            let mut last_prune = Instant::now() - PRUNE_EVERY;
            let mut over_cap_warned: Option<Instant> = None;
            let mut batch = Vec::with_capacity(BATCH_MAX);
            let mut backlog = false;
            let _ = stats.writer.set(thread::current());
            while let Ok(first) = rx.recv() {
                let urgent = !queue::is_routine(&first);
                batch.push(first);
                // Wait out the window parked rather than on the channel: a sender wakes a
                // waiting receiver on every message, and at thousands of events a second
                // those wake-ups would cost more than the writes. An alert or a decision
                // unparks the writer (it is written at once); with a backlog, write on.
                if !backlog && !urgent {
                    thread::park_timeout(BATCH_WINDOW);
                }
                while batch.len() < BATCH_MAX {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                backlog = batch.len() == BATCH_MAX;
                if write_with_retry(&mut store, &batch) {
                    let new = batch
                        .iter()
                        .filter(|w| matches!(w, Write::Insert(_)))
                        .count();
                    stats.written.fetch_add(new as u64, Ordering::Relaxed);
                }
                batch.clear();
                store.keep_under_cap(&stats, &mut over_cap_warned);
                if last_prune.elapsed() >= PRUNE_EVERY {
                    last_prune = Instant::now();
                    match store.prune_before(SystemTime::now() - limits.retention) {
                        Ok(n) if n > 0 => debug!(deleted = n, "pruned old events"),
                        Ok(_) => {}
                        Err(e) => warn!("pruning old events failed: {e}"),
                    }
                }
            }
        })
        .expect("spawn store thread")
}

impl Store {
    /// Evict what the cap requires, count it, and publish the size on disk. The cap is
    /// checked when what was written since the last check could have reached it
    /// ([`cap::Pacing`]).
    fn keep_under_cap(&mut self, stats: &StoreStats, warned: &mut Option<Instant>) {
        if self.pacing.can_wait() {
            stats
                .bytes
                .store(cap::on_disk(&self.path), Ordering::Relaxed);
            return;
        }
        let live = match cap::check(&self.conn, self.max_bytes) {
            Ok(checked) => {
                self.pacing.checked(self.max_bytes, checked.live);
                if checked.evicted > 0 {
                    if let Err(e) = self.remember_next_id() {
                        warn!("{e}");
                    }
                    stats
                        .evicted
                        .fetch_add(checked.evicted as u64, Ordering::Relaxed);
                    debug!(
                        evicted = checked.evicted,
                        "store at agent.max_db_mb: oldest routine events deleted"
                    );
                }
                checked.live
            }
            Err(e) => {
                warn!("keeping the store under agent.max_db_mb failed: {e}");
                self.pacing = cap::Pacing::default();
                0
            }
        };
        let bytes = cap::on_disk(&self.path);
        stats.bytes.store(bytes, Ordering::Relaxed);
        if live > self.max_bytes && warned.is_none_or(|t| t.elapsed() >= OVER_CAP_WARN_EVERY) {
            *warned = Some(Instant::now());
            warn!(
                bytes,
                max_bytes = self.max_bytes,
                "the store is over agent.max_db_mb with no routine event left to evict: \
                 alerts and decisions are kept; raise agent.max_db_mb or lower agent.retention"
            );
        }
    }
}

/// Apply `batch`, retrying a failure a few times; whether it was written.
fn write_with_retry(store: &mut Store, batch: &[Write]) -> bool {
    for attempt in 1..=5 {
        match store.apply(batch) {
            Ok(()) => return true,
            Err(e) if attempt < 5 => {
                warn!(
                    "writing {} events failed (attempt {attempt}): {e}",
                    batch.len()
                );
                thread::sleep(Duration::from_millis(100 * attempt));
            }
            Err(e) => error!(
                "dropping {} events: the store refuses them: {e}",
                batch.len()
            ),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, CpuBody};

    /// A cap no test reaches.
    const BIG: u64 = 1 << 40;

    fn alert(id: &str, count: u32) -> Arc<Record> {
        use crate::event::{AlertBody, sample_alert};
        Arc::new(Record::new(
            UNIX_EPOCH + Duration::from_secs(1),
            "h",
            Body::Alert(Box::new(AlertBody {
                count,
                ..sample_alert(id, "203.0.113.9")
            })),
        ))
    }

    fn cpu(pid: u32, at_ms: u64) -> Arc<Record> {
        Arc::new(Record::new(
            UNIX_EPOCH + Duration::from_millis(at_ms),
            "h",
            Body::Cpu(CpuBody {
                pid,
                comm: "x".into(),
                cpu_pct: 12.5,
                container: None,
            }),
        ))
    }

    fn exec_record(pid: u32, at_ms: u64) -> Record {
        Record::new(
            UNIX_EPOCH + Duration::from_millis(at_ms),
            "h",
            Body::Exec(crate::event::ExecBody {
                pid,
                ppid: 1,
                uid: 0,
                comm: "sh".into(),
                filename: "/bin/sh".into(),
                argv: vec!["sh".into(), "-c".into(), "id".into()],
                ancestors: vec!["nginx".into()],
                container: None,
            }),
        )
    }

    #[test]
    fn writes_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/sentinel.db");
        let mut store = Store::open(&path, BIG).unwrap();
        store
            .insert(&[cpu(1, 1000), cpu(2, 2000), cpu(3, 3000)])
            .unwrap();
        let ro = Store::open_read_only(&path).unwrap();
        let got = ro.recent(&[], 2).unwrap();
        assert_eq!(got.iter().map(|r| r.body.pid()).collect::<Vec<_>>(), [2, 3]);
        assert!(ro.recent(&[Kind::Exec], 10).unwrap().is_empty());
        assert_eq!(ro.recent(&[Kind::Cpu], 10).unwrap().len(), 3);
    }

    #[test]
    fn writer_thread_flushes_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let stats = Arc::new(StoreStats::default());
        let (tx, rx) = queue::channel(QUEUE_MAX, stats.clone());
        let handle = spawn_writer(
            Store::open(&path, BIG).unwrap(),
            rx,
            Limits {
                retention: Duration::from_secs(86400 * 365 * 100),
                max_bytes: BIG,
            },
        );
        for i in 0..5000 {
            tx.send(Write::Insert(cpu(i, 1_000_000 + i as u64)))
                .unwrap();
        }
        drop(tx);
        handle.join().unwrap();
        assert_eq!(
            stats.written.load(Ordering::Relaxed),
            5000,
            "committed, counted"
        );
        let ro = Store::open_read_only(&path).unwrap();
        assert_eq!(ro.recent(&[], 10_000).unwrap().len(), 5000);
    }

    /// The writer keeps the smallest cap the config allows, and says what it did.
    #[test]
    fn writer_keeps_the_cap_and_counts_evictions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let max_bytes = 16 * 1024 * 1024;
        let stats = Arc::new(StoreStats::default());
        let (tx, rx) = queue::channel(QUEUE_MAX, stats.clone());
        let limits = Limits {
            retention: Duration::from_secs(86400 * 365 * 100),
            max_bytes,
        };
        let handle = spawn_writer(Store::open(&path, max_bytes).unwrap(), rx, limits);
        let padding = "x".repeat(1000);
        let mut sent = 0;
        for i in 0..40_000u32 {
            let record = Record::new(
                UNIX_EPOCH + Duration::from_millis(i as u64),
                "h",
                Body::Cpu(CpuBody {
                    pid: i,
                    comm: padding.clone(),
                    cpu_pct: 1.0,
                    container: None,
                }),
            );
            // A full queue drops: wait for room, as a steady (not flooding) source would.
            while tx.send(Write::Insert(Arc::new(record.clone()))).is_err() {
                thread::sleep(Duration::from_millis(5));
            }
            sent += 1;
        }
        drop(tx);
        handle.join().unwrap();
        let evicted = stats.evicted.load(Ordering::Relaxed);
        let bytes = stats.bytes.load(Ordering::Relaxed);
        eprintln!("{sent} events of ~1 KiB into a 16 MiB store: {evicted} evicted, {bytes} bytes");
        assert!(evicted > 10_000, "{evicted}");
        assert!(bytes > max_bytes / 2 && bytes <= max_bytes, "{bytes}");
        assert!(cap::on_disk(&path) <= max_bytes);
        assert_eq!(stats.max_bytes.load(Ordering::Relaxed), max_bytes);
        let left = Store::open_read_only(&path)
            .unwrap()
            .recent(&[], 100_000)
            .unwrap();
        assert_eq!(left.len() as u64, sent - evicted);
    }

    #[test]
    fn alert_updates_replace_the_stored_alert() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        store
            .apply(&[Write::Insert(alert("a1", 1)), Write::Insert(alert("a2", 1))])
            .unwrap();
        store
            .apply(&[Write::Update(alert("a1", 2)), Write::Update(alert("a1", 3))])
            .unwrap();
        let got = store.recent(&[Kind::Alert], 10).unwrap();
        let counts: Vec<_> = got
            .iter()
            .map(|r| match &r.body {
                Body::Alert(a) => (a.id.clone(), a.count),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(counts, [("a1".to_string(), 3), ("a2".to_string(), 1)]);
    }

    #[test]
    fn prunes_old_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        store.insert(&[cpu(1, 1000), cpu(2, 5000)]).unwrap();
        let n = store
            .prune_before(UNIX_EPOCH + Duration::from_millis(2000))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(store.recent(&[], 10).unwrap()[0].body.pid(), 2);
    }

    /// A store made before 0.2 loses its timestamp and all-kinds indexes for the partial one,
    /// and a query for alerts uses it.
    #[test]
    fn old_indexes_give_way_to_the_partial_kind_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Store::open(&path, BIG).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP INDEX events_rare;
             CREATE INDEX events_kind ON events(kind, id);
             CREATE INDEX events_ts ON events(ts_ns);",
        )
        .unwrap();
        drop(conn);
        let mut store = Store::open(&path, BIG).unwrap();
        store.insert(&[cpu(1, 1000), alert("a1", 1)]).unwrap();
        let names: Vec<String> = store
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(names.contains(&"events_rare".to_string()), "{names:?}");
        assert!(
            !names.iter().any(|n| n == "events_kind" || n == "events_ts"),
            "{names:?}"
        );
        let plan: String = store
            .conn
            .query_row(
                &format!(
                    "EXPLAIN QUERY PLAN SELECT id FROM events WHERE kind IN ('alert') \
                     {} ORDER BY id DESC",
                    RARE_KINDS.replacen("WHERE", "AND", 1)
                ),
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("events_rare"), "{plan}");
        assert_eq!(store.recent(&[Kind::Alert], 10).unwrap().len(), 1);
        assert_eq!(store.recent(&[Kind::Cpu], 10).unwrap().len(), 1);
    }

    /// A store written by an agent that kept every body as JSON (schema 1) is taken over: its
    /// rows read back beside new binary ones, and an agent that only knows schema 1 would
    /// now refuse the file by name instead of misreading a blob.
    #[test]
    fn a_json_store_is_taken_over_and_reads_back_beside_binary_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Store::open(&path, BIG).unwrap());
        let old = Record::new(
            UNIX_EPOCH + Duration::from_millis(5),
            "h",
            Body::Cpu(crate::event::CpuBody {
                pid: 1,
                comm: "old".into(),
                cpu_pct: 1.0,
                container: None,
            }),
        );
        let old_exec = exec_record(2, 6);
        let conn = Connection::open(&path).unwrap();
        for r in [&old, &old_exec] {
            conn.execute(
                "INSERT INTO events (ts_ns, kind, pid, ref, body) VALUES (?1, ?2, ?3, NULL, ?4)",
                rusqlite::params![
                    r.ts_ns(),
                    r.body.kind().as_str(),
                    r.body.pid(),
                    serde_json::to_string(r).unwrap()
                ],
            )
            .unwrap();
        }
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let mut store = Store::open(&path, BIG).unwrap();
        let new_exec = exec_record(3, 7);
        store.insert(&[Arc::new(new_exec.clone())]).unwrap();
        let all = store.recent(&[], 10).unwrap();
        assert_eq!(all, vec![old, old_exec, new_exec]);
        let (version, blob): (i64, String) = (
            store
                .conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap(),
            store
                .conn
                .query_row("SELECT typeof(body) FROM events WHERE pid = 3", [], |r| {
                    r.get(0)
                })
                .unwrap(),
        );
        assert_eq!((version, blob.as_str()), (SCHEMA_VERSION, "blob"));
        drop(store);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(&path, BIG)
            .err()
            .expect("a newer schema is refused");
        assert!(err.to_string().contains("schema version 4"), "{err}");
    }

    #[test]
    fn multi_row_inserts_keep_order_and_interleaved_updates() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        // An alert, a run longer than one multi-row insert, its update, then a run of one
        // whole chunk and a remainder.
        let n = write::ROWS_PER_INSERT as u32;
        let mut writes = vec![Write::Insert(alert("a1", 1))];
        writes.extend((0..40).map(|i| Write::Insert(cpu(100 + i, 1000 + u64::from(i)))));
        writes.push(Write::Update(alert("a1", 7)));
        writes.extend((40..40 + n + 3).map(|i| Write::Insert(cpu(100 + i, 1000 + u64::from(i)))));
        store.apply(&writes).unwrap();
        let all = store.recent(&[], 1000).unwrap();
        assert_eq!(all.len(), (1 + 40 + n + 3) as usize);
        let pids: Vec<u32> = all.iter().skip(1).map(|r| r.body.pid()).collect();
        let want: Vec<u32> = (100..100 + 40 + n + 3).collect();
        assert_eq!(pids, want, "stored in the order written");
        match &all[0].body {
            Body::Alert(a) => assert_eq!((a.id.as_str(), a.count), ("a1", 7)),
            other => panic!("{other:?}"),
        }
    }

    /// Retention may empty the table on a quiet host: the ids after a restart still follow
    /// the last one handed out (the fleet ships by id and would skip lower ones).
    #[test]
    fn ids_never_go_back_after_the_table_was_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let max_id = |path: &Path| -> i64 {
            Connection::open(path)
                .unwrap()
                .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
                .unwrap()
        };
        {
            let mut store = Store::open(&path, BIG).unwrap();
            store
                .insert(&[cpu(1, 1000), cpu(2, 1500), cpu(3, 1600)])
                .unwrap();
            assert_eq!(max_id(&path), 3);
            let at = UNIX_EPOCH + Duration::from_millis(9000);
            assert_eq!(store.prune_before(at).unwrap(), 3);
            assert_eq!(max_id(&path), 0);
        }
        let mut store = Store::open(&path, BIG).unwrap();
        store.insert(&[cpu(4, 10_000)]).unwrap();
        assert_eq!(max_id(&path), 4, "the next id, not 1 again");
    }

    #[test]
    fn prune_takes_all_or_nothing_at_the_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        store.insert(&[cpu(1, 1000), cpu(2, 1500)]).unwrap();
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(store.prune_before(at(500)).unwrap(), 0);
        assert_eq!(store.prune_before(at(9000)).unwrap(), 2);
        assert!(store.recent(&[], 10).unwrap().is_empty());
        assert_eq!(
            store.prune_before(at(9000)).unwrap(),
            0,
            "an empty store prunes nothing"
        );
    }

    #[test]
    fn missing_store_is_a_clear_error() {
        let err = Store::open_read_only(Path::new("/nonexistent/s.db"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/s.db"), "{err}");
    }
}
