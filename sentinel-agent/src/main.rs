//! `sentinel`: the agent (`sentinel run`) and its command line, in one binary.

mod btf;
mod cli;
mod config;
mod control;
mod daemon;
mod decision;
mod detect;
mod enforce;
mod event;
mod geo;
mod ipc;
mod ledger;
mod metrics;
mod notify;
mod override_http;
mod pipeline;
mod sensors;
mod service;
mod store;
mod switch;
mod tree;
mod trust;

fn main() -> std::process::ExitCode {
    cli::main()
}
