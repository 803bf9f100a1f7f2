//! Chat alerts: every pending decision goes to each configured channel (Slack, Teams,
//! Telegram) with its two buttons, and its outcome follows when it ends.
//!
//! Delivery never holds up defence: the switch hands [`Notice`]s over an unbounded channel and
//! moves on; each decision gets its own task per channel, so a slow or dead chat service
//! delays nothing but its own messages. Requests have a timeout and are retried with
//! exponential backoff; what finally fails is counted in [`NotifyStats`] for
//! `sentinel status`. Webhook URLs and bot tokens are secrets: they are scrubbed from every
//! error before it is logged or recorded.

mod http;
pub mod slack;
pub mod summary;
pub mod teams;
pub mod telegram;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::{
    sync::mpsc::{self, UnboundedReceiver, UnboundedSender},
    task::JoinHandle,
};

pub use http::{Http, Retry, Undelivered, url_secrets};
pub use summary::{Summary, SummarySource};

use crate::{
    config::Config,
    override_http::Secret,
    switch::decision::{Answer, Decision, Notice, State},
};

/// How often the daily summary goes out.
const SUMMARY_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Delivery counters of one channel.
#[derive(Debug, Default)]
pub struct ChannelStats {
    sent: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ChannelStats {
    fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Record an error (already scrubbed of secrets), stamped with the time.
    fn error(&self, message: &str) {
        let stamped = format!(
            "{} {message}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(stamped);
    }
}

/// One channel's counters as `sentinel status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChannelStatus {
    /// Messages delivered.
    pub sent: u64,
    /// Messages given up on after every attempt failed.
    pub failed: u64,
    /// The latest failure (a send attempt or, for Telegram, polling), with its time.
    pub last_error: Option<String>,
}

/// Delivery counters of every started channel, shared with `sentinel status`.
#[derive(Debug, Default)]
pub struct NotifyStats {
    channels: Mutex<BTreeMap<&'static str, Arc<ChannelStats>>>,
}

impl NotifyStats {
    /// The counters of `channel`, registering it on first use.
    fn channel(&self, channel: &'static str) -> Arc<ChannelStats> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel)
            .or_default()
            .clone()
    }

    /// Counters per started channel (`slack`, `teams`, `telegram`); empty when none is.
    pub fn snapshot(&self) -> BTreeMap<String, ChannelStatus> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, s)| {
                let status = ChannelStatus {
                    sent: s.sent.load(Ordering::Relaxed),
                    failed: s.failed.load(Ordering::Relaxed),
                    last_error: s
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                };
                (name.to_string(), status)
            })
            .collect()
    }
}

/// One configured chat service.
pub enum Channel {
    Slack(slack::Slack),
    Teams(teams::Teams),
    Telegram(Arc<telegram::Telegram>),
}

/// What a sent alert left behind that its outcome needs (Telegram: the message to edit).
pub type Sent = Option<i64>;

impl Channel {
    pub fn name(&self) -> &'static str {
        match self {
            Channel::Slack(_) => "slack",
            Channel::Teams(_) => "teams",
            Channel::Telegram(_) => "telegram",
        }
    }

    async fn opened(&self, d: &Decision) -> Result<Sent, Undelivered> {
        match self {
            Channel::Slack(c) => c.opened(d).await.map(|()| None),
            Channel::Teams(c) => c.opened(d).await.map(|()| None),
            Channel::Telegram(c) => c.opened(d).await.map(Some),
        }
    }

    async fn ended(&self, d: &Decision, sent: Sent) -> Result<(), Undelivered> {
        match self {
            Channel::Slack(c) => c.ended(d).await,
            Channel::Teams(c) => c.ended(d).await,
            Channel::Telegram(c) => c.ended(d, sent).await,
        }
    }

    async fn summary(&self, s: &Summary) -> Result<(), Undelivered> {
        match self {
            Channel::Slack(c) => c.summary(s).await,
            Channel::Teams(c) => c.summary(s).await,
            Channel::Telegram(c) => c.summary(s).await,
        }
    }
}

