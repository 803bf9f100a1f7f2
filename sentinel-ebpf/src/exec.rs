//! The `exec` sensor: process lineage. `sched_process_exec` says what ran and under which
//! parent; `sched_process_fork` (new processes only, not threads) and `sched_process_exit`
//! (whole processes only) let the agent keep an exact process tree.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_probe_read_user},
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, TracePointContext},
};
use sentinel_common::{
    EventKind,
    events::exec::{ARGV_LEN, ExeId, ExecEvent, ExitEvent, ForkEvent},
};

use crate::cpu::{CPU_SAMPLES, was_sampled};
use crate::rare::{read_failed, record_dropped};
use crate::stdio;
use crate::task::{
    EVENTS, current_task, current_tgid_unless_agent, exe_of_mm, fill_fork_header, fill_header,
    fill_lean_header, load_field, offsets, submit_flags,
};

/// Exec, fork, exit (and stdio) records dropped because `EVENTS` was full.
#[map]
pub static EXEC_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `sched_process_exec`: `__data_loc char[] filename` at offset 8.
const TP_EXEC_FILENAME_LOC: usize = 8;

/// `sched_process_exit`: `bool group_dead` at offset 32 (after comm, pid and prio) on the
/// kernels that have it (6.x). The agent reads the real offset from the format file; at this
/// one the flag is read without a helper call (`bpf_probe_read`, ~30 ns per thread exit).
const TP_EXIT_GROUP_DEAD: u32 = 32;

/// Also the `stdio` sensor's look at fd 0, 1 and 2 (`stdio::at_exec`): one program per exec
/// instead of two on the same tracepoint saves a dispatch and the agent check.
#[tracepoint]
pub fn exec_sched_process_exec(ctx: TracePointContext) -> u32 {
    if current_tgid_unless_agent().is_some() {
        on_exec(&ctx);
        stdio::at_exec(&ctx);
    }
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn exec_sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    on_fork(&ctx);
    0
}

#[tracepoint]
pub fn exec_sched_process_exit(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

#[inline(always)]
fn on_exec(ctx: &TracePointContext) {
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        record_dropped(ctx, &EXEC_LOST, "exec");
        return;
    };
    // SAFETY: the reservation is sized for an ExecEvent, which is plain integers and bytes;
    // every field the agent reads is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::Exec);
    let off = offsets();
    let task = current_task();
    let data = &mut event.data;

    let parent: Option<*const u8> = load_field(task, off.task_real_parent);
    data.ppid = match parent.and_then(|p| load_field::<u32>(p, off.task_tgid)) {
        Some(ppid) => ppid,
        None => {
            read_failed(ctx, "the parent's tgid");
            0
        }
    };
    data.start_ns = match load_field(task, off.task_start_boottime) {
        Some(start) => start,
        None => {
            read_failed(ctx, "the start time");
            0
        }
    };

    // SAFETY: a constant offset inside the record's format: a direct context load.
    let loc = unsafe {
        *(ctx.as_ptr() as *const u8)
            .add(TP_EXEC_FILENAME_LOC)
            .cast::<u32>()
    };
    let name = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    // SAFETY: the helper checks the address and bounds the copy by the buffer.
    data.filename_len = match unsafe { bpf_probe_read_kernel_str_bytes(name, &mut data.filename) } {
        Ok(bytes) => bytes.len() as u32,
        Err(_) => 0,
    };

    // SAFETY: a helper without arguments; the current task's cgroup v2 id.
    data.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    data.argv_len = 0;
    data.argv_truncated = 0;
    let mm: Option<*const u8> = load_field(task, off.task_mm);
    data.exe = mm.map_or(ExeId::default(), exe_of_mm);
    if let Some(mm) = mm {
        let (start, end) = arg_span(mm);
        if end > start {
            let mut len = end - start;
            if len > ARGV_LEN as u64 {
                len = ARGV_LEN as u64;
                data.argv_truncated = 1;
            }
            // SAFETY: len <= ARGV_LEN bytes into an ARGV_LEN buffer; the helper checks `start`.
            let ret = unsafe {
                bpf_probe_read_user(data.argv.as_mut_ptr().cast(), len as u32, start as *const _)
            };
            if ret == 0 {
                data.argv_len = len as u32;
            }
        }
    }
    entry.submit(submit_flags(&EVENTS));
}

