//! Answers and shared defence coming back from the fleet store. An answer written by
//! `sentinel fleet decide` is checked first ([`Checker`]: an operator's signature over this
//! row, for this host, fresh, never seen before) and then goes to the switch exactly like a
//! chat button's (the switch applies it once, or refuses it when the decision already ended);
//! its outcome is written back for the fleet view. Shared blocks and lifts are turned into
//! [`Command`]s for the event loop, which passes every address through this host's own guard;
//! only operator-signed ones, and with `accept_unsigned_shares` the blocks other hosts
//! publish ([`SharedView`]).

use std::{collections::HashMap, net::IpAddr, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{
    fleet::{
        Command,
        postgres::PgError,
        shared_tag,
        sign::{self, Keyring, Order, SignError},
    },
    switch::decision::{Answer, AnswerError, Verdict},
    untrusted,
};

/// Longest wait for the switch to answer one fleet answer.
const SWITCH_REPLY: Duration = Duration::from_secs(5);

/// What an agent checks on every answer before the switch sees it: the operators' keys, how
/// old an answer may be, and the signatures it already acted on (replay).
#[derive(Debug, Default)]
pub struct Checker {
    pub keyring: Keyring,
    pub ttl: Duration,
    /// Signatures of answers settled since start, with their signing time (forgotten once
    /// older than the TTL: the TTL refuses them then).
    seen: HashMap<String, i64>,
}

impl Checker {
    pub fn new(keyring: Keyring, ttl: Duration) -> Self {
        Self {
            keyring,
            ttl,
            seen: HashMap::new(),
        }
    }

    /// Whether an answer may go to the switch: signed by an operator, for this host, fresh,
    /// and not acted on before (here, or — across restarts — by another row already settled).
    async fn check(
        &self,
        client: &tokio_postgres::Client,
        row: &AnswerRow,
        host: &str,
    ) -> Result<(), SignError> {
        let order = Order::Answer {
            host,
            decision_id: &row.decision_id,
            verdict: &row.verdict,
        };
        let (Some(operator), Some(at), Some(sig)) = (&row.operator, row.signed_ms, &row.signature)
        else {
            return Err(SignError::Unsigned);
        };
        self.keyring.verify(&order, at, operator, sig)?;
        sign::fresh(at, sign::now_ms(), self.ttl)?;
        if self.seen.contains_key(sig) {
            return Err(SignError::Replayed);
        }
        let settled = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM fleet_answers
                     WHERE signature = $1 AND id <> $2 AND status <> 'waiting')",
                &[sig, &row.id],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(true); // cannot tell: refuse rather than apply twice
        if settled {
            return Err(SignError::Replayed);
        }
        Ok(())
    }

    fn remember(&mut self, row: &AnswerRow) {
        if let (Some(sig), Some(at)) = (&row.signature, row.signed_ms) {
            let oldest = sign::now_ms() - self.ttl.as_millis() as i64 - 60_000;
            self.seen.retain(|_, t| *t >= oldest);
            self.seen.insert(sig.clone(), at);
        }
    }
}

/// One waiting answer as read from the store.
struct AnswerRow {
    id: i64,
    decision_id: String,
    verdict: String,
    requested_by: String,
    operator: Option<String>,
    signed_ms: Option<i64>,
    signature: Option<String>,
}

