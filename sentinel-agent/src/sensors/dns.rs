//! The `dns` sensor, userspace side: attaching the programs of `sentinel-ebpf`'s `dns.rs`
//! (the four `cgroup_sock_addr` programs that remember which socket asked port 53, and the
//! `cgroup_skb/ingress` program that copies the answers those sockets receive) to the cgroup
//! v2 root, and decoding their records. The answers are put together (a TCP message in
//! several segments comes in several records) and parsed in `enrich/names`; here they are
//! only bytes. A failure to attach leaves connections without names and nothing
//! else: the agent runs on (see `sensors::load`).

use std::net::IpAddr;

use aya::{
    Ebpf,
    programs::{CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, links::CgroupAttachMode},
};
use sentinel_common::{
    EventKind,
    events::dns::{DNS_PART, DNS_PAYLOAD_MAX, DNS_TCP, DnsEvent},
};
use tracing::{info, warn};

use super::{DecodeError, SensorError, connect::addr, prog_err, program, read_exact};

const SENSOR: &str = "dns";

/// A DNS message delivered to a process, or (TCP) a piece of one.
#[derive(Debug, Clone, PartialEq)]
pub struct Dns {
    /// When the agent read the record (the kernel leaves it unstamped).
    pub ts_ns: u64,
    /// The process that asked (0: unknown).
    pub tgid: u32,
    pub uid: u32,
    /// The resolver that answered.
    pub server: IpAddr,
    /// Whether it came over TCP.
    pub tcp: bool,
    /// The message bytes the kernel copied (at most `DNS_PAYLOAD_MAX`): from the start of the
    /// message, or for a TCP piece from `offset`.
    pub message: Vec<u8>,
    /// The message was longer on the wire than what this record holds of it.
    pub cut: bool,
    /// TCP: which message of which socket the bytes belong to, and where they sit in it.
    pub stream: Option<Piece>,
}

/// Where a TCP record's bytes belong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The receiving socket's cookie.
    pub flow: u64,
    /// The TCP sequence number of the message's first byte.
    pub msg_seq: u32,
    /// The message's length prefix.
    pub wire_len: u16,
    /// Where the bytes sit in the message (0: the record of the segment that started it).
    pub offset: u32,
    /// A later segment's bytes (or a retransmission's), not the start.
    pub later: bool,
}

/// Attach the asker programs and the ingress program to the cgroup v2 root.
pub fn attach(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    let root = super::cgroup::root().ok_or(SensorError::NoCgroup2)?;
    if !super::cgroup::is_machine_root(&root) {
        warn!(
            cgroup = %root.display(),
            "dns sensor: the cgroup v2 root is a cgroup namespace's: only the answers of the processes below it are seen"
        );
    }
    let open = || {
        std::fs::File::open(&root).map_err(|source| SensorError::Cgroup {
            path: root.clone(),
            source,
        })
    };
    for name in [
        "dns_connect4",
        "dns_connect6",
        "dns_sendmsg4",
        "dns_sendmsg6",
    ] {
        let p: &mut CgroupSockAddr = program(ebpf, SENSOR, name)?;
        p.load()
            .map_err(prog_err(SENSOR, format!("loading {name}")))?;
        // A bpf_link on a cgroup runs beside the other programs there (the connect sensor,
        // the connect guard); the kernel wants flags 0.
        p.attach(open()?, CgroupAttachMode::Single)
            .map_err(prog_err(SENSOR, format!("attaching {name}")))?;
    }
    let p: &mut CgroupSkb = program(ebpf, SENSOR, "dns_ingress")?;
    p.load().map_err(prog_err(SENSOR, "loading dns_ingress"))?;
    p.attach(
        open()?,
        CgroupSkbAttachType::Ingress,
        CgroupAttachMode::Single,
    )
    .map_err(prog_err(SENSOR, "attaching dns_ingress"))?;
    info!(cgroup = %root.display(), "dns answers seen at socket delivery (cgroup_skb ingress)");
    Ok(())
}

/// A record: its fixed head, then the message in the room the kernel reserved for it (the
/// smallest of `DNS_PAYLOAD_CLASSES` that held it); `len` is trusted only within that room.
pub fn decode(bytes: &[u8]) -> Result<Dns, DecodeError> {
    let head_len = size_of::<DnsEvent>();
    if bytes.len() < head_len {
        return Err(DecodeError::Size {
            kind: EventKind::Dns,
            len: bytes.len(),
            want: head_len,
        });
    }
    let (head, room) = bytes.split_at(head_len);
    let ev: DnsEvent = read_exact(head, EventKind::Dns)?;
    let d = &ev.data;
    let len = (d.len as usize).min(room.len()).min(DNS_PAYLOAD_MAX);
    let tcp = d.protocol == DNS_TCP;
    Ok(Dns {
        ts_ns: ev.header.ts_ns,
        tgid: ev.header.tgid,
        uid: ev.header.uid,
        server: addr(d.family, d.server),
        tcp,
        message: room[..len].to_vec(),
        cut: (d.wire_len as usize) > (d.offset as usize).saturating_add(len),
        stream: tcp.then_some(Piece {
            flow: d.flow,
            msg_seq: d.msg_seq,
            wire_len: d.wire_len,
            offset: d.offset,
            later: d.part == DNS_PART,
        }),
    })
}

