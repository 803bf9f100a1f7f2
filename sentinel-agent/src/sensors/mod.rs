//! Loading the kernel programs and reading what they report. One module per sensor, named as
//! in `sentinel-ebpf` and `sentinel-common`: `exec`, `connect`, `stdio`, `cpu`, `dns`; `cron`
//! (inotify) and `persistence` (fanotify) have no kernel program of their own. This module
//! holds what they share: the loader, tracefs, record decoding and the counters behind
//! `sentinel status`; `ring.rs` drains the one ring buffer the process-and-network records
//! share (so they arrive in the order they happened).

pub mod btf;
pub mod cgroup;
pub mod connect;
pub mod cpu;
pub mod cron;
pub mod dns;
pub mod exec;
pub mod kernel_log;
pub mod persistence;
mod ring;
pub mod stdio;

pub use ring::{Ring, boot_ns, drain};

use std::{
    path::Path,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{MapData, PerCpuArray},
};
use sentinel_common::{EventKind, Header, KernelOffsets};
use tracing::{error, info, warn};

/// The kernel object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sentinel"));

pub const SENSORS: [&str; 4] = ["exec", "connect", "cpu", "dns"];

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("{sensor} sensor: {what}: {source}")]
    Program {
        sensor: &'static str,
        what: String,
        source: aya::programs::ProgramError,
    },
    #[error("{sensor} sensor: map {map}: {source}")]
    Map {
        sensor: &'static str,
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("{sensor} sensor: map {map} missing from the eBPF object")]
    MissingMap {
        sensor: &'static str,
        map: &'static str,
    },
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error(
        "the cgroup v2 root mounted at {0} is not the machine's (a cgroup namespace: running in a container?)"
    )]
    NotMachineRoot(std::path::PathBuf),
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{sensor} sensor: program {program} missing from the eBPF object")]
    MissingProgram {
        sensor: &'static str,
        program: &'static str,
    },
    #[error("{sensor} sensor: {what}: {source}")]
    Io {
        sensor: &'static str,
        what: String,
        source: std::io::Error,
    },
    #[error(
        "tracefs is not mounted on {path} and mounting it failed ({source}): the tracepoint \
         sensors need it. Mount it with `mount -t tracefs nodev {path}` (under systemd: \
         `systemctl start sys-kernel-tracing.mount`; the unit requires it)"
    )]
    Tracefs {
        path: &'static str,
        source: nix::Error,
    },
    #[error("reading kernel BTF: {0}")]
    Btf(String),
}

/// A record the kernel sent, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelEvent {
    Exec(exec::Exec),
    Fork(exec::Fork),
    Exit(exec::Exit),
    Connect(connect::Connect),
    Listen(connect::Listen),
    Stdio(stdio::Stdio),
    Dns(dns::Dns),
}

impl KernelEvent {
    /// When the kernel wrote the record (CLOCK_BOOTTIME, ns); for the kinds it does not
    /// stamp ([`KernelEvent::untimed`]), when the agent read it.
    pub fn ts_ns(&self) -> u64 {
        match self {
            KernelEvent::Exec(e) => e.ts_ns,
            KernelEvent::Fork(e) => e.ts_ns,
            KernelEvent::Exit(e) => e.ts_ns,
            KernelEvent::Connect(e) => e.ts_ns,
            KernelEvent::Listen(e) => e.ts_ns,
            KernelEvent::Stdio(e) => e.ts_ns,
            KernelEvent::Dns(e) => e.ts_ns,
        }
    }

    /// The time of a record the kernel leaves unstamped (fork, exit, DNS: a clock read costs
    /// the kernel program ~100 ns on a VM, and these need no better than the reader's few
    /// milliseconds), for the reader to fill in.
    pub fn untimed(&mut self) -> Option<&mut u64> {
        match self {
            KernelEvent::Fork(e) => Some(&mut e.ts_ns),
            KernelEvent::Exit(e) => Some(&mut e.ts_ns),
            KernelEvent::Dns(e) => Some(&mut e.ts_ns),
            KernelEvent::Exec(_)
            | KernelEvent::Connect(_)
            | KernelEvent::Listen(_)
            | KernelEvent::Stdio(_) => None,
        }
    }

