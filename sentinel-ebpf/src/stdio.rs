//! The `stdio` sensor: a TCP socket duplicated onto standard input, output or error
//! (`syscalls/sys_enter_dup2`, `sys_enter_dup3`) — the move every classic reverse shell makes
//! before it runs commands — and, at every exec (`sched/sched_process_exec`, looked at by the
//! exec sensor's program there: `at_exec`), a TCP socket found on fd 0, 1 or 2 however it got there (a process that closed them and let `socket()`,
//! `dup()` or `fcntl(F_DUPFD)` take their numbers). MPTCP sockets count as TCP. Shells call
//! `dup2` all the time, so the program looks at the descriptor first and reports only a TCP
//! socket, with its peer read from the socket. The
//! agent tells a reverse shell (a peer a local process connected out to) from an accepted
//! connection handed to a child as stdio (inetd, `sshd -i`, socket activation): tracking
//! every outbound socket here cost kernel time on every connect, for the rare socket that
//! lands on stdio.

use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use sentinel_common::{
    EventKind,
    events::{
        connect::{AF_INET, AF_INET6},
        stdio::StdioEvent,
    },
};

use crate::{
    exec::EXEC_LOST,
    rare::{record_dropped, unexpected_family},
    task::{
        EVENTS, current_task, current_tgid_unless_agent, fill_header, load_at, load_field, offsets,
        read_at, read_field, submit_flags, use_process_comm,
    },
};

/// `sys_enter_dup2` / `sys_enter_dup3`: `oldfd` at 16, `newfd` at 24 (8-byte slots).
const OLDFD: usize = 16;
const NEWFD: usize = 24;

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const IPPROTO_TCP: u16 = 6;
/// `IPPROTO_MPTCP`: a multipath TCP socket, a TCP connection all the same.
const IPPROTO_MPTCP: u16 = 262;

#[tracepoint]
pub fn stdio_sys_enter_dup2(ctx: TracePointContext) -> u32 {
    on_dup(&ctx);
    0
}

#[tracepoint]
pub fn stdio_sys_enter_dup3(ctx: TracePointContext) -> u32 {
    on_dup(&ctx);
    0
}

/// A syscall argument slot of the record.
#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets are those of the record's format, 8-byte aligned and in bounds.
    unsafe { *(ctx.as_ptr() as *const u8).add(offset).cast::<u64>() }
}

/// The current task's open-file table: where its `struct file *` slots start and how many
/// there are.
#[inline(always)]
fn fd_table() -> Option<(*const u8, u32)> {
    let off = offsets();
    let files: *const u8 = load_field(current_task(), off.task_files)?;
    let fdt: *const u8 = load_field(files, off.files_fdt)?;
    // `max_fds` opens its struct: offset 0 is its real offset here.
    let max: u32 = load_at(fdt, off.fdt_max_fds)?;
    // A `struct file **` is not a struct pointer to the verifier: the slots are read with
    // the helper, as is everything behind a file.
    let array: *const u8 = load_field(fdt, off.fdt_fd)?;
    Some((array, max))
}

/// The current task's `struct file *` for `fd`, when it has one.
#[inline(always)]
fn file_of(fd: u32) -> Option<*const u8> {
    let (array, max) = fd_table()?;
    if fd >= max {
        return None;
    }
    // `fd < max_fds` keeps the slot inside the array; the helper checks the address anyway.
    let file: *const u8 = read_at(array, fd as usize * 8)?;
    (!file.is_null()).then_some(file)
}

/// The files on fd 0, 1 and 2 as plain addresses (0: none): the three slots are contiguous,
/// one helper call reads them (`max_fds` is 64 or more on every kernel; below 3, slot by
/// slot).
#[inline(always)]
fn standard_files() -> [u64; 3] {
    let Some((array, max)) = fd_table() else {
        return [0; 3];
    };
    if max >= 3 {
        return read_at(array, 0).unwrap_or([0; 3]);
    }
    let slot = |fd: u32| {
        if fd < max {
            read_at::<u64>(array, fd as usize * 8).unwrap_or(0)
        } else {
            0
        }
    };
    [slot(0), slot(1), 0]
}

/// Read `T` at `base + offset` for offsets that may legitimately be 0 (`skc_daddr`).
#[inline(always)]
fn read_sk<T>(sk: *const u8, offset: u32) -> Option<T> {
    read_at(sk, offset as usize)
}

