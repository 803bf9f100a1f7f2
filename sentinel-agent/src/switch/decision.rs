//! A dead man's switch decision as the rest of the agent sees it: what chat alerts show, what
//! a human's answer looks like on its way to the switch, and how the switch replies. The
//! switch itself (`switch.rs`) owns the state machine; chat channels, the override endpoint
//! and the CLI only send [`Answer`]s and receive [`Notice`]s.

use std::{collections::BTreeMap, fmt, net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::event::Mitre;

/// Where a decision stands. It leaves `Pending` exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Waiting for a human until the deadline.
    Pending,
    /// A human marked it safe: no block.
    Safe,
    /// A human confirmed the block.
    Blocked,
    /// Nobody answered before the deadline: blocked automatically.
    AutoBlocked,
    /// Blocked (by a human or the timer) but nftables refused the block: retried until it
    /// lands (then `blocked` / `auto-blocked`); the in-kernel connect guard holds meanwhile.
    BlockFailed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Safe => "safe",
            State::Blocked => "blocked",
            State::AutoBlocked => "auto-blocked",
            State::BlockFailed => "block-failed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A human's answer to a pending decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// MARK AS SAFE.
    Safe,
    /// CONFIRM BLOCK.
    Block,
}

/// Everything a chat alert shows about a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The decision's id: the id of the alert that opened it.
    pub id: String,
    pub anomaly: String,
    pub severity: String,
    pub risk: u8,
    pub mitre: Mitre,
    /// `agent.id`: which host.
    pub host: String,
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Comms of the process's parent, grandparent, … (parent first).
    pub ancestors: Vec<String>,
    /// The first address a block would cut off (never a trusted one): `targets[0]`.
    pub target_ip: Option<IpAddr>,
    /// Every untrusted destination the offending process tree reached while the decision was
    /// pending, in order; all are blocked together.
    #[serde(default)]
    pub targets: Vec<IpAddr>,
    /// Targets the guard refused to block, with the reason (kept on the decision for humans).
    #[serde(default)]
    pub refused: Vec<Refused>,
    /// Destinations beyond `switch.max_targets` that could not join.
    #[serde(default)]
    pub overflow: u64,
    pub country: Option<String>,
    /// The name `target_ip` was resolved from, when the alert knew it (`AlertBody::domain`).
    #[serde(default)]
    pub domain: Option<String>,
    /// The name each target was resolved from, when one was (by the decision's process, else
    /// by the host): what its blocks are recorded under.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<IpAddr, String>,
    pub detail: String,
    pub created: SystemTime,
    /// When the automatic block happens if nobody answers.
    pub deadline: SystemTime,
    pub state: State,
    /// Who ended it (`cli`, `slack:U123`, `teams-link`, `telegram:42`, `timer`), once ended.
    pub decided_by: Option<String>,
    /// Why, when the outcome needs explaining (e.g. a block refused by the admission check).
    pub reason: Option<String>,
    /// Who the decision is charged to ([`super::origin`]): `uid 33`, or root's tree.
    #[serde(default)]
    pub origin: Option<String>,
    /// Why the timer will not block it (a budget or cap reached): it waits for a human.
    #[serde(default)]
    pub waiting: Option<String>,
    /// The container the process runs in (`enrich::container`); absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::enrich::container::Container>,
}

/// A target the enforcement guard would not block, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub ip: IpAddr,
    pub reason: String,
}

impl Decision {
    /// `198.51.100.2`, or `198.51.100.2 and 41 more`; the first as `c2.example
    /// (198.51.100.2)` when it was resolved from a name.
    pub fn targets_summary(&self) -> String {
        let first = match self.targets.first().or(self.target_ip.as_ref()) {
            None => return "-".into(),
            Some(ip) => match self.name_of(*ip) {
                Some(name) => format!("{name} ({ip})"),
                None => ip.to_string(),
            },
        };
        match self.targets.len() {
            0 | 1 => first,
            n => format!("{first} and {} more", n - 1),
        }
    }

    /// The name target `ip` was resolved from, if one was.
    pub fn name_of(&self, ip: IpAddr) -> Option<&str> {
        self.names
            .get(&ip)
            .or(self.domain.as_ref().filter(|_| self.target_ip == Some(ip)))
            .map(String::as_str)
    }

    /// Time left before the automatic block (zero once passed).
    pub fn time_left(&self, now: SystemTime) -> std::time::Duration {
        self.deadline.duration_since(now).unwrap_or_default()
    }
}

/// Why an answer was not applied. Nothing changed in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no decision with id {0}")]
    Unknown(String),
    #[error("decision {id} has already ended: {state}")]
    Ended { id: String, state: State },
    #[error("the agent is stopping")]
    Stopping,
}

/// An answer on its way to the switch, with where to send the outcome.
#[derive(Debug)]
pub struct Answer {
    pub id: String,
    pub verdict: Verdict,
    /// Who answered: `cli`, `slack:<user>`, `teams-link`, `telegram:<user>`.
    pub via: String,
    pub reply: oneshot::Sender<Result<Decision, AnswerError>>,
}

/// What the switch tells the chat channels.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A new pending decision: send the alert with its two buttons.
    Opened(Decision),
    /// The decision ended (its `state` says how): show the outcome.
    Ended(Decision),
    /// Its target set grew by an order of magnitude while pending: one follow-up message.
    Grew(Decision),
}
