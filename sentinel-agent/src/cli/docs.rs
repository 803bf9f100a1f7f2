//! `sentinel completions SHELL` and `sentinel manpage`: the shell completions and the man page,
//! generated from the command line's own definition (clap_complete, clap_mangen), so they
//! never drift from it. `cargo xtask package` ships both.

use std::process::ExitCode;

use clap::CommandFactory as _;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn completions(args: &CompletionArgs) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "sentinel", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn manpage() -> anyhow::Result<ExitCode> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}
