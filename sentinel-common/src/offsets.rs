//! Kernel struct offsets the programs need, read by the agent from `/sys/kernel/btf/vmlinux`
//! at start-up and handed in as a global.
//!
//! Rust eBPF has no CO-RE relocations, and tracepoint fields do not carry everything (a
//! parent's tgid, a process's start time, its argv), so the few `task_struct` and `mm_struct`
//! fields we read are located through the running kernel's own BTF instead of being guessed.

/// Byte offsets of the fields read with `bpf_probe_read_kernel`. Zero means "unknown": the
/// programs then leave the dependent fields empty rather than read a wrong address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.real_parent` (a `task_struct *`).
    pub task_real_parent: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.mm` (a `mm_struct *`).
    pub task_mm: u32,
    /// `task_struct.start_boottime` (u64 ns since boot).
    pub task_start_boottime: u32,
    /// `mm_struct.arg_start` (unsigned long).
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end` (unsigned long).
    pub mm_arg_end: u32,
    /// Offset of `group_dead` in the `sched_process_exit` tracepoint record (Linux 6.x adds
    /// it). Zero when absent: the program then reports an exit when the group leader exits.
    pub tp_exit_group_dead: u32,
    /// `task_struct.exit_code` (int): how an exiting process ended (killed by a signal?).
    pub task_exit_code: u32,
}

impl KernelOffsets {
    /// All offsets unknown: the programs' default before the agent overrides it.
    pub const UNKNOWN: Self = Self {
        task_real_parent: 0,
        task_tgid: 0,
        task_pid: 0,
        task_mm: 0,
        task_start_boottime: 0,
        mm_arg_start: 0,
        mm_arg_end: 0,
        tp_exit_group_dead: 0,
        task_exit_code: 0,
    };
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 36);

#[cfg(feature = "user")]
mod user {
    // SAFETY: u32 fields only, no padding (size asserted above).
    unsafe impl aya::Pod for super::KernelOffsets {}
}
