//! `sentinel fleet`: the fleet view on PostgreSQL (`fleet.postgres_url`), from any machine,
//! with or without a local agent: every host's heartbeat, the latest alerts, what is pending
//! now, and answers (`decide`, `unblock`) that the owning agents apply. The operator's set-up
//! (`init`, `add-host`, `add-operator`) runs with an admin DSN.

use std::{io::Write, net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args as ClapArgs, Subcommand, ValueEnum};

use super::{Cli, JsonArgs};
use crate::{
    fleet::{
        admin,
        config::describe,
        postgres,
        sign::OperatorSecret,
        view::{self, DecideOutcome},
    },
    switch::decision::Verdict,
    untrusted::escape,
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
    /// Blocks in force now across hosts, each with the name it was blocked under.
    Blocks(JsonArgs),
    /// Answer HOST's pending decision ID: its agent applies it (or says why not).
    Decide(DecideArgs),
    /// Lift the fleet's block on ADDR on every host (signed with the operator's key).
    Unblock(AddrArgs),
    /// Block ADDR on every host that shares blocks (signed with the operator's key).
    Block(AddrArgs),
    /// Make an operator's signing key: the private key goes to FILE (mode 0600, never
    /// overwritten); the public key, printed, goes in every host's `fleet.operator_keys`.
    Keygen(KeygenArgs),
    /// Create or upgrade the schema and the roles (with an admin DSN in `fleet.postgres_url`).
    Init,
    /// Give host NAME (its `agent.id`) its own login role, or a new password.
    AddHost(AddRoleArgs),
    /// Give operator NAME a login role that reads the whole fleet and answers.
    AddOperator(AddRoleArgs),
}

#[derive(Debug, ClapArgs)]
struct AddRoleArgs {
    name: String,
    /// Write the password to this file (mode 0600) instead of printing it.
    #[arg(long)]
    password_file: Option<std::path::PathBuf>,
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
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, ClapArgs)]
struct AddrArgs {
    addr: IpAddr,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, ClapArgs)]
struct KeyArgs {
    /// The operator's private key (default: `fleet.operator_key_file`).
    #[arg(long = "key")]
    file: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
struct KeygenArgs {
    /// The operator's name, signed with every order (letters, digits, `._@-`).
    name: String,
    /// Where the private key goes (mode 0600; an existing file is never overwritten).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    if let FleetCommand::Keygen(k) = &args.command {
        return keygen(k);
    }
    let config = cli.load_config()?;
    // The key is read before anything is written, so a missing key changes nothing.
    let key = match &args.command {
        FleetCommand::Decide(DecideArgs { key, .. })
        | FleetCommand::Unblock(AddrArgs { key, .. })
        | FleetCommand::Block(AddrArgs { key, .. }) => {
            Some(operator_key(key, &config.fleet.operator_key_file)?)
        }
        _ => None,
    };
    let pg = config.fleet.pg_config()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let (mut client, _notes) = postgres::connect(&pg, &config.fleet.ca_file)
                .await
                .with_context(|| format!("fleet store {}", describe(&pg)))?;
            dispatch(&mut client, &args.command, key.as_ref())
                .await
                .map_err(|e| match e.downcast_ref::<view::ViewError>() {
                    Some(view::ViewError::Pg(pg)) if pg.is_missing_schema() => e.context(
                        "the fleet store has no Sentinel tables yet: run `sentinel fleet init` \
                         with an admin DSN",
                    ),
                    _ => e,
                })
        })
}

/// The operator's key: `--key`, else `fleet.operator_key_file`.
fn operator_key(args: &KeyArgs, configured: &std::path::Path) -> anyhow::Result<OperatorSecret> {
    let path = match &args.file {
        Some(p) => p.as_path(),
        None if !configured.as_os_str().is_empty() => configured,
        None => anyhow::bail!(
            "an operator key is needed to sign this: --key FILE or fleet.operator_key_file \
             (made by `sentinel fleet keygen NAME --out FILE`)"
        ),
    };
    OperatorSecret::read(path).map_err(anyhow::Error::msg)
}

