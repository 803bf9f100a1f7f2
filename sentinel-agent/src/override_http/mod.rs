//! The override endpoint: the small HTTP server through which chat buttons reach the dead
//! man's switch. Teams buttons are signed links (`/v1/decide`, see [`links`] and [`page`]),
//! Slack button clicks are signed callbacks (`/slack/actions`, see [`slack`]); Telegram needs
//! no inbound port (see `notify::telegram`). The folder is not called `override`: that word is
//! reserved in Rust.
//!
//! In: HTTP requests from anywhere. Out: [`Answer`]s to the switch, through
//! `switch::answer::submit`. Everything arriving here is untrusted: a request is answered
//! only once it is well formed, correctly signed, fresh and not a replay. Refusals get a 4xx,
//! are logged with their reason (never a secret or a signature), and change nothing. A
//! correctly signed request is always served, however many bad ones arrive: only refusals are
//! charged to their source ([`limit`]), and connections are capped (overall and per address)
//! and timed out so slow clients cannot hold the door shut. A signed link is spent only when
//! the switch took its answer: a busy or stopping switch leaves it usable.

#[cfg(test)]
mod chromium;
pub mod limit;
pub mod links;
pub mod listener;
mod page;
mod slack;
#[cfg(test)]
mod tests;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::{net::TcpListener, sync::mpsc};

pub use self::links::{Secret, decide_link};
use self::{
    limit::{Limits, RefusalLimiter},
    links::UsedLinks,
};
use crate::{
    config::Config,
    switch::{
        answer::{Unanswered, submit},
        decision::{Answer, AnswerError, Decision, Verdict},
    },
};

/// Renders the Slack message that replaces an answered alert (it is `notify::slack`'s
/// format; handed in so that this module does not depend on the chat senders).
pub type SlackOutcome = fn(&Decision) -> serde_json::Value;

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
    slack_outcome: SlackOutcome,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    serve_with(
        listener,
        config,
        secret,
        answers,
        slack_outcome,
        Limits::default(),
    )
}

/// [`serve`] with explicit limits (tests use small ones).
pub(crate) fn serve_with(
    listener: TcpListener,
    config: &Config,
    secret: Arc<Secret>,
    answers: mpsc::Sender<Answer>,
    slack_outcome: SlackOutcome,
    limits: Limits,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let slack = &config.notify.slack.signing_secret;
    let shared = Arc::new(EndpointState {
        secret,
        slack_signing_secret: (!slack.is_empty()).then(|| slack.clone().into_bytes()),
        slack_allowed_users: config.notify.slack.allowed_users.clone(),
        slack_outcome,
        answers,
        used: UsedLinks::default(),
        limiter: RefusalLimiter::new(&limits, config.override_.trusted_proxies.clone()),
        body_timeout: limits.body_timeout,
        client: reqwest::Client::builder()
            .timeout(config.notify.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default(),
    });
    let proxies = config.override_.trusted_proxies.clone();
    limit::serve_connections(listener, router(shared), limits, proxies)
}

struct EndpointState {
    secret: Arc<Secret>,
    /// `notify.slack.signing_secret`; `None`: Slack is off and its route is not served.
    slack_signing_secret: Option<Vec<u8>>,
    /// `notify.slack.allowed_users`: when set, the only Slack users whose clicks count.
    slack_allowed_users: Vec<String>,
    slack_outcome: SlackOutcome,
    answers: mpsc::Sender<Answer>,
    /// Link signatures already used.
    used: UsedLinks,
    limiter: RefusalLimiter,
    /// Time a request has to send its body ([`Limits::body_timeout`]).
    body_timeout: std::time::Duration,
    /// For Slack's `response_url` (showing the outcome in place of the buttons).
    client: reqwest::Client,
}

fn router(shared: Arc<EndpointState>) -> Router {
    let mut app = Router::new()
        .route(
            "/v1/decide",
            get(page::confirm_page)
                .post(page::decide)
                .layer(DefaultBodyLimit::max(page::DECIDE_BODY_LIMIT)),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    if shared.slack_signing_secret.is_some() {
        app = app.route("/slack/actions", post(slack::actions));
    }
    app.fallback(|| async { HttpRefusal::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            limit::body_in_time,
        ))
        .layer(middleware::from_fn_with_state(shared.clone(), account))
        .with_state(shared)
}

/// A refused request: its status, and the reason logged and shown to the client.
#[derive(Debug)]
struct HttpRefusal {
    status: StatusCode,
    reason: String,
}

/// The reason of a refusal, for the accounting middleware.
#[derive(Clone)]
struct Reason(String);

impl HttpRefusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> HttpRefusal {
        HttpRefusal {
            status,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for HttpRefusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.reason)).into_response();
        response.extensions_mut().insert(Reason(self.reason));
        response
    }
}

/// Every request is handled (signature checks are cheap and bodies bounded); a refusal is
/// then charged to its source. Within the source's and the overall budget it is logged with
/// its reason; beyond, it becomes a quiet 429, so a flood costs neither the log nor the
/// admin's answer. Only the path is logged: a link's query holds its signature.
async fn account(
    State(shared): State<Arc<EndpointState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let source = shared.limiter.source(peer.ip(), request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if !status.is_client_error() {
        if status.is_server_error() {
            tracing::warn!(%source, %method, path, status = status.as_u16(), reason = reason(&response), "override not applied");
        }
        return response;
    }
    if !shared.limiter.charge(source) {
        tracing::debug!(%source, %method, path, status = status.as_u16(), "override refused (rate limited)");
        return HttpRefusal::new(StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response();
    }
    tracing::warn!(%source, %method, path, status = status.as_u16(), reason = reason(&response), "override refused");
    response
}

fn reason(response: &Response) -> String {
    response.extensions().get::<Reason>().map_or_else(
        || {
            let status = response.status();
            status.canonical_reason().unwrap_or("").to_string()
        },
        |r| r.0.clone(),
    )
}

impl EndpointState {
    /// Hand an answer to the switch and wait for its reply.
    async fn answer(
        &self,
        id: &str,
        verdict: Verdict,
        via: String,
    ) -> Result<Decision, HttpRefusal> {
        submit(&self.answers, id, verdict, via).await.map_err(|e| {
            let status = match &e {
                Unanswered::Refused(AnswerError::Unknown(_)) => StatusCode::NOT_FOUND,
                Unanswered::Refused(AnswerError::Ended { .. }) => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            HttpRefusal::new(status, e.to_string())
        })
    }
}
