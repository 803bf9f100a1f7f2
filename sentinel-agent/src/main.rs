//! `sentinel`: the agent (`sentinel run`) and its command line, in one binary.

// The `sensors-only` benchmark build discards every record before the pipeline: what only
// the pipeline uses goes unused there.
#![cfg_attr(feature = "sensors-only", allow(dead_code))]

mod alloc;
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
mod resident;
mod secret_file;
mod sensors;
mod store;
mod switch;
mod timer;
mod untrusted;
mod untrusted_file;

fn main() -> std::process::ExitCode {
    cli::main()
}
