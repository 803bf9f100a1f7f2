//! How the CLI talks to the running agent: one JSON request line over the unix socket
//! (mode 0600), answered by one JSON line (`status`) or a stream of event lines (`follow`).
//! Also the fan-out hub that feeds live events to every follower.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::event::{Kind, Record};

/// Events kept in memory for `tail --follow`'s backlog.
const RECENT: usize = 1000;
/// How far a follower may fall behind before it is told it lost events.
const FOLLOW_BUFFER: usize = 8192;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Answer a pending decision (`sentinel safe|block ID`).
    Answer {
        id: String,
        verdict: crate::switch::decision::Verdict,
    },
    /// Lift a block (`sentinel unblock ADDR`).
    Unblock {
        addr: std::net::IpAddr,
    },
    /// Re-read the config file and the country database (`sentinel reload`).
    Reload,
    /// Stream events of `kinds` (all when empty), starting with up to `backlog` recent ones.
    Follow {
        kinds: Vec<Kind>,
        backlog: usize,
    },
}

/// `sentinel status --json` (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub sensors: BTreeMap<String, SensorStatus>,
    pub pending: u64,
    pub blocks: u64,
    /// Processes terminated by `enforce.kill`.
    pub kills: u64,
    pub uptime_s: u64,
    pub host: String,
    pub pid: u32,
    /// Processes in the agent's process tree.
    pub processes: u64,
    /// Containers whose processes the agent has seen since it started.
    #[serde(default)]
    pub containers: u64,
    /// Records the agent could not decode (malformed or unknown kind).
    pub malformed: u64,
    /// Chat delivery per channel: messages sent, failed after every attempt, last error.
    #[serde(default)]
    pub notify: BTreeMap<String, crate::notify::ChannelStatus>,
    /// The event store: its queue, size and what it dropped or evicted.
    #[serde(default)]
    pub store: StoreStatus,
    /// Whether blocks land in nftables (false while one is `block-failed`).
    #[serde(default)]
    pub enforce: EnforceStatus,
    /// The fleet store (`connected`, `outbox`, `last_shipped`, `last_error`); null when
    /// `fleet.postgres_url` is empty.
    #[serde(default)]
    pub fleet: Option<crate::fleet::FleetStatus>,
    /// The override endpoint: `enabled`, `listening`, `socket` (`systemd` or `agent`),
    /// `last_error` while it could not bind.
    #[serde(default, rename = "override")]
    pub override_: crate::override_http::listener::OverrideStatus,
    /// Alert floods: findings `folded` into an origin's `switch_flood` alert, and `overflow`,
    /// entries the bounded alert maps could not keep (origins past the bound, open alerts
    /// evicted early).
    #[serde(default)]
    pub alerts: AlertsStatus,
}

/// `status.alerts`: what the per-origin budget folded and the bounded maps overflowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsStatus {
    pub folded: u64,
    pub overflow: u64,
}

/// Enforcement health in `status --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforceStatus {
    pub healthy: bool,
    pub last_error: Option<String>,
}

/// `status.store`: what bounds the event store did their work on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Events waiting for the writer.
    pub queued: u64,
    /// Events dropped because the writer's queue was full.
    pub dropped: u64,
    /// New events committed to the store since the agent started.
    #[serde(default)]
    pub written: u64,
    /// Routine events deleted to stay under `agent.max_db_mb`.
    pub evicted: u64,
    /// Database and WAL on disk, in bytes.
    pub bytes: u64,
    /// `agent.max_db_mb` in bytes.
    pub max_bytes: u64,
}

