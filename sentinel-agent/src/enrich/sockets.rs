//! The peers of the host's ESTABLISHED TCP connections to given local ports, asked of the
//! kernel through `NETLINK_SOCK_DIAG` (`inet_diag`, IPv4 and IPv6). The kernel filters on the
//! state, so sockets in TIME_WAIT or SYN_RECV — thousands during a connection storm — are
//! never sent or parsed, unlike a read of `/proc/net/tcp`. Used by `ssh` to check that a
//! logged-in peer is still connected; needs no privilege.

use std::{collections::HashSet, io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::enrich::trust::canonical;

/// Remote addresses of ESTABLISHED TCP connections (IPv4 and IPv6) whose local port is in
/// `ports`.
pub fn established_peers(ports: &[u16]) -> io::Result<HashSet<IpAddr>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut peers = HashSet::new();
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
    peers: &mut HashSet<IpAddr>,
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
                        peers.insert(canonical(id.destination_address));
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

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

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
        let _a4 = v4.accept().unwrap();
        let _a6 = v6.accept().unwrap();
        let peers = established_peers(&[p4, p6]).unwrap();
        assert_eq!(
            peers,
            HashSet::from(["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()])
        );
        // A listening port without connections, and no ports at all.
        let idle = TcpListener::bind("127.0.0.1:0").unwrap();
        let idle_port = idle.local_addr().unwrap().port();
        assert!(established_peers(&[idle_port]).unwrap().is_empty());
        assert!(established_peers(&[]).unwrap().is_empty());
    }
}
