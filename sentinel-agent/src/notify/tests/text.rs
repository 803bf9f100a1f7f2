//! What the messages say: process-chosen text stays text, webhook URLs stay secret, callback
//! data fits, outcomes name who and what.

use super::*;

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
        body.replace('\u{200B}', "").contains("evil.example"),
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

#[test]
fn alerts_in_containers_name_the_container_on_every_channel() {
    let mut d = decision("c1", Duration::from_secs(60));
    let host_facts = facts(&d, SystemTime::now());
    assert!(host_facts.iter().all(|(label, _)| *label != "Container"));
    d.container = Some(crate::enrich::container::Container {
        id: "40b15867205a".repeat(5) + "cdef",
        runtime: "podman".into(),
        name: Some("<!channel>".into()),
        image: Some("localhost/shop:1".into()),
        network_relay: None,
    });
    let facts = facts(&d, SystemTime::now());
    let (_, value) = facts
        .iter()
        .find(|(label, _)| *label == "Container")
        .expect("a Container fact");
    assert_eq!(
        value,
        "container <!channel> (localhost/shop:1, podman 40b15867205a)"
    );
    // The name is the runtime user's choice: escaped like any process-chosen text.
    let slack = slack::alert_message(&d, SystemTime::now()).to_string();
    assert!(
        slack.contains("&lt;!channel&gt;") && !slack.contains("<!channel>"),
        "{slack}"
    );
    let telegram = telegram::alert_message(&d, SystemTime::now(), "-1").to_string();
    assert!(telegram.contains("podman 40b15867205a"), "{telegram}");
}

#[test]
fn the_target_is_named_on_every_channel_and_no_name_is_a_link() {
    let mut d = decision("n1", Duration::from_secs(60));
    let ip = d.target_ip.unwrap();
    d.targets = vec![ip, "198.51.100.77".parse().unwrap()];
    d.names.insert(ip, "c2.evil.example".into());
    let facts = facts(&d, SystemTime::now());
    let (_, target) = facts.iter().find(|(l, _)| *l == "Target").unwrap();
    assert!(
        target.starts_with(&format!("c2.evil.example ({ip}) and 1 more")),
        "{target}"
    );
    // Chat clients would make a link of a bare domain: every channel breaks it.
    let slack = slack::alert_message(&d, SystemTime::now()).to_string();
    let telegram = telegram::alert_message(&d, SystemTime::now(), "-1").to_string();
    for text in [slack, telegram] {
        assert!(!text.contains("c2.evil.example"), "{text}");
        assert!(
            text.replace('\u{200B}', "").contains("c2.evil.example"),
            "{text}"
        );
    }
    // Without a name, the address alone, as before.
    d.names.clear();
    assert_eq!(d.targets_summary(), format!("{ip} and 1 more"));
}
