//! `sentinel check-config`: validate the configuration file and name every problem.

use std::process::ExitCode;

use super::Cli;
use crate::config::Config;

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    // Unlike the other commands, a missing file is an error here: it is what is checked.
    match Config::load(&cli.config, false) {
        Ok(_) => {
            println!("{}: OK", cli.config.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("sentinel: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
