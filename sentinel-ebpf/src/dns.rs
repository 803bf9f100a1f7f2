//! The `dns` sensor: DNS answers delivered to processes, so the agent can name the addresses
//! they connect to. Two halves:
//!
//! - `dns_connect4`/`dns_connect6`/`dns_sendmsg4`/`dns_sendmsg6` (`cgroup_sock_addr` on the
//!   cgroup v2 root) run in the asking process when it connects a socket to port 53 (glibc's
//!   resolver connects its UDP socket; TCP queries connect) or sends a datagram to port 53
//!   from an unconnected socket: they remember who asked, in the socket's own local storage
//!   (`DNS_ASKERS`, freed with the socket).
//! - `dns_ingress` (`cgroup_skb/ingress` on the same root) sees every packet delivered to a
//!   local socket, loopback included (a stub such as systemd-resolved's 127.0.0.53, a
//!   resolver in a container). For a UDP datagram or TCP segment from port 53 to a socket
//!   the first half knows, carrying an answer that can name something (`may_name`), it
//!   copies the DNS message (up to `DNS_PAYLOAD_MAX` bytes) into the shared ring, with the
//!   asker, in a record no larger than the message needs. It runs outside the receiver's
//!   context, hence the storage on the socket, which it reaches through the packet's socket
//!   (`skb->sk`). It always returns 1: it watches, it never drops a packet.
//!
//! DNS over TCP in several segments: the socket's storage of a TCP socket also remembers
//! the message that last started on it (first sequence number, length prefix). A later
//! segment of that message (or a retransmission) is copied as a record of its own with the
//! bytes' offset in the message (`piece_of`), never past the message's first
//! `DNS_PAYLOAD_MAX` bytes; the agent puts the pieces together. A segment is seen once, as
//! it arrives, before TCP reorders anything: one that arrives before the segment starting its
//! message is not known and not copied. A message is known when its length prefix and first
//! 8 header bytes come in one segment — at its start, or behind the end of the message before
//! it (answers back to back on one connection, coalesced into one segment by Nagle) — or when
//! a segment ends with its length prefix alone (a server that writes the prefix on its own:
//! the message is then copied unchecked); a segment is searched for at most
//! `TCP_MESSAGES_PER_SEGMENT` messages.
//!
//! What a packet costs, cheapest first: to a TCP socket or connected UDP socket whose peer
//! port is not 53 (nearly all traffic), or to a socket on local port 53 (a resolver's
//! queries), two fields of the socket, before any helper call; to an unconnected UDP socket,
//! a few loads of the packet's headers where the kernel holds them in line (no helper call;
//! `bpf_skb_load_bytes` only when they are not, or for IPv4 options); from port 53 over
//! UDP, the DNS header's flags and counts, then the socket's storage (one helper call, no
//! hash); only then the ring. From port 53 over TCP (a socket connected to port 53: a DNS
//! client), a segment without payload stops after its header; one with payload costs the
//! socket's storage and its cookie (the record's flow), then
//! either the copy of a later piece of the known message or, at a message's start, the
//! header's flags and counts before any copy.

use aya_ebpf::{
    bindings::__sk_buff,
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, cgroup_skb, cgroup_sock_addr, map},
    maps::PerCpuArray,
    programs::{SkBuffContext, SockAddrContext},
};
use sentinel_common::{
    EventKind,
    events::{
        connect::{AF_INET, AF_INET6},
        dns::{
            DNS_PAYLOAD_CLASSES, DNS_PAYLOAD_MAX, DNS_START, DNS_UDP, DnsAsker, DnsRecord, may_name,
        },
    },
};

use crate::rare::record_dropped;

mod tcp;
use crate::task::{EVENTS, current_tgid_unless_agent, submit_flags};

