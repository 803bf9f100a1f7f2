//! The store's size cap (`agent.max_db_mb`): a flood of events must not fill the disk. When
//! the live data nears the cap, the oldest exec, connect and cpu events are deleted, a batch
//! per transaction, on the writer thread (never on the event loop); when no routine event is
//! left, the oldest *closed* alerts go (an alert flood must not fill the disk either). Open
//! alerts (a decision pending, or a block nftables refused), decisions and the ledger (blocks,
//! kills, safe targets) are never evicted. SQLite does not give deleted space
//! back by itself, so the database runs with `auto_vacuum = INCREMENTAL`: freed pages are
//! reused by new events, and handed back to the file system when the file is over the cap
//! (after `max_db_mb` was lowered, say). The WAL is kept small: checkpoints run every few
//! pages of a small cap and the WAL file is truncated to a twentieth of the cap after each.
//! Database and WAL together stay under the cap, give or take one batch of the writer.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use rusqlite::Connection;

/// Evict when the live data passes this share of the cap…
const HIGH_WATER: f64 = 0.80;
/// …down to this share, leaving room for the WAL and for what comes in meanwhile.
const LOW_WATER: f64 = 0.70;
/// Free pages are reused by new events; they go back to the file system only when the file
/// passes this share of the cap (a lowered cap), so the file is not shrunk and regrown.
const FILE_WATER: f64 = 0.85;
/// The WAL is truncated to this share of the cap after a checkpoint.
const WAL_SHARE: u64 = 20;
/// Routine events deleted per transaction: short transactions keep the WAL small, and the
/// eviction stops close to the low-water mark.
pub const EVICT_BATCH: usize = 500;
/// Time spent evicting per check at most, so inserts are never held up for long; the next
/// check goes on where this one stopped.
const EVICT_BUDGET: Duration = Duration::from_millis(250);

/// Batches the writer may write between two checks of the cap at most.
const CHECK_EVERY: u32 = 16;
/// What the writer wrote is counted this many times over against the room left: SQLite's
/// pages are not full, an overflow chain's last page is partly empty, and other connections
/// (the ledger, the fleet outbox) write to the same file.
const WRITE_FACTOR: u64 = 4;

/// When the cap must be checked again. Reading the usage costs `PRAGMA` statements that
/// SQLite prepares anew at every run (several thousand instructions a batch, a tenth of the
/// writer's work in an exec storm); far under the cap it need not be read after every batch.
/// The writer checks when what it wrote since the last check, counted [`WRITE_FACTOR`] times,
/// could have reached the high-water mark, and at least every [`CHECK_EVERY`] batches.
#[derive(Debug, Default)]
pub struct Pacing {
    /// Bytes under the high-water mark at the last check (none before the first).
    room: u64,
    /// Bytes written since, as [`write::apply`](super::write::apply) counts them.
    written: u64,
    /// Batches written since.
    batches: u32,
}

impl Pacing {
    /// A batch of about `bytes` was written.
    pub fn wrote(&mut self, bytes: u64) {
        self.written = self.written.saturating_add(bytes);
        self.batches += 1;
    }

    /// Whether the check can wait for a later batch.
    pub fn can_wait(&self) -> bool {
        self.batches < CHECK_EVERY && self.written.saturating_mul(WRITE_FACTOR) < self.room
    }

    /// The cap was checked: `live` bytes in use.
    pub fn checked(&mut self, max_bytes: u64, live: u64) {
        let high = (max_bytes as f64 * HIGH_WATER) as u64;
        *self = Self {
            room: high.saturating_sub(live),
            ..Self::default()
        };
    }
}

/// How much of the cap is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Pages holding data, in bytes.
    pub live: u64,
    /// The database file (live and free pages), in bytes.
    pub file: u64,
}