/// Hand every waiting answer for `host` that an operator signed to the switch, and record
/// each outcome; refuse (and log) every other.
pub async fn pickup(
    client: &tokio_postgres::Client,
    host: &str,
    answers: &mpsc::Sender<Answer>,
    checker: &mut Checker,
) -> Result<(), PgError> {
    let waiting = client
        .query(
            "SELECT id, decision_id, verdict, requested_by, operator, signed_ms, signature
             FROM fleet_answers WHERE host = $1 AND status = 'waiting' ORDER BY id",
            &[&host],
        )
        .await?;
    for row in waiting {
        let row = AnswerRow {
            id: row.get(0),
            decision_id: row.get(1),
            verdict: row.get(2),
            requested_by: row.get(3),
            operator: row.get(4),
            signed_ms: row.get(5),
            signature: row.get(6),
        };
        let (id, decision_id) = (row.id, untrusted::escape(&row.decision_id).into_owned());
        let by =
            untrusted::escape(&row.requested_by.chars().take(64).collect::<String>()).into_owned();
        if let Err(e) = checker.check(client, &row, host).await {
            warn!(answer = id, id = %decision_id, by = %by, "fleet answer refused: {e}");
            record(client, id, "refused", &e.to_string()).await?;
            continue;
        }
        let verdict = if row.verdict == "block" {
            Verdict::Block
        } else {
            Verdict::Safe
        };
        let operator = row.operator.clone().unwrap_or_default();
        let (reply, rx) = oneshot::channel();
        let answer = Answer {
            id: row.decision_id.clone(),
            verdict,
            // The signer: a checked operator name.
            via: format!("fleet:{operator}"),
            reply,
        };
        if answers.send(answer).await.is_err() {
            return Ok(()); // stopping: the answer stays waiting for the next start
        }
        let outcome = match tokio::time::timeout(SWITCH_REPLY, rx).await {
            Ok(Ok(outcome)) => outcome,
            _ => return Ok(()),
        };
        checker.remember(&row);
        let (status, result) = match outcome {
            Ok(d) => {
                info!(id = %decision_id, by = %by, operator = %operator, state = %d.state, "fleet answer applied");
                let why = d.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                ("applied", format!("{}{why}", d.state))
            }
            Err(AnswerError::Stopping) => return Ok(()),
            Err(e) => {
                warn!(id = %decision_id, by = %by, "fleet answer refused: {e}");
                ("refused", e.to_string())
            }
        };
        record(client, id, status, &result).await?;
    }
    Ok(())
}

/// Write an answer's outcome for the fleet view.
async fn record(
    client: &tokio_postgres::Client,
    id: i64,
    status: &str,
    result: &str,
) -> Result<(), PgError> {
    client
        .execute(
            "UPDATE fleet_answers SET status = $2, result = $3, done_at = now()
             WHERE id = $1 AND status = 'waiting'",
            &[&id, &status, &result],
        )
        .await?;
    Ok(())
}

/// One shared block as last seen: `None` while active, the lift time once lifted, and who
/// signed it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    at: f64,
    lifted: Option<f64>,
    signed: Option<(String, i64, String)>,
}

/// What this agent knows of the shared blocks, to act on changes only.
#[derive(Debug, Default)]
pub struct SharedView {
    seen: HashMap<IpAddr, Seen>,
    keyring: Keyring,
    /// `fleet.accept_unsigned_shares`.
    accept_unsigned: bool,
    /// The signing time of the last signed order acted on per address: an older one (a
    /// signature put back) is not acted on again.
    last_signed: HashMap<IpAddr, i64>,
}

impl SharedView {
    pub fn new(keyring: Keyring, accept_unsigned: bool) -> Self {
        Self {
            keyring,
            accept_unsigned,
            ..Self::default()
        }
    }

    /// Whether an operator signed this row's current order (block or lift), newer than any
    /// this agent acted on for the address.
    fn signed(&self, addr: IpAddr, seen: &Seen) -> Result<(), SignError> {
        let Some((signer, at, sig)) = &seen.signed else {
            return Err(SignError::Unsigned);
        };
        let order = match seen.lifted {
            Some(_) => Order::Lift { addr },
            None => Order::Block { addr },
        };
        self.keyring.verify(&order, *at, signer, sig)?;
        if self.last_signed.get(&addr).is_some_and(|last| *at < *last) {
            return Err(SignError::Replayed);
        }
        Ok(())
    }

