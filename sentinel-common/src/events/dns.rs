//! DNS answers delivered to a process, from the `dns` sensor.
//!
//! A `cgroup_skb/ingress` program on the cgroup v2 root sees every packet delivered to a local
//! socket, loopback included (a stub resolver such as systemd-resolved's 127.0.0.53, a
//! resolver in a container). For a UDP datagram or TCP segment from port 53 to a socket a
//! process used to query port 53 it copies the DNS message here; the agent parses it. The
//! receiving process is the one that sent the query, recorded at `connect()`/`sendmsg()` time
//! (the packet itself is handled outside the process's context).
//!
//! A record is a [`DnsEvent`] (header and the fixed fields of [`DnsData`]) followed by the
//! message: the record is reserved with the smallest of [`DNS_PAYLOAD_CLASSES`] that holds
//! the message (a short answer does not take a 4 KiB slot of the ring), and `len` says how
//! many of those bytes are the message.

use super::Event;

/// Most DNS message bytes a record carries: the largest EDNS buffer size in common use
/// (answers over TCP or with EDNS may be longer; those are cut and `wire_len` says so).
pub const DNS_PAYLOAD_MAX: usize = 4096;

/// The payload sizes a record is reserved with (powers of two, so the kernel can bound a
/// copy's length with a mask), smallest first: 128 holds an answer with an address or two,
/// 512 a classic UDP answer, 2048 an EDNS one of 1232.
pub const DNS_PAYLOAD_CLASSES: [usize; 4] = [128, 512, 2048, DNS_PAYLOAD_MAX];

/// `IPPROTO_UDP`.
pub const DNS_UDP: u8 = 17;
/// `IPPROTO_TCP`: the message starts with its two-byte length.
pub const DNS_TCP: u8 = 6;

/// What one DNS answer's record says before the message. The header's `tgid`/`uid` are those
/// of the process that asked (pid 0 when unknown), its `comm` is empty.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsData {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// [`DNS_UDP`] or [`DNS_TCP`].
    pub protocol: u8,
    pub _pad: u8,
    /// Bytes after the record's head that hold the message (≤ [`DNS_PAYLOAD_MAX`]).
    pub len: u16,
    /// The message's length (the answer was cut when larger than `len`): for TCP its length
    /// prefix, for UDP the datagram's payload.
    pub wire_len: u16,
    /// The resolver that answered; an IPv4 address uses the first 4 bytes.
    pub server: [u8; 16],
}

/// A record's head; the message follows it.
pub type DnsEvent = Event<DnsData>;

/// A record as the kernel reserves it: the head and `N` bytes for the message.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsRecord<const N: usize> {
    pub head: DnsEvent,
    pub payload: [u8; N],
}

/// Who sent a query from a socket (by socket cookie), for the answer's record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsAsker {
    pub tgid: u32,
    pub uid: u32,
}

/// Whether a DNS message whose first 8 bytes (id, flags, question and answer counts) are
/// `head` can name anything: a response (QR set) without error (RCODE 0) that carries a
/// question and at least one answer record. The kernel copies only those: a failed or empty
/// answer (NXDOMAIN, the common AAAA answer with no address) costs no copy, and the agent
/// would learn nothing from it anyway.
#[inline(always)]
pub fn may_name(head: [u8; 8]) -> bool {
    let response = head[2] & 0x80 != 0;
    let no_error = head[3] & 0x0f == 0;
    let questions = head[4] | head[5] != 0;
    let answers = head[6] | head[7] != 0;
    response && no_error && questions && answers
}

const _: () = assert!(core::mem::size_of::<DnsData>() == 24);
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 72);
const _: () = assert!(core::mem::size_of::<DnsRecord<128>>() == 72 + 128);
const _: () = assert!(core::mem::size_of::<DnsAsker>() == 8);

#[cfg(feature = "user")]
mod user {
    // SAFETY: integers and byte arrays only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::DnsData {}
    unsafe impl aya::Pod for super::DnsEvent {}
    unsafe impl aya::Pod for super::DnsAsker {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 8 bytes of a message: id 0x1234, `flags`, `qd` questions, `an` answers.
    fn head(flags: u16, qd: u16, an: u16) -> [u8; 8] {
        let [f0, f1] = flags.to_be_bytes();
        let [q0, q1] = qd.to_be_bytes();
        let [a0, a1] = an.to_be_bytes();
        [0x12, 0x34, f0, f1, q0, q1, a0, a1]
    }

    #[test]
    fn only_answers_that_can_name_are_copied() {
        // A plain answer (QR, RD, RA; NOERROR), also with many records.
        assert!(may_name(head(0x8180, 1, 1)));
        assert!(may_name(head(0x8180, 1, 0x0100)));
        // Truncated (TC) but carrying records: copied, the agent takes what is whole.
        assert!(may_name(head(0x8380, 1, 2)));
        // A query.
        assert!(!may_name(head(0x0100, 1, 0)));
        assert!(!may_name(head(0x0100, 1, 1)));
        // NXDOMAIN, SERVFAIL, REFUSED.
        assert!(!may_name(head(0x8183, 1, 0)));
        assert!(!may_name(head(0x8182, 1, 1)));
        assert!(!may_name(head(0x8185, 1, 1)));
        // NODATA (the usual AAAA answer for an IPv4-only name), no question.
        assert!(!may_name(head(0x8180, 1, 0)));
        assert!(!may_name(head(0x8180, 0, 1)));
    }

    #[test]
    fn classes_are_powers_of_two_ending_at_the_maximum() {
        assert!(DNS_PAYLOAD_CLASSES.iter().all(|c| c.is_power_of_two()));
        assert!(DNS_PAYLOAD_CLASSES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(DNS_PAYLOAD_CLASSES.last(), Some(&DNS_PAYLOAD_MAX));
    }
}
