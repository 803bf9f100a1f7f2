//! How the agent's ring reader waits, as it tells the kernel programs in slot 0 of the
//! `READER_ASLEEP` map (sentinel-ebpf's `task.rs`): which record, if any, should wake it.

/// Reading or processing records: no record wakes it (it drains again on its own).
pub const READER_BUSY: u32 = 0;
/// Asleep with no timer (its last drain found the ring empty): the next record wakes it.
pub const READER_IDLE: u32 = 1;
/// Asleep on its drain timer: a record wakes it only when the ring is filling (past the
/// wake mark the loader sets, half the ring).
pub const READER_TIMED: u32 = 2;
