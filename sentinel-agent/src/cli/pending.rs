//! `sentinel pending`: open decisions of the dead man's switch, with the time left before
//! each automatic block. Read from the ledger, so it works whether or not the agent runs.

use std::{io::Write, process::ExitCode, time::SystemTime};

use super::{Cli, JsonArgs};
use crate::switch::ledger::Ledger;

pub fn run(cli: &Cli, args: &JsonArgs) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let ledger = Ledger::open_existing(&config.agent.db, false)?;
    let now = SystemTime::now();
    let mut out = std::io::stdout().lock();
    let pending = ledger.pending()?;
    if !args.json {
        if pending.is_empty() {
            writeln!(out, "no pending decisions")?;
            return Ok(ExitCode::SUCCESS);
        }
        writeln!(
            out,
            "{:<10} {:<9} {:<40} {:<7} {:>9}  PROCESS",
            "ID", "ANOMALY", "TARGET", "COUNTRY", "LEFT"
        )?;
    }
    for open in pending {
        let d = &open.decision;
        let left = d.time_left(now).as_secs();
        let target = d.target_ip.map(|a| a.to_string());
        if args.json {
            let line = serde_json::json!({
                "id": d.id,
                "anomaly": d.anomaly,
                "target_ip": target,
                "targets": d.targets,
                "country": d.country,
                "domain": d.domain,
                "names": d.names,
                "pid": d.pid,
                "comm": d.comm,
                "risk": d.risk,
                "deadline": humantime::format_rfc3339_millis(d.deadline).to_string(),
                "seconds_left": left,
                "origin": d.origin,
                "waiting": d.waiting,
                "container": d.container,
            });
            writeln!(out, "{line}")?;
        } else {
            // A decision that waits for a human has no time left to show.
            let left = if d.waiting.is_some() {
                "waits".to_string()
            } else {
                format!("{left}s")
            };
            writeln!(
                out,
                "{:<10} {:<9} {:<40} {:<7} {:>9}  {} (pid {})",
                d.id,
                d.anomaly,
                if target.is_some() {
                    d.targets_summary()
                } else {
                    "-".into()
                },
                d.country.as_deref().unwrap_or("-"),
                left,
                d.comm,
                d.pid
            )?;
            if let Some(c) = &d.container {
                let c = crate::untrusted::escape(&c.describe()).into_owned();
                writeln!(out, "{:<10} in {c}", "")?;
            }
            if let Some(why) = &d.waiting {
                writeln!(out, "{:<10} {why}", "")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
