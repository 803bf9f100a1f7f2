//! Telegram: alerts are bot messages (`sendMessage`) with an inline keyboard whose callback
//! data is `safe:<id>` / `block:<id>`. Button presses are fetched by long polling
//! (`getUpdates`), so the agent needs no inbound port for Telegram. A press is acted on only
//! when it comes from the configured chat or from one of `allowed_user_ids`; it is then
//! acknowledged (`answerCallbackQuery`) and the message is edited to show the outcome.
//!
//! The bot token is part of every API URL: errors are scrubbed of it before they are logged.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Http, Summary, Undelivered, facts, outcome, title};
use crate::{
    config::TelegramConfig,
    switch::answer::{Unanswered, action, parse_button, submit},
    switch::decision::{Answer, AnswerError, Decision, Verdict},
    untrusted::defang,
};

/// How long one `getUpdates` call waits for a button press.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between failed polls.
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(60);
/// Telegram's limit on a message's text.
const MAX_TEXT: usize = 4096;

/// The Telegram channel.
pub struct Telegram {
    api_base: String,
    token: String,
    chat_id: String,
    allowed_user_ids: Vec<i64>,
    /// `notify.telegram.allowed_users`: when set, the only users whose presses count.
    allowed_users: Vec<i64>,
    http: Http,
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    id: String,
    from: User,
    message: Option<Message>,
    data: Option<String>,
}

#[derive(Debug, Deserialize)]
struct User {
    id: i64,
}

#[derive(Debug, Deserialize)]
struct Message {
    message_id: i64,
    chat: Chat,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Chat {
    id: i64,
    username: Option<String>,
}

/// `chat_id` as Telegram takes it: a number, or `@channelname`.
fn chat_json(chat_id: &str) -> Value {
    chat_id
        .parse::<i64>()
        .map_or_else(|_| Value::from(chat_id), Value::from)
}

fn clip(text: String) -> String {
    if text.chars().count() <= MAX_TEXT {
        return text;
    }
    text.chars().take(MAX_TEXT - 1).chain(['…']).collect()
}

/// The alert's text: plain (sent without `parse_mode`, so nothing a process chose is read as
/// markup), control characters escaped and links broken so Telegram's own URL detection finds
/// nothing to make clickable (see [`defang`]).
pub fn alert_text(d: &Decision, now: SystemTime, with_deadline: bool) -> String {
    let mut text = format!("🚨 {}\n{}\n", title(d), defang(&d.detail));
    for (label, value) in facts(d, now) {
        if with_deadline || label != "Auto-block" {
            text.push_str(&format!("\n{label}: {}", defang(&value)));
        }
    }
    text
}

/// No link previews, whatever the text holds.
fn no_preview() -> Value {
    json!({"is_disabled": true})
}

/// `sendMessage` parameters for an alert with its two buttons.
pub fn alert_message(d: &Decision, now: SystemTime, chat_id: &str) -> Value {
    let button = |text: &str, verdict: Verdict| json!({"text": text, "callback_data": format!("{}:{}", action(verdict), d.id)});
    json!({
        "chat_id": chat_json(chat_id),
        "text": clip(alert_text(d, now, true)),
        "link_preview_options": no_preview(),
        "reply_markup": {"inline_keyboard": [[
            button("✅ MARK AS SAFE", Verdict::Safe),
            button("⛔ CONFIRM BLOCK", Verdict::Block),
        ]]},
    })
}

fn outcome_text(d: &Decision) -> String {
    clip(format!(
        "{}\n\n{}",
        alert_text(d, SystemTime::now(), false),
        defang(&outcome(d))
    ))
}

impl Telegram {
    pub fn new(config: &TelegramConfig, http: Http) -> Telegram {
        Telegram {
            api_base: config.api_base.trim_end_matches('/').to_string(),
            token: config.bot_token.clone(),
            chat_id: config.chat_id.clone(),
            allowed_user_ids: config.allowed_user_ids.clone(),
            allowed_users: config.allowed_users.clone(),
            http,
        }
    }

