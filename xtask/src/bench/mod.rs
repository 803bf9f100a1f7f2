//! `cargo xtask bench`: how much the agent slows down the work it watches. An exec storm
//! (sequential fork+exec of /bin/true) and a loopback connect storm are timed without and
//! with the agent running, in alternating order within one run so that drift of the machine
//! cancels out, and the median slowdown ratios are printed next to their targets. The
//! agent's status counters prove it really observed every storm; its idle RSS and CPU are
//! measured first and reported last. Rounds during which other processes used the CPU are
//! flagged, since on a small machine they swamp the effect measured. This is a measurement,
//! not a test: a missed target is printed, not an error.
//!
//! Here: the options, the rounds and the idle measurement. Beside it: `storm.rs` (the timed
//! workloads), `agent.rs` (the agent under measurement), `config.rs` (its config),
//! `host.rs` (what is read from `/proc`), `crowd.rs` (sleeping processes that fill the host
//! up for bench-cost), `report.rs` (the printout); `cost.rs` and `cost/` are bench-cost.

mod agent;
mod config;
pub mod cost;
mod crowd;
mod dns_storm;
mod host;
mod report;
mod storm;

use agent::*;
use config::*;
use dns_storm::*;
use host::*;
use report::*;
use storm::*;

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};

/// Target slowdown of the exec storm with the agent running.
const EXEC_TARGET: f64 = 1.05;
/// Target slowdown of the connect storm with the agent running.
const CONNECT_TARGET: f64 = 1.15;
/// How long the agent may take to answer `status` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the agent may take to drain its ring buffers after a storm.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the agent's status is read while its sensors catch up with a storm.
const SEEN_POLL: Duration = Duration::from_millis(100);
/// How often while its store writes the last of it (it commits every quarter of a second).
const STORE_POLL: Duration = Duration::from_millis(250);
/// How long the agent may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Other processes' CPU use (in cores) above which a round is flagged as disturbed.
const DISTURBED_CORES: f64 = 0.1;
/// How often a connect storm spoiled by SYN retransmits is repeated.
const MAX_CONNECT_REPEATS: u32 = 3;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each times both storms without and with the agent, in alternating order.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Sequential fork+exec of /bin/true per exec storm.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    execs: u64,
    /// Sequential loopback TCP connects per connect storm.
    #[arg(long, default_value_t = 12000, value_parser = clap::value_parser!(u64).range(1..))]
    connects: u64,
    /// Seconds over which the idle agent's CPU use is measured.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    idle_secs: u64,
    /// Skip `cargo build --release -p sentinel-agent`; use the binary already built.
    #[arg(long)]
    no_build: bool,
    /// The agent binary to measure (default: the workspace's target/release/sentinel).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

/// Run the benchmark and print its report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        effective_uid()? == 0,
        "the agent loads eBPF programs and must run as root: run the bench as root"
    );
    let binary = agent_binary(args.no_build, args.binary.as_deref())?;
    let others = other_agents(&binary);
    if !others.is_empty() {
        eprintln!(
            "warning: other sentinel processes are running (pids {others:?}); they add their \
             own overhead to the \"without\" timings"
        );
    }

    if let Some(ports) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| port_range_size(&text))
        && args.connects > ports / 2
    {
        eprintln!(
            "warning: {} connects per storm are more than half the {ports} local ports (the \
             half connect(2) tries first): the storm will also time the kernel's search for \
             a free port",
            args.connects
        );
    }

    let (tmp, config, ()) = work_dir(&binary, |_| Ok((Extras::default(), ())))?;

    let bench = Bench {
        binary: &binary,
        config: &config,
        dir: tmp.path(),
        execs: args.execs,
        connects: args.connects,
        hz: clock_ticks()?,
    };
    // Idle first: every storm leaves thousands of sockets in TIME_WAIT for a minute, and
    // an agent that scans /proc/net/tcp would then not be idle.
    let idle = bench.idle(args.idle_secs)?;
    let mut rounds = Vec::new();
    for r in 1..=args.rounds {
        rounds.push(bench.round(r, args.rounds)?);
    }
    print_report(args, &rounds, &idle);
    Ok(())
}

/// What one round measured.
struct Round {
    /// Whether the "with agent" half ran first.
    with_first: bool,
    without: Timed,
    with: Timed,
    /// What the agent reported for the "with" half.
    observed: Observed,
}

