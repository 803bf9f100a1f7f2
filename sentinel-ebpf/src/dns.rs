//! The `dns` sensor: DNS answers delivered to processes, so the agent can name the addresses
//! they connect to. Two halves:
//!
//! - `dns_connect4`/`dns_connect6`/`dns_sendmsg4`/`dns_sendmsg6` (`cgroup_sock_addr` on the
//!   cgroup v2 root) run in the asking process when it connects a socket to port 53 (glibc's
//!   resolver connects its UDP socket; TCP queries connect) or sends a datagram to port 53
//!   from an unconnected socket: they remember the socket (its cookie) and who asked.
//! - `dns_ingress` (`cgroup_skb/ingress` on the same root) sees every packet delivered to a
//!   local socket, loopback included (a stub such as systemd-resolved's 127.0.0.53, a
//!   resolver in a container). For a UDP datagram or TCP segment from port 53 to a socket
//!   the first half knows, it copies up to `DNS_PAYLOAD_MAX` bytes of the DNS message into
//!   the shared ring, with the asker. It runs outside the receiver's context, hence the
//!   cookie map. It always returns 1: it watches, it never drops a packet.
//!
//! A packet to a TCP socket or connected UDP socket whose peer port is not 53 (nearly all
//! traffic), or to a socket on local port 53 (a resolver's queries), is let through after
//! reading two fields of the socket, before any helper call.

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_get_socket_cookie},
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::{LruHashMap, PerCpuArray},
    programs::{SkBuffContext, SockAddrContext},
};
use sentinel_common::{
    EventKind,
    events::{
        connect::{AF_INET, AF_INET6},
        dns::{DNS_PAYLOAD_MAX, DNS_TCP, DNS_UDP, DnsAsker, DnsEvent},
    },
};

use crate::rare::record_dropped;
use crate::task::{EVENTS, current_tgid_unless_agent, submit_flags};

/// DNS answers dropped because `EVENTS` was full.
#[map]
static DNS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sockets that asked port 53 (socket cookie) → who asked. Least recently used entries go
/// first: a closed socket's entry simply ages out (cookies are never reused).
#[map]
static DNS_ASKERS: LruHashMap<u64, DnsAsker> = LruHashMap::with_max_entries(16384, 0);

const ALLOW: i32 = 1;
const DNS_PORT_BE: u16 = 53u16.to_be();
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// TCP DNS messages start with their length.
const TCP_LEN_PREFIX: u32 = 2;

