//! The fleet: many hosts, one view, on PostgreSQL (`[fleet]`). Each agent stays autonomous —
//! the switch, its deadlines and its blocks never wait on the fleet store — and ships what it
//! decided through an outbox in its own SQLite file ([`outbox`]) on a task of its own
//! ([`ship`]): alerts, decisions, blocks, kills, a heartbeat, and raw events when asked. From
//! the same store it picks up answers given in the fleet view and, with `share_blocks`, the
//! addresses a human confirmed as hostile on another host ([`decide`]). `sentinel fleet`
//! reads and answers there without any agent ([`view`]); `sentinel fleet init|add-host` set
//! the store up, with a role per host that can write only its own rows ([`admin`]).

pub mod admin;
pub mod config;
pub mod decide;
pub mod outbox;
pub mod postgres;
pub mod ship;
pub mod sign;
pub mod view;

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

pub use config::FleetConfig;
use serde_json::{Value, json};
use tracing::error;

use crate::{
    event::Record,
    switch::{decision::Decision, ledger::Block, ledger::Kill},
};

/// `status --json`'s `fleet` object.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetStatus {
    /// Whether the agent holds a working connection to the fleet store.
    pub connected: bool,
    /// Rows waiting in the outbox.
    pub outbox: u64,
    /// Rows dropped because the outbox was full ([`outbox::MAX_ROWS`]), ever.
    #[serde(default)]
    pub outbox_dropped: u64,
    /// When a batch last reached the store (RFC 3339).
    pub last_shipped: Option<String>,
    /// The last failure (connecting, migrating, shipping), until the next success.
    pub last_error: Option<String>,
    /// Rows shipped since start.
    pub shipped: u64,
}

/// The shipper's state, read by `status` and the metrics, and the event loop's word that
/// the outbox has new rows (so an idle shipper never reads an empty outbox).
#[derive(Debug, Default)]
pub struct Stats {
    status: Mutex<FleetStatus>,
    outbox_filled: tokio::sync::Notify,
}

impl Stats {
    pub fn snapshot(&self) -> FleetStatus {
        self.status.lock().expect("fleet stats lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut FleetStatus)) {
        f(&mut self.status.lock().expect("fleet stats lock"));
    }

    /// A row went into the outbox: the shipper drains at its next tick.
    fn note_outbox_filled(&self) {
        // One stored permit at most: a burst of rows wakes the shipper once.
        self.outbox_filled.notify_one();
    }

    /// Wait until a row went into the outbox since the last wait returned.
    async fn outbox_filled(&self) {
        self.outbox_filled.notified().await
    }
}

/// What the fleet asks of the event loop (which owns the switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A shared block from another host: `tag` (`fleet:<host>/<decision>`) is recorded as
    /// the block's decision id; `domain` is the name the sharing host resolved the address
    /// from, in the names' strict form (anything else is dropped: [`decide::shared_name`]).
    Block {
        addr: IpAddr,
        tag: String,
        domain: Option<String>,
    },
    /// The fleet view lifted `addr`; with `only_shared`, only if this host holds it because
    /// of the fleet (a lift seen at start, when the agent may have missed the order).
    Lift { addr: IpAddr, only_shared: bool },
}

