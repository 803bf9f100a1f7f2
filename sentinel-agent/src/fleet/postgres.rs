//! The fleet store on PostgreSQL: connecting (TLS, always verified, against `fleet.ca_file` or
//! the system's roots; see [`config`](super::config) for when it is required) and the statements that ship an outbox batch (the schema is the operator's:
//! [`admin`](super::admin)). Every row is keyed by (host, id) and carries the host's outbox sequence
//! number; an upsert only replaces an older version, so a batch shipped twice, or late,
//! changes nothing. The tables are documented in `docs/fleet.md`.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use futures_util::StreamExt as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tokio_postgres::{AsyncMessage, Client, GenericClient, Statement, config::SslMode};
use tracing::debug;

use crate::fleet::outbox::{EventRow, Kind, Row};

/// The channel agents LISTEN on: payload `answer <host>` or `shared`.
pub const CHANNEL: &str = "sentinel_fleet";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Shown whole (the server's message, detail and hint), not as a chain of causes.
    #[error("{}", explain(.0))]
    Pg(tokio_postgres::Error),
    #[error(
        "the fleet store has schema version {found}, newer than this sentinel's {known}: upgrade the agent"
    )]
    Newer { found: i32, known: i32 },
    #[error("TLS: {0}")]
    Tls(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Pg(e)
    }
}

/// A PostgreSQL error in one line: the server's own words when it sent some (`FATAL: password
/// authentication failed for user "sentinel"`), else the client's with its cause.
pub fn explain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

impl PgError {
    /// The store has no Sentinel tables yet (no agent ever connected to it).
    pub fn is_missing_schema(&self) -> bool {
        matches!(self, PgError::Pg(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE))
    }

    /// A problem with the rows themselves (bad data, a constraint), not with the connection:
    /// retrying the same batch would fail the same way.
    pub fn is_data(&self) -> bool {
        match self {
            PgError::Pg(e) => e
                .code()
                .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
            _ => false,
        }
    }
}

/// The TLS connector: rustls, verifying the server's certificate and name against the CA
/// file (PEM) when there is one, else the system's root certificates.
fn tls(ca_file: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.as_os_str().is_empty() {
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    } else {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let certs = CertificateDer::pem_file_iter(ca_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| PgError::Tls(format!("fleet.ca_file {}: {e}", ca_file.display())))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(PgError::Tls(format!(
                "fleet.ca_file {}: no CA certificate in it",
                ca_file.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Connect (`ca_file`: see [`tls`]; empty: the system's roots); the connection runs on its
/// own task, and notifications on [`CHANNEL`] arrive on the receiver (closed when the
/// connection ends).
pub async fn connect(
    config: &tokio_postgres::Config,
    ca_file: &Path,
) -> Result<(Client, mpsc::UnboundedReceiver<String>), PgError> {
    if config.get_ssl_mode() == SslMode::Disable {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        Ok((client, drive(conn)))
    } else {
        let (client, conn) = config.connect(tls(ca_file)?).await?;
        Ok((client, drive(conn)))
    }
}

fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>) -> mpsc::UnboundedReceiver<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        forward(&mut messages, tx).await;
    });
    rx
}

async fn forward(
    messages: &mut (
             impl futures_util::Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin
         ),
    tx: mpsc::UnboundedSender<String>,
) {
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) if n.channel() == CHANNEL => {
                let _ = tx.send(n.payload().to_string());
            }
            Ok(_) => {}
            Err(e) => {
                debug!("fleet store connection ended: {e}");
                return;
            }
        }
    }
}

/// Columns of one kind's rows, for an `unnest` upsert.
#[derive(Default)]
struct Columns {
    keys: Vec<String>,
    seqs: Vec<i64>,
    bodies: Vec<serde_json::Value>,
}

