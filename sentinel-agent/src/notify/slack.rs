//! Slack: alerts are Block Kit messages with two buttons, POSTed to an incoming webhook.
//! Clicks come back to the override endpoint (`/slack/actions`, the app's Interactivity
//! Request URL), which verifies Slack's signature and shows the outcome in place of the
//! buttons through the click's `response_url`. Webhook messages cannot be edited, so a
//! decision ended elsewhere (timer, CLI, another channel) gets a follow-up message.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::{Http, Summary, Undelivered, facts, outcome, title};
use crate::{
    switch::{answer::action, decision::Decision},
    untrusted::defang,
};

/// The Slack channel: where alerts go and how.
pub struct Slack {
    webhook_url: String,
    http: Http,
}

/// Slack mrkdwn treats `&`, `<` and `>` as markup (`<!channel>`, links): escape them in
/// anything a process could have chosen.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text a process could have chosen, for mrkdwn: control characters escaped, links broken
/// (see [`defang`]), markup escaped. The messages also go out `verbatim` with unfurling off.
fn inert(text: &str) -> String {
    escape(&defang(text))
}

/// A mrkdwn text object that Slack shows as written: `verbatim` (no auto-linking of URLs or
/// channel names).
fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text, "verbatim": true})
}

/// Cut `text` to at most `max` characters.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

fn fields(d: &Decision, now: SystemTime, with_deadline: bool) -> Vec<Value> {
    facts(d, now)
        .into_iter()
        .filter(|(label, _)| with_deadline || *label != "Auto-block")
        .map(|(label, value)| mrkdwn(clip(&format!("*{label}*\n{}", inert(&value)), 2000)))
        .collect()
}

fn button(
    text: &str,
    style: &str,
    d: &Decision,
    verdict: crate::switch::decision::Verdict,
) -> Value {
    let action = action(verdict);
    json!({
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "style": style,
        "action_id": format!("sentinel_{action}"),
        "value": format!("{action}:{}", d.id),
    })
}

/// The alert: header, facts, what was seen, and the MARK AS SAFE / CONFIRM BLOCK buttons
/// whose values are `safe:<id>` / `block:<id>`.
pub fn alert_message(d: &Decision, now: SystemTime) -> Value {
    use crate::switch::decision::Verdict;
    let title = title(d);
    json!({
        "text": inert(&format!("{title}: {} — automatic block in {}", d.detail, super::time_left(d, now))),
        "unfurl_links": false,
        "unfurl_media": false,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": clip(&title, 150)}},
            {"type": "section", "fields": fields(d, now, true)},
            {"type": "section", "text": mrkdwn(clip(&inert(&d.detail), 3000))},
            {
                "type": "actions",
                "block_id": format!("sentinel_decision_{}", d.id),
                "elements": [
                    button("MARK AS SAFE", "primary", d, Verdict::Safe),
                    button("CONFIRM BLOCK", "danger", d, Verdict::Block),
                ],
            },
        ],
    })
}

/// The outcome: the alert's facts without buttons, under what happened.
pub fn outcome_message(d: &Decision) -> Value {
    let line = outcome(d);
    json!({
        "text": inert(&format!("{}: {line}", title(d))),
        "unfurl_links": false,
        "unfurl_media": false,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": clip(&title(d), 150)}},
            {"type": "section", "text": mrkdwn(clip(&format!("*{}*", inert(&line)), 3000))},
            {"type": "section", "fields": fields(d, SystemTime::now(), false)},
        ],
    })
}

/// The daily summary as a message.
pub fn summary_message(s: &Summary) -> Value {
    let text = s.lines().join("\n");
    json!({
        "text": escape(&s.heading()),
        "unfurl_links": false,
        "unfurl_media": false,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": clip(&s.heading(), 150)}},
            {"type": "section", "text": mrkdwn(clip(&escape(&text), 3000))},
        ],
    })
}

impl Slack {
    pub fn new(webhook_url: &str, http: Http) -> Slack {
        Slack {
            webhook_url: webhook_url.to_string(),
            http,
        }
    }

    pub async fn opened(&self, d: &Decision) -> Result<(), Undelivered> {
        let message = alert_message(d, SystemTime::now());
        self.http
            .post(&format!("alert {}", d.id), &self.webhook_url, &message)
            .await
            .map(drop)
    }

    /// A follow-up with the outcome, unless a Slack click ended it: the override endpoint
    /// has then already replaced the alert with the outcome.
    pub async fn ended(&self, d: &Decision) -> Result<(), Undelivered> {
        if d.decided_by
            .as_deref()
            .is_some_and(|by| by.starts_with("slack:"))
        {
            return Ok(());
        }
        self.http
            .post(
                &format!("outcome {}", d.id),
                &self.webhook_url,
                &outcome_message(d),
            )
            .await
            .map(drop)
    }

    pub async fn summary(&self, s: &Summary) -> Result<(), Undelivered> {
        self.http
            .post("daily summary", &self.webhook_url, &summary_message(s))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::untrusted::testing::{assert_inert, hostile_decision, strings};

    #[test]
    fn process_text_goes_out_verbatim_without_links_or_unfurls() {
        let mut d = hostile_decision();
        let alert = alert_message(&d, SystemTime::now());
        d.state = crate::switch::decision::State::AutoBlocked;
        for message in [alert, outcome_message(&d)] {
            assert_eq!(message["unfurl_links"], false, "{message}");
            assert_eq!(message["unfurl_media"], false, "{message}");
            assert!(message.get("mrkdwn").is_none(), "{message}");
            let blocks = message["blocks"].as_array().unwrap();
            let texts: Vec<&Value> = blocks
                .iter()
                .flat_map(|b| {
                    b["fields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain([&b["text"]])
                })
                .filter(|t| t["type"] == "mrkdwn")
                .collect();
            assert!(!texts.is_empty());
            assert!(texts.iter().all(|t| t["verbatim"] == true), "{message}");
            assert_inert(&message, true);
            assert!(strings(&message).iter().all(|s| !s.contains("<!")));
        }
    }
}
