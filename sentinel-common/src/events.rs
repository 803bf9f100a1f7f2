//! The one event shape every sensor writes to the shared ring buffer: `Event<T> { header, data }`.
//! Exec, fork, exit, connect, listen, stdio and dns records share one ring, so the agent reads a
//! process's records in the order they happened.
//!
//! The header says which sensor and which task produced the record; `EventKind` numbers are
//! part of the wire format and are never reused.

pub mod connect;
pub mod cpu;
pub mod dns;
pub mod exec;
pub mod stdio;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// What a ring-buffer record carries. Numbers are stable: never renumber or reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A process replaced its image (`sched_process_exec`).
    Exec = 1,
    /// A new process (not a thread) was created (`sched_process_fork`).
    Fork = 2,
    /// A whole process ended (`sched_process_exit` with `group_dead`).
    Exit = 3,
    /// An outbound TCP connection started (`inet_sock_set_state` → `SYN_SENT`).
    Connect = 4,
    /// A process called `listen(2)` (TCP or unix stream): it accepts connections.
    Listen = 5,
    /// A process put a TCP socket on its standard input, output or error (`dup2`/`dup3`).
    Stdio = 6,
    /// A DNS answer was delivered to a process's socket (`cgroup_skb/ingress`).
    Dns = 7,
}

impl EventKind {
    /// The kind for a raw header value, if it is one we know.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Exec),
            2 => Some(Self::Fork),
            3 => Some(Self::Exit),
            4 => Some(Self::Connect),
            5 => Some(Self::Listen),
            6 => Some(Self::Stdio),
            7 => Some(Self::Dns),
            _ => None,
        }
    }
}

/// Who did it and when: filled from the current task by every program.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Thread id of the current task.
    pub pid: u32,
    /// Process id (thread-group id) of the current task.
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included (CLOCK_BOOTTIME).
    /// 0 in fork, exit and DNS records: the agent stamps those when it reads them.
    pub ts_ns: u64,
    /// The current task's comm, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// A record as it sits in a ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event<T> {
    pub header: Header,
    pub data: T,
}

const _: () = assert!(core::mem::size_of::<Header>() == 48);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data: integers and byte arrays, no padding (size asserted above).
    unsafe impl aya::Pod for super::Header {}
}
