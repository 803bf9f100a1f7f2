//! Chat delivery end to end against fake chat APIs on loopback.

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
        Self::start_edited(summary, |_| {}).await
    }

    /// [`Harness::start`] on a config that `edit` changed last.
    async fn start_edited(
        summary: Option<SummarySource>,
        edit: impl FnOnce(&mut Config),
    ) -> Harness {
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
        edit(&mut config);
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

mod buttons;
mod delivery;
mod follow_up;
mod text;
