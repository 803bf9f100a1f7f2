//! `sentinel check-config`: validate the configuration file and name every problem, including
//! the files it points at (the GeoIP database), as `ExecStartPre` runs it before each start.

use std::process::ExitCode;

use super::Cli;
use crate::{config::Config, enrich::geo::Geo};

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    // Unlike the other commands, a missing file is an error here: it is what is checked.
    let config = match Config::load(&cli.config, false) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sentinel: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if config.geo.enabled
        && let Err(e) = Geo::open(&config.geo.database)
    {
        eprintln!(
            "sentinel: invalid config {}:\n  geo.database: {e}",
            cli.config.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("{}: OK", cli.config.display());
    Ok(ExitCode::SUCCESS)
}