fn keygen(a: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = OperatorSecret::generate(&a.name).map_err(anyhow::Error::msg)?;
    key.write(&a.out).map_err(anyhow::Error::msg)?;
    let public = key.public();
    let pub_file = a.out.with_extension("pub");
    let note = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pub_file)
        .and_then(|mut f| writeln!(f, "{public}"))
    {
        Ok(()) => format!(" (also in {})", pub_file.display()),
        Err(_) => String::new(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "private key in {} (mode 0600: keep it on the operator's machine only)",
        a.out.display()
    )?;
    writeln!(
        out,
        "public key{note}, for every host's fleet.operator_keys:\n{public}"
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn dispatch(
    client: &mut tokio_postgres::Client,
    command: &FleetCommand,
    key: Option<&OperatorSecret>,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let key = || key.context("no operator key");
    match command {
        FleetCommand::Keygen(_) => unreachable!("keygen needs no store"),
        FleetCommand::Init => {
            let (from, to) = admin::init(client).await?;
            if from == to {
                writeln!(
                    out,
                    "the fleet store is at schema version {to}; roles checked"
                )?;
            } else {
                writeln!(
                    out,
                    "the fleet store went from schema version {from} to {to}"
                )?;
            }
        }
        FleetCommand::AddHost(a) => add_role(client, a, admin::Kind::Host, &mut out).await?,
        FleetCommand::AddOperator(a) => {
            add_role(client, a, admin::Kind::Operator, &mut out).await?
        }
        FleetCommand::Hosts(a) => {
            let hosts = view::hosts(client).await?;
            if !a.json {
                writeln!(
                    out,
                    "{:<24} {:<9} {:<26} {:<7} {:<7} MISSED",
                    "HOST", "VERSION", "LAST SEEN", "STATE", "PENDING"
                )?;
            }
            for h in hosts {
                if a.json {
                    writeln!(out, "{}", serde_json::to_string(&h)?)?;
                } else {
                    writeln!(out, "{}", host_line(&h))?;
                }
            }
        }
        FleetCommand::Alerts(a) => {
            for alert in view::alerts(client, a.lines).await? {
                if a.json {
                    writeln!(out, "{alert}")?;
                } else {
                    writeln!(out, "{}", alert_line(&alert))?;
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
                    writeln!(out, "{}", pending_line(&p))?;
                }
            }
        }
        FleetCommand::Blocks(a) => {
            let blocks = view::blocks(client).await?;
            if !a.json {
                writeln!(
                    out,
                    "{:<24} {:<40} {:<32} {:<24} EXPIRES",
                    "HOST", "ADDRESS", "NAME", "DECISION"
                )?;
            }
            for b in blocks {
                if a.json {
                    writeln!(out, "{}", serde_json::to_string(&b)?)?;
                } else {
                    writeln!(out, "{}", block_line(&b))?;
                }
            }
        }
        FleetCommand::Decide(a) => return decide(client, a, key()?, &mut out).await,
        FleetCommand::Block(a) => {
            view::block(client, a.addr, &view::requester(), key()?).await?;
            writeln!(
                out,
                "{} blocked on every host of the fleet that shares blocks (signed by {})",
                a.addr,
                key()?.name
            )?;
        }
        FleetCommand::Unblock(a) => {
            let held = view::unblock(client, a.addr, &view::requester(), key()?).await?;
            writeln!(
                out,
                "{} lifted on every host of the fleet (held by: {})",
                a.addr,
                if held.is_empty() {
                    "none reported".into()
                } else {
                    escape(&held.join(", ")).into_owned()
                }
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn add_role(
    client: &tokio_postgres::Client,
    a: &AddRoleArgs,
    kind: admin::Kind,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let password = admin::add_role(client, &a.name, kind).await?;
    let name = escape(&a.name);
    match &a.password_file {
        Some(path) => {
            admin::write_password(path, &password)?;
            writeln!(
                out,
                "role {name} ready; its password is in {} (mode 0600): copy it to the host's \
                 fleet.postgres_password_file",
                path.display()
            )?;
        }
        None => writeln!(
            out,
            "role {name} ready; its password (shown once): {password}"
        )?,
    }
    Ok(())
}

async fn decide(
    client: &tokio_postgres::Client,
    a: &DecideArgs,
    key: &OperatorSecret,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let (host, id) = view::parse_ref(&a.target)?;
    let verdict = match a.answer {
        Answer::Safe => Verdict::Safe,
        Answer::Block => Verdict::Block,
    };
    match view::decide(client, host, id, verdict, &view::requester(), key, a.wait).await? {
        DecideOutcome::Applied(state) => {
            writeln!(out, "{}", decided_line(host, id, &state))?;
            Ok(ExitCode::SUCCESS)
        }
        DecideOutcome::Refused(why) => {
            anyhow::bail!("{host}/{id}: refused by the agent: {}", escape(&why))
        }
        DecideOutcome::Waiting { last_seen } => anyhow::bail!(
            "{host}/{id}: the agent has not picked the answer up within {} (last heartbeat {}); \
             it stays queued and is applied when the agent reads it, unless the decision has \
             ended by then",
            humantime::format_duration(a.wait),
            escape(last_seen.as_deref().unwrap_or("never"))
        ),
    }
}

// Every string below was written by a host, and a compromised host writes what it likes:
// terminal escapes and newlines reach the operator's terminal only as visible escapes.

/// One `fleet hosts` line.
fn host_line(h: &view::HostRow) -> String {
    let state = if h.silent { "SILENT" } else { "ok" };
    // What the host's outbox dropped while the store was out of reach: this view lacks it.
    let missed = match h.outbox_dropped {
        0 => "-".to_string(),
        n => format!("{n} rows dropped"),
    };
    format!(
        "{:<24} {:<9} {:<26} {state:<7} {:<7} {missed}",
        escape(&h.host),
        escape(&h.version),
        escape(&h.last_seen),
        h.pending
    )
}

/// One `fleet alerts` line, from the alert's JSON as the host shipped it.
fn alert_line(alert: &serde_json::Value) -> String {
    let s = |k: &str| escape(alert[k].as_str().unwrap_or("-")).into_owned();
    let risk = alert["risk"]
        .as_u64()
        .map_or_else(|| "-".into(), |r| r.to_string());
    // The container (its name, else its short id) the alert's process ran in, if any.
    let container = alert["container"]
        .as_object()
        .and_then(|c| c["name"].as_str().or_else(|| c["id"].as_str()?.get(..12)))
        .map(|c| format!("  [container {}]", escape(c)))
        .unwrap_or_default();
    format!(
        "{} {:<16} {:<10} {:<9} {:<8} risk {:>3}  {:<13} {}{container}",
        s("ts"),
        s("host"),
        s("id"),
        s("anomaly"),
        s("severity"),
        risk,
        s("state"),
        s("detail")
    )
}

/// What `fleet decide` prints when the agent applied the answer: the outcome is the host's
/// words.
fn decided_line(host: &str, id: &str, state: &str) -> String {
    format!("{}/{}: {}", escape(host), escape(id), escape(state))
}

/// One `fleet pending` line: the target as `name (address)` when the host knew the name.
fn pending_line(p: &view::PendingRow) -> String {
    let address = p.target_ip.as_deref().unwrap_or("-");
    let target = match &p.domain {
        Some(name) => format!("{name} ({address})"),
        None => address.to_string(),
    };
    format!(
        "{:<24} {:<10} {:<9} {:<40} {:>5}s",
        escape(&p.host),
        escape(&p.id),
        escape(&p.anomaly),
        escape(&target),
        p.seconds_left
    )
}

/// One `fleet blocks` line.
fn block_line(b: &view::BlockRow) -> String {
    format!(
        "{:<24} {:<40} {:<32} {:<24} {}",
        escape(&b.host),
        escape(&b.addr),
        escape(b.domain.as_deref().unwrap_or("-")),
        escape(&b.decision_id),
        escape(&b.expires)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether `line` is one line of visible text (no control character, no bidi override).
    fn inert(line: &str) -> bool {
        line.chars().all(|c| !c.is_control())
            && !line.contains(['\u{202E}', '\u{2028}', '\u{2066}'])
    }

    proptest! {
        #[test]
        fn hosts_lines_are_inert(host in any::<String>(), version in any::<String>(), seen in any::<String>()) {
            let h = view::HostRow {
                host, version, last_seen: seen, silent: false, pending: 1, outbox_dropped: 2,
            };
            prop_assert!(inert(&host_line(&h)));
        }

        #[test]
        fn alert_lines_are_inert(fields in proptest::collection::vec(any::<String>(), 8)) {
            let keys = ["ts", "host", "id", "anomaly", "severity", "state", "detail", "risk"];
            let alert: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .zip(fields)
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
                .collect();
            prop_assert!(inert(&alert_line(&serde_json::Value::Object(alert))));
        }

        #[test]
        fn alert_lines_with_a_container_are_inert(name in any::<String>()) {
            let alert = serde_json::json!({
                "ts": "t", "host": "h", "id": "i", "anomaly": "lineage", "severity": "critical",
                "state": "pending", "detail": "d", "risk": 90,
                "container": {"id": "ab".repeat(32), "runtime": "podman", "name": name, "image": null},
            });
            let line = alert_line(&alert);
            prop_assert!(inert(&line));
            prop_assert!(line.contains("[container "));
        }

        #[test]
        fn pending_lines_are_inert(host in any::<String>(), id in any::<String>(), anomaly in any::<String>(), target in any::<String>()) {
            let p = view::PendingRow {
                host, id, anomaly, target_ip: Some(target), domain: None, deadline: String::new(), seconds_left: 3,
            };
            prop_assert!(inert(&pending_line(&p)));
        }

        #[test]
        fn pending_lines_with_a_name_are_inert(name in any::<String>()) {
            let p = view::PendingRow {
                host: "h".into(), id: "i".into(), anomaly: "geo".into(),
                target_ip: Some("198.51.100.2".into()), domain: Some(name.clone()),
                deadline: String::new(), seconds_left: 3,
            };
            let line = pending_line(&p);
            prop_assert!(inert(&line));
            let shown = format!("{} (198.51.100.2)", escape(&name));
            prop_assert!(line.contains(&shown));
        }

        #[test]
        fn block_lines_are_inert(fields in proptest::collection::vec(any::<String>(), 5)) {
            let b = view::BlockRow {
                host: fields[0].clone(), addr: fields[1].clone(), domain: Some(fields[2].clone()),
                decision_id: fields[3].clone(), expires: fields[4].clone(),
            };
            prop_assert!(inert(&block_line(&b)));
        }
    }

    proptest! {
        #[test]
        fn decided_lines_are_inert(host in any::<String>(), id in any::<String>(), state in any::<String>()) {
            prop_assert!(inert(&decided_line(&host, &id, &state)));
        }
    }

    #[test]
    fn an_outcome_from_a_host_is_shown_not_obeyed() {
        let line = decided_line("web1", "a1", "safe\x1b[2J\nweb2/b1: blocked");
        assert_eq!(line, r"web1/a1: safe\x1b[2J\nweb2/b1: blocked");
    }

    #[test]
    fn an_escape_from_a_host_is_shown_not_obeyed() {
        let h = view::HostRow {
            host: "web1\x1b]0;owned\x07\nfake line".into(),
            version: "1".into(),
            last_seen: "now".into(),
            silent: false,
            pending: 0,
            outbox_dropped: 0,
        };
        let line = host_line(&h);
        assert!(line.contains(r"web1\x1b]0;owned\x07\nfake line"), "{line}");
    }
}