fn on_dup(ctx: &TracePointContext) {
    let newfd = arg(ctx, NEWFD);
    let oldfd = arg(ctx, OLDFD);
    if newfd > 2 || oldfd > u32::MAX as u64 || oldfd == newfd || !offsets_known() {
        return;
    }
    let Some(file) = file_of(oldfd as u32) else {
        return;
    };
    // Nearly every dup2 is of a file or a pipe: the agent check waits until it is a socket.
    if !is_socket(file) || current_tgid_unless_agent().is_none() {
        return;
    }
    report(ctx, file, oldfd as u32, newfd as u32, 0);
}

/// At exec (run by the exec sensor's program on the same tracepoint, once the exec record
/// is out): each socket on fd 0, 1 or 2, once, with every standard stream that holds it. A
/// file on several streams (a terminal, `/dev/null`) is looked at once.
#[inline(always)]
pub fn at_exec(ctx: &TracePointContext) {
    if !offsets_known() {
        return;
    }
    // Plain addresses (0: none), not `Option`s: the verifier follows integers best.
    let [f0, f1, f2] = standard_files();
    let held_by = |f: u64| u32::from(f0 == f) | u32::from(f1 == f) << 1 | u32::from(f2 == f) << 2;
    if f0 != 0 && is_socket(f0 as *const u8) {
        report(ctx, f0 as *const u8, 0, 0, held_by(f0));
    }
    if f1 != 0 && f1 != f0 && is_socket(f1 as *const u8) {
        report(ctx, f1 as *const u8, 1, 1, held_by(f1));
    }
    if f2 != 0 && f2 != f0 && f2 != f1 && is_socket(f2 as *const u8) {
        report(ctx, f2 as *const u8, 2, 2, 0b100);
    }
}

/// Without these the socket cannot be found (the zero-valued ones are checked by BTF).
#[inline(always)]
fn offsets_known() -> bool {
    let off = offsets();
    off.sk_family != 0 && off.socket_sk != 0 && off.fdt_fd != 0
}

/// Whether `file` is a socket: its inode's mode says so. Most files on stdio are not, and
/// one read tells most of those apart first: a socket's file has `private_data` = its
/// `struct socket` and `f_inode` = the inode allocated with it (`socket_alloc`), at a fixed
/// distance; the two fields sit side by side in `struct file`, one helper call reads both.
#[inline(always)]
fn is_socket(file: *const u8) -> bool {
    let off = offsets();
    let inode = if off.socket_alloc_inode != 0 && off.file_inode == off.file_private_data + 8 {
        let Some([socket, inode]) = read_field::<[u64; 2]>(file, off.file_private_data) else {
            return false;
        };
        if inode != socket.wrapping_add(off.socket_alloc_inode as u64) {
            return false;
        }
        inode as *const u8
    } else {
        match read_field::<*const u8>(file, off.file_inode) {
            Some(inode) => inode,
            None => return false,
        }
    };
    let mode: u16 = read_at(inode, off.inode_mode as usize).unwrap_or(0);
    mode & S_IFMT == S_IFSOCK
}

/// Report socket `file` on a standard stream when it is an internet TCP (or MPTCP) socket.
fn report(ctx: &TracePointContext, file: *const u8, oldfd: u32, newfd: u32, exec_fds: u32) {
    let off = offsets();
    let Some(sk) = read_field::<*const u8>(file, off.file_private_data)
        .and_then(|socket| read_field::<*const u8>(socket, off.socket_sk))
    else {
        return;
    };
    let family: u16 = read_sk(sk, off.sk_family).unwrap_or(0);
    let protocol: u16 = read_sk(sk, off.sk_protocol).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        // A unix socket on stdio at exec is every systemd service's journal stream.
        if exec_fds == 0 {
            unexpected_family(ctx, "stdio", family);
        }
        return;
    }
    if protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<StdioEvent>(0) else {
        record_dropped(ctx, &EXEC_LOST, "stdio");
        return;
    };
    // SAFETY: sized for a StdioEvent; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::Stdio);
    use_process_comm(&mut event.header);
    let data = &mut event.data;
    data.oldfd = oldfd;
    data.newfd = newfd;
    data.family = family;
    data.dport = u16::from_be(read_sk(sk, off.sk_dport).unwrap_or(0));
    data.exec_fds = exec_fds;
    data.daddr = [0; 16];
    if family == AF_INET {
        let v4: u32 = read_sk(sk, off.sk_daddr).unwrap_or(0);
        data.daddr[..4].copy_from_slice(&v4.to_ne_bytes());
    } else {
        data.daddr = read_sk(sk, off.sk_v6_daddr).unwrap_or([0; 16]);
    }
    entry.submit(submit_flags(&EVENTS));
}
