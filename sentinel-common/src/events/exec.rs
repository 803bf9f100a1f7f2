//! Process lineage: exec, fork and exit records from the `exec` sensor.
//!
//! Exec carries what ran (filename, bounded argv) and who its parent is; fork and exit let the
//! agent keep its process tree exact without polling `/proc`. Processes are identified by
//! (tgid, start time), never by pid alone: pids are reused.

use super::Event;

/// Bytes of the executed file's path kept (`filename` of `sched_process_exec`).
pub const FILENAME_LEN: usize = 256;
/// Bytes of the NUL-separated argv kept (read from the new image's `mm->arg_start`).
pub const ARGV_LEN: usize = 512;

/// A process replaced its image.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecData {
    /// Thread-group id of the real parent.
    pub ppid: u32,
    /// Bytes used in `filename`, without the trailing NUL.
    pub filename_len: u32,
    /// Bytes used in `argv` (NUL-separated arguments).
    pub argv_len: u32,
    /// 1 when argv was longer than [`ARGV_LEN`] and was cut.
    pub argv_truncated: u32,
    /// The process's `start_boottime` in nanoseconds since boot.
    pub start_ns: u64,
    /// The new image's identity: see [`ExeId`].
    pub exe: ExeId,
    /// The process's cgroup v2 id (`bpf_get_current_cgroup_id`: the kernfs inode of its
    /// cgroup directory); the agent resolves it to a container, once per cgroup.
    pub cgroup_id: u64,
    pub filename: [u8; FILENAME_LEN],
    pub argv: [u8; ARGV_LEN],
}

/// Which executable file a process runs (`mm->exe_file`): device and inode as the kernel
/// numbers them. Zero when unknown (a kernel thread, or offsets missing).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExeId {
    /// The inode number.
    pub ino: u64,
    /// The kernel's `dev_t` (major << 20 | minor).
    pub dev: u32,
    pub _pad: u32,
}

/// A new process was created by the header's task.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkData {
    /// Process id of the child.
    pub child_tgid: u32,
    pub _pad: u32,
    /// The child's `start_boottime` in nanoseconds since boot.
    pub child_start_ns: u64,
}

/// The header's process ended (its last thread exited).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitData {
    /// The process's `start_boottime`, to tell it from a later process with the same pid.
    pub start_ns: u64,
    /// `task_struct.exit_code` of the last thread: `status << 8` after `exit(status)`, or the
    /// number of the signal that killed it in the low 7 bits (0x80: core dumped).
    pub exit_code: u32,
    pub _pad: u32,
}

pub type ExecEvent = Event<ExecData>;
pub type ForkEvent = Event<ForkData>;
pub type ExitEvent = Event<ExitData>;

const _: () = assert!(core::mem::size_of::<ExeId>() == 16);
const _: () = assert!(core::mem::size_of::<ExecData>() == 48 + FILENAME_LEN + ARGV_LEN);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 48 + 816);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 64);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 64);

#[cfg(feature = "user")]
mod user {
    // SAFETY: integers and byte arrays only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::ExeId {}
    unsafe impl aya::Pod for super::ExecData {}
    unsafe impl aya::Pod for super::ForkData {}
    unsafe impl aya::Pod for super::ExitData {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ForkEvent {}
    unsafe impl aya::Pod for super::ExitEvent {}
}
