//! `cargo xtask bench-cost`: what each exec, each connect, each DNS answer and an idle second
//! cost in CPU time, all in: the run time of the agent's BPF programs plus the agent's own CPU
//! time (`charge.rs`); its resident memory at idle on a host with many processes; and what it
//! takes from a busy web server (`busy.rs`). The agent runs with every sensor and detector on
//! (the default config) plus a fleet store, a chat channel and the metrics endpoint, each
//! served by the bench itself (`services.rs`). bpftrace doing the same hooks (printf of
//! exec/fork/exit/connect, a 99 Hz profile count) is measured in the same run as the
//! baseline, alternating with the agent in every round; medians are printed. Wall-clock
//! slowdown (`cargo xtask bench`) drowns in a small VM's noise; CPU time charged to the tool
//! does not.

use std::{io::BufRead as _, sync::mpsc};

use super::{
    crowd::{Crowd, die_with_parent},
    *,
};

mod busy;
mod charge;
mod container;
mod floor;
mod report;
mod sensors_only;
mod services;
use busy::*;
use charge::*;
use container::*;
use floor::*;
use report::*;
use sensors_only::*;
use services::*;

/// Targets, all in, on the reference machine (issue #28).
const EXEC_TARGET_US: f64 = 4.0;
const CONNECT_TARGET_US: f64 = 1.0;
/// The `dns` sensor's kernel side, per DNS answer.
const DNS_KERNEL_TARGET_US: f64 = 0.5;
const IDLE_TARGET_PERCENT: f64 = 0.03;
const LATENCY_TARGET_MS: f64 = 50.0;
/// Resident memory after start-up, idle, on a host with `--processes` processes.
const IDLE_RSS_TARGET_MIB: f64 = 32.0;
/// Requests per second the agent may take from the busy server.
const BUSY_LOST_TARGET_PERCENT: f64 = 1.0;
/// How long a latency probe waits for the agent to report the probe's exec.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The baseline: the same hooks in bpftrace, each record printed as it comes.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sched:sched_process_exec { printf("exec %d %s\n", pid, str(args->filename)); }
tracepoint:sched:sched_process_fork { printf("fork %d %d\n", args->parent_pid, args->child_pid); }
tracepoint:sched:sched_process_exit { printf("exit %d\n", pid); }
tracepoint:sock:inet_sock_set_state /args->newstate == 2/ { printf("connect %d %d\n", pid, args->dport); }
profile:hz:99 { @samples[pid] = count(); }
"#;

/// Options of `cargo xtask bench-cost`.
#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each measures both tools, in alternating order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Sequential fork+exec of /bin/true per exec storm.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    execs: u64,
    /// Sequential fork+exec of /bin/true per exec storm in a cgroup named like a Docker
    /// container's (Sentinel only; 0 skips it).
    #[arg(long, default_value_t = 2000)]
    container_execs: u64,
    /// Sequential loopback TCP connects per connect storm.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    connects: u64,
    /// Sequential loopback DNS query/answer exchanges per DNS storm (Sentinel only).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    dns_answers: u64,
    /// Seconds over which each tool's idle cost is measured, per round.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    idle_secs: u64,
    /// Execs whose detection latency is measured at idle, per round (one a second).
    #[arg(long, default_value_t = 5)]
    probes: u32,
    /// Skip `cargo build --release -p sentinel-agent`; use the binary already built.
    #[arg(long)]
    no_build: bool,
    /// The agent binary to measure (default: the workspace's target/release/sentinel).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Measure Sentinel alone, without bpftrace's baseline (quicker A/B runs of two builds).
    #[arg(long)]
    no_baseline: bool,
    /// Processes on the host while the tools start and run: sleeping processes are added up
    /// to this count (the agent's memory grows with the processes it tracks).
    #[arg(long, default_value_t = 500)]
    processes: u64,
    /// Seconds of each busy-server run (nginx under wrk without the agent, with it, and with
    /// it and BPF statistics on, every round); 0 skips the phase.
    #[arg(long, default_value_t = 20)]
    busy_secs: u64,
    /// Run the agent without a fleet store (no PostgreSQL; quicker runs).
    #[arg(long)]
    no_fleet: bool,
    /// Also measure the storms on the agent built with `--features sensors-only` (kernel
    /// programs and ring reader alone, every record discarded): the lower bound no pipeline
    /// work can go below. Built into TARGET/sensors-only unless --no-build.
    #[arg(long)]
    sensors_only: bool,
    /// The sensors-only build to measure with --sensors-only.
    #[arg(long, value_name = "PATH", requires = "sensors_only")]
    sensors_only_binary: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Sentinel,
    Bpftrace,
}

