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
mod secret_file;
mod sensors;
mod store;
mod switch;
mod untrusted;
mod untrusted_file;

/// mimalloc: the agent allocates and frees a dozen small strings per event; glibc's malloc
/// spent a fifth of the agent's time on them (fastbin consolidation included).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
