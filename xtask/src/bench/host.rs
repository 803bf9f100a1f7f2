//! What the benchmark reads from the host itself (`/proc`): TCP counters, CPU ticks of the
//! whole machine and of one process, memory, the local port range.

use super::*;

/// The system's TcpExt TCPSynRetrans counter (0 if unreadable: then nothing is repeated).
pub(super) fn syn_retransmits() -> u64 {
    fs::read_to_string("/proc/net/netstat")
        .ok()
        .and_then(|text| netstat_counter(&text, "TcpExt", "TCPSynRetrans"))
        .unwrap_or(0)
}

/// A counter of `/proc/net/netstat`, where each group is a line of names followed by a line
/// of values, both starting with `GROUP:`.
pub(super) fn netstat_counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter_map(|l| l.strip_prefix(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// Entries of /proc/net/tcp and tcp6 (one header line each), or None if unreadable.
pub(super) fn tcp_socket_count() -> Option<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|path| {
            let text = fs::read_to_string(path).ok()?;
            Some(text.lines().count().saturating_sub(1) as u64)
        })
        .sum()
}

/// How many ports `net.ipv4.ip_local_port_range` (`LOW HIGH`) spans.
pub(super) fn port_range_size(text: &str) -> Option<u64> {
    let mut bounds = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (low, high) = (bounds.next()??, bounds.next()??);
    Some(high.checked_sub(low)? + 1)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks.
pub(super) fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    stat_sum(stat, 14..=15)
}

/// The sum of the numbered fields (1-based, as in proc(5)) of a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// last `)`.
pub(super) fn stat_sum(stat: &str, fields: std::ops::RangeInclusive<usize>) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let values: Vec<&str> = after_comm
        .split_whitespace()
        .skip(fields.start() - 3)
        .take(fields.end() - fields.start() + 1)
        .collect();
    if values.len() != fields.end() - fields.start() + 1 {
        return None;
    }
    values.iter().map(|v| v.parse::<u64>().ok()).sum()
}

/// Busy time of all CPUs from the `cpu` line of `/proc/stat`, in clock ticks: user + nice +
/// system, plus steal (time the hypervisor gave to someone else while a CPU wanted to run).
/// Interrupt time is left out: loopback traffic lands there.
pub(super) fn system_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 8).then(|| fields[0] + fields[1] + fields[2] + fields[7])
}

/// The machine's busy CPU time next to ours (this process, its waited-for children and the
/// agent), at one instant.
pub(super) struct CpuSnapshot {
    pub(super) at: Instant,
    pub(super) system: u64,
    pub(super) ours: u64,
}

impl CpuSnapshot {
    /// None if /proc cannot be read: the disturbance is then not reported.
    pub(super) fn take(agent: Option<u32>) -> Option<Self> {
        let at = Instant::now();
        let system = system_busy_ticks(&fs::read_to_string("/proc/stat").ok()?)?;
        // Fields 14..=17: utime, stime, and cutime, cstime of the children waited for.
        let mut ours = stat_sum(&fs::read_to_string("/proc/self/stat").ok()?, 14..=17)?;
        if let Some(pid) = agent {
            ours += stat_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        }
        Some(Self { at, system, ours })
    }
}

/// Average CPU used by everything else between two snapshots, in cores.
pub(super) fn others_cores(before: &CpuSnapshot, after: &CpuSnapshot, hz: u64) -> f64 {
    let busy = after.system.saturating_sub(before.system);
    let ours = after.ours.saturating_sub(before.ours);
    let secs = after.at.duration_since(before.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    busy.saturating_sub(ours) as f64 / hz as f64 / secs
}

/// A `Key:   N kB` value of `/proc/PID/status`, in KiB.
pub(super) fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The effective uid, from `/proc/self/status`.
pub(super) fn effective_uid() -> anyhow::Result<u32> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
        .context("no Uid line in /proc/self/status")
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of /proc CPU times.
pub(super) fn clock_ticks() -> anyhow::Result<u64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse() {
        Ok(hz) if out.status.success() && hz > 0 => Ok(hz),
        _ => bail!("getconf CLK_TCK answered {:?}", text.trim()),
    }
}

pub(super) fn ticks_to_duration(ticks: u64, hz: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// CPU use as a percentage of one CPU.
pub(super) fn cpu_percent(ticks: u64, hz: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    ticks as f64 / hz as f64 / secs * 100.0
}
