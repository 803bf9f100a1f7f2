//! Alerts with both buttons, and every way an answer comes back (Teams link, Slack click,
//! Telegram press) and is shown on every channel.

use super::*;

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
async fn with_allowed_users_set_a_chat_member_cannot_answer() {
    let h = Harness::start_edited(None, |c| c.notify.telegram.allowed_users = vec![ADMIN]).await;
    h.open(with_detail("g4"));
    // A member of the configured chat, not on the list.
    h.telegram.press(11, 5, CHAT, 1, "block:g4");
    h.telegram
        .api
        .wait_until(|r| r.iter().any(|r| r.path.ends_with("/answerCallbackQuery")))
        .await;
    assert!(h.switch.answers_seen().is_empty());
    assert_eq!(h.switch.state("g4"), State::Pending);
    // The listed admin, from the same chat.
    h.telegram.press(12, ADMIN, CHAT, 1, "safe:g4");
    wait_state(&h.switch, "g4", State::Safe).await;
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
