//! The `connect` sensor: outbound TCP connects, IPv4 and IPv6, and `listen(2)`
//! (`syscalls/sys_enter_listen`, TCP and unix stream sockets alike): which processes accept
//! connections.
//!
//! Connects are seen by `cgroup/connect4` and `cgroup/connect6` programs on the cgroup v2
//! root (`connect_cg4`, `connect_cg6`): they run once per `connect()` of an inet socket, in the
//! connecting process, whatever started it (a system call, io_uring, a TCP Fast Open
//! `sendmsg`), and always allow it. `sock/inet_sock_set_state` also sees every connect (when
//! the socket enters `SYN_SENT`), but it runs on each of the ten or so state changes of a
//! connection's two ends, each run costing about 60 ns here for nothing: it is kept as the
//! fallback for a host without a cgroup v2 hierarchy, and for an agent in a container, whose
//! cgroup namespace shows it a root that has only the container below it.

use aya_ebpf::{
    EbpfContext,
    macros::{cgroup_sock_addr, map, tracepoint},
    maps::PerCpuArray,
    programs::{SockAddrContext, TracePointContext},
};
use sentinel_common::{
    EventKind,
    events::connect::{AF_INET, AF_INET6, ConnectEvent, ListenEvent},
};

use crate::guard;
use crate::rare::{record_dropped, unexpected_family};
use crate::task::{
    EVENTS, current_exe, current_tgid_unless_agent, fill_header, submit_flags, use_process_comm,
};

/// Connect and listen records dropped because `EVENTS` was full.
#[map]
static CONNECT_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// Field offsets of the `inet_sock_set_state` record (stable tracepoint ABI).
const NEWSTATE: usize = 20;
const SPORT: usize = 24;
const DPORT: usize = 26;
const FAMILY: usize = 28;
const PROTOCOL: usize = 30;
const SADDR: usize = 32;
const DADDR: usize = 36;
const SADDR_V6: usize = 40;
const DADDR_V6: usize = 56;

/// `sys_enter_listen`: `int fd` at offset 16.
const LISTEN_FD: usize = 16;

const TCP_SYN_SENT: i32 = 2;
const IPPROTO_TCP: u16 = 6;
/// Multipath TCP: a stream socket whose subflows are TCP connections.
const IPPROTO_MPTCP: u32 = 262;
/// The cgroup programs' verdict: they watch, they never refuse (that is the guard's job).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect_cg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr to this program type.
    let (protocol, ip, port) = unsafe {
        let s = &*ctx.sock_addr;
        (s.protocol, s.user_ip4, s.user_port)
    };
    if is_tcp(protocol) && !guard::refuses4(ip) {
        let to = Peer {
            addr: addr16(ip as u64, 0),
            // `user_port`: network byte order in its low 16 bits.
            port: u16::from_be(port as u16),
        };
        on_connect(&ctx, AF_INET, Peer::UNCHOSEN, to);
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect_cg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above; user_ip6 is read as four aligned words.
    let (protocol, ip, port) = unsafe {
        let s = &*ctx.sock_addr;
        (s.protocol, s.user_ip6, s.user_port)
    };
    if is_tcp(protocol) && !guard::refuses6(ip) {
        let to = Peer {
            addr: addr16(
                ip[0] as u64 | (ip[1] as u64) << 32,
                ip[2] as u64 | (ip[3] as u64) << 32,
            ),
            port: u16::from_be(port as u16),
        };
        on_connect(&ctx, AF_INET6, Peer::UNCHOSEN, to);
    }
    ALLOW
}

#[inline(always)]
fn is_tcp(protocol: u32) -> bool {
    protocol == IPPROTO_TCP as u32 || protocol == IPPROTO_MPTCP
}

/// One end of a connection: address bytes in order, port in host byte order.
struct Peer {
    addr: [u8; 16],
    port: u16,
}

impl Peer {
    /// The source of a connect seen before the kernel picked it: unspecified.
    const UNCHOSEN: Peer = Peer {
        addr: [0; 16],
        port: 0,
    };
}

/// Report a connect of the current process from `from` to `to`.
#[inline(always)]
fn on_connect<C: EbpfContext>(ctx: &C, family: u16, from: Peer, to: Peer) {
    if current_tgid_unless_agent().is_none() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        record_dropped(ctx, &CONNECT_LOST, "connect");
        return;
    };
    // SAFETY: sized for a ConnectEvent; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::Connect);
    use_process_comm(&mut event.header);
    let data = &mut event.data;
    data.family = family;
    data.dport = to.port;
    data.sport = from.port;
    data._pad = 0;
    data.saddr = from.addr;
    data.daddr = to.addr;
    data.exe = current_exe();
    entry.submit(submit_flags(&EVENTS));
}

#[tracepoint]
pub fn connect_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    on_state_change(&ctx);
    0
}

#[tracepoint]
pub fn connect_sys_enter_listen(ctx: TracePointContext) -> u32 {
    on_listen(&ctx);
    0
}

fn on_listen(ctx: &TracePointContext) {
    if current_tgid_unless_agent().is_none() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<ListenEvent>(0) else {
        record_dropped(ctx, &CONNECT_LOST, "connect");
        return;
    };
    // SAFETY: sized for a ListenEvent; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::Listen);
    use_process_comm(&mut event.header);
    event.data.fd = field::<u64>(ctx, LISTEN_FD) as u32;
    event.data._pad = 0;
    entry.submit(submit_flags(&EVENTS));
}

/// Read a field of the tracepoint record in place (direct context access: no helper call).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: offsets are those of the record's format, naturally aligned and in bounds.
    unsafe { *(ctx.as_ptr() as *const u8).add(offset).cast::<T>() }
}

/// 16 address bytes from two words read in memory order.
#[inline(always)]
fn addr16(lo: u64, hi: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_ne_bytes());
    out[8..].copy_from_slice(&hi.to_ne_bytes());
    out
}

fn on_state_change(ctx: &TracePointContext) {
    if field::<i32>(ctx, NEWSTATE) != TCP_SYN_SENT || field::<u16>(ctx, PROTOCOL) != IPPROTO_TCP {
        return;
    }
    let family = field::<u16>(ctx, FAMILY);
    if family != AF_INET && family != AF_INET6 {
        unexpected_family(ctx, "connect", family);
        return;
    }
    // Addresses are copied as whole words: the verifier refuses byte loops over the context.
    let (saddr, daddr) = if family == AF_INET {
        (
            addr16(field::<u32>(ctx, SADDR) as u64, 0),
            addr16(field::<u32>(ctx, DADDR) as u64, 0),
        )
    } else {
        (
            addr16(field(ctx, SADDR_V6), field(ctx, SADDR_V6 + 8)),
            addr16(field(ctx, DADDR_V6), field(ctx, DADDR_V6 + 8)),
        )
    };
    let from = Peer {
        addr: saddr,
        port: field(ctx, SPORT),
    };
    let to = Peer {
        addr: daddr,
        port: field(ctx, DPORT),
    };
    on_connect(ctx, family, from, to);
}