/// What one tool cost in one round.
#[derive(Default, Clone, Debug)]
struct Costs {
    exec: Charge,
    /// The exec storm in a container's cgroup (Sentinel only, unless skipped), with the
    /// host's storm of the same size run again right after it: the two host storms bracket
    /// the container's, so a drift during the round is not taken for the container's cost.
    container_exec: Option<Bracketed>,
    connect: Charge,
    /// The DNS storm (Sentinel only: the baseline has no such hook).
    dns: Charge,
    idle: Charge,
    /// Detection latency of each probe (Sentinel only).
    latencies: Vec<Duration>,
    /// VmRSS and VmHWM right after the idle phase, KiB.
    rss_kib: u64,
    hwm_kib: u64,
    /// Chat posts the agent made during the round (Sentinel only; none expected).
    chat_posts: u64,
    /// Processes in the agent's process tree after the idle phase (Sentinel only).
    tracked: u64,
}

/// The conditions of the run, for the report.
struct Host {
    /// Processes on the machine once the sleepers were added (`--processes` asked).
    processes: u64,
    /// Sleeping processes the bench added to reach it.
    sleepers: usize,
    /// Whether the agent had a fleet store.
    fleet: bool,
}

/// Run the benchmark and print its report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        effective_uid()? == 0,
        "the agent loads eBPF programs and BPF run-time statistics are root's: run as root"
    );
    let binary = agent_binary(args.no_build, args.binary.as_deref())?;
    let sensors_only = args
        .sensors_only
        .then(|| sensors_only_binary(args.no_build, args.sensors_only_binary.as_deref()))
        .transpose()?;
    let bpftrace = (!args.no_baseline).then(|| which("bpftrace")).flatten();
    if args.no_baseline {
        eprintln!("--no-baseline: measuring Sentinel alone");
    } else if bpftrace.is_none() {
        eprintln!(
            "bpftrace is not installed (`scripts/setup.sh --bench` installs it): measuring \
             Sentinel alone, without the baseline"
        );
    }
    let _stats = BpfStats::enable()?;
    let (tmp, config, services) =
        work_dir(&binary, |dir| Services::start(dir, &binary, !args.no_fleet))?;
    let floor = match &bpftrace {
        Some(bpftrace) => {
            let ns = stats_floor_ns(bpftrace, tmp.path())?;
            eprintln!("BPF statistics' own time: {ns:.1} ns per program run (an empty program)");
            Some(ns)
        }
        None => None,
    };
    let nginx = (args.busy_secs > 0).then(Nginx::start).transpose()?;
    // Last, so that the servers' processes count too.
    let crowd = Crowd::fill_to(args.processes)?;
    let script = tmp.path().join("same-hooks.bt");
    fs::write(&script, BPFTRACE_SCRIPT).context("writing the bpftrace script")?;
    let bench = Bench {
        binary: &binary,
        config: &config,
        dir: tmp.path(),
        execs: args.execs,
        connects: args.connects,
        hz: clock_ticks()?,
    };
    let sensors_bench = sensors_only
        .as_deref()
        .map(|binary| Bench { binary, ..bench });
    let mut sentinel = Vec::new();
    let mut sensors = Vec::new();
    let mut baseline = Vec::new();
    let mut busy = Vec::new();
    for r in 1..=args.rounds {
        let order = match (bpftrace.is_some(), r % 2 == 0) {
            (false, _) => vec![Tool::Sentinel],
            (true, true) => vec![Tool::Bpftrace, Tool::Sentinel],
            (true, false) => vec![Tool::Sentinel, Tool::Bpftrace],
        };
        for tool in order {
            let label = format!("round {r}/{}: {tool:?}", args.rounds);
            match tool {
                Tool::Sentinel => sentinel.push(measure_sentinel(&bench, &services, args, &label)?),
                Tool::Bpftrace => baseline.push(measure_bpftrace(
                    &bench,
                    args,
                    bpftrace.as_deref().expect("checked"),
                    &script,
                    &label,
                )?),
            }
        }
        if let Some(sensors_bench) = &sensors_bench {
            let label = format!("round {r}/{}: sensors only", args.rounds);
            sensors.push(measure_sensors_only(sensors_bench, args, &label)?);
        }
        if let Some(nginx) = &nginx {
            let label = format!("round {r}/{}", args.rounds);
            busy.push(measure_busy(
                &bench,
                &services,
                nginx,
                args.busy_secs,
                r,
                &label,
            )?);
        }
    }
    let host = Host {
        processes: crowd.total(),
        sleepers: crowd.started(),
        fleet: !args.no_fleet,
    };
    print_cost_report(args, &host, &sentinel, &sensors, &baseline, &busy, floor);
    Ok(())
}

