//! The `stdio` sensor: a TCP socket duplicated onto standard input, output or error
//! (`syscalls/sys_enter_dup2`, `sys_enter_dup3`) — the move every classic reverse shell makes
//! before it runs commands. Shells call `dup2` all the time, so the program looks at the
//! descriptor first and reports only a TCP socket, with its peer read from the socket. The
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

/// The current task's `struct file *` for `fd`, when it has one.
#[inline(always)]
fn file_of(fd: u32) -> Option<*const u8> {
    let off = offsets();
    let files: *const u8 = load_field(current_task(), off.task_files)?;
    let fdt: *const u8 = load_field(files, off.files_fdt)?;
    // `max_fds` opens its struct: offset 0 is its real offset here.
    let max: u32 = load_at(fdt, off.fdt_max_fds)?;
    // A `struct file **` is not a struct pointer to the verifier: the slot is read with the
    // helper, as is everything behind the file.
    let array: *const u8 = load_field(fdt, off.fdt_fd)?;
    if fd >= max {
        return None;
    }
    // `fd < max_fds` keeps the slot inside the array; the helper checks the address anyway.
    let file: *const u8 = read_at(array, fd as usize * 8)?;
    (!file.is_null()).then_some(file)
}

/// Read `T` at `base + offset` for offsets that may legitimately be 0 (`skc_daddr`).
#[inline(always)]
fn read_sk<T>(sk: *const u8, offset: u32) -> Option<T> {
    read_at(sk, offset as usize)
}

fn on_dup(ctx: &TracePointContext) {
    let newfd = arg(ctx, NEWFD);
    let oldfd = arg(ctx, OLDFD);
    if newfd > 2 || oldfd > u32::MAX as u64 || oldfd == newfd {
        return;
    }
    let off = offsets();
    // Without these the socket cannot be found (the zero-valued ones are checked by BTF).
    if off.sk_family == 0 || off.socket_sk == 0 || off.fdt_fd == 0 {
        return;
    }
    let Some(file) = file_of(oldfd as u32) else {
        return;
    };
    let mode: u16 = read_field::<*const u8>(file, off.file_inode)
        .and_then(|inode| read_at(inode, off.inode_mode as usize))
        .unwrap_or(0);
    // Nearly every dup2 is of a file or a pipe: the agent check waits until it is a socket.
    if mode & S_IFMT != S_IFSOCK || current_tgid_unless_agent().is_none() {
        return;
    }
    let Some(sk) = read_field::<*const u8>(file, off.file_private_data)
        .and_then(|socket| read_field::<*const u8>(socket, off.socket_sk))
    else {
        return;
    };
    let family: u16 = read_sk(sk, off.sk_family).unwrap_or(0);
    let protocol: u16 = read_sk(sk, off.sk_protocol).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        unexpected_family(ctx, "stdio", family);
        return;
    }
    if protocol != IPPROTO_TCP {
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
    data.oldfd = oldfd as u32;
    data.newfd = newfd as u32;
    data.family = family;
    data.dport = u16::from_be(read_sk(sk, off.sk_dport).unwrap_or(0));
    data._pad = 0;
    data.daddr = [0; 16];
    if family == AF_INET {
        let v4: u32 = read_sk(sk, off.sk_daddr).unwrap_or(0);
        data.daddr[..4].copy_from_slice(&v4.to_ne_bytes());
    } else {
        data.daddr = read_sk(sk, off.sk_v6_daddr).unwrap_or([0; 16]);
    }
    entry.submit(submit_flags(&EVENTS));
}
