//! `sentinel run`: refuse secret-holding files that are not root's alone, set up logging and
//! start the agent's event loop.

use std::process::ExitCode;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use super::Cli;
use crate::{config, daemon};

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let unsafe_files = config::secret_file_problems(&cli.config, &config);
    if !unsafe_files.is_empty() {
        let lines: Vec<String> = unsafe_files.iter().map(|p| format!("  {p}")).collect();
        anyhow::bail!(
            "refusing to start: a file holding secrets is not the admin's alone:\n{}",
            lines.join("\n")
        );
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("sentinel={}", config.agent.log_level)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if !cli.config.exists() {
        tracing::warn!(
            "no config at {}: running on the built-in defaults",
            cli.config.display()
        );
    }
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!("not running as root: loading eBPF programs will probably fail");
    }
    // One thread runs the whole event loop: kernel records flow from the ring buffers to the
    // pipeline without hopping threads (each hop is a wake-up that costs more than the work).
    // Disk writes and other blocking work have threads of their own.
    tokio::runtime::Builder::new_current_thread()
        .thread_name("sentinel")
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon::run(
            config,
            daemon::reload::Source::new(&cli.config, cli.is_default_config()),
        ))?;
    Ok(ExitCode::SUCCESS)
}