const UPSERT_ALERTS: &str = "
    INSERT INTO fleet_alerts AS t (host, id, seq, ts, anomaly, state, target_ip, body)
    SELECT $1, r.k, r.s, (r.b->>'ts')::timestamptz, r.b->>'anomaly', r.b->>'state',
           (r.b->>'target_ip')::inet, r.b
    FROM unnest($2::text[], $3::int8[], $4::jsonb[]) AS r(k, s, b)
    ON CONFLICT (host, id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts,
        anomaly = excluded.anomaly, state = excluded.state, target_ip = excluded.target_ip,
        body = excluded.body
    WHERE t.seq < excluded.seq";

const UPSERT_DECISIONS: &str = "
    INSERT INTO fleet_decisions AS t (host, id, seq, state, deadline, ended, body)
    SELECT $1, r.k, r.s, r.b->>'state', (r.b->>'deadline')::timestamptz,
           (r.b->>'ended')::timestamptz, r.b
    FROM unnest($2::text[], $3::int8[], $4::jsonb[]) AS r(k, s, b)
    ON CONFLICT (host, id) DO UPDATE SET seq = excluded.seq, state = excluded.state,
        deadline = excluded.deadline, ended = excluded.ended, body = excluded.body
    WHERE t.seq < excluded.seq";

const UPSERT_BLOCKS: &str = "
    INSERT INTO fleet_blocks AS t (host, addr, seq, decision_id, expires, lifted, body)
    SELECT $1, r.k::inet, r.s, r.b->>'decision_id', (r.b->>'expires')::timestamptz,
           (r.b->>'lifted')::boolean, r.b
    FROM unnest($2::text[], $3::int8[], $4::jsonb[]) AS r(k, s, b)
    ON CONFLICT (host, addr) DO UPDATE SET seq = excluded.seq,
        decision_id = excluded.decision_id, expires = excluded.expires,
        lifted = excluded.lifted, body = excluded.body
    WHERE t.seq < excluded.seq";

const UPSERT_KILLS: &str = "
    INSERT INTO fleet_kills AS t (host, id, seq, at, body)
    SELECT $1, r.k, r.s, (r.b->>'at')::timestamptz, r.b
    FROM unnest($2::text[], $3::int8[], $4::jsonb[]) AS r(k, s, b)
    ON CONFLICT (host, id) DO NOTHING";

const INSERT_EVENTS: &str = "
    INSERT INTO fleet_events (host, id, ts, kind, body)
    SELECT $1, r.i, (r.b->>'ts')::timestamptz, r.k, r.b
    FROM unnest($2::int8[], $3::text[], $4::jsonb[]) AS r(i, k, b)
    ON CONFLICT (host, id) DO NOTHING";

/// A human-confirmed block becomes the fleet's; a late copy of an old confirmation never
/// undoes a later lift. Two statements rather than an upsert: a host may only re-publish a
/// lifted row (row-level security), and a plain insert that finds the address already shared
/// does nothing.
const RESHARE: &str = "
    UPDATE fleet_shared_blocks SET origin_host = $2, decision_id = $3, confirmed_by = $4,
        at = $5::text::timestamptz, lifted_at = NULL, lifted_by = NULL, domain = $6
    WHERE addr = $1::text::inet AND lifted_at IS NOT NULL AND lifted_at < $5::text::timestamptz";
const SHARE: &str = "
    INSERT INTO fleet_shared_blocks (addr, origin_host, decision_id, confirmed_by, at, domain)
    VALUES ($1::text::inet, $2, $3, $4, $5::text::timestamptz, $6)
    ON CONFLICT (addr) DO NOTHING";

/// Ship one batch in one transaction: outbox rows, raw events, and (with `share`) the blocks
/// a human confirmed on this host.
pub async fn ship(
    client: &mut Client,
    host: &str,
    rows: &[Row],
    events: &[EventRow],
    share: bool,
) -> Result<(), PgError> {
    let mut by_kind: BTreeMap<&'static str, Columns> = BTreeMap::new();
    for r in rows {
        let c = by_kind.entry(r.kind.as_str()).or_default();
        c.keys.push(r.key.clone());
        c.seqs.push(r.seq);
        c.bodies.push(r.body.clone());
    }
    let tx = client.transaction().await?;
    for (kind, sql) in [
        (Kind::Alert, UPSERT_ALERTS),
        (Kind::Decision, UPSERT_DECISIONS),
        (Kind::Block, UPSERT_BLOCKS),
        (Kind::Kill, UPSERT_KILLS),
    ] {
        if let Some(c) = by_kind.get(kind.as_str()) {
            tx.execute(sql, &[&host, &c.keys, &c.seqs, &c.bodies])
                .await?;
        }
    }
    if !events.is_empty() {
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let bodies: Vec<&serde_json::Value> = events.iter().map(|e| &e.body).collect();
        tx.execute(INSERT_EVENTS, &[&host, &ids, &kinds, &bodies])
            .await?;
    }
    if share {
        for r in rows.iter().filter(|r| r.kind == Kind::Decision) {
            share_confirmed(&tx, host, &r.body).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// A decision a human ended with CONFIRM BLOCK: each of its targets becomes a shared block.
async fn share_confirmed(
    tx: &impl GenericClient,
    host: &str,
    decision: &serde_json::Value,
) -> Result<(), PgError> {
    let human = decision["state"] == "blocked" && decision["decided_by"] != "timer";
    let refused = decision["reason"]
        .as_str()
        .is_some_and(|r| r.starts_with("block refused"));
    if !human || refused {
        return Ok(());
    }
    let id = decision["id"].as_str().unwrap_or_default();
    let by = decision["decided_by"].as_str().unwrap_or_default();
    let at = decision["ended"].as_str().unwrap_or_default();
    // Targets this host's own gate refused were never blocked here: not shared either.
    let refused = targets(&serde_json::json!({ "targets": decision["refused"] }));
    for addr in targets(decision).iter().filter(|a| !refused.contains(a)) {
        let domain = target_name(decision, addr);
        if tx
            .execute(RESHARE, &[addr, &host, &id, &by, &at, &domain])
            .await?
            == 0
        {
            tx.execute(SHARE, &[addr, &host, &id, &by, &at, &domain])
                .await?;
        }
    }
    Ok(())
}

/// The name a decision's target `addr` was resolved from: its own in `names`, else the
/// decision's `domain` when `addr` is its `target_ip`.
pub fn target_name<'a>(decision: &'a serde_json::Value, addr: &str) -> Option<&'a str> {
    decision["names"][addr].as_str().or_else(|| {
        let main = decision["target_ip"]
            .as_str()?
            .parse::<std::net::IpAddr>()
            .ok()?;
        (main.to_string() == addr)
            .then(|| decision["domain"].as_str())
            .flatten()
    })
}

/// A decision's addresses: `targets` (a list of addresses, or of objects with `ip`/`addr`)
/// when it has one, else `target_ip`.
pub fn targets(decision: &serde_json::Value) -> Vec<String> {
    let from = |v: &serde_json::Value| -> Option<String> {
        let s = v
            .as_str()
            .or_else(|| v["ip"].as_str())
            .or_else(|| v["addr"].as_str())?;
        s.parse::<std::net::IpAddr>().ok().map(|a| a.to_string())
    };
    match decision["targets"].as_array() {
        Some(list) if !list.is_empty() => list.iter().filter_map(from).collect(),
        _ => from(&decision["target_ip"]).into_iter().collect(),
    }
}

/// What a host reports about itself on every heartbeat.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Heartbeat {
    pub version: &'static str,
    pub heartbeat_s: i32,
    pub sensors: serde_json::Value,
    pub lost: i64,
    pub pending: i64,
    pub outbox: i64,
    /// Rows the outbox dropped when full, ever: what the fleet view misses of this host.
    pub outbox_dropped: i64,
}

/// The heartbeat: the host's row, inserted or brought up to date.
const HEARTBEAT: &str = "INSERT INTO fleet_hosts
         (host, version, last_seen, heartbeat_s, sensors, lost, pending, outbox, outbox_dropped)
     VALUES ($1, $2, now(), $3, $4, $5, $6, $7, $8)
     ON CONFLICT (host) DO UPDATE SET version = excluded.version, last_seen = now(),
         heartbeat_s = excluded.heartbeat_s, sensors = excluded.sensors,
         lost = excluded.lost, pending = excluded.pending, outbox = excluded.outbox,
         outbox_dropped = excluded.outbox_dropped";

/// The heartbeat's statement, prepared once per connection: a heartbeat is then one round
/// trip to the store instead of two (parse, then bind), which is most of an idle agent's
/// fleet cost.
pub async fn prepare_heartbeat(client: &Client) -> Result<Statement, PgError> {
    Ok(client.prepare(HEARTBEAT).await?)
}

pub async fn heartbeat(
    client: &Client,
    statement: &Statement,
    host: &str,
    hb: &Heartbeat,
) -> Result<(), PgError> {
    client
        .execute(
            statement,
            &[
                &host,
                &hb.version,
                &hb.heartbeat_s,
                &hb.sensors,
                &hb.lost,
                &hb.pending,
                &hb.outbox,
                &hb.outbox_dropped,
            ],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn targets_read_both_shapes() {
        assert_eq!(
            targets(&json!({"target_ip": "198.51.100.2"})),
            ["198.51.100.2"]
        );
        assert_eq!(
            targets(&json!({"target_ip": "198.51.100.2",
                             "targets": ["198.51.100.3", {"ip": "2001:db8:1::2"}, "junk"]})),
            ["198.51.100.3", "2001:db8:1::2"]
        );
        assert!(targets(&json!({"target_ip": null})).is_empty());
    }
}
