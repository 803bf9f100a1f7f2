//! What every sensor needs about the current task: the agent's own tgid (whose activity is
//! never reported), kernel struct offsets from the agent, the common record header, the one
//! ring buffer the process-and-network records share, and the per-sensor "could not deliver"
//! counters.
//!
//! Kernel structs are read two ways. From a pointer the verifier knows the type of (the
//! current task from `bpf_get_current_task_btf`, a `tp_btf` argument, and the struct pointers
//! read from those), [`load_field`] is a plain load: the offsets live in `.rodata`, which the
//! loader freezes, so the verifier sees constants and checks each load against the kernel's
//! BTF (a faulting load reads 0). Anything else (a pointer found in an array, a socket behind
//! `file->private_data`) goes through `bpf_probe_read_kernel` ([`read_field`]), a helper call
//! of about 30 ns.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
    macros::map,
    maps::{Array, RingBuf},
};
use sentinel_common::{
    EventKind, Header, KernelOffsets,
    events::exec::ExeId,
    reader::{READER_BUSY, READER_TIMED},
};

/// Exec, fork, exit, connect, listen and stdio records, in the order they happened: one
/// ring buffer (shared by every CPU) keeps a process's exec before its connect. The agent
/// may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

/// The agent's tgid, set by the loader: its own activity is not reported.
#[unsafe(no_mangle)]
static AGENT_TGID: Global<u32> = Global::new(0);

/// Unread bytes in a ring buffer above which even a quiet record wakes the agent (set by the
/// loader to half the ring buffer's size).
#[unsafe(no_mangle)]
static RING_WAKE_BYTES: Global<u64> = Global::new(128 * 1024);

/// `BPF_RB_NO_WAKEUP`: submit without waking the reader.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// `BPF_RB_FORCE_WAKEUP`: submit and wake the reader.
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `BPF_RB_AVAIL_DATA` for `bpf_ringbuf_query`.
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Slot 0 says how the agent's ring reader waits (values in `sentinel_common::reader`):
/// `READER_BUSY` while it reads and processes (no record wakes it), `READER_IDLE` while it
/// sleeps with no timer until the next record (its last drain found `EVENTS` empty),
/// `READER_TIMED` while it sleeps on its drain timer (a record wakes it only when the ring is
/// filling). The record that wakes the reader sets it back to `READER_BUSY`, so a wake-up is
/// paid at most once per time the reader goes to sleep.
#[map]
pub static READER_ASLEEP: Array<u32> = Array::with_max_entries(1, 0);

/// Submit flags for every record: wake the agent when it sleeps waiting for one (the first
/// record after a quiet spell: detection at once, no timer ticking while idle), or when it
/// sleeps on its drain timer while the buffer is filling (past `RING_WAKE_BYTES`, so a
/// faster burst is drained sooner instead of lost); otherwise let it take the record on its
/// next periodic drain, so a burst costs one wake-up per drain instead of one per record. A
/// wake-up is an `irq_work` (on a VM a self-IPI, a VM exit) paid by the process that wrote
/// the record. A reader that is already awake (reading, or waiting for its pipeline) is never
/// woken: the wake-ups a filling ring used to send it once a millisecond, useless then, cost
/// ~80 ns per DNS answer in a storm (bpf_stats of `dns_ingress`, see docs/architecture.md).
#[inline(always)]
pub fn submit_flags(ring: &RingBuf) -> u64 {
    let Some(state) = READER_ASLEEP.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP;
    };
    // SAFETY: a plain u32 slot; two CPUs racing here both wake the agent, which is harmless.
    unsafe {
        match *state {
            READER_BUSY => BPF_RB_NO_WAKEUP,
            READER_TIMED if ring.query(BPF_RB_AVAIL_DATA) < RING_WAKE_BYTES.load() => {
                BPF_RB_NO_WAKEUP
            }
            _ => {
                *state = READER_BUSY;
                BPF_RB_FORCE_WAKEUP
            }
        }
    }
}

/// Struct offsets read by the agent from the kernel's BTF.
#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::UNKNOWN);

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    OFFSETS.load()
}

/// The current task's tgid, or `None` when it is the agent itself.
#[inline(always)]
pub fn current_tgid_unless_agent() -> Option<u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        None
    } else {
        Some(tgid)
    }
}

/// Fill a record header from the current task.
#[inline(always)]
pub fn fill_header(header: &mut Header, kind: EventKind) {
    fill_ids_and_time(header, kind);
    let uid_gid = bpf_get_current_uid_gid();
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    set_comm(header, current_task());
}

/// Fill a record header for a new process: kind, the parent's ids and the name `task`
/// (the child, whose comm is its parent's copy) has; no time (the agent stamps it as it
/// reads the record), no uid or gid (the agent takes them from
/// the exec that follows, or from the parent it knows).
#[inline(always)]
pub fn fill_fork_header(header: &mut Header, kind: EventKind, task: *const u8) {
    fill_ids(header, kind);
    set_comm(header, task);
}

/// Kind, the current task's ids and the time; uid and gid zero (the callers above fill what
/// their record needs).
#[inline(always)]
fn fill_ids_and_time(header: &mut Header, kind: EventKind) {
    fill_ids(header, kind);
    // SAFETY: no arguments; reads a kernel clock.
    header.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
}

