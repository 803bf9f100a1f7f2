//! The benchmark's report: per-round timings, the medians against their targets, the
//! agent's idle footprint, and what disturbed the machine meanwhile.

use super::*;

/// The median; the mean of the middle two for an even count. NaN for no values.
pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `ratio 1.034×  (target ≤ 1.05×) ok`, or `above target`. The ratio has three decimals so
/// that a ratio just above the target never reads as equal to it.
fn format_ratio(ratio: f64, target: f64) -> String {
    let verdict = if ratio <= target {
        "ok"
    } else {
        "above target"
    };
    format!("ratio {ratio:.3}×  (target ≤ {target:.2}×) {verdict}")
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(super) fn print_report(args: &Args, rounds: &[Round], idle: &Idle) {
    let col = |f: fn(&Round) -> Duration| -> Vec<f64> {
        rounds.iter().map(|r| f(r).as_secs_f64()).collect()
    };
    let exec_without = median(&col(|r| r.without.exec));
    let exec_with = median(&col(|r| r.with.exec));
    let connect_without = median(&col(|r| r.without.connect));
    let connect_with = median(&col(|r| r.with.connect));
    let disturbed: Vec<usize> = rounds
        .iter()
        .enumerate()
        .filter(|(_, r)| r.without.others.max(r.with.others) > DISTURBED_CORES)
        .map(|(i, _)| i + 1)
        .collect();
    let repeats: u32 = rounds
        .iter()
        .map(|r| r.without.connect_repeats + r.with.connect_repeats)
        .sum();

    println!();
    println!(
        "per round (seconds; ratio = with / without; \"others\": CPU used by other processes \
         or stolen by the hypervisor meanwhile, in cores, without/with):"
    );
    println!(
        "round  first    exec without   with   ratio  connect without   with   ratio  \
         agent CPU   seen exec/connect  lost    others"
    );
    for (i, r) in rounds.iter().enumerate() {
        let o = &r.observed;
        println!(
            "{:>5}  {:<7} {:>13.3} {:>6.3} {:>6.3}× {:>16.3} {:>6.3} {:>6.3}× \
             {:>9.3} s {:>11}/{:<6} {:>3}/{:<3} {:.2}/{:.2}",
            i + 1,
            if r.with_first { "with" } else { "without" },
            r.without.exec.as_secs_f64(),
            r.with.exec.as_secs_f64(),
            r.with.exec.as_secs_f64() / r.without.exec.as_secs_f64(),
            r.without.connect.as_secs_f64(),
            r.with.connect.as_secs_f64(),
            r.with.connect.as_secs_f64() / r.without.connect.as_secs_f64(),
            o.agent_cpu.as_secs_f64(),
            o.exec_seen,
            o.connect_seen,
            o.exec_lost,
            o.connect_lost,
            r.without.others,
            r.with.others,
        );
    }
    if !disturbed.is_empty() {
        println!(
            "rounds {disturbed:?}: other processes (or steal) took more than {DISTURBED_CORES} \
             of a core meanwhile (column \"others\"); their timings are suspect: rerun on a \
             quiet machine"
        );
    }
    if repeats > 0 {
        println!(
            "({repeats} connect storm(s) were repeated because a SYN was retransmitted; see \
             the progress lines)"
        );
    }
    println!();
    println!(
        "medians over {} round{}:",
        rounds.len(),
        if rounds.len() == 1 { "" } else { "s" }
    );
    let exec_label = format!("exec storm    ({} × /bin/true):", args.execs);
    let connect_label = format!("connect storm ({} × loopback):", args.connects);
    let width = exec_label
        .chars()
        .count()
        .max(connect_label.chars().count());
    for (label, without, with, target) in [
        (exec_label, exec_without, exec_with, EXEC_TARGET),
        (connect_label, connect_without, connect_with, CONNECT_TARGET),
    ] {
        let pad = width - label.chars().count();
        println!(
            "{label}{:pad$}  without {without:.3} s  with {with:.3} s  {}",
            "",
            format_ratio(with / without, target)
        );
    }
    let sockets = idle
        .tcp_sockets
        .map(|n| format!(" ({n} TCP sockets on the machine)"))
        .unwrap_or_default();
    println!(
        "idle: RSS {} (peak {}), CPU {:.2} % of one core over {:.0} s{sockets}",
        mib(idle.rss_kib),
        mib(idle.hwm_kib),
        idle.cpu_percent,
        idle.secs
    );
    println!("load average at the end: {}", load_average());
}

pub(super) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[2.0]), 2.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0, 1.0, 1.0, 9.0, 2.0]), 2.0);
    }

    #[test]
    fn ratio_verdicts() {
        assert_eq!(
            format_ratio(1.03, 1.05),
            "ratio 1.030×  (target ≤ 1.05×) ok"
        );
        assert_eq!(
            format_ratio(1.05, 1.05),
            "ratio 1.050×  (target ≤ 1.05×) ok"
        );
        assert_eq!(
            format_ratio(1.054, 1.05),
            "ratio 1.054×  (target ≤ 1.05×) above target"
        );
    }
}
