//! `sentinel fleet`: the fleet view on PostgreSQL (`fleet.postgres_url`), from any machine,
//! with or without a local agent: every host's heartbeat, the latest alerts, what is pending
//! now, and answers (`decide`, `unblock`) that the owning agents apply.

use std::{io::Write, net::IpAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args as ClapArgs, Subcommand, ValueEnum};

use super::{Cli, JsonArgs};
use crate::{
    fleet::{
        config::describe,
        postgres,
        view::{self, DecideOutcome},
    },
    switch::decision::Verdict,
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Every host with its last heartbeat; silent after three missed heartbeats.
    Hosts(JsonArgs),
    /// The latest alerts across hosts.
    Alerts(AlertsArgs),
    /// Decisions pending now across hosts, soonest deadline first.
    Pending(JsonArgs),
    /// Answer HOST's pending decision ID: its agent applies it (or says why not).
    Decide(DecideArgs),
    /// Lift a block on every host of the fleet.
    Unblock(UnblockArgs),
}

#[derive(Debug, ClapArgs)]
struct AlertsArgs {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// How many (the latest).
    #[arg(short = 'n', long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    lines: i64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Answer {
    Safe,
    Block,
}

#[derive(Debug, ClapArgs)]
struct DecideArgs {
    /// HOST/ID, as `sentinel fleet pending` lists them.
    target: String,
    answer: Answer,
    /// How long to wait for the agent's outcome.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

#[derive(Debug, ClapArgs)]
struct UnblockArgs {
    addr: IpAddr,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let pg = config.fleet.pg_config()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let (client, _notes) = postgres::connect(&pg)
                .await
                .with_context(|| format!("fleet store {}", describe(&pg)))?;
            dispatch(&client, &args.command).await.map_err(|e| {
                match e.downcast_ref::<view::ViewError>() {
                    Some(view::ViewError::Pg(pg)) if pg.is_missing_schema() => e.context(
                        "the fleet store has no Sentinel tables yet: no agent has connected to it",
                    ),
                    _ => e,
                }
            })
        })
}

async fn dispatch(
    client: &tokio_postgres::Client,
    command: &FleetCommand,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        FleetCommand::Hosts(a) => {
            let hosts = view::hosts(client).await?;
            if !a.json {
                writeln!(
                    out,
                    "{:<24} {:<9} {:<26} {:<7} PENDING",
                    "HOST", "VERSION", "LAST SEEN", "STATE"
                )?;
            }
            for h in hosts {
                if a.json {
                    writeln!(out, "{}", serde_json::to_string(&h)?)?;
                } else {
                    let state = if h.silent { "SILENT" } else { "ok" };
                    writeln!(
                        out,
                        "{:<24} {:<9} {:<26} {state:<7} {}",
                        h.host, h.version, h.last_seen, h.pending
                    )?;
                }
            }
        }
        FleetCommand::Alerts(a) => {
            for alert in view::alerts(client, a.lines).await? {
                if a.json {
                    writeln!(out, "{alert}")?;
                } else {
                    let s = |k: &str| alert[k].as_str().unwrap_or("-").to_string();
                    writeln!(
                        out,
                        "{} {:<16} {:<10} {:<9} {:<8} risk {:>3}  {:<13} {}",
                        s("ts"),
                        s("host"),
                        s("id"),
                        s("anomaly"),
                        s("severity"),
                        alert["risk"],
                        s("state"),
                        s("detail")
                    )?;
                }
            }
        }
        FleetCommand::Pending(a) => {
            let pending = view::pending(client).await?;
            if !a.json {
                writeln!(
                    out,
                    "{:<24} {:<10} {:<9} {:<40} {:>6}",
                    "HOST", "ID", "ANOMALY", "TARGET", "LEFT"
                )?;
            }
            for p in pending {
                if a.json {
                    writeln!(out, "{}", serde_json::to_string(&p)?)?;
                } else {
                    writeln!(
                        out,
                        "{:<24} {:<10} {:<9} {:<40} {:>5}s",
                        p.host,
                        p.id,
                        p.anomaly,
                        p.target_ip.as_deref().unwrap_or("-"),
                        p.seconds_left
                    )?;
                }
            }
        }
        FleetCommand::Decide(a) => return decide(client, a, &mut out).await,
        FleetCommand::Unblock(a) => {
            let held = view::unblock(client, a.addr, &view::requester()).await?;
            writeln!(
                out,
                "{} lifted on every host of the fleet (held by: {})",
                a.addr,
                if held.is_empty() {
                    "none reported".into()
                } else {
                    held.join(", ")
                }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    client: &tokio_postgres::Client,
    a: &DecideArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let (host, id) = view::parse_ref(&a.target)?;
    let verdict = match a.answer {
        Answer::Safe => Verdict::Safe,
        Answer::Block => Verdict::Block,
    };
    match view::decide(client, host, id, verdict, &view::requester(), a.wait).await? {
        DecideOutcome::Applied(state) => {
            writeln!(out, "{host}/{id}: {state}")?;
            Ok(ExitCode::SUCCESS)
        }
        DecideOutcome::Refused(why) => {
            anyhow::bail!("{host}/{id}: refused by the agent: {why}")
        }
        DecideOutcome::Waiting { last_seen } => anyhow::bail!(
            "{host}/{id}: the agent has not picked the answer up within {} (last heartbeat {}); \
             it stays queued and is applied when the agent reads it, unless the decision has \
             ended by then",
            humantime::format_duration(a.wait),
            last_seen.as_deref().unwrap_or("never")
        ),
    }
}