    /// Read the shared blocks and send the event loop a command for each change. A lift is
    /// acted on only when an operator signed it, and lifts only what the fleet made (on the
    /// origin host, the block it shared). A block is acted on when an operator signed it, or,
    /// with `accept_unsigned`, when another host published it. The first read after start
    /// re-applies what is active (idempotent).
    pub async fn sync(
        &mut self,
        client: &tokio_postgres::Client,
        host: &str,
        enabled: bool,
        commands: &mpsc::Sender<Command>,
    ) -> Result<(), PgError> {
        if !enabled {
            return Ok(());
        }
        let rows = client
            .query(
                "SELECT host(addr), COALESCE(origin_host, ''), COALESCE(decision_id, ''),
                        extract(epoch FROM at)::float8,
                        extract(epoch FROM lifted_at)::float8,
                        signer, signed_ms, signature, domain
                 FROM fleet_shared_blocks",
                &[],
            )
            .await?;
        for row in rows {
            let Ok(addr) = row.get::<_, String>(0).parse::<IpAddr>() else {
                continue;
            };
            let (origin, decision): (String, String) = (row.get(1), row.get(2));
            let domain = shared_name(row.get(8));
            let (signer, signed_ms, signature): (Option<String>, Option<i64>, Option<String>) =
                (row.get(5), row.get(6), row.get(7));
            let now = Seen {
                at: row.get(3),
                lifted: row.get(4),
                signed: match (signer, signed_ms, signature) {
                    (Some(a), Some(b), Some(c)) => Some((a, b, c)),
                    _ => None,
                },
            };
            if self.seen.get(&addr) == Some(&now) {
                continue;
            }
            let signed = self.signed(addr, &now);
            let shown = untrusted::escape(&origin).into_owned();
            let command = match (now.lifted, &signed) {
                (Some(_), Ok(())) => Some(Command::Lift {
                    addr,
                    only_shared: origin != host,
                }),
                (Some(_), Err(e)) => {
                    warn!(%addr, origin = %shown, "fleet lift ignored: {e}");
                    None
                }
                // The host that confirmed it has blocked it already.
                (None, _) if origin == host => None,
                (None, Ok(())) => {
                    let (by, _, _) = now.signed.as_ref().expect("verified");
                    Some(Command::Block {
                        addr,
                        tag: if origin.is_empty() {
                            shared_tag("operator", by)
                        } else {
                            shared_tag(&origin, &decision)
                        },
                        domain,
                    })
                }
                (None, Err(_)) if self.accept_unsigned && !origin.is_empty() => {
                    Some(Command::Block {
                        addr,
                        tag: shared_tag(&origin, &decision),
                        domain,
                    })
                }
                (None, Err(e)) => {
                    warn!(
                        %addr, origin = %shown,
                        "shared block ignored: {e} (fleet.accept_unsigned_shares is off)"
                    );
                    None
                }
            };
            if let (Ok(()), Some((_, at, _))) = (&signed, &now.signed) {
                self.last_signed.insert(addr, *at);
            }
            self.seen.insert(addr, now);
            if let Some(c) = command
                && commands.send(c).await.is_err()
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Longest shared name taken (a DNS name is at most 253 bytes; each may show as `\xNN`).
const SHARED_NAME_MAX: usize = 1024;

/// A shared block's `domain` as another host wrote it: taken only in the strict form the
/// names module writes (`[a-z0-9-_*.]`, other bytes as `\xNN`), at most [`SHARED_NAME_MAX`]
/// bytes; anything else (markup, controls, a host's own text) is dropped, not shown.
pub fn shared_name(domain: Option<String>) -> Option<String> {
    let name = domain?;
    let strict = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '*' | '.' | '\\')
    };
    (!name.is_empty() && name.len() <= SHARED_NAME_MAX && name.chars().all(strict)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::shared_name;

    #[test]
    fn a_shared_name_is_taken_only_in_the_strict_form() {
        let take = |s: &str| shared_name(Some(s.to_string()));
        assert_eq!(
            take("c2.sentinel.test").as_deref(),
            Some("c2.sentinel.test")
        );
        assert_eq!(take("a\\x0a.b-c_d.*").as_deref(), Some("a\\x0a.b-c_d.*"));
        for bad in [
            "",
            "C2.example",
            "a b",
            "x\ny",
            "\u{1b}[31mred",
            "<b>",
            "a\u{9b}",
        ] {
            assert_eq!(take(bad), None, "{bad:?}");
        }
        assert_eq!(take(&"a".repeat(1025)), None);
        assert_eq!(shared_name(None), None);
    }
}
