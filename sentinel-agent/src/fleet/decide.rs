//! Answers and shared defence coming back from the fleet store. An answer written by
//! `sentinel fleet decide` goes to the switch exactly like a chat button's (the switch
//! applies it once, or refuses it when the decision already ended) and its outcome is written
//! back for the fleet view. Shared blocks are turned into [`Command`]s for the event loop,
//! which passes every address through this host's own guard.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{
    fleet::{Command, postgres::PgError, shared_tag},
    switch::decision::{Answer, AnswerError, Verdict},
};

/// Longest wait for the switch to answer one fleet answer.
const SWITCH_REPLY: Duration = Duration::from_secs(5);

/// Hand every waiting answer for `host` to the switch and record each outcome.
pub async fn pickup(
    client: &tokio_postgres::Client,
    host: &str,
    answers: &mpsc::Sender<Answer>,
) -> Result<(), PgError> {
    let waiting = client
        .query(
            "SELECT id, decision_id, verdict, requested_by FROM fleet_answers
             WHERE host = $1 AND status = 'waiting' ORDER BY id",
            &[&host],
        )
        .await?;
    for row in waiting {
        let (id, decision_id, verdict, by): (i64, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let verdict = if verdict == "block" {
            Verdict::Block
        } else {
            Verdict::Safe
        };
        let (reply, rx) = oneshot::channel();
        let answer = Answer {
            id: decision_id.clone(),
            verdict,
            // Another host may have written it: one line of visible text, kept short.
            via: format!(
                "fleet:{}",
                crate::untrusted::escape(&by.chars().take(64).collect::<String>())
            ),
            reply,
        };
        if answers.send(answer).await.is_err() {
            return Ok(()); // stopping: the answer stays waiting for the next start
        }
        let outcome = match tokio::time::timeout(SWITCH_REPLY, rx).await {
            Ok(Ok(outcome)) => outcome,
            _ => return Ok(()),
        };
        let (status, result) = match outcome {
            Ok(d) => {
                info!(id = %decision_id, by = %by, state = %d.state, "fleet answer applied");
                let why = d.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                ("applied", format!("{}{why}", d.state))
            }
            Err(AnswerError::Stopping) => return Ok(()),
            Err(e) => {
                warn!(id = %decision_id, by = %by, "fleet answer refused: {e}");
                ("refused", e.to_string())
            }
        };
        client
            .execute(
                "UPDATE fleet_answers SET status = $2, result = $3, done_at = now()
                 WHERE id = $1 AND status = 'waiting'",
                &[&id, &status, &result],
            )
            .await?;
    }
    Ok(())
}

/// One shared block as last seen: `None` while active, the lift time once lifted.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    at: f64,
    lifted: Option<f64>,
}

/// What this agent knows of the shared blocks, to act on changes only.
#[derive(Debug, Default)]
pub struct SharedView {
    seen: HashMap<IpAddr, Seen>,
    synced: bool,
}

impl SharedView {
    /// Read the shared blocks and send the event loop a command for each change. The first
    /// read after start re-applies what is active (idempotent) and lifts only blocks this
    /// host holds for the fleet.
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
                        extract(epoch FROM lifted_at)::float8
                 FROM fleet_shared_blocks",
                &[],
            )
            .await?;
        for row in rows {
            let Ok(addr) = row.get::<_, String>(0).parse::<IpAddr>() else {
                continue;
            };
            let (origin, decision): (String, String) = (row.get(1), row.get(2));
            let now = Seen {
                at: row.get(3),
                lifted: row.get(4),
            };
            if self.seen.get(&addr) == Some(&now) {
                continue;
            }
            let command = match now.lifted {
                Some(_) => Some(Command::Lift {
                    addr,
                    // At start, a lift may be old news: only undo what the fleet did here.
                    only_shared: !self.synced && origin != host,
                }),
                // The host that confirmed it has blocked it already.
                None if origin == host => None,
                None => Some(Command::Block {
                    addr,
                    tag: shared_tag(&origin, &decision),
                }),
            };
            self.seen.insert(addr, now);
            if let Some(c) = command
                && commands.send(c).await.is_err()
            {
                return Ok(());
            }
        }
        self.synced = true;
        Ok(())
    }
}
