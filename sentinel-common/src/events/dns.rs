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
//!
//! Over TCP a message may span several segments. The record of the segment that starts it
//! ([`DNS_START`]) carries what that segment holds; each later segment of the same message
//! comes as a record of its own ([`DNS_PART`]) with the bytes it adds and their `offset` in
//! the message. `flow` (the receiving socket's cookie) and `msg_seq` (the TCP sequence number
//! of the message's first byte) say which message a record belongs to; the agent puts the
//! pieces together (at most [`DNS_PAYLOAD_MAX`] bytes of a message are ever copied).

use super::Event;

/// Most DNS message bytes a record carries: the largest EDNS buffer size in common use
/// (answers over TCP or with EDNS may be longer; those are cut and `wire_len` says so).
pub const DNS_PAYLOAD_MAX: usize = 4096;

/// The payload sizes a record is reserved with (powers of two, so the kernel can bound a
/// copy's length with a mask), smallest first: 64 holds the usual answer of one address to a
/// short name (a 2.5-line record instead of 3.5 in the ring), 128 one with an address or two,
/// 512 a classic UDP answer, 2048 an EDNS one of 1232.
pub const DNS_PAYLOAD_CLASSES: [usize; 5] = [64, 128, 512, 2048, DNS_PAYLOAD_MAX];

/// `IPPROTO_UDP`.
pub const DNS_UDP: u8 = 17;
/// `IPPROTO_TCP`: the message starts with its two-byte length.
pub const DNS_TCP: u8 = 6;

/// [`DnsData::part`] of a record that starts a message (every UDP record).
pub const DNS_START: u8 = 0;
/// [`DnsData::part`] of a record that carries a later piece of a TCP message.
pub const DNS_PART: u8 = 1;

/// What one DNS answer's record says before the message. The header's `tgid`/`uid` are those
/// of the process that asked (pid 0 when unknown), its `comm` is empty.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsData {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// [`DNS_UDP`] or [`DNS_TCP`].
    pub protocol: u8,
    /// [`DNS_START`] or [`DNS_PART`] (TCP only).
    pub part: u8,
    /// Bytes after the record's head that hold the message (≤ [`DNS_PAYLOAD_MAX`]).
    pub len: u16,
    /// The message's length (the answer was cut when larger than `offset + len`): for TCP its
    /// length prefix, for UDP the datagram's payload.
    pub wire_len: u16,
    /// The resolver that answered; an IPv4 address uses the first 4 bytes.
    pub server: [u8; 16],
    /// TCP: the receiving socket's cookie (0 for UDP).
    pub flow: u64,
    /// TCP: the sequence number of the message's first byte, after its length prefix.
    pub msg_seq: u32,
    /// TCP: where the record's bytes sit in the message (0 for a start).
    pub offset: u32,
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

/// Who sent a query from a socket (kept in its socket storage), for the answer's record; for a TCP
/// socket also the message it is receiving, so the segments after the first are known.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsAsker {
    pub tgid: u32,
    pub uid: u32,
    /// TCP: the sequence number of the first byte of the last message seen starting (after
    /// its length prefix).
    pub msg_seq: u32,
    /// TCP: that message's length prefix; 0 while no message was seen starting.
    pub wire_len: u16,
    pub _pad: u16,
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

/// The part of a message that segment bytes `[seq, seq + len)` of a TCP stream hold, for the
/// message whose first byte is `msg_seq` and whose length prefix says `wire_len`, of which at
/// most [`DNS_PAYLOAD_MAX`] bytes are copied: `(offset in the segment, offset in the message,
/// length)`, or None when they hold none of it. Sequence numbers wrap.
#[inline(always)]
pub fn piece_of(seq: u32, len: u32, msg_seq: u32, wire_len: u16) -> Option<(u32, u32, u32)> {
    let want = (wire_len as u32).min(DNS_PAYLOAD_MAX as u32) as i64;
    // Where the segment starts relative to the message (negative: before it).
    let rel = seq.wrapping_sub(msg_seq) as i32 as i64;
    let from = rel.max(0);
    let to = (rel + len as i64).min(want);
    if from >= to {
        return None;
    }
    Some(((from - rel) as u32, from as u32, (to - from) as u32))
}

