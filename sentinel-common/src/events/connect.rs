//! Outbound TCP connections, IPv4 and IPv6, from the `connect` sensor.
//!
//! Emitted when a socket enters `SYN_SENT`, in the context of the connecting process, so the
//! header names who connected. Also `listen(2)`: a process that accepts connections.

use super::{Event, exec::ExeId};

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Addresses are 16 bytes for both families; an IPv4 address uses the first 4.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectData {
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Source port, host byte order (usually 0 this early: not bound yet).
    pub sport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The executable of the connecting process at connect time (with the header's comm:
    /// who connected, whatever it executes later).
    pub exe: ExeId,
}

/// The header's process called `listen(2)` on a socket: it accepts connections.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenData {
    /// The socket's file descriptor.
    pub fd: u32,
    pub _pad: u32,
}

pub type ConnectEvent = Event<ConnectData>;
pub type ListenEvent = Event<ListenData>;

const _: () = assert!(core::mem::size_of::<ConnectData>() == 56);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 104);
const _: () = assert!(core::mem::size_of::<ListenEvent>() == 56);

#[cfg(feature = "user")]
mod user {
    // SAFETY: integers and byte arrays only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::ConnectData {}
    unsafe impl aya::Pod for super::ConnectEvent {}
    unsafe impl aya::Pod for super::ListenData {}
    unsafe impl aya::Pod for super::ListenEvent {}
}
