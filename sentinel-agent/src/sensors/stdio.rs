//! The `stdio` sensor, userspace side: attaching `stdio_sys_enter_dup2`/`dup3`, and decoding
//! the records of those and of its check at exec (done by the exec sensor's program on
//! `sched_process_exec`, one program per exec instead of two) — a TCP socket duplicated onto
//! fd 0, 1 or 2, or found there at exec, with the socket's peer. Its
//! records count with the `exec` sensor in `sentinel status` (it watches processes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{Ebpf, programs::TracePoint};
use sentinel_common::{
    EventKind,
    events::{connect::AF_INET, stdio::StdioEvent},
};

use super::{DecodeError, SensorError, c_str, prog_err, program, read_exact};

const SENSOR: &str = "stdio";

/// A TCP socket was put on a standard stream of process `tgid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stdio {
    pub ts_ns: u64,
    pub tgid: u32,
    pub uid: u32,
    pub comm: String,
    /// The socket's descriptor and the standard stream (0, 1, 2) it now also is.
    pub oldfd: u32,
    pub newfd: u32,
    /// Found at exec (not a `dup2`): the standard streams (bit `1 << fd`) holding the socket.
    pub exec_fds: u8,
    /// The socket's peer.
    pub peer: IpAddr,
    pub dport: u16,
}

pub fn attach(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    for (program_name, category, event) in [
        ("stdio_sys_enter_dup2", "syscalls", "sys_enter_dup2"),
        ("stdio_sys_enter_dup3", "syscalls", "sys_enter_dup3"),
    ] {
        let tp: &mut TracePoint = program(ebpf, SENSOR, program_name)?;
        tp.load()
            .map_err(prog_err(SENSOR, format!("loading {program_name}")))?;
        tp.attach(category, event)
            .map_err(prog_err(SENSOR, format!("attaching to {category}/{event}")))?;
    }
    Ok(())
}

pub fn decode(bytes: &[u8]) -> Result<Stdio, DecodeError> {
    let ev: StdioEvent = read_exact(bytes, EventKind::Stdio)?;
    let d = &ev.data;
    let peer = if d.family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(
            d.daddr[0], d.daddr[1], d.daddr[2], d.daddr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(d.daddr))
    };
    Ok(Stdio {
        ts_ns: ev.header.ts_ns,
        tgid: ev.header.tgid,
        uid: ev.header.uid,
        comm: c_str(&ev.header.comm),
        oldfd: d.oldfd,
        newfd: d.newfd,
        exec_fds: (d.exec_fds & 0b111) as u8,
        peer,
        dport: d.dport,
    })
}

#[cfg(test)]
mod tests {
    use sentinel_common::events::{connect::AF_INET6, stdio::StdioData};

    use super::*;
    use crate::sensors::{
        KernelEvent,
        tests::{as_bytes, header},
    };

    fn event(family: u16, daddr: [u8; 16]) -> StdioEvent {
        StdioEvent {
            header: header(EventKind::Stdio, 31337, "python3"),
            data: StdioData {
                oldfd: 3,
                newfd: 1,
                family,
                dport: 4444,
                exec_fds: 0,
                daddr,
            },
        }
    }

    #[test]
    fn ipv4_round_trip() {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[198, 51, 100, 130]);
        let KernelEvent::Stdio(s) = crate::sensors::decode(&as_bytes(&event(AF_INET, d))).unwrap()
        else {
            panic!("not a stdio record");
        };
        assert_eq!(s.peer, "198.51.100.130".parse::<IpAddr>().unwrap());
        assert_eq!((s.tgid, s.oldfd, s.newfd, s.dport), (31337, 3, 1, 4444));
        assert_eq!((s.comm.as_str(), s.uid), ("python3", 1000));
    }

    #[test]
    fn ipv6_round_trip() {
        let d: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let s = decode(&as_bytes(&event(AF_INET6, d.octets()))).unwrap();
        assert_eq!(s.peer, IpAddr::V6(d));
    }

    #[test]
    fn wrong_size_is_an_error() {
        let bytes = as_bytes(&event(AF_INET, [0; 16]));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
