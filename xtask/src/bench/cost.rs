//! `cargo xtask bench-cost`: what each exec, each connect, each DNS answer and an idle second cost in CPU
//! time, all in: the run time of the agent's BPF programs (`kernel.bpf_stats_enabled`, read
//! from each program's `/proc/PID/fdinfo`) plus the agent's own CPU time (every thread's
//! `schedstat`). bpftrace doing the same hooks (printf of exec/fork/exit/connect, a 99 Hz
//! profile count) is measured in the same run as the baseline, alternating with the agent in
//! every round; medians are printed. Wall-clock slowdown (`cargo xtask bench`) drowns in a
//! small VM's noise; CPU time charged to the tool does not.

use std::{collections::BTreeMap, io::BufRead as _, sync::mpsc};

use super::*;

mod report;
use report::*;

/// Targets, all in, on the reference machine.
const EXEC_TARGET_US: f64 = 8.0;
const CONNECT_TARGET_US: f64 = 2.0;
/// The `dns` sensor's kernel side, per DNS answer.
const DNS_KERNEL_TARGET_US: f64 = 0.5;
const IDLE_TARGET_PERCENT: f64 = 0.1;
const LATENCY_TARGET_MS: f64 = 50.0;
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
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Sentinel,
    Bpftrace,
}

/// CPU time charged to a tool over one phase.
#[derive(Default, Clone, Debug)]
struct Charge {
    /// Run time of each of the tool's BPF programs, by name: (ns, runs).
    bpf: BTreeMap<String, (u64, u64)>,
    /// The tool's own process (all threads), ns.
    user: u64,
    elapsed: Duration,
}

impl Charge {
    fn bpf_ns(&self) -> u64 {
        self.bpf.values().map(|(ns, _)| ns).sum()
    }
    fn total_ns(&self) -> u64 {
        self.bpf_ns() + self.user
    }
}

/// What one tool cost in one round.
#[derive(Default, Clone, Debug)]
struct Costs {
    exec: Charge,
    connect: Charge,
    /// The DNS storm (Sentinel only: the baseline has no such hook).
    dns: Charge,
    idle: Charge,
    /// Detection latency of each probe (Sentinel only).
    latencies: Vec<Duration>,
}

/// Run the benchmark and print its report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        effective_uid()? == 0,
        "the agent loads eBPF programs and BPF run-time statistics are root's: run as root"
    );
    let binary = agent_binary(args.no_build, args.binary.as_deref())?;
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
    let (tmp, config) = work_dir(&binary)?;
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
    let mut sentinel = Vec::new();
    let mut baseline = Vec::new();
    for r in 1..=args.rounds {
        let order = match (bpftrace.is_some(), r % 2 == 0) {
            (false, _) => vec![Tool::Sentinel],
            (true, true) => vec![Tool::Bpftrace, Tool::Sentinel],
            (true, false) => vec![Tool::Sentinel, Tool::Bpftrace],
        };
        for tool in order {
            let label = format!("round {r}/{}: {tool:?}", args.rounds);
            match tool {
                Tool::Sentinel => sentinel.push(measure_sentinel(&bench, args, &label)?),
                Tool::Bpftrace => baseline.push(measure_bpftrace(
                    &bench,
                    args,
                    bpftrace.as_deref().expect("checked"),
                    &script,
                    &label,
                )?),
            }
        }
    }
    print_cost_report(args, &sentinel, &baseline);
    Ok(())
}

fn measure_sentinel(bench: &Bench, args: &Args, label: &str) -> anyhow::Result<Costs> {
    let mut agent = Agent::start(bench, "cost")?;
    agent.wait_ready()?;
    thread::sleep(Duration::from_secs(2));
    let pid = agent.pid();
    let idle = charge(pid, || {
        thread::sleep(Duration::from_secs(args.idle_secs));
        Ok(())
    })?;
    eprintln!("{label}: idle {}", describe(&idle, None));
    let latencies = probe_latencies(&agent, args.probes)?;
    eprintln!("{label}: detection latency {latencies:?}");
    let before = agent.status()?;
    let exec = charge(pid, || {
        exec_storm(args.execs)?;
        agent.wait_drained(&before, args.execs, 0).map(drop)
    })?;
    eprintln!("{label}: exec storm {}", describe(&exec, Some(args.execs)));
    let before = agent.status()?;
    let connect = charge(pid, || {
        connect_storm(args.connects)?;
        agent.wait_drained(&before, 0, args.connects).map(drop)
    })?;
    eprintln!(
        "{label}: connect storm {}",
        describe(&connect, Some(args.connects))
    );
    let before = agent.status()?;
    let dns = charge(pid, || {
        dns_storm(args.dns_answers)?;
        agent.wait_dns(&before, args.dns_answers)
    })?;
    eprintln!(
        "{label}: dns storm {}",
        describe(&dns, Some(args.dns_answers))
    );
    agent.stop()?;
    Ok(Costs {
        exec,
        connect,
        dns,
        idle,
        latencies,
    })
}

