//! How a human's answer reaches the switch from outside the event loop. Every channel that
//! carries answers (the override endpoint's links and Slack clicks, Telegram presses, the CLI
//! socket) encodes a verdict the same way and hands it over with [`submit`], so the channels
//! depend on the switch and never on each other.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::switch::decision::{Answer, AnswerError, Decision, Verdict};

/// How long a channel waits for the switch to take and apply an answer.
const SWITCH_WAIT: Duration = Duration::from_secs(10);

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

/// Split a button value `safe:<id>` / `block:<id>` (Slack values, Telegram callback data).
pub fn parse_button(value: &str) -> Option<(Verdict, &str)> {
    let (action, id) = value.split_once(':')?;
    Some((parse_action(action)?, id)).filter(|(_, id)| valid_id(id))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn button_values_parse_strictly() {
        assert_eq!(parse_button("safe:d1"), Some((Verdict::Safe, "d1")));
        assert_eq!(parse_button("block:ab12"), Some((Verdict::Block, "ab12")));
        for bad in ["", "safe", "safe:", "nuke:d1", "safe:a|b", "block:a b"] {
            assert_eq!(parse_button(bad), None, "{bad}");
        }
    }
}
