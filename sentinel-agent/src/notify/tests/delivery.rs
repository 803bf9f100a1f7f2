//! Delivery under failure and delay: retries, counts, secrets never shown, a slow channel
//! holding up nothing, the daily summary.

use super::*;

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
