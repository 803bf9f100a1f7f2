//! `sentinel status`: what the running agent reports about itself.

use std::{io::Write, process::ExitCode};

use super::{Cli, JsonArgs};
use crate::daemon::ipc;

pub fn run(cli: &Cli, args: &JsonArgs) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let status = ipc::status(&config.agent.socket)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &status)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "sentinel on {} (pid {}), up {}",
        status.host,
        status.pid,
        humantime::format_duration(std::time::Duration::from_secs(status.uptime_s))
    )?;
    writeln!(
        out,
        "{:<10} {:<9} {:>12} {:>10}",
        "SENSOR", "ATTACHED", "SEEN", "LOST"
    )?;
    for (name, s) in &status.sensors {
        let attached = if s.attached { "yes" } else { "NO" };
        writeln!(
            out,
            "{name:<10} {attached:<9} {:>12} {:>10}",
            s.seen, s.lost
        )?;
    }
    writeln!(
        out,
        "pending decisions: {}   blocks: {}   processes tracked: {}   malformed records: {}",
        status.pending, status.blocks, status.processes, status.malformed
    )?;
    if status.containers > 0 {
        writeln!(out, "containers seen: {}", status.containers)?;
    }
    let s = &status.store;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    writeln!(
        out,
        "store: {:.1} of {:.0} MiB   written: {}   queued: {}   dropped (queue full): {}   evicted (size cap): {}",
        mib(s.bytes),
        mib(s.max_bytes),
        s.written,
        s.queued,
        s.dropped,
        s.evicted
    )?;
    if status.alerts != Default::default() {
        writeln!(
            out,
            "alerts folded into floods: {}   alert map overflows: {}",
            status.alerts.folded, status.alerts.overflow
        )?;
    }
    if let Some(f) = &status.fleet {
        writeln!(
            out,
            "fleet store: {}   outbox: {}{}   last shipped: {}{}",
            if f.connected {
                "connected"
            } else {
                "NOT CONNECTED"
            },
            f.outbox,
            if f.outbox_dropped > 0 {
                format!(" ({} dropped: outbox full)", f.outbox_dropped)
            } else {
                String::new()
            },
            f.last_shipped.as_deref().unwrap_or("never"),
            f.last_error
                .as_deref()
                .map(|e| format!("   last error: {e}"))
                .unwrap_or_default()
        )?;
    }
    let o = &status.override_;
    if o.enabled {
        match (&o.socket, &o.last_error) {
            (Some(socket), _) => writeln!(out, "override endpoint: listening (socket: {socket})")?,
            (None, why) => writeln!(
                out,
                "override endpoint: NOT LISTENING: {}",
                why.as_deref().unwrap_or("starting")
            )?,
        }
    }
    Ok(ExitCode::SUCCESS)
}