/// Kind and the current task's ids; uid, gid and time zero. A record without a time is
/// stamped by the agent when it reads it: the clock helper costs ~100 ns a call on the
/// reference VM, and a fork or an exit needs no better than the reader's few milliseconds.
#[inline(always)]
fn fill_ids(header: &mut Header, kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    header.kind = kind as u32;
    header.pid = pid_tgid as u32;
    header.tgid = (pid_tgid >> 32) as u32;
    header.uid = 0;
    header.gid = 0;
    header._pad = 0;
    header.ts_ns = 0;
}

/// Copy `task->comm` into the header with two plain loads (`task` typed for the verifier:
/// the current task, or a `tp_btf` argument): no `bpf_get_current_comm` call. Zeroes when
/// the offset is unknown. The kernel keeps the last byte NUL; a name changed meanwhile by
/// `prctl(PR_SET_NAME)` may come half old, half new, as with the helper.
#[inline(always)]
fn set_comm(header: &mut Header, task: *const u8) {
    let off = offsets().task_comm;
    let words: [u64; 2] = [
        load_field(task, off).unwrap_or(0),
        load_field(task, off + 8).unwrap_or(0),
    ];
    // SAFETY: the 16-byte comm field, 8-aligned (after `ts_ns`): two stores, not a memcpy.
    unsafe { core::ptr::write_volatile(header.comm.as_mut_ptr().cast::<[u64; 2]>(), words) };
}

/// Fill a record header with what a record about a process the agent already knows needs:
/// kind and ids; time, comm, uid and gid zeroed (two helper calls fewer).
#[inline(always)]
pub fn fill_lean_header(header: &mut Header, kind: EventKind) {
    fill_ids(header, kind);
    header.comm = [0; 16];
}

/// The current task, typed for the verifier (`bpf_get_current_task_btf`, Linux 5.11+): read
/// its fields with [`load_field`].
#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: no arguments; the task pointer is valid for the whole program run.
    unsafe { bpf_get_current_task_btf() as *const u8 }
}

/// Load a `T` at `base + offset`, where `base` is a pointer the verifier knows the kernel type
/// of and `offset` one of [`offsets`] (a constant to the verifier, which checks the load
/// against the kernel's BTF). `None` when the offset is unknown (0) or the base is null.
#[inline(always)]
pub fn load_field<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    if offset == 0 {
        return None;
    }
    load_at(base, offset)
}

/// [`load_field`] for offsets that may legitimately be 0 (`fdtable.max_fds`); `None` when the
/// base is null.
#[inline(always)]
pub fn load_at<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: the verifier admits only loads inside the field BTF places at `offset`, and the
    // JIT turns them into loads that read 0 instead of faulting.
    Some(unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) })
}

/// Read a `T` at `base + offset` in kernel memory; `None` when the offset is unknown (0), the
/// base is null, or the read faults.
#[inline(always)]
pub fn read_field<T>(base: *const u8, offset: u32) -> Option<T> {
    if offset == 0 || base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

/// Read a `T` at `base + offset` in kernel memory, for offsets that may legitimately be 0;
/// `None` when the base is null or the read faults.
#[inline(always)]
pub fn read_at<T>(base: *const u8, offset: usize) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset).cast::<T>()) }.ok()
}

/// Name the record after the process, not the thread: a connect from a worker thread of
/// `java` is java's (the group leader's comm), as `/proc/<pid>/comm` would say.
#[inline(always)]
pub fn use_process_comm(header: &mut Header) {
    let off = offsets();
    if header.pid == header.tgid || off.task_comm == 0 {
        return;
    }
    if let Some(leader) = load_field::<*const u8>(current_task(), off.task_group_leader) {
        // SAFETY: the helper checks the address and copies at most the 16-byte field.
        let src = leader.wrapping_add(off.task_comm as usize);
        if unsafe { bpf_probe_read_kernel_buf(src, &mut header.comm) }.is_err() {
            header.comm = [0; 16];
        }
    }
}

/// The executable the current task runs (`task->mm->exe_file->f_inode`): (inode, device).
/// Zeroes when unknown.
#[inline(always)]
pub fn current_exe() -> ExeId {
    match load_field::<*const u8>(current_task(), offsets().task_mm) {
        Some(mm) => exe_of_mm(mm),
        None => ExeId::default(),
    }
}

/// The executable of the address space `mm` (`mm->exe_file->f_inode`), for a caller that
/// has loaded `task->mm` already ([`load_field`]). Zeroes when unknown.
#[inline(always)]
pub fn exe_of_mm(mm: *const u8) -> ExeId {
    let off = offsets();
    let inode = load_field::<*const u8>(mm, off.mm_exe_file)
        .and_then(|file| load_field::<*const u8>(file, off.file_inode));
    let Some(inode) = inode else {
        return ExeId::default();
    };
    ExeId {
        ino: load_field(inode, off.inode_ino).unwrap_or(0),
        dev: load_field::<*const u8>(inode, off.inode_sb)
            .and_then(|sb| load_field(sb, off.sb_dev))
            .unwrap_or(0),
        _pad: 0,
    }
}