    /// A Bot API method's URL (it holds the token: never log it).
    fn url(&self, method: &str) -> String {
        format!("{}/bot{}/{method}", self.api_base, self.token)
    }

    async fn call(&self, what: &str, method: &str, body: &Value) -> Result<Value, Undelivered> {
        self.http.post(what, &self.url(method), body).await
    }

    /// Send the alert; the sent message's id (to edit it with the outcome).
    pub async fn opened(&self, d: &Decision) -> Result<i64, Undelivered> {
        let message = alert_message(d, SystemTime::now(), &self.chat_id);
        let sent = self
            .call(&format!("alert {}", d.id), "sendMessage", &message)
            .await?;
        Ok(sent["result"]["message_id"].as_i64().unwrap_or_default())
    }

    /// Show the outcome: edit the alert (removing its buttons) when it was sent, else send
    /// it. A press in Telegram has already edited the message itself.
    pub async fn ended(&self, d: &Decision, sent: Option<i64>) -> Result<(), Undelivered> {
        if d.decided_by
            .as_deref()
            .is_some_and(|by| by.starts_with("telegram:"))
        {
            return Ok(());
        }
        let text = outcome_text(d);
        let what = format!("outcome {}", d.id);
        match sent.filter(|id| *id != 0) {
            Some(message_id) => {
                let body = json!({"chat_id": chat_json(&self.chat_id), "message_id": message_id, "text": text, "link_preview_options": no_preview()});
                self.call(&what, "editMessageText", &body).await.map(drop)
            }
            None => {
                let body = json!({"chat_id": chat_json(&self.chat_id), "text": text, "link_preview_options": no_preview()});
                self.call(&what, "sendMessage", &body).await.map(drop)
            }
        }
    }

    pub async fn summary(&self, s: &Summary) -> Result<(), Undelivered> {
        let text = format!("{}\n\n{}", s.heading(), s.lines().join("\n"));
        let body = json!({"chat_id": chat_json(&self.chat_id), "text": clip(text), "link_preview_options": no_preview()});
        self.call("daily summary", "sendMessage", &body)
            .await
            .map(drop)
    }

    /// Whether a press counts: from a user in `allowed_users` when that is set; else from the
    /// configured chat or a user in `allowed_user_ids`.
    fn authorised(&self, press: &CallbackQuery) -> bool {
        if !self.allowed_users.is_empty() {
            return self.allowed_users.contains(&press.from.id);
        }
        let in_chat = press
            .message
            .as_ref()
            .is_some_and(|m| match self.chat_id.parse::<i64>() {
                Ok(id) => m.chat.id == id,
                Err(_) => m
                    .chat
                    .username
                    .as_deref()
                    .is_some_and(|name| self.chat_id.strip_prefix('@') == Some(name)),
            });
        in_chat || self.allowed_user_ids.contains(&press.from.id)
    }

    /// Acknowledge a press (Telegram shows `text` briefly to the user who pressed).
    async fn acknowledge(&self, press: &CallbackQuery, text: &str) {
        let text: String = text.chars().take(200).collect();
        let body = json!({"callback_query_id": press.id, "text": text});
        let _ = self
            .call("answerCallbackQuery", "answerCallbackQuery", &body)
            .await;
    }

