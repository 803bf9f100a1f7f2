//! The `connect` sensor: outbound TCP connects, IPv4 and IPv6, seen when a socket enters
//! `SYN_SENT` (`sock/inet_sock_set_state`), which runs in the connecting process; and
//! `listen(2)` (`syscalls/sys_enter_listen`, TCP and unix stream sockets alike): which
//! processes accept connections.

use aya_ebpf::{
    EbpfContext,
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use sentinel_common::{
    EventKind,
    events::connect::{AF_INET, AF_INET6, ConnectEvent, ListenEvent},
};

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
    data.dport = field(ctx, DPORT);
    data.sport = field(ctx, SPORT);
    data._pad = 0;
    // Addresses are copied as whole words: the verifier refuses byte loops over the context.
    if family == AF_INET {
        data.saddr = addr16(field::<u32>(ctx, SADDR) as u64, 0);
        data.daddr = addr16(field::<u32>(ctx, DADDR) as u64, 0);
    } else {
        data.saddr = addr16(field(ctx, SADDR_V6), field(ctx, SADDR_V6 + 8));
        data.daddr = addr16(field(ctx, DADDR_V6), field(ctx, DADDR_V6 + 8));
    }
    data.exe = current_exe();
    entry.submit(submit_flags(&EVENTS));
}
