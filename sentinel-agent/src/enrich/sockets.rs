//! The host's ESTABLISHED TCP connections to given local ports (socket inode → peer), asked of
//! the kernel through `NETLINK_SOCK_DIAG` (`inet_diag`, IPv4 and IPv6). The kernel filters on
//! the state, so sockets in TIME_WAIT or SYN_RECV — thousands during a connection storm — are
//! never sent or parsed, unlike a read of `/proc/net/tcp` (the fallback,
//! [`established_in_table`]). Used by `ssh` to find the connections sshd's session processes
//! hold; needs no privilege.

use std::{collections::HashMap, io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::enrich::trust::{canonical, parse_endpoint};

/// ESTABLISHED TCP connections (IPv4 and IPv6) whose local port is in `ports`: socket inode →
/// remote address.
pub fn established(ports: &[u16]) -> io::Result<HashMap<u64, IpAddr>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut peers = HashMap::new();
    for family in [AF_INET, AF_INET6] {
        dump(&mut socket, family, ports, &mut peers)?;
    }
    Ok(peers)
}

/// One `inet_diag` dump of `family`'s established TCP sockets.
fn dump(
    socket: &mut Socket,
    family: u8,
    ports: &[u16],
    peers: &mut HashMap<u64, IpAddr>,
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::ESTABLISHED,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    if ports.contains(&id.source_port) {
                        peers.insert(u64::from(r.header.inode), canonical(id.destination_address));
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("sock_diag: {e:?}")));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// ESTABLISHED connections whose local port is in `ports` (socket inode, remote address), from
/// the text of `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn established_in_table(text: &str, ports: &[u16]) -> Vec<(u64, IpAddr)> {
    const ESTABLISHED: &str = "01";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
            if *state != ESTABLISHED {
                return None;
            }
            let (_, port) = parse_endpoint(local)?;
            ports.contains(&port).then_some(())?;
            Some((inode.parse().ok()?, canonical(parse_endpoint(remote)?.0)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    use super::*;

    /// The inode of a socket this process holds.
    fn inode(fd: &impl AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let link = link.to_str().unwrap();
        link["socket:[".len()..link.len() - 1].parse().unwrap()
    }

    #[test]
    fn finds_an_established_connection_to_a_port_and_nothing_else() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let (p4, p6) = (
            v4.local_addr().unwrap().port(),
            v6.local_addr().unwrap().port(),
        );
        let _c4 = TcpStream::connect(("127.0.0.1", p4)).unwrap();
        let _c6 = TcpStream::connect(("::1", p6)).unwrap();
        let (a4, _) = v4.accept().unwrap();
        let (a6, _) = v6.accept().unwrap();
        // The accepted (server-side) sockets, by inode: what sshd holds.
        let conns = established(&[p4, p6]).unwrap();
        assert_eq!(
            conns,
            HashMap::from([
                (inode(&a4), "127.0.0.1".parse().unwrap()),
                (inode(&a6), "::1".parse().unwrap())
            ])
        );
        // A listening port without connections, and no ports at all.
        let idle = TcpListener::bind("127.0.0.1:0").unwrap();
        let idle_port = idle.local_addr().unwrap().port();
        assert!(established(&[idle_port]).unwrap().is_empty());
        assert!(established(&[]).unwrap().is_empty());
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0F02000A:0016 0900710C:D431 01 00000000:00000000 02:00093E14 00000000     0        0 2 4 0000000000000000 20 4 29 10 -1
   2: 0F02000A:A2C4 0200A8C0:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 20 4 0 10 -1
   3: 0F02000A:0016 0A0033C6:D432 06 00000000:00000000 03:000004F5 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 B80D0120000000000000000009000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 11 1 0000000000000000 20 4 0 10 -1
   1: 0000000000000000FFFF00000F02000A:0016 0000000000000000FFFF00000A0033C6:C351 01 00000000:00000000 00:00000000 00000000     0        0 12 1 0000000000000000 20 4 0 10 -1
";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_established_connections_from_the_proc_tables() {
        // Row 1: 12.113.0.9 → local :22, established. Row 2 is outbound to :443 (not ssh),
        // row 3 is TIME_WAIT.
        assert_eq!(established_in_table(TCP, &[22]), [(2, ip("12.113.0.9"))]);
        assert_eq!(
            established_in_table(TCP6, &[22]),
            [(11, ip("2001:db8::9")), (12, ip("198.51.0.10"))]
        );
        assert!(established_in_table(TCP, &[2222]).is_empty());
        let garbage = "garbage\nmore garbage here x y z";
        assert!(established_in_table(garbage, &[22]).is_empty());
    }
}
