//! The override endpoint: the small HTTP server through which chat buttons reach the dead
//! man's switch. Teams buttons are signed links (`/v1/decide`), Slack button clicks are
//! signed callbacks (`/slack/actions`); Telegram needs no inbound port (see
//! `notify::telegram`).
//!
//! Everything arriving here is untrusted: a request is answered only once it is well formed,
//! correctly signed, fresh and not a replay, and only then does it become an [`Answer`] for
//! the switch. Refusals get a 4xx, are logged with their reason (never a secret or a
//! signature), and change nothing. Requests are rate limited per client and overall, bodies
//! are bounded, and nothing but these routes is served.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Form, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::{
    config::Config,
    switch::decision::{Answer, AnswerError, Decision, Verdict},
};

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted override key, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Largest accepted `/v1/decide` body (a form of four short fields).
const DECIDE_BODY_LIMIT: usize = 4 * 1024;
/// Largest accepted Slack interaction payload (it carries a copy of the message's blocks).
const SLACK_BODY_LIMIT: usize = 64 * 1024;
/// Slack requests whose timestamp is further than this from our clock are refused.
const SLACK_MAX_SKEW: u64 = 5 * 60;
/// Used link signatures remembered (each until its expiry) to refuse replays.
const MAX_USED_LINKS: usize = 100_000;
/// How long a handler waits for the switch to take and apply an answer.
const SWITCH_WAIT: Duration = Duration::from_secs(10);

/// Why the override key could not be loaded. Each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("override secret {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("override secret {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "override secret {path}: mode {mode:04o} lets group or others access it (run `chmod 600 {path}`)"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error(
        "override secret {path}: {len} bytes is too short, at least {MIN_SECRET_LEN} are needed \
         (e.g. `openssl rand -hex 32 > {path}`)"
    )]
    TooShort { path: PathBuf, len: usize },
}

/// The key signing override links (HMAC-SHA256). Its bytes never leave this type: `Debug`
/// prints nothing of them.
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Load `override.secret_file`. The key is the file's content with surrounding ASCII
    /// whitespace removed, used as is (so `openssl rand -hex 32` text and raw random bytes
    /// both work); it must be at least [`MIN_SECRET_LEN`] bytes. The file must be a regular
    /// file that neither group nor others can read or write (mode 0600 or 0400).
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let read = |source| SecretError::Read {
            path: path.into(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Err(SecretError::NotAFile { path: path.into() });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Mode {
                path: path.into(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let key = bytes.trim_ascii();
        if key.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                path: path.into(),
                len: key.len(),
            });
        }
        Ok(Secret(key.to_vec()))
    }

    /// A key from bytes in memory (tests).
    #[cfg(test)]
    pub fn from_bytes(key: &[u8]) -> Secret {
        Secret(key.to_vec())
    }

    fn mac(&self, id: &str, verdict: Verdict, exp: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(format!("sentinel-link-v1|{id}|{}|{exp}", action(verdict)).as_bytes());
        mac
    }

    /// The signature of a link answering decision `id` with `verdict`, valid until `exp`
    /// (unix seconds): hex HMAC-SHA256 over `sentinel-link-v1|id|action|exp`.
    pub fn sign(&self, id: &str, verdict: Verdict, exp: u64) -> String {
        hex::encode(self.mac(id, verdict, exp).finalize().into_bytes())
    }

    /// Whether `sig` (hex) signs this link; compared in constant time.
    pub fn verify(&self, id: &str, verdict: Verdict, exp: u64, sig: &str) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        self.mac(id, verdict, exp).verify_slice(&sig).is_ok()
    }
}

/// The word a verdict has in links and button values.
pub fn action(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Safe => "safe",
        Verdict::Block => "block",
    }
}

/// The verdict an `action` word names.
pub fn parse_action(text: &str) -> Option<Verdict> {
    match text {
        "safe" => Some(Verdict::Safe),
        "block" => Some(Verdict::Block),
        _ => None,
    }
}

