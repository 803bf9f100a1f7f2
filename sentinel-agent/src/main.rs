//! `sentinel`: the agent (`sentinel run`) and its command line, in one binary.

mod btf;
mod cli;
mod config;
mod daemon;
mod decision;
mod detect;
mod event;
mod geo;
mod ipc;
mod sensors;
mod store;
mod tree;
mod trust;

fn main() -> std::process::ExitCode {
    cli::main()
}
