//! `sentinel blocks`: the blocks in force (from the ledger, which the agent re-asserts into
//! nftables at every start), with when each expires.

use std::{io::Write, process::ExitCode, time::SystemTime};

use super::{Cli, JsonArgs};
use crate::{
    config::EnforceMode,
    enforce::nftables::Nft,
    switch::ledger::{Block, Ledger},
};

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
            "{:<40} {:<22} {:>10}  {:<9} {:<32} DECISION",
            "ADDRESS", "EXPIRES", "LEFT", "IN KERNEL", "NAME"
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
                "domain": b.domain,
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
            writeln!(out, "{}", row(&b, &expires, left, present))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One table row. The name is attacker-chosen (a DNS answer) and a fleet-shared block names
/// another host's decision (text it wrote): both escaped as argv is.
fn row(b: &Block, expires: &str, left: u64, present: &str) -> String {
    let name = b
        .domain
        .as_deref()
        .map_or_else(|| "-".into(), crate::untrusted::escape);
    format!(
        "{:<40} {:<22} {:>9}s  {:<9} {:<32} {}",
        b.addr.to_string(),
        expires,
        left,
        present,
        name,
        crate::untrusted::escape(&b.decision_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_the_name_escaped_and_a_dash_without_one() {
        let mut b = Block {
            addr: "198.51.100.2".parse().unwrap(),
            expires: std::time::UNIX_EPOCH,
            decision_id: "a1".into(),
            domain: Some("c2.example\x0a\u{1b}[31m".into()),
        };
        let line = row(&b, "2026-01-01T00:00:00Z", 60, "yes");
        assert!(line.contains("198.51.100.2"), "{line}");
        assert!(!line.contains('\u{1b}'), "{line}");
        assert!(line.contains("c2.example"), "{line}");
        b.domain = None;
        let line = row(&b, "2026-01-01T00:00:00Z", 60, "yes");
        assert!(line.contains(" - "), "{line}");
    }
}
