//! `sentinel geoip-update`: fetch the latest country database from `geo.update_source`,
//! verify it and swap it in at `geo.database` (`enrich/geo_update.rs`), then have the running
//! agent reload it without a restart. Run weekly by `sentinel-geoip.timer`.

use std::process::ExitCode;

use anyhow::{Context as _, bail};

use super::Cli;
use crate::{
    daemon::{
        ipc::{Client, IpcError, Request},
        reload::Reloaded,
    },
    enrich::geo_update,
};

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let geo = &config.geo;
    if !geo.enabled {
        println!("geo.enabled = false: no country database to update");
        return Ok(ExitCode::SUCCESS);
    }
    if geo.update_source.is_empty() {
        println!("geo.update_source is empty: updates are off");
        return Ok(ExitCode::SUCCESS);
    }
    let updated = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(geo_update::update(&geo.update_source, &geo.database))
        .context("the country database was not updated (the one in place stays)")?;
    println!(
        "installed version {} ({} bytes): {}",
        updated.version, updated.bytes, updated.describe
    );
    match Client::send(&config.agent.socket, &Request::Reload) {
        Ok(mut client) => {
            let value = client
                .next_line()
                .context("the database is in place, but the agent refused to reload it")?
                .ok_or_else(|| IpcError::Protocol("the agent closed the connection".into()))?;
            let reloaded: Reloaded = serde_json::from_value(value)
                .map_err(|e| IpcError::Protocol(format!("reload answer: {e}")))?;
            println!("the running agent reloaded it: {}", reloaded.geo);
            if !reloaded.needs_restart.is_empty() {
                println!(
                    "note: changed config keys wait for a restart: {}",
                    reloaded.needs_restart.join(", ")
                );
            }
        }
        Err(IpcError::Connect { .. }) => {
            println!("the agent is not running: it reads the new database when it starts");
        }
        Err(e) => bail!("the database is in place, but telling the agent failed: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}