/// Decision ids are short tokens; anything else in a request is malformed.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds, rounded up: a link expires at the deadline, not a second before it.
pub fn expiry(deadline: SystemTime) -> u64 {
    deadline
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(0)
}

/// The signed link answering decision `id` with `verdict`, valid until `deadline`:
/// `<public_url>/v1/decide?id=…&action=safe|block&exp=<unix>&sig=<hex>`. Opening it shows a
/// confirmation page; its button (a POST) applies the answer, once.
pub fn decide_link(
    public_url: &str,
    secret: &Secret,
    id: &str,
    verdict: Verdict,
    deadline: SystemTime,
) -> String {
    let exp = expiry(deadline);
    let sig = secret.sign(id, verdict, exp);
    format!(
        "{}/v1/decide?id={id}&action={}&exp={exp}&sig={sig}",
        public_url.trim_end_matches('/'),
        action(verdict)
    )
}

/// Serve the override endpoint on `listener` until the task is dropped or aborted.
///
/// Routes: `GET /v1/decide` (a confirmation page for a signed link), `POST /v1/decide` (the
/// page's button: applies the link's answer), `POST /slack/actions` (Slack interactivity,
/// served only when `notify.slack.signing_secret` is set) and `GET /healthz`. Answers go to
/// the switch through `answers`; each handler waits for the switch's reply to report the
/// outcome.
pub fn serve(
    listener: TcpListener,
    config: &Config,
    secret: Arc<Secret>,
    answers: mpsc::Sender<Answer>,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let slack = &config.notify.slack.signing_secret;
    let shared = Arc::new(Shared {
        secret,
        slack_signing_secret: (!slack.is_empty()).then(|| slack.clone().into_bytes()),
        answers,
        used: Mutex::new(HashMap::new()),
        limiter: RateLimiter::new(Limits::default()),
        client: reqwest::Client::builder()
            .timeout(config.notify.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default(),
    });
    let app = router(shared);
    async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    }
}

struct Shared {
    secret: Arc<Secret>,
    /// `notify.slack.signing_secret`; `None`: Slack is off and its route is not served.
    slack_signing_secret: Option<Vec<u8>>,
    answers: mpsc::Sender<Answer>,
    /// Link signatures already used, with their expiry (unix seconds).
    used: Mutex<HashMap<[u8; 32], u64>>,
    limiter: RateLimiter,
    /// For Slack's `response_url` (showing the outcome in place of the buttons).
    client: reqwest::Client,
}

fn router(shared: Arc<Shared>) -> Router {
    let mut app = Router::new()
        .route(
            "/v1/decide",
            get(confirm_page)
                .post(decide)
                .layer(DefaultBodyLimit::max(DECIDE_BODY_LIMIT)),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    if shared.slack_signing_secret.is_some() {
        app = app.route("/slack/actions", post(slack_actions));
    }
    app.fallback(|| async { Refusal::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// A refused request: its status, and the reason logged and shown to the client.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
}

/// The reason of a refusal, for the logging middleware.
#[derive(Clone)]
struct Reason(String);

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.reason)).into_response();
        response.extensions_mut().insert(Reason(self.reason));
        response
    }
}

/// Rate limiting first, then the handler; every refusal is logged with its reason. Only the
/// path is logged: a link's query holds its signature.
async fn guard(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = if shared.limiter.allow(peer.ip(), Instant::now()) {
        next.run(request).await
    } else {
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response()
    };
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let reason = response.extensions().get::<Reason>().map_or_else(
            || status.canonical_reason().unwrap_or("").to_string(),
            |r| r.0.clone(),
        );
        tracing::warn!(%peer, %method, path, status = status.as_u16(), reason, "override refused");
    }
    response
}

/// A signed link's fields (query of the GET, form of the POST).
#[derive(Debug, Deserialize)]
struct Link {
    id: String,
    action: String,
    exp: u64,
    sig: String,
}

