//! The `cpu` sensor, userspace side: attaching `cpu_perf_event` to a software cpu-clock event
//! on every online CPU, and turning the per-tgid sample counts into CPU % per process.

use std::{collections::HashMap, time::Duration};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};

use super::{SensorError, prog_err, program};

const SENSOR: &str = "cpu";

/// The kernel's per-CPU sample counts, by tgid.
pub type SampleMap = PerCpuHashMap<MapData, u32, u64>;

pub fn attach(ebpf: &mut Ebpf, hz: u64) -> Result<(), SensorError> {
    let prog: &mut PerfEvent = program(ebpf, SENSOR, "cpu_perf_event")?;
    prog.load()
        .map_err(prog_err(SENSOR, "loading cpu_perf_event"))?;
    let cpus = online_cpus().map_err(|(what, source)| SensorError::Io {
        sensor: SENSOR,
        what: what.into(),
        source,
    })?;
    // A fixed period in ns (cpu-clock counts time), so each sample stands for 1/hz seconds.
    let period = 1_000_000_000 / hz.max(1);
    for cpu in cpus {
        prog.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Period(period),
            false,
        )
        .map_err(prog_err(
            SENSOR,
            format!("attaching to cpu-clock on CPU {cpu}"),
        ))?;
    }
    Ok(())
}

/// CPU % (of one CPU) that `samples` taken at `hz` over `elapsed` stand for.
pub fn cpu_percent(samples: u64, hz: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if hz == 0 || secs <= 0.0 {
        return 0.0;
    }
    samples as f64 * 100.0 / (hz as f64 * secs)
}

/// Turns cumulative sample counts into per-interval deltas.
#[derive(Debug, Default)]
pub struct CpuTracker {
    last: HashMap<u32, u64>,
}

impl CpuTracker {
    /// Given the current cumulative counts, return (tgid, samples since the last call) for
    /// every tgid with new samples. A count that went down (the entry was removed and
    /// re-created) counts from zero.
    pub fn deltas(&mut self, now: impl IntoIterator<Item = (u32, u64)>) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(self.last.len());
        for (tgid, total) in now {
            let before = self.last.get(&tgid).copied().unwrap_or(0);
            let delta = if total >= before {
                total - before
            } else {
                total
            };
            if delta > 0 {
                out.push((tgid, delta));
            }
            next.insert(tgid, total);
        }
        self.last = next;
        out
    }
}

/// Read every tgid's total samples (summed over CPUs).
pub fn read_totals(map: &SampleMap) -> Vec<(u32, u64)> {
    map.iter()
        .filter_map(Result::ok)
        .map(|(tgid, per_cpu)| (tgid, per_cpu.iter().sum()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_arithmetic() {
        assert_eq!(cpu_percent(198, 99, Duration::from_secs(2)), 100.0);
        assert_eq!(cpu_percent(99, 99, Duration::from_secs(2)), 50.0);
        assert_eq!(cpu_percent(396, 99, Duration::from_secs(2)), 200.0); // two busy threads
        assert_eq!(cpu_percent(10, 0, Duration::from_secs(2)), 0.0);
        assert_eq!(cpu_percent(10, 99, Duration::ZERO), 0.0);
    }

    #[test]
    fn deltas_between_reads() {
        let mut t = CpuTracker::default();
        assert_eq!(t.deltas([(1, 10), (2, 5)]), [(1, 10), (2, 5)]);
        assert_eq!(t.deltas([(1, 30), (2, 5)]), [(1, 20)]);
        // Entry 1 removed and re-created by the kernel: counts from zero.
        assert_eq!(t.deltas([(1, 4), (3, 1)]), [(1, 4), (3, 1)]);
    }
}
