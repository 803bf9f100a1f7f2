//! `sentinel blocks`: the blocks in force (from the ledger, which the agent re-asserts into
//! nftables at every start), with when each expires.

use std::{io::Write, process::ExitCode, time::SystemTime};

use super::{Cli, JsonArgs};
use crate::{config::EnforceMode, enforce::nftables::Nft, switch::ledger::Ledger};

pub fn run(cli: &Cli, args: &JsonArgs) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let ledger = Ledger::open_existing(&config.agent.db, false)?;
    let now = SystemTime::now();
    let blocks = ledger.blocks(now)?;
    // What the kernel holds now: a recorded block missing there has lapsed behind the
    // agent's back (it is re-asserted at the agent's next start).
    let in_kernel = match config.enforce.mode {
        EnforceMode::Nftables => Nft::new(&config.enforce.table)
            .and_then(|nft| nft.elements())
            .map(|els| els.into_iter().map(|(a, _)| a).collect::<Vec<_>>())
            .ok(),
        EnforceMode::DryRun => None,
    };
    let mut out = std::io::stdout().lock();
    if !args.json {
        if blocks.is_empty() {
            writeln!(out, "no blocks in force")?;
            return Ok(ExitCode::SUCCESS);
        }
        writeln!(
            out,
            "{:<40} {:<22} {:>10}  DECISION",
            "ADDRESS", "EXPIRES", "LEFT"
        )?;
    }
    for b in blocks {
        let expires = humantime::format_rfc3339_seconds(b.expires).to_string();
        let present = in_kernel.as_ref().map(|els| els.contains(&b.addr));
        if args.json {
            let line = serde_json::json!({
                "addr": b.addr,
                "expires": expires,
                "decision_id": b.decision_id,
                "in_kernel": present,
            });
            writeln!(out, "{line}")?;
        } else {
            let left = b.expires.duration_since(now).unwrap_or_default().as_secs();
            let present = match present {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            writeln!(
                out,
                "{:<40} {:<22} {:>9}s  {:<9} {}",
                b.addr.to_string(),
                expires,
                left,
                present,
                // A fleet-shared block names another host's decision: text it wrote.
                crate::untrusted::escape(&b.decision_id)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
