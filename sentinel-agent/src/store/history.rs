//! What the detectors remember across restarts, in the agent's SQLite database: the
//! behaviour history of executables (`intel`: seen in alerts, respawns, spawn counts), of the
//! names alerts' targets were resolved from (`intel_names`: alerts, last seen) and a
//! SHA-256 snapshot of every watched cron file (`cron_snapshots`), so a change is reported
//! once, against what the file held before — even when it changed while the agent was down.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rusqlite::{Connection, OptionalExtension, params};

use crate::detect::intel::{ExeHistory, NameHistory};

#[derive(Debug, thiserror::Error)]
#[error("history store {path}: {source}")]
pub struct HistoryError {
    path: PathBuf,
    source: rusqlite::Error,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS intel (
        exe         TEXT PRIMARY KEY,
        alerts      INTEGER NOT NULL,
        respawns    INTEGER NOT NULL,
        hour        INTEGER NOT NULL,
        spawns      INTEGER NOT NULL,
        peak_spawns INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS intel_names (
        name      TEXT PRIMARY KEY,
        alerts    INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS cron_snapshots (
        path    TEXT PRIMARY KEY,
        sha256  TEXT NOT NULL,
        content TEXT NOT NULL,
        updated INTEGER NOT NULL
    );";

/// A file's last known content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub sha256: String,
    pub content: String,
}

pub struct History {
    conn: Connection,
    path: PathBuf,
}

impl History {
    /// Open (creating the tables if needed) the history in the database at `path`.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let err = |source| HistoryError {
            path: path.into(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            conn,
            path: path.into(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError {
            path: self.path.clone(),
            source,
        }
    }

    pub fn load_intel(&self) -> Result<Vec<ExeHistory>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT exe, alerts, respawns, hour, spawns, peak_spawns, last_seen FROM intel",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ExeHistory {
                    exe: r.get(0)?,
                    alerts: r.get(1)?,
                    respawns: r.get(2)?,
                    hour: r.get::<_, i64>(3)? as u64,
                    spawns: r.get(4)?,
                    peak_spawns: r.get(5)?,
                    last_seen: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Write back changed histories, in one transaction.
    pub fn save_intel(&mut self, rows: &[ExeHistory]) -> Result<(), HistoryError> {
        if rows.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| HistoryError {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO intel
                     (exe, alerts, respawns, hour, spawns, peak_spawns, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            for h in rows {
                stmt.execute(params![
                    h.exe,
                    h.alerts,
                    h.respawns,
                    h.hour as i64,
                    h.spawns,
                    h.peak_spawns,
                    h.last_seen as i64
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    pub fn load_intel_names(&self) -> Result<Vec<NameHistory>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, alerts, last_seen FROM intel_names")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NameHistory {
                    name: r.get(0)?,
                    alerts: r.get(1)?,
                    last_seen: r.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Write back changed names' histories, in one transaction.
    pub fn save_intel_names(&mut self, rows: &[NameHistory]) -> Result<(), HistoryError> {
        if rows.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| HistoryError {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO intel_names (name, alerts, last_seen)
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            for h in rows {
                stmt.execute(params![h.name, h.alerts, h.last_seen as i64])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    pub fn snapshot(&self, file: &Path) -> Result<Option<Snapshot>, HistoryError> {
        self.conn
            .query_row(
                "SELECT sha256, content FROM cron_snapshots WHERE path = ?1",
                [file.to_string_lossy()],
                |r| {
                    Ok(Snapshot {
                        sha256: r.get(0)?,
                        content: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn put_snapshot(&self, file: &Path, snap: &Snapshot) -> Result<(), HistoryError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO cron_snapshots (path, sha256, content, updated)
                 VALUES (?1, ?2, ?3, ?4)",
                params![file.to_string_lossy(), snap.sha256, snap.content, now],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intel_and_snapshots_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let mut h = History::open(&db).unwrap();
        let row = ExeHistory {
            exe: "/tmp/x".into(),
            alerts: 2,
            respawns: 1,
            hour: 7,
            spawns: 3,
            peak_spawns: 9,
            last_seen: 100,
        };
        h.save_intel(std::slice::from_ref(&row)).unwrap();
        let name = NameHistory {
            name: "c2.example".into(),
            alerts: 3,
            last_seen: 200,
        };
        h.save_intel_names(std::slice::from_ref(&name)).unwrap();
        let snap = Snapshot {
            sha256: "ab".into(),
            content: "* * * * * true\n".into(),
        };
        h.put_snapshot(Path::new("/etc/cron.d/x"), &snap).unwrap();
        drop(h);
        let h = History::open(&db).unwrap();
        assert_eq!(h.load_intel().unwrap(), [row]);
        assert_eq!(h.load_intel_names().unwrap(), [name]);
        assert_eq!(h.snapshot(Path::new("/etc/cron.d/x")).unwrap(), Some(snap));
        assert_eq!(h.snapshot(Path::new("/etc/cron.d/y")).unwrap(), None);
    }
}