impl Shared {
    /// Check a link's form and signature and that it has not expired; the verdict it carries.
    fn check_link(&self, link: &Link, now: u64) -> Result<Verdict, Refusal> {
        let verdict = parse_action(&link.action)
            .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "unknown action"))?;
        if !valid_id(&link.id) || link.sig.len() != 64 {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "malformed link"));
        }
        if !self.secret.verify(&link.id, verdict, link.exp, &link.sig) {
            return Err(Refusal::new(StatusCode::FORBIDDEN, "bad signature"));
        }
        if now >= link.exp {
            return Err(Refusal::new(
                StatusCode::GONE,
                format!("link for decision {} has expired", link.id),
            ));
        }
        Ok(verdict)
    }

    /// Remember a link as used; false if it already was. Expired entries are dropped first,
    /// so memory stays bounded by the links still valid.
    fn use_link(&self, link: &Link, now: u64) -> Result<(), Refusal> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&link.sig, &mut key)
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "malformed link"))?;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.contains_key(&key) {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                format!("link for decision {} was already used", link.id),
            ));
        }
        if used.len() >= MAX_USED_LINKS {
            used.retain(|_, exp| *exp > now);
            if used.len() >= MAX_USED_LINKS {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many links in use",
                ));
            }
        }
        used.insert(key, link.exp);
        Ok(())
    }

    /// Hand an answer to the switch and wait for its reply.
    async fn answer(&self, id: &str, verdict: Verdict, via: String) -> Result<Decision, Refusal> {
        submit(&self.answers, id, verdict, via).await.map_err(|e| {
            let status = match &e {
                Unanswered::Refused(AnswerError::Unknown(_)) => StatusCode::NOT_FOUND,
                Unanswered::Refused(AnswerError::Ended { .. }) => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            Refusal::new(status, e.to_string())
        })
    }
}

/// Why an answer got no outcome from the switch.
#[derive(Debug, thiserror::Error)]
pub enum Unanswered {
    /// The switch refused it (unknown or ended decision, or stopping); nothing changed.
    #[error(transparent)]
    Refused(AnswerError),
    #[error("the switch did not answer in time")]
    Busy,
    #[error("the agent is stopping")]
    Stopping,
}

/// Send an answer to the switch and wait (boundedly) for the decision it produced.
pub async fn submit(
    answers: &mpsc::Sender<Answer>,
    id: &str,
    verdict: Verdict,
    via: String,
) -> Result<Decision, Unanswered> {
    let (reply, outcome) = oneshot::channel();
    let answer = Answer {
        id: id.to_string(),
        verdict,
        via,
        reply,
    };
    tokio::time::timeout(SWITCH_WAIT, answers.send(answer))
        .await
        .map_err(|_| Unanswered::Busy)?
        .map_err(|_| Unanswered::Stopping)?;
    match tokio::time::timeout(SWITCH_WAIT, outcome).await {
        Ok(Ok(result)) => result.map_err(Unanswered::Refused),
        Ok(Err(_)) => Err(Unanswered::Stopping),
        Err(_) => Err(Unanswered::Busy),
    }
}

/// Headers for the pages: nothing cached, framed, leaked by referrer or loaded from elsewhere.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:sans-serif;max-width:36em;margin:2em auto\">\
         <h1>{title}</h1>\n{body}\n</body></html>\n",
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// HTML-escape text for the pages.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn verdict_title(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Safe => "MARK AS SAFE",
        Verdict::Block => "CONFIRM BLOCK",
    }
}

/// `GET /v1/decide`: check the link and show a page whose button applies it. Opening a link
/// changes nothing, so chat link previews and scanners that fetch it cannot answer.
async fn confirm_page(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<Link>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    let Query(link) = query.map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "malformed link"))?;
    let now = unix(SystemTime::now());
    let verdict = shared.check_link(&link, now)?;
    let used = {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&link.sig, &mut key).is_ok()
            && shared
                .used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&key)
    };
    if used {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            format!("link for decision {} was already used", link.id),
        ));
    }
    let title = verdict_title(verdict);
    let body = format!(
        "<p>Decision <code>{id}</code>: {title}? The link is valid for {left} more.</p>\n\
         <form method=\"post\" action=\"decide\">\
         <input type=\"hidden\" name=\"id\" value=\"{id}\">\
         <input type=\"hidden\" name=\"action\" value=\"{action}\">\
         <input type=\"hidden\" name=\"exp\" value=\"{exp}\">\
         <input type=\"hidden\" name=\"sig\" value=\"{sig}\">\
         <button type=\"submit\">{title}</button></form>",
        id = escape(&link.id),
        action = action(verdict),
        exp = link.exp,
        sig = escape(&link.sig),
        left = humantime::format_duration(Duration::from_secs(link.exp - now)),
    );
    Ok(page(StatusCode::OK, &format!("Sentinel: {title}"), &body))
}