/// `mm->arg_start` and `mm->arg_end`; zeroes when unknown.
#[inline(always)]
fn arg_span(mm: *const u8) -> (u64, u64) {
    let off = offsets();
    (
        load_field(mm, off.mm_arg_start).unwrap_or(0),
        load_field(mm, off.mm_arg_end).unwrap_or(0),
    )
}

fn on_fork(ctx: &BtfTracePointContext) {
    if current_tgid_unless_agent().is_none() {
        return;
    }
    let off = offsets();
    // sched_process_fork(struct task_struct *parent, struct task_struct *child): typed
    // arguments, so the child's fields are plain loads.
    let child: *const u8 = ctx.arg(1);
    let (Some(child_pid), Some(child_tgid)) = (
        load_field::<u32>(child, off.task_pid),
        load_field::<u32>(child, off.task_tgid),
    ) else {
        read_failed(ctx, "the new process's pid");
        return;
    };
    if child_pid != child_tgid {
        return; // a new thread, not a new process
    }
    let Some(mut entry) = EVENTS.reserve::<ForkEvent>(0) else {
        record_dropped(ctx, &EXEC_LOST, "exec");
        return;
    };
    // SAFETY: sized for a ForkEvent; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_fork_header(&mut event.header, EventKind::Fork, child);
    event.data.child_tgid = child_tgid;
    event.data._pad = 0;
    event.data.child_start_ns = load_field(child, off.task_start_boottime).unwrap_or(0);
    entry.submit(submit_flags(&EVENTS));
}

fn on_exit(ctx: &TracePointContext) {
    let off = offsets();
    let last_thread = match off.tp_exit_group_dead {
        0 => {
            let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
            pid_tgid as u32 == (pid_tgid >> 32) as u32
        }
        // Where today's kernels put it: read in place, a plain load. The verifier refuses a
        // context load at an offset added at run time (even a constant from `.rodata`), so
        // the offset must be a literal; the other arm is dead code it drops.
        TP_EXIT_GROUP_DEAD => {
            // SAFETY: the format file says `group_dead` is at this offset of the record.
            unsafe { *(ctx.as_ptr() as *const u8).add(TP_EXIT_GROUP_DEAD as usize) != 0 }
        }
        // SAFETY: the offset comes from this tracepoint's format file.
        at => unsafe { ctx.read_at::<u8>(at as usize) }.unwrap_or(0) != 0,
    };
    if !last_thread {
        return;
    }
    let Some(tgid) = current_tgid_unless_agent() else {
        return;
    };
    // Its CPU samples end with it (the agent read them at its last interval). Most processes
    // never took a sample: their bit in `CPU_SAMPLED_TGIDS` says so without touching the
    // sample map, and a lookup is cheaper than a delete that finds nothing.
    // SAFETY: the value is not kept.
    if was_sampled(tgid) && unsafe { CPU_SAMPLES.get(&tgid) }.is_some() {
        let _ = CPU_SAMPLES.remove(&tgid);
    }
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        record_dropped(ctx, &EXEC_LOST, "exec");
        return;
    };
    // SAFETY: sized for an ExitEvent; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    // Who it was is in the agent's tree already: no comm, no uid.
    fill_lean_header(&mut event.header, EventKind::Exit);
    let task = current_task();
    event.data.start_ns = load_field(task, off.task_start_boottime).unwrap_or(0);
    event.data.exit_code = load_field(task, off.task_exit_code).unwrap_or(0);
    event.data._pad = 0;
    entry.submit(submit_flags(&EVENTS));
}
