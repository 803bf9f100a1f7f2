//! `sentinel unblock ADDR`: lift a block. Through the running agent when there is one (it
//! also clears its in-kernel connect guard); directly in nftables and the ledger when the
//! agent is down, since blocks stay in force while it is stopped.

use std::{net::IpAddr, process::ExitCode};

use anyhow::{Context as _, bail};

use super::Cli;
use crate::{
    daemon::ipc::{Client, IpcError, Request},
    enforce::nftables::Nft,
    switch::ledger::Ledger,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The blocked address (IPv4 or IPv6).
    addr: IpAddr,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let addr = crate::enrich::trust::canonical(args.addr);
    let was_blocked = match Client::send(&config.agent.socket, &Request::Unblock { addr }) {
        Ok(mut client) => {
            let value = client
                .next_line()?
                .ok_or_else(|| IpcError::Protocol("the agent closed the connection".into()))?;
            value["unblocked"].as_bool().unwrap_or(false)
        }
        Err(IpcError::Connect { .. }) => {
            // The agent is down: the table and the ledger are still there.
            let ledger = Ledger::open_existing(&config.agent.db, true)?;
            Nft::new(&config.enforce.table)
                .and_then(|nft| nft.remove(addr))
                .context("removing the element from nftables")?;
            ledger.remove_block(addr)?
        }
        Err(e) => return Err(e.into()),
    };
    if !was_blocked {
        bail!("{addr} is not blocked (see `sentinel blocks`)");
    }
    println!("unblocked {addr}");
    Ok(ExitCode::SUCCESS)
}
