//! The ledger: what the dead man's switch decided and what is enforced — decisions, blocks,
//! safe targets and kills — in the same SQLite file as the events, written synchronously
//! (`synchronous = FULL`) so that nothing decided is lost when the agent is killed. A
//! decision's transition out of `pending` is a conditional update: it happens exactly once,
//! whoever races for it.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::{event::AlertBody, switch::decision::Decision};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("decision ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("decision ledger {path}: bad stored row {id}: {source}")]
    Corrupt {
        path: PathBuf,
        id: String,
        source: serde_json::Error,
    },
    #[error("no decision ledger at {0} (has the agent ever run with this config?)")]
    Missing(PathBuf),
}

/// A block in force (or recorded as such): `sentinel blocks`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Block {
    pub addr: IpAddr,
    pub expires: SystemTime,
    pub decision_id: String,
    /// The name the address was blocked under (resolved by the decision's process, else by
    /// the host; attacker-chosen text, escaped where shown). None when no answer named it.
    #[serde(default)]
    pub domain: Option<String>,
}

/// One process terminated by the agent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Kill {
    pub pid: u32,
    pub exe: String,
    pub reason: String,
    /// How sure the agent was (the alert's risk, 0–100).
    pub confidence: u8,
    pub at: SystemTime,
}

/// Counts over a period, for the daily summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodCounts {
    pub alerts_by_anomaly: std::collections::BTreeMap<String, u64>,
    /// Alerts about processes in containers, per container (its name, else its short id).
    pub alerts_by_container: std::collections::BTreeMap<String, u64>,
    pub decisions_by_outcome: std::collections::BTreeMap<String, u64>,
    pub blocks: u64,
    pub kills: u64,
}

/// A pending decision with the alert that opened it.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    pub decision: Decision,
    pub alert: AlertBody,
    /// When the alert was raised (its event time).
    pub alert_at: SystemTime,
}

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

pub fn ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub fn time(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS decisions (
        id         TEXT PRIMARY KEY,
        state      TEXT NOT NULL,
        deadline   INTEGER NOT NULL,
        target     TEXT,
        decided_by TEXT,
        reason     TEXT,
        ended      INTEGER,
        decision   TEXT NOT NULL,  -- the Decision as JSON, kept current
        alert      TEXT NOT NULL,  -- the AlertBody that opened it
        alert_at   INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS decisions_state ON decisions(state);
    CREATE TABLE IF NOT EXISTS blocks (
        addr        TEXT PRIMARY KEY,
        expires     INTEGER NOT NULL,
        decision_id TEXT NOT NULL,
        created     INTEGER NOT NULL,
        domain      TEXT
    );
    CREATE TABLE IF NOT EXISTS safe_targets (
        addr        TEXT PRIMARY KEY,
        until       INTEGER NOT NULL,
        decision_id TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS kills (
        id         INTEGER PRIMARY KEY,
        at         INTEGER NOT NULL,
        pid        INTEGER NOT NULL,
        exe        TEXT NOT NULL,
        reason     TEXT NOT NULL,
        confidence INTEGER NOT NULL
    );
";

/// A ledger written before blocks had names gets the column (empty: those blocks show none).
fn add_block_domains(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('blocks') WHERE name = 'domain'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE blocks ADD COLUMN domain TEXT")?;
    }
    Ok(())
}

impl Ledger {
    /// Open (creating the tables if needed) for the agent.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(|e| sql(path, e))?;
        let ledger = Self {
            conn,
            path: path.into(),
        };
        ledger.prepare(true)?;
        Ok(ledger)
    }

    /// Open an existing ledger for the CLI; `write` for `unblock` while the agent is down.
    pub fn open_existing(path: &Path, write: bool) -> Result<Self, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::Missing(path.into()));
        }
        let flags = if write {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| sql(path, e))?;
        let ledger = Self {
            conn,
            path: path.into(),
        };
        ledger.prepare(write)?;
        Ok(ledger)
    }

    fn prepare(&self, create: bool) -> Result<(), LedgerError> {
        let p = &self.path;
        self.conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| sql(p, e))?;
        if create {
            self.conn
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(|e| sql(p, e))?;
            self.conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(|e| sql(p, e))?;
            self.conn.execute_batch(SCHEMA).map_err(|e| sql(p, e))?;
            add_block_domains(&self.conn).map_err(|e| sql(p, e))?;
        }
        Ok(())
    }

    fn err(&self, e: rusqlite::Error) -> LedgerError {
        sql(&self.path, e)
    }

    /// Run `f` in one transaction (one fsync for a whole batch of switch work).
    pub fn batch<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, LedgerError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sql(&p, e))?;
        let out = f(&tx).map_err(|e| sql(&p, e))?;
        tx.commit().map_err(|e| sql(&p, e))?;
        Ok(out)
    }

    /// Decisions whose block nftables refused (retried until it lands).
    pub fn block_failed(&self) -> Result<Vec<Open>, LedgerError> {
        self.decisions_in("block-failed")
    }

    /// How many blocks are in force at `now`.
    pub fn block_count(&self, now: SystemTime) -> Result<u64, LedgerError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM blocks WHERE expires > ?1",
                [ns(now)],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}

