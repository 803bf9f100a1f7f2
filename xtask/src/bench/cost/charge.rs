//! What a tool costs while something runs: the run time of its BPF programs
//! (`kernel.bpf_stats_enabled`, read from each program's `/proc/PID/fdinfo`, named by
//! `bpftool`) plus the CPU time of its own threads (`schedstat`).

use std::collections::BTreeMap;

use super::*;

/// CPU time charged to a tool over one phase.
#[derive(Default, Clone, Debug)]
pub(super) struct Charge {
    /// Run time of each of the tool's BPF programs, by name: (ns, runs).
    pub(super) bpf: BTreeMap<String, (u64, u64)>,
    /// The tool's own process (all threads), ns.
    pub(super) user: u64,
    pub(super) elapsed: Duration,
}

impl Charge {
    pub(super) fn bpf_ns(&self) -> u64 {
        self.bpf.values().map(|(ns, _)| ns).sum()
    }
    pub(super) fn total_ns(&self) -> u64 {
        self.bpf_ns() + self.user
    }
}

/// CPU time charged to process `pid` (its BPF programs and its threads) while `work` runs.
pub(super) fn charge(
    pid: u32,
    work: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Charge> {
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
}
