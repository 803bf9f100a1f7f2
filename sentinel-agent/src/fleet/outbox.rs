//! The outbox: what still has to reach the fleet store, kept in the agent's own SQLite file so
//! that shipping never holds up the switch and an outage or a restart loses nothing. The event
//! loop pushes a row at each commit point (an alert raised or changed, a decision opened or
//! ended, a block, a kill); the shipper takes rows in order, upserts them into PostgreSQL and
//! only then acknowledges them. A row shipped twice (a crash between the two) is harmless:
//! the fleet store keeps the newest version of each (host, id) by its sequence number.
//!
//! One row per (kind, key): a newer version of an alert that was not shipped yet replaces the
//! older one (with a new, higher sequence number), so a burst of repeats costs one row.
//! Raw events are not copied here: with `fleet.ship_events` the shipper reads the event
//! store after a cursor kept in this file.
//!
//! The outbox is bounded ([`MAX_ROWS`]): a long outage during an alert storm must not fill the
//! disk. Past the cap the oldest alert rows go first (then the oldest of any kind), and the
//! rows dropped are counted in this file (`status` shows them: the fleet view then misses
//! those rows, and says nothing is lost locally).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
#[error("fleet outbox {path}: {source}")]
pub struct OutboxError {
    path: PathBuf,
    source: rusqlite::Error,
}

/// What a row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Alert,
    Decision,
    Block,
    Kill,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alert => "alert",
            Kind::Decision => "decision",
            Kind::Block => "block",
            Kind::Kill => "kill",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "alert" => Kind::Alert,
            "decision" => Kind::Decision,
            "block" => Kind::Block,
            "kill" => Kind::Kill,
            _ => return None,
        })
    }
}

/// One row waiting to be shipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Increases with every push, across restarts: the order of the host's changes.
    pub seq: i64,
    pub kind: Kind,
    /// The row's id in the fleet store (with the host): alert or decision id, address, …
    pub key: String,
    pub body: serde_json::Value,
}

/// A raw event from the store, after the shipping cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub kind: String,
    pub body: serde_json::Value,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS fleet_outbox (
        seq  INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        key  TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (kind, key)
    );
    CREATE TABLE IF NOT EXISTS fleet_cursor (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
";

/// Rows the outbox holds at most (give or take [`TRIM_EVERY`]).
pub const MAX_ROWS: u64 = 100_000;
/// The size is checked every this many pushes (a count is not free).
const TRIM_EVERY: u64 = 256;

pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    cap: u64,
    pushes: std::cell::Cell<u64>,
}