impl StoreStatus {
    pub fn of(stats: &crate::store::StoreStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            queued: stats.queued.load(Relaxed),
            dropped: stats.dropped.load(Relaxed),
            written: stats.written.load(Relaxed),
            evicted: stats.evicted.load(Relaxed),
            bytes: stats.bytes.load(Relaxed),
            max_bytes: stats.max_bytes.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorStatus {
    pub attached: bool,
    pub seen: u64,
    pub lost: u64,
}

/// A stream line that is not an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamNotice {
    /// The follower fell behind and this many events were skipped.
    Lagged(u64),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("the agent is not running (cannot connect to {path}: {source})")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent sent something this sentinel cannot read: {0}")]
    Protocol(String),
    #[error("the agent refused the request: {0}")]
    Refused(String),
}

/// A connection to the agent with one request sent.
pub struct Client {
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

impl Client {
    pub fn send(socket: &Path, request: &Request) -> Result<Self, IpcError> {
        let mut stream = UnixStream::connect(socket).map_err(|source| IpcError::Connect {
            path: socket.into(),
            source,
        })?;
        let mut line = serde_json::to_string(request).expect("requests serialise");
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .map_err(|source| IpcError::Io {
                path: socket.into(),
                source,
            })?;
        Ok(Self {
            reader: BufReader::new(stream),
            path: socket.into(),
        })
    }

    /// The next line the agent sent, parsed; `None` at end of stream.
    pub fn next_line(&mut self) -> Result<Option<serde_json::Value>, IpcError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| IpcError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| IpcError::Protocol(format!("{e}: {}", line.trim_end())))?;
        if let Some(msg) = value.get("error").and_then(|e| e.as_str()) {
            return Err(IpcError::Refused(msg.to_string()));
        }
        Ok(Some(value))
    }
}

/// Ask the agent for its status.
pub fn status(socket: &Path) -> Result<Status, IpcError> {
    let mut client = Client::send(socket, &Request::Status)?;
    let value = client
        .next_line()?
        .ok_or_else(|| IpcError::Protocol("connection closed before the status".into()))?;
    serde_json::from_value(value).map_err(|e| IpcError::Protocol(e.to_string()))
}

/// Fans live events out to followers, keeping the most recent ones for their backlog.
pub struct Hub {
    recent: Mutex<VecDeque<Arc<Record>>>,
    tx: broadcast::Sender<Arc<Record>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            tx: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }
}

impl Hub {
    pub fn publish(&self, record: Arc<Record>) {
        let mut recent = self.recent.lock().expect("hub lock");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(record.clone());
        // No followers is fine.
        let _ = self.tx.send(record);
    }

    /// The last `backlog` events matching `kinds`, and a receiver for everything after them:
    /// taken under one lock, so nothing falls between the two.
    pub fn subscribe(
        &self,
        kinds: &[Kind],
        backlog: usize,
    ) -> (Vec<Arc<Record>>, broadcast::Receiver<Arc<Record>>) {
        let recent = self.recent.lock().expect("hub lock");
        let rx = self.tx.subscribe();
        let mut past: Vec<_> = recent
            .iter()
            .rev()
            .filter(|r| wanted(kinds, r))
            .take(backlog)
            .cloned()
            .collect();
        past.reverse();
        (past, rx)
    }
}

/// Whether `record` is of one of `kinds` (all kinds when empty).
pub fn wanted(kinds: &[Kind], record: &Record) -> bool {
    kinds.is_empty() || kinds.contains(&record.body.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, CpuBody};
    use std::time::SystemTime;

    fn cpu(pid: u32) -> Arc<Record> {
        Arc::new(Record::new(
            SystemTime::now(),
            "h",
            Body::Cpu(CpuBody {
                pid,
                comm: "c".into(),
                cpu_pct: 1.0,
                container: None,
            }),
        ))
    }

    #[test]
    fn request_wire_format() {
        let r = Request::Follow {
            kinds: vec![Kind::Exec, Kind::Alert],
            backlog: 5,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"op":"follow","kinds":["exec","alert"],"backlog":5}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
    }

    #[test]
    fn hub_backlog_then_live_without_gap() {
        let hub = Hub::default();
        for pid in 0..1500 {
            hub.publish(cpu(pid));
        }
        let (past, mut rx) = hub.subscribe(&[Kind::Cpu], 3);
        assert_eq!(
            past.iter().map(|r| r.body.pid()).collect::<Vec<_>>(),
            [1497, 1498, 1499]
        );
        assert!(hub.subscribe(&[Kind::Exec], 3).0.is_empty());
        hub.publish(cpu(1500));
        assert_eq!(rx.try_recv().unwrap().body.pid(), 1500);
    }
}
