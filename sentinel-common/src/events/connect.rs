//! Outbound TCP connections, IPv4 and IPv6, from the `connect` sensor.
//!
//! Emitted when a socket enters `SYN_SENT`, in the context of the connecting process, so the
//! header names who connected.

use super::Event;

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
}

pub type ConnectEvent = Event<ConnectData>;

const _: () = assert!(core::mem::size_of::<ConnectData>() == 40);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 88);

#[cfg(feature = "user")]
mod user {
    // SAFETY: integers and byte arrays only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::ConnectData {}
    unsafe impl aya::Pod for super::ConnectEvent {}
}
