//! The `exec` sensor, userspace side: attaching `exec_sched_process_{exec,fork,exit}` and
//! decoding their records into owned values.

use std::sync::Arc;

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, TracePoint},
};
use sentinel_common::{
    EventKind, Header,
    events::exec::{ARGV_LEN, ExeId, ExecData, ExecEvent, ExitEvent, FILENAME_LEN, ForkEvent},
};

use super::{
    DecodeError, RawComm, SensorError, c_str, c_str_shared, prog_err, program, read_exact,
};

const SENSOR: &str = "exec";

/// A process replaced its image.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    pub ts_ns: u64,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// Shared by the process tree and the event.
    pub filename: Arc<str>,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub start_ns: u64,
    /// The new image's executable (device, inode), as the kernel saw it.
    pub exe: ExeId,
    /// Its cgroup v2 id (0: unknown), for `enrich::container`.
    pub cgroup_id: u64,
}

/// `parent` created the process `child`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fork {
    /// When the agent read the record (the kernel leaves it unstamped).
    pub ts_ns: u64,
    pub parent: u32,
    pub child: u32,
    pub child_start_ns: u64,
    /// The forking task's comm, which the child starts with (kept as the kernel's bytes: a
    /// fork only compares it with the parent's).
    pub comm: RawComm,
}

/// The process `tgid` ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// When the agent read the record (the kernel leaves it unstamped).
    pub ts_ns: u64,
    pub tgid: u32,
    pub start_ns: u64,
    /// The signal that ended it (SIGKILL = 9, SIGTERM = 15, …), 0 for a normal exit or when
    /// the kernel's BTF did not locate `task_struct.exit_code`.
    pub signal: u8,
}

pub fn attach(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    let exec: &mut TracePoint = program(ebpf, SENSOR, "exec_sched_process_exec")?;
    exec.load()
        .map_err(prog_err(SENSOR, "loading exec_sched_process_exec"))?;
    exec.attach("sched", "sched_process_exec")
        .map_err(prog_err(SENSOR, "attaching to sched/sched_process_exec"))?;

    let btf = Btf::from_sys_fs().map_err(|e| SensorError::Btf(e.to_string()))?;
    let fork: &mut BtfTracePoint = program(ebpf, SENSOR, "exec_sched_process_fork")?;
    fork.load("sched_process_fork", &btf)
        .map_err(prog_err(SENSOR, "loading exec_sched_process_fork (tp_btf)"))?;
    fork.attach()
        .map_err(prog_err(SENSOR, "attaching to tp_btf/sched_process_fork"))?;

    let exit: &mut TracePoint = program(ebpf, SENSOR, "exec_sched_process_exit")?;
    exit.load()
        .map_err(prog_err(SENSOR, "loading exec_sched_process_exit"))?;
    exit.attach("sched", "sched_process_exit")
        .map_err(prog_err(SENSOR, "attaching to sched/sched_process_exit"))?;
    // The dup2/dup3 hooks feed `reverse_shell`: their failure is reported, not fatal to
    // `exec`, whose program still finds a socket on fd 0-2 at every exec.
    if let Err(e) = super::stdio::attach(ebpf) {
        tracing::error!(
            "{e}: a socket put on stdio by dup2/dup3 is seen only when the process next execs"
        );
    }
    Ok(())
}

/// Offset of `group_dead` in the `sched_process_exit` record, from its tracefs format file
/// (the field exists since Linux 6.x); 0 when absent.
pub fn exit_group_dead_offset() -> u32 {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            std::fs::read_to_string(format!("{root}/events/sched/sched_process_exit/format")).ok()
        })
        .map_or(0, |format| parse_field_offset(&format, "group_dead"))
}

/// The `offset:` of field `name` in a tracepoint format description; 0 when absent.
fn parse_field_offset(format: &str, name: &str) -> u32 {
    format
        .lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(';').map(str::trim);
            let decl = parts.next()?.strip_prefix("field:")?;
            let field = decl.rsplit(' ').next()?.split('[').next()?;
            (field == name).then_some(())?;
            parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
        })
        .next()
        .unwrap_or(0)
}

/// Split the kernel's NUL-separated argv copy into arguments, control characters escaped.
fn split_argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(crate::untrusted::text_from)
        .collect()
}

fn comm(h: &Header) -> String {
    c_str(&h.comm)
}

/// A `T` at byte `at` of a record whose length was checked to hold it.
fn field<T: aya::Pod>(bytes: &[u8], at: usize) -> T {
    let end = at + size_of::<T>();
    assert!(
        end <= bytes.len(),
        "field at {at}..{end} of a {}-byte record",
        bytes.len()
    );
    // SAFETY: in bounds (checked above); T is Pod (any bit pattern is valid); unaligned read.
    unsafe { std::ptr::read_unaligned(bytes[at..].as_ptr().cast::<T>()) }
}

