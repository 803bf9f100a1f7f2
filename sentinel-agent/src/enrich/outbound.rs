//! Which peers this host connected out to, recently: the `stdio` sensor reports every TCP
//! socket put on a standard stream, and only one that reaches a peer (address and port) a
//! local process connected out to is a reverse shell. An accepted connection handed to a
//! child as its stdio (inetd, `sshd -i`, socket activation) reaches the client's own port,
//! which nothing here connected to: a server, not a reverse shell.
//!
//! This used to be a kernel LRU map keyed by the socket, filled at every connect: about
//! 0.4 µs of kernel time per connect on this VM, for a check that matters on the rare socket
//! that lands on stdio. Here it is a hash insert in the agent. The connect record is always
//! read before the stdio record of the same socket (one ring buffer, in order), and the
//! source port is not yet chosen when the connect record is taken, so the peer is the key. A
//! connection the agent never saw (it was lost, or made before the agent started) does not
//! count as outbound, as before. The memory can be flooded (16,384 cheap connects push a C2
//! out), so it is never the only witness: a socket is judged accepted only when it is not
//! remembered *and* its local port is one something listens on
//! ([`crate::enrich::listeners::accepted_on_listening_port`]).

use std::{collections::VecDeque, net::IpAddr};

/// Peers remembered: the last this many connects (a few hundred KiB).
pub const REMEMBERED: usize = 16_384;

/// The peers of the last [`REMEMBERED`] outbound connects. The peers are chosen by whoever runs
/// on the host: foldhash, seeded per map (as `detect::intel`). SipHash of the peer was ~250
/// instructions of the agent's ~3,000 per connect (callgrind).
#[derive(Debug)]
pub struct Outbound {
    /// Peer → how many of the remembered connects went to it.
    peers: foldhash::HashMap<(IpAddr, u16), u32>,
    /// The remembered connects' peers, oldest first.
    order: VecDeque<(IpAddr, u16)>,
    capacity: usize,
}

impl Default for Outbound {
    fn default() -> Self {
        Self::with_capacity(REMEMBERED)
    }
}

impl Outbound {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            peers: foldhash::HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// A local process connected out to `addr:port`.
    pub fn connected(&mut self, addr: IpAddr, port: u16) {
        let peer = (addr.to_canonical(), port);
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
            && let Some(n) = self.peers.get_mut(&oldest)
        {
            *n -= 1;
            if *n == 0 {
                self.peers.remove(&oldest);
            }
        }
        *self.peers.entry(peer).or_insert(0) += 1;
        self.order.push_back(peer);
    }

    /// Whether one of the remembered connects went to `addr:port` (an IPv4 address and its
    /// IPv6-mapped form are the same peer).
    pub fn reaches(&self, addr: IpAddr, port: u16) -> bool {
        self.peers.contains_key(&(addr.to_canonical(), port))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_connected_to_is_reached_and_only_on_its_port() {
        let mut o = Outbound::default();
        o.connected(ip("198.51.100.130"), 4444);
        assert!(o.reaches(ip("198.51.100.130"), 4444));
        // The client of an accepted connection: same address, its own port.
        assert!(!o.reaches(ip("198.51.100.130"), 51234));
        assert!(!o.reaches(ip("198.51.100.131"), 4444));
    }

    #[test]
    fn a_mapped_address_is_its_ipv4_address() {
        let mut o = Outbound::default();
        o.connected(ip("::ffff:198.51.100.130"), 4444);
        assert!(o.reaches(ip("198.51.100.130"), 4444));
        let mut o = Outbound::default();
        o.connected(ip("198.51.100.130"), 4444);
        assert!(o.reaches(ip("::ffff:198.51.100.130"), 4444));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_goes_first() {
        let mut o = Outbound::with_capacity(3);
        o.connected(ip("2001:db8::1"), 1);
        o.connected(ip("2001:db8::2"), 1);
        o.connected(ip("2001:db8::1"), 1);
        o.connected(ip("2001:db8::3"), 1); // the first ::1 goes; the second keeps it
        assert!(o.reaches(ip("2001:db8::1"), 1));
        assert!(o.reaches(ip("2001:db8::2"), 1));
        o.connected(ip("2001:db8::4"), 1); // ::2 goes
        assert!(!o.reaches(ip("2001:db8::2"), 1));
        o.connected(ip("2001:db8::5"), 1); // the second ::1 goes
        assert!(!o.reaches(ip("2001:db8::1"), 1));
        assert_eq!(o.len(), 3);
        assert_eq!(o.peers.len(), 3);
        for i in 0..10_000u16 {
            o.connected(ip("198.51.100.9"), i);
        }
        assert_eq!((o.len(), o.peers.len()), (3, 3));
    }
}
