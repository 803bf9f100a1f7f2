//! The `cpu` sensor: a software cpu-clock perf event on every CPU runs this program at a fixed
//! frequency and counts a sample for whichever process is on the CPU. The agent reads the
//! per-tgid counts and turns them into CPU %.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{map, perf_event},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::PerfEventContext,
};
use sentinel_common::events::cpu::MAX_TRACKED;

use crate::{rare::record_dropped, task::current_tgid_unless_agent};

/// Samples per tgid, per CPU (each CPU's program only touches its own slot: no atomics). The
/// `exec` sensor removes a process's entry when it exits, so the agent needs no system call
/// per exit (the agent's periodic clean-up catches what that misses).
#[map]
pub static CPU_SAMPLES: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(MAX_TRACKED, 0);

/// Samples taken of any process but the agent, per CPU. Reading `CPU_SAMPLES` walks every
/// bucket of it (`MAX_TRACKED`), so the agent reads it only when this count moved.
#[map]
static CPU_SAMPLED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Samples dropped because `CPU_SAMPLES` was full.
#[map]
static CPU_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[perf_event]
pub fn cpu_perf_event(ctx: PerfEventContext) -> u32 {
    on_sample(&ctx);
    0
}

fn on_sample(ctx: &PerfEventContext) {
    let Some(tgid) = current_tgid_unless_agent() else {
        return;
    };
    if tgid == 0 {
        return; // idle
    }
    if let Some(taken) = CPU_SAMPLED.get_ptr_mut(0) {
        // SAFETY: this CPU's own slot.
        unsafe { *taken += 1 };
    }
    if bump(tgid) {
        return;
    }
    if CPU_SAMPLES.insert(&tgid, &1, BPF_NOEXIST.into()).is_ok() || bump(tgid) {
        return;
    }
    record_dropped(ctx, &CPU_LOST, "cpu");
}

/// Add one sample to an existing entry; false when `tgid` has none yet.
#[inline(always)]
fn bump(tgid: u32) -> bool {
    match CPU_SAMPLES.get_ptr_mut(&tgid) {
        Some(count) => {
            // SAFETY: this CPU's own slot.
            unsafe { *count += 1 };
            true
        }
        None => false,
    }
}