/// The block tag of a shared block.
pub fn shared_tag(host: &str, decision_id: &str) -> String {
    format!("fleet:{host}/{decision_id}")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The event loop's side of the outbox: one call at each commit point. A failure is logged
/// and never stops the agent (the fleet view then misses that row; nothing local is lost).
pub struct Recorder {
    outbox: outbox::Outbox,
    stats: Arc<Stats>,
}

impl Recorder {
    /// `stats` is the shipper's: each row queued wakes it.
    pub fn open(db: &Path, max_rows: u64, stats: Arc<Stats>) -> Result<Self, outbox::OutboxError> {
        Ok(Self {
            outbox: outbox::Outbox::open(db)?.with_cap(max_rows),
            stats,
        })
    }

    fn push(&self, kind: outbox::Kind, key: &str, body: Value) {
        match self.outbox.push(kind, key, &body) {
            Ok(()) => self.stats.note_outbox_filled(),
            Err(e) => error!("queueing a {} for the fleet failed: {e}", kind.as_str()),
        }
    }

    /// An alert record (new, or a new version of it).
    pub fn alert(&self, record: &Record) {
        if let crate::event::Body::Alert(a) = &record.body {
            match serde_json::to_value(record) {
                Ok(body) => self.push(outbox::Kind::Alert, &a.id.clone(), body),
                Err(e) => error!("alert {} not queued for the fleet: {e}", a.id),
            }
        }
    }

    /// A decision opened or ended.
    pub fn decision(&self, decision: &Decision) {
        self.push(
            outbox::Kind::Decision,
            &decision.id,
            decision_doc(decision, SystemTime::now()),
        );
    }

    /// A block put in force, or lifted.
    pub fn block(&self, block: &Block, lifted: bool) {
        let body = json!({
            "addr": block.addr,
            "expires": rfc3339(block.expires),
            "decision_id": block.decision_id,
            "domain": block.domain,
            "lifted": lifted,
        });
        self.push(outbox::Kind::Block, &block.addr.to_string(), body);
    }

    pub fn kill(&self, kill: &Kill) {
        let at = kill.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let body = json!({
            "pid": kill.pid,
            "exe": kill.exe,
            "reason": kill.reason,
            "confidence": kill.confidence,
            "at": rfc3339(kill.at),
        });
        self.push(
            outbox::Kind::Kill,
            &format!("{}-{}", kill.pid, at.as_nanos()),
            body,
        );
    }
}

/// A decision as the fleet stores it: every field of [`Decision`] (so new ones, like a set
/// of targets, flow through), times as RFC 3339, and `ended` once it left `pending`.
pub fn decision_doc(decision: &Decision, now: SystemTime) -> Value {
    let mut doc = serde_json::to_value(decision).unwrap_or_else(|_| json!({}));
    doc["created"] = json!(rfc3339(decision.created));
    doc["deadline"] = json!(rfc3339(decision.deadline));
    doc["ended"] = if decision.state == crate::switch::decision::State::Pending {
        Value::Null
    } else {
        json!(rfc3339(now))
    };
    doc
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::switch::decision::State;

    #[tokio::test]
    async fn a_queued_row_wakes_the_shipper_once_however_many_came() {
        let stats = Stats::default();
        let wait = || tokio::time::timeout(Duration::from_millis(50), stats.outbox_filled());
        assert!(wait().await.is_err(), "nothing queued: the shipper sleeps");
        for _ in 0..100 {
            stats.note_outbox_filled();
        }
        assert!(wait().await.is_ok(), "rows queued before the wait wake it");
        assert!(wait().await.is_err(), "a burst is one wake");
    }

    #[test]
    fn a_decision_document_has_readable_times_and_its_end() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = Decision {
            id: "a1".into(),
            anomaly: "geo".into(),
            severity: "critical".into(),
            risk: 70,
            mitre: crate::event::Mitre {
                technique: "T1071.001".into(),
                tactic: "Command and Control".into(),
                name: "Web Protocols".into(),
            },
            host: "web1".into(),
            pid: 1,
            comm: "curl".into(),
            exe: None,
            ancestors: vec![],
            target_ip: Some("198.51.100.2".parse().unwrap()),
            targets: vec!["198.51.100.2".parse().unwrap()],
            refused: vec![],
            overflow: 0,
            country: Some("RU".into()),
            domain: None,
            names: Default::default(),
            detail: String::new(),
            created: t,
            deadline: t + Duration::from_secs(300),
            state: State::Pending,
            decided_by: None,
            reason: None,
            origin: None,
            waiting: None,
            container: None,
        };
        let doc = decision_doc(&d, t);
        assert_eq!(doc["deadline"], "2027-01-15T08:05:00.000Z");
        assert_eq!(doc["ended"], Value::Null);
        assert_eq!(doc["target_ip"], "198.51.100.2");
        assert_eq!(doc["targets"], json!(["198.51.100.2"]));
        let ended = Decision {
            state: State::Blocked,
            ..d
        };
        assert_eq!(
            decision_doc(&ended, t + Duration::from_secs(1))["ended"],
            "2027-01-15T08:00:01.000Z"
        );
    }
}
