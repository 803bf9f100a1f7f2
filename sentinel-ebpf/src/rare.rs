//! The kernel programs' rare failures — a record dropped because the ring buffer was full, a
//! kernel read that failed, a socket of a family the sensor does not know — reported through
//! aya-log into the agent's log (target `sentinel::kernel`). Never on the hot path: only a failure
//! reaches this code, and a failure that repeats is logged the 1st, 2nd, 4th, 8th… time on
//! each CPU, so a storm of them (a flood filling the ring, a kernel whose layout changed)
//! costs one line per doubling, not one per event. The drop counters behind `sentinel status`
//! and the `blind` alert count every drop regardless.

use aya_ebpf::{EbpfContext, macros::map, maps::PerCpuArray};
use aya_log_ebpf::{debug, warn};

/// What went wrong; an index into [`RARE`].
#[derive(Clone, Copy)]
#[repr(u32)]
enum Rare {
    Dropped = 0,
    ReadFailed = 1,
    UnexpectedFamily = 2,
}

/// How many times each [`Rare`] failure happened, per CPU.
#[map]
static RARE: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// Count one `what`; its count on this CPU when that count is a power of two (time to log).
#[inline(always)]
fn due(what: Rare) -> Option<u64> {
    let slot = RARE.get_ptr_mut(what as u32)?;
    // SAFETY: per-CPU slot: only this CPU writes it while this program runs.
    let n = unsafe {
        *slot += 1;
        *slot
    };
    (n & (n - 1) == 0).then_some(n)
}

/// A record of `sensor` could not be delivered (ring buffer or map full): counted in
/// `counter` (read by the agent for `status` and `blind`) and logged.
#[inline(always)]
pub fn record_dropped<C: EbpfContext>(ctx: &C, counter: &PerCpuArray<u64>, sensor: &'static str) {
    if let Some(slot) = counter.get_ptr_mut(0) {
        // SAFETY: per-CPU slot: only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
    if let Some(n) = due(Rare::Dropped) {
        warn!(
            ctx,
            "{} sensor: buffer full, record dropped ({} dropped on this CPU so far)", sensor, n
        );
    }
}

/// A read of kernel memory for `what` failed although its offset is known: the record goes
/// out with that field zeroed.
#[inline(always)]
pub fn read_failed<C: EbpfContext>(ctx: &C, what: &'static str) {
    if let Some(n) = due(Rare::ReadFailed) {
        warn!(
            ctx,
            "kernel read of {} failed; the field is left zero ({} failed reads on this CPU)",
            what,
            n
        );
    }
}

/// A socket of address family `family`, which `sensor` does not decode: skipped.
#[inline(always)]
pub fn unexpected_family<C: EbpfContext>(ctx: &C, sensor: &'static str, family: u16) {
    if let Some(n) = due(Rare::UnexpectedFamily) {
        debug!(
            ctx,
            "{} sensor: skipped a socket of address family {} ({} on this CPU)", sensor, family, n
        );
    }
}
