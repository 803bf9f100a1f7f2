//! Project tasks that are not plain cargo commands: `cargo xtask build-ebpf`,
//! `cargo xtask bench` / `bench-cost` / `bench-switch` / `bench-flood` / `bench-fleet`, and `cargo xtask install` /
//! `uninstall`, `cargo xtask package`.

mod bench;
/// The test harness's test hosts, GeoIP writer and PostgreSQL server, shared by the benchmarks.
#[path = "../../tests/common"]
#[allow(dead_code, reason = "the benchmarks use part of the test harness")]
mod harness {
    pub mod mmdb;
    pub mod netns;
    pub mod pg;
}
mod bench_fleet;
mod bench_flood;
mod bench_switch;
mod install;
mod package;
mod scene;
mod uninstall;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel programs alone (the agent's build.rs also does this).
    BuildEbpf {
        /// The nightly toolchain to build with.
        #[arg(long, env = "SENTINEL_BPF_TOOLCHAIN", default_value = "nightly")]
        toolchain: String,
    },
    /// Overhead benchmark: exec and connect storms without and with the agent.
    Bench(bench::Args),
    /// CPU time per exec, per connect and at idle (BPF programs + agent), beside bpftrace.
    BenchCost(bench::cost::Args),
    /// Enforcement latency: `block ID` and deadline expiry to the element in nftables.
    BenchSwitch(bench_switch::Args),
    /// The switch under a flood of decisions: thousands of destinations from one process.
    BenchFlood(bench_flood::Args),
    /// Fleet shipping: outbox drain rate to a real PostgreSQL, per batch size.
    BenchFleet(bench_fleet::Args),
    /// Install Sentinel as a hardened systemd service (binary, config, key, GeoIP, unit) and
    /// start it.
    Install(install::InstallArgs),
    /// Stop and remove the service; blocks and data stay unless asked.
    Uninstall(uninstall::UninstallArgs),
    /// Build the Debian package target/debian/sentinel_<version>_<arch>.deb.
    Package(package::PackageArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::BuildEbpf { toolchain } => build_ebpf(&toolchain),
        Task::Bench(args) => bench::run(&args),
        Task::BenchCost(args) => bench::cost::run(&args),
        Task::BenchSwitch(args) => bench_switch::run(&args),
        Task::BenchFlood(args) => bench_flood::run(&args),
        Task::BenchFleet(args) => bench_fleet::run(&args),
        Task::Install(args) => install::install(&args),
        Task::Uninstall(args) => uninstall::uninstall(&args),
        Task::Package(args) => package::package(&args).map(drop),
    }
}

fn build_ebpf(toolchain: &str) -> anyhow::Result<()> {
    let status = Command::new("cargo")
        .arg(format!("+{toolchain}"))
        .args([
            "build",
            "--package",
            "sentinel-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the eBPF programs failed ({status}); run scripts/setup.sh first");
    }
    println!("built target/bpfel-unknown-none/release/sentinel");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// clap's own checks of every task's options (names, `requires` pointing at real ones).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_sensors_only_binary_needs_sensors_only() {
        let without = ["xtask", "bench-cost", "--sensors-only-binary", "/x"];
        assert!(Cli::try_parse_from(without).is_err());
        let with = [
            "xtask",
            "bench-cost",
            "--sensors-only",
            "--sensors-only-binary",
            "/x",
        ];
        assert!(Cli::try_parse_from(with).is_ok());
    }
}
