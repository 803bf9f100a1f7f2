//! Chat delivery over HTTP: one client per channel with a timeout, retries with exponential
//! backoff (honouring a service's `retry_after`), counters for `sentinel status`, and secrets
//! (webhook URLs, bot tokens) scrubbed from every error before it is logged or recorded.

use std::{sync::Arc, time::Duration};

use serde_json::Value;

use super::{ChannelStats, NotifyStats};
use crate::config::Config;

/// Retry schedule: `attempts` tries, waiting `first`, then twice as long each time, at most
/// `max`.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Retry {
    pub(super) fn from_config(config: &Config) -> Retry {
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
    pub(super) fn trouble(&self, what: &str, message: &str) {
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
    pub(super) async fn poll(
        &self,
        url: &str,
        body: &Value,
        wait: Duration,
    ) -> Result<Value, String> {
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
