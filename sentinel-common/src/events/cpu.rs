//! CPU sampling from the `cpu` sensor: a perf cpu-clock program on every CPU counts samples
//! per tgid in a per-CPU hash map; the agent turns the counts into CPU % per process.
//!
//! Nothing goes through a ring buffer here, so the only shared items are the map's limits.

/// Processes the sample map can hold; a sample for a new tgid beyond this is counted as lost.
pub const MAX_TRACKED: u32 = 16384;

/// Default sampling frequency per CPU (Hz). Odd, so it does not beat with timer ticks.
pub const DEFAULT_HZ: u64 = 99;