fn measure_sentinel(
    bench: &Bench,
    services: &Services,
    args: &Args,
    label: &str,
) -> anyhow::Result<Costs> {
    let mut agent = Agent::start(bench, "cost")?;
    agent.wait_ready()?;
    check_everything_on(&mut agent, services)?;
    thread::sleep(Duration::from_secs(2));
    let posts = services.chat.posts();
    let pid = agent.pid();
    let idle = charge(pid, || {
        thread::sleep(Duration::from_secs(args.idle_secs));
        Ok(())
    })?;
    agent.check_alive()?;
    let (rss_kib, hwm_kib) = memory_kib(pid)?;
    let status: serde_json::Value = serde_json::from_str(&agent.status_json()?)?;
    let tracked = status["processes"].as_u64().unwrap_or(0);
    eprintln!(
        "{label}: idle {}; VmRSS {:.1} MiB, VmHWM {:.1} MiB; {tracked} processes tracked",
        describe(&idle, None),
        mib(rss_kib),
        mib(hwm_kib)
    );
    let latencies = probe_latencies(&agent, args.probes)?;
    eprintln!("{label}: detection latency {latencies:?}");
    let exec = charged_exec_storm(&mut agent, args.execs, label, "exec storm")?;
    let container_exec = (args.container_execs > 0)
        .then(|| container_exec_storm(&mut agent, args.container_execs, label))
        .transpose()?;
    let connect = charged_connect_storm(&mut agent, args.connects, label)?;
    let dns = charged_dns_storm(&mut agent, args.dns_answers, label)?;
    let chat_posts = services.chat.posts() - posts;
    if chat_posts > 0 {
        eprintln!("{label}: warning: the agent posted {chat_posts} chat message(s)");
    }
    agent.stop()?;
    Ok(Costs {
        exec,
        container_exec,
        connect,
        dns,
        idle,
        latencies,
        rss_kib,
        hwm_kib,
        chat_posts,
        tracked,
    })
}

/// An exec storm of `n`, charged until the agent has seen every exec and its store has
/// written them; printed as `what`.
fn charged_exec_storm(
    agent: &mut Agent,
    n: u64,
    label: &str,
    what: &str,
) -> anyhow::Result<Charge> {
    let before = agent.status()?;
    let cost = charge(agent.pid(), || {
        exec_storm(n)?;
        agent.wait_drained(&before, n, 0).map(drop)
    })?;
    eprintln!("{label}: {what} {}", describe(&cost, Some(n)));
    Ok(cost)
}

