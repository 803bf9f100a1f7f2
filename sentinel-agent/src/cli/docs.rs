//! `sentinel completions SHELL` and `sentinel manpage DIR`: the shell completions and the man
//! pages, generated from the command line's own definition (clap_complete, clap_mangen), so
//! they never drift from it. `cargo xtask package` ships both.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManpageArgs {
    /// Where to write sentinel.1 and one sentinel-COMMAND.1 per subcommand.
    dir: PathBuf,
}

pub fn completions(args: &CompletionArgs) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "sentinel", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// sentinel.1, and the sentinel-COMMAND.1 pages it refers to.
pub fn manpages(args: &ManpageArgs) -> anyhow::Result<ExitCode> {
    let command = Cli::command();
    write_page(&args.dir, "sentinel", command.clone())?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap names are &'static str (no "string" feature): a few bytes, once per page.
        let name: &'static str = String::leak(format!("sentinel-{}", sub.get_name()));
        write_page(&args.dir, name, sub.clone().name(name))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_page(dir: &std::path::Path, name: &str, command: clap::Command) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}