/// DNS answers dropped because `EVENTS` was full.
#[map]
static DNS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Who asked port 53 from a socket, kept in the socket's local storage: reached from the
/// socket in one helper call (no cookie, no hash), freed by the kernel with the socket, so
/// there is no bound to size and no eviction of live askers.
#[btf_map]
static DNS_ASKERS: SkStorage<DnsAsker> = SkStorage::new();

const ALLOW: i32 = 1;
const DNS_PORT_BE: u16 = 53u16.to_be();
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

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
        msg_seq: 0,
        wire_len: 0,
        _pad: 0,
    };
    // The socket's storage, created (zeroed) on its first query. SAFETY: `ctx.sk` is the
    // socket this program runs for, which the helper takes.
    let entry = unsafe { DNS_ASKERS.get_or_insert_ptr_mut(ctx, None) };
    if entry.is_null() {
        // No memory for it: this socket's answers go unnamed.
        return;
    }
    // A socket asked again (by another process, after a reconnect) forgets the TCP message
    // it was receiving. SAFETY: a storage value, valid for this program's run.
    unsafe { *entry = asker };
}

/// The storage of the socket a packet is delivered to, if that socket asked port 53.
#[inline(always)]
fn asker_of(ctx: &SkBuffContext) -> Option<*mut DnsAsker> {
    // SAFETY: cgroup_skb may read the receiving socket (null or a socket pointer the verifier
    // knows as such).
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let map = core::ptr::from_ref(&DNS_ASKERS).cast_mut().cast();
    // SAFETY: the map is a socket storage map, `sk` a non-null socket; no value, no flags: a
    // lookup only (the helper returns null for a socket without storage or not a full one).
    let entry = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) };
    let entry = entry.cast::<DnsAsker>();
    (!entry.is_null()).then_some(entry)
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx);
    ALLOW
}

/// What a record copies out of a packet, and which message it belongs to.
struct Found {
    family: u16,
    protocol: u8,
    /// `DNS_START` or `DNS_PART`.
    part: u8,
    /// The resolver's address as it sits in the packet (IPv4: the first word).
    server: [u32; 4],
    /// Offset of the bytes to copy from the network header.
    at: u32,
    /// How many (the part of the message this packet holds, before the `DNS_PAYLOAD_MAX` cap).
    here: u32,
    /// The message's length: for TCP the length prefix, for UDP what the datagram holds.
    wire_len: u32,
    /// TCP: the socket's cookie, the message's first sequence number, the bytes' offset in it.
    flow: u64,
    msg_seq: u32,
    offset: u32,
    /// TCP: false for a message that names nothing (only its length is used: to find the
    /// next one).
    copy: bool,
}

/// The network and transport headers of a packet from port 53.
struct FromPort53 {
    family: u16,
    protocol: u8,
    server: [u32; 4],
    /// Offset of the transport header.
    l4: u32,
    /// A UDP datagram's first 8 bytes of DNS header, when read with the headers (`has_head`;
    /// zeros otherwise: an `Option` here let LLVM fill the unread bytes from whatever register
    /// it liked, the packet's end pointer included, which the verifier refuses).
    head: [u8; 8],
    has_head: bool,
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
    let Some(from) = from_port_53(ctx) else {
        return;
    };
    match from.protocol {
        IPPROTO_UDP => {
            let Some(found) = locate_udp(ctx, from) else {
                return;
            };
            let Some(entry) = asker_of(ctx) else {
                return;
            };
            // SAFETY: a storage value, valid for this program's run; copied out at once.
            let asker = unsafe { *entry };
            emit(ctx, &found, &asker);
        }
        IPPROTO_TCP => tcp::on_tcp(ctx, &from),
        _ => {}
    }
}

