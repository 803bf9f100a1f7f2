//! The `cpu` sensor, userspace side: attaching `cpu_perf_event` to a software cpu-clock event
//! on every online CPU, and turning the per-tgid sample counts into CPU % per process.
//!
//! The events leave out the idle task (`exclude_idle`): a sample of an idle CPU counted for
//! nobody, and now the program does not even run for it, so an idle host pays for no
//! samples. aya's `PerfEvent::attach` cannot ask for that, so the events are opened here and
//! the program is set on them the way aya does it without a link (`PERF_EVENT_IOC_SET_BPF`).

use std::{
    collections::HashMap,
    io, mem,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::PerfEvent,
    util::online_cpus,
};
use aya_obj::generated::{
    PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, PERF_FLAG_FD_CLOEXEC, perf_event_attr,
    perf_sw_ids::PERF_COUNT_SW_CPU_CLOCK, perf_type_id::PERF_TYPE_SOFTWARE,
};
use tracing::debug;

use super::{SensorError, prog_err, program};

const SENSOR: &str = "cpu";

/// The kernel's per-CPU sample counts, by tgid.
pub type SampleMap = PerCpuHashMap<MapData, u32, u64>;

/// The kernel's per-tgid sample counts, and how many samples it took in all (of any process
/// but the agent). Reading the counts walks every bucket of the map (`MAX_TRACKED`, a few
/// dozen µs), so a read is skipped when no sample was taken since the last: most reads on an
/// idle host, whose CPUs the program does not even sample.
pub struct Samples {
    pub map: SampleMap,
    taken: PerCpuArray<MapData, u64>,
    taken_at_last_read: Option<u64>,
    /// The batched read's buffers, kept between reads (20 KiB on 2 CPUs): allocated, zeroed
    /// and freed at every read, their pages went back to the kernel and faulted in again.
    batch: Batch,
}

impl Samples {
    pub fn new(map: SampleMap, taken: PerCpuArray<MapData, u64>) -> Self {
        Self {
            map,
            taken,
            taken_at_last_read: None,
            batch: Batch::default(),
        }
    }

    /// Every tgid's total samples, or `None` when the kernel took no sample since the last
    /// call (the totals are those of the last call; a process's entry removed at its exit
    /// meanwhile is forgotten at the next read). The count is read before the totals, so a
    /// sample taken in between is read again next time, never missed.
    pub fn totals_if_sampled(&mut self) -> Option<Vec<(u32, u64)>> {
        let taken = self
            .taken
            .get(&0, 0)
            .ok()
            .map(|per_cpu| per_cpu.iter().sum());
        if taken.is_some() && taken == self.taken_at_last_read {
            return None;
        }
        self.taken_at_last_read = taken;
        Some(read_totals(&self.map, &mut self.batch))
    }
}

/// The cpu-clock events `cpu_perf_event` runs on, one per CPU. Dropping them detaches it.
#[derive(Debug)]
pub struct CpuClock {
    _events: Vec<OwnedFd>,
}

