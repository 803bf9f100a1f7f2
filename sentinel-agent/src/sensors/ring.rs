//! Draining the one ring buffer the process-and-network records share, in the order they
//! were written: when the reader wakes (the kernel programs wake it only when it asked, see
//! `READER_ASLEEP` in sentinel-ebpf's `task.rs`), how records are decoded into batches that
//! never grow, and how the records the kernel leaves unstamped get their time.

use std::sync::{Arc, atomic::Ordering};

use aya::maps::{Array, MapData, RingBuf};
use sentinel_common::reader::{READER_IDLE, READER_TIMED};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tracing::{error, warn};

use super::{Counters, KernelEvent, decode};

/// How often the ring buffer is drained while records keep coming (the kernel does not wake
/// the reader for each one). A wake-up of a busy agent costs far more than its system calls,
/// most likely because the pipeline's code and data must come back into caches the workload
/// evicted in between: in the exec storm of `cargo xtask bench-cost` the agent's CPU per exec
/// fell by about a quarter from 40 ms to 100 ms, and no further at 250 ms. The first record
/// after a quiet spell wakes it at once; the buffer filling up (half full) wakes it early, so
/// a faster burst is drained sooner instead of lost.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// The drain after the one a wake-up started: soon, because a process's records come in quick
/// succession (fork, then exec a moment later), and an exec after a quiet spell should be
/// seen in a few milliseconds, not after a whole [`DRAIN_EVERY`].
const DRAIN_AFTER_WAKE: std::time::Duration = std::time::Duration::from_millis(4);

/// Most records a drain reserves room for up front.
const BATCH_RESERVE_MAX: usize = 4096;
/// Fewest: a batch is never grown (a regrowth copies every record read so far), so a drain
/// that finds more records than its batch holds hands it on full and reads on into another.
const BATCH_RESERVE_MIN: usize = 256;

/// The shared ring buffer and the kernel's switch saying which record may wake the reader
/// (`READER_ASLEEP` in sentinel-ebpf's `task.rs`, values in `sentinel_common::reader`).
pub struct Ring {
    pub(super) records: RingBuf<MapData>,
    pub(super) asleep: Array<MapData, u32>,
}

/// Now on the kernel records' clock (CLOCK_BOOTTIME), in ns.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// Decode the records waiting in `ring` into `batch` until it is full, counting each with its
/// sensor; true when it filled (more may wait). The records the kernel does not stamp
/// ([`KernelEvent::untimed`]) take the time of this read, which is after they were written
/// and before any record written after it was read.
fn read_all(
    ring: &mut RingBuf<MapData>,
    counters: &[Arc<Counters>],
    batch: &mut Vec<KernelEvent>,
) -> bool {
    let mut read_at = None;
    while batch.len() < batch.capacity() {
        let Some(item) = ring.next() else {
            return false;
        };
        match decode(&item) {
            Ok(mut ev) => {
                if let Some(ts) = ev.untimed() {
                    *ts = *read_at.get_or_insert_with(boot_ns);
                }
                if let Some(c) = counters.get(ev.sensor()) {
                    c.seen.fetch_add(1, Ordering::Relaxed);
                }
                batch.push(ev);
            }
            Err(e) => {
                if let Some(c) = counters.first() {
                    c.malformed.fetch_add(1, Ordering::Relaxed);
                }
                warn!("dropping a malformed kernel record: {e}");
            }
        }
    }
    true
}

/// Wait until the kernel wakes the reader (the next record when it was armed `READER_IDLE`,
/// the buffer filling when `READER_TIMED`; the kernel then sets it back to `READER_BUSY`), or until `timeout` when one is given. The readiness is consumed: the caller
/// drains next, so no record is left behind by clearing it.
async fn woken(fd: &mut AsyncFd<RingBuf<MapData>>, timeout: Option<std::time::Duration>) -> bool {
    let ready = async {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.clear_ready();
                true
            }
            Err(e) => {
                error!("exec/connect sensors: polling the ring buffer failed: {e}");
                false
            }
        }
    };
    match timeout {
        Some(t) => tokio::select! {
            ok = ready => ok,
            _ = tokio::time::sleep(t) => true,
        },
        None => ready.await,
    }
}

