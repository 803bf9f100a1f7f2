//! The Slack interaction endpoint: a signed click confirms, forgeries change nothing.

use super::*;

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

#[tokio::test]
async fn only_allowed_slack_users_answer_when_the_list_is_set() {
    let e = endpoint_configured(
        Limits::default(),
        |a| a,
        |c| {
            c.notify.slack.allowed_users = vec!["U999".into()];
        },
    )
    .await;
    let slack = FakeApi::start(|_| (200, "ok".into())).await;
    // U123 signs correctly (Slack vouches for it) but is not on the list.
    let body = slack_body("safe:d1", &format!("{}/r", slack.base));
    let (status, text) = e.slack(&body, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("allowed_users"), "{text}");
    assert_eq!(e.switch.state("d1"), State::Pending);
    // U999 is.
    let allowed = body.replace("U123", "U999");
    let (status, text) = e.slack(&allowed, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(e.switch.state("d1"), State::Safe);
    assert_eq!(e.switch.decided_by("d1").as_deref(), Some("slack:U999"));
}
