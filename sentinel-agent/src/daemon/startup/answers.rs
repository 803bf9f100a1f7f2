//! The start-up steps that open the ways answers reach the agent and decisions reach people:
//! the override endpoint (its key and its socket, taken before anything else) and chat with its
//! daily summary.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::{
    sync::mpsc::{self, UnboundedReceiver},
    task::JoinHandle,
};
use tracing::{error, warn};

use crate::{
    config::Config,
    notify::{
        self, NotifyStats,
        summary::{MAX_BLOCKS_LISTED, Summary, SummarySource},
    },
    override_http::{self, Secret},
    sensors::{LostMaps, SENSORS},
    switch::{
        decision::{Answer, Notice},
        ledger::Ledger,
    },
};

/// The override endpoint's signing key, when `override.public_url` is set.
pub fn load_override_key(config: &Config) -> anyhow::Result<Option<Arc<Secret>>> {
    if config.override_.public_url.is_empty() {
        return Ok(None);
    }
    let secret = Secret::load(&config.override_.secret_file).with_context(|| {
        "override.public_url is set: the override endpoint needs its key \
             (cargo xtask install creates it)"
    })?;
    Ok(Some(Arc::new(secret)))
}

/// The override endpoint's socket, taken as the agent's first step: systemd's
/// (`sentinel.socket`), else `override.listen` bound now. None when the endpoint is off.
pub fn take_override_socket(config: &Config) -> Option<override_http::listener::Early> {
    (!config.override_.public_url.is_empty())
        .then(|| override_http::listener::early(&config.override_.listen))
}

/// Serve signed links and Slack clicks on `override.listen`, when there is a key. A socket
/// that could not be had yet is retried in the background (`health` says so meanwhile).
pub fn start_override_endpoint(
    config: &Config,
    secret: Option<&Arc<Secret>>,
    socket: Option<override_http::listener::Early>,
    health: Arc<override_http::listener::Health>,
    answers: mpsc::Sender<Answer>,
) -> Option<JoinHandle<()>> {
    let (secret, socket) = (secret?.clone(), socket?);
    let config = config.clone();
    Some(tokio::spawn(async move {
        let listen = config.override_.listen.clone();
        let listener = override_http::listener::listener(socket, &listen, &health).await;
        let serve = override_http::serve(
            listener,
            &config,
            secret,
            answers,
            notify::slack::outcome_message,
        );
        if let Err(e) = serve.await {
            error!("the override endpoint stopped: {e}");
        }
    }))
}

/// Chat: announced decisions go out through every configured channel; answers (signed links,
/// Slack clicks, Telegram presses) come back on `answers`, the same channel as the CLI's.
pub fn start_chat(
    config: &Config,
    secret: Option<Arc<Secret>>,
    notices: UnboundedReceiver<Notice>,
    answers: mpsc::Sender<Answer>,
    lost: Arc<Mutex<LostMaps>>,
) -> (Vec<JoinHandle<()>>, Arc<NotifyStats>) {
    let stats = Arc::new(NotifyStats::default());
    let summary = daily_summary(config.agent.db.clone(), lost);
    let tasks = notify::spawn(
        config,
        secret,
        notices,
        answers,
        stats.clone(),
        Some(summary),
    );
    (tasks, stats)
}

/// The numbers of the daily chat summary, read from the ledger when it is due.
fn daily_summary(db: PathBuf, lost: Arc<Mutex<LostMaps>>) -> SummarySource {
    Arc::new(move |since| {
        let lost = lost.lock().expect("lost lock");
        Summary {
            lost_events: SENSORS.iter().map(|s| lost.lost(s)).sum(),
            ..summary_from_ledger(&db, since)
        }
    })
}

/// The ledger's part of the summary since `since`: counts, and the first blocks made with
/// their names. Empty (and a warning) when the ledger cannot be read.
fn summary_from_ledger(db: &std::path::Path, since: std::time::SystemTime) -> Summary {
    let read = Ledger::open_existing(db, false).and_then(|l| {
        let counts = l.summary_since(since)?;
        let blocked = l.blocks_made_since(since, MAX_BLOCKS_LISTED)?;
        Ok((counts, blocked))
    });
    let (counts, blocked) = read.unwrap_or_else(|e| {
        warn!("daily summary: {e}");
        Default::default()
    });
    Summary {
        alerts_by_anomaly: counts.alerts_by_anomaly,
        alerts_by_container: counts.alerts_by_container,
        decisions_by_outcome: counts.decisions_by_outcome,
        blocks: counts.blocks,
        blocked: blocked.into_iter().map(|b| (b.addr, b.domain)).collect(),
        kills: counts.kills,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::switch::ledger::{self, Block};

    #[test]
    fn the_summary_names_the_blocks_made_in_its_period() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("agent.db");
        // The store's tables (the summary counts alerts there) beside the ledger's.
        let _store = crate::store::Store::open(&db, 64 * 1024 * 1024).unwrap();
        let mut l = Ledger::open(&db).unwrap();
        let since = SystemTime::now() - Duration::from_secs(1);
        let block = |addr: &str, domain: Option<&str>| Block {
            addr: addr.parse().unwrap(),
            expires: SystemTime::now() + Duration::from_secs(3600),
            decision_id: "d1".into(),
            domain: domain.map(str::to_string),
        };
        l.batch(|tx| {
            ledger::add_block_in(tx, &block("198.51.100.2", Some("c2.example")))?;
            ledger::add_block_in(tx, &block("198.51.100.3", None))
        })
        .unwrap();
        let s = summary_from_ledger(&db, since);
        assert_eq!(s.blocks, 2);
        let line = s
            .lines()
            .into_iter()
            .find(|l| l.starts_with("Blocks"))
            .unwrap();
        assert!(
            line.contains("c2.\u{200B}example (198.51.100.2)") && line.contains("198.51.100.3"),
            "{line}"
        );
        // Nothing made since now: no blocks listed.
        let later = summary_from_ledger(&db, SystemTime::now() + Duration::from_secs(1));
        assert_eq!((later.blocks, later.blocked.len()), (0, 0));
    }
}