/// Copy what `found` says into a record of the smallest class that holds it.
#[inline(never)]
fn emit(ctx: &SkBuffContext, found: &Found, asker: &DnsAsker) {
    let len = found.here.min(DNS_PAYLOAD_MAX as u32);
    if len <= DNS_PAYLOAD_CLASSES[0] as u32 {
        report::<{ DNS_PAYLOAD_CLASSES[0] }>(ctx, found, *asker, len);
    } else if len <= DNS_PAYLOAD_CLASSES[1] as u32 {
        report::<{ DNS_PAYLOAD_CLASSES[1] }>(ctx, found, *asker, len);
    } else if len <= DNS_PAYLOAD_CLASSES[2] as u32 {
        report::<{ DNS_PAYLOAD_CLASSES[2] }>(ctx, found, *asker, len);
    } else if len <= DNS_PAYLOAD_CLASSES[3] as u32 {
        report::<{ DNS_PAYLOAD_CLASSES[3] }>(ctx, found, *asker, len);
    } else {
        report::<{ DNS_PAYLOAD_CLASSES[4] }>(ctx, found, *asker, len);
    }
}

/// The headers of a UDP datagram or TCP segment from port 53, read straight from the
/// packet when the kernel holds them in line (every packet it built itself, loopback
/// included, and the headers of received ones), else with `bpf_skb_load_bytes`.
#[inline(always)]
fn from_port_53(ctx: &SkBuffContext) -> Option<FromPort53> {
    // SAFETY: cgroup_skb may read the packet between data and data_end (network header on).
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    // IPv4 without options: version/IHL, protocol at 9, source at 12, source port at 20.
    if data + 28 <= end {
        // SAFETY: within [data, data_end), checked above.
        let (first, protocol, sport) = unsafe {
            (
                *(data as *const u8),
                *((data + 9) as *const u8),
                *((data + 20) as *const u16),
            )
        };
        if first == 0x45 {
            if sport != DNS_PORT_BE {
                return None;
            }
            // SAFETY: as above.
            let source = unsafe { *((data + 12) as *const u32) };
            let has_head = protocol == IPPROTO_UDP && data + 36 <= end;
            let head = if has_head {
                // SAFETY: within [data, data_end), checked first.
                unsafe { *((data + 28) as *const u64) }.to_ne_bytes()
            } else {
                [0; 8]
            };
            return Some(FromPort53 {
                family: AF_INET,
                protocol,
                server: [source, 0, 0, 0],
                l4: 20,
                head,
                has_head,
            });
        }
    }
    // IPv6 with the transport header right after the fixed header (extension headers are
    // not followed: DNS answers do not carry them).
    if data + 48 <= end {
        // SAFETY: within [data, data_end), checked above.
        let (first, protocol, sport) = unsafe {
            (
                *(data as *const u8),
                *((data + 6) as *const u8),
                *((data + 40) as *const u16),
            )
        };
        if first >> 4 == 6 {
            if sport != DNS_PORT_BE {
                return None;
            }
            // SAFETY: as above.
            let server = unsafe { *((data + 8) as *const [u32; 4]) };
            let has_head = protocol == IPPROTO_UDP && data + 56 <= end;
            let head = if has_head {
                // SAFETY: within [data, data_end), checked first.
                unsafe { *((data + 48) as *const u64) }.to_ne_bytes()
            } else {
                [0; 8]
            };
            return Some(FromPort53 {
                family: AF_INET6,
                protocol,
                server,
                l4: 40,
                head,
                has_head,
            });
        }
    }
    from_port_53_loaded(ctx)
}

/// [`from_port_53`] for headers the kernel does not hold in line (or IPv4 with options).
#[inline(never)]
fn from_port_53_loaded(ctx: &SkBuffContext) -> Option<FromPort53> {
    let first: u8 = ctx.load(0).ok()?;
    let from = match first >> 4 {
        4 => {
            let protocol: u8 = ctx.load(9).ok()?;
            let source: u32 = ctx.load(12).ok()?;
            FromPort53 {
                family: AF_INET,
                protocol,
                server: [source, 0, 0, 0],
                l4: ((first & 0x0f) as u32) * 4,
                head: [0; 8],
                has_head: false,
            }
        }
        6 => FromPort53 {
            family: AF_INET6,
            protocol: ctx.load(6).ok()?,
            server: ctx.load(8).ok()?,
            l4: 40,
            head: [0; 8],
            has_head: false,
        },
        _ => return None,
    };
    let sport: u16 = ctx.load(from.l4 as usize).ok()?;
    (sport == DNS_PORT_BE).then_some(from)
}

