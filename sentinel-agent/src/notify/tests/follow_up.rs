//! A later decision of one alert (`ID.2`) is answered from every chat button like the first:
//! the Teams link, the Slack click and the Telegram press each end it `safe`.

use super::*;

/// The Slack button value of decision `id`'s alert, `index` 0 = MARK AS SAFE.
fn slack_value(h: &Harness, id: &str, index: usize) -> String {
    let alert = h
        .slack
        .to(SLACK_HOOK)
        .iter()
        .map(Recorded::json)
        .find(|m| m.to_string().contains(&format!("{id}-detail")))
        .unwrap_or_else(|| panic!("no Slack alert for {id}"));
    alert["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap()["elements"][index]["value"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Click a Slack button carrying `value`, signed as Slack signs it.
async fn slack_click(h: &Harness, value: &str) -> reqwest::StatusCode {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U42"},
        "response_url": format!("{}/actions/respond", h.slack.base),
        "actions": [{"action_id": "sentinel_safe", "value": value}],
    });
    let mut form = reqwest::Url::parse("http://x/").unwrap();
    form.query_pairs_mut()
        .append_pair("payload", &payload.to_string());
    let body = form.query().unwrap().to_string();
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    h.http
        .post(format!("{}/slack/actions", h.endpoint))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", slack_signature(&body, ts))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// Open the Teams card's MARK AS SAFE link and press the confirmation page's button.
async fn teams_safe(h: &Harness, id: &str) -> reqwest::StatusCode {
    let card = teams_card(&h.teams, id);
    let url = card["attachments"][0]["content"]["actions"][0]["url"]
        .as_str()
        .unwrap();
    let page = h.http.get(url).send().await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
    let fields: Vec<(String, String)> = reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert!(fields.contains(&("id".into(), id.into())), "{fields:?}");
    h.http
        .post(format!("{}/v1/decide", h.endpoint))
        .form(&fields)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn follow_up_decisions_are_marked_safe_from_every_button() {
    let h = Harness::start(None).await;
    for id in ["f1.2", "f2.2", "f3.12"] {
        h.open(with_detail(id));
    }
    h.slack.wait_for(3).await;
    h.teams.wait_for(3).await;
    h.telegram
        .api
        .wait_until(|r| {
            r.iter()
                .filter(|r| r.path.ends_with("/sendMessage"))
                .count()
                >= 3
        })
        .await;

    // Teams: the signed link names the follow-up id and is accepted.
    assert_eq!(teams_safe(&h, "f1.2").await, 200);
    assert_eq!(h.switch.state("f1.2"), State::Safe);
    assert_eq!(h.switch.decided_by("f1.2").as_deref(), Some("teams-link"));

    // Slack: the button value `safe:f2.2` parses and is applied.
    let value = slack_value(&h, "f2.2", 0);
    assert_eq!(value, "safe:f2.2");
    assert_eq!(slack_click(&h, &value).await, 200);
    assert_eq!(h.switch.state("f2.2"), State::Safe);
    assert_eq!(h.switch.decided_by("f2.2").as_deref(), Some("slack:U42"));

    // Telegram: the callback data `safe:f3.12` parses and is applied.
    let (message, message_id) = h.telegram.alert("f3.12");
    let data = message["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap();
    assert_eq!(data, "safe:f3.12");
    h.telegram.press(1, ADMIN, CHAT, message_id, data);
    wait_state(&h.switch, "f3.12", State::Safe).await;
    assert_eq!(
        h.switch.decided_by("f3.12").as_deref(),
        Some(format!("telegram:{ADMIN}").as_str())
    );

    let answered: Vec<String> = h.switch.answers_seen().into_iter().map(|a| a.0).collect();
    assert_eq!(answered, ["f1.2", "f2.2", "f3.12"]);
}