/// Decode an exec record, reading only its fixed part and the bytes of `filename` and `argv`
/// in use: the rest of the 864-byte record is stale ring memory, and copying it whole cost a
/// cache line per 64 bytes on every exec.
pub fn decode_exec(bytes: &[u8]) -> Result<Exec, DecodeError> {
    let want = size_of::<ExecEvent>();
    if bytes.len() != want {
        return Err(DecodeError::Size {
            kind: EventKind::Exec,
            len: bytes.len(),
            want,
        });
    }
    let header: Header = field(bytes, std::mem::offset_of!(ExecEvent, header));
    let data = std::mem::offset_of!(ExecEvent, data);
    let at = |offset: usize| data + offset;
    let filename_len: u32 = field(bytes, at(std::mem::offset_of!(ExecData, filename_len)));
    let argv_len: u32 = field(bytes, at(std::mem::offset_of!(ExecData, argv_len)));
    let truncated = field::<u32>(bytes, at(std::mem::offset_of!(ExecData, argv_truncated))) != 0;
    let name_at = at(std::mem::offset_of!(ExecData, filename));
    let name = &bytes[name_at..name_at + (filename_len as usize).min(FILENAME_LEN)];
    let argv_at = at(std::mem::offset_of!(ExecData, argv));
    let mut argv = split_argv(&bytes[argv_at..argv_at + (argv_len as usize).min(ARGV_LEN)]);
    if truncated && let Some(last) = argv.last_mut() {
        last.push('…');
    }
    Ok(Exec {
        ts_ns: header.ts_ns,
        tgid: header.tgid,
        ppid: field(bytes, at(std::mem::offset_of!(ExecData, ppid))),
        uid: header.uid,
        comm: comm(&header),
        filename: c_str_shared(name),
        argv,
        argv_truncated: truncated,
        start_ns: field(bytes, at(std::mem::offset_of!(ExecData, start_ns))),
        exe: field(bytes, at(std::mem::offset_of!(ExecData, exe))),
        cgroup_id: field(bytes, at(std::mem::offset_of!(ExecData, cgroup_id))),
    })
}

pub fn decode_fork(bytes: &[u8]) -> Result<Fork, DecodeError> {
    let ev: ForkEvent = read_exact(bytes, EventKind::Fork)?;
    Ok(Fork {
        ts_ns: ev.header.ts_ns,
        parent: ev.header.tgid,
        child: ev.data.child_tgid,
        child_start_ns: ev.data.child_start_ns,
        comm: RawComm(ev.header.comm),
    })
}

pub fn decode_exit(bytes: &[u8]) -> Result<Exit, DecodeError> {
    let ev: ExitEvent = read_exact(bytes, EventKind::Exit)?;
    Ok(Exit {
        ts_ns: ev.header.ts_ns,
        tgid: ev.header.tgid,
        start_ns: ev.data.start_ns,
        signal: (ev.data.exit_code & 0x7f) as u8,
    })
}

#[cfg(test)]
mod tests {
    use sentinel_common::events::exec::{ARGV_LEN, ExecData, ExitData, FILENAME_LEN, ForkData};

    use super::*;
    use crate::sensors::{
        KernelEvent, decode,
        tests::{as_bytes, header},
    };

    fn exec_event(filename: &str, argv: &[u8], truncated: bool) -> ExecEvent {
        let mut data = ExecData {
            ppid: 77,
            filename_len: filename.len() as u32,
            argv_len: argv.len() as u32,
            argv_truncated: truncated as u32,
            start_ns: 42_000_000,
            exe: ExeId {
                ino: 99,
                dev: 7,
                _pad: 0,
            },
            cgroup_id: 4321,
            filename: [0xAA; FILENAME_LEN], // garbage past the length, as in the kernel
            argv: [0xBB; ARGV_LEN],
        };
        data.filename[..filename.len()].copy_from_slice(filename.as_bytes());
        data.filename[filename.len()] = 0;
        data.argv[..argv.len()].copy_from_slice(argv);
        ExecEvent {
            header: header(EventKind::Exec, 4242, "true"),
            data,
        }
    }