/// Record a new pending decision (inside a batch).
pub fn insert_in(conn: &Connection, open: &Open) -> rusqlite::Result<usize> {
    let d = &open.decision;
    conn.execute(
        "INSERT INTO decisions (id, state, deadline, target, decision, alert, alert_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            d.id,
            d.state.as_str(),
            ns(d.deadline),
            d.target_ip.map(|a| a.to_string()),
            json(d),
            json(&open.alert),
            ns(open.alert_at),
        ],
    )
}

/// Rewrite a pending decision (its target set grew; inside a batch).
pub fn update_pending_in(conn: &Connection, d: &Decision) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE decisions SET decision = ?2, deadline = ?3 WHERE id = ?1 AND state = 'pending'",
        params![d.id, json(d), ns(d.deadline)],
    )
}

/// Move a decision from `from` to its current state (`block-failed` ⇄ blocked).
pub fn transition_in(conn: &Connection, d: &Decision, from: &str) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE decisions SET state = ?2, reason = ?3, decision = ?4 WHERE id = ?1 AND state = ?5",
        params![d.id, d.state.as_str(), d.reason, json(d), from],
    )
}

/// [`Ledger::end`] inside a batch: false when it was no longer pending.
pub fn end_in(conn: &Connection, decision: &Decision, blocks: &[Block]) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE decisions SET state = ?2, decided_by = ?3, reason = ?4, ended = ?5,
                decision = ?6
         WHERE id = ?1 AND state = 'pending'",
        params![
            decision.id,
            decision.state.as_str(),
            decision.decided_by,
            decision.reason,
            ns(SystemTime::now()),
            json(decision),
        ],
    )?;
    if changed != 1 {
        return Ok(false);
    }
    for b in blocks {
        upsert_block(conn, b)?;
    }
    Ok(true)
}

impl Ledger {
    /// Every pending decision, oldest deadline first.
    pub fn pending(&self) -> Result<Vec<Open>, LedgerError> {
        self.decisions_in("pending")
    }

