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
    config.notify.teams.webhook_url = format!("http://{}{TEAMS_HOOK}", dead.local_addr().unwrap());
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
    d.reason = Some("the admission check refused it".into());
    assert_eq!(
        outcome(&d),
        "AUTO-BLOCKED: nobody answered before the deadline (198.51.100.2). the admission check refused it"
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
