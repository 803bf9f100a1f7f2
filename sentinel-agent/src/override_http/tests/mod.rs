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
    endpoint_through(limits, |answers| answers).await
}

/// An endpoint whose answers reach the fake switch through `through` (which may delay, drop or
/// pass them on).
async fn endpoint_through(
    limits: Limits,
    through: impl FnOnce(mpsc::Sender<Answer>) -> mpsc::Sender<Answer>,
) -> Endpoint {
    endpoint_configured(limits, through, |_| {}).await
}

/// [`endpoint_through`] on a config that `edit` changed first.
async fn endpoint_configured(
    limits: Limits,
    through: impl FnOnce(mpsc::Sender<Answer>) -> mpsc::Sender<Answer>,
    edit: impl FnOnce(&mut Config),
) -> Endpoint {
    let switch = FakeSwitch::start();
    switch.insert(decision("d1", Duration::from_secs(300)));
    switch.insert(decision("d2", Duration::from_secs(300)));
    let secret = Arc::new(Secret::from_bytes(KEY));
    let mut config = Config::default();
    config.notify.slack.signing_secret = SLACK_SECRET.into();
    edit(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_with(
        listener,
        &config,
        secret.clone(),
        through(switch.answers.clone()),
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

mod abuse;
mod links;
mod slack;
