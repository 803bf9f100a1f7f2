//! `sentinel`: the agent (`sentinel run`) and its command line, in one binary.

mod cli;
mod config;
mod daemon;
mod detect;
mod enforce;
mod enrich;
mod event;
mod fleet;
mod notify;
mod override_http;
mod sensors;
mod store;
mod switch;
mod untrusted;

fn main() -> std::process::ExitCode {
    cli::main()
}