    /// Which sensor's counters the record counts in (an index into [`SENSORS`]): `stdio`
    /// records count with `exec` (the process sensor), `listen` with `connect`.
    pub fn sensor(&self) -> usize {
        match self {
            KernelEvent::Exec(_) | KernelEvent::Fork(_) | KernelEvent::Exit(_) => 0,
            KernelEvent::Stdio(_) => 0,
            KernelEvent::Connect(_) | KernelEvent::Listen(_) => 1,
            KernelEvent::Dns(_) => 3,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than a header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {len} bytes, expected {want}")]
    Size {
        kind: EventKind,
        len: usize,
        want: usize,
    },
}

/// Copy a `T` out of a record that must be exactly its size.
pub(crate) fn read_exact<T: Pod>(bytes: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if bytes.len() != want {
        return Err(DecodeError::Size {
            kind,
            len: bytes.len(),
            want,
        });
    }
    // SAFETY: length checked; T is Pod (any bit pattern is valid); unaligned read.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decode one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() < size_of::<Header>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let raw_kind = u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
    let kind = EventKind::from_u32(raw_kind).ok_or(DecodeError::UnknownKind(raw_kind))?;
    Ok(match kind {
        EventKind::Exec => KernelEvent::Exec(exec::decode_exec(bytes)?),
        EventKind::Fork => KernelEvent::Fork(exec::decode_fork(bytes)?),
        EventKind::Exit => KernelEvent::Exit(exec::decode_exit(bytes)?),
        EventKind::Connect => KernelEvent::Connect(connect::decode(bytes)?),
        EventKind::Listen => KernelEvent::Listen(connect::decode_listen(bytes)?),
        EventKind::Stdio => KernelEvent::Stdio(stdio::decode(bytes)?),
        EventKind::Dns => KernelEvent::Dns(dns::decode(bytes)?),
    })
}

/// A NUL-padded kernel string as UTF-8 (lossy), its control characters escaped: the process
/// chose it (see [`crate::untrusted`]).
pub(crate) fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    crate::untrusted::text_from(&bytes[..end])
}

/// [`c_str`] as shared text (one allocation, shared by the process tree and the event).
pub(crate) fn c_str_shared(bytes: &[u8]) -> std::sync::Arc<str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    crate::untrusted::shared_text_from(&bytes[..end])
}

/// A task's comm as the kernel copied it (NUL-padded), for records that mostly compare it:
/// its escaped text ([`c_str`]) is made when asked, borrowed when it needs no escape.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawComm(pub [u8; 16]);

impl RawComm {
    /// The comm as escaped text: borrowed when printable ASCII (nearly always).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        let bytes = &self.0[..end];
        match crate::untrusted::printable_ascii(bytes) {
            Some(text) => std::borrow::Cow::Borrowed(text),
            None => std::borrow::Cow::Owned(c_str(bytes)),
        }
    }
}

impl std::fmt::Debug for RawComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.text(), f)
    }
}

/// Seen and lost counts of one sensor.
#[derive(Debug, Default)]
pub struct Counters {
    pub seen: AtomicU64,
    /// Records userspace could not decode.
    pub malformed: AtomicU64,
}

/// Per-sensor drop counters kept by the kernel programs.
pub struct LostMaps {
    maps: Vec<(&'static str, PerCpuArray<MapData, u64>)>,
}

impl LostMaps {
    /// Records `sensor`'s programs could not deliver, summed over CPUs.
    pub fn lost(&self, sensor: &str) -> u64 {
        self.maps
            .iter()
            .find(|(name, _)| *name == sensor)
            .and_then(|(_, map)| map.get(&0, 0).ok())
            .map_or(0, |values| values.iter().sum())
    }
}

/// What `load` needs from the agent.
pub struct LoadOptions {
    pub agent_tgid: u32,
    pub offsets: KernelOffsets,
    pub ring_buffer_bytes: u32,
    pub cpu_sample_hz: u64,
}

/// The loaded programs. Dropping this detaches every program.
pub struct Sensors {
    pub ebpf: Ebpf,
    /// The perf events the cpu sensor's program runs on, held for as long as the sensors
    /// are: it is detached when they close.
    pub _cpu_clock: Option<cpu::CpuClock>,
    pub attached: [bool; 4],
    pub lost: Arc<Mutex<LostMaps>>,
    /// The process-and-network records (exec, fork, exit, stdio, connect, listen), in order.
    pub ring: Option<Ring>,
    pub cpu_samples: Option<cpu::Samples>,
    /// The kernel programs' reports of their rare failures (aya-log).
    pub kernel_log: Option<kernel_log::KernelLog>,
}

/// The classic tracepoints need tracefs; mount it when the system has not.
pub fn ensure_tracefs() -> Result<(), SensorError> {
    const PATH: &str = "/sys/kernel/tracing";
    if Path::new(PATH).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    info!("tracefs is not mounted; mounting it on {PATH}");
    nix::mount::mount(
        Some("nodev"),
        PATH,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| SensorError::Tracefs { path: PATH, source })
}

/// Load the object and attach every sensor. A sensor that fails to attach is reported and
/// left off (`attached = false`); failing them all is an error.
pub fn load(opts: &LoadOptions) -> Result<Sensors, SensorError> {
    // Harmless where BPF memory is charged to the cgroup (Linux ≥ 5.11); needed before.
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };

    // One ring for what used to be two per-sensor rings of `ring_buffer_bytes`: same memory.
    let ring_bytes = opts.ring_buffer_bytes.saturating_mul(2);
    let mut ebpf = EbpfLoader::new()
        .override_global("AGENT_TGID", &opts.agent_tgid, true)
        .override_global("OFFSETS", &opts.offsets, true)
        .override_global("RING_WAKE_BYTES", &(ring_bytes as u64 / 2), true)
        .map_max_entries("EVENTS", ring_bytes)
        .load(EBPF_OBJECT)?;

