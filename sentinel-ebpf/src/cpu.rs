//! The `cpu` sensor: a software cpu-clock perf event on every CPU runs this program at a fixed
//! frequency and counts a sample for whichever process is on the CPU. The agent reads the
//! per-tgid counts and turns them into CPU %.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{map, perf_event},
    maps::{Array, PerCpuArray, PerCpuHashMap},
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

/// One bit per tgid (modulo `SAMPLED_BITS`), set when a process's first sample on a CPU
/// creates its entry in `CPU_SAMPLES`: the `exec` sensor's exit program looks the sample map
/// up only for a process whose bit is set ([`was_sampled`], which clears it). Most processes
/// never take a sample, and the lookup in the 16,384-bucket map was ~300 ns of an exit's
/// ~780 (bpf_stats, an exec storm; cache misses, mostly). Two sampled processes sharing a
/// bit: the first to exit clears it and the other's entry stays until the agent's gc drops
/// the entries of processes it no longer knows (`daemon/ticks.rs`), as it does for any entry
/// an exit missed. Plain loads and stores: a racing CPU can lose a bit the same way.
#[map]
static CPU_SAMPLED_TGIDS: Array<u32> = Array::with_max_entries(SAMPLED_BITS / 32, 0);

/// Bits in `CPU_SAMPLED_TGIDS`: 512 bytes, few enough to stay in cache.
const SAMPLED_BITS: u32 = 4096;

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
    if CPU_SAMPLES.insert(&tgid, &1, BPF_NOEXIST.into()).is_ok() {
        mark_sampled(tgid);
        return;
    }
    if bump(tgid) {
        return;
    }
    record_dropped(ctx, &CPU_LOST, "cpu");
}

/// The word of `CPU_SAMPLED_TGIDS` holding `tgid`'s bit, and the bit.
#[inline(always)]
fn sampled_bit(tgid: u32) -> (u32, u32) {
    let bit = tgid % SAMPLED_BITS;
    (bit / 32, 1 << (bit % 32))
}

#[inline(always)]
fn mark_sampled(tgid: u32) {
    let (word, bit) = sampled_bit(tgid);
    if let Some(w) = CPU_SAMPLED_TGIDS.get_ptr_mut(word) {
        // SAFETY: a plain u32 slot (see CPU_SAMPLED_TGIDS for races).
        unsafe { *w |= bit };
    }
}

/// Whether `tgid` may have an entry in `CPU_SAMPLES` (its bit was set); clears the bit.
#[inline(always)]
pub fn was_sampled(tgid: u32) -> bool {
    let (word, bit) = sampled_bit(tgid);
    let Some(w) = CPU_SAMPLED_TGIDS.get_ptr_mut(word) else {
        return true;
    };
    // SAFETY: a plain u32 slot (see CPU_SAMPLED_TGIDS for races).
    unsafe {
        if *w & bit == 0 {
            return false;
        }
        *w &= !bit;
    }
    true
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
