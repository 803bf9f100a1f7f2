//! bench-cost's printout: per-event and idle CPU time and idle memory of both tools, the busy
//! server, Sentinel against its targets, and the split by BPF program and process.

use super::*;

/// `12.3 µs each (BPF 4.1 + process 8.2)` for a storm of `n`, `0.42 % of a core (…)` idle.
pub(super) fn describe(charge: &Charge, n: Option<u64>) -> String {
    let (bpf, user) = (charge.bpf_ns() as f64, charge.user as f64);
    match n {
        Some(n) => {
            let n = n as f64;
            format!(
                "{:.2} µs each (BPF {:.2} + process {:.2})",
                (bpf + user) / n / 1e3,
                bpf / n / 1e3,
                user / n / 1e3
            )
        }
        None => {
            let e = charge.elapsed.as_nanos() as f64 / 100.0;
            format!(
                "{:.3} % of a core (BPF {:.3} + process {:.3})",
                (bpf + user) / e,
                bpf / e,
                user / e
            )
        }
    }
}

pub(super) fn per_event_us(costs: &[Costs], pick: fn(&Costs) -> &Charge, n: u64) -> f64 {
    median(
        &costs
            .iter()
            .map(|c| pick(c).total_ns() as f64 / n as f64 / 1e3)
            .collect::<Vec<_>>(),
    )
}

/// The exec storm in a container's cgroup against the host's storms just before and just
/// after it in the same round (`host_execs`, then `execs` execs): the median of the rounds'
/// differences, and how far the two host storms are apart, the noise that difference is to be
/// read against.
fn print_container_exec(costs: &[Costs], execs: u64, host_execs: u64) {
    let per_exec = |c: &Charge, n: u64| c.total_ns() as f64 / n as f64 / 1e3;
    let rounds: Vec<(f64, f64, f64)> = costs
        .iter()
        .filter_map(|c| {
            let b = c.container_exec.as_ref()?;
            Some((
                per_exec(&b.container, execs),
                per_exec(&c.exec, host_execs),
                per_exec(&b.host_after, execs),
            ))
        })
        .collect();
    if rounds.is_empty() {
        return;
    }
    let container = median(&rounds.iter().map(|r| r.0).collect::<Vec<_>>());
    let delta = median(
        &rounds
            .iter()
            .map(|(c, before, after)| c - (before + after) / 2.0)
            .collect::<Vec<_>>(),
    );
    let noise = median(
        &rounds
            .iter()
            .map(|(_, before, after)| (after - before).abs())
            .collect::<Vec<_>>(),
    );
    println!(
        "sentinel, exec storm in a container's cgroup: {container:.2} µs per exec, \
         {delta:+.2} µs against the host's storms before and after it \
         (which differ by {noise:.2} µs between themselves)"
    );
}

fn idle_percent(costs: &[Costs]) -> f64 {
    median(
        &costs
            .iter()
            .map(|c| c.idle.total_ns() as f64 / c.idle.elapsed.as_nanos() as f64 * 100.0)
            .collect::<Vec<_>>(),
    )
}

fn verdict(value: f64, target: f64) -> &'static str {
    if value <= target {
        "ok"
    } else {
        "above target"
    }
}

/// The median of a memory figure, MiB.
fn median_mib(costs: &[Costs], pick: fn(&Costs) -> u64) -> f64 {
    median(&costs.iter().map(|c| mib(pick(c))).collect::<Vec<_>>())
}

