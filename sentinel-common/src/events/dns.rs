//! DNS answers delivered to a process, from the `dns` sensor.
//!
//! A `cgroup_skb/ingress` program on the cgroup v2 root sees every packet delivered to a local
//! socket, loopback included (a stub resolver such as systemd-resolved's 127.0.0.53, a
//! resolver in a container). For a UDP datagram or TCP segment from port 53 to a socket a
//! process used to query port 53 it copies the start of the DNS message here; the agent
//! parses it. The receiving process is the one that sent the query, recorded at
//! `connect()`/`sendmsg()` time (the packet itself is handled outside the process's context).

use super::Event;

/// Most DNS message bytes a record carries: a classic UDP answer's full size.
pub const DNS_PAYLOAD_MAX: usize = 512;

/// `IPPROTO_UDP`.
pub const DNS_UDP: u8 = 17;
/// `IPPROTO_TCP`: the message starts with its two-byte length.
pub const DNS_TCP: u8 = 6;

/// The start of one DNS message and who received it. The header's `tgid`/`uid` are those of
/// the process that asked (pid 0 when unknown), its `comm` is empty.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsData {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// [`DNS_UDP`] or [`DNS_TCP`].
    pub protocol: u8,
    pub _pad: u8,
    /// Bytes of `payload` that hold the message (≤ [`DNS_PAYLOAD_MAX`]).
    pub len: u16,
    /// The message's length on the wire (the answer was cut when larger than `len`).
    pub wire_len: u16,
    /// The resolver that answered; an IPv4 address uses the first 4 bytes.
    pub server: [u8; 16],
    /// The DNS message (for TCP, after its two-byte length prefix).
    pub payload: [u8; DNS_PAYLOAD_MAX],
}

pub type DnsEvent = Event<DnsData>;

/// Who sent a query from a socket (by socket cookie), for the answer's record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsAsker {
    pub tgid: u32,
    pub uid: u32,
}

const _: () = assert!(core::mem::size_of::<DnsData>() == 536);
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 584);
const _: () = assert!(core::mem::size_of::<DnsAsker>() == 8);

#[cfg(feature = "user")]
mod user {
    // SAFETY: integers and byte arrays only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::DnsData {}
    unsafe impl aya::Pod for super::DnsEvent {}
    unsafe impl aya::Pod for super::DnsAsker {}
}