/// Sets up the database for the cap (before any table exists, or converting once).
pub fn prepare(conn: &Connection, max_bytes: u64) -> rusqlite::Result<()> {
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode != 2 {
        // On an empty database this takes effect at once; an existing one is rebuilt once.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        if tables > 0 {
            tracing::info!("converting the store to incremental auto-vacuum (once)");
            conn.execute_batch("VACUUM")?;
        }
    }
    let page = pragma(conn, "page_size")?.max(512);
    // A checkpoint every 4000 pages (16 MiB of 4 KiB pages), or more often for a small cap.
    // Each checkpoint copies the latest version of every page the WAL holds; the table's and
    // the indexes' last pages are rewritten by every commit, so rarer checkpoints copy them
    // fewer times (SQLite's default of 1000 pages spent a quarter of the writer's time here).
    let checkpoint_pages = (max_bytes / page / WAL_SHARE / 2).clamp(16, 4000);
    conn.pragma_update(None, "wal_autocheckpoint", checkpoint_pages as i64)?;
    conn.pragma_update(None, "journal_size_limit", (max_bytes / WAL_SHARE) as i64)?;
    Ok(())
}

/// A numeric pragma's value.
fn pragma(conn: &Connection, name: &str) -> rusqlite::Result<u64> {
    conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0))
        .map(|v| v.max(0) as u64)
}

/// The database's live and total size (the WAL not included). Read after every batch the
/// writer commits: three cached `PRAGMA` statements, stepped again each time (the
/// table-valued `pragma_page_count()` forms prepare a `PRAGMA` afresh inside SQLite at every
/// query, a third of the writer's work per batch once rows held many events).
pub fn usage(conn: &Connection) -> rusqlite::Result<Usage> {
    let value = |sql: &str| {
        conn.prepare_cached(sql)?
            .query_row([], |r| r.get::<_, i64>(0))
            .map(|v| v.max(0) as u64)
    };
    let page = value("PRAGMA page_size")?;
    let pages = value("PRAGMA page_count")?;
    let free = value("PRAGMA freelist_count")?;
    Ok(Usage {
        live: (pages - free.min(pages)) * page,
        file: pages * page,
    })
}

/// The database file and its WAL on disk, in bytes.
pub fn on_disk(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    size(path) + size(Path::new(&wal))
}

/// Delete the oldest routine events (exec, connect, cpu), `limit` of them or a few more (a
/// packed row goes whole); how many went. Rows are walked in id (insertion) order, so the few
/// alerts and decisions among them cost nothing; `limit` rows hold at least `limit` events,
/// and of those only the rows up to the one that reaches `limit` events go.
pub fn evict_oldest(conn: &Connection, limit: usize) -> rusqlite::Result<usize> {
    let mut delete = conn.prepare_cached(
        "DELETE FROM events WHERE id IN (
             SELECT id FROM (
                 SELECT id, n, sum(n) OVER (ORDER BY id) AS upto FROM (
                     SELECT id, n FROM events NOT INDEXED
                     WHERE kind IN ('exec', 'connect', 'cpu')
                     ORDER BY id LIMIT ?1))
             WHERE upto - n < ?1)
         RETURNING n",
    )?;
    super::sum_returned(&mut delete, [limit as i64])
}

/// Delete the oldest `limit` closed alerts (no decision pending on them, no block waiting to
/// land); how many went.
pub fn evict_closed_alerts(conn: &Connection, limit: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM events WHERE id IN (
             SELECT id FROM events NOT INDEXED
             WHERE kind = 'alert'
               AND coalesce(json_extract(body, '$.state'), '') NOT IN ('pending', 'block-failed')
             ORDER BY id LIMIT ?1)",
        [limit as i64],
    )
}

/// What a check of the cap did and found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Events evicted.
    pub evicted: usize,
    /// The live data after the check, in bytes.
    pub live: u64,
}

/// Keep the database under `max_bytes`: evict routine events in batches while the live data
/// is above the high-water mark, then give free pages back when the file is over it. Returns
/// how many events were evicted ([`check`] without the usage).
#[cfg(test)]
pub fn enforce(conn: &Connection, max_bytes: u64) -> rusqlite::Result<usize> {
    check(conn, max_bytes).map(|c| c.evicted)
}

