//! Microsoft Teams: alerts are Adaptive Cards (schema 1.5) POSTed to a Workflows "when a
//! Teams webhook request is received" URL. Such workflows cannot call back or edit what they
//! posted, so the buttons are `Action.OpenUrl` links to the override endpoint, each signed
//! for one decision, one verdict and until the deadline (see `override_http`), and the
//! outcome is a follow-up card.

use std::{sync::Arc, time::SystemTime};

use serde_json::{Value, json};

use super::{Http, Summary, Undelivered, facts, outcome, title};
use crate::{
    override_http::{Secret, decide_link},
    switch::decision::{Decision, Verdict},
    untrusted::defang,
};

/// The Teams channel.
pub struct Teams {
    webhook_url: String,
    public_url: String,
    secret: Arc<Secret>,
    http: Http,
}

/// A message carrying one Adaptive Card.
fn card(body: Vec<Value>, actions: Vec<Value>) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.5",
                "msteams": {"width": "Full"},
                "body": body,
                "actions": actions,
            },
        }],
    })
}

/// Text a process controls (its name, path, arguments) made inert for Teams' markdown: no
/// link syntax, no bare URL and no `<…>` it would turn into a link (see [`defang`]).
fn inert(text: &str) -> String {
    defang(text).replace('<', "<\u{200B}")
}

fn text(text: &str, extra: Value) -> Value {
    let mut block = json!({"type": "TextBlock", "text": text, "wrap": true});
    if let (Some(block), Some(extra)) = (block.as_object_mut(), extra.as_object()) {
        block.extend(extra.clone());
    }
    block
}

fn fact_set(d: &Decision, now: SystemTime, with_deadline: bool) -> Value {
    let facts: Vec<Value> = facts(d, now)
        .into_iter()
        .filter(|(label, _)| with_deadline || *label != "Auto-block")
        .map(|(label, value)| json!({"title": label, "value": inert(&value)}))
        .collect();
    json!({"type": "FactSet", "facts": facts})
}

/// The alert card: title, what was seen, the facts, and two signed links as buttons.
pub fn alert_card(d: &Decision, now: SystemTime, public_url: &str, secret: &Secret) -> Value {
    let link = |verdict| decide_link(public_url, secret, &d.id, verdict, d.deadline);
    card(
        vec![
            text(
                &format!("Sentinel: {}", title(d)),
                json!({"weight": "Bolder", "size": "Medium", "color": "Attention"}),
            ),
            text(&inert(&d.detail), json!({})),
            fact_set(d, now, true),
            text(
                &format!(
                    "Blocked automatically in {} unless marked safe. Each button works once.",
                    super::time_left(d, now)
                ),
                json!({"isSubtle": true, "size": "Small"}),
            ),
        ],
        vec![
            json!({"type": "Action.OpenUrl", "title": "MARK AS SAFE", "url": link(Verdict::Safe), "style": "positive"}),
            json!({"type": "Action.OpenUrl", "title": "CONFIRM BLOCK", "url": link(Verdict::Block), "style": "destructive"}),
        ],
    )
}

/// The follow-up card: what happened, and the decision's facts.
pub fn outcome_card(d: &Decision) -> Value {
    let good = d.state == crate::switch::decision::State::Safe;
    card(
        vec![
            text(
                &format!("Sentinel: {}", title(d)),
                json!({"weight": "Bolder", "size": "Medium"}),
            ),
            text(
                &outcome(d),
                json!({"weight": "Bolder", "color": if good { "Good" } else { "Attention" }}),
            ),
            fact_set(d, SystemTime::now(), false),
        ],
        Vec::new(),
    )
}

/// The daily summary card.
pub fn summary_card(s: &Summary) -> Value {
    let facts: Vec<Value> = s
        .lines()
        .iter()
        .filter_map(|line| line.split_once(": "))
        .map(|(title, value)| json!({"title": title, "value": value}))
        .collect();
    card(
        vec![
            text(&s.heading(), json!({"weight": "Bolder", "size": "Medium"})),
            json!({"type": "FactSet", "facts": facts}),
        ],
        Vec::new(),
    )
}

impl Teams {
    pub fn new(webhook_url: &str, public_url: &str, secret: Arc<Secret>, http: Http) -> Teams {
        Teams {
            webhook_url: webhook_url.to_string(),
            public_url: public_url.to_string(),
            secret,
            http,
        }
    }

    pub async fn opened(&self, d: &Decision) -> Result<(), Undelivered> {
        let card = alert_card(d, SystemTime::now(), &self.public_url, &self.secret);
        self.http
            .post(&format!("alert {}", d.id), &self.webhook_url, &card)
            .await
            .map(drop)
    }

    pub async fn ended(&self, d: &Decision) -> Result<(), Undelivered> {
        self.http
            .post(
                &format!("outcome {}", d.id),
                &self.webhook_url,
                &outcome_card(d),
            )
            .await
            .map(drop)
    }

    pub async fn summary(&self, s: &Summary) -> Result<(), Undelivered> {
        self.http
            .post("daily summary", &self.webhook_url, &summary_card(s))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::untrusted::testing::{assert_inert, hostile_decision};

    #[test]
    fn process_text_forms_no_link() {
        let d = hostile_decision();
        let secret = Secret::from_bytes(&[7; 32]);
        let card = alert_card(&d, SystemTime::now(), "https://sentinel.example", &secret);
        // The buttons are the only links: the signed ones.
        assert_inert(&card["attachments"][0]["content"]["body"], false);
        assert_inert(
            &outcome_card(&d)["attachments"][0]["content"]["body"],
            false,
        );
    }
}