pub(super) fn print_cost_report(
    args: &Args,
    host: &Host,
    sentinel: &[Costs],
    sensors: &[Costs],
    baseline: &[Costs],
    busy: &[BusyRound],
    floor: Option<f64>,
) {
    let (execs, connects) = (args.execs, args.connects);
    println!();
    println!(
        "medians over {} round(s); CPU time all in (BPF programs + the tool's own threads); \
         sentinel with every sensor and detector on, {}chat (Slack) and metrics configured; \
         {} processes on the host ({} sleeping ones added):",
        sentinel.len(),
        if host.fleet {
            "fleet, "
        } else {
            "NO fleet (--no-fleet), "
        },
        host.processes,
        host.sleepers
    );
    println!(
        "{:<22} {:>16} {:>16} {:>14} {:>14}",
        "", "per exec", "per connect", "idle", "RSS idle"
    );
    let row = |name: &str, costs: &[Costs]| {
        println!(
            "{name:<22} {:>13.2} µs {:>13.2} µs {:>12.3} % {:>10.1} MiB",
            per_event_us(costs, |c| &c.exec, execs),
            per_event_us(costs, |c| &c.connect, connects),
            idle_percent(costs),
            median_mib(costs, |c| c.rss_kib),
        )
    };
    row("sentinel", sentinel);
    if !baseline.is_empty() {
        row("bpftrace, same hooks", baseline);
    }
    let exec = per_event_us(sentinel, |c| &c.exec, execs);
    print_container_exec(sentinel, args.container_execs, execs);
    let connect = per_event_us(sentinel, |c| &c.connect, connects);
    let idle = idle_percent(sentinel);
    let latencies: Vec<f64> = sentinel
        .iter()
        .flat_map(|c| c.latencies.iter().map(|l| l.as_secs_f64() * 1e3))
        .collect();
    println!();
    println!("sentinel against its targets:");
    println!(
        "  per exec    {exec:.2} µs (≤ {EXEC_TARGET_US} µs) {}",
        verdict(exec, EXEC_TARGET_US)
    );
    println!(
        "  per connect {connect:.2} µs (≤ {CONNECT_TARGET_US} µs) {}",
        verdict(connect, CONNECT_TARGET_US)
    );
    print_sensors_only(sensors, sentinel, args);
    println!(
        "  idle        {idle:.3} % of a core (≤ {IDLE_TARGET_PERCENT} %) {}",
        verdict(idle, IDLE_TARGET_PERCENT)
    );
    let rss = median_mib(sentinel, |c| c.rss_kib);
    println!(
        "  idle RSS    {rss:.1} MiB (≤ {IDLE_RSS_TARGET_MIB} MiB) {}; VmHWM {:.1} MiB; on a host \
         with {} processes ({:.0} in the agent's process tree)",
        verdict(rss, IDLE_RSS_TARGET_MIB),
        median_mib(sentinel, |c| c.hwm_kib),
        host.processes,
        median(
            &sentinel
                .iter()
                .map(|c| c.tracked as f64)
                .collect::<Vec<_>>()
        ),
    );
    if !busy.is_empty() {
        print_busy(busy, args.busy_secs);
    }
    let posts: u64 = sentinel.iter().map(|c| c.chat_posts).sum::<u64>()
        + busy.iter().map(|b| b.chat_posts).sum::<u64>();
    println!(
        "  chat posts during the measurements: {posts} (none expected){}",
        if posts == 0 {
            ""
        } else {
            ": the agent alerted"
        }
    );
    let answers = args.dns_answers;
    let dns_all = per_event_us(sentinel, |c| &c.dns, answers);
    let dns_kernel = median(
        &sentinel
            .iter()
            .map(|c| dns_programs_ns(&c.dns) as f64 / answers as f64 / 1e3)
            .collect::<Vec<_>>(),
    );
    println!(
        "  per DNS answer, the dns programs {dns_kernel:.3} µs (≤ {DNS_KERNEL_TARGET_US} µs) {}; \
         all in (parsing and the name cache included) {dns_all:.2} µs",
        verdict(dns_kernel, DNS_KERNEL_TARGET_US)
    );
    if !latencies.is_empty() {
        let worst = latencies.iter().copied().fold(0.0, f64::max);
        println!(
            "  detection latency at idle: median {:.1} ms, worst {worst:.1} ms of {} probes \
             (≤ {LATENCY_TARGET_MS} ms) {}",
            median(&latencies),
            latencies.len(),
            verdict(worst, LATENCY_TARGET_MS)
        );
    }
    if let Some(floor) = floor {
        print_net_of_statistics(sentinel, args, floor);
    }
    println!();
    println!("sentinel's split (median µs per event; idle: % of a core):");
    print_split(sentinel, execs, connects, args.dns_answers);
    if !baseline.is_empty() {
        println!("bpftrace's split:");
        print_split(baseline, execs, connects, args.dns_answers);
    }
    println!("load average at the end: {}", load_average());
}