const _: () = assert!(core::mem::size_of::<DnsData>() == 40);
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 88);
const _: () = assert!(core::mem::size_of::<DnsRecord<128>>() == 88 + 128);
const _: () = assert!(core::mem::size_of::<DnsAsker>() == 16);

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
    fn a_segment_holds_the_part_of_the_message_it_overlaps() {
        // The segment that starts the message: its length prefix is not part of it.
        assert_eq!(piece_of(998, 360, 1000, 1000), Some((2, 0, 358)));
        // A middle segment, and the last one (the rest is the next message's).
        assert_eq!(piece_of(1358, 360, 1000, 1000), Some((0, 358, 360)));
        assert_eq!(piece_of(1718, 360, 1000, 1000), Some((0, 718, 282)));
        // Before or after the message: nothing.
        assert_eq!(piece_of(900, 100, 1000, 1000), None);
        assert_eq!(piece_of(2000, 100, 1000, 1000), None);
        // Only the prefix.
        assert_eq!(piece_of(998, 2, 1000, 1000), None);
        // Across the wrap of sequence numbers.
        let msg = u32::MAX - 99;
        assert_eq!(piece_of(msg + 50, 200, msg, 1000), Some((0, 50, 200)));
        // At most DNS_PAYLOAD_MAX bytes of a long message.
        assert_eq!(
            piece_of(1000 + 4000, 1000, 1000, u16::MAX),
            Some((0, 4000, DNS_PAYLOAD_MAX as u32 - 4000))
        );
        assert_eq!(piece_of(1000 + 5000, 1000, 1000, u16::MAX), None);
    }

    #[test]
    fn a_record_round_trips_through_its_bytes() {
        let mut record = DnsRecord::<128> {
            head: DnsEvent {
                header: crate::events::Header {
                    kind: crate::EventKind::Dns as u32,
                    pid: 7,
                    tgid: 7,
                    uid: 1000,
                    gid: 0,
                    _pad: 0,
                    ts_ns: 42,
                    comm: [0; 16],
                },
                data: DnsData {
                    family: 2,
                    protocol: DNS_TCP,
                    part: DNS_PART,
                    len: 3,
                    wire_len: 1000,
                    server: [198, 51, 100, 130, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    flow: 0x1122_3344_5566_7788,
                    msg_seq: 0xdead_beef,
                    offset: 358,
                },
            },
            payload: [0; 128],
        };
        record.payload[..3].copy_from_slice(b"abc");
        // SAFETY: a repr(C) value of integers and byte arrays, read back as the agent does.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&record as *const DnsRecord<128>).cast::<u8>(),
                core::mem::size_of::<DnsRecord<128>>(),
            )
        };
        // SAFETY: as many bytes as the type, unaligned read.
        let back: DnsRecord<128> = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let d = back.head.data;
        assert_eq!((d.family, d.protocol, d.part), (2, DNS_TCP, DNS_PART));
        assert_eq!((d.len, d.wire_len, d.offset), (3, 1000, 358));
        assert_eq!((d.flow, d.msg_seq), (0x1122_3344_5566_7788, 0xdead_beef));
        assert_eq!(&back.payload[..3], b"abc");
        assert_eq!(back.head.header.ts_ns, 42);
    }

    #[test]
    fn classes_are_powers_of_two_ending_at_the_maximum() {
        assert!(DNS_PAYLOAD_CLASSES.iter().all(|c| c.is_power_of_two()));
        assert!(DNS_PAYLOAD_CLASSES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(DNS_PAYLOAD_CLASSES.last(), Some(&DNS_PAYLOAD_MAX));
    }
}