#[cfg(test)]
mod tests {
    use sentinel_common::events::{
        connect::{AF_INET, AF_INET6},
        dns::{DNS_PAYLOAD_CLASSES, DNS_UDP, DnsData, DnsRecord},
    };

    use super::*;
    use crate::sensors::{
        KernelEvent,
        tests::{as_bytes, header},
    };

    /// A record as the kernel reserves it, with room for `N` bytes.
    fn record<const N: usize>(
        family: u16,
        server: [u8; 16],
        message: &[u8],
        wire_len: u16,
    ) -> Vec<u8> {
        record_with::<N>(
            DnsData {
                family,
                protocol: DNS_UDP,
                part: 0,
                len: message.len() as u16,
                wire_len,
                server,
                flow: 0,
                msg_seq: 0,
                offset: 0,
            },
            message,
        )
    }

    fn record_with<const N: usize>(data: DnsData, message: &[u8]) -> Vec<u8> {
        let mut payload = [0u8; N];
        payload[..message.len()].copy_from_slice(message);
        let head = DnsEvent {
            header: header(EventKind::Dns, 321, ""),
            data,
        };
        let mut bytes = as_bytes(&head);
        bytes.extend_from_slice(&payload);
        assert_eq!(bytes.len(), size_of::<DnsRecord<N>>());
        bytes
    }

    #[test]
    fn round_trip() {
        let mut server = [0u8; 16];
        server[..4].copy_from_slice(&[198, 51, 100, 53]);
        let bytes = record::<{ DNS_PAYLOAD_CLASSES[0] }>(AF_INET, server, b"\x12\x34answer", 8);
        let KernelEvent::Dns(d) = crate::sensors::decode(&bytes).unwrap() else {
            panic!("not a dns record");
        };
        assert_eq!(d.tgid, 321);
        assert_eq!(d.server, "198.51.100.53".parse::<IpAddr>().unwrap());
        assert_eq!(d.message, b"\x12\x34answer");
        assert!(!d.tcp && !d.cut);
        assert_eq!(d.stream, None);
    }

    #[test]
    fn a_later_tcp_piece_says_where_it_belongs() {
        let bytes = record_with::<{ DNS_PAYLOAD_CLASSES[2] }>(
            DnsData {
                family: AF_INET,
                protocol: DNS_TCP,
                part: DNS_PART,
                len: 360,
                wire_len: 1000,
                server: [0; 16],
                flow: 77,
                msg_seq: 5000,
                offset: 358,
            },
            &[9; 360],
        );
        let d = decode(&bytes).unwrap();
        assert!(d.tcp && d.cut);
        assert_eq!(d.message.len(), 360);
        assert_eq!(
            d.stream,
            Some(Piece {
                flow: 77,
                msg_seq: 5000,
                wire_len: 1000,
                offset: 358,
                later: true
            })
        );
    }

    #[test]
    fn a_long_message_comes_whole_in_the_largest_class() {
        let message = vec![7u8; 3000];
        let bytes = record::<DNS_PAYLOAD_MAX>(AF_INET, [0; 16], &message, 3000);
        let d = decode(&bytes).unwrap();
        assert_eq!(d.message, message);
        assert!(!d.cut);
    }

    #[test]
    fn a_cut_message_says_so_and_a_lying_length_is_capped() {
        let v6: std::net::Ipv6Addr = "2001:db8::53".parse().unwrap();
        let mut bytes =
            record::<DNS_PAYLOAD_MAX>(AF_INET6, v6.octets(), &[7; DNS_PAYLOAD_MAX], 9000);
        let d = decode(&bytes).unwrap();
        assert!(d.cut);
        assert_eq!(d.message.len(), DNS_PAYLOAD_MAX);
        assert_eq!(d.server, IpAddr::V6(v6));
        // A length beyond the record's room is held to the room.
        let len_at = std::mem::offset_of!(DnsEvent, data) + std::mem::offset_of!(DnsData, len);
        bytes[len_at..len_at + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(decode(&bytes).unwrap().message.len(), DNS_PAYLOAD_MAX);
        let mut small = record::<{ DNS_PAYLOAD_CLASSES[0] }>(AF_INET6, v6.octets(), &[1; 20], 20);
        small[len_at..len_at + 2].copy_from_slice(&4000u16.to_ne_bytes());
        assert_eq!(
            decode(&small).unwrap().message.len(),
            DNS_PAYLOAD_CLASSES[0]
        );
        // A record shorter than its head is refused.
        assert!(decode(&small[..40]).is_err());
    }
}
