//! The fleet view: what `sentinel fleet` reads and writes on the store, from any machine with
//! `fleet.postgres_url` and no agent. Answers are only requests: the owning agent applies
//! them (or refuses a late one) and writes the outcome back.

use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::{
    fleet::{
        postgres::PgError,
        sign::{OperatorSecret, Order},
    },
    switch::decision::Verdict,
};

/// `fleet hosts --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRow {
    pub host: String,
    pub version: String,
    pub last_seen: String,
    /// Three heartbeats missed.
    pub silent: bool,
    pub pending: i64,
    /// Rows the host's outbox dropped when full: what this view misses of it.
    pub outbox_dropped: i64,
}

/// `fleet pending --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingRow {
    pub host: String,
    pub id: String,
    pub anomaly: String,
    pub target_ip: Option<String>,
    /// The name `target_ip` was resolved from, when the host knew it (the host's text).
    pub domain: Option<String>,
    pub deadline: String,
    pub seconds_left: i64,
}

/// `fleet blocks --json`: a block in force on a host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockRow {
    pub host: String,
    pub addr: String,
    /// The name the address was blocked under, when the host knew it (the host's text).
    pub domain: Option<String>,
    pub decision_id: String,
    pub expires: String,
}

/// How a `fleet decide` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideOutcome {
    /// The agent applied it: the decision's new state (and why, when it needs saying).
    Applied(String),
    /// The agent refused it (e.g. the decision had already ended): why.
    Refused(String),
    /// The agent did not pick it up in time; it stays queued.
    Waiting { last_seen: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("no host {0:?} has ever reported to the fleet store (see `sentinel fleet hosts`)")]
    UnknownHost(String),
    #[error("{0:?} is not HOST/ID")]
    BadRef(String),
}

impl From<tokio_postgres::Error> for ViewError {
    fn from(e: tokio_postgres::Error) -> Self {
        ViewError::Pg(PgError::Pg(e))
    }
}

fn rfc3339(epoch: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(epoch.max(0.0));
    humantime::format_rfc3339_millis(t).to_string()
}

pub async fn hosts(client: &tokio_postgres::Client) -> Result<Vec<HostRow>, ViewError> {
    let rows = client
        .query(
            "SELECT h.host, h.version, extract(epoch FROM h.last_seen)::float8,
                    now() - h.last_seen > make_interval(secs => 3 * h.heartbeat_s),
                    (SELECT count(*) FROM fleet_decisions d
                     WHERE d.host = h.host AND d.state = 'pending'),
                    h.outbox_dropped
             FROM fleet_hosts h ORDER BY h.host",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| HostRow {
            host: r.get(0),
            version: r.get(1),
            last_seen: rfc3339(r.get(2)),
            silent: r.get(3),
            pending: r.get(4),
            outbox_dropped: r.get(5),
        })
        .collect())
}

/// The latest `limit` alerts across hosts, oldest first.
pub async fn alerts(client: &tokio_postgres::Client, limit: i64) -> Result<Vec<Value>, ViewError> {
    let rows = client
        .query(
            "SELECT host, body FROM (
                 SELECT host, body, ts, id FROM fleet_alerts ORDER BY ts DESC, host, id LIMIT $1
             ) latest ORDER BY ts, host, id",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut body: Value = r.get(1);
            body["host"] = Value::String(r.get(0));
            body
        })
        .collect())
}

/// Decisions pending now across hosts, soonest deadline first.
pub async fn pending(client: &tokio_postgres::Client) -> Result<Vec<PendingRow>, ViewError> {
    let rows = client
        .query(
            "SELECT host, id, body->>'anomaly', body->>'target_ip', body->>'domain',
                    extract(epoch FROM deadline)::float8,
                    GREATEST(0, ceil(extract(epoch FROM deadline - now())))::int8
             FROM fleet_decisions WHERE state = 'pending' ORDER BY deadline, host, id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PendingRow {
            host: r.get(0),
            id: r.get(1),
            anomaly: r.get::<_, Option<String>>(2).unwrap_or_default(),
            target_ip: r.get(3),
            domain: r.get(4),
            deadline: rfc3339(r.get(5)),
            seconds_left: r.get(6),
        })
        .collect())
}

/// Blocks in force now across hosts (not lifted, not expired), by host and address.
pub async fn blocks(client: &tokio_postgres::Client) -> Result<Vec<BlockRow>, ViewError> {
    let rows = client
        .query(
            "SELECT host, host(addr) AS address, body->>'domain', decision_id,
                    extract(epoch FROM expires)::float8
             FROM fleet_blocks WHERE NOT lifted AND expires > now() ORDER BY 1, addr",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| BlockRow {
            host: r.get(0),
            addr: r.get(1),
            domain: r.get(2),
            decision_id: r.get(3),
            expires: rfc3339(r.get(4)),
        })
        .collect())
}

