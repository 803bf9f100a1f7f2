//! The daily summary: what the agent saw and did over the last day, sent once a day to each
//! channel whose `daily_summary` is on. The figures come from the store through a
//! [`SummarySource`] the daemon provides; this module only schedules and words them.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::Channel;

/// Counts over a period, for the daily summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// `agent.id` (filled in by the scheduler).
    pub host: String,
    /// Start of the period (filled in by the scheduler); it ends when the summary is made.
    pub since: SystemTime,
    /// Alerts raised, per anomaly (`geo`, `lineage`, …).
    pub alerts_by_anomaly: BTreeMap<String, u64>,
    /// Alerts about processes in containers, per container.
    pub alerts_by_container: BTreeMap<String, u64>,
    /// Decisions ended, per outcome (`safe`, `blocked`, `auto-blocked`).
    pub decisions_by_outcome: BTreeMap<String, u64>,
    /// Addresses blocked.
    pub blocks: u64,
    /// The first blocks made (at most [`MAX_BLOCKS_LISTED`]): each address with the name it
    /// was blocked under, when one named it.
    pub blocked: Vec<(IpAddr, Option<String>)>,
    /// Process trees killed.
    pub kills: u64,
    /// Events the sensors could not deliver.
    pub lost_events: u64,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            host: String::new(),
            since: SystemTime::UNIX_EPOCH,
            alerts_by_anomaly: BTreeMap::new(),
            alerts_by_container: BTreeMap::new(),
            decisions_by_outcome: BTreeMap::new(),
            blocks: 0,
            blocked: Vec::new(),
            kills: 0,
            lost_events: 0,
        }
    }
}

/// Most blocks the summary names one by one.
pub const MAX_BLOCKS_LISTED: usize = 10;

/// Makes a [`Summary`] of everything since the given time (called on a blocking thread, so
/// it may query SQLite).
pub type SummarySource = Arc<dyn Fn(SystemTime) -> Summary + Send + Sync>;

/// `5 (geo 3, lineage 2)`, or `0`.
fn breakdown(counts: &BTreeMap<String, u64>) -> String {
    let total: u64 = counts.values().sum();
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

impl Summary {
    /// `Sentinel daily summary for web-1 since 2026-05-01T12:00:00Z`.
    pub fn heading(&self) -> String {
        format!(
            "Sentinel daily summary for {} since {}",
            self.host,
            humantime::format_rfc3339_seconds(self.since)
        )
    }

    /// One `Label: value` line per figure.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("Alerts: {}", breakdown(&self.alerts_by_anomaly))];
        if !self.alerts_by_container.is_empty() {
            // Container names are chosen by whoever runs containers: escaped.
            let escaped: BTreeMap<String, u64> = self
                .alerts_by_container
                .iter()
                .map(|(k, n)| (crate::untrusted::escape(k).into_owned(), *n))
                .collect();
            lines.push(format!("Alerts in containers: {}", breakdown(&escaped)));
        }
        lines.extend([
            format!("Decisions: {}", breakdown(&self.decisions_by_outcome)),
            format!("Blocks: {}", self.blocks_line()),
            format!("Kills: {}", self.kills),
            format!("Lost events: {}", self.lost_events),
        ]);
        lines
    }
}

impl Summary {
    /// `3 (c2.example (198.51.100.9), 198.51.100.10, and 1 more)`, or `0`. A name is
    /// attacker-chosen (a DNS answer): escaped, and defanged so no chat client links it.
    fn blocks_line(&self) -> String {
        if self.blocked.is_empty() {
            return self.blocks.to_string();
        }
        let mut parts: Vec<String> = self
            .blocked
            .iter()
            .map(|(addr, name)| match name {
                Some(n) => format!("{} ({addr})", crate::untrusted::defang(n)),
                None => addr.to_string(),
            })
            .collect();
        let more = self.blocks.saturating_sub(self.blocked.len() as u64);
        if more > 0 {
            parts.push(format!("and {more} more"));
        }
        format!("{} ({})", self.blocks, parts.join(", "))
    }
}

/// Send `channel` a summary every `period`, the first one `period` after start.
pub async fn daily(period: Duration, source: SummarySource, channel: Arc<Channel>, host: String) {
    let start = tokio::time::Instant::now() + period;
    let mut ticks = tokio::time::interval_at(start, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let since = SystemTime::now()
            .checked_sub(period)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let source = source.clone();
        let Ok(mut summary) = tokio::task::spawn_blocking(move || source(since)).await else {
            tracing::warn!(
                channel = channel.name(),
                "daily summary: the figures could not be read"
            );
            continue;
        };
        summary.host = host.clone();
        summary.since = since;
        let _ = channel.summary(&summary).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocks_line_names_each_block_inertly_and_counts_the_rest() {
        let summary = Summary {
            blocks: 4,
            blocked: vec![
                ("198.51.100.9".parse().unwrap(), Some("c2.example".into())),
                ("198.51.100.10".parse().unwrap(), None),
                (
                    "2001:db8::7".parse().unwrap(),
                    Some("evil.example\n\u{1b}[31m".into()),
                ),
            ],
            ..Summary::default()
        };
        let lines = summary.lines();
        let line = lines.iter().find(|l| l.starts_with("Blocks: ")).unwrap();
        assert_eq!(
            line,
            "Blocks: 4 (c2.\u{200B}example (198.51.100.9), 198.51.100.10, \
             evil.\u{200B}example\\n\\x1b[31m (2001:db8::7), and 1 more)"
        );
        assert!(
            Summary::default()
                .lines()
                .contains(&"Blocks: 0".to_string()),
            "no blocks, no list"
        );
    }
}
