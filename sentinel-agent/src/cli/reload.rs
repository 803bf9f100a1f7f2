//! `sentinel reload`: ask the running agent to re-read its configuration file and country
//! database (`daemon/reload.rs` says what can change at run time). Exits non-zero, naming the
//! keys, when a change needs a restart, and when the agent refused the reload.

use std::process::ExitCode;

use anyhow::{Context as _, bail};

use super::Cli;
use crate::daemon::{
    ipc::{Client, IpcError, Request},
    reload::Reloaded,
};

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let mut client = Client::send(&config.agent.socket, &Request::Reload)?;
    let value = client
        .next_line()
        .context("the agent refused the reload; it keeps running on what it had")?
        .ok_or_else(|| IpcError::Protocol("the agent closed the connection".into()))?;
    let reloaded: Reloaded = serde_json::from_value(value)
        .map_err(|e| IpcError::Protocol(format!("reload answer: {e}")))?;
    println!("reloaded; country database {}", reloaded.geo);
    if !reloaded.applied.is_empty() {
        println!("applied: {}", reloaded.applied.join(", "));
    }
    if !reloaded.needs_restart.is_empty() {
        bail!(
            "these changed keys cannot change at run time, restart the agent to apply them \
             (systemctl restart sentinel): {}",
            reloaded.needs_restart.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