/// `HOST/ID` → (host, id). Host names do not contain '/', ids may.
pub fn parse_ref(text: &str) -> Result<(&str, &str), ViewError> {
    match text.split_once('/') {
        Some((h, id)) if !h.is_empty() && !id.is_empty() => Ok((h, id)),
        _ => Err(ViewError::BadRef(text.into())),
    }
}

/// Write an answer for `host`'s decision `id`, signed with `key`, and wait up to `wait` for
/// its agent's outcome.
pub async fn decide(
    client: &tokio_postgres::Client,
    host: &str,
    id: &str,
    verdict: Verdict,
    by: &str,
    key: &OperatorSecret,
    wait: Duration,
) -> Result<DecideOutcome, ViewError> {
    let last_seen: Option<f64> = client
        .query_opt(
            "SELECT extract(epoch FROM last_seen)::float8 FROM fleet_hosts WHERE host = $1",
            &[&host],
        )
        .await?
        .map(|r| r.get(0));
    let Some(last_seen) = last_seen else {
        return Err(ViewError::UnknownHost(host.into()));
    };
    let verdict = match verdict {
        Verdict::Safe => "safe",
        Verdict::Block => "block",
    };
    let (at, signature) = key.sign(&Order::Answer {
        host,
        decision_id: id,
        verdict,
    });
    let answer: i64 = client
        .query_one(
            "INSERT INTO fleet_answers
                 (host, decision_id, verdict, requested_by, operator, signed_ms, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[&host, &id, &verdict, &by, &key.name, &at, &signature],
        )
        .await?
        .get(0);
    let until = Instant::now() + wait;
    loop {
        let row = client
            .query_one(
                "SELECT status, COALESCE(result, '') FROM fleet_answers WHERE id = $1",
                &[&answer],
            )
            .await?;
        let (status, result): (String, String) = (row.get(0), row.get(1));
        match status.as_str() {
            "applied" => return Ok(DecideOutcome::Applied(result)),
            "refused" => return Ok(DecideOutcome::Refused(result)),
            _ if Instant::now() >= until => {
                return Ok(DecideOutcome::Waiting {
                    last_seen: Some(rfc3339(last_seen)),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Lift `addr` on every host, signed with `key`: the shared block is marked lifted (recorded
/// even when no host shared it). Each agent lifts the block the fleet made (and the origin
/// host the block it shared). Returns the hosts that held it.
pub async fn unblock(
    client: &tokio_postgres::Client,
    addr: std::net::IpAddr,
    by: &str,
    key: &OperatorSecret,
) -> Result<Vec<String>, ViewError> {
    let (at, signature) = key.sign(&Order::Lift { addr });
    let addr = addr.to_string();
    client
        .execute(
            "INSERT INTO fleet_shared_blocks
                 (addr, at, lifted_at, lifted_by, signer, signed_ms, signature)
             VALUES ($1::text::inet, now(), now(), $2, $3, $4, $5)
             ON CONFLICT (addr) DO UPDATE SET lifted_at = now(), lifted_by = excluded.lifted_by,
                 signer = excluded.signer, signed_ms = excluded.signed_ms,
                 signature = excluded.signature",
            &[&addr, &by, &key.name, &at, &signature],
        )
        .await?;
    let rows = client
        .query(
            "SELECT host FROM fleet_blocks WHERE addr = $1::text::inet AND NOT lifted
             AND expires > now() ORDER BY host",
            &[&addr],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Block `addr` on every host that shares blocks (each through its own guard), signed with
/// `key`, as an operator's own order (no host's decision behind it).
pub async fn block(
    client: &tokio_postgres::Client,
    addr: std::net::IpAddr,
    by: &str,
    key: &OperatorSecret,
) -> Result<(), ViewError> {
    let (at, signature) = key.sign(&Order::Block { addr });
    client
        .execute(
            "INSERT INTO fleet_shared_blocks
                 (addr, origin_host, decision_id, confirmed_by, at, signer, signed_ms, signature)
             VALUES ($1::text::inet, NULL, NULL, $2, now(), $3, $4, $5)
             ON CONFLICT (addr) DO UPDATE SET origin_host = NULL, decision_id = NULL,
                 confirmed_by = excluded.confirmed_by, at = now(), lifted_at = NULL,
                 lifted_by = NULL, signer = excluded.signer, signed_ms = excluded.signed_ms,
                 signature = excluded.signature",
            &[&addr.to_string(), &by, &key.name, &at, &signature],
        )
        .await?;
    Ok(())
}

/// Who is answering: `user@machine`.
pub fn requester() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    let machine = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    format!("{user}@{machine}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_split_at_the_first_slash() {
        assert_eq!(parse_ref("web1/a1b2").unwrap(), ("web1", "a1b2"));
        assert!(parse_ref("web1").is_err());
        assert!(parse_ref("/a1").is_err());
        assert!(parse_ref("web1/").is_err());
    }

    #[test]
    fn epoch_seconds_become_rfc3339() {
        assert_eq!(rfc3339(1_800_000_000.5), "2027-01-15T08:00:00.500Z");
    }
}
