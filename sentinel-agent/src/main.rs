//! `sentinel`: the agent (`sentinel run`) and its command line, in one binary.

mod btf;
mod cli;
mod config;
mod daemon;
mod event;
mod ipc;
mod sensors;
mod store;
mod tree;

fn main() -> std::process::ExitCode {
    cli::main()
}
