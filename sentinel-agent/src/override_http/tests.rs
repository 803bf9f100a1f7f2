//! The endpoint served on loopback, answering into a fake switch.

use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    time::{Duration, SystemTime},
};

use hmac::Mac;
use serde_json::{Value, json};

use super::{
    limit::Limits,
    links::{HmacSha256, expiry, unix},
    slack::SLACK_BODY_LIMIT,
    *,
};
use crate::{
    notify::{
        slack::outcome_message,
        testing::{FakeApi, FakeSwitch, decision},
    },
    switch::decision::State,
};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

struct Endpoint {
    base: String,
    switch: FakeSwitch,
    secret: Arc<Secret>,
    http: reqwest::Client,
}

async fn endpoint() -> Endpoint {
    endpoint_with(Limits::default()).await
}

async fn endpoint_with(limits: Limits) -> Endpoint {
    let switch = FakeSwitch::start();
    switch.insert(decision("d1", Duration::from_secs(300)));
    switch.insert(decision("d2", Duration::from_secs(300)));
    let secret = Arc::new(Secret::from_bytes(KEY));
    let mut config = Config::default();
    config.notify.slack.signing_secret = SLACK_SECRET.into();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_with(
        listener,
        &config,
        secret.clone(),
        switch.answers.clone(),
        outcome_message,
        limits,
    ));
    Endpoint {
        base,
        switch,
        secret,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

fn now() -> u64 {
    unix(SystemTime::now())
}

/// The hidden fields of the confirmation page's form.
fn form_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|input| {
            let attr = |name: &str| {
                let start = input.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                input[start..start + input[start..].find('"').unwrap()].to_string()
            };
            (attr("name"), attr("value"))
        })
        .collect()
}

impl Endpoint {
    fn link(&self, id: &str, verdict: Verdict, deadline: SystemTime) -> String {
        decide_link(&self.base, &self.secret, id, verdict, deadline)
    }

    async fn open(&self, link: &str) -> (StatusCode, String) {
        let r = self.http.get(link).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// Open a link and press the confirmation page's button.
    async fn press(&self, link: &str) -> (StatusCode, String) {
        let (status, page) = self.open(link).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            page.contains("<form method=\"post\" action=\"decide\">"),
            "{page}"
        );
        self.submit(&form_fields(&page)).await
    }

    async fn submit(&self, fields: &[(String, String)]) -> (StatusCode, String) {
        let r = self
            .http
            .post(format!("{}/v1/decide", self.base))
            .form(fields)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn slack(&self, body: &str, ts: u64, key: &str) -> (StatusCode, String) {
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        let r = self
            .http
            .post(format!("{}/slack/actions", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sig)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }
}

fn slack_body(value: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U123", "username": "admin"},
        "response_url": response_url,
        "actions": [{"action_id": "sentinel_block", "value": value, "type": "button"}],
    });
    let mut url = reqwest::Url::parse("http://x/").unwrap();
    url.query_pairs_mut()
        .append_pair("payload", &payload.to_string());
    url.query().unwrap().to_string()
}

#[test]
fn signatures_cover_id_action_and_expiry() {
    let s = Secret::from_bytes(KEY);
    let sig = s.sign("d1", Verdict::Safe, 100);
    assert_eq!(sig.len(), 64);
    assert!(s.verify("d1", Verdict::Safe, 100, &sig));
    assert!(!s.verify("d2", Verdict::Safe, 100, &sig));
    assert!(!s.verify("d1", Verdict::Block, 100, &sig));
    assert!(!s.verify("d1", Verdict::Safe, 101, &sig));
    assert!(!s.verify("d1", Verdict::Safe, 100, "zz"));
    let other = Secret::from_bytes(b"another key of at least 32 bytes...");
    assert!(!other.verify("d1", Verdict::Safe, 100, &sig));
    assert_eq!(format!("{s:?}"), "Secret(..)");
}

#[test]
fn links_expire_at_the_deadline_rounded_up() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_500);
    assert_eq!(expiry(t), 1001);
    let link = decide_link(
        "https://sentinel.example/",
        &Secret::from_bytes(KEY),
        "d1",
        Verdict::Block,
        t,
    );
    assert!(
        link.starts_with("https://sentinel.example/v1/decide?id=d1&action=block&exp=1001&sig="),
        "{link}"
    );
}

