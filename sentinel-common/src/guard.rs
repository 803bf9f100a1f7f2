//! The connect guard's "in use" flags: slot 0 of the `GUARD_USED` array map, which the agent
//! sets (before its first insert into a guard map) so the kernel programs skip the hash
//! lookup while no address was ever blocked.

/// Set once `GUARD4` may hold an address.
pub const GUARD4_USED: u32 = 1;
/// Set once `GUARD6` may hold an address.
pub const GUARD6_USED: u32 = 2;