/// The busy server's line: requests/s without and with the agent, the % lost, the agent's
/// share of the machine's CPU.
fn print_busy(busy: &[BusyRound], secs: u64) {
    let of = |f: &dyn Fn(&BusyRound) -> f64| median(&busy.iter().map(f).collect::<Vec<_>>());
    let lost = of(&BusyRound::percent_lost);
    let share = |ns: fn(&Charge) -> u64| {
        of(&move |b| {
            ns(&b.agent) as f64 / (b.agent.elapsed.as_nanos() as f64 * b.cpus as f64) * 100.0
        })
    };
    let lost_stats = of(&|b| percent_lost(b.without_rps, b.with_stats_rps));
    println!(
        "  busy server (nginx, wrk {secs} s) {:.0} requests/s without the agent, {:.0} with: \
         {lost:.2} % lost (≤ {BUSY_LOST_TARGET_PERCENT} %) {}; the agent used {:.3} % of the \
         machine's CPU time ({} CPUs; BPF {:.3} % + process {:.3} %, measured over a run with \
         BPF statistics on, {:.0} requests/s: {lost_stats:.2} % lost)",
        of(&|b| b.without_rps),
        of(&|b| b.with_rps),
        verdict(lost, BUSY_LOST_TARGET_PERCENT),
        of(&BusyRound::agent_percent),
        busy[0].cpus,
        share(Charge::bpf_ns),
        share(|c| c.user),
        of(&|b| b.with_stats_rps),
    );
    let disturbed: Vec<usize> = busy
        .iter()
        .enumerate()
        .filter(|(_, b)| b.others[0].max(b.others[1]) > DISTURBED_CORES)
        .map(|(i, _)| i + 1)
        .collect();
    if !disturbed.is_empty() {
        println!(
            "    busy server rounds {disturbed:?}: other processes (or steal) took more than \
             {DISTURBED_CORES} of a core meanwhile; their rates are suspect"
        );
    }
}

/// The figures above without what the BPF statistics record of their own ([`floor`]): per
/// event, the runs of the agent's programs times `floor` taken off.
fn print_net_of_statistics(sentinel: &[Costs], args: &Args, floor: f64) {
    let net_us = |c: &Charge, dns_only: bool, n: u64| {
        let (ns, runs) = c
            .bpf
            .iter()
            .filter(|(name, _)| !dns_only || name.starts_with("dns_"))
            .fold((0, 0), |(ns, runs), (_, (n, r))| (ns + n, runs + r));
        let user = if dns_only { 0 } else { c.user };
        ((ns + user) as f64 - runs as f64 * floor) / n as f64 / 1e3
    };
    let runs_per =
        |c: &Charge, n: u64| c.bpf.values().map(|(_, r)| r).sum::<u64>() as f64 / n as f64;
    let of = |f: &dyn Fn(&Costs) -> f64| median(&sentinel.iter().map(f).collect::<Vec<_>>());
    println!(
        "  net of the BPF statistics' own time ({floor:.1} ns per program run, measured on an \
         empty program; production runs without the statistics): per exec {:.2} µs ({:.1} \
         runs), per connect {:.2} µs ({:.1} runs), the dns programs per DNS answer {:.3} µs",
        of(&|c| net_us(&c.exec, false, args.execs)),
        of(&|c| runs_per(&c.exec, args.execs)),
        of(&|c| net_us(&c.connect, false, args.connects)),
        of(&|c| runs_per(&c.connect, args.connects)),
        of(&|c| net_us(&c.dns, true, args.dns_answers)),
    );
}

/// The run time of the `dns` sensor's programs (the other programs run for whatever else the
/// machine does meanwhile).
fn dns_programs_ns(charge: &Charge) -> u64 {
    charge
        .bpf
        .iter()
        .filter(|(name, _)| name.starts_with("dns_"))
        .map(|(_, (ns, _))| ns)
        .sum()
}

/// Each BPF program and the process, per exec, per connect, per DNS answer and idle.
fn print_split(costs: &[Costs], execs: u64, connects: u64, answers: u64) {
    let mut names: Vec<String> = costs
        .iter()
        .flat_map(|c| [&c.exec, &c.connect, &c.dns, &c.idle])
        .flat_map(|ch| ch.bpf.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    let column = |pick: fn(&Costs) -> &Charge, n: Option<u64>, part: &dyn Fn(&Charge) -> u64| {
        median(
            &costs
                .iter()
                .map(|c| {
                    let ch = pick(c);
                    match n {
                        Some(n) => part(ch) as f64 / n as f64 / 1e3,
                        None => part(ch) as f64 / ch.elapsed.as_nanos() as f64 * 100.0,
                    }
                })
                .collect::<Vec<_>>(),
        )
    };
    let line = |label: &str, part: &dyn Fn(&Charge) -> u64| {
        println!(
            "  {label:<48} {:>9.3} {:>9.3} {:>9.3} {:>9.4} %",
            column(|c| &c.exec, Some(execs), part),
            column(|c| &c.connect, Some(connects), part),
            column(|c| &c.dns, Some(answers), part),
            column(|c| &c.idle, None, part),
        );
    };
    println!(
        "  {:<48} {:>9} {:>9} {:>9} {:>11}",
        "", "exec", "connect", "dns", "idle"
    );
    for name in &names {
        line(&format!("BPF {name}"), &|ch| {
            ch.bpf.get(name).map_or(0, |(ns, _)| *ns)
        });
    }
    line("process (user+system)", &|ch| ch.user);
}