/// `POST /v1/decide`: apply a signed link's answer, once.
async fn decide(
    State(shared): State<Arc<Shared>>,
    form: Result<Form<Link>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Refusal> {
    let Form(link) = form.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Refusal::new(e.status(), "body too large"),
        _ => Refusal::new(StatusCode::BAD_REQUEST, "malformed request"),
    })?;
    let now = unix(SystemTime::now());
    let verdict = shared.check_link(&link, now)?;
    shared.use_link(&link, now)?;
    match shared.answer(&link.id, verdict, "teams-link".into()).await {
        Ok(decision) => {
            tracing::info!(id = %decision.id, state = %decision.state, "decision answered by a signed link");
            let body = format!(
                "<p>Decision <code>{}</code> is now <strong>{}</strong>.</p>",
                escape(&decision.id),
                decision.state
            );
            Ok(page(StatusCode::OK, "Sentinel: done", &body))
        }
        Err(refusal) => {
            let body = format!("<p>{}</p>", escape(&refusal.reason));
            let mut response = page(refusal.status, "Sentinel: not applied", &body);
            response.extensions_mut().insert(Reason(refusal.reason));
            Ok(response)
        }
    }
}

/// Check Slack's request signature: `X-Slack-Signature` = `v0=` + hex HMAC-SHA256 of
/// `v0:{X-Slack-Request-Timestamp}:{body}` under the signing secret, with the timestamp
/// within [`SLACK_MAX_SKEW`] of `now` (unix seconds).
fn verify_slack(key: &[u8], headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Refusal> {
    let bad = |reason| Refusal::new(StatusCode::UNAUTHORIZED, reason);
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

/// Split a button value `safe:<id>` / `block:<id>` (Slack values, Telegram callback data).
pub fn parse_button(value: &str) -> Option<(Verdict, &str)> {
    let (action, id) = value.split_once(':')?;
    Some((parse_action(action)?, id)).filter(|(_, id)| valid_id(id))
}

/// `POST /slack/actions`: a verified `block_actions` click answers the decision in its
/// button's value; the outcome replaces the message through the payload's `response_url`.
async fn slack_actions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, Refusal> {
    let body = axum::body::to_bytes(request.into_body(), SLACK_BODY_LIMIT)
        .await
        .map_err(|_| Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body too large"))?;
    let key = shared
        .slack_signing_secret
        .as_deref()
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no such route"))?;
    verify_slack(key, &headers, &body, unix(SystemTime::now()))?;
    let payload = slack_payload(&headers, body).await?;
    if payload.kind != "block_actions" {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("unsupported Slack interaction {:?}", payload.kind),
        ));
    }
    let (verdict, id) = payload
        .actions
        .first()
        .and_then(|a| a.value.as_deref())
        .and_then(parse_button)
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "malformed Slack action"))?;
    if !valid_id(&payload.user.id) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "malformed Slack user",
        ));
    }
    let via = format!("slack:{}", payload.user.id);
    let result = shared.answer(id, verdict, via).await;
    let reply = match &result {
        Ok(decision) => {
            tracing::info!(id = %decision.id, state = %decision.state, by = %payload.user.id, "decision answered in Slack");
            let mut message = crate::notify::slack::outcome_message(decision);
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
async fn slack_payload(headers: &HeaderMap, body: Bytes) -> Result<SlackPayload, Refusal> {
    let malformed = || Refusal::new(StatusCode::BAD_REQUEST, "malformed Slack payload");
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

/// Token-bucket sizes: each client may burst then trickle; all clients together too.
#[derive(Debug, Clone, Copy)]
struct Limits {
    client_burst: f64,
    client_per_sec: f64,
    global_burst: f64,
    global_per_sec: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_burst: 30.0,
            client_per_sec: 1.0,
            global_burst: 120.0,
            global_per_sec: 10.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, burst: f64, per_sec: f64, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets per client address and overall. Behind a reverse proxy every client has
/// the proxy's address, so the per-client bucket then acts as a second global one.
struct RateLimiter {
    limits: Limits,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
    global: Mutex<Bucket>,
}

/// Clients tracked before idle ones are forgotten.
const MAX_CLIENTS: usize = 4096;

impl RateLimiter {
    fn new(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            clients: Mutex::new(HashMap::new()),
            global: Mutex::new(Bucket {
                tokens: limits.global_burst,
                at: Instant::now(),
            }),
        }
    }

    fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let l = self.limits;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            // A client whose bucket has refilled is indistinguishable from a new one.
            let full = Duration::from_secs_f64(l.client_burst / l.client_per_sec);
            clients.retain(|_, b| now.saturating_duration_since(b.at) < full);
            if clients.len() >= MAX_CLIENTS {
                return false;
            }
        }
        let bucket = clients.entry(client).or_insert(Bucket {
            tokens: l.client_burst,
            at: now,
        });
        if !bucket.take(l.client_burst, l.client_per_sec, now) {
            return false;
        }
        self.global.lock().unwrap_or_else(|e| e.into_inner()).take(
            l.global_burst,
            l.global_per_sec,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::{Value, json};

    use super::*;
    use crate::{
        notify::testing::{FakeApi, FakeSwitch, decision},
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
        let switch = FakeSwitch::start();
        switch.insert(decision("d1", Duration::from_secs(300)));
        switch.insert(decision("d2", Duration::from_secs(300)));
        let secret = Arc::new(Secret::from_bytes(KEY));
        let mut config = Config::default();
        config.notify.slack.signing_secret = SLACK_SECRET.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(
            listener,
            &config,
            secret.clone(),
            switch.answers.clone(),
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
        assert_eq!(s.0.len(), 64, "the trailing newline is not part of the key");

        std::fs::write(&path, "short\n").unwrap();
        let err = Secret::load(&path).unwrap_err().to_string();
        assert!(err.contains("5 bytes is too short"), "{err}");
        assert!(!err.contains("short\n"), "the key is never shown: {err}");

        let err = Secret::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn button_values_parse_strictly() {
        assert_eq!(parse_button("safe:d1"), Some((Verdict::Safe, "d1")));
        assert_eq!(parse_button("block:ab12"), Some((Verdict::Block, "ab12")));
        for bad in ["", "safe", "safe:", "nuke:d1", "safe:a|b", "block:a b"] {
            assert_eq!(parse_button(bad), None, "{bad}");
        }
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
    async fn requests_are_rate_limited() {
        let e = endpoint().await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(e.open(&format!("{}/healthz", e.base)).await.0);
        }
        assert!(
            statuses[..30].iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
        assert!(
            statuses[30..].contains(&StatusCode::TOO_MANY_REQUESTS),
            "{statuses:?}"
        );
    }

    #[test]
    fn rate_limiter_refills_and_keeps_clients_apart() {
        let limiter = RateLimiter::new(Limits {
            client_burst: 2.0,
            client_per_sec: 1.0,
            global_burst: 3.0,
            global_per_sec: 1.0,
        });
        let t = Instant::now();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        assert!(limiter.allow(a, t) && limiter.allow(a, t));
        assert!(!limiter.allow(a, t), "client burst spent");
        assert!(limiter.allow(b, t), "another client has its own bucket");
        assert!(!limiter.allow(c, t), "global burst spent");
        assert!(limiter.allow(a, t + Duration::from_secs(1)), "refilled");
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
}