/// The two storms' durations in one half of a round.
struct Timed {
    exec: Duration,
    connect: Duration,
    /// Connect storms thrown away because a SYN had to be retransmitted.
    connect_repeats: u32,
    /// CPU the rest of the machine (or the hypervisor) took meanwhile, in cores.
    others: f64,
}

/// The agent's own account of one "with" half.
struct Observed {
    exec_seen: u64,
    exec_lost: u64,
    connect_seen: u64,
    connect_lost: u64,
    /// The agent's CPU time (user + system) while the two storms ran.
    agent_cpu: Duration,
}

/// The idle agent's footprint.
struct Idle {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_percent: f64,
    secs: f64,
    /// TCP sockets of all states (TIME_WAIT included) on the machine meanwhile.
    tcp_sockets: Option<u64>,
}

/// Everything a round needs.
struct Bench<'a> {
    binary: &'a Path,
    config: &'a Path,
    dir: &'a Path,
    execs: u64,
    connects: u64,
    /// Clock ticks per second of /proc CPU times.
    hz: u64,
}

impl Bench<'_> {
    /// One round: both storms without and with the agent, "with" first on even rounds.
    fn round(&self, r: u32, total: u32) -> anyhow::Result<Round> {
        let with_first = r.is_multiple_of(2);
        let mut without = None;
        let mut with = None;
        for half_is_with in [with_first, !with_first] {
            if half_is_with {
                with = Some(self.with_agent(r, total)?);
            } else {
                without =
                    Some(self.storms(&format!("round {r}/{total}"), "without agent", None)?);
            }
        }
        let (with, observed) = with.expect("ran the with half");
        Ok(Round {
            with_first,
            without: without.expect("ran the without half"),
            with,
            observed,
        })
    }

    /// Time the exec storm, then the connect storm. A connect storm during which a SYN was
    /// retransmitted is repeated: the retransmit costs a whole second, which measures a
    /// hiccup of the bench (see [`Listener`]), not the cost of a connect.
    ///
    /// Also measures how much CPU the rest of the machine used meanwhile (everything but
    /// this process, its children and the agent; hypervisor steal counts too), to flag rounds
    /// that others disturbed.
    fn storms(&self, round: &str, label: &str, agent: Option<u32>) -> anyhow::Result<Timed> {
        let before = CpuSnapshot::take(agent);
        let exec = exec_storm(self.execs)?;
        eprintln!("{round}: exec {label}: {}", secs(exec));
        let mut connect_repeats = 0;
        let connect = loop {
            let retransmits = syn_retransmits();
            let connect = connect_storm(self.connects)?;
            let retransmitted = syn_retransmits().saturating_sub(retransmits);
            if retransmitted == 0 || connect_repeats == MAX_CONNECT_REPEATS {
                break connect;
            }
            connect_repeats += 1;
            eprintln!(
                "{round}: connect {label}: {} with {retransmitted} SYN retransmit(s) (1 s \
                 each): repeating it",
                secs(connect)
            );
        };
        eprintln!("{round}: connect {label}: {}", secs(connect));
        let others = match (before, CpuSnapshot::take(agent)) {
            (Some(before), Some(after)) => others_cores(&before, &after, self.hz),
            _ => 0.0,
        };
        Ok(Timed {
            exec,
            connect,
            connect_repeats,
            others,
        })
    }

    /// The "with" half: start the agent, time the storms, check it saw them, stop it.
    fn with_agent(&self, r: u32, total: u32) -> anyhow::Result<(Timed, Observed)> {
        let round = format!("round {r}/{total}");
        let mut agent = Agent::start(self, &format!("round{r}"))?;
        let before = agent.wait_ready()?;
        thread::sleep(Duration::from_secs(1));
        let cpu_before = agent.cpu_ticks()?;
        let timed = self.storms(&round, "with agent", Some(agent.pid()))?;
        let cpu_after = agent.cpu_ticks()?;
        let after = agent.wait_drained(&before, self.execs, self.connects)?;
        let observed = Observed {
            exec_seen: after.exec.seen.saturating_sub(before.exec.seen),
            exec_lost: after.exec.lost.saturating_sub(before.exec.lost),
            connect_seen: after.connect.seen.saturating_sub(before.connect.seen),
            connect_lost: after.connect.lost.saturating_sub(before.connect.lost),
            agent_cpu: ticks_to_duration(cpu_after.saturating_sub(cpu_before), self.hz),
        };
        eprintln!(
            "{round}: agent saw {} exec-sensor records (lost {}), {} connects (lost {}); \
             used {} of CPU",
            observed.exec_seen,
            observed.exec_lost,
            observed.connect_seen,
            observed.connect_lost,
            secs(observed.agent_cpu)
        );
        ensure!(
            observed.exec_seen >= self.execs && observed.connect_seen >= self.connects,
            "the agent did not observe the storms: exec sensor saw {} (lost {}) for {} execs, \
             connect sensor saw {} (lost {}) for {} connects{}",
            observed.exec_seen,
            observed.exec_lost,
            self.execs,
            observed.connect_seen,
            observed.connect_lost,
            self.connects,
            agent.log_tail()
        );
        agent.stop()?;
        Ok((timed, observed))
    }

    /// Start the agent, let it settle and measure what it costs doing nothing.
    fn idle(&self, idle_secs: u64) -> anyhow::Result<Idle> {
        eprintln!("idle: starting the agent, then measuring for {idle_secs} s");
        let mut agent = Agent::start(self, "idle")?;
        agent.wait_ready()?;
        thread::sleep(Duration::from_secs(2));
        let hz = self.hz;
        let t0 = Instant::now();
        let ticks0 = agent.cpu_ticks()?;
        thread::sleep(Duration::from_secs(idle_secs));
        let ticks1 = agent.cpu_ticks()?;
        let elapsed = t0.elapsed();
        let tcp_sockets = tcp_socket_count();
        let status = fs::read_to_string(format!("/proc/{}/status", agent.pid()))
            .context("reading the agent's /proc status")?;
        let rss_kib = status_kib(&status, "VmRSS").context("no VmRSS in /proc/PID/status")?;
        let hwm_kib = status_kib(&status, "VmHWM").context("no VmHWM in /proc/PID/status")?;
        agent.stop()?;
        Ok(Idle {
            rss_kib,
            hwm_kib,
            cpu_percent: cpu_percent(ticks1.saturating_sub(ticks0), hz, elapsed),
            secs: elapsed.as_secs_f64(),
            tcp_sockets,
        })
    }
}

