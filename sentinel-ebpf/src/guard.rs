//! The in-kernel connect guard: `cgroup/connect4` and `cgroup/connect6` programs on the
//! cgroup v2 root refuse `connect()` (EPERM) to an address the agent has blocked, before a
//! packet leaves. The agent mirrors its nftables block sets into these maps; nftables stays
//! the authority that outlives the agent.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::{cgroup_sock_addr, map},
    maps::{Array, HashMap},
    programs::SockAddrContext,
};
use sentinel_common::guard::{GUARD4_USED, GUARD6_USED};

/// Blocked IPv4 addresses (network byte order, as in `bpf_sock_addr.user_ip4`) → expiry in
/// `CLOCK_BOOTTIME` ns.
#[map]
static GUARD4: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

/// Blocked IPv6 addresses (`bpf_sock_addr.user_ip6`) → expiry in `CLOCK_BOOTTIME` ns.
#[map]
static GUARD6: HashMap<[u32; 4], u64> = HashMap::with_max_entries(65536, 0);

/// Slot 0: which of the maps the agent has ever put an address in (`GUARD4_USED`,
/// `GUARD6_USED`), set before the first insert and never cleared. A connect on a host that
/// blocks nothing (nearly always) costs an array load (inlined by the verifier) instead of a
/// hash lookup in an empty 65,536-bucket map (~27 ns, bpf_stats).
#[map]
static GUARD_USED: Array<u32> = Array::with_max_entries(1, 0);

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// Whether the agent has put any address in the map `bit` names.
#[inline(always)]
fn used(bit: u32) -> bool {
    match GUARD_USED.get(0) {
        Some(&flags) => flags & bit != 0,
        None => true,
    }
}

/// Whether the guard refuses connects to `addr` (`user_ip4`) now: the `connect` sensor does
/// not report a connect that never happens. Empty maps (no guard) refuse nothing.
#[inline(always)]
pub fn refuses4(addr: u32) -> bool {
    verdict4(addr) == DENY
}

/// [`refuses4`] for `user_ip6`.
#[inline(always)]
pub fn refuses6(addr: [u32; 4]) -> bool {
    verdict6(addr) == DENY
}

#[inline(always)]
fn verdict4(addr: u32) -> i32 {
    if !used(GUARD4_USED) {
        return ALLOW;
    }
    // SAFETY: the value is a plain u64 read once.
    verdict(unsafe { GUARD4.get(&addr) })
}

#[inline(always)]
fn verdict6(addr: [u32; 4]) -> i32 {
    if !used(GUARD6_USED) {
        return ALLOW;
    }
    // SAFETY: the value is a plain u64 read once.
    verdict(unsafe { GUARD6.get(&addr) })
}

#[inline(always)]
fn verdict(expires: Option<&u64>) -> i32 {
    match expires {
        // SAFETY: no arguments; reads a kernel clock.
        Some(&at) if at > unsafe { bpf_ktime_get_boot_ns() } => DENY,
        _ => ALLOW,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn guard_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr to this program type.
    verdict4(unsafe { (*ctx.sock_addr).user_ip4 })
}

#[cgroup_sock_addr(connect6)]
pub fn guard_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above; user_ip6 is read as four aligned words.
    let addr = unsafe {
        let s = &*ctx.sock_addr;
        [s.user_ip6[0], s.user_ip6[1], s.user_ip6[2], s.user_ip6[3]]
    };
    verdict6(addr)
}
