//! Sentinel's kernel programs, one module per sensor (`exec`, `connect`, `stdio`, `cpu`, `dns`) plus
//! the connect guard that enforces blocks (`guard`), each named
//! `<sensor>_<hook>` and owning its maps. `rare` reports their rare failures through aya-log;
//! `task` holds what they share: the globals the agent
//! fills in at load time, the header every record starts with, and the one ring buffer the
//! process-and-network records travel on, in order.
#![no_std]
#![no_main]

mod connect;
mod cpu;
mod dns;
mod exec;
mod guard;
mod rare;
mod stdio;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as `bpf_probe_read_kernel` requires.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
