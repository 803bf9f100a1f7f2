//! Chat alerts: every pending decision goes to each configured channel (Slack, Teams,
//! Telegram) with its two buttons, and its outcome follows when it ends.
//!
//! Delivery never holds up defence: the switch hands [`Notice`]s over an unbounded channel and
//! moves on; each decision gets its own task per channel, so a slow or dead chat service
//! delays nothing but its own messages. Requests have a timeout and are retried with
//! exponential backoff; what finally fails is counted in [`NotifyStats`] for
//! `sentinel status`. Webhook URLs and bot tokens are secrets: they are scrubbed from every
//! error before it is logged or recorded.

pub mod slack;
pub mod summary;
pub mod teams;
pub mod telegram;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::Serialize;
use serde_json::Value;
use tokio::{
    sync::mpsc::{self, UnboundedReceiver, UnboundedSender},
    task::JoinHandle,
};

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

/// Retry schedule: `attempts` tries, waiting `first`, then twice as long each time, at most
/// `max`.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Retry {
    fn from_config(config: &Config) -> Retry {
        Retry {
            attempts: config.notify.attempts.max(1),
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// A message that could not be delivered; already logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undelivered;

/// One failed attempt.
struct AttemptError {
    message: String,
    /// Worth trying again (network trouble, timeouts, 5xx, 429).
    retry: bool,
    /// How long the service asked us to wait.
    after: Option<Duration>,
}

/// A channel's HTTP side: the client, the retry schedule, its counters, and the secrets to
/// scrub from errors.
pub struct Http {
    channel: &'static str,
    client: reqwest::Client,
    timeout: Duration,
    retry: Retry,
    stats: Arc<ChannelStats>,
    secrets: Vec<String>,
}

impl Http {
    /// `secrets`: strings that must never appear in a log line or in `last_error` (webhook
    /// URLs, bot tokens).
    pub fn new(
        channel: &'static str,
        timeout: Duration,
        retry: Retry,
        stats: &NotifyStats,
        secrets: Vec<String>,
    ) -> Http {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sentinel/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Http {
            channel,
            client,
            timeout,
            retry,
            stats: stats.channel(channel),
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// `text` with every secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
    }

    /// Record a failure that is not a message (e.g. polling) in `last_error`, and log it.
    fn trouble(&self, what: &str, message: &str) {
        let message = self.scrub(message);
        tracing::warn!(channel = self.channel, what, error = %message, "chat trouble");
        self.stats.error(&format!("{what}: {message}"));
    }

    /// POST `body` as JSON to `url`, retrying per the schedule; the response body on success.
    /// `what` names the message in logs and `last_error`.
    pub async fn post(&self, what: &str, url: &str, body: &Value) -> Result<Value, Undelivered> {
        let mut delay = self.retry.first;
        for attempt in 1..=self.retry.attempts {
            match self.once(url, body, None).await {
                Ok(response) => {
                    self.stats.sent();
                    tracing::debug!(channel = self.channel, what, attempt, "chat message sent");
                    return Ok(response);
                }
                Err(e) => {
                    let message = self.scrub(&e.message);
                    self.stats.error(&format!(
                        "{what} (attempt {attempt}/{}): {message}",
                        self.retry.attempts
                    ));
                    if !e.retry || attempt == self.retry.attempts {
                        self.stats.failed();
                        tracing::warn!(channel = self.channel, what, attempt, error = %message, "chat message not delivered");
                        return Err(Undelivered);
                    }
                    tracing::debug!(channel = self.channel, what, attempt, error = %message, "chat message failed, retrying");
                    tokio::time::sleep(e.after.unwrap_or(delay).min(self.retry.max)).await;
                    delay = (delay * 2).min(self.retry.max);
                }
            }
        }
        Err(Undelivered)
    }

    /// One long-poll request waiting up to `wait` for the service (no retries: the caller
    /// polls again); the response, or the error scrubbed of secrets.
    async fn poll(&self, url: &str, body: &Value, wait: Duration) -> Result<Value, String> {
        self.once(url, body, Some(wait + self.timeout))
            .await
            .map_err(|e| self.scrub(&e.message))
    }

    /// One request. The response body is parsed as JSON when it is JSON, else kept as a
    /// string (Slack answers `ok`, Teams workflows nothing).
    async fn once(
        &self,
        url: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value, AttemptError> {
        let mut request = self.client.post(url).json(body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| AttemptError {
            message: describe(&e.without_url()),
            retry: true,
            after: None,
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| AttemptError {
            message: describe(&e.without_url()),
            retry: true,
            after: None,
        })?;
        let parsed = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        if status.is_success() {
            return Ok(parsed);
        }
        // Telegram says why in `description` and how long to wait in `retry_after`.
        let after = parsed["parameters"]["retry_after"]
            .as_u64()
            .map(|s| Duration::from_secs(s.min(60)));
        let reason = parsed["description"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(AttemptError {
            message: format!("HTTP {}: {}", status.as_u16(), reason.trim()),
            retry: status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT,
            after,
        })
    }
}

/// The secret parts of a webhook URL, for [`Http::new`]: the URL, its path and query, and
/// every path segment and query value long enough to be a key (a service may echo any of
/// them back in an error).
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = vec![url.to_string()];
    if let Ok(parsed) = reqwest::Url::parse(url) {
        secrets.push(parsed.path().to_string());
        secrets.extend(parsed.query().map(str::to_string));
        secrets.extend(
            parsed
                .path_segments()
                .into_iter()
                .flatten()
                .map(str::to_string),
        );
        secrets.extend(parsed.query_pairs().map(|(_, v)| v.into_owned()));
    }
    secrets.retain(|s| s.len() >= 12);
    // Longest first, so a part never leaves a piece of a longer secret behind.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

/// A reqwest error and its causes on one line (the URL already removed).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    if !d.ancestors.is_empty() {
        facts.push(("Ancestors", d.ancestors.join(" ← ")));
    }
    let target = match (&d.target_ip, &d.country) {
        (Some(ip), Some(cc)) => format!("{ip} ({cc})"),
        (Some(ip), None) => ip.to_string(),
        (None, _) => "none".into(),
    };
    facts.push(("Target", target));
    facts.push((
        "MITRE",
        format!(
            "{} {} ({})",
            d.mitre.technique, d.mitre.name, d.mitre.tactic
        ),
    ));
    facts.push(("Risk", format!("{}/100", d.risk)));
    facts.push((
        "Auto-block",
        format!(
            "in {} (at {})",
            time_left(d, now),
            humantime::format_rfc3339_seconds(d.deadline)
        ),
    ));
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
    };
    if let Some(target) = d
        .target_ip
        .filter(|_| matches!(d.state, State::Blocked | State::AutoBlocked))
    {
        line.push_str(&format!(" ({target})"));
    }
    if let Some(reason) = &d.reason {
        line.push_str(&format!(". {reason}"));
    }
    line
}

/// Test doubles shared by the chat and override tests: a fake switch (the real one is tested
/// on its own) and a recording HTTP server standing in for a chat service.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        collections::HashMap,
        net::IpAddr,
        sync::{Arc, Mutex},
        time::{Duration, SystemTime},
    };

    use axum::{
        Router,
        body::Bytes,
        extract::State as AxState,
        http::{StatusCode, Uri},
        response::IntoResponse,
    };
    use serde_json::Value;
    use tokio::sync::mpsc;

    use crate::{
        event::Mitre,
        switch::decision::{Answer, AnswerError, Decision, State, Verdict},
    };

    /// A pending geo decision `id` whose deadline is `left` from now.
    pub fn decision(id: &str, left: Duration) -> Decision {
        let now = SystemTime::now();
        Decision {
            id: id.into(),
            anomaly: "geo".into(),
            severity: "critical".into(),
            risk: 92,
            mitre: Mitre {
                technique: "T1071.001".into(),
                tactic: "Command and Control".into(),
                name: "Web Protocols".into(),
            },
            host: "web-1".into(),
            pid: 4242,
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            ancestors: vec!["bash".into(), "node".into(), "systemd".into()],
            target_ip: Some("198.51.100.2".parse::<IpAddr>().unwrap()),
            country: Some("RU".into()),
            detail: "curl connected to 198.51.100.2:443 (RU)".into(),
            created: now,
            deadline: now + left,
            state: State::Pending,
            decided_by: None,
            reason: None,
        }
    }

    /// Stands in for the switch: applies each answer to a pending decision exactly once.
    pub struct FakeSwitch {
        pub answers: mpsc::Sender<Answer>,
        decisions: Arc<Mutex<HashMap<String, Decision>>>,
        seen: Arc<Mutex<Vec<(String, Verdict, String)>>>,
    }

    impl FakeSwitch {
        pub fn start() -> FakeSwitch {
            let (answers, mut rx) = mpsc::channel::<Answer>(16);
            let decisions: Arc<Mutex<HashMap<String, Decision>>> = Arc::default();
            let seen: Arc<Mutex<Vec<_>>> = Arc::default();
            let (d, s) = (decisions.clone(), seen.clone());
            tokio::spawn(async move {
                while let Some(a) = rx.recv().await {
                    s.lock()
                        .unwrap()
                        .push((a.id.clone(), a.verdict, a.via.clone()));
                    let mut all = d.lock().unwrap();
                    let result = match all.get_mut(&a.id) {
                        None => Err(AnswerError::Unknown(a.id.clone())),
                        Some(d) if d.state != State::Pending => Err(AnswerError::Ended {
                            id: a.id.clone(),
                            state: d.state,
                        }),
                        Some(d) => {
                            d.state = match a.verdict {
                                Verdict::Safe => State::Safe,
                                Verdict::Block => State::Blocked,
                            };
                            d.decided_by = Some(a.via.clone());
                            Ok(d.clone())
                        }
                    };
                    let _ = a.reply.send(result);
                }
            });
            FakeSwitch {
                answers,
                decisions,
                seen,
            }
        }

        pub fn insert(&self, d: Decision) {
            self.decisions.lock().unwrap().insert(d.id.clone(), d);
        }

        pub fn get(&self, id: &str) -> Decision {
            self.decisions.lock().unwrap()[id].clone()
        }

        pub fn state(&self, id: &str) -> State {
            self.get(id).state
        }

        pub fn decided_by(&self, id: &str) -> Option<String> {
            self.get(id).decided_by
        }

        /// Every answer received: id, verdict, via.
        pub fn answers_seen(&self) -> Vec<(String, Verdict, String)> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// A request the fake service received.
    #[derive(Debug, Clone)]
    pub struct Recorded {
        pub path: String,
        pub body: Bytes,
    }

    impl Recorded {
        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {:?}", self.path, self.body))
        }
    }

    type Responder = Arc<dyn Fn(&Recorded) -> (u16, String, Duration) + Send + Sync>;

    /// A real HTTP server on loopback that records every request and answers with the
    /// responder's status and body.
    pub struct FakeApi {
        pub base: String,
        log: Arc<Mutex<Vec<Recorded>>>,
    }

    #[derive(Clone)]
    struct Fake {
        log: Arc<Mutex<Vec<Recorded>>>,
        respond: Responder,
    }

    async fn record(AxState(fake): AxState<Fake>, uri: Uri, body: Bytes) -> impl IntoResponse {
        let r = Recorded {
            path: uri.path().to_string(),
            body,
        };
        let (status, body, delay) = (fake.respond)(&r);
        fake.log.lock().unwrap().push(r);
        tokio::time::sleep(delay).await;
        (StatusCode::from_u16(status).unwrap(), body)
    }

    impl FakeApi {
        pub async fn start(
            respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
        ) -> FakeApi {
            Self::start_with(move |r| {
                let (status, body) = respond(r);
                (status, body, Duration::ZERO)
            })
            .await
        }

        /// A fake whose answers may take a while: the responder also says how long.
        pub async fn start_with(
            respond: impl Fn(&Recorded) -> (u16, String, Duration) + Send + Sync + 'static,
        ) -> FakeApi {
            let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
            let fake = Fake {
                log: log.clone(),
                respond: Arc::new(respond),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let app = Router::new().fallback(record).with_state(fake);
            tokio::spawn(async move { axum::serve(listener, app).await });
            FakeApi { base, log }
        }

        /// Everything received so far.
        pub fn requests(&self) -> Vec<Recorded> {
            self.log.lock().unwrap().clone()
        }

        /// Requests to paths ending in `suffix`.
        pub fn to(&self, suffix: &str) -> Vec<Recorded> {
            self.requests()
                .into_iter()
                .filter(|r| r.path.ends_with(suffix))
                .collect()
        }

        /// Wait (up to 10 s) until at least `n` requests have arrived.
        pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
            self.wait_until(|r| r.len() >= n).await
        }

        pub async fn wait_until(&self, done: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
            for _ in 0..200 {
                let got = self.requests();
                if done(&got) {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "the fake service did not get what was expected: {:#?}",
                self.requests()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{Arc, Mutex},
        time::{Duration, Instant, SystemTime},
    };

    use hmac::{Hmac, Mac};
    use serde_json::{Value, json};
    use sha2::Sha256;
    use tokio::sync::mpsc;

    use super::{
        testing::{FakeApi, FakeSwitch, Recorded, decision},
        *,
    };
    use crate::{
        override_http::{Secret, serve},
        switch::decision::{Decision, Notice, State},
    };

    const SLACK_SECRET: &str = "slack-signing-secret-for-tests";
    const SLACK_HOOK: &str = "/services/T000/B000/slackhooksecret";
    const TEAMS_HOOK: &str = "/workflows/teamshooksecret/triggers/manual/run";
    const BOT_TOKEN: &str = "123456:telegram-token-secret";
    const CHAT: i64 = -100_123;
    const ADMIN: i64 = 77;

    fn fast() -> Tuning {
        Tuning {
            retry: Retry {
                attempts: 3,
                first: Duration::from_millis(20),
                max: Duration::from_millis(100),
            },
            poll_wait: Duration::from_millis(200),
            summary_period: Duration::from_millis(300),
        }
    }

    /// A fake Telegram Bot API: numbered `sendMessage` replies, and `getUpdates` serving the
    /// queued updates (waiting a little when there are none, like a long poll).
    struct FakeTelegram {
        api: FakeApi,
        updates: Arc<Mutex<VecDeque<Value>>>,
    }

    impl FakeTelegram {
        async fn start() -> FakeTelegram {
            let updates: Arc<Mutex<VecDeque<Value>>> = Arc::default();
            let queue = updates.clone();
            let next_id = Arc::new(Mutex::new(100));
            let api = FakeApi::start_with(move |r| {
                let ok = |result: Value| json!({"ok": true, "result": result}).to_string();
                if r.path.ends_with("/getUpdates") {
                    let pending: Vec<Value> = queue.lock().unwrap().drain(..).collect();
                    let wait = if pending.is_empty() { 100 } else { 0 };
                    return (200, ok(pending.into()), Duration::from_millis(wait));
                }
                if r.path.ends_with("/sendMessage") {
                    let mut id = next_id.lock().unwrap();
                    *id += 1;
                    return (200, ok(json!({"message_id": *id})), Duration::ZERO);
                }
                (200, ok(json!(true)), Duration::ZERO)
            })
            .await;
            FakeTelegram { api, updates }
        }

        /// Queue a button press, as `getUpdates` will return it.
        fn press(&self, update_id: i64, from: i64, chat: i64, message_id: i64, data: &str) {
            self.updates.lock().unwrap().push_back(json!({
                "update_id": update_id,
                "callback_query": {
                    "id": format!("cb{update_id}"),
                    "from": {"id": from, "is_bot": false, "first_name": "Admin"},
                    "message": {
                        "message_id": message_id,
                        "chat": {"id": chat, "type": "supergroup"},
                        "date": 0,
                        "text": "🚨 CRITICAL geo alert on web-1",
                    },
                    "chat_instance": "1",
                    "data": data,
                },
            }));
        }

        /// The `sendMessage` request that carried decision `id`'s alert and its message id.
        fn alert(&self, id: &str) -> (Value, i64) {
            let sends = self.api.to("/sendMessage");
            let index = sends
                .iter()
                .position(|r| {
                    r.json()["text"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("{id}-detail"))
                })
                .unwrap_or_else(|| panic!("no alert for {id}: {sends:#?}"));
            (sends[index].json(), 101 + index as i64)
        }
    }

    fn with_detail(id: &str) -> Decision {
        let mut d = decision(id, Duration::from_secs(300));
        d.detail = format!("{id}-detail: curl connected to 198.51.100.2:443 (RU)");
        d
    }

    struct Harness {
        switch: FakeSwitch,
        slack: FakeApi,
        teams: FakeApi,
        telegram: FakeTelegram,
        endpoint: String,
        notices: mpsc::UnboundedSender<Notice>,
        stats: Arc<NotifyStats>,
        http: reqwest::Client,
    }

    impl Harness {
        async fn start(summary: Option<SummarySource>) -> Harness {
            let switch = FakeSwitch::start();
            let slack = FakeApi::start(|_| (200, "ok".into())).await;
            let teams = FakeApi::start(|_| (202, String::new())).await;
            let telegram = FakeTelegram::start().await;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let mut config = Config::default();
            config.agent.id = "web-1".into();
            config.override_.public_url = endpoint.clone();
            let n = &mut config.notify;
            n.timeout = Duration::from_secs(2);
            n.slack.webhook_url = format!("{}{SLACK_HOOK}", slack.base);
            n.slack.signing_secret = SLACK_SECRET.into();
            n.slack.daily_summary = summary.is_some();
            n.teams.webhook_url = format!("{}{TEAMS_HOOK}", teams.base);
            n.telegram.api_base = telegram.api.base.clone();
            n.telegram.bot_token = BOT_TOKEN.into();
            n.telegram.chat_id = CHAT.to_string();
            n.telegram.allowed_user_ids = vec![ADMIN];
            n.telegram.daily_summary = summary.is_some();
            let secret = Arc::new(Secret::from_bytes(b"harness key, thirty-two bytes or more"));
            tokio::spawn(serve(
                listener,
                &config,
                secret.clone(),
                switch.answers.clone(),
                slack::outcome_message,
            ));
            let (notices, rx) = mpsc::unbounded_channel();
            let stats = Arc::new(NotifyStats::default());
            let handles = start(
                &config,
                Some(secret),
                rx,
                switch.answers.clone(),
                stats.clone(),
                summary,
                fast(),
            );
            assert!(!handles.is_empty());
            Harness {
                switch,
                slack,
                teams,
                telegram,
                endpoint,
                notices,
                stats,
                http: reqwest::Client::new(),
            }
        }

        fn open(&self, d: Decision) {
            self.switch.insert(d.clone());
            self.notices.send(Notice::Opened(d)).unwrap();
        }

        /// What the real switch does after applying an answer: tell the channels.
        fn ended(&self, id: &str) {
            self.notices
                .send(Notice::Ended(self.switch.get(id)))
                .unwrap();
        }
    }

    /// The Teams card that carried decision `id`.
    fn teams_card(teams: &FakeApi, id: &str) -> Value {
        teams
            .requests()
            .iter()
            .map(Recorded::json)
            .find(|m| m.to_string().contains(&format!("{id}-detail")))
            .unwrap_or_else(|| panic!("no card for {id}"))
    }

    fn slack_signature(body: &str, ts: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SLACK_SECRET.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    async fn wait_state(switch: &FakeSwitch, id: &str, want: State) {
        for _ in 0..100 {
            if switch.state(id) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{id} is {} not {want}", switch.state(id));
    }

    #[tokio::test]
    async fn alerts_carry_everything_and_both_buttons() {
        let h = Harness::start(None).await;
        h.open(with_detail("a1"));
        h.slack.wait_for(1).await;
        h.teams.wait_for(1).await;
        h.telegram
            .api
            .wait_until(|r| r.iter().any(|r| r.path.ends_with("/sendMessage")))
            .await;

        // Slack: Block Kit with the two buttons, values naming the verdict and decision.
        let slack = h.slack.requests()[0].clone();
        assert_eq!(slack.path, SLACK_HOOK);
        let message = slack.json();
        let blocks = message["blocks"].as_array().unwrap();
        let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
        let buttons = actions["elements"].as_array().unwrap();
        assert_eq!(buttons.len(), 2);
        assert_eq!(buttons[0]["type"], "button");
        assert_eq!(buttons[0]["text"]["text"], "MARK AS SAFE");
        assert_eq!(buttons[0]["value"], "safe:a1");
        assert_eq!(buttons[1]["text"]["text"], "CONFIRM BLOCK");
        assert_eq!(buttons[1]["value"], "block:a1");
        assert_eq!(buttons[1]["style"], "danger");
        let text = message.to_string();
        for fact in [
            "critical",
            "geo",
            "web-1",
            "curl (pid 4242)",
            "/usr/bin/curl",
            "bash ← node ← systemd",
            "198.51.100.2 (RU)",
            "T1071.001",
            "Command and Control",
            "92/100",
            "Auto-block",
            "in 4m",
        ] {
            assert!(text.contains(fact), "Slack message lacks {fact:?}: {text}");
        }

        // Teams: an Adaptive Card 1.5 attachment with two signed OpenUrl actions.
        let card = teams_card(&h.teams, "a1");
        assert_eq!(h.teams.requests()[0].path, TEAMS_HOOK);
        assert_eq!(card["type"], "message");
        let attachment = &card["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let content = &attachment["content"];
        assert_eq!(content["type"], "AdaptiveCard");
        assert_eq!(
            content["$schema"],
            "http://adaptivecards.io/schemas/adaptive-card.json"
        );
        assert_eq!(content["version"], "1.5");
        assert!(
            content["body"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["type"].is_string())
        );
        let actions = content["actions"].as_array().unwrap();
        assert_eq!(actions.len(), 2);
        for (action, title, verdict) in [
            (&actions[0], "MARK AS SAFE", "safe"),
            (&actions[1], "CONFIRM BLOCK", "block"),
        ] {
            assert_eq!(action["type"], "Action.OpenUrl");
            assert_eq!(action["title"], title);
            let url = action["url"].as_str().unwrap();
            let want = format!("{}/v1/decide?id=a1&action={verdict}&exp=", h.endpoint);
            assert!(url.starts_with(&want), "{url}");
            assert!(url.contains("&sig="), "{url}");
        }
        let text = card.to_string();
        for fact in [
            "web-1",
            "curl (pid 4242)",
            "198.51.100.2 (RU)",
            "T1071.001",
            "92/100",
            "in 4m",
        ] {
            assert!(text.contains(fact), "Teams card lacks {fact:?}: {text}");
        }

        // Telegram: sendMessage to the chat with an inline keyboard carrying callback data.
        let (message, _) = h.telegram.alert("a1");
        assert!(
            h.telegram.api.to("/sendMessage")[0]
                .path
                .starts_with(&format!("/bot{BOT_TOKEN}/"))
        );
        assert_eq!(message["chat_id"], CHAT);
        let keyboard = &message["reply_markup"]["inline_keyboard"][0];
        assert_eq!(keyboard[0]["callback_data"], "safe:a1");
        assert_eq!(keyboard[1]["callback_data"], "block:a1");
        assert!(
            keyboard[0]["text"]
                .as_str()
                .unwrap()
                .contains("MARK AS SAFE")
        );
        assert!(
            keyboard[1]["text"]
                .as_str()
                .unwrap()
                .contains("CONFIRM BLOCK")
        );
        let text = message["text"].as_str().unwrap();
        for fact in [
            "web-1",
            "curl (pid 4242)",
            "198.51.100.2 (RU)",
            "T1071.001",
            "92/100",
            "in 4m",
        ] {
            assert!(text.contains(fact), "Telegram text lacks {fact:?}: {text}");
        }

        let stats = h.stats.snapshot();
        assert_eq!(
            stats.keys().collect::<Vec<_>>(),
            ["slack", "teams", "telegram"]
        );
        assert!(
            stats.values().all(|s| s.sent == 1 && s.failed == 0),
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn teams_link_marks_safe_and_every_channel_shows_the_outcome() {
        let h = Harness::start(None).await;
        h.open(with_detail("t1"));
        let card = h.teams.wait_for(1).await[0].json();
        let (_, message_id) = {
            h.telegram
                .api
                .wait_until(|r| r.iter().any(|r| r.path.ends_with("/sendMessage")))
                .await;
            h.telegram.alert("t1")
        };
        let url = card["attachments"][0]["content"]["actions"][0]["url"]
            .as_str()
            .unwrap();

        // Opening the link shows a page; its button applies the answer.
        let page = h.http.get(url).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let page = page.text().await.unwrap();
        assert_eq!(
            h.switch.state("t1"),
            State::Pending,
            "opening alone decides nothing"
        );
        let query = reqwest::Url::parse(url).unwrap();
        let fields: Vec<(String, String)> = query.query_pairs().into_owned().collect();
        for (_, value) in &fields {
            assert!(
                page.contains(value.as_str()),
                "the form carries {value}: {page}"
            );
        }
        let done = h
            .http
            .post(format!("{}/v1/decide", h.endpoint))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 200);
        assert_eq!(h.switch.state("t1"), State::Safe);
        assert_eq!(h.switch.decided_by("t1").as_deref(), Some("teams-link"));
        let again = h
            .http
            .post(format!("{}/v1/decide", h.endpoint))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 409, "a link works once");

        h.ended("t1");
        let cards = h.teams.wait_for(2).await;
        let outcome = cards[1].json();
        assert!(
            outcome.to_string().contains("MARKED SAFE by teams-link"),
            "{outcome}"
        );
        assert!(
            outcome["attachments"][0]["content"]["actions"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        let slack = h.slack.wait_for(2).await;
        assert!(
            slack[1].json()["text"]
                .as_str()
                .unwrap()
                .contains("MARKED SAFE"),
            "follow-up"
        );
        let edits = h
            .telegram
            .api
            .wait_until(|r| r.iter().any(|r| r.path.ends_with("/editMessageText")))
            .await;
        let edit = edits
            .iter()
            .find(|r| r.path.ends_with("/editMessageText"))
            .unwrap()
            .json();
        assert_eq!(edit["message_id"], message_id);
        assert!(
            edit["text"].as_str().unwrap().contains("MARKED SAFE"),
            "{edit}"
        );
        assert!(
            edit.get("reply_markup").is_none(),
            "the keyboard goes: {edit}"
        );
    }

    #[tokio::test]
    async fn slack_click_blocks() {
        let h = Harness::start(None).await;
        h.open(with_detail("s1"));
        let alert = h.slack.wait_for(1).await[0].json();
        let value = alert["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "actions")
            .unwrap()["elements"][1]["value"]
            .as_str()
            .unwrap()
            .to_string();
        let payload = json!({
            "type": "block_actions",
            "user": {"id": "U42"},
            "response_url": format!("{}/actions/respond", h.slack.base),
            "actions": [{"action_id": "sentinel_block", "value": value}],
        });
        let mut form = reqwest::Url::parse("http://x/").unwrap();
        form.query_pairs_mut()
            .append_pair("payload", &payload.to_string());
        let body = form.query().unwrap().to_string();
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let r = h
            .http
            .post(format!("{}/slack/actions", h.endpoint))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", slack_signature(&body, ts))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(h.switch.state("s1"), State::Blocked);
        assert_eq!(h.switch.decided_by("s1").as_deref(), Some("slack:U42"));
        let replaced = h
            .slack
            .wait_until(|r| r.iter().any(|r| r.path == "/actions/respond"))
            .await;
        let replaced = replaced
            .iter()
            .find(|r| r.path == "/actions/respond")
            .unwrap()
            .json();
        assert_eq!(replaced["replace_original"], true);
        assert!(
            replaced["text"]
                .as_str()
                .unwrap()
                .contains("BLOCKED by slack:U42"),
            "{replaced}"
        );

        // The switch's Ended notice: the message already shows it, so no follow-up in Slack.
        h.ended("s1");
        h.teams.wait_for(2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.slack.to(SLACK_HOOK).len(), 1);
    }

    #[tokio::test]
    async fn telegram_press_from_the_chat_is_applied_and_answered() {
        let h = Harness::start(None).await;
        h.open(with_detail("g1"));
        h.telegram
            .api
            .wait_until(|r| r.iter().any(|r| r.path.ends_with("/sendMessage")))
            .await;
        let (message, message_id) = h.telegram.alert("g1");
        let data = message["reply_markup"]["inline_keyboard"][0][1]["callback_data"]
            .as_str()
            .unwrap();
        h.telegram.press(1, 5, CHAT, message_id, data);
        wait_state(&h.switch, "g1", State::Blocked).await;
        assert_eq!(h.switch.decided_by("g1").as_deref(), Some("telegram:5"));
        let log = h
            .telegram
            .api
            .wait_until(|r| {
                r.iter().any(|r| r.path.ends_with("/answerCallbackQuery"))
                    && r.iter().any(|r| r.path.ends_with("/editMessageText"))
            })
            .await;
        let answered = log
            .iter()
            .find(|r| r.path.ends_with("/answerCallbackQuery"))
            .unwrap()
            .json();
        assert_eq!(answered["callback_query_id"], "cb1");
        assert!(
            answered["text"].as_str().unwrap().contains("BLOCKED"),
            "{answered}"
        );
        let edit = log
            .iter()
            .find(|r| r.path.ends_with("/editMessageText"))
            .unwrap()
            .json();
        assert_eq!(
            (edit["chat_id"].as_i64(), edit["message_id"].as_i64()),
            (Some(CHAT), Some(message_id))
        );
        assert!(
            edit["text"]
                .as_str()
                .unwrap()
                .contains("BLOCKED by telegram:5"),
            "{edit}"
        );
        // The offset moved past the update: it is not served (or applied) twice.
        let polls = h
            .telegram
            .api
            .wait_until(|r| r.iter().filter(|r| r.path.ends_with("/getUpdates")).count() >= 3)
            .await;
        let last = polls
            .iter()
            .rev()
            .find(|r| r.path.ends_with("/getUpdates"))
            .unwrap()
            .json();
        assert_eq!(last["offset"], 2);
        assert_eq!(h.switch.answers_seen().len(), 1);
    }

    #[tokio::test]
    async fn telegram_presses_from_elsewhere_are_ignored() {
        let h = Harness::start(None).await;
        h.open(with_detail("g2"));
        h.open(with_detail("g3"));
        h.telegram.press(7, 999, -555, 1, "block:g2");
        h.telegram.press(8, 999, -555, 1, "safe:g2");
        h.telegram.press(9, 5, CHAT, 1, "nuke:g2");
        let log = h
            .telegram
            .api
            .wait_until(|r| {
                r.iter()
                    .filter(|r| r.path.ends_with("/answerCallbackQuery"))
                    .count()
                    >= 3
            })
            .await;
        let replies: Vec<String> = log
            .iter()
            .filter(|r| r.path.ends_with("/answerCallbackQuery"))
            .map(|r| r.json()["text"].as_str().unwrap().to_string())
            .collect();
        assert!(
            replies.contains(&"Not authorised.".to_string()),
            "{replies:?}"
        );
        assert!(
            replies.contains(&"Unknown action.".to_string()),
            "{replies:?}"
        );
        assert!(h.switch.answers_seen().is_empty());
        assert_eq!(h.switch.state("g2"), State::Pending);

        // An allowed user may answer from anywhere (e.g. a private chat with the bot).
        h.telegram.press(10, ADMIN, ADMIN, 1, "safe:g3");
        wait_state(&h.switch, "g3", State::Safe).await;
        assert_eq!(
            h.switch.decided_by("g3").as_deref(),
            Some(format!("telegram:{ADMIN}").as_str())
        );
    }

    #[tokio::test]
    async fn auto_block_outcome_is_shown_everywhere() {
        let h = Harness::start(None).await;
        h.open(with_detail("x1"));
        h.slack.wait_for(1).await;
        let mut ended = h.switch.get("x1");
        ended.state = State::AutoBlocked;
        ended.decided_by = Some("timer".into());
        h.notices.send(Notice::Ended(ended)).unwrap();
        let slack = h.slack.wait_for(2).await[1].json();
        assert!(
            slack["text"].as_str().unwrap().contains("AUTO-BLOCKED"),
            "{slack}"
        );
        let teams = h.teams.wait_for(2).await[1].json();
        assert!(teams.to_string().contains("AUTO-BLOCKED"), "{teams}");
        let edits = h
            .telegram
            .api
            .wait_until(|r| r.iter().any(|r| r.path.ends_with("/editMessageText")))
            .await;
        let edit = edits
            .iter()
            .find(|r| r.path.ends_with("/editMessageText"))
            .unwrap()
            .json();
        assert!(
            edit["text"].as_str().unwrap().contains("AUTO-BLOCKED"),
            "{edit}"
        );
    }

    #[tokio::test]
    async fn failures_are_retried_counted_and_never_show_secrets() {
        let slack = FakeApi::start(|_| (500, format!("boom {SLACK_HOOK}"))).await;
        let telegram = FakeApi::start(|r| {
            if r.path.ends_with("/getUpdates") {
                (
                    409,
                    json!({"ok": false, "description": "Conflict: webhook is active"}).to_string(),
                )
            } else {
                (
                    401,
                    json!({"ok": false, "description": "Unauthorized"}).to_string(),
                )
            }
        })
        .await;
        let mut config = Config::default();
        config.notify.slack.webhook_url = format!("{}{SLACK_HOOK}", slack.base);
        config.notify.slack.signing_secret = SLACK_SECRET.into();
        config.notify.telegram.api_base = telegram.base.clone();
        config.notify.telegram.bot_token = BOT_TOKEN.into();
        config.notify.telegram.chat_id = "@alerts".into();
        // Teams on a port where nothing listens.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.notify.teams.webhook_url =
            format!("http://{}{TEAMS_HOOK}", dead.local_addr().unwrap());
        drop(dead);
        config.override_.public_url = "https://sentinel.example".into();
        let (notices, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(NotifyStats::default());
        let switch = FakeSwitch::start();
        start(
            &config,
            Some(Arc::new(Secret::from_bytes(&[7; 32]))),
            rx,
            switch.answers.clone(),
            stats.clone(),
            None,
            fast(),
        );
        notices.send(Notice::Opened(with_detail("f1"))).unwrap();
        slack.wait_for(3).await;
        for _ in 0..100 {
            let s = stats.snapshot();
            if s["slack"].failed == 1 && s["teams"].failed == 1 && s["telegram"].failed == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = stats.snapshot();
        assert_eq!((s["slack"].sent, s["slack"].failed), (0, 1), "{s:?}");
        assert_eq!(
            slack.requests().len(),
            3,
            "5xx is retried up to notify.attempts"
        );
        assert!(
            s["slack"]
                .last_error
                .as_deref()
                .unwrap()
                .contains("HTTP 500"),
            "{s:?}"
        );
        assert_eq!((s["teams"].sent, s["teams"].failed), (0, 1), "{s:?}");
        assert!(
            s["teams"]
                .last_error
                .as_deref()
                .unwrap()
                .contains("attempt 3/3"),
            "{s:?}"
        );
        assert_eq!((s["telegram"].sent, s["telegram"].failed), (0, 1), "{s:?}");
        let sends = telegram.to("/sendMessage");
        assert_eq!(sends.len(), 1, "a 401 is not retried");
        assert_eq!(sends[0].json()["chat_id"], "@alerts");
        let dump = format!("{s:?}");
        for secret in [
            "slackhooksecret",
            "teamshooksecret",
            "telegram-token-secret",
        ] {
            assert!(!dump.contains(secret), "{secret} leaked: {dump}");
        }
        // Polling trouble shows too (the poller backs off, then tries again).
        telegram
            .wait_until(|r| r.iter().filter(|r| r.path.ends_with("/getUpdates")).count() >= 2)
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let last = stats.snapshot()["telegram"].last_error.clone().unwrap();
        assert!(last.contains("getUpdates: HTTP 409"), "{last}");
        assert!(!last.contains("telegram-token-secret"), "{last}");
    }

    #[tokio::test]
    async fn a_slow_channel_holds_up_nothing_else() {
        let slow = FakeApi::start_with(|_| (200, "ok".into(), Duration::from_secs(5))).await;
        let teams = FakeApi::start(|_| (202, String::new())).await;
        let mut config = Config::default();
        config.notify.timeout = Duration::from_millis(300);
        config.notify.slack.webhook_url = format!("{}{SLACK_HOOK}", slow.base);
        config.notify.slack.signing_secret = SLACK_SECRET.into();
        config.notify.teams.webhook_url = format!("{}{TEAMS_HOOK}", teams.base);
        config.override_.public_url = "https://sentinel.example".into();
        let (notices, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(NotifyStats::default());
        let switch = FakeSwitch::start();
        start(
            &config,
            Some(Arc::new(Secret::from_bytes(&[7; 32]))),
            rx,
            switch.answers.clone(),
            stats.clone(),
            None,
            fast(),
        );
        let t = Instant::now();
        for id in ["w1", "w2", "w3"] {
            notices.send(Notice::Opened(with_detail(id))).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "handing over notices never waits"
        );
        teams.wait_for(3).await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "Teams did not wait for Slack: {:?}",
            t.elapsed()
        );
        // Each Slack request times out after notify.timeout and is retried, then counted.
        for _ in 0..100 {
            if stats.snapshot()["slack"].failed == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = stats.snapshot();
        assert_eq!(s["slack"].failed, 3, "{s:?}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the decisions were retried side by side"
        );
        assert!(
            s["slack"]
                .last_error
                .as_deref()
                .unwrap()
                .contains("timed out"),
            "{s:?}"
        );
        assert_eq!(s["teams"].sent, 3);
    }

    #[tokio::test]
    async fn daily_summary_goes_to_the_channels_that_want_it() {
        let source: SummarySource = Arc::new(|since| Summary {
            since,
            alerts_by_anomaly: [("geo".to_string(), 2), ("lineage".to_string(), 1)].into(),
            decisions_by_outcome: [("auto-blocked".to_string(), 2), ("safe".to_string(), 1)].into(),
            blocks: 2,
            kills: 1,
            lost_events: 4,
            ..Summary::default()
        });
        let h = Harness::start(Some(source)).await;
        let sent = h
            .telegram
            .api
            .wait_until(|r| r.iter().any(|r| r.path.ends_with("/sendMessage")))
            .await;
        let text = sent
            .iter()
            .find(|r| r.path.ends_with("/sendMessage"))
            .unwrap()
            .json()["text"]
            .as_str()
            .unwrap()
            .to_string();
        for line in [
            "Sentinel daily summary for web-1 since",
            "Alerts: 3 (geo 2, lineage 1)",
            "Decisions: 3 (auto-blocked 2, safe 1)",
            "Blocks: 2",
            "Kills: 1",
            "Lost events: 4",
        ] {
            assert!(text.contains(line), "{line:?} missing: {text}");
        }
        let slack = h.slack.wait_for(1).await[0].json();
        assert!(
            slack.to_string().contains("Alerts: 3 (geo 2, lineage 1)"),
            "{slack}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(h.teams.requests().is_empty(), "Teams did not ask for it");
    }

    #[test]
    fn process_chosen_text_is_not_markup() {
        let mut d = decision("m1", Duration::from_secs(60));
        d.comm = "<!channel>".into();
        d.detail = "x <https://evil|click> & more".into();
        let text = slack::alert_message(&d, SystemTime::now()).to_string();
        assert!(
            !text.contains("<!channel>") && !text.contains("<https://evil"),
            "{text}"
        );
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        let telegram = telegram::alert_message(&d, SystemTime::now(), "-1");
        assert!(
            telegram.get("parse_mode").is_none(),
            "plain text: {telegram}"
        );
        // Teams: no markdown link and no bare URL in what the process chose.
        d.comm = "[update](https://evil.example)".into();
        d.detail = "see https://evil.example/x and [here](https://evil.example)".into();
        let secret = Secret::from_bytes(&[7; 32]);
        let card = teams::alert_card(&d, SystemTime::now(), "https://sentinel.example", &secret);
        let body = card["attachments"][0]["content"]["body"].to_string();
        assert!(
            !body.contains("](") && !body.contains("https://evil"),
            "{body}"
        );
        assert!(
            body.contains("evil.example"),
            "the text itself is kept: {body}"
        );
    }

    #[test]
    fn webhook_url_parts_are_secrets() {
        let secrets = url_secrets(
            "https://prod-1.westus.logic.azure.com/workflows/0123456789abcdef/triggers/manual/paths/invoke?api-version=2016-06-01&sig=AbCdEfGhIjKlMnOpQrStUv",
        );
        for part in [
            "0123456789abcdef",
            "AbCdEfGhIjKlMnOpQrStUv",
            "/workflows/0123456789abcdef/triggers/manual/paths/invoke",
        ] {
            assert!(secrets.iter().any(|s| s == part), "{part}: {secrets:?}");
        }
        assert!(
            !secrets.iter().any(|s| s == "manual" || s == "2016-06-01"),
            "{secrets:?}"
        );
    }

    #[test]
    fn telegram_callback_data_fits() {
        let d = decision("ffffffff", Duration::from_secs(60));
        let m = telegram::alert_message(&d, SystemTime::now(), "-1");
        for b in m["reply_markup"]["inline_keyboard"][0].as_array().unwrap() {
            assert!(b["callback_data"].as_str().unwrap().len() <= 64);
        }
    }

    #[test]
    fn outcomes_say_who_and_what() {
        let mut d = decision("o1", Duration::from_secs(60));
        d.state = State::Blocked;
        d.decided_by = Some("cli".into());
        assert_eq!(outcome(&d), "BLOCKED by cli (198.51.100.2)");
        d.state = State::Safe;
        assert_eq!(outcome(&d), "MARKED SAFE by cli: no block");
        d.state = State::AutoBlocked;
        d.reason = Some("the trust guard refused it".into());
        assert_eq!(
            outcome(&d),
            "AUTO-BLOCKED: nobody answered before the deadline (198.51.100.2). the trust guard refused it"
        );
    }

    #[test]
    fn no_channel_configured_starts_nothing() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_tx, rx) = mpsc::unbounded_channel();
            let switch = FakeSwitch::start();
            let stats = Arc::new(NotifyStats::default());
            let handles = spawn(
                &Config::default(),
                None,
                rx,
                switch.answers.clone(),
                stats.clone(),
                None,
            );
            assert!(handles.is_empty());
            assert!(stats.snapshot().is_empty());
        });
    }
}
