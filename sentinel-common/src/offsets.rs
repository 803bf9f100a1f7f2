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
    /// `mm_struct.exe_file` (a `file *`): the executable, for the exec identity.
    pub mm_exe_file: u32,
    /// `task_struct.files` (a `files_struct *`).
    pub task_files: u32,
    /// `files_struct.fdt` (a `fdtable *`).
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `fdtable.fd` (a `file **`).
    pub fdt_fd: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `file.private_data` (a `socket *` for a socket).
    pub file_private_data: u32,
    /// `inode.i_mode` (u16).
    pub inode_mode: u32,
    /// `inode.i_ino` (unsigned long).
    pub inode_ino: u32,
    /// `inode.i_sb` (a `super_block *`).
    pub inode_sb: u32,
    /// `super_block.s_dev` (dev_t, u32).
    pub sb_dev: u32,
    /// `socket.sk` (a `sock *`).
    pub socket_sk: u32,
    /// `sock_common.skc_family` (u16; `sock_common` opens `struct sock`).
    pub sk_family: u32,
    /// `sock_common.skc_daddr` (IPv4 peer). Legitimately 0 (the first field): the programs
    /// trust it when `sk_family` is known.
    pub sk_daddr: u32,
    /// `sock_common.skc_dport` (peer port, network order).
    pub sk_dport: u32,
    /// `sock_common.skc_v6_daddr` (IPv6 peer).
    pub sk_v6_daddr: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `task_struct.group_leader` (a `task_struct *`): whose comm names a process.
    pub task_group_leader: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `task_struct.exit_code` (int): how an exiting process ended (killed by a signal?).
    pub task_exit_code: u32,
    /// `socket_alloc.vfs_inode`: a socket's inode lies this far past its `struct socket`
    /// (`file.private_data`), a test for "is a socket" that costs one read of the file.
    pub socket_alloc_inode: u32,
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
        mm_exe_file: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_inode: 0,
        file_private_data: 0,
        inode_mode: 0,
        inode_ino: 0,
        inode_sb: 0,
        sb_dev: 0,
        socket_sk: 0,
        sk_family: 0,
        sk_daddr: 0,
        sk_dport: 0,
        sk_v6_daddr: 0,
        sk_protocol: 0,
        task_group_leader: 0,
        task_comm: 0,
        task_exit_code: 0,
        socket_alloc_inode: 0,
    };
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 116);

#[cfg(feature = "user")]
mod user {
    // SAFETY: u32 fields only, no padding (size asserted above).
    unsafe impl aya::Pod for super::KernelOffsets {}
}