    let mut attached = [false; 4];
    let (cpu_clock, cpu) = match cpu::attach(&mut ebpf, opts.cpu_sample_hz) {
        Ok(clock) => (Some(clock), Ok(())),
        Err(e) => (None, Err(e)),
    };
    let results = [
        exec::attach(&mut ebpf),
        connect::attach(&mut ebpf),
        cpu,
        dns::attach(&mut ebpf),
    ];
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(()) => attached[i] = true,
            Err(e) if SENSORS[i] == "dns" => warn!(
                "dns sensor not attached ({e}): connections are shown without the names they were resolved from"
            ),
            Err(e) => error!("{} sensor not attached: {e}", SENSORS[i]),
        }
    }
    if !attached.iter().any(|a| *a) {
        return Err(SensorError::Io {
            sensor: "all",
            what: "no sensor could be attached".into(),
            source: std::io::Error::other("see the errors above"),
        });
    }

    let mut lost = Vec::new();
    for (sensor, map) in [
        ("exec", "EXEC_LOST"),
        ("connect", "CONNECT_LOST"),
        ("cpu", "CPU_LOST"),
        ("dns", "DNS_LOST"),
    ] {
        lost.push((sensor, take_map(&mut ebpf, sensor, map)?));
    }
    let ring = (attached[0] || attached[1] || attached[3])
        .then(|| -> Result<Ring, SensorError> {
            Ok(Ring {
                records: take_map(&mut ebpf, "exec", "EVENTS")?,
                asleep: take_map(&mut ebpf, "exec", "READER_ASLEEP")?,
            })
        })
        .transpose()?;
    let cpu_samples = attached[2]
        .then(|| -> Result<cpu::Samples, SensorError> {
            Ok(cpu::Samples::new(
                take_map(&mut ebpf, "cpu", "CPU_SAMPLES")?,
                take_map(&mut ebpf, "cpu", "CPU_SAMPLED")?,
            ))
        })
        .transpose()?;
    let kernel_log = kernel_log::take(&mut ebpf);
    Ok(Sensors {
        ebpf,
        _cpu_clock: cpu_clock,
        attached,
        lost: Arc::new(Mutex::new(LostMaps { maps: lost })),
        ring,
        cpu_samples,
        kernel_log,
    })
}

fn take_map<M>(ebpf: &mut Ebpf, sensor: &'static str, map: &'static str) -> Result<M, SensorError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let raw = ebpf
        .take_map(map)
        .ok_or(SensorError::MissingMap { sensor, map })?;
    M::try_from(raw).map_err(|source| SensorError::Map {
        sensor,
        map,
        source,
    })
}

pub(crate) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    sensor: &'static str,
    program: &'static str,
) -> Result<&'a mut P, SensorError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(program)
        .ok_or(SensorError::MissingProgram { sensor, program })?;
    p.try_into().map_err(|source| SensorError::Program {
        sensor,
        what: format!("program {program}"),
        source,
    })
}

pub(crate) fn prog_err(
    sensor: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(aya::programs::ProgramError) -> SensorError {
    let what = what.into();
    move |source| SensorError::Program {
        sensor,
        what,
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The bytes of a record as the kernel would write them.
    pub(crate) fn as_bytes<T: Pod>(value: &T) -> Vec<u8> {
        // SAFETY: T is Pod: plain bytes, no padding.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    pub(crate) fn header(kind: EventKind, tgid: u32, comm: &str) -> Header {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        Header {
            kind: kind as u32,
            pid: tgid,
            tgid,
            uid: 1000,
            gid: 1000,
            _pad: 0,
            ts_ns: 123_456_789,
            comm: c,
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 0, 0]), Err(DecodeError::Short(3)));
        let mut h = header(EventKind::Exec, 1, "x");
        h.kind = 99;
        assert_eq!(decode(&as_bytes(&h)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn wrong_size_is_an_error() {
        let h = header(EventKind::Connect, 1, "x");
        let err = decode(&as_bytes(&h)).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::Size {
                kind: EventKind::Connect,
                len: 48,
                ..
            }
        ));
    }

    #[test]
    fn c_str_stops_at_nul() {
        assert_eq!(c_str(b"bash\0\0garbage"), "bash");
        assert_eq!(c_str(b"full"), "full");
    }

    #[test]
    fn c_str_escapes_what_the_process_chose() {
        assert_eq!(c_str(b"a\nb\x1b[31m\0junk"), "a\\nb\\x1b[31m");
    }

    #[test]
    fn raw_comm_is_escaped_like_c_str() {
        let raw = |s: &[u8]| {
            let mut comm = [0u8; 16];
            comm[..s.len()].copy_from_slice(s);
            RawComm(comm)
        };
        assert!(matches!(
            raw(b"bash").text(),
            std::borrow::Cow::Borrowed("bash")
        ));
        assert_eq!(raw(b"0123456789abcdef").text(), "0123456789abcdef");
        assert_eq!(raw(b"a\nb\x1b[31m\0junk").text(), "a\\nb\\x1b[31m");
        assert_eq!(raw(b"\xff\xfe").text(), c_str(b"\xff\xfe"));
        assert_eq!(format!("{:?}", raw(b"x\ty")), "\"x\\\\ty\"");
    }
}