/// Read the shared ring until the agent stops, decoding each record and handing batches to
/// `tx` in ring order. `counters` are indexed like [`super::SENSORS`].
///
/// Records are submitted without a wake-up while the reader is busy, so a burst costs one
/// wake-up per [`DRAIN_EVERY`], not one per record: before sleeping on its timer the reader
/// arms `READER_TIMED` (a ring filling past half wakes it early, once); when a drain finds the
/// ring empty it arms `READER_IDLE` and sleeps with no timer until the next record wakes it:
/// an idle agent does not run at all, and a record after a quiet spell is read at once.
pub async fn drain(ring: Ring, tx: mpsc::Sender<Vec<KernelEvent>>, counters: Vec<Arc<Counters>>) {
    let Ring {
        records,
        mut asleep,
    } = ring;
    // SAFETY: the AsyncFd owns the ring buffer, hence its fd, and deregisters before dropping it.
    let mut fd = match unsafe { AsyncFd::register_with_interest(records, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            error!("exec/connect sensors: cannot poll their ring buffer: {e}");
            return;
        }
    };
    let mut armable = true;
    let mut just_woken = false;
    // Room for as many records as the recent drains found: a burst's batch is allocated once
    // and never grown. The estimate halves per smaller drain rather than dropping to it, so
    // the short drain soon after a wake-up does not leave the next full one in small batches
    // (callgrind of an exec storm: 21 regrowths in 28 drains, ~180 instructions per exec,
    // before the estimate; the regrowths left cost ~90 instructions per connect and ~250 per
    // exec before batches stopped growing).
    let mut expected = 0;
    let mut drained = 0;
    loop {
        let mut batch = Vec::with_capacity(expected.max(BATCH_RESERVE_MIN));
        if read_all(fd.get_mut(), &counters, &mut batch) {
            // Full: more may wait. Hand it on and read on, no sleep.
            drained += batch.len();
            if tx.send(batch).await.is_err() {
                return;
            }
            continue;
        }
        drained += batch.len();
        expected = drained.max(expected / 2).min(BATCH_RESERVE_MAX);
        drained = 0;
        if !batch.is_empty() {
            if tx.send(batch).await.is_err() {
                return; // the agent is stopping
            }
            let next = if just_woken {
                DRAIN_AFTER_WAKE
            } else {
                DRAIN_EVERY
            };
            just_woken = false;
            // Wake early only if the ring fills while the timer runs.
            arm(&mut asleep, READER_TIMED, &mut armable);
            if !woken(&mut fd, Some(next)).await {
                return;
            }
            continue;
        }
        // Quiet: ask for a wake-up with the next record, then take any record that came
        // between the drain above and the arming (it woke nobody) before sleeping.
        arm(&mut asleep, READER_IDLE, &mut armable);
        read_all(fd.get_mut(), &counters, &mut batch);
        if !batch.is_empty() {
            if tx.send(batch).await.is_err() {
                return;
            }
            continue;
        }
        let timeout = (!armable).then_some(DRAIN_EVERY);
        if !woken(&mut fd, timeout).await {
            return;
        }
        just_woken = true;
    }
}

/// Tell the kernel programs how the reader is about to wait (`sentinel_common::reader`); on
/// failure, stop asking and poll every [`DRAIN_EVERY`].
fn arm(asleep: &mut Array<MapData, u32>, state: u32, armable: &mut bool) {
    if *armable && let Err(e) = asleep.set(0, state, 0) {
        error!(
            "exec/connect sensors: cannot arm the kernel's wake-up ({e}): polling every {DRAIN_EVERY:?} instead"
        );
        *armable = false;
    }
}
