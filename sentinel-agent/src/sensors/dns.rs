//! The `dns` sensor, userspace side: attaching the programs of `sentinel-ebpf`'s `dns.rs`
//! (the four `cgroup_sock_addr` programs that remember which socket asked port 53, and the
//! `cgroup_skb/ingress` program that copies the answers those sockets receive) to the cgroup
//! v2 root, and decoding their records. The answers are parsed in `enrich/names.rs`; here
//! they are only bytes. A failure to attach leaves connections without names and nothing
//! else: the agent runs on (see `sensors::load`).

use std::net::IpAddr;

use aya::{
    Ebpf,
    programs::{CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, links::CgroupAttachMode},
};
use sentinel_common::{
    EventKind,
    events::dns::{DNS_PAYLOAD_MAX, DNS_TCP, DnsEvent},
};
use tracing::{info, warn};

use super::{DecodeError, SensorError, connect::addr, prog_err, program, read_exact};

const SENSOR: &str = "dns";

/// The start of a DNS message delivered to a process.
#[derive(Debug, Clone, PartialEq)]
pub struct Dns {
    pub ts_ns: u64,
    /// The process that asked (0: unknown).
    pub tgid: u32,
    pub uid: u32,
    /// The resolver that answered.
    pub server: IpAddr,
    /// Whether it came over TCP.
    pub tcp: bool,
    /// The message bytes the kernel copied (at most `DNS_PAYLOAD_MAX`).
    pub message: Vec<u8>,
    /// The message was longer on the wire than what was copied.
    pub cut: bool,
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

pub fn decode(bytes: &[u8]) -> Result<Dns, DecodeError> {
    let ev: DnsEvent = read_exact(bytes, EventKind::Dns)?;
    let d = &ev.data;
    let len = (d.len as usize).min(DNS_PAYLOAD_MAX);
    Ok(Dns {
        ts_ns: ev.header.ts_ns,
        tgid: ev.header.tgid,
        uid: ev.header.uid,
        server: addr(d.family, d.server),
        tcp: d.protocol == DNS_TCP,
        message: d.payload[..len].to_vec(),
        cut: (d.wire_len as usize) > len,
    })
}

#[cfg(test)]
mod tests {
    use sentinel_common::events::{
        connect::{AF_INET, AF_INET6},
        dns::{DNS_UDP, DnsData},
    };

    use super::*;
    use crate::sensors::{
        KernelEvent,
        tests::{as_bytes, header},
    };

    fn event(family: u16, server: [u8; 16], message: &[u8], wire_len: u16) -> DnsEvent {
        let mut payload = [0u8; DNS_PAYLOAD_MAX];
        payload[..message.len()].copy_from_slice(message);
        DnsEvent {
            header: header(EventKind::Dns, 321, ""),
            data: DnsData {
                family,
                protocol: DNS_UDP,
                _pad: 0,
                len: message.len() as u16,
                wire_len,
                server,
                payload,
            },
        }
    }

    #[test]
    fn round_trip() {
        let mut server = [0u8; 16];
        server[..4].copy_from_slice(&[198, 51, 100, 53]);
        let ev = event(AF_INET, server, b"\x12\x34answer", 8);
        let KernelEvent::Dns(d) = crate::sensors::decode(&as_bytes(&ev)).unwrap() else {
            panic!("not a dns record");
        };
        assert_eq!(d.tgid, 321);
        assert_eq!(d.server, "198.51.100.53".parse::<IpAddr>().unwrap());
        assert_eq!(d.message, b"\x12\x34answer");
        assert!(!d.tcp && !d.cut);
    }

    #[test]
    fn a_cut_message_says_so_and_a_lying_length_is_capped() {
        let v6: std::net::Ipv6Addr = "2001:db8::53".parse().unwrap();
        let mut ev = event(AF_INET6, v6.octets(), &[7; DNS_PAYLOAD_MAX], 1400);
        let d = decode(&as_bytes(&ev)).unwrap();
        assert!(d.cut);
        assert_eq!(d.message.len(), DNS_PAYLOAD_MAX);
        assert_eq!(d.server, IpAddr::V6(v6));
        ev.data.len = u16::MAX;
        assert_eq!(
            decode(&as_bytes(&ev)).unwrap().message.len(),
            DNS_PAYLOAD_MAX
        );
    }
}
