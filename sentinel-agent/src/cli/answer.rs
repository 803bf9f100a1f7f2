//! `sentinel safe ID` and `sentinel block ID`: answer a pending decision, with the same
//! effect as the chat buttons. The running agent applies it; an unknown or ended decision is
//! a clear error that changes nothing.

use std::process::ExitCode;

use super::Cli;
use crate::{
    daemon::ipc::{Client, IpcError, Request},
    switch::decision::{Decision, Verdict},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The decision's id (see `sentinel pending`).
    id: String,
}

pub fn run(cli: &Cli, args: &Args, verdict: Verdict) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let request = Request::Answer {
        id: args.id.clone(),
        verdict,
    };
    let mut client = Client::send(&config.agent.socket, &request)?;
    let value = client
        .next_line()?
        .ok_or_else(|| IpcError::Protocol("the agent closed the connection".into()))?;
    let decision: Decision =
        serde_json::from_value(value).map_err(|e| IpcError::Protocol(e.to_string()))?;
    let target = decision.target_ip.map_or("-".into(), |a| a.to_string());
    print!("decision {}: {} ({target})", decision.id, decision.state);
    match &decision.reason {
        Some(reason) => println!(": {reason}"),
        None => println!(),
    }
    Ok(ExitCode::SUCCESS)
}