impl Outbox {
    /// Open (creating the tables if needed) the outbox in the agent's database.
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let err = |source| OutboxError {
            path: path.into(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // WAL + NORMAL survives the agent being killed (only a power cut can lose the last
        // commits), and keeps a push off the disk's flush latency.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            conn,
            path: path.into(),
            cap: MAX_ROWS,
            pushes: std::cell::Cell::new(0),
        })
    }

    /// The same outbox with another cap (`fleet.outbox_max_rows`).
    pub fn with_cap(mut self, cap: u64) -> Self {
        self.cap = cap;
        self
    }

    fn err(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError {
            path: self.path.clone(),
            source,
        }
    }

    /// Queue the newest version of (kind, key), replacing an unshipped older one.
    pub fn push(&self, kind: Kind, key: &str, body: &serde_json::Value) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO fleet_outbox (kind, key, body) VALUES (?1, ?2, ?3)",
                params![kind.as_str(), key, body.to_string()],
            )
            .map_err(|e| self.err(e))?;
        let n = self.pushes.get() + 1;
        self.pushes.set(n);
        if n.is_multiple_of(TRIM_EVERY.min(self.cap.max(1))) {
            self.trim()?;
        }
        Ok(())
    }

    /// Over the cap: drop the oldest alert rows, then the oldest rows of any kind, and count
    /// them. Returns how many went.
    fn trim(&self) -> Result<u64, OutboxError> {
        let excess = self.len()?.saturating_sub(self.cap);
        if excess == 0 {
            return Ok(0);
        }
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let mut dropped = 0u64;
        for only in ["kind = 'alert'", "1"] {
            let left = excess - dropped;
            if left == 0 {
                break;
            }
            let sql = format!(
                "DELETE FROM fleet_outbox WHERE seq IN
                     (SELECT seq FROM fleet_outbox WHERE {only} ORDER BY seq LIMIT ?1)"
            );
            dropped += tx.execute(&sql, [left as i64]).map_err(|e| self.err(e))? as u64;
        }
        tx.execute(
            "INSERT INTO fleet_cursor (name, value) VALUES ('dropped', ?1)
             ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            [dropped as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        tracing::warn!(
            dropped,
            cap = self.cap,
            "fleet outbox full: dropped the oldest rows (the fleet view misses them)"
        );
        Ok(dropped)
    }

    /// Rows dropped because the outbox was full, ever.
    pub fn dropped(&self) -> Result<u64, OutboxError> {
        self.conn
            .query_row(
                "SELECT value FROM fleet_cursor WHERE name = 'dropped'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0).max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// The oldest `limit` rows, in order.
    pub fn take(&self, limit: usize) -> Result<Vec<Row>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, kind, key, body FROM fleet_outbox ORDER BY seq LIMIT ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, key, body) = row.map_err(|e| self.err(e))?;
            // A row this version cannot read would block the queue forever: skip it.
            let (Some(kind), Ok(body)) = (Kind::parse(&kind), serde_json::from_str(&body)) else {
                tracing::warn!(seq, "dropping an unreadable fleet outbox row");
                self.ack(&[seq])?;
                continue;
            };
            out.push(Row {
                seq,
                kind,
                key,
                body,
            });
        }
        Ok(out)
    }

    /// These rows reached the fleet store: forget them.
    pub fn ack(&self, seqs: &[i64]) -> Result<(), OutboxError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM fleet_outbox WHERE seq = ?1")
                .map_err(|e| self.err(e))?;
            for seq in seqs {
                stmt.execute([seq]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Rows waiting.
    pub fn len(&self) -> Result<u64, OutboxError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM fleet_outbox", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// The shipping cursor over the event store (0 before the first shipment).
    pub fn cursor(&self) -> Result<i64, OutboxError> {
        self.conn
            .query_row(
                "SELECT value FROM fleet_cursor WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    pub fn set_cursor(&self, value: i64) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "INSERT INTO fleet_cursor (name, value) VALUES ('events', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Raw exec/connect/cpu events stored after `cursor` (an event id: a packed row's events
    /// have the ids `id .. id + n`, see [`pack`](crate::store::pack)), oldest first, `limit` at
    /// most. The cursor may be inside a packed row: that row's events up to it are skipped.
    /// None when the event store does not exist yet.
    pub fn events_after(&self, cursor: i64, limit: usize) -> Result<Vec<EventRow>, OutboxError> {
        let exists: bool = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))?;
        if !exists || limit == 0 {
            return Ok(Vec::new());
        }
        // From the row that holds the cursor (the last at or before it); one row more than
        // `limit`, since that one may hold nothing after the cursor.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, ts_ns, n, body FROM events
                 WHERE id >= coalesce((SELECT max(id) FROM events WHERE id <= ?1), 0)
                   AND kind IN ('exec', 'connect', 'cpu') ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![cursor, limit as i64 + 1])
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while out.len() < limit
            && let Some(r) = rows.next().map_err(|e| self.err(e))?
        {
            let id: i64 = r.get(0).map_err(|e| self.err(e))?;
            let ts_ns: i64 = r.get(1).map_err(|e| self.err(e))?;
            let n: i64 = r.get(2).map_err(|e| self.err(e))?;
            let value = r.get_ref(3).map_err(|e| self.err(e))?;
            // The fleet gets the JSON of SPEC §5 whatever the local encoding; a row that
            // cannot be read is skipped, as before.
            let Ok(records) = crate::store::pack::decode_row(ts_ns, n, value) else {
                tracing::warn!(id, "skipping an unreadable event row");
                continue;
            };
            for (event_id, record) in (id..).zip(records) {
                if event_id <= cursor || out.len() == limit {
                    continue;
                }
                if let Ok(body) = serde_json::to_value(&record) {
                    let kind = record.body.kind().as_str().to_string();
                    out.push(EventRow {
                        id: event_id,
                        kind,
                        body,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_come_out_in_order_and_newer_versions_replace_unshipped_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&dir.path().join("a.db")).unwrap();
        ob.push(Kind::Alert, "a1", &json!({"v": 1})).unwrap();
        ob.push(Kind::Decision, "a1", &json!({"v": 1})).unwrap();
        ob.push(Kind::Alert, "a1", &json!({"v": 2})).unwrap();
        let rows = ob.take(10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].kind, rows[1].kind), (Kind::Decision, Kind::Alert));
        assert!(rows[0].seq < rows[1].seq);
        assert_eq!(rows[1].body["v"], 2);
        // Acknowledged rows are gone; a row pushed meanwhile (a newer version) stays.
        ob.push(Kind::Decision, "a1", &json!({"v": 3})).unwrap();
        ob.ack(&rows.iter().map(|r| r.seq).collect::<Vec<_>>())
            .unwrap();
        let left = ob.take(10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].body["v"], 3);
        assert!(left[0].seq > rows[1].seq, "sequence numbers only grow");
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_alerts_first_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&dir.path().join("a.db"))
            .unwrap()
            .with_cap(100);
        ob.push(Kind::Decision, "d1", &json!({})).unwrap();
        for i in 0..1_000 {
            ob.push(Kind::Alert, &format!("a{i}"), &json!({"i": i}))
                .unwrap();
        }
        // Checked every 100 pushes here: at most one round over the cap.
        assert!(ob.len().unwrap() < 200, "{}", ob.len().unwrap());
        assert!(ob.dropped().unwrap() >= 800, "{}", ob.dropped().unwrap());
        let rows = ob.take(1_000).unwrap();
        assert_eq!(rows[0].kind, Kind::Decision, "alerts go before decisions");
        assert_eq!(rows.last().unwrap().key, "a999", "the newest stay");
        // The count survives a reopen.
        let dropped = ob.dropped().unwrap();
        drop(ob);
        assert_eq!(
            Outbox::open(&dir.path().join("a.db"))
                .unwrap()
                .dropped()
                .unwrap(),
            dropped
        );
    }

    #[test]
    fn the_outbox_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        {
            let ob = Outbox::open(&path).unwrap();
            for i in 0..5 {
                ob.push(Kind::Kill, &format!("k{i}"), &json!({})).unwrap();
            }
            ob.set_cursor(42).unwrap();
        }
        let ob = Outbox::open(&path).unwrap();
        assert_eq!(ob.len().unwrap(), 5);
        assert_eq!(ob.cursor().unwrap(), 42);
        assert_eq!(ob.take(2).unwrap().len(), 2);
        assert!(ob.events_after(0, 10).unwrap().is_empty());
    }

    fn exec(pid: u32) -> std::sync::Arc<crate::event::Record> {
        use crate::event::{Body, ExecBody, Record};
        std::sync::Arc::new(Record::new(
            std::time::UNIX_EPOCH + Duration::from_millis(1_790_000_000_000 + u64::from(pid)),
            "h",
            Body::Exec(ExecBody {
                pid,
                ppid: 1,
                uid: 0,
                comm: "true".into(),
                filename: "/bin/true".into(),
                argv: vec!["/bin/true".into()],
                ancestors: vec!["bash".into()],
                container: None,
            }),
        ))
    }

    /// Shipping in batches that cut packed rows, with restarts of the agent (store and outbox
    /// reopened) and a batch shipped but not acknowledged: every event goes out once under its
    /// own id, in order, and a batch read again carries the same ids (the fleet store's
    /// `ON CONFLICT (host, id) DO NOTHING` then keeps one copy).
    #[test]
    fn events_after_a_cursor_inside_packed_rows_neither_lose_nor_repeat() {
        use crate::store::{Store, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut shipped: Vec<(i64, u32)> = Vec::new();
        let mut pid = 0;
        for round in 0..6 {
            {
                let mut store = Store::open(&path, 1 << 40).unwrap();
                let mut writes: Vec<Write> = (0..100)
                    .map(|_| {
                        pid += 1;
                        Write::Insert(exec(pid))
                    })
                    .collect();
                // An alert in the middle: not shipped as an event, its id skipped.
                writes.insert(
                    37,
                    Write::Insert(std::sync::Arc::new(crate::event::Record::new(
                        std::time::UNIX_EPOCH,
                        "h",
                        crate::event::Body::Alert(Box::new(crate::event::sample_alert(
                            &format!("a{round}"),
                            "198.51.100.9",
                        ))),
                    ))),
                );
                store.apply(&writes).unwrap();
            }
            let ob = Outbox::open(&path).unwrap();
            for limit in [1, 30, 64, 7] {
                let cursor = ob.cursor().unwrap();
                let batch = ob.events_after(cursor, limit).unwrap();
                assert!(batch.len() <= limit);
                if limit == 7 {
                    // Shipped, then the agent died before the acknowledgement: read again.
                    let again = ob.events_after(cursor, limit).unwrap();
                    assert_eq!(again, batch, "the same events under the same ids");
                }
                for e in &batch {
                    assert!(e.id > cursor);
                    assert_eq!(e.kind, "exec");
                    shipped.push((e.id, e.body["pid"].as_u64().unwrap() as u32));
                }
                if let Some(last) = batch.last() {
                    ob.set_cursor(last.id).unwrap();
                }
            }
        }
        // Drain what is left after a last restart.
        let ob = Outbox::open(&path).unwrap();
        loop {
            let batch = ob.events_after(ob.cursor().unwrap(), 50).unwrap();
            let Some(last) = batch.last() else { break };
            shipped.extend(
                batch
                    .iter()
                    .map(|e| (e.id, e.body["pid"].as_u64().unwrap() as u32)),
            );
            ob.set_cursor(last.id).unwrap();
        }
        let pids: Vec<u32> = shipped.iter().map(|s| s.1).collect();
        assert_eq!(pids, (1..=pid).collect::<Vec<_>>(), "each once, in order");
        assert!(shipped.windows(2).all(|w| w[0].0 < w[1].0), "ids only grow");
    }
}
