//! Slack's interaction protocol: a button click arrives as a form POST whose `payload` field
//! holds JSON, signed with the app's signing secret over the timestamp and the raw body. A
//! verified `block_actions` click answers the decision in its button's value; the outcome
//! replaces the message through the click's `response_url`.

use std::{sync::Arc, time::SystemTime};

use axum::{
    Form,
    body::{Body, Bytes},
    extract::{FromRequest, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use hmac::Mac;
use serde::Deserialize;

use super::{
    EndpointState, HttpRefusal,
    links::{HmacSha256, unix},
};
use crate::switch::answer::{parse_button, valid_token};

/// Largest accepted Slack interaction payload (it carries a copy of the message's blocks).
pub(super) const SLACK_BODY_LIMIT: usize = 64 * 1024;
/// Slack requests whose timestamp is further than this from our clock are refused.
const SLACK_MAX_SKEW: u64 = 5 * 60;

/// Check Slack's request signature: `X-Slack-Signature` = `v0=` + hex HMAC-SHA256 of
/// `v0:{X-Slack-Request-Timestamp}:{body}` under the signing secret, with the timestamp
/// within [`SLACK_MAX_SKEW`] of `now` (unix seconds).
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), HttpRefusal> {
    let bad = |reason| HttpRefusal::new(StatusCode::UNAUTHORIZED, reason);
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp =
        header("x-slack-request-timestamp").ok_or_else(|| bad("missing Slack timestamp"))?;
    let ts: u64 = timestamp
        .parse()
        .map_err(|_| bad("malformed Slack timestamp"))?;
    if ts.abs_diff(now) > SLACK_MAX_SKEW {
        return Err(bad("stale Slack timestamp"));
    }
    let signature = header("x-slack-signature")
        .and_then(|s| s.strip_prefix("v0="))
        .and_then(|s| hex::decode(s).ok())
        .ok_or_else(|| bad("missing or malformed Slack signature"))?;
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| bad("bad Slack signature"))
}

/// The form Slack posts: one `payload` field holding JSON.
#[derive(Deserialize)]
struct SlackForm {
    payload: String,
}

#[derive(Deserialize)]
struct SlackPayload {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUser,
    #[serde(default)]
    actions: Vec<SlackAction>,
    response_url: Option<String>,
}

#[derive(Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Deserialize)]
struct SlackAction {
    value: Option<String>,
}

/// `POST /slack/actions`: a verified `block_actions` click answers the decision in its
/// button's value; the outcome replaces the message through the payload's `response_url`.
pub(super) async fn actions(
    State(shared): State<Arc<EndpointState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, HttpRefusal> {
    let body = axum::body::to_bytes(request.into_body(), SLACK_BODY_LIMIT)
        .await
        .map_err(|_| HttpRefusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body too large"))?;
    let key = shared
        .slack_signing_secret
        .as_deref()
        .ok_or_else(|| HttpRefusal::new(StatusCode::NOT_FOUND, "no such route"))?;
    verify(key, &headers, &body, unix(SystemTime::now()))?;
    let payload = parse_payload(&headers, body).await?;
    if payload.kind != "block_actions" {
        return Err(HttpRefusal::new(
            StatusCode::BAD_REQUEST,
            format!("unsupported Slack interaction {:?}", payload.kind),
        ));
    }
    let (verdict, id) = payload
        .actions
        .first()
        .and_then(|a| a.value.as_deref())
        .and_then(parse_button)
        .ok_or_else(|| HttpRefusal::new(StatusCode::BAD_REQUEST, "malformed Slack action"))?;
    if !valid_token(&payload.user.id) {
        return Err(HttpRefusal::new(
            StatusCode::BAD_REQUEST,
            "malformed Slack user",
        ));
    }
    if !shared.slack_allowed_users.is_empty()
        && !shared.slack_allowed_users.contains(&payload.user.id)
    {
        tracing::warn!(user = %payload.user.id, "Slack click from a user not in notify.slack.allowed_users: refused");
        return Err(HttpRefusal::new(
            StatusCode::FORBIDDEN,
            "you are not in notify.slack.allowed_users: answer refused",
        ));
    }
    let via = format!("slack:{}", payload.user.id);
    let result = shared.answer(id, verdict, via).await;
    let reply = match &result {
        Ok(decision) => {
            tracing::info!(id = %decision.id, state = %decision.state, by = %payload.user.id, "decision answered in Slack");
            let mut message = (shared.slack_outcome)(decision);
            message["replace_original"] = true.into();
            message
        }
        Err(refusal) => serde_json::json!({
            "response_type": "ephemeral",
            "replace_original": false,
            "text": refusal.reason,
        }),
    };
    if let Some(url) = payload
        .response_url
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
    {
        let client = shared.client.clone();
        tokio::spawn(async move {
            let sent = client.post(url).json(&reply).send().await;
            if let Err(e) = sent.and_then(reqwest::Response::error_for_status) {
                tracing::warn!(error = %e.without_url(), "cannot show the outcome in Slack");
            }
        });
    }
    match result {
        Ok(_) => Ok(StatusCode::OK.into_response()),
        // Slack shows any non-200 as a failure next to the button: the reason is in the
        // ephemeral reply, the 409 is for the log.
        Err(refusal) => Err(refusal),
    }
}

/// Parse Slack's form body and the JSON in its `payload` field.
async fn parse_payload(headers: &HeaderMap, body: Bytes) -> Result<SlackPayload, HttpRefusal> {
    let malformed = || HttpRefusal::new(StatusCode::BAD_REQUEST, "malformed Slack payload");
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = axum::http::Method::POST;
    if let Some(kind) = headers.get(header::CONTENT_TYPE) {
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, kind.clone());
    }
    let Form(form) = Form::<SlackForm>::from_request(request, &())
        .await
        .map_err(|_| malformed())?;
    serde_json::from_str(&form.payload).map_err(|_| malformed())
}