/// The DNS message in a UDP datagram from port 53, if it is an answer that can name something.
#[inline(always)]
fn locate_udp(ctx: &SkBuffContext, from: FromPort53) -> Option<Found> {
    let offset = from.l4 + 8;
    let head = if from.has_head {
        from.head
    } else {
        ctx.load(offset as usize).ok()?
    };
    if !may_name(head) {
        return None;
    }
    // A DNS header is 12 bytes.
    let here = ctx.len().checked_sub(offset)?;
    if here < 12 {
        return None;
    }
    Some(Found {
        family: from.family,
        protocol: DNS_UDP,
        part: DNS_START,
        server: from.server,
        at: offset,
        here,
        wire_len: here,
        flow: 0,
        msg_seq: 0,
        offset: 0,
        copy: true,
    })
}

/// Copy `len` bytes (1..=N) of the message into a record with room for `N`.
#[inline(always)]
fn report<const N: usize>(ctx: &SkBuffContext, found: &Found, asker: DnsAsker, len: u32) {
    let Some(mut entry) = EVENTS.reserve::<DnsRecord<N>>(0) else {
        record_dropped(ctx, &DNS_LOST, "dns");
        return;
    };
    // SAFETY: sized for a DnsRecord<N>; every field of the head is written below, the
    // payload up to `len` (the agent reads no further).
    let record = unsafe { &mut *entry.as_mut_ptr() };
    let header = &mut record.head.header;
    header.kind = EventKind::Dns as u32;
    header.pid = asker.tgid;
    header.tgid = asker.tgid;
    header.uid = asker.uid;
    header.gid = 0;
    header._pad = 0;
    // No clock read: the agent stamps a DNS record when it reads it. The clock helper cost
    // ~100 ns a call on the reference VM, a fifth of this program, and a name's lifetime
    // (its TTL, seconds) needs no better than the reader's few milliseconds.
    header.ts_ns = 0;
    // Two stores, not a call to memset. SAFETY: the 16-byte comm field, 8-aligned.
    unsafe { core::ptr::write_volatile(header.comm.as_mut_ptr().cast::<[u64; 2]>(), [0, 0]) };
    let data = &mut record.head.data;
    data.family = found.family;
    data.protocol = found.protocol;
    data.part = found.part;
    // SAFETY: the 16-byte server field, 8-aligned.
    unsafe { core::ptr::write_volatile(data.server.as_mut_ptr().cast::<[u32; 4]>(), found.server) };
    data.wire_len = found.wire_len.min(u16::MAX as u32) as u16;
    data.flow = found.flow;
    data.msg_seq = found.msg_seq;
    data.offset = found.offset;
    let copied = copy_payload::<N>(ctx.skb.skb, found.at, &mut record.payload, len);
    data.len = if copied { len as u16 } else { 0 };
    entry.submit(submit_flags(&EVENTS));
}

/// `bpf_skb_load_bytes` of `len` (1..=N, N a power of two) bytes at `offset` into `dst`.
#[inline(always)]
fn copy_payload<const N: usize>(
    skb: *mut __sk_buff,
    offset: u32,
    dst: &mut [u8; N],
    len: u32,
) -> bool {
    if len == 0 || len > N as u32 {
        return false;
    }
    // The same value, in a form whose bounds the verifier tracks (1..=N): LLVM turns the
    // checks above into ones that lose the lower bound.
    let len = (core::hint::black_box(len - 1) & (N as u32 - 1)) + 1;
    // SAFETY: dst holds N bytes and len is within 1..=N.
    unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            skb.cast(),
            offset,
            dst.as_mut_ptr().cast(),
            len,
        ) == 0
    }
}
