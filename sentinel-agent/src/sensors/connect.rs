//! The `connect` sensor, userspace side: attaching `connect_cg4`/`connect_cg6` (or, without
//! cgroup v2, `connect_inet_sock_set_state`) and `connect_sys_enter_listen`, and decoding
//! their records (connects over IPv4 and IPv6, listens) into owned values. A connect record
//! from the cgroup programs is taken before the kernel picks the source address and port:
//! `saddr` is then unspecified unless the socket was bound first.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::{
    Ebpf,
    programs::{CgroupSockAddr, TracePoint, links::CgroupAttachMode},
};
use sentinel_common::{
    EventKind,
    events::{
        connect::{AF_INET, ConnectEvent, ListenEvent},
        exec::ExeId,
    },
};

use tracing::{error, info, warn};

use super::{DecodeError, SensorError, c_str, prog_err, program, read_exact};

const SENSOR: &str = "connect";

/// An outbound TCP connection attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub ts_ns: u64,
    pub tgid: u32,
    pub uid: u32,
    /// The connecting thread's comm.
    pub comm: String,
    /// 4 or 6.
    pub family: u8,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The executable of the connecting process when it connected.
    pub exe: ExeId,
}

/// A process called `listen(2)`: it accepts connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub ts_ns: u64,
    pub tgid: u32,
    pub comm: String,
    pub fd: u32,
}

/// Attach the connect programs: `cgroup/connect4` and `connect6` on the cgroup v2 root (one
/// run per connect), or, without a cgroup v2 hierarchy of the machine (none, or a container's
/// cgroup namespace), `sock/inet_sock_set_state` (a run on
/// every TCP state change); and the listen program.
pub fn attach(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    match attach_cgroup(ebpf) {
        Ok(root) => {
            info!(cgroup = %root.display(), "connects seen at connect() (cgroup connect4/connect6)")
        }
        Err(e) => {
            warn!("{e}; connects are seen through sock/inet_sock_set_state instead");
            attach_state_change(ebpf)?;
        }
    }
    // Without it web servers are known by name only: reported, not fatal.
    if let Err(e) = attach_listen(ebpf) {
        error!("{e}: processes that listen are not seen; lineage knows web servers by name only");
    }
    Ok(())
}

fn attach_cgroup(ebpf: &mut Ebpf) -> Result<PathBuf, SensorError> {
    let root = super::cgroup::root().ok_or(SensorError::NoCgroup2)?;
    // Programs on a cgroup see the processes below it only. In a container (a cgroup
    // namespace) the root mounted here is the container's: the tracepoint sees the machine.
    if !super::cgroup::is_machine_root(&root) {
        return Err(SensorError::NotMachineRoot(root));
    }
    for program_name in ["connect_cg4", "connect_cg6"] {
        let cgroup = std::fs::File::open(&root).map_err(|source| SensorError::Cgroup {
            path: root.clone(),
            source,
        })?;
        let p: &mut CgroupSockAddr = program(ebpf, SENSOR, program_name)?;
        p.load()
            .map_err(prog_err(SENSOR, format!("loading {program_name}")))?;
        // A bpf_link on a cgroup always runs beside other programs; the kernel wants flags 0.
        p.attach(cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(
                SENSOR,
                format!("attaching {program_name} to {}", root.display()),
            ))?;
    }
    Ok(root)
}

fn attach_state_change(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    let tp: &mut TracePoint = program(ebpf, SENSOR, "connect_inet_sock_set_state")?;
    tp.load()
        .map_err(prog_err(SENSOR, "loading connect_inet_sock_set_state"))?;
    tp.attach("sock", "inet_sock_set_state")
        .map_err(prog_err(SENSOR, "attaching to sock/inet_sock_set_state"))?;
    Ok(())
}

fn attach_listen(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    let tp: &mut TracePoint = program(ebpf, SENSOR, "connect_sys_enter_listen")?;
    tp.load()
        .map_err(prog_err(SENSOR, "loading connect_sys_enter_listen"))?;
    tp.attach("syscalls", "sys_enter_listen")
        .map_err(prog_err(SENSOR, "attaching to syscalls/sys_enter_listen"))?;
    Ok(())
}

pub fn decode_listen(bytes: &[u8]) -> Result<Listen, DecodeError> {
    let ev: ListenEvent = read_exact(bytes, EventKind::Listen)?;
    Ok(Listen {
        ts_ns: ev.header.ts_ns,
        tgid: ev.header.tgid,
        comm: c_str(&ev.header.comm),
        fd: ev.data.fd,
    })
}

pub(crate) fn addr(family: u16, bytes: [u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

pub fn decode(bytes: &[u8]) -> Result<Connect, DecodeError> {
    let ev: ConnectEvent = read_exact(bytes, EventKind::Connect)?;
    let d = &ev.data;
    Ok(Connect {
        ts_ns: ev.header.ts_ns,
        tgid: ev.header.tgid,
        uid: ev.header.uid,
        comm: c_str(&ev.header.comm),
        family: if d.family == AF_INET { 4 } else { 6 },
        saddr: addr(d.family, d.saddr),
        daddr: addr(d.family, d.daddr),
        sport: d.sport,
        dport: d.dport,
        exe: d.exe,
    })
}

#[cfg(test)]
mod tests {
    use sentinel_common::events::connect::{AF_INET6, ConnectData, ListenData};

    use super::*;
    use crate::sensors::{
        KernelEvent,
        tests::{as_bytes, header},
    };

    fn event(family: u16, saddr: [u8; 16], daddr: [u8; 16]) -> ConnectEvent {
        ConnectEvent {
            header: header(EventKind::Connect, 900, "curl"),
            data: ConnectData {
                family,
                dport: 443,
                sport: 0,
                _pad: 0,
                saddr,
                daddr,
                exe: ExeId {
                    ino: 4242,
                    dev: 0x80_0001,
                    _pad: 0,
                },
            },
        }
    }

    #[test]
    fn ipv4_round_trip() {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[203, 0, 113, 9]);
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&[198, 51, 100, 1]);
        let KernelEvent::Connect(c) =
            crate::sensors::decode(&as_bytes(&event(AF_INET, s, d))).unwrap()
        else {
            panic!("not a connect");
        };
        assert_eq!(c.family, 4);
        assert_eq!(c.daddr, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(c.saddr, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!((c.dport, c.tgid, c.comm.as_str()), (443, 900, "curl"));
        assert_eq!((c.exe.ino, c.exe.dev), (4242, 0x80_0001));
    }

    #[test]
    fn ipv6_round_trip() {
        let d: Ipv6Addr = "2001:db8::9".parse().unwrap();
        let c = decode(&as_bytes(&event(AF_INET6, [0; 16], d.octets()))).unwrap();
        assert_eq!(c.family, 6);
        assert_eq!(c.daddr, IpAddr::V6(d));
    }

    #[test]
    fn listen_round_trip() {
        let ev = ListenEvent {
            header: header(EventKind::Listen, 77, "php-fpm8.2"),
            data: ListenData { fd: 9, _pad: 0 },
        };
        let KernelEvent::Listen(l) = crate::sensors::decode(&as_bytes(&ev)).unwrap() else {
            panic!("not a listen");
        };
        assert_eq!((l.tgid, l.fd, l.comm.as_str()), (77, 9, "php-fpm8.2"));
        assert_eq!(l.ts_ns, 123_456_789);
    }
}
