//! Enrichment: what the agent knows about an event beyond the kernel record. In: decoded exec,
//! fork, exit and connect records from `sensors`. Out: the same records with their process
//! lineage (`tree`: identity as tgid + start time, ancestors, exe), the destination's country
//! (`geo`: a MaxMind-format database), and whether an address is trusted (`trust`: `trust.ips`,
//! loopback, peers of the admins' SSH sessions read by `ssh`, their connections asked of the
//! kernel by `sockets`, the admins named by `accounts`), which `detect` and the `switch`
//! consult before they act; and what a program is (`shells`: an installed shell, by content;
//! `installed`: a root-owned file of the installed system; `listeners`: which processes
//! already accept connections when the agent starts), which container a process runs in
//! (`container`: cgroup id → path → the runtime's state, cached), and which name an address was
//! resolved from (`names`: the DNS answers the `dns` sensor saw delivered to processes).

pub mod accounts;
pub mod container;
pub mod geo;
pub mod geo_update;
pub mod installed;
pub mod listeners;
pub mod names;
pub mod outbound;
pub mod shells;
pub mod sockets;
pub mod ssh;
pub mod tree;
pub mod trust;