/// Start every configured channel; none configured: nothing runs and `notices` is dropped
/// (the switch must ignore send errors). Teams starts only with `secret` (its buttons are
/// signed links). Telegram button presses are polled for and go to `answers`. With
/// `summary`, channels whose `daily_summary` is set get the last day's figures once a day.
/// Returns the tasks' handles; they end when the `notices` sender is dropped (except the
/// Telegram poller and the summaries, which run until aborted).
pub fn spawn(
    config: &Config,
    secret: Option<Arc<Secret>>,
    notices: UnboundedReceiver<Notice>,
    answers: mpsc::Sender<Answer>,
    stats: Arc<NotifyStats>,
    summary: Option<SummarySource>,
) -> Vec<JoinHandle<()>> {
    let tuning = Tuning {
        retry: Retry::from_config(config),
        poll_wait: telegram::POLL_TIMEOUT,
        summary_period: SUMMARY_PERIOD,
    };
    start(config, secret, notices, answers, stats, summary, tuning)
}

/// Timings [`spawn`] takes from the config and the platforms' habits; tests shorten them.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    retry: Retry,
    poll_wait: Duration,
    summary_period: Duration,
}

fn start(
    config: &Config,
    secret: Option<Arc<Secret>>,
    notices: UnboundedReceiver<Notice>,
    answers: mpsc::Sender<Answer>,
    stats: Arc<NotifyStats>,
    summary: Option<SummarySource>,
    tuning: Tuning,
) -> Vec<JoinHandle<()>> {
    let n = &config.notify;
    let retry = tuning.retry;
    let mut channels = Vec::new();
    let mut daily = Vec::new();
    if !n.slack.webhook_url.is_empty() {
        channels.push(Arc::new(Channel::Slack(slack::Slack::new(
            &n.slack.webhook_url,
            Http::new(
                "slack",
                n.timeout,
                retry,
                &stats,
                url_secrets(&n.slack.webhook_url),
            ),
        ))));
        daily.push(n.slack.daily_summary);
    }
    match &secret {
        Some(secret)
            if !n.teams.webhook_url.is_empty() && !config.override_.public_url.is_empty() =>
        {
            channels.push(Arc::new(Channel::Teams(teams::Teams::new(
                &n.teams.webhook_url,
                &config.override_.public_url,
                secret.clone(),
                Http::new(
                    "teams",
                    n.timeout,
                    retry,
                    &stats,
                    url_secrets(&n.teams.webhook_url),
                ),
            ))));
            daily.push(n.teams.daily_summary);
        }
        _ if !n.teams.webhook_url.is_empty() => {
            tracing::error!(
                "Teams is configured but has no override key or public_url: not started"
            );
        }
        _ => {}
    }
    let mut handles = Vec::new();
    if !n.telegram.bot_token.is_empty() {
        let telegram = Arc::new(telegram::Telegram::new(
            &n.telegram,
            Http::new(
                "telegram",
                n.timeout,
                retry,
                &stats,
                vec![n.telegram.bot_token.clone()],
            ),
        ));
        handles.push(tokio::spawn(telegram::poll(
            telegram.clone(),
            answers,
            tuning.poll_wait,
        )));
        channels.push(Arc::new(Channel::Telegram(telegram)));
        daily.push(n.telegram.daily_summary);
    }
    if channels.is_empty() {
        return handles;
    }
    if let Some(source) = summary {
        for (channel, wanted) in channels.iter().zip(daily) {
            if wanted {
                handles.push(tokio::spawn(summary::daily(
                    tuning.summary_period,
                    source.clone(),
                    channel.clone(),
                    config.host_id(),
                )));
            }
        }
    }
    tracing::info!(
        channels = ?channels.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "chat alerts on"
    );
    handles.push(tokio::spawn(dispatch(notices, channels)));
    handles
}

/// Route notices to a task per decision and channel: a decision's outcome waits for its alert
/// (Telegram edits that message), while decisions and channels never wait on each other.
async fn dispatch(mut notices: UnboundedReceiver<Notice>, channels: Vec<Arc<Channel>>) {
    let mut open: HashMap<String, Vec<UnboundedSender<Decision>>> = HashMap::new();
    while let Some(notice) = notices.recv().await {
        match notice {
            Notice::Opened(d) => {
                let outcomes = channels
                    .iter()
                    .map(|channel| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        tokio::spawn(follow(channel.clone(), d.clone(), rx));
                        tx
                    })
                    .collect();
                open.insert(d.id.clone(), outcomes);
            }
            Notice::Grew(d) => {
                // One follow-up message (the webhooks cannot edit what they sent).
                for channel in &channels {
                    let (channel, d) = (channel.clone(), d.clone());
                    tokio::spawn(async move {
                        let _ = channel.opened(&d).await;
                    });
                }
            }
            Notice::Ended(d) => match open.remove(&d.id) {
                Some(outcomes) => {
                    for tx in outcomes {
                        // A task that has gone (its alert failed for good) still needs the
                        // outcome shown.
                        let _ = tx.send(d.clone());
                    }
                }
                None => {
                    // Opened before this process started (or its alert was never seen).
                    for channel in &channels {
                        let (channel, d) = (channel.clone(), d.clone());
                        tokio::spawn(async move {
                            let _ = channel.ended(&d, None).await;
                        });
                    }
                }
            },
        }
    }
}

