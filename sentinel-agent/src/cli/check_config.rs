//! `sentinel check-config`: validate the configuration file and name every problem in one
//! run (`section.key: reason (line L, column C)`), including what `sentinel run` would refuse
//! at start: files holding secrets that are not root's alone (the config itself, the fleet
//! password file), the GeoIP database it names, the override key (root's, private, long
//! enough) and the `nft` program. The unit runs it as `ExecStartPre`, so a config the agent cannot start with stops
//! there with its reasons instead of restarting the service for ever.

use std::process::ExitCode;

use super::Cli;
use crate::{
    config::{self, Config, EnforceMode, Problem},
    enforce::nftables,
    enrich::geo::CountryDb,
    override_http::Secret,
};

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    // Unlike the other commands, a missing file is an error here: it is what is checked.
    let text = match std::fs::read_to_string(&cli.config) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("sentinel: cannot read config {}: {e}", cli.config.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let (config, mut problems) = Config::check(&text);
    if let Some(config) = &config {
        problems.extend(config::secret_file_problems(&cli.config, config));
        problems.extend(start_problems(config));
    }
    if problems.is_empty() {
        println!("{}: OK", cli.config.display());
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("sentinel: invalid config {}:", cli.config.display());
    for problem in &problems {
        eprintln!("  {problem}");
    }
    Ok(ExitCode::FAILURE)
}

/// What `sentinel run` opens at start and would stop on.
fn start_problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    if config.geo.enabled
        && let Err(e) = CountryDb::open(&config.geo.database)
    {
        out.push(Problem::new("geo.database", e.to_string()));
    }
    if !config.override_.public_url.is_empty()
        && let Err(e) = Secret::load(&config.override_.secret_file)
    {
        out.push(Problem::new(
            "override.secret_file",
            format!("{e} (needed because override.public_url is set)"),
        ));
    }
    if config.enforce.mode == EnforceMode::Nftables
        && let Err(e) = nftables::locate()
    {
        out.push(Problem::new("enforce.mode", e.to_string()));
    }
    out
}
