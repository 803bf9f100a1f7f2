//! Types that cross the kernel boundary between `sentinel-ebpf` and `sentinel-agent`.
//!
//! Everything here is `#[repr(C)]`, free of `bool`, `Option` and implicit padding, and has its
//! size asserted at compile time, so a layout drift between the two sides fails the build
//! instead of producing garbage events.
#![no_std]

pub mod events;
pub mod guard;
pub mod offsets;
pub mod reader;

pub use events::{Event, EventKind, Header};
pub use offsets::KernelOffsets;