/// Keep the database under `max_bytes` (see `enforce`), saying what was evicted and what is left:
/// the writer runs it after every batch, and in the usual case (under the high-water mark) it
/// reads the usage once.
pub fn check(conn: &Connection, max_bytes: u64) -> rusqlite::Result<Checked> {
    let high = (max_bytes as f64 * HIGH_WATER) as u64;
    let low = (max_bytes as f64 * LOW_WATER) as u64;
    let mut evicted = 0;
    let started = Instant::now();
    let mut now = usage(conn)?;
    if now.live > high {
        // Routine events first, then closed alerts.
        'kinds: for evict in [evict_oldest, evict_closed_alerts] {
            loop {
                let n = evict(conn, EVICT_BATCH)?;
                evicted += n;
                // Deleting frees pages inside the file: its size stays as measured.
                now = usage(conn)?;
                if now.live <= low || started.elapsed() > EVICT_BUDGET {
                    break 'kinds;
                }
                if n == 0 {
                    break;
                }
            }
        }
    }
    if now.file > (max_bytes as f64 * FILE_WATER) as u64 {
        // Every free page back to the file system: the file shrinks to the live data. The
        // pragma frees one page per step, so step it to the end.
        let mut vacuum = conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = vacuum.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        now = usage(conn)?;
    }
    Ok(Checked {
        evicted,
        live: now.live,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, SystemTime, UNIX_EPOCH},
    };

    use super::*;
    use crate::{
        event::{Body, DecisionBody, ExecBody, Kind, Record, sample_alert},
        store::{Store, Write},
        switch::ledger::{Kill, Ledger, add_kill_in, add_safe_in},
    };

    const CAP: u64 = 2 * 1024 * 1024;

    fn exec(n: u64) -> Write {
        Write::Insert(Arc::new(Record::new(
            UNIX_EPOCH + Duration::from_millis(n),
            "h",
            Body::Exec(ExecBody {
                pid: n as u32,
                ppid: 1,
                uid: 0,
                comm: "true".into(),
                filename: "/bin/true".into(),
                argv: vec!["/bin/true".into(), format!("--run-{n:0>400}")],
                ancestors: vec!["bash".into(), "sshd".into()],
                container: None,
            }),
        )))
    }

    fn alert(n: u64) -> Write {
        Write::Insert(Arc::new(Record::new(
            UNIX_EPOCH + Duration::from_millis(n),
            "h",
            Body::Alert(Box::new(sample_alert(&format!("a{n}"), "198.51.100.2"))),
        )))
    }

    fn decision(n: u64) -> Write {
        Write::Insert(Arc::new(Record::new(
            UNIX_EPOCH + Duration::from_millis(n),
            "h",
            Body::Decision(Box::new(DecisionBody {
                id: format!("a{n}"),
                anomaly: "geo".into(),
                state: "pending".into(),
                pid: 9,
                comm: "curl".into(),
                target_ip: Some("198.51.100.2".parse().unwrap()),
                country: Some("RU".into()),
                domain: None,
                deadline: "2026-11-22T21:00:00Z".into(),
                decided_by: None,
                reason: None,
                origin: None,
                waiting: None,
                targets: vec!["198.51.100.2".parse().unwrap()],
                refused: Vec::new(),
                container: None,
            })),
        )))
    }

    fn count(store: &Store, kind: Kind) -> usize {
        store.recent(&[kind], usize::MAX >> 1).unwrap().len()
    }

    /// Fill a store with 1 MiB cap to several times its size, as the writer does (a batch,
    /// then the cap): the file and its WAL stay under the cap, the oldest routine events go
    /// first, and every alert, decision and ledger row survives.
    #[test]
    fn a_full_store_evicts_the_oldest_routine_events_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path, CAP).unwrap();
        let mut ledger = Ledger::open(&path).unwrap();
        ledger
            .batch(|conn| {
                add_kill_in(
                    conn,
                    &Kill {
                        pid: 7,
                        exe: "/tmp/xmrig".into(),
                        reason: "test".into(),
                        confidence: 90,
                        at: SystemTime::now(),
                    },
                )?;
                add_safe_in(
                    conn,
                    "198.51.100.130".parse().unwrap(),
                    SystemTime::now() + Duration::from_secs(3600),
                    "a0",
                )
            })
            .unwrap();
        let mut n = 0;
        let mut evicted = 0;
        let mut largest = 0;
        for batch in 0..100 {
            let mut writes: Vec<Write> = (0..200)
                .map(|_| {
                    n += 1;
                    exec(n)
                })
                .collect();
            // An alert and its decision in the middle of every other batch.
            if batch % 2 == 0 {
                n += 1;
                writes.insert(100, alert(n));
                writes.insert(101, decision(n));
            }
            store.apply(&writes).unwrap();
            evicted += enforce(&store.conn, CAP).unwrap();
            largest = largest.max(on_disk(&path));
        }
        let inserted = 100 * 200;
        eprintln!(
            "{inserted} exec events (~{} KiB of rows) into a {} KiB cap: evicted {evicted}, \
             largest on disk {} KiB, now {} KiB",
            inserted * 450 / 1024,
            CAP / 1024,
            largest / 1024,
            on_disk(&path) / 1024
        );
        assert!(evicted > inserted / 2, "evicted only {evicted}");
        assert!(
            largest <= CAP,
            "{largest} bytes on disk with a cap of {CAP}"
        );
        assert_eq!(count(&store, Kind::Alert), 50);
        assert_eq!(count(&store, Kind::Decision), 50);
        let execs = store.recent(&[Kind::Exec], usize::MAX >> 1).unwrap();
        assert_eq!(execs.len(), inserted - evicted);
        // What is left is the newest, without a gap.
        let pids: Vec<u32> = execs.iter().map(|r| r.body.pid()).collect();
        assert!(pids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*pids.last().unwrap() as u64, n);
        assert_eq!(ledger.kill_count().unwrap(), 1);
        assert_eq!(ledger.safe_targets(SystemTime::now()).unwrap().len(), 1);
    }

    /// A cap lowered below the data: the file shrinks to it (free pages go back).
    #[test]
    fn a_lowered_cap_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path, 64 * CAP).unwrap();
        let writes: Vec<Write> = (1..=20_000).map(exec).collect();
        store.apply(&writes).unwrap();
        let before = usage(&store.conn).unwrap().file;
        assert!(before > 3 * CAP, "{before}");
        drop(store);
        let store = Store::open(&path, 2 * CAP).unwrap();
        // Each check works for a limited time; the writer checks after every batch.
        let mut evicted = 0;
        loop {
            match enforce(&store.conn, 2 * CAP).unwrap() {
                0 => break,
                n => evicted += n,
            }
        }
        let after = usage(&store.conn).unwrap().file;
        eprintln!(
            "cap lowered: {} KiB → {} KiB, {evicted} evicted",
            before / 1024,
            after / 1024
        );
        assert!(after <= 2 * CAP, "{after}");
        assert!(evicted > 0 && evicted < 20_000);
    }

    /// Only alerts and decisions over the cap: the oldest closed alerts go; open ones (a
    /// pending decision, a block that failed) and every decision stay.
    #[test]
    fn closed_alerts_go_after_routine_events_open_ones_and_decisions_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path, CAP).unwrap();
        let state = |n: u64| match n % 10 {
            0 => "pending",
            5 => "block-failed",
            1 | 2 => "auto-blocked",
            _ => "none",
        };
        let writes: Vec<Write> = (1..=6_000)
            .flat_map(|n| {
                let mut a = sample_alert(&format!("a{n}"), "198.51.100.2");
                a.state = state(n).into();
                let a = Write::Insert(Arc::new(Record::new(
                    UNIX_EPOCH + Duration::from_millis(n),
                    "h",
                    Body::Alert(Box::new(a)),
                )));
                // A decision for every pending alert.
                std::iter::once(a).chain((n % 10 == 0).then(|| decision(n)))
            })
            .collect();
        store.apply(&writes).unwrap();
        assert!(usage(&store.conn).unwrap().live > CAP);
        let evicted = enforce(&store.conn, CAP).unwrap();
        let live = usage(&store.conn).unwrap().live;
        assert!(
            evicted > 0 && live <= CAP,
            "{evicted} evicted, {live} bytes live"
        );
        let left = store.recent(&[Kind::Alert], usize::MAX >> 1).unwrap();
        let open = |r: &&Record| matches!(&r.body, Body::Alert(a) if a.state == "pending" || a.state == "block-failed");
        assert_eq!(
            left.iter().filter(open).count(),
            1_200,
            "every open alert stays"
        );
        assert_eq!(left.len() + evicted, 6_000, "only alerts went");
        assert_eq!(count(&store, Kind::Decision), 600);
        // The oldest closed ones went first.
        let kept_closed: Vec<u64> = left
            .iter()
            .filter(|r| !open(r))
            .filter_map(|r| match &r.body {
                Body::Alert(a) => a.id[1..].parse().ok(),
                _ => None,
            })
            .collect();
        let oldest_kept = kept_closed.iter().min().copied().unwrap_or(u64::MAX);
        assert!(oldest_kept > 6_000 / 10, "{oldest_kept}");
    }

    /// A store made before the cap existed (no auto-vacuum) is converted once, data kept.
    #[test]
    fn an_old_store_is_converted_to_incremental_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE events (id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL,
                     kind TEXT NOT NULL, pid INTEGER NOT NULL, ref TEXT, body TEXT NOT NULL);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
            let mode: i64 = conn
                .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, 0);
        }
        let mut store = Store::open(&path, CAP).unwrap();
        store.apply(&[exec(1)]).unwrap();
        let mode: i64 = store
            .conn
            .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 2, "incremental");
        assert_eq!(count(&store, Kind::Exec), 1);
    }

    /// The cached statements are stepped again, not answered from when they were prepared:
    /// the usage follows inserts, deletes and a vacuum on one connection.
    #[test]
    fn the_usage_follows_the_database_on_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), 64 * CAP).unwrap();
        let empty = usage(&store.conn).unwrap();
        store
            .apply(&(1..=5_000).map(exec).collect::<Vec<_>>())
            .unwrap();
        let full = usage(&store.conn).unwrap();
        assert!(full.live > empty.live + 1_000_000, "{empty:?} {full:?}");
        assert_eq!(evict_oldest(&store.conn, 5_000).unwrap(), 5_000);
        let freed = usage(&store.conn).unwrap();
        assert!(
            freed.live < full.live / 4 && freed.file == full.file,
            "{freed:?}"
        );
        let mut vacuum = store.conn.prepare("PRAGMA incremental_vacuum").unwrap();
        let mut rows = vacuum.query([]).unwrap();
        while rows.next().unwrap().is_some() {}
        drop(rows);
        drop(vacuum);
        assert!(usage(&store.conn).unwrap().file < full.file / 4);
    }

    #[test]
    fn the_cap_is_checked_before_what_was_written_could_reach_it() {
        let mut pacing = Pacing::default();
        assert!(!pacing.can_wait(), "checked before anything is known");
        // 10 MiB of a 100 MiB cap live: 70 MiB of room under the high-water mark.
        pacing.checked(100 << 20, 10 << 20);
        pacing.wrote(1 << 20);
        assert!(pacing.can_wait());
        pacing.wrote(17 << 20);
        assert!(
            !pacing.can_wait(),
            "18 MiB written, counted 4 times: over 70 MiB"
        );
        pacing.checked(100 << 20, 10 << 20);
        for _ in 0..CHECK_EVERY - 1 {
            pacing.wrote(10);
        }
        assert!(pacing.can_wait());
        pacing.wrote(10);
        assert!(!pacing.can_wait(), "and every {CHECK_EVERY} batches");
        // Over the high-water mark: every batch.
        pacing.checked(100 << 20, 90 << 20);
        pacing.wrote(1);
        assert!(!pacing.can_wait());
    }
}
