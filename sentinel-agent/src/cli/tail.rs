//! `sentinel tail`: recent events from the store, or with `--follow` a live stream from the
//! agent (preceded by its most recent events), as aligned columns or JSON lines.

use std::{
    io::{Write, stdout},
    process::ExitCode,
};

use anyhow::Context as _;

use super::Cli;
use crate::{
    daemon::ipc::{Client, Request, StreamNotice},
    event::{Kind, Record},
    store::Store,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Keep streaming live events from the running agent.
    #[arg(long, short)]
    follow: bool,
    /// Only these kinds (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "KIND,...")]
    kind: Vec<Kind>,
    /// How many recent events to print first.
    #[arg(long, short = 'n', default_value_t = 20, value_name = "N")]
    lines: usize,
}

fn print(out: &mut impl Write, record: &Record, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, record)?;
        writeln!(out)
    } else {
        writeln!(out, "{record}")
    }
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let mut out = stdout().lock();
    if !args.follow {
        let store = Store::open_read_only(&config.agent.db)?;
        for record in store.recent(&args.kind, args.lines)? {
            print(&mut out, &record, args.json)?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let request = Request::Follow {
        kinds: args.kind.clone(),
        backlog: args.lines,
    };
    let mut client = Client::send(&config.agent.socket, &request)?;
    while let Some(value) = client.next_line()? {
        match serde_json::from_value::<Record>(value.clone()) {
            Ok(record) => print(&mut out, &record, args.json)?,
            Err(_) => match serde_json::from_value::<StreamNotice>(value) {
                Ok(StreamNotice::Lagged(n)) => {
                    eprintln!("sentinel: fell behind the agent: {n} events skipped")
                }
                Ok(StreamNotice::Error(e)) => anyhow::bail!("the agent said: {e}"),
                Err(e) => return Err(e).context("unreadable line from the agent"),
            },
        }
        out.flush()?;
    }
    eprintln!("sentinel: the agent closed the stream (stopped?)");
    Ok(ExitCode::FAILURE)
}
