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
        let ledger = Ledger::open_existing(&db, false);
        let counts = ledger
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|l| l.summary_since(since).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                warn!("daily summary: {e}");
                Default::default()
            });
        let blocked = ledger
            .as_ref()
            .ok()
            .and_then(|l| l.blocks_made_since(since, MAX_BLOCKS_LISTED).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|b| (b.addr, b.domain))
            .collect();
        let lost = lost.lock().expect("lost lock");
        Summary {
            alerts_by_anomaly: counts.alerts_by_anomaly,
            alerts_by_container: counts.alerts_by_container,
            decisions_by_outcome: counts.decisions_by_outcome,
            blocks: counts.blocks,
            blocked,
            kills: counts.kills,
            lost_events: SENSORS.iter().map(|s| lost.lost(s)).sum(),
            ..Default::default()
        }
    })
}