/// A connect storm of `n`, charged until the agent has seen and written every connect.
fn charged_connect_storm(agent: &mut Agent, n: u64, label: &str) -> anyhow::Result<Charge> {
    let before = agent.status()?;
    let cost = charge(agent.pid(), || {
        connect_storm(n)?;
        agent.wait_drained(&before, 0, n).map(drop)
    })?;
    eprintln!("{label}: connect storm {}", describe(&cost, Some(n)));
    Ok(cost)
}

/// A DNS storm of `n` exchanges, charged until the `dns` sensor has seen every answer.
fn charged_dns_storm(agent: &mut Agent, n: u64, label: &str) -> anyhow::Result<Charge> {
    let before = agent.status()?;
    let cost = charge(agent.pid(), || {
        dns_storm(n)?;
        agent.wait_dns(&before, n)
    })?;
    eprintln!("{label}: dns storm {}", describe(&cost, Some(n)));
    Ok(cost)
}

/// The exec storm in a container's cgroup and the host's storm again after it.
#[derive(Clone, Debug)]
struct Bracketed {
    container: Charge,
    host_after: Charge,
}

/// The exec storm with the bench (and so each exec) in a container's cgroup, then the same
/// storm on the host again; the agent must have named a container by the end, or the storm
/// measured nothing of the kind.
fn container_exec_storm(agent: &mut Agent, execs: u64, label: &str) -> anyhow::Result<Bracketed> {
    let container = exec_storm_in_container(agent, execs, label)?;
    let host_after = charged_exec_storm(agent, execs, label, "exec storm on the host again")?;
    Ok(Bracketed {
        container,
        host_after,
    })
}

fn exec_storm_in_container(agent: &mut Agent, execs: u64, label: &str) -> anyhow::Result<Charge> {
    let pid = agent.pid();
    let before = agent.status()?;
    let cgroup = ContainerCgroup::enter()?;
    let cost = charge(pid, || {
        exec_storm(execs)?;
        agent.wait_drained(&before, execs, 0).map(drop)
    });
    drop(cgroup);
    let cost = cost?;
    let status: serde_json::Value = serde_json::from_str(&agent.status_json()?)?;
    ensure!(
        status["containers"].as_u64().unwrap_or(0) >= 1,
        "the agent named no container during the exec storm in a container's cgroup"
    );
    eprintln!(
        "{label}: exec storm in a container's cgroup {}",
        describe(&cost, Some(execs))
    );
    Ok(cost)
}

/// VmRSS and VmHWM of process `pid`, KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss = status_kib(&status, "VmRSS").context("no VmRSS in /proc/PID/status")?;
    let hwm = status_kib(&status, "VmHWM").context("no VmHWM in /proc/PID/status")?;
    Ok((rss, hwm))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// bpftrace with `args`, its output to `out` (where it says "Attaching" once attached).
fn start_bpftrace(bpftrace: &Path, args: &[&std::ffi::OsStr], out: &Path) -> anyhow::Result<Child> {
    Command::new(bpftrace)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(out).context("creating bpftrace's output file")?)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bpftrace.display()))
}