    /// Act on one button press.
    async fn pressed(self: Arc<Self>, press: CallbackQuery, answers: mpsc::Sender<Answer>) {
        let chat = press.message.as_ref().map(|m| m.chat.id);
        if !self.authorised(&press) {
            tracing::warn!(
                from = press.from.id,
                ?chat,
                "Telegram button press from an unauthorised chat or user: ignored"
            );
            self.acknowledge(&press, "Not authorised.").await;
            return;
        }
        let Some((verdict, id)) = press.data.as_deref().and_then(parse_button) else {
            tracing::warn!(
                from = press.from.id,
                ?chat,
                "malformed Telegram button press: ignored"
            );
            self.acknowledge(&press, "Unknown action.").await;
            return;
        };
        let via = format!("telegram:{}", press.from.id);
        match submit(&answers, id, verdict, via).await {
            Ok(d) => {
                tracing::info!(id = %d.id, state = %d.state, by = press.from.id, "decision answered in Telegram");
                self.acknowledge(&press, &defang(&outcome(&d))).await;
                if let Some(message) = &press.message {
                    // The text Telegram returns is the one sent, links already broken.
                    let text = match &message.text {
                        Some(text) => clip(format!("{text}\n\n{}", defang(&outcome(&d)))),
                        None => outcome_text(&d),
                    };
                    let body = json!({"chat_id": message.chat.id, "message_id": message.message_id, "text": text, "link_preview_options": no_preview()});
                    let _ = self
                        .call(&format!("outcome {}", d.id), "editMessageText", &body)
                        .await;
                }
            }
            Err(e) => {
                tracing::warn!(id, by = press.from.id, reason = %e, "Telegram button press not applied");
                self.acknowledge(&press, &e.to_string()).await;
                if let (Unanswered::Refused(AnswerError::Ended { .. }), Some(message)) =
                    (&e, &press.message)
                {
                    // Its buttons are useless now: remove them.
                    let body = json!({"chat_id": message.chat.id, "message_id": message.message_id, "reply_markup": {"inline_keyboard": []}});
                    let _ = self
                        .call("remove buttons", "editMessageReplyMarkup", &body)
                        .await;
                }
            }
        }
    }
}

/// Long-poll `getUpdates` for button presses (each waits up to `wait`) and act on them, until
/// the switch goes away. Failures back off exponentially and show in `last_error`.
pub async fn poll(telegram: Arc<Telegram>, answers: mpsc::Sender<Answer>, wait: Duration) {
    let mut offset: Option<i64> = None;
    let mut backoff = Duration::from_secs(1);
    let url = telegram.url("getUpdates");
    while !answers.is_closed() {
        let body = json!({
            "timeout": wait.as_secs(),
            "offset": offset,
            "allowed_updates": ["callback_query"],
        });
        let updates = match telegram.http.poll(&url, &body, wait).await {
            Ok(reply) if reply["ok"] == true => {
                reply["result"].as_array().cloned().unwrap_or_default()
            }
            Ok(reply) => {
                telegram
                    .http
                    .trouble("getUpdates", &reply["description"].to_string());
                Vec::new()
            }
            Err(message) => {
                telegram.http.trouble("getUpdates", &message);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_POLL_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        for update in updates {
            if let Some(id) = update["update_id"].as_i64() {
                offset = Some(offset.unwrap_or(id + 1).max(id + 1));
            }
            let Some(press) = update.get("callback_query") else {
                continue;
            };
            match serde_json::from_value::<CallbackQuery>(press.clone()) {
                Ok(press) => {
                    tokio::spawn(telegram.clone().pressed(press, answers.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "malformed Telegram update: ignored"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::untrusted::testing::{assert_inert, hostile_decision};

    #[test]
    fn process_text_is_plain_without_links_or_previews() {
        let d = hostile_decision();
        let message = alert_message(&d, SystemTime::now(), "-1");
        assert!(message.get("parse_mode").is_none(), "{message}");
        assert!(message.get("entities").is_none(), "{message}");
        assert_eq!(message["link_preview_options"]["is_disabled"], true);
        assert_inert(&message, true);
        let outcome = outcome_text(&d);
        assert_inert(&Value::from(outcome), true);
        // Who decided is text another host of the fleet wrote.
        let mut d = hostile_decision();
        d.state = crate::switch::decision::State::Blocked;
        d.decided_by = Some("fleet:ops@evil.example \x1b[2J\nforged".into());
        let text = outcome_text(&d);
        assert!(
            !text.contains("evil.example") && !text.contains('\x1b'),
            "{text}"
        );
        assert!(!text.contains("\nforged"), "{text}");
    }
}