/// One decision on one channel: send the alert, then its outcome when it comes.
async fn follow(channel: Arc<Channel>, d: Decision, mut outcome: UnboundedReceiver<Decision>) {
    let sent = channel.opened(&d).await.unwrap_or(None);
    if let Some(ended) = outcome.recv().await {
        let _ = channel.ended(&ended, sent).await;
    }
}

/// The first line of an alert: `CRITICAL geo alert on web-1`.
pub fn title(d: &Decision) -> String {
    format!(
        "{} {} alert on {}",
        d.severity.to_uppercase(),
        d.anomaly,
        d.host
    )
}

/// `4m 59s` (whole seconds).
pub fn time_left(d: &Decision, now: SystemTime) -> String {
    let left = Duration::from_secs(d.time_left(now).as_secs());
    humantime::format_duration(left).to_string()
}

/// The facts every alert shows, in order: label and value.
pub fn facts(d: &Decision, now: SystemTime) -> Vec<(&'static str, String)> {
    let mut facts = vec![
        ("Severity", d.severity.clone()),
        ("Anomaly", d.anomaly.clone()),
        ("Host", d.host.clone()),
        ("Process", format!("{} (pid {})", d.comm, d.pid)),
    ];
    if let Some(exe) = &d.exe {
        facts.push(("Executable", exe.clone()));
    }
    if let Some(c) = &d.container {
        facts.push(("Container", c.describe()));
    }
    if !d.ancestors.is_empty() {
        facts.push(("Ancestors", d.ancestors.join(" ← ")));
    }
    let target = match (&d.target_ip, &d.country) {
        (Some(_), Some(cc)) => format!("{} ({cc})", d.targets_summary()),
        (Some(_), None) => d.targets_summary(),
        (None, _) => "none".into(),
    };
    facts.push(("Target", target));
    if !d.refused.is_empty() {
        let first = &d.refused[0];
        facts.push((
            "Never blocked",
            format!(
                "{} ({}), {} in all",
                first.ip,
                first.reason,
                d.refused.len()
            ),
        ));
    }
    facts.push((
        "MITRE",
        format!(
            "{} {} ({})",
            d.mitre.technique, d.mitre.name, d.mitre.tactic
        ),
    ));
    facts.push(("Risk", format!("{}/100", d.risk)));
    let auto_block = match &d.waiting {
        Some(why) => format!("none: {why}"),
        None => format!(
            "in {} (at {})",
            time_left(d, now),
            humantime::format_rfc3339_seconds(d.deadline)
        ),
    };
    facts.push(("Auto-block", auto_block));
    if let Some(origin) = &d.origin {
        facts.push(("Charged to", origin.clone()));
    }
    facts
}

/// How a decision ended, in one line: `BLOCKED by slack:U123`.
pub fn outcome(d: &Decision) -> String {
    let by = d.decided_by.as_deref().unwrap_or("unknown");
    let mut line = match d.state {
        State::Pending => format!("Decision {} is still pending", d.id),
        State::Safe => format!("MARKED SAFE by {by}: no block"),
        State::Blocked => format!("BLOCKED by {by}"),
        State::AutoBlocked => "AUTO-BLOCKED: nobody answered before the deadline".to_string(),
        State::BlockFailed => format!(
            "BLOCK FAILED (decided by {by}): nftables refused it; retrying, the in-kernel \
             connect guard holds the address meanwhile"
        ),
    };
    if d.target_ip.is_some()
        && matches!(
            d.state,
            State::Blocked | State::AutoBlocked | State::BlockFailed
        )
    {
        line.push_str(&format!(" ({})", d.targets_summary()));
    }
    if let Some(reason) = &d.reason {
        line.push_str(&format!(". {reason}"));
    }
    line
}
