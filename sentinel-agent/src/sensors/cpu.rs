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

/// Read every tgid's total samples (summed over CPUs): in batches of [`BATCH`] entries, one
/// system call each, instead of two per process (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6); entry by
/// entry where the kernel refuses batches.
pub fn read_totals(map: &SampleMap) -> Vec<(u32, u64)> {
    match read_totals_batched(map) {
        Ok(totals) => totals,
        Err(e) => {
            tracing::debug!(
                "batched read of the CPU samples refused ({e}): reading entry by entry"
            );
            map.iter()
                .filter_map(Result::ok)
                .map(|(tgid, per_cpu)| (tgid, per_cpu.iter().sum()))
                .collect()
        }
    }
}

/// Entries per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: usize = 1024;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn read_totals_batched(map: &SampleMap) -> std::io::Result<Vec<(u32, u64)>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::IterableMap as _;

    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut keys = vec![0u32; BATCH];
    // A per-CPU value is one u64 per possible CPU (each rounded up to 8 bytes: already 8).
    let mut values = vec![0u64; BATCH * cpus];
    let mut totals = Vec::new();
    // The hash map's batch cursor is a bucket index (a u32).
    let (mut cursor, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at buffers sized for `count` keys and per-CPU values of this
        // map, and at two u32 cursors; all outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let done = if ret == 0 {
            false
        } else {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err);
            }
            true // the last batch: `count` says how many it holds
        };
        let filled = (attr.count as usize).min(BATCH);
        totals.extend((0..filled).map(|i| {
            let per_cpu = &values[i * cpus..(i + 1) * cpus];
            (keys[i], per_cpu.iter().sum::<u64>())
        }));
        if done {
            return Ok(totals);
        }
        cursor = next;
        first = false;
    }
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

    /// The batched read sees what the entry-by-entry read sees, across several batches, on a
    /// real per-CPU hash map in the running kernel.
    #[test]
    fn batched_read_matches_entry_by_entry() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED batched_read_matches_entry_by_entry: creating a BPF map needs root");
            return;
        }
        let mut map: SampleMap = PerCpuHashMap::create(8192, 0).expect("create a per-CPU hash");
        let cpus = aya::util::nr_cpus().unwrap();
        let n = (BATCH * 2 + 77) as u32;
        for tgid in 1..=n {
            let values = aya::maps::PerCpuValues::try_from(
                (0..cpus as u64)
                    .map(|c| u64::from(tgid) * 10 + c)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            map.insert(tgid, values, 0).unwrap();
        }
        let mut batched = read_totals_batched(&map).expect("the kernel takes batched lookups");
        batched.sort_unstable();
        let mut one_by_one: Vec<(u32, u64)> = map
            .iter()
            .map(|r| r.unwrap())
            .map(|(tgid, v)| (tgid, v.iter().sum()))
            .collect();
        one_by_one.sort_unstable();
        assert_eq!(batched.len(), n as usize);
        assert_eq!(batched, one_by_one);
        let cpus = cpus as u64;
        assert_eq!(batched[4], (5, 50 * cpus + cpus * (cpus - 1) / 2));
        // An empty map reads as nothing.
        let empty: SampleMap = PerCpuHashMap::create(16, 0).unwrap();
        assert!(read_totals_batched(&empty).unwrap().is_empty());
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