fn measure_bpftrace(
    bench: &Bench,
    args: &Args,
    bpftrace: &Path,
    script: &Path,
    label: &str,
) -> anyhow::Result<Costs> {
    let out = bench.dir.join("bpftrace.out");
    let mut child = start_bpftrace(bpftrace, &[script.as_os_str()], &out)?;
    let result = (|| {
        let pid = child.id();
        wait_for(
            || Ok(count_lines(&out, "Attaching")? > 0),
            "bpftrace to attach",
        )?;
        thread::sleep(Duration::from_secs(2));
        let idle = charge(pid, || {
            thread::sleep(Duration::from_secs(args.idle_secs));
            Ok(())
        })?;
        let (rss_kib, hwm_kib) = memory_kib(pid)?;
        eprintln!(
            "{label}: idle {}; VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            describe(&idle, None),
            mib(rss_kib),
            mib(hwm_kib)
        );
        let before = count_lines(&out, "exec ")?;
        let exec = charge(pid, || {
            exec_storm(args.execs)?;
            wait_for(
                || Ok(count_lines(&out, "exec ")? >= before + args.execs),
                "bpftrace to print the exec storm",
            )
        })?;
        eprintln!("{label}: exec storm {}", describe(&exec, Some(args.execs)));
        let before = count_lines(&out, "connect ")?;
        let connect = charge(pid, || {
            connect_storm(args.connects)?;
            wait_for(
                || Ok(count_lines(&out, "connect ")? >= before + args.connects),
                "bpftrace to print the connect storm",
            )
        })?;
        eprintln!(
            "{label}: connect storm {}",
            describe(&connect, Some(args.connects))
        );
        Ok(Costs {
            exec,
            container_exec: None,
            connect,
            dns: Charge::default(),
            idle,
            latencies: Vec::new(),
            rss_kib,
            hwm_kib,
            chat_posts: 0,
            tracked: 0,
        })
    })();
    // bpftrace prints its maps on SIGINT and exits.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    result
}

/// Execs of /bin/true at idle, one a second, each timed from just before its spawn to the
/// line about it in `sentinel tail --follow --json --kind exec`.
fn probe_latencies(agent: &Agent, probes: u32) -> anyhow::Result<Vec<Duration>> {
    if probes == 0 {
        return Ok(Vec::new());
    }
    let mut tail = Command::new(&agent.binary)
        .args([
            "tail", "--follow", "--json", "--kind", "exec", "-n", "0", "--config",
        ])
        .arg(&agent.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting `sentinel tail --follow`")?;
    let stdout = tail.stdout.take().context("tail's stdout")?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let result = (|| {
        let mut latencies = Vec::new();
        for _ in 0..probes {
            thread::sleep(Duration::from_secs(1));
            while rx.try_recv().is_ok() {}
            let spawned = Instant::now();
            let mut child = Command::new("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("running /bin/true")?;
            let needle = format!("\"pid\":{},", child.id());
            let _ = child.wait();
            loop {
                let (at, line) = rx
                    .recv_timeout(PROBE_TIMEOUT)
                    .context("the agent did not report a probe's exec within 5 s")?;
                if line.contains(&needle) {
                    latencies.push(at.duration_since(spawned));
                    break;
                }
            }
        }
        Ok(latencies)
    })();
    let _ = tail.kill();
    let _ = tail.wait();
    result
}

/// `kernel.bpf_stats_enabled` set while it lives, restored after.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        Self::set("1")
    }

    fn set(value: &str) -> anyhow::Result<Self> {
        let before =
            fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, value).with_context(|| format!("setting {BPF_STATS} to {value}"))?;
        Ok(Self(before.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.0);
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn count_lines(path: &Path, prefix: &str) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with(prefix))
        .count() as u64)
}

fn wait_for(mut done: impl FnMut() -> anyhow::Result<bool>, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done()? {
        ensure!(
            start.elapsed() < DRAIN_TIMEOUT,
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_adds_programs_and_threads() {
        let mut c = Charge {
            user: 1_000,
            elapsed: Duration::from_secs(1),
            ..Charge::default()
        };
        c.bpf.insert("a".into(), (500, 5));
        c.bpf.insert("b".into(), (250, 1));
        assert_eq!(c.bpf_ns(), 750);
        assert_eq!(c.total_ns(), 1_750);
        assert_eq!(
            describe(&c, Some(1)),
            "1.75 µs each (BPF 0.75 + process 1.00)"
        );
    }
}