pub fn attach(ebpf: &mut Ebpf, hz: u64) -> Result<CpuClock, SensorError> {
    let prog: &mut PerfEvent = program(ebpf, SENSOR, "cpu_perf_event")?;
    prog.load()
        .map_err(prog_err(SENSOR, "loading cpu_perf_event"))?;
    let prog = prog
        .fd()
        .map_err(prog_err(SENSOR, "the loaded cpu_perf_event"))?
        .as_fd();
    let cpus = online_cpus().map_err(|(what, source)| SensorError::Io {
        sensor: SENSOR,
        what: what.into(),
        source,
    })?;
    // A fixed period in ns (cpu-clock counts time), so each sample stands for 1/hz seconds.
    let period = 1_000_000_000 / hz.max(1);
    let events = cpus
        .into_iter()
        .map(|cpu| {
            sample_cpu(cpu, period, prog).map_err(|source| SensorError::Io {
                sensor: SENSOR,
                what: format!("sampling CPU {cpu} (cpu-clock perf event)"),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CpuClock { _events: events })
}

/// A cpu-clock event on `cpu` running `prog` every `period_ns` the CPU is not idle. A kernel
/// that refuses `exclude_idle` for it gets the event without (the program ignores the idle
/// task's samples itself).
fn sample_cpu(cpu: u32, period_ns: u64, prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let event = match open_cpu_clock(cpu, period_ns, true) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
            debug!("cpu-clock without exclude_idle on CPU {cpu}: {e}");
            open_cpu_clock(cpu, period_ns, false)?
        }
        other => other?,
    };
    ioctl(&event, PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd())?;
    ioctl(&event, PERF_EVENT_IOC_ENABLE, 0)?;
    Ok(event)
}

/// The perf event's attributes: software cpu-clock, a sample every `period_ns`, opened
/// disabled (enabled once the program is set), the idle task left out if `exclude_idle`.
fn cpu_clock_attr(period_ns: u64, exclude_idle: bool) -> perf_event_attr {
    // SAFETY: a plain C struct of integers, unions of integers and bitfields; all-zero is
    // its documented default.
    let mut attr: perf_event_attr = unsafe { mem::zeroed() };
    attr.type_ = PERF_TYPE_SOFTWARE as u32;
    attr.size = mem::size_of::<perf_event_attr>() as u32;
    attr.config = PERF_COUNT_SW_CPU_CLOCK as u64;
    attr.__bindgen_anon_1.sample_period = period_ns;
    attr.set_disabled(1);
    attr.set_exclude_idle(u64::from(exclude_idle));
    attr
}

fn open_cpu_clock(cpu: u32, period_ns: u64, exclude_idle: bool) -> io::Result<OwnedFd> {
    let attr = cpu_clock_attr(period_ns, exclude_idle);
    // SAFETY: perf_event_open(2) with a valid attr of its declared size; every process
    // (pid -1) on one CPU, no group.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const perf_event_attr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the call just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn ioctl(event: &OwnedFd, request: u32, arg: libc::c_int) -> io::Result<()> {
    // SAFETY: a perf event ioctl taking an int argument, on a descriptor we own.
    if unsafe { libc::ioctl(event.as_raw_fd(), request as libc::Ioctl, arg) } < 0 {
        return Err(io::Error::last_os_error());
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
pub fn read_totals(map: &SampleMap, batch: &mut Batch) -> Vec<(u32, u64)> {
    match read_totals_batched(map, batch) {
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

/// A batched read's key and value buffers, sized at the first read.
#[derive(Default)]
pub struct Batch {
    keys: Vec<u32>,
    values: Vec<u64>,
}

fn read_totals_batched(map: &SampleMap, batch: &mut Batch) -> std::io::Result<Vec<(u32, u64)>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::IterableMap as _;

    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let fd = map.map().fd().as_fd().as_raw_fd();
    // A per-CPU value is one u64 per possible CPU (each rounded up to 8 bytes: already 8).
    batch.keys.resize(BATCH, 0);
    batch.values.resize(BATCH * cpus, 0);
    let Batch { keys, values } = batch;
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
    fn the_cpu_clock_leaves_out_the_idle_task_and_starts_disabled() {
        let attr = cpu_clock_attr(10_101_010, true);
        assert_eq!(attr.type_, PERF_TYPE_SOFTWARE as u32);
        assert_eq!(attr.config, PERF_COUNT_SW_CPU_CLOCK as u64);
        // SAFETY: the union's only written member.
        assert_eq!(unsafe { attr.__bindgen_anon_1.sample_period }, 10_101_010);
        assert_eq!(attr.exclude_idle(), 1);
        assert_eq!(attr.disabled(), 1);
        assert_eq!(attr.freq(), 0, "a fixed period, not a frequency");
        assert_eq!(cpu_clock_attr(1, false).exclude_idle(), 0);
    }

    /// This kernel takes `exclude_idle` on cpu-clock (else the agent falls back to sampling
    /// idle CPUs too, and the idle cost comes back): the event counts a busy thread's time.
    #[test]
    fn this_kernel_counts_cpu_clock_without_the_idle_task() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "\n*** SKIPPED this_kernel_counts_cpu_clock_without_the_idle_task: needs root \
                 (perf events of every process on a CPU) ***\n"
            );
            return;
        }
        let event = open_cpu_clock(0, 10_000_000, true).expect("cpu-clock with exclude_idle");
        ioctl(&event, PERF_EVENT_IOC_ENABLE, 0).unwrap();
        // Busy on CPU 0 for ~30 ms.
        let mut on_cpu0 = nix::sched::CpuSet::new();
        on_cpu0.set(0).unwrap();
        std::thread::spawn(move || {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &on_cpu0).unwrap();
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_millis(30) {
                std::hint::black_box(0u64);
            }
        })
        .join()
        .unwrap();
        let mut count = [0u8; 8];
        let read = nix::unistd::read(&event, &mut count).unwrap();
        assert_eq!(read, 8);
        let ns = u64::from_ne_bytes(count);
        assert!(
            ns >= 20_000_000,
            "cpu-clock counted {ns} ns of a 30 ms busy thread"
        );
    }

    #[test]
    fn percent_arithmetic() {
        assert_eq!(cpu_percent(198, 99, Duration::from_secs(2)), 100.0);
        assert_eq!(cpu_percent(99, 99, Duration::from_secs(2)), 50.0);
        assert_eq!(cpu_percent(396, 99, Duration::from_secs(2)), 200.0); // two busy threads
        assert_eq!(cpu_percent(10, 0, Duration::from_secs(2)), 0.0);
        assert_eq!(cpu_percent(10, 99, Duration::ZERO), 0.0);
    }

    /// The totals are read again only once the kernel counted a new sample; between, the
    /// call says there is nothing new (real maps in the running kernel, written as the
    /// program writes them).
    #[test]
    fn the_totals_are_read_only_after_a_new_sample() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "\n*** SKIPPED the_totals_are_read_only_after_a_new_sample: creating a BPF map \
                 needs root ***\n"
            );
            return;
        }
        let cpus = aya::util::nr_cpus().unwrap();
        let per_cpu = |v: u64| aya::maps::PerCpuValues::try_from(vec![v; cpus]).unwrap();
        let mut map: SampleMap = PerCpuHashMap::create(64, 0).unwrap();
        let mut taken: PerCpuArray<MapData, u64> = PerCpuArray::create(1, 0).unwrap();
        map.insert(7, per_cpu(1), 0).unwrap();
        taken.set(0, per_cpu(1), 0).unwrap();
        let mut samples = Samples::new(map, taken);
        let total = cpus as u64;
        assert_eq!(samples.totals_if_sampled(), Some(vec![(7, total)]));
        assert_eq!(
            samples.totals_if_sampled(),
            None,
            "no sample since the last read"
        );
        samples.map.insert(7, per_cpu(2), 0).unwrap();
        samples.taken.set(0, per_cpu(2), 0).unwrap();
        assert_eq!(samples.totals_if_sampled(), Some(vec![(7, 2 * total)]));
        assert_eq!(samples.totals_if_sampled(), None);
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
        let mut batched = read_totals_batched(&map, &mut Batch::default())
            .expect("the kernel takes batched lookups");
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
        assert!(
            read_totals_batched(&empty, &mut Batch::default())
                .unwrap()
                .is_empty()
        );
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
