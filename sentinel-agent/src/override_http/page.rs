//! The confirmation page of a signed link. Opening a link (`GET /v1/decide`) only shows what
//! it would do, so chat link previews and URL scanners that fetch it answer nothing; the
//! page's button (`POST /v1/decide`) applies the answer, once: the link is spent when the
//! switch takes the answer, not before.

use std::{sync::Arc, time::Duration, time::SystemTime};

use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use super::{
    EndpointState, HttpRefusal, Reason,
    links::{Link, unix},
};
use crate::switch::{answer::action, decision::Verdict};

/// Largest accepted `/v1/decide` body (a form of four short fields).
pub(super) const DECIDE_BODY_LIMIT: usize = 4 * 1024;

/// A page with headers so that nothing is cached, framed, leaked by referrer or loaded from
/// elsewhere.
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
/// changes nothing.
pub(super) async fn confirm_page(
    State(shared): State<Arc<EndpointState>>,
    query: Result<Query<Link>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpRefusal> {
    let Query(link) =
        query.map_err(|_| HttpRefusal::new(StatusCode::BAD_REQUEST, "malformed link"))?;
    let now = unix(SystemTime::now());
    let verdict = link.check(&shared.secret, now)?;
    shared.used.check_unused(&link)?;
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
pub(super) async fn decide(
    State(shared): State<Arc<EndpointState>>,
    form: Result<Form<Link>, axum::extract::rejection::FormRejection>,
) -> Result<Response, HttpRefusal> {
    let Form(link) = form.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => HttpRefusal::new(e.status(), "body too large"),
        _ => HttpRefusal::new(StatusCode::BAD_REQUEST, "malformed request"),
    })?;
    let now = unix(SystemTime::now());
    let verdict = link.check(&shared.secret, now)?;
    let claim = shared.used.claim(&link, now)?;
    match shared.answer(&link.id, verdict, "teams-link".into()).await {
        Ok(decision) => {
            claim.spend();
            tracing::info!(id = %decision.id, state = %decision.state, "decision answered by a signed link");
            let body = format!(
                "<p>Decision <code>{}</code> is now <strong>{}</strong>.</p>",
                escape(&decision.id),
                decision.state
            );
            Ok(page(StatusCode::OK, "Sentinel: done", &body))
        }
        Err(refusal) => {
            // Not taken (busy, stopping, refused): the link stays usable.
            drop(claim);
            let body = format!("<p>{}</p>", escape(&refusal.reason));
            let mut response = page(refusal.status, "Sentinel: not applied", &body);
            response.extensions_mut().insert(Reason(refusal.reason));
            Ok(response)
        }
    }
}