/// The agent to measure: `binary`, or the workspace's release build (built first unless
/// `no_build`).
pub(crate) fn agent_binary(no_build: bool, binary: Option<&Path>) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    if no_build {
        eprintln!("skipping the build (--no-build)");
    } else {
        build_agent(&root)?;
    }
    let binary = binary.map_or_else(|| default_binary(&root), Path::to_path_buf);
    ensure!(
        binary.is_file(),
        "no agent binary at {} (build it, or pass --binary)",
        binary.display()
    );
    Ok(binary)
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_owned()
}

/// `target/release/sentinel`, honouring CARGO_TARGET_DIR as cargo does.
pub(crate) fn default_binary(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    root.join(target).join("release").join("sentinel")
}

pub(crate) fn build_agent(root: &Path) -> anyhow::Result<()> {
    eprintln!("building… (cargo build --release -p sentinel-agent)");
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "sentinel-agent"])
        .current_dir(root)
        .status()
        .context("running cargo")?;
    ensure!(status.success(), "building the agent failed ({status})");
    Ok(())
}

/// Pids of running processes of the agent binary that this bench did not start.
fn other_agents(binary: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let name = binary.file_name();
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.file_name() == name || exe == binary)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_JSON: &str = concat!(
        r#"{"sensors":{"connect":{"attached":true,"seen":12,"lost":3},"#,
        r#""cpu":{"attached":true,"seen":900,"lost":0},"#,
        r#""exec":{"attached":true,"seen":4567,"lost":0}},"#,
        r#""pending":0,"blocks":0,"uptime_s":0,"host":"vm","pid":123,"processes":66,"#,
        r#""malformed":0,"store":{"queued":1,"dropped":2,"written":40,"bytes":9}}"#
    );

    #[test]
    fn parses_status_json() {
        assert_eq!(
            Status::parse(STATUS_JSON),
            Some(Status {
                exec: Counts {
                    seen: 4567,
                    lost: 0
                },
                connect: Counts { seen: 12, lost: 3 },
                dns: None,
                stored: Some(42),
            })
        );
        let old = STATUS_JSON.split(",\"store\"").next().unwrap().to_string() + "}";
        assert_eq!(Status::parse(&old).unwrap().stored, None, "{old}");
    }

    #[test]
    fn parses_pretty_status_json() {
        let json = "{ \"sensors\": {\n  \"exec\" : { \"lost\" : 7 , \"seen\" : 8 } } }";
        assert_eq!(
            sensor_counts(json, "exec"),
            Some(Counts { seen: 8, lost: 7 })
        );
    }

    #[test]
    fn missing_sensor_is_none() {
        assert_eq!(sensor_counts(STATUS_JSON, "dns"), None);
        assert_eq!(Status::parse("{}"), None);
        assert_eq!(Status::parse(""), None);
    }

    #[test]
    fn sensor_name_as_a_value_is_skipped() {
        let json =
            r#"{"sensors":{"cpu":{"note":"exec","seen":1,"lost":0},"exec":{"seen":5,"lost":2}}}"#;
        assert_eq!(
            sensor_counts(json, "exec"),
            Some(Counts { seen: 5, lost: 2 })
        );
    }

    #[test]
    fn stat_ticks_are_utime_plus_stime() {
        let stat = "4242 (sentinel) S 1 4242 4242 0 -1 4194560 1234 0 0 0 17 5 0 0 20 0 3 0 \
                    98765 123456789 3000 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(22));
    }

    #[test]
    fn stat_comm_with_spaces_and_parens() {
        let stat = "7 (a) b (c) S 1 7 7 0 -1 0 0 0 0 0 100 200 0 0 20 0 1 0 1 2 3";
        assert_eq!(stat_cpu_ticks(stat), Some(300));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn stat_sums_children_too() {
        let stat = "9 (x) S 1 9 9 0 -1 0 0 0 0 0 10 20 30 40 20 0 1 0 1 2 3";
        assert_eq!(stat_sum(stat, 14..=17), Some(100));
        assert_eq!(stat_sum(stat, 14..=15), Some(30));
        assert_eq!(
            stat_sum("9 (x) S 1 9 9 0 -1 0 0 0 0 0 10 20", 14..=17),
            None
        );
    }

    #[test]
    fn system_busy_is_user_nice_system_steal() {
        let stat = "cpu  100 5 50 9000 3 7 11 2 0 0\ncpu0 50 2 25 4500 1 3 5 1 0 0\n";
        assert_eq!(system_busy_ticks(stat), Some(157));
        assert_eq!(system_busy_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(system_busy_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn others_are_busy_minus_ours() {
        let at = Instant::now();
        let before = CpuSnapshot {
            at,
            system: 1000,
            ours: 400,
        };
        let after = CpuSnapshot {
            at: at + Duration::from_secs(2),
            system: 1300,
            ours: 600,
        };
        assert!((others_cores(&before, &after, 100) - 0.5).abs() < 1e-9);
        let busier_ours = CpuSnapshot { ours: 900, ..after };
        assert_eq!(others_cores(&before, &busier_ours, 100), 0.0);
    }

    #[test]
    fn port_range() {
        assert_eq!(port_range_size("32768\t60999\n"), Some(28232));
        assert_eq!(port_range_size("1024 1024"), Some(1));
        assert_eq!(port_range_size("60999 32768"), None);
        assert_eq!(port_range_size(""), None);
    }

    #[test]
    fn reads_status_kib() {
        let status = "Name:\tsentinel\nVmHWM:\t   14336 kB\nVmRSS:\t   12595 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(12595));
        assert_eq!(status_kib(status, "VmHWM"), Some(14336));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn reads_netstat_counters() {
        let text = "TcpExt: SyncookiesSent TW ListenOverflows ListenDrops\n\
                    TcpExt: 0 1059 7 8\n\
                    IpExt: InNoRoutes ListenOverflows\n\
                    IpExt: 0 99\n";
        assert_eq!(netstat_counter(text, "TcpExt", "ListenOverflows"), Some(7));
        assert_eq!(netstat_counter(text, "IpExt", "ListenOverflows"), Some(99));
        assert_eq!(netstat_counter(text, "TcpExt", "Nope"), None);
        assert_eq!(netstat_counter(text, "MPTcpExt", "TW"), None);
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(cpu_percent(50, 100, Duration::from_secs(10)), 5.0);
        assert_eq!(cpu_percent(0, 100, Duration::from_secs(10)), 0.0);
        assert_eq!(cpu_percent(10, 100, Duration::ZERO), 0.0);
    }
}