    #[test]
    fn exec_round_trip() {
        let ev = exec_event("/bin/true", b"/bin/true\0--marker\0x y\0", false);
        let KernelEvent::Exec(e) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(e.tgid, 4242);
        assert_eq!(e.ppid, 77);
        assert_eq!(e.uid, 1000);
        assert_eq!(e.comm, "true");
        assert_eq!(&*e.filename, "/bin/true");
        assert_eq!(e.argv, ["/bin/true", "--marker", "x y"]);
        assert_eq!(e.start_ns, 42_000_000);
        assert_eq!((e.exe.ino, e.exe.dev), (99, 7));
        assert_eq!(e.cgroup_id, 4321);
        assert_eq!(e.ts_ns, 123_456_789);
    }

    #[test]
    fn what_the_process_chose_is_escaped() {
        let mut ev = exec_event(
            "/tmp/[x](http://evil.example)/\x1b[31mred\nx",
            b"sh\0line1\nline2\0\x1b[31m[x](http://evil.example)\0",
            false,
        );
        ev.header.comm[..6].copy_from_slice(b"a\nb\x1b[c");
        let e = decode_exec(&as_bytes(&ev)).unwrap();
        assert_eq!(e.comm, "a\\nb\\x1b[c");
        assert_eq!(
            &*e.filename,
            "/tmp/[x](http://evil.example)/\\x1b[31mred\\nx"
        );
        assert_eq!(
            e.argv,
            ["sh", "line1\\nline2", "\\x1b[31m[x](http://evil.example)"]
        );
    }

    #[test]
    fn truncated_argv_is_marked() {
        let ev = exec_event("/bin/echo", b"echo\0aaaa", true);
        let e = decode_exec(&as_bytes(&ev)).unwrap();
        assert_eq!(e.argv, ["echo", "aaaa…"]);
        assert!(e.argv_truncated);
    }

    #[test]
    fn lengths_past_the_buffer_are_clamped() {
        let mut ev = exec_event("/x", b"x\0", false);
        ev.data.argv_len = u32::MAX;
        ev.data.filename_len = u32::MAX;
        let e = decode_exec(&as_bytes(&ev)).unwrap();
        assert_eq!(&*e.filename, "/x");
        assert_eq!(e.argv.len(), 2); // "x" and the 0xBB filler, lossily decoded: no panic
    }

    #[test]
    fn finds_group_dead_offset() {
        let format = "name: sched_process_exit\nformat:\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(parse_field_offset(format, "group_dead"), 32);
        assert_eq!(parse_field_offset(format, "comm"), 8);
        assert_eq!(parse_field_offset(format, "nope"), 0);
    }

    #[test]
    fn fork_round_trip() {
        let ev = ForkEvent {
            header: header(EventKind::Fork, 10, "bash"),
            data: ForkData {
                child_tgid: 11,
                _pad: 0,
                child_start_ns: 99,
            },
        };
        let KernelEvent::Fork(f) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("not a fork");
        };
        assert_eq!(
            (f.parent, f.child, f.child_start_ns, &*f.comm.text()),
            (10, 11, 99, "bash")
        );
    }

    #[test]
    fn fork_and_exit_records_are_the_untimed_ones_exec_is_not() {
        let fork = ForkEvent {
            header: header(EventKind::Fork, 10, "bash"),
            data: ForkData {
                child_tgid: 11,
                _pad: 0,
                child_start_ns: 99,
            },
        };
        let exit = ExitEvent {
            header: header(EventKind::Exit, 12, "sleep"),
            data: ExitData {
                start_ns: 5,
                exit_code: 0,
                _pad: 0,
            },
        };
        for bytes in [as_bytes(&fork), as_bytes(&exit)] {
            let mut ev = decode(&bytes).unwrap();
            *ev.untimed().expect("unstamped by the kernel") = 7;
            assert_eq!(ev.ts_ns(), 7);
        }
        let mut exec = decode(&as_bytes(&exec_event("/bin/true", b"true\0", false))).unwrap();
        assert_eq!(exec.untimed(), None);
        assert_eq!(exec.ts_ns(), 123_456_789);
    }

    #[test]
    fn exit_round_trip() {
        let ev = ExitEvent {
            header: header(EventKind::Exit, 12, "sleep"),
            data: ExitData {
                start_ns: 5,
                exit_code: 0x80 | 9, // SIGKILL, core dumped
                _pad: 0,
            },
        };
        assert_eq!(
            decode(&as_bytes(&ev)).unwrap(),
            KernelEvent::Exit(Exit {
                ts_ns: 123_456_789,
                tgid: 12,
                start_ns: 5,
                signal: 9,
            })
        );
        // exit(3): status in the high byte, no signal.
        let ev = ExitEvent {
            data: ExitData {
                exit_code: 3 << 8,
                ..ev.data
            },
            ..ev
        };
        let KernelEvent::Exit(e) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("not an exit");
        };
        assert_eq!(e.signal, 0);
    }
}