#[test]
fn secret_file_must_be_private_and_long_enough() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("override.key");
    let err = Secret::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("override.key") && err.contains("cannot read"),
        "{err}"
    );

    std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Secret::load(&path).unwrap_err().to_string();
    assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = Secret::load(&path).unwrap();
    assert_eq!(s.len(), 64, "the trailing newline is not part of the key");

    std::fs::write(&path, "short\n").unwrap();
    let err = Secret::load(&path).unwrap_err().to_string();
    assert!(err.contains("5 bytes is too short"), "{err}");
    assert!(!err.contains("short\n"), "the key is never shown: {err}");

    let err = Secret::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[tokio::test]
async fn signed_link_marks_safe_once() {
    let e = endpoint().await;
    let deadline = SystemTime::now() + Duration::from_secs(300);
    let link = e.link("d1", Verdict::Safe, deadline);

    // Opening the link (as a chat preview would) changes nothing.
    let (status, page) = e.open(&link).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("MARK AS SAFE"), "{page}");
    assert_eq!(e.switch.state("d1"), State::Pending);

    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("safe"), "{page}");
    assert_eq!(e.switch.state("d1"), State::Safe);
    assert_eq!(e.switch.decided_by("d1").as_deref(), Some("teams-link"));

    // Replayed: refused before it reaches the switch.
    let (status, _) = e.open(&link).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let answers = e.switch.answers_seen();
    let (status, body) = e
        .submit(&[
            ("id".into(), "d1".into()),
            ("action".into(), "safe".into()),
            ("exp".into(), expiry(deadline).to_string()),
            (
                "sig".into(),
                e.secret.sign("d1", Verdict::Safe, expiry(deadline)),
            ),
        ])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("already used"), "{body}");
    assert_eq!(e.switch.answers_seen(), answers);

    // The other link of the same decision: signed and fresh, but the decision has ended.
    let (status, body) = e.press(&e.link("d1", Verdict::Block, deadline)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("already ended: safe"), "{body}");
    assert_eq!(e.switch.state("d1"), State::Safe);
}

/// Run blocking browser work off the runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// The confirmation page in a real browser (headless Chromium over DevTools): opening the
/// MARK AS SAFE link, as a link preview does, changes nothing; pressing the page's button ends
/// the decision; pressing it again on a second copy of the page shows "already used" and
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirmation_page_works_in_headless_chromium() {
    let binary = super::chromium::binary()
        .expect("chromium is not installed: run scripts/setup.sh (it installs Debian's chromium)");
    let e = endpoint().await;
    let link = e.link(
        "d1",
        Verdict::Safe,
        SystemTime::now() + Duration::from_secs(300),
    );
    let browser = blocking(move || super::chromium::Browser::start(binary)).await;
    let browser = Arc::new(browser);

    // Previews: the page is shown twice, nothing is decided.
    let (b, l) = (browser.clone(), link.clone());
    let (mut first, mut second, page) = blocking(move || {
        let mut first = b.open(&l);
        let page = first.text();
        (first, b.open(&l), page)
    })
    .await;
    assert!(
        page.contains("MARK AS SAFE") && page.contains("d1"),
        "{page}"
    );
    assert_eq!(
        e.switch.state("d1"),
        State::Pending,
        "opening the link decided"
    );
    assert!(e.switch.answers_seen().is_empty());

    let (first, page) = blocking(move || {
        first.press("MARK AS SAFE");
        let page = first.text();
        (first, page)
    })
    .await;
    assert!(page.contains("is now safe"), "{page}");
    assert_eq!(e.switch.state("d1"), State::Safe);
    assert_eq!(e.switch.decided_by("d1").as_deref(), Some("teams-link"));

    let (b, l) = (browser.clone(), link.clone());
    let (again, reopened) = blocking(move || {
        second.press("MARK AS SAFE");
        let again = second.text();
        (again, b.open(&l).text())
    })
    .await;
    assert!(again.contains("already used"), "{again}");
    assert!(reopened.contains("already used"), "{reopened}");
    assert_eq!(
        e.switch.answers_seen().len(),
        1,
        "the second press reached the switch"
    );
    drop(first);
}

