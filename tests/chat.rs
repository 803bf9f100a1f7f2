//! End-to-end tests of chat alerts and their answers with the real agent. Real HTTP servers on
//! loopback stand in for Slack, Teams and Telegram (the agent's config points at them) and
//! record what arrives; a connection to a test host (network namespace, a documentation
//! range the test GeoIP database puts in a high-risk country) opens a pending decision. The
//! tests check the alerts' payloads, then answer the way an admin would — open the signed
//! Teams link, click in Slack, press in Telegram — and check the outcome in the agent.
//! Forged, expired, replayed and foreign answers change nothing, and a chat service that is
//! down or slow does not delay the automatic block. Each test uses its own nftables table and
//! removes it, even on failure.

mod common;

use std::{
    collections::VecDeque,
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, http::Uri};
use common::{
    Agent,
    netns::{TestNet, knock},
    nft::Table,
    require_root, serial,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SLACK_SECRET: &str = "e2e-slack-signing-secret";
const SLACK_HOOK: &str = "/services/T000/B000/slackhooksecret";
const TEAMS_HOOK: &str = "/workflows/teamshooksecret/triggers/manual/run";
const BOT_TOKEN: &str = "424242:telegram-token-secret";
const CHAT: i64 = -100_777;
/// The override key the tests write (mode 0600) and sign links with.
const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A request a fake chat service received.
#[derive(Debug, Clone)]
struct Req {
    path: String,
    body: Bytes,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type Respond = Arc<dyn Fn(&Req) -> (u16, String, Duration) + Send + Sync>;

#[derive(Clone)]
struct FakeState {
    log: Arc<Mutex<Vec<Req>>>,
    respond: Respond,
}

async fn record(State(s): State<FakeState>, uri: Uri, body: Bytes) -> (StatusCode, String) {
    let req = Req {
        path: uri.path().to_string(),
        body,
    };
    let (status, body, delay) = (s.respond)(&req);
    s.log.lock().unwrap().push(req);
    tokio::time::sleep(delay).await;
    (StatusCode::from_u16(status).unwrap(), body)
}

/// A chat service standing in on loopback (its own runtime), recording every request.
struct Fake {
    base: String,
    log: Arc<Mutex<Vec<Req>>>,
    rt: tokio::runtime::Runtime,
}

impl Fake {
    fn start(respond: impl Fn(&Req) -> (u16, String, Duration) + Send + Sync + 'static) -> Fake {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let log: Arc<Mutex<Vec<Req>>> = Arc::default();
        let state = FakeState {
            log: log.clone(),
            respond: Arc::new(respond),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(record).with_state(state);
        rt.spawn(async move { axum::serve(listener, app).await });
        Fake { base, log, rt }
    }

    /// Slack: answers `ok` to the webhook and to `response_url`s.
    fn slack() -> Fake {
        Fake::start(|_| (200, "ok".into(), Duration::ZERO))
    }

    /// A Teams workflow: accepts anything.
    fn teams() -> Fake {
        Fake::start(|_| (202, String::new(), Duration::ZERO))
    }

    /// The Telegram Bot API: numbered `sendMessage` results, and `getUpdates` serving the
    /// queued updates (holding the poll a moment when there are none).
    fn telegram(updates: Arc<Mutex<VecDeque<Value>>>) -> Fake {
        let next = Mutex::new(1000);
        Fake::start(move |r| {
            let ok = |result: Value| json!({"ok": true, "result": result}).to_string();
            if r.path.ends_with("/getUpdates") {
                let ready: Vec<Value> = updates.lock().unwrap().drain(..).collect();
                let hold = if ready.is_empty() { 300 } else { 0 };
                return (200, ok(ready.into()), Duration::from_millis(hold));
            }
            if r.path.ends_with("/sendMessage") {
                let mut id = next.lock().unwrap();
                *id += 1;
                return (200, ok(json!({"message_id": *id})), Duration::ZERO);
            }
            (200, ok(json!(true)), Duration::ZERO)
        })
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    /// Wait (up to 15 s) for a request satisfying `pred`.
    fn wait_for(&self, what: &str, pred: impl Fn(&Req) -> bool) -> Req {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never arrived; got {:#?}",
                self.requests()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, url: &str) -> (u16, String) {
        self.rt.block_on(async {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    }

    fn post_form(&self, url: &str, fields: &[(String, String)]) -> (u16, String) {
        self.rt.block_on(async {
            let r = reqwest::Client::new()
                .post(url)
                .form(fields)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    }

    /// POST a Slack interaction as Slack does: form-encoded, timestamped and signed.
    fn post_slack(&self, url: &str, body: &str, ts: u64, key: &str) -> u16 {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        self.rt.block_on(async {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", ts.to_string())
                .header("x-slack-signature", sig)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A free loopback port (bound, then released for the agent).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The open decisions on test hosts: only this test's processes reach those (the agent sees
/// every process on the machine; what the others make it decide does not count here).
fn test_host_pending(agent: &Agent) -> Vec<Value> {
    let mut p = agent.json_lines(&["pending", "--json"]);
    p.retain(|d| {
        d["target_ip"]
            .as_str()
            .is_some_and(|a| a.starts_with("198.51.100.") || a.starts_with("2001:db8:"))
    });
    p
}

/// The override key file, mode 0600, in its own temp dir.
fn key_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("override.key");
    fs::write(&path, format!("{KEY}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    (dir, path)
}

/// Which fake services an agent talks to (a `None` channel is off).
#[derive(Default)]
struct Chat<'a> {
    slack: Option<String>,
    teams: Option<String>,
    telegram: Option<&'a str>,
}

/// Config sections for an agent on table `table` with the given countdown and channels, its
/// override endpoint on `port`.
fn sections(table: &Table, countdown: &str, port: u16, key: &Path, chat: &Chat) -> String {
    let mut s = format!(
        "[switch]\ncountdown = \"{countdown}\"\n\
         [enforce]\ntable = \"{}\"\nconnect_guard = false\n\
         [override]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
         secret_file = \"{}\"\n\
         [notify]\ntimeout = \"1s\"\nattempts = 2\n",
        table.0,
        key.display()
    );
    if let Some(url) = &chat.slack {
        s.push_str(&format!(
            "[notify.slack]\nwebhook_url = \"{url}\"\nsigning_secret = \"{SLACK_SECRET}\"\n"
        ));
    }
    if let Some(url) = &chat.teams {
        s.push_str(&format!("[notify.teams]\nwebhook_url = \"{url}\"\n"));
    }
    if let Some(base) = chat.telegram {
        s.push_str(&format!(
            "[notify.telegram]\napi_base = \"{base}\"\nbot_token = \"{BOT_TOKEN}\"\nchat_id = \"{CHAT}\"\n"
        ));
    }
    s
}

/// Knock on the RU test host and wait for the pending decision it opens; its id.
fn open_decision(agent: &Agent, port: u16) -> String {
    knock("198.51.100.2", port);
    let d = agent.wait_for("decision", "pending for 198.51.100.2", |d| {
        d["target_ip"] == "198.51.100.2" && d["state"] == "pending"
    });
    d["id"].as_str().unwrap().to_string()
}

/// The decision's current state, from `tail --kind decision` (the latest event for `id`).
fn state(agent: &Agent, id: &str) -> String {
    agent
        .events("decision")
        .iter()
        .rev()
        .find(|d| d["id"] == id)
        .map(|d| d["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The Teams card that carried decision `id`, and its two button URLs (safe, block).
fn teams_card(teams: &Fake, id: &str) -> (Value, String, String) {
    let needle = format!("id={id}&");
    let card = teams
        .wait_for(&format!("a Teams card for {id}"), |r| {
            r.text().contains(&needle)
        })
        .json();
    let actions = card["attachments"][0]["content"]["actions"]
        .as_array()
        .unwrap();
    let url = |i: usize| actions[i]["url"].as_str().unwrap().to_string();
    (card.clone(), url(0), url(1))
}

/// The fields of a signed link (what the confirmation page's form posts back).
fn link_fields(url: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Sign a link the way the agent does: hex HMAC-SHA256 over `sentinel-link-v1|id|action|exp`
/// under the key file's content.
fn sign(id: &str, action: &str, exp: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(format!("sentinel-link-v1|{id}|{action}|{exp}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A Slack `block_actions` body (form-encoded `payload=`) for a button value.
fn slack_body(value: &str, user: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "admin"},
        "response_url": response_url,
        "actions": [{"action_id": "sentinel_button", "type": "button", "value": value}],
    });
    let mut url = reqwest::Url::parse("http://x/").unwrap();
    url.query_pairs_mut()
        .append_pair("payload", &payload.to_string());
    url.query().unwrap().to_string()
}

/// A Telegram `callback_query` update pressing `data` on message `message_id` in `chat`.
fn press(update_id: i64, from: i64, chat: i64, message_id: i64, data: &str) -> Value {
    json!({
        "update_id": update_id,
        "callback_query": {
            "id": format!("cb{update_id}"),
            "from": {"id": from, "is_bot": false, "first_name": "Admin"},
            "message": {
                "message_id": message_id,
                "chat": {"id": chat, "type": "supergroup"},
                "date": 0,
                "text": "alert",
            },
            "chat_instance": "1",
            "data": data,
        },
    })
}

/// Opening the MARK AS SAFE link of the Teams card and confirming it ends the decision
/// `safe` (by `teams-link`) with no block; the link works once; Teams gets a follow-up card
/// with the outcome.
#[test]
fn teams_link_marks_safe_and_nothing_is_blocked() {
    if !require_root("teams_link_marks_safe_and_nothing_is_blocked") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("ct");
    let table = Table::new("chat_t");
    let teams = Fake::teams();
    let (_keydir, key) = key_file();
    let port = free_port();
    let chat = Chat {
        teams: Some(format!("{}{TEAMS_HOOK}", teams.base)),
        ..Chat::default()
    };
    let agent = Agent::start_with("", &sections(&table, "60s", port, &key, &chat));
    let id = open_decision(&agent, 9301);

    let (card, safe_url, block_url) = teams_card(&teams, &id);
    assert_eq!(card["type"], "message", "{card}");
    let attachment = &card["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let content = &attachment["content"];
    assert_eq!(content["type"], "AdaptiveCard");
    assert_eq!(content["version"], "1.5");
    let actions = content["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2, "{card}");
    assert_eq!(
        (&actions[0]["type"], &actions[0]["title"]),
        (&json!("Action.OpenUrl"), &json!("MARK AS SAFE"))
    );
    assert_eq!(
        (&actions[1]["type"], &actions[1]["title"]),
        (&json!("Action.OpenUrl"), &json!("CONFIRM BLOCK"))
    );
    let public = format!("http://127.0.0.1:{port}/v1/decide?id={id}&action=");
    assert!(
        safe_url.starts_with(&format!("{public}safe&exp=")),
        "{safe_url}"
    );
    assert!(
        block_url.starts_with(&format!("{public}block&exp=")),
        "{block_url}"
    );
    let text = card.to_string();
    for fact in [
        "198.51.100.2 (RU)",
        "T1071.001",
        "Command and Control",
        "/100",
    ] {
        assert!(text.contains(fact), "the card lacks {fact:?}: {text}");
    }

    // Opening the link (as a link preview would) decides nothing; its page's button does.
    let (status, page) = teams.get(&safe_url);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<form method=\"post\""), "{page}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&agent, &id), "pending");
    let decide = format!("http://127.0.0.1:{port}/v1/decide");
    let fields = link_fields(&safe_url);
    let (status, page) = teams.post_form(&decide, &fields);
    assert_eq!(status, 200, "{page}");

    let ended = agent.wait_for("decision", "safe", |d| {
        d["id"] == id.as_str() && d["state"] == "safe"
    });
    assert_eq!(ended["decided_by"], "teams-link", "{ended}");
    let blocks = agent.json_lines(&["blocks", "--json"]);
    assert!(
        blocks.iter().all(|b| b["addr"] != "198.51.100.2"),
        "{blocks:?}"
    );
    assert!(test_host_pending(&agent).is_empty());

    let (status, _) = teams.post_form(&decide, &fields);
    assert_eq!(status, 409, "a link works once");
    let (status, _) = teams.post_form(&decide, &link_fields(&block_url));
    assert_eq!(status, 409, "the decision has ended");
    assert_eq!(state(&agent, &id), "safe");

    let outcome = teams.wait_for("the outcome card", |r| r.text().contains("MARKED SAFE"));
    assert!(outcome.text().contains("teams-link"), "{}", outcome.text());
}

/// A correctly signed Slack `block_actions` click on CONFIRM BLOCK ends the decision
/// `blocked` (by `slack:U42`) and blocks the target; the outcome replaces the Slack message
/// through the click's `response_url`.
#[test]
fn slack_click_confirms_block() {
    if !require_root("slack_click_confirms_block") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("cs");
    let table = Table::new("chat_s");
    let slack = Fake::slack();
    let (_keydir, key) = key_file();
    let port = free_port();
    let chat = Chat {
        slack: Some(format!("{}{SLACK_HOOK}", slack.base)),
        ..Chat::default()
    };
    let agent = Agent::start_with("", &sections(&table, "60s", port, &key, &chat));
    let id = open_decision(&agent, 9302);

    let value = format!("block:{id}");
    let alert = slack
        .wait_for("the Slack alert", |r| {
            r.path == SLACK_HOOK && r.text().contains(&value)
        })
        .json();
    let buttons = alert["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap()["elements"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(buttons.len(), 2, "{alert}");
    assert_eq!(buttons[0]["text"]["text"], "MARK AS SAFE");
    assert_eq!(buttons[0]["value"], format!("safe:{id}"));
    assert_eq!(buttons[1]["text"]["text"], "CONFIRM BLOCK");
    assert_eq!(buttons[1]["value"], value);

    let response_url = format!("{}/actions/T000/respond", slack.base);
    let body = slack_body(&value, "U42", &response_url);
    let url = format!("http://127.0.0.1:{port}/slack/actions");
    assert_eq!(slack.post_slack(&url, &body, unix_now(), SLACK_SECRET), 200);

    let ended = agent.wait_for("decision", "blocked", |d| {
        d["id"] == id.as_str() && d["state"] == "blocked"
    });
    assert_eq!(ended["decided_by"], "slack:U42", "{ended}");
    let blocks = agent.json_lines(&["blocks", "--json"]);
    assert!(
        blocks
            .iter()
            .any(|b| b["addr"] == "198.51.100.2" && b["decision_id"] == id.as_str()),
        "{blocks:?}"
    );
    let replaced = slack
        .wait_for("the replaced message", |r| {
            r.path == "/actions/T000/respond"
        })
        .json();
    assert_eq!(replaced["replace_original"], true, "{replaced}");
    assert!(
        replaced["text"]
            .as_str()
            .unwrap()
            .contains("BLOCKED by slack:U42"),
        "{replaced}"
    );
}

/// A press on CONFIRM BLOCK in the configured Telegram chat, served by the fake
/// `getUpdates`, ends the decision `blocked` (by `telegram:5`); the press is answered
/// (`answerCallbackQuery`) and the message edited to show the outcome.
#[test]
fn telegram_press_is_applied_and_answered() {
    if !require_root("telegram_press_is_applied_and_answered") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("cg");
    let table = Table::new("chat_g");
    let updates: Arc<Mutex<VecDeque<Value>>> = Arc::default();
    let telegram = Fake::telegram(updates.clone());
    let (_keydir, key) = key_file();
    let port = free_port();
    let chat = Chat {
        telegram: Some(&telegram.base),
        ..Chat::default()
    };
    let agent = Agent::start_with("", &sections(&table, "60s", port, &key, &chat));
    let id = open_decision(&agent, 9303);

    let data = format!("block:{id}");
    let sent = telegram.wait_for("the Telegram alert", |r| {
        r.path == format!("/bot{BOT_TOKEN}/sendMessage") && r.text().contains(&data)
    });
    let message = sent.json();
    assert_eq!(message["chat_id"], CHAT, "{message}");
    let keyboard = &message["reply_markup"]["inline_keyboard"][0];
    assert_eq!(keyboard[0]["callback_data"], format!("safe:{id}"));
    assert_eq!(keyboard[1]["callback_data"], data);
    let message_id = 1001
        + telegram
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/sendMessage"))
            .position(|r| r.text().contains(&data))
            .unwrap() as i64;

    updates
        .lock()
        .unwrap()
        .push_back(press(1, 5, CHAT, message_id, &data));
    let ended = agent.wait_for("decision", "blocked", |d| {
        d["id"] == id.as_str() && d["state"] == "blocked"
    });
    assert_eq!(ended["decided_by"], "telegram:5", "{ended}");
    let answered = telegram
        .wait_for("answerCallbackQuery", |r| {
            r.path.ends_with("/answerCallbackQuery")
        })
        .json();
    assert_eq!(answered["callback_query_id"], "cb1", "{answered}");
    let edit = telegram
        .wait_for("editMessageText", |r| r.path.ends_with("/editMessageText"))
        .json();
    assert_eq!(edit["message_id"], message_id, "{edit}");
    assert!(edit["text"].as_str().unwrap().contains("BLOCKED"), "{edit}");
    assert!(
        agent
            .json_lines(&["blocks", "--json"])
            .iter()
            .any(|b| b["decision_id"] == id.as_str())
    );
}

/// Tampered, expired and replayed links, a Slack click with a bad signature or a stale
/// timestamp, and a Telegram press from another chat are all refused (4xx, or ignored and
/// answered "Not authorised.") and leave the decision pending; the agent log names each
/// refusal without the secrets.
#[test]
fn forged_expired_replayed_and_foreign_answers_change_nothing() {
    if !require_root("forged_expired_replayed_and_foreign_answers_change_nothing") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("cf");
    let table = Table::new("chat_f");
    let slack = Fake::slack();
    let teams = Fake::teams();
    let updates: Arc<Mutex<VecDeque<Value>>> = Arc::default();
    let telegram = Fake::telegram(updates.clone());
    let (_keydir, key) = key_file();
    let port = free_port();
    let chat = Chat {
        slack: Some(format!("{}{SLACK_HOOK}", slack.base)),
        teams: Some(format!("{}{TEAMS_HOOK}", teams.base)),
        telegram: Some(&telegram.base),
    };
    let agent = Agent::start_with("", &sections(&table, "60s", port, &key, &chat));
    let id = open_decision(&agent, 9304);
    let (_, safe_url, _) = teams_card(&teams, &id);
    let decide = format!("http://127.0.0.1:{port}/v1/decide");
    let exp: u64 = link_fields(&safe_url)
        .iter()
        .find(|(k, _)| k == "exp")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let link = |id: &str, action: &str, exp: u64, sig: &str| {
        vec![
            ("id".to_string(), id.to_string()),
            ("action".to_string(), action.to_string()),
            ("exp".to_string(), exp.to_string()),
            ("sig".to_string(), sig.to_string()),
        ]
    };
    let good = sign(&id, "safe", exp);
    assert_eq!(
        link_fields(&safe_url)[3].1,
        good,
        "links are signed as documented"
    );
    let mut tampered = good.clone().into_bytes();
    tampered[10] = if tampered[10] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    let past = unix_now() - 10;
    for (fields, want) in [
        (link(&id, "safe", exp, &tampered), 403),
        (link(&id, "block", exp, &good), 403),
        (link(&id, "safe", exp + 3600, &good), 403),
        (link(&id, "safe", past, &sign(&id, "safe", past)), 410),
        (link(&id, "safe", exp, "not-hex"), 400),
    ] {
        let (status, body) = teams.post_form(&decide, &fields);
        assert_eq!(status, want, "{fields:?}: {body}");
    }

    let slack_url = format!("http://127.0.0.1:{port}/slack/actions");
    let body = slack_body(&format!("block:{id}"), "U42", &format!("{}/r", slack.base));
    assert_eq!(
        slack.post_slack(&slack_url, &body, unix_now(), "wrong-secret"),
        401
    );
    assert_eq!(
        slack.post_slack(&slack_url, &body, unix_now() - 600, SLACK_SECRET),
        401
    );

    updates
        .lock()
        .unwrap()
        .push_back(press(1, 666, -999, 1, &format!("block:{id}")));
    let answered = telegram
        .wait_for("answerCallbackQuery", |r| {
            r.path.ends_with("/answerCallbackQuery")
        })
        .json();
    assert_eq!(answered["text"], "Not authorised.", "{answered}");

    thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&agent, &id), "pending");
    let pending = test_host_pending(&agent);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["id"], id.as_str());
    let log = agent.log();
    for reason in [
        "bad signature",
        "has expired",
        "bad Slack signature",
        "stale Slack timestamp",
        "unauthorised",
    ] {
        assert!(log.contains(reason), "the log lacks {reason:?}:\n{log}");
    }
    for secret in [
        KEY,
        SLACK_SECRET,
        "slackhooksecret",
        "teamshooksecret",
        "telegram-token-secret",
        &good,
    ] {
        assert!(
            !log.contains(secret),
            "the log shows a secret ({secret}):\n{log}"
        );
    }

    // The genuine link still works, once.
    let (status, _) = teams.post_form(&decide, &link_fields(&safe_url));
    assert_eq!(status, 200);
    agent.wait_for("decision", "safe", |d| {
        d["id"] == id.as_str() && d["state"] == "safe"
    });
    let (status, _) = teams.post_form(&decide, &link_fields(&safe_url));
    assert_eq!(status, 409, "replayed");
    let late_click = slack_body(&format!("block:{id}"), "U42", &format!("{}/r", slack.base));
    assert_eq!(
        slack.post_slack(&slack_url, &late_click, unix_now(), SLACK_SECRET),
        409,
        "answering an ended decision says so"
    );
    assert_eq!(state(&agent, &id), "safe");
}

/// With Slack unreachable (nothing listens), Teams answering only after 20 s and Telegram
/// hanging, the decision is still auto-blocked on time (within 2 s of its deadline), and
/// `sentinel status --json` shows the delivery failures under `notify` without secrets.
#[test]
fn unreachable_or_slow_chat_still_auto_blocks_on_time() {
    if !require_root("unreachable_or_slow_chat_still_auto_blocks_on_time") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("cd");
    let table = Table::new("chat_d");
    let slow = Fake::start(|_| (200, String::new(), Duration::from_secs(20)));
    let (_keydir, key) = key_file();
    let port = free_port();
    let chat = Chat {
        slack: Some(format!("http://127.0.0.1:{}{SLACK_HOOK}", free_port())),
        teams: Some(format!("{}{TEAMS_HOOK}", slow.base)),
        telegram: Some(&slow.base),
    };
    let agent = Agent::start_with("", &sections(&table, "3s", port, &key, &chat));
    knock("198.51.100.2", 9305);
    let opened = agent.wait_for("decision", "pending for 198.51.100.2", |d| {
        d["target_ip"] == "198.51.100.2" && d["state"] == "pending"
    });
    let id = opened["id"].as_str().unwrap().to_string();
    let deadline = humantime::parse_rfc3339(opened["deadline"].as_str().unwrap()).unwrap();
    let ended = agent.wait_for("decision", "auto-blocked", |d| {
        d["id"] == id.as_str() && d["state"] == "auto-blocked"
    });
    assert_eq!(ended["decided_by"], "timer", "{ended}");
    let at = humantime::parse_rfc3339(ended["ts"].as_str().unwrap()).unwrap();
    let late = at.duration_since(deadline).unwrap_or_default();
    assert!(
        late < Duration::from_secs(2),
        "auto-blocked {late:?} after the deadline"
    );
    assert!(
        agent
            .json_lines(&["blocks", "--json"])
            .iter()
            .any(|b| b["addr"] == "198.51.100.2" && b["decision_id"] == id.as_str())
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let status = agent.status();
        if status["notify"]["slack"]["failed"].as_u64() >= Some(1)
            && status["notify"]["teams"]["failed"].as_u64() >= Some(1)
        {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery failures in status: {status}"
        );
        thread::sleep(Duration::from_millis(250));
    };
    let notify = &status["notify"];
    assert!(notify["slack"]["last_error"].is_string(), "{status}");
    assert_eq!(notify["slack"]["sent"], 0, "{status}");
    let text = status.to_string();
    for secret in [
        "slackhooksecret",
        "teamshooksecret",
        "telegram-token-secret",
    ] {
        assert!(!text.contains(secret), "status shows a secret: {text}");
    }
}

/// Every string in a JSON payload.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Kills a process group on drop: what a test started never outlives it, even on failure.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// What the attacker's process is called (the kernel keeps 15 bytes of it: all of it).
const EVIL_NAME: &str = "\x1b[31mevil\nname";
/// Its arguments: a forged second line, a colour escape, a markdown link, a bare URL.
const EVIL_ARGS: [&str; 3] = [
    "\x1b[31mred\nline two",
    "[x](http://evil.example)",
    "http://evil.example/bare",
];

/// A process whose name, path and arguments carry a newline, `ESC[31m`, a markdown link and
/// a bare URL runs as a shell below a web server and connects to a test host, which gives
/// the lineage alert's decision its target. The alert makes one log line, `tail` shows no
/// escape byte and one line per event, and no chat payload (Teams, Slack, Telegram) holds a
/// control character or anything a chat client would make a link of; Slack goes out verbatim
/// without unfurling, Telegram without entity parsing or previews.
#[test]
fn text_a_process_chose_stays_text_everywhere() {
    if !require_root("text_a_process_chose_stays_text_everywhere") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("cu");
    let table = Table::new("chat_u");
    let (slack, teams) = (Fake::slack(), Fake::teams());
    let telegram = Fake::telegram(Arc::default());
    let (_keydir, key) = key_file();
    let port = free_port();
    let chat = Chat {
        slack: Some(format!("{}{SLACK_HOOK}", slack.base)),
        teams: Some(format!("{}{TEAMS_HOOK}", teams.base)),
        telegram: Some(&telegram.base),
    };
    let mut config = sections(&table, "60s", port, &key, &chat);
    config.push_str("[lineage]\nweb_servers = [\"snt-web\"]\n");
    let agent = Agent::start_with("", &config);

    // The "web server" (a shell called snt-web) runs a shell whose arguments are hostile; that
    // shell becomes a bash whose name and path are hostile and which connects out (to a
    // low-risk host: the lineage decision, whose detail holds the arguments, is the one).
    let bin = tempfile::tempdir().unwrap();
    let web = bin.path().join("snt-web");
    std::os::unix::fs::symlink("/bin/sh", &web).unwrap();
    fs::create_dir_all(bin.path().join("[x](http:/evil.example)")).unwrap();
    std::os::unix::fs::symlink(
        "/bin/bash",
        bin.path().join("[x](http:/evil.example)").join(EVIL_NAME),
    )
    .unwrap();
    let evil_path = format!(
        "{}/[x](http://evil.example)/{EVIL_NAME}",
        bin.path().display()
    );
    // It connects once the test has seen its exec: the exec and connect sensors have ring
    // buffers of their own, and the agent may read a connect before the exec before it.
    let go = bin.path().join("go");
    let script = r#"/bin/sh -c 'exec "$0" -c "while [ ! -e \"\$GO\" ]; do sleep 0.05; done; exec 3<>/dev/tcp/198.51.100.130/9306" evil "$@"' "$0" "$@"; exit 0"#;
    let child = std::process::Command::new(&web)
        .arg("-c")
        .arg(script)
        .arg(&evil_path)
        .args(EVIL_ARGS)
        .env("GO", &go)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _group = KillGroup(child.id() as i32);
    let escaped_name = r"\x1b[31mevil\nname";
    agent.wait_for("exec", "of the hostile process", |e| {
        e["comm"] == escaped_name
    });
    fs::write(&go, "").unwrap();
    let run = child.wait_with_output().unwrap();
    let connect = agent.wait_for("connect", "of the hostile process", |c| {
        c["daddr"] == "198.51.100.130" && c["dport"] == 9306
    });
    assert_eq!(
        connect["comm"], escaped_name,
        "the name, escaped: {connect}"
    );
    let lineage = agent.wait_for("decision", "lineage pending", |d| {
        d["anomaly"] == "lineage" && d["state"] == "pending" && d["pid"] == connect["pid"]
    });
    eprintln!("ran: {run:?}\nlineage: {lineage}");

    // Chat: the alert reaches every channel.
    let alert_of = |fake: &Fake, what: &str, id: &Value| {
        let id = id.as_str().unwrap().to_string();
        fake.wait_for(what, move |r| r.text().contains(&id)).json()
    };
    let mut payloads = Vec::new();
    let id = &lineage["id"];
    payloads.push(("teams", alert_of(&teams, "a Teams card", id)));
    payloads.push(("slack", alert_of(&slack, "a Slack message", id)));
    payloads.push(("telegram", alert_of(&telegram, "a Telegram message", id)));
    let all: Vec<&str> = payloads.iter().flat_map(|(_, p)| strings(p)).collect();
    assert!(
        all.iter().any(|s| s.contains(escaped_name)),
        "the name arrives, escaped"
    );
    assert!(
        all.iter().any(|s| s.contains(r"red\nline two")),
        "the arguments arrive, escaped"
    );
    for (channel, payload) in &payloads {
        let checked = match *channel {
            // The card's buttons are the agent's own signed links.
            "teams" => &payload["attachments"][0]["content"]["body"],
            _ => payload,
        };
        for s in strings(checked) {
            // The agent's own layout may use newlines; the process's text may not.
            assert!(
                !s.chars().any(|c| c.is_control() && c != '\n'),
                "{channel}: control character in {s:?}"
            );
            for raw in ["evil\nname", "red\nline"] {
                assert!(!s.contains(raw), "{channel}: raw newline in {s:?}");
            }
            for link in ["://evil", "](", "www.evil"] {
                assert!(!s.contains(link), "{channel}: a link ({link}) in {s:?}");
            }
        }
        match *channel {
            "slack" => {
                assert_eq!(payload["unfurl_links"], false, "{payload}");
                assert_eq!(payload["unfurl_media"], false, "{payload}");
                let text = payload.to_string();
                assert!(!text.contains(r#""verbatim":false"#), "{payload}");
                assert!(text.contains(r#""verbatim":true"#), "{payload}");
            }
            "telegram" => {
                assert!(payload.get("parse_mode").is_none(), "{payload}");
                assert!(payload.get("entities").is_none(), "{payload}");
                assert_eq!(payload["link_preview_options"]["is_disabled"], true);
            }
            _ => {}
        }
    }

    // The log: no escape byte, and each alert is one line that holds all of its detail.
    let log = agent.log();
    assert!(!log.contains('\x1b'), "an escape reached the log");
    // (The hostile program also runs from a temp directory, a `miner` signal of its own, and
    // this test process listens for the fake chat services, so `snt-web` under it is a shell
    // under a server too: the alert about `snt-web → sh` is the one with the arguments.)
    let alert_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("alert:") && l.contains("snt-web → sh"))
        .collect();
    assert_eq!(alert_lines.len(), 1, "one line for the alert:\n{log}");
    assert!(
        alert_lines
            .iter()
            .any(|l| l.contains("shell below a web server")
                && l.contains(r"red\nline two")
                && l.contains("http://evil.example/bare")),
        "{alert_lines:#?}"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("line two") || l.starts_with("name")),
        "a forged line in the log:\n{log}"
    );

    // `tail`: one line per event, no escape byte, the hostile exec shown whole.
    let tail = agent.cli(&["tail", "-n", "100000"]);
    assert!(tail.status.success());
    let out = String::from_utf8(tail.stdout).unwrap();
    assert!(
        !out.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in tail's output"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains(" exec ")
            && l.contains(escaped_name)
            && l.contains("[x](http://evil.example)")
            && l.contains("http://evil.example/bare")),
        "the hostile exec on one line:\n{out}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("line two") || l.starts_with("name")),
        "a forged line in tail:\n{out}"
    );
}