fn measure_bpftrace(
    bench: &Bench,
    args: &Args,
    bpftrace: &Path,
    script: &Path,
    label: &str,
) -> anyhow::Result<Costs> {
    let out = bench.dir.join("bpftrace.out");
    let mut child = Command::new(bpftrace)
        .arg(script)
        .stdin(Stdio::null())
        .stdout(File::create(&out).context("creating bpftrace's output file")?)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bpftrace.display()))?;
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
        eprintln!("{label}: idle {}", describe(&idle, None));
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
            connect,
            dns: Charge::default(),
            idle,
            latencies: Vec::new(),
        })
    })();
    // bpftrace prints its maps on SIGINT and exits.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    result
}

/// CPU time charged to process `pid` (its BPF programs and its threads) while `work` runs.
fn charge(pid: u32, work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Charge> {
    let bpf0 = bpf_run_times(pid)?;
    let cpu0 = thread_cpu_ns(pid)?;
    let t0 = Instant::now();
    work()?;
    let elapsed = t0.elapsed();
    let cpu1 = thread_cpu_ns(pid)?;
    let bpf1 = bpf_run_times(pid)?;
    let mut bpf = BTreeMap::new();
    for (id, (name, ns, runs)) in &bpf1 {
        let (ns0, runs0) = bpf0.get(id).map_or((0, 0), |(_, ns, runs)| (*ns, *runs));
        let slot = bpf.entry(name.clone()).or_insert((0, 0));
        slot.0 += ns.saturating_sub(ns0);
        slot.1 += runs.saturating_sub(runs0);
    }
    // Threads that ended meanwhile took their last slice with them: a small undercount.
    let user = cpu1
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(cpu0.get(tid).copied().unwrap_or(0)))
        .sum();
    Ok(Charge { bpf, user, elapsed })
}

/// Each BPF program `pid` holds open: id → (name, run_time_ns, run_cnt).
fn bpf_run_times(pid: u32) -> anyhow::Result<BTreeMap<u64, (String, u64, u64)>> {
    let mut programs = BTreeMap::new();
    let attached = attach_points();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).context("listing the tool's fds")?;
    for fd in fds.filter_map(Result::ok) {
        let is_prog =
            fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().display()))
            .unwrap_or_default();
        let (Some(id), Some(ns), Some(runs)) = (
            fdinfo_u64(&info, "prog_id"),
            fdinfo_u64(&info, "run_time_ns"),
            fdinfo_u64(&info, "run_cnt"),
        ) else {
            continue;
        };
        programs.insert(id, (program_name(id, &attached), ns, runs));
    }
    Ok(programs)
}

/// `key:\tvalue` of an fdinfo file.
fn fdinfo_u64(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

/// The program's name as `bpftool prog show id ID` prints it (`ID: TYPE  name NAME  tag …`).
/// The kernel keeps 15 characters of a name without BTF (bpftrace's `sched_process_e` is
/// both exec and exit): such a name gives way to the tracepoint it is attached to.
fn program_name(id: u64, attached: &BTreeMap<u64, String>) -> String {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let name = text.ok().and_then(|t| {
        let mut words = t.split_whitespace();
        words.find(|w| *w == "name")?;
        words.next().map(str::to_owned)
    });
    match (name, attached.get(&id)) {
        (Some(name), Some(point)) if name.len() == 15 => format!("{point} ({name})"),
        (Some(name), _) => name,
        (None, Some(point)) => point.clone(),
        (None, None) => format!("prog {id}"),
    }
}

/// Tracepoint of each program attached through perf (`bpftool perf show`:
/// `pid P  fd F: prog_id ID  tracepoint  NAME`), by program id.
fn attach_points() -> BTreeMap<u64, String> {
    let out = Command::new("bpftool").args(["perf", "show"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    text.unwrap_or_default()
        .lines()
        .filter_map(perf_line)
        .collect()
}

fn perf_line(line: &str) -> Option<(u64, String)> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "prog_id")?;
    let id = words.next()?.parse().ok()?;
    Some((id, words.last()?.to_owned()))
}

/// Time on CPU of every live thread of `pid`, by tid (`/proc/PID/task/TID/schedstat`).
fn thread_cpu_ns(pid: u32) -> anyhow::Result<BTreeMap<u32, u64>> {
    let mut threads = BTreeMap::new();
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).context("listing the tool's threads")?;
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let ns = fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        if let Some(ns) = ns {
            threads.insert(tid, ns);
        }
    }
    Ok(threads)
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

/// `kernel.bpf_stats_enabled` on while it lives, restored after.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let before =
            fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("enabling {BPF_STATS}"))?;
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
    fn fdinfo_fields_are_read_by_key() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_id:\t123\nrun_time_ns:\t98765\n\
                    run_cnt:\t42\nrecursion_misses:\t0\n";
        assert_eq!(fdinfo_u64(info, "prog_id"), Some(123));
        assert_eq!(fdinfo_u64(info, "run_time_ns"), Some(98765));
        assert_eq!(fdinfo_u64(info, "run_cnt"), Some(42));
        assert_eq!(fdinfo_u64(info, "verified_insns"), None);
    }

    #[test]
    fn perf_lines_give_the_tracepoint() {
        assert_eq!(
            perf_line("pid 10822  fd 11: prog_id 17213  tracepoint  sched_process_exec"),
            Some((17213, "sched_process_exec".into()))
        );
        assert_eq!(perf_line("garbage"), None);
    }

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