#[tokio::test]
async fn signed_link_confirms_block() {
    let e = endpoint().await;
    let link = e.link(
        "d2",
        Verdict::Block,
        SystemTime::now() + Duration::from_secs(60),
    );
    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(e.switch.state("d2"), State::Blocked);
}

#[tokio::test]
async fn forged_expired_and_malformed_links_change_nothing() {
    let e = endpoint().await;
    let deadline = SystemTime::now() + Duration::from_secs(300);
    let exp = expiry(deadline);
    let good = e.secret.sign("d1", Verdict::Safe, exp);
    let field = |id: &str, action: &str, exp: String, sig: &str| {
        vec![
            ("id".to_string(), id.to_string()),
            ("action".to_string(), action.to_string()),
            ("exp".to_string(), exp),
            ("sig".to_string(), sig.to_string()),
        ]
    };
    let mut tampered = good.clone().into_bytes();
    tampered[0] = if tampered[0] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let past = now() - 5;
    let expired_sig = e.secret.sign("d1", Verdict::Safe, past);
    let cases = [
        (
            field("d1", "safe", exp.to_string(), &tampered),
            StatusCode::FORBIDDEN,
        ),
        (
            field("d2", "safe", exp.to_string(), &good),
            StatusCode::FORBIDDEN,
        ),
        (
            field("d1", "block", exp.to_string(), &good),
            StatusCode::FORBIDDEN,
        ),
        (
            field("d1", "safe", (exp + 3600).to_string(), &good),
            StatusCode::FORBIDDEN,
        ),
        (
            field("d1", "safe", past.to_string(), &expired_sig),
            StatusCode::GONE,
        ),
        (
            field("d1", "nuke", exp.to_string(), &good),
            StatusCode::BAD_REQUEST,
        ),
        (
            field("d1", "safe", "soon".into(), &good),
            StatusCode::BAD_REQUEST,
        ),
        (
            field("d 1", "safe", exp.to_string(), &good),
            StatusCode::BAD_REQUEST,
        ),
        (
            field("d1", "safe", exp.to_string(), "00"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (fields, want) in &cases {
        let (status, body) = e.submit(fields).await;
        assert_eq!(status, *want, "{fields:?}: {body}");
        let query =
            reqwest::Url::parse_with_params(&format!("{}/v1/decide", e.base), fields).unwrap();
        let (status, body) = e.open(query.as_str()).await;
        assert_eq!(status, *want, "GET {fields:?}: {body}");
    }
    let (status, _) = e.open(&format!("{}/v1/decide?id=d1", e.base)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let r = e
        .http
        .post(format!("{}/v1/decide", e.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "id=d1&action=safe&exp={exp}&sig={good}&pad={}",
            "x".repeat(8192)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(e.switch.answers_seen().is_empty());
    assert_eq!(e.switch.state("d1"), State::Pending);
    // The untouched good link still works afterwards.
    let link = e.link("d1", Verdict::Safe, deadline);
    assert_eq!(e.press(&link).await.0, StatusCode::OK);
}

#[tokio::test]
async fn only_the_needed_routes_are_served() {
    let e = endpoint().await;
    assert_eq!(
        e.open(&format!("{}/healthz", e.base)).await.0,
        StatusCode::OK
    );
    for path in ["/", "/v1", "/v1/decisions", "/slack", "/etc/passwd"] {
        let (status, _) = e.open(&format!("{}{path}", e.base)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let r = e
        .http
        .delete(format!("{}/v1/decide", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = e
        .http
        .get(format!("{}/slack/actions", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn slack_route_is_absent_without_a_signing_secret() {
    let switch = FakeSwitch::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        &Config::default(),
        Arc::new(Secret::from_bytes(KEY)),
        switch.answers.clone(),
        outcome_message,
    ));
    let r = reqwest::Client::new()
        .post(format!("{base}/slack/actions"))
        .body("payload=%7B%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refusals_are_rate_limited_and_signed_links_still_work() {
    let e = endpoint().await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(e.open(&format!("{}/nowhere", e.base)).await.0);
    }
    assert!(
        statuses[..30].iter().all(|s| *s == StatusCode::NOT_FOUND),
        "{statuses:?}"
    );
    assert!(
        statuses[30..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Answers that are not refused are never charged, however spent the budget is.
    for _ in 0..40 {
        let (status, _) = e.open(&format!("{}/healthz", e.base)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let link = e.link(
        "d1",
        Verdict::Safe,
        SystemTime::now() + Duration::from_secs(300),
    );
    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(e.switch.state("d1"), State::Safe);
}

/// A slow client: connects and sends a request one byte a second until the server hangs up
/// (true) or 30 bytes went out (false).
async fn slow_client(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let (mut read, mut write) = stream.into_split();
    let trickle = async move {
        for byte in b"GET /v1/decide?id=d1&action=safe HTTP/1.1\r\n" {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    let hang_up = async move {
        let mut buf = [0u8; 256];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = trickle => false,
        () = hang_up => true,
        () = tokio::time::sleep(Duration::from_secs(30)) => false,
    }
}

/// One garbage request: a forged link, a route that does not exist, or a forged Slack click.
async fn garbage(http: reqwest::Client, base: String, n: usize) -> Option<u16> {
    let request = match n % 3 {
        0 => http.post(format!("{base}/v1/decide")).form(&[
            ("id", "d1"),
            ("action", "block"),
            ("exp", "99999999999"),
            ("sig", &"ab".repeat(32)),
        ]),
        1 => http.get(format!("{base}/wp-login.php?n={n}")),
        _ => http
            .post(format!("{base}/slack/actions"))
            .header(
                "x-slack-request-timestamp",
                unix(SystemTime::now()).to_string(),
            )
            .header("x-slack-signature", format!("v0={}", "00".repeat(32)))
            .body(slack_body("block:d2", "http://127.0.0.1:9/")),
    };
    let response = request.timeout(Duration::from_secs(20)).send().await.ok()?;
    Some(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_answer_lands_while_the_endpoint_is_flooded() {
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    };
    let e = endpoint_with(Limits {
        header_timeout: Duration::from_secs(2),
        connection_timeout: Duration::from_secs(10),
        ..Limits::default()
    })
    .await;
    let addr: std::net::SocketAddr = e.base.trim_start_matches("http://").parse().unwrap();
    let slack = FakeApi::start(|_| (200, "ok".into())).await;

    // 100 slow connections, one byte a second each.
    let slow: Vec<_> = (0..100).map(|_| tokio::spawn(slow_client(addr))).collect();
    // 200 garbage requests a second from the same address as the admin, until the answers
    // landed (at most 30 s: 6,000 requests).
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<HashMap<Option<u16>, usize>>> = Arc::default();
    let flood = {
        let (stop, statuses, base) = (stop.clone(), statuses.clone(), e.base.clone());
        let http = reqwest::Client::new();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut sent = Vec::new();
            for n in 0..6000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                let (http, base, statuses) = (http.clone(), base.clone(), statuses.clone());
                sent.push(tokio::spawn(async move {
                    let status = garbage(http, base, n).await;
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                }));
            }
            for request in sent {
                request.await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The admin's signed link and Slack click land and end their decisions.
    let link = e.link(
        "d1",
        Verdict::Safe,
        SystemTime::now() + Duration::from_secs(300),
    );
    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let click = slack_body("block:d2", &format!("{}/r", slack.base));
    let (status, text) = e.slack(&click, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(!flood.is_finished(), "the answers landed during the flood");
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();

    assert_eq!(e.switch.state("d1"), State::Safe);
    assert_eq!(e.switch.state("d2"), State::Blocked);
    let statuses = statuses.lock().unwrap().clone();
    let refused: usize = [400, 401, 403, 404, 429]
        .iter()
        .map(|s| statuses.get(&Some(*s)).copied().unwrap_or(0))
        .sum();
    let total: usize = statuses.values().sum();
    assert!(total >= 500, "{statuses:?}");
    assert_eq!(
        refused, total,
        "every garbage request was refused: {statuses:?}"
    );
    assert!(
        statuses.get(&Some(429)).copied().unwrap_or(0) > total / 2,
        "past the budget refusals are quiet 429s: {statuses:?}"
    );
    // Garbage never reached the switch.
    let answers = e.switch.answers_seen();
    assert_eq!(answers.len(), 2, "{answers:?}");
    // The slow clients were cut off by the header timeout.
    let mut hung_up = 0;
    for client in slow {
        hung_up += usize::from(client.await.unwrap());
    }
    assert_eq!(
        hung_up, 100,
        "every slow connection was closed by the server"
    );
}
#[tokio::test]
async fn slack_click_confirms_block_and_replaces_the_message() {
    let e = endpoint().await;
    let slack = FakeApi::start(|_| (200, "ok".into())).await;
    let response_url = format!("{}/actions/T1/B2/xyz", slack.base);
    let body = slack_body("block:d1", &response_url);
    let (status, text) = e.slack(&body, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(e.switch.state("d1"), State::Blocked);
    assert_eq!(e.switch.decided_by("d1").as_deref(), Some("slack:U123"));
    let posted = slack.wait_for(1).await;
    assert_eq!(posted[0].path, "/actions/T1/B2/xyz");
    let reply: Value = posted[0].json();
    assert_eq!(reply["replace_original"], true);
    assert!(
        reply["text"].as_str().unwrap().contains("BLOCKED"),
        "{reply}"
    );
    let dump = reply.to_string();
    assert!(!dump.contains("\"actions\""), "no buttons left: {dump}");

    // Clicking again: the decision has ended; the user is told, nothing changes.
    let (status, _) = e.slack(&body, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let posted = slack.wait_for(2).await;
    let reply: Value = posted[1].json();
    assert_eq!(reply["response_type"], "ephemeral");
    assert!(
        reply["text"].as_str().unwrap().contains("already ended"),
        "{reply}"
    );
}

#[tokio::test]
async fn slack_forgeries_change_nothing() {
    let e = endpoint().await;
    let slack = FakeApi::start(|_| (200, "ok".into())).await;
    let body = slack_body("safe:d1", &format!("{}/r", slack.base));
    let cases = [
        (
            "bad signature",
            e.slack(&body, now(), "not-the-signing-secret").await,
        ),
        ("stale", e.slack(&body, now() - 301, SLACK_SECRET).await),
        ("future", e.slack(&body, now() + 301, SLACK_SECRET).await),
    ];
    for (what, (status, text)) in cases {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {text}");
    }
    // A signature over another body.
    let other = slack_body("block:d1", &format!("{}/r", slack.base));
    let mut mac = HmacSha256::new_from_slice(SLACK_SECRET.as_bytes()).unwrap();
    let ts = now();
    mac.update(format!("v0:{ts}:{other}").as_bytes());
    let r = e
        .http
        .post(format!("{}/slack/actions", e.base))
        .header("x-slack-request-timestamp", ts.to_string())
        .header(
            "x-slack-signature",
            format!("v0={}", hex::encode(mac.finalize().into_bytes())),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = e
        .http
        .post(format!("{}/slack/actions", e.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "unsigned");
    // Correctly signed but malformed.
    for bad in [
        "payload=not-json".to_string(),
        "nothing=here".to_string(),
        slack_body("nuke:d1", "https://x/"),
        slack_body("safe:", "https://x/"),
    ] {
        let (status, text) = e.slack(&bad, now(), SLACK_SECRET).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
    }
    let big = format!("payload={}", "x".repeat(SLACK_BODY_LIMIT));
    let (status, _) = e.slack(&big, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let unknown = slack_body("safe:nosuch", &format!("{}/r", slack.base));
    let (status, _) = e.slack(&unknown, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e.switch.state("d1"), State::Pending);
    assert!(
        e.switch
            .answers_seen()
            .iter()
            .all(|(id, ..)| id == "nosuch"),
        "{:?}",
        e.switch.answers_seen()
    );
}
