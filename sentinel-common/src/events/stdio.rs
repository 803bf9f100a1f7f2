//! Standard input/output wired to a network peer, from the `stdio` sensor.
//!
//! Every classic reverse shell (bash `/dev/tcp`, python/perl `socket` + `dup2`, `nc -e`, php)
//! ends with a TCP socket on fd 0, 1 or 2 of the process that will run commands. The kernel
//! programs report exactly that — a `dup2`/`dup3` whose source is a TCP (or MPTCP) socket and
//! whose target is 0, 1 or 2, and, at every exec, a socket found on fd 0, 1 or 2 however it got
//! there (`socket()`, `dup()` or `fcntl(F_DUPFD)` after closing them) — with the socket's peer
//! read from the socket itself.

use super::Event;

/// A TCP socket was duplicated onto a standard stream, or found on some at exec.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StdioData {
    /// The socket's descriptor (`oldfd`; at exec, the lowest standard stream holding it).
    pub oldfd: u32,
    /// 0, 1 or 2 (`newfd`; at exec, as `oldfd`).
    pub newfd: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// The peer's port, host byte order.
    pub dport: u16,
    /// 0 for a `dup2`/`dup3`; at exec, the standard streams (bit `1 << fd`) holding the socket.
    pub exec_fds: u32,
    /// The peer's address; an IPv4 address uses the first 4 bytes.
    pub daddr: [u8; 16],
}

pub type StdioEvent = Event<StdioData>;

const _: () = assert!(core::mem::size_of::<StdioData>() == 32);
const _: () = assert!(core::mem::size_of::<StdioEvent>() == 80);

#[cfg(feature = "user")]
mod user {
    // SAFETY: integers and byte arrays only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::StdioData {}
    unsafe impl aya::Pod for super::StdioEvent {}
}
