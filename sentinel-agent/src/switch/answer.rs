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

/// A short token of letters, digits, `-` and `_` (an alert's id, a chat user's id).
pub fn valid_token(token: &str) -> bool {
    (1..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decision ids have exactly the shapes the switch mints: an alert's token, or a later
/// decision of the same alert `TOKEN.N` (N = 2, 3, …). Anything else in a request is
/// malformed.
pub fn valid_id(id: &str) -> bool {
    if id.len() > 64 {
        return false;
    }
    match id.split_once('.') {
        None => valid_token(id),
        Some((base, n)) => valid_token(base) && is_follow_up_number(n),
    }
}

/// The `N` of a follow-up decision id: plain decimal digits, from 2, no leading zero.
fn is_follow_up_number(n: &str) -> bool {
    !n.starts_with('0')
        && n.bytes().all(|b| b.is_ascii_digit())
        && n.parse::<u32>().is_ok_and(|n| n >= 2)
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

    #[test]
    fn follow_up_ids_are_valid_in_exactly_the_minted_shape() {
        for good in ["abc", "abc.2", "0a1b2c3d.17", "a-b_c.2"] {
            assert!(valid_id(good), "{good}");
        }
        let long = format!("{}.2", "a".repeat(63));
        for bad in [
            "", "abc.", ".2", "a..2", "abc.2x", "abc.2.3", "abc.02", "abc.1", "abc.0", "abc.-2",
            "abc.+2", "abc. 2", "a/b.2", &long,
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert_eq!(parse_button("safe:abc.2"), Some((Verdict::Safe, "abc.2")));
        assert_eq!(
            parse_button("block:abc.12"),
            Some((Verdict::Block, "abc.12"))
        );
        for bad in ["safe:abc.", "safe:.2", "safe:a..2", "block:abc.2x"] {
            assert_eq!(parse_button(bad), None, "{bad}");
        }
    }

    #[test]
    fn chat_user_tokens_take_no_dot() {
        assert!(valid_token("U123"));
        assert!(!valid_token("U1.2"));
    }
}