    /// Every decision in `state`, oldest deadline first.
    fn decisions_in(&self, state: &str) -> Result<Vec<Open>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, decision, alert, alert_at FROM decisions
                 WHERE state = ?1 ORDER BY deadline",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([state], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, decision, alert, alert_at) = row.map_err(|e| self.err(e))?;
            let corrupt = |source| LedgerError::Corrupt {
                path: self.path.clone(),
                id: id.clone(),
                source,
            };
            out.push(Open {
                decision: serde_json::from_str(&decision).map_err(corrupt)?,
                alert: serde_json::from_str(&alert).map_err(corrupt)?,
                alert_at: time(alert_at),
            });
        }
        Ok(out)
    }

    /// The decision `id`, whatever its state.
    pub fn get(&self, id: &str) -> Result<Option<Decision>, LedgerError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT decision FROM decisions WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|source| LedgerError::Corrupt {
                path: self.path.clone(),
                id: id.into(),
                source,
            })
        })
        .transpose()
    }

    /// Forget the block on `addr`; true if there was one.
    pub fn remove_block(&self, addr: IpAddr) -> Result<bool, LedgerError> {
        let n = self
            .conn
            .execute("DELETE FROM blocks WHERE addr = ?1", [addr.to_string()])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Forget the block on `addr` and return it (what the fleet is told was lifted).
    pub fn take_block(&self, addr: IpAddr) -> Result<Option<Block>, LedgerError> {
        let row = self
            .conn
            .query_row(
                "DELETE FROM blocks WHERE addr = ?1 RETURNING expires, decision_id, domain",
                [addr.to_string()],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.map(|(expires, decision_id, domain)| Block {
            addr,
            expires: time(expires),
            decision_id,
            domain,
        }))
    }

    /// Blocks that have not expired at `now`, soonest expiry first.
    pub fn blocks(&self, now: SystemTime) -> Result<Vec<Block>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT addr, expires, decision_id, domain FROM blocks WHERE expires > ?1 \
                 ORDER BY expires",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([ns(now)], block_row)
            .map_err(|e| self.err(e))?;
        self.parsed_blocks(rows)
    }

    /// Blocks made since `since` (their address and name), first made first, at most
    /// `limit`: what the daily summary lists.
    pub fn blocks_made_since(
        &self,
        since: SystemTime,
        limit: usize,
    ) -> Result<Vec<Block>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT addr, expires, decision_id, domain FROM blocks WHERE created >= ?1 \
                 ORDER BY created, addr LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![ns(since), limit as i64], block_row)
            .map_err(|e| self.err(e))?;
        self.parsed_blocks(rows)
    }

    /// The blocks of `rows`; a row that is not an address cannot be enforced: skipped rather
    /// than failing all.
    fn parsed_blocks(
        &self,
        rows: impl Iterator<Item = rusqlite::Result<BlockRow>>,
    ) -> Result<Vec<Block>, LedgerError> {
        let mut out = Vec::new();
        for row in rows {
            let (addr, expires, decision_id, domain) = row.map_err(|e| self.err(e))?;
            if let Ok(addr) = addr.parse() {
                out.push(Block {
                    addr,
                    expires: time(expires),
                    decision_id,
                    domain,
                });
            }
        }
        Ok(out)
    }

    /// Targets still marked safe at `now`.
    pub fn safe_targets(&self, now: SystemTime) -> Result<Vec<(IpAddr, SystemTime)>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT addr, until FROM safe_targets WHERE until > ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([ns(now)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (addr, until) = row.map_err(|e| self.err(e))?;
            if let Ok(addr) = addr.parse() {
                out.push((addr, time(until)));
            }
        }
        Ok(out)
    }

    /// What the daily summary reports since `since`: alerts by anomaly, decisions ended by
    /// outcome, blocks made and processes killed.
    pub fn summary_since(&self, since: SystemTime) -> Result<PeriodCounts, LedgerError> {
        let t = ns(since);
        let grouped = |sql: &str| -> Result<std::collections::BTreeMap<String, u64>, LedgerError> {
            let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([t], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(|e| self.err(e))?;
            let mut out = std::collections::BTreeMap::new();
            for row in rows {
                let (k, n) = row.map_err(|e| self.err(e))?;
                out.insert(k, n as u64);
            }
            Ok(out)
        };
        let count = |sql: &str| -> Result<u64, LedgerError> {
            self.conn
                .query_row(sql, [t], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(|e| self.err(e))
        };
        Ok(PeriodCounts {
            alerts_by_anomaly: grouped(&format!(
                "SELECT json_extract(body, '$.anomaly'), COUNT(*) FROM events {} AND \
                     kind = 'alert' AND ts_ns >= ?1 GROUP BY 1",
                crate::store::RARE_KINDS
            ))?,
            alerts_by_container: grouped(&format!(
                "SELECT coalesce(json_extract(body, '$.container.name'), \
                     substr(json_extract(body, '$.container.id'), 1, 12)), COUNT(*) \
                 FROM events {} AND kind = 'alert' AND ts_ns >= ?1 \
                     AND json_extract(body, '$.container.id') IS NOT NULL GROUP BY 1",
                crate::store::RARE_KINDS
            ))?,
            decisions_by_outcome: grouped(
                "SELECT state, COUNT(*) FROM decisions
                 WHERE state != 'pending' AND ended >= ?1 GROUP BY 1",
            )?,
            blocks: count("SELECT COUNT(*) FROM blocks WHERE created >= ?1")?,
            kills: count("SELECT COUNT(*) FROM kills WHERE at >= ?1")?,
        })
    }

    pub fn kill_count(&self) -> Result<u64, LedgerError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM kills", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}

/// Record a kill (inside a batch).
pub fn add_kill_in(conn: &Connection, kill: &Kill) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO kills (at, pid, exe, reason, confidence) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            ns(kill.at),
            kill.pid,
            kill.exe,
            kill.reason,
            kill.confidence
        ],
    )
}

/// Record `addr` as safe until `until` (inside a batch).
pub fn add_safe_in(
    conn: &Connection,
    addr: IpAddr,
    until: SystemTime,
    decision_id: &str,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO safe_targets (addr, until, decision_id) VALUES (?1, ?2, ?3)
         ON CONFLICT(addr) DO UPDATE SET until = excluded.until, decision_id = excluded.decision_id",
        params![addr.to_string(), ns(until), decision_id],
    )
}

/// Record a block that no local decision brought (a shared block from the fleet).
pub fn add_block_in(conn: &Connection, block: &Block) -> rusqlite::Result<usize> {
    upsert_block(conn, block)
}

fn upsert_block(conn: &Connection, b: &Block) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO blocks (addr, expires, decision_id, created, domain)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(addr) DO UPDATE SET expires = excluded.expires,
                                         decision_id = excluded.decision_id,
                                         domain = coalesce(excluded.domain, blocks.domain)",
        params![
            b.addr.to_string(),
            ns(b.expires),
            b.decision_id,
            ns(SystemTime::now()),
            b.domain,
        ],
    )
}

/// A `blocks` row: address, expiry, decision id, name.
type BlockRow = (String, i64, String, Option<String>);

fn block_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlockRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("ledger rows serialise")
}

fn sql(path: &Path, source: rusqlite::Error) -> LedgerError {
    LedgerError::Sqlite {
        path: path.into(),
        source,
    }
}
