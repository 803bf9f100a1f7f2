//! Standard input/output wired to a network peer, from the `stdio` sensor.
//!
//! Every classic reverse shell (bash `/dev/tcp`, python/perl `socket` + `dup2`, `nc -e`, php)
//! ends with a TCP socket duplicated onto fd 0, 1 or 2 of the process that will run commands.
//! The kernel program reports exactly that — a `dup2`/`dup3` whose source is a TCP socket and
//! whose target is 0, 1 or 2 — with the socket's peer read from the socket itself.

use super::Event;

/// A TCP socket was duplicated onto a standard stream.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StdioData {
    /// The socket's descriptor (`oldfd`).
    pub oldfd: u32,
    /// 0, 1 or 2 (`newfd`).
    pub newfd: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// The peer's port, host byte order.
    pub dport: u16,
    pub _pad: u32,
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