#[cgroup_sock_addr(connect4)]
pub fn dns_connect4(ctx: SockAddrContext) -> i32 {
    note_asker(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn dns_connect6(ctx: SockAddrContext) -> i32 {
    note_asker(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn dns_sendmsg4(ctx: SockAddrContext) -> i32 {
    note_asker(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn dns_sendmsg6(ctx: SockAddrContext) -> i32 {
    note_asker(&ctx);
    ALLOW
}

/// Remember the socket when it is about to talk to port 53.
#[inline(always)]
fn note_asker(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands a valid bpf_sock_addr to this program type.
    let port = unsafe { (*ctx.sock_addr).user_port };
    if port as u16 != DNS_PORT_BE {
        return;
    }
    let Some(tgid) = current_tgid_unless_agent() else {
        return;
    };
    let asker = DnsAsker {
        tgid,
        uid: aya_ebpf::helpers::bpf_get_current_uid_gid() as u32,
    };
    // SAFETY: the helper takes this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A full map evicts its least recently used entry: insertion does not fail for room.
    let _ = DNS_ASKERS.insert(&cookie, &asker, 0);
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx);
    ALLOW
}

/// Where a DNS message sits in a packet and who sent it.
struct Found {
    family: u16,
    protocol: u8,
    server: [u8; 16],
    /// Offset of the DNS message from the network header.
    offset: u32,
    /// Its length on the wire.
    wire_len: u32,
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext) {
    // The receiving socket's peer port (network byte order): a TCP or connected UDP socket
    // talking to anything but port 53 is no DNS client. 0 is an unconnected UDP socket.
    // The kernel puts the big-endian port in the field's upper half on little-endian
    // machines; both halves are checked so either layout works.
    // A socket on local port 53 is a resolver taking queries (host byte order here), no
    // client: the queries a local stub receives cost no more than this.
    // SAFETY: cgroup_skb may read these context fields (from the receiving socket).
    let (peer, local) = unsafe { ((*ctx.skb.skb).remote_port, (*ctx.skb.skb).local_port) };
    if local == 53
        || (peer != 0 && (peer >> 16) as u16 != DNS_PORT_BE && peer as u16 != DNS_PORT_BE)
    {
        return;
    }
    let Some(found) = locate(ctx) else {
        return;
    };
    // SAFETY: the helper takes this program's context (the receiving socket's cookie).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a plain value copied out at once.
    let Some(asker) = (unsafe { DNS_ASKERS.get(&cookie) }).copied() else {
        return;
    };
    report(ctx, &found, asker);
}

/// The DNS message in this packet, if it comes from port 53 over UDP or TCP.
#[inline(always)]
fn locate(ctx: &SkBuffContext) -> Option<Found> {
    let mut server = [0u8; 16];
    let (family, protocol, l4) = match u16::from_be(ctx.skb.protocol() as u16) as u32 {
        ETH_P_IP => {
            // One helper call for the fixed header: version/IHL, protocol, source.
            let ip: [u8; 16] = ctx.load(0).ok()?;
            server[..4].copy_from_slice(&ip[12..16]);
            (AF_INET, ip[9], ((ip[0] & 0x0f) as u32) * 4)
        }
        ETH_P_IPV6 => {
            // Only a transport header right after the fixed header: extension headers are
            // not followed (DNS answers do not carry them).
            let protocol: u8 = ctx.load(6).ok()?;
            server = ctx.load(8).ok()?;
            (AF_INET6, protocol, 40)
        }
        _ => return None,
    };
    let sport: u16 = ctx.load(l4 as usize).ok()?;
    if sport != DNS_PORT_BE {
        return None;
    }
    let total = ctx.len();
    let (protocol, offset) = match protocol {
        IPPROTO_UDP => (DNS_UDP, l4 + 8),
        IPPROTO_TCP => {
            let doff: u8 = ctx.load(l4 as usize + 12).ok()?;
            (DNS_TCP, l4 + ((doff >> 4) as u32) * 4 + TCP_LEN_PREFIX)
        }
        _ => return None,
    };
    // A bare ACK or a segment too short for a DNS header carries no answer.
    if offset + 12 > total {
        return None;
    }
    Some(Found {
        family,
        protocol,
        server,
        offset,
        wire_len: total - offset,
    })
}

/// Copy the message into a record for the agent.
#[inline(always)]
fn report(ctx: &SkBuffContext, found: &Found, asker: DnsAsker) {
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        record_dropped(ctx, &DNS_LOST, "dns");
        return;
    };
    // SAFETY: sized for a DnsEvent; every field but the payload's tail is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    let header = &mut event.header;
    header.kind = EventKind::Dns as u32;
    header.pid = asker.tgid;
    header.tgid = asker.tgid;
    header.uid = asker.uid;
    header.gid = 0;
    header._pad = 0;
    // SAFETY: no arguments; reads a kernel clock.
    header.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.comm = [0; 16];
    let data = &mut event.data;
    data.family = found.family;
    data.protocol = found.protocol;
    data._pad = 0;
    data.server = found.server;
    let wire = found.wire_len;
    data.wire_len = if wire > u16::MAX as u32 {
        u16::MAX
    } else {
        wire as u16
    };
    // Bounded for the verifier: 1..=DNS_PAYLOAD_MAX (locate() saw at least 12 bytes).
    let len = if wire > DNS_PAYLOAD_MAX as u32 {
        DNS_PAYLOAD_MAX as u32
    } else {
        wire
    };
    let copied = copy_payload(ctx.skb.skb, found.offset, &mut data.payload, len);
    data.len = if copied { len as u16 } else { 0 };
    entry.submit(submit_flags(&EVENTS));
}

/// `bpf_skb_load_bytes` of `len` (1..=DNS_PAYLOAD_MAX) bytes at `offset` into `dst`.
#[inline(always)]
fn copy_payload(
    skb: *mut __sk_buff,
    offset: u32,
    dst: &mut [u8; DNS_PAYLOAD_MAX],
    len: u32,
) -> bool {
    if len == 0 || len > DNS_PAYLOAD_MAX as u32 {
        return false;
    }
    // The same value, in a form whose bounds the verifier tracks (1..=512): LLVM turns the
    // checks above into ones that lose the lower bound.
    let len = (core::hint::black_box(len - 1) & (DNS_PAYLOAD_MAX as u32 - 1)) + 1;
    // SAFETY: dst holds DNS_PAYLOAD_MAX bytes and len is within 1..=DNS_PAYLOAD_MAX.
    unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            skb.cast(),
            offset,
            dst.as_mut_ptr().cast(),
            len,
        ) == 0
    }
}
