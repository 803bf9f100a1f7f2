//! The command line (SPEC §5): one file per subcommand and this single dispatch. Raw
//! arguments become a validated [`Config`] before any command runs; errors become exit codes.

mod answer;
mod blocks;
mod check_config;
mod docs;
mod fleet;
mod geoip_update;
mod pending;
mod reload;
mod run;
mod status;
mod tail;
mod unblock;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};

#[derive(Debug, Parser)]
#[command(
    name = "sentinel",
    version,
    about = "eBPF active-defence agent: watches exec, connect and CPU from the kernel"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "FILE", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground (systemd runs this).
    Run,
    /// Print recent events from the store; --follow streams live ones from the agent.
    Tail(tail::Args),
    /// Sensors attached, events seen and lost, pending decisions, blocks.
    Status(JsonArgs),
    /// Open decisions of the dead man's switch, with the time left.
    Pending(JsonArgs),
    /// Answer a pending decision: MARK AS SAFE (no block).
    Safe(answer::Args),
    /// Answer a pending decision: CONFIRM BLOCK now.
    Block(answer::Args),
    /// Blocks in force.
    Blocks(JsonArgs),
    /// Lift a block (works while the agent is down too).
    Unblock(unblock::Args),
    /// Validate the configuration and say precisely what is wrong.
    CheckConfig,
    /// Make the running agent re-read its configuration and country database (as SIGHUP and
    /// `systemctl reload sentinel` do); names the changed keys that need a restart.
    Reload,
    /// Fetch the latest country database (`geo.update_source`), verify it, swap it in and
    /// have the agent reload it (sentinel-geoip.timer runs this weekly).
    GeoipUpdate,
    /// The fleet view on PostgreSQL (`[fleet] postgres_url`): hosts, alerts, pending, decide.
    Fleet(fleet::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionArgs),
    /// Write the man pages (roff) into a directory, as the Debian package ships them.
    #[command(hide = true)]
    Manpage(docs::ManpageArgs),
}

/// The `--json` flag of the listing commands (`status`, `pending`, `blocks`).
#[derive(Debug, clap::Args)]
pub struct JsonArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// Load the config. A missing file is only tolerated at the default path (defaults apply).
    fn load_config(&self) -> Result<Config, ConfigError> {
        Config::load(&self.config, self.is_default_config())
    }

    /// Whether `--config` is the default path (where a missing file means the defaults).
    fn is_default_config(&self) -> bool {
        self.config == std::path::Path::new(config::DEFAULT_PATH)
    }
}

/// Parse the command line, run the command, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run => run::run(&cli),
        Command::Tail(args) => tail::run(&cli, args),
        Command::Status(args) => status::run(&cli, args),
        Command::Pending(args) => pending::run(&cli, args),
        Command::Safe(args) => answer::run(&cli, args, crate::switch::decision::Verdict::Safe),
        Command::Block(args) => answer::run(&cli, args, crate::switch::decision::Verdict::Block),
        Command::Blocks(args) => blocks::run(&cli, args),
        Command::Unblock(args) => unblock::run(&cli, args),
        Command::CheckConfig => check_config::run(&cli),
        Command::Reload => reload::run(&cli),
        Command::GeoipUpdate => geoip_update::run(&cli),
        Command::Fleet(args) => fleet::run(&cli, args),
        Command::Completions(args) => docs::completions(args),
        Command::Manpage(args) => docs::manpages(args),
    };
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sentinel: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sentinel tail | head`: the reader went away, which is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
