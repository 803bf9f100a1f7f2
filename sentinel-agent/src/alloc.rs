//! The agent's memory allocator, and giving memory back once start-up is over.
//!
//! mimalloc: the agent allocates and frees a dozen small strings per event; glibc's malloc
//! spent a fifth of the agent's time on them (fastbin consolidation included).
//!
//! Start-up peaks far above the steady state (parsing the kernel's BTF and the programs'
//! object to load them, seeding the process tree): freed, that memory stays with the
//! allocator, resident, unless it is handed back once, after start-up.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` (its place in `mi_option_e`, mimalloc.h; the Rust binding
/// does not name it). Eagerly committed arenas are never decommitted when purged: on Linux
/// every page the agent once touched (start-up's peak included) stayed resident.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// `mi_option_purge_delay` (likewise unnamed by the binding): how long a freed page stays
/// committed, in ms; mimalloc's default is 10.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const PURGE_DELAY_DEFAULT_MS: std::ffi::c_long = 10;

/// Arenas committed on demand, so that freed memory goes back to the kernel, and every page
/// freed during start-up purged at once: a thread that frees start-up's memory and then waits
/// (the watchers, the store) would otherwise keep those pages until it next allocates
/// (8 MiB of the idle agent's 33, measured). mimalloc reserves its first arena when the
/// process starts, before `main`: this runs from the ELF constructors, before mimalloc's own
/// (priority 101 comes before every default-priority constructor), and only sets integers in
/// mimalloc's option table.
extern "C" fn commit_arenas_on_demand() {
    // SAFETY: mi_option_set takes no pointer and only writes mimalloc's static option table.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[used]
#[unsafe(link_section = ".init_array.00101")]
static COMMIT_ARENAS_ON_DEMAND: extern "C" fn() = commit_arenas_on_demand;

/// Return every page the allocator holds but no longer uses to the kernel (this thread's
/// heap and abandoned segments), and from now on purge freed pages after mimalloc's usual
/// delay (purging each at once would cost a system call per page an event burst frees).
/// Costs a few milliseconds; call it once, when start-up is over.
pub fn return_freed_memory() {
    // SAFETY: mi_collect takes no pointer and may be called at any time from any thread;
    // mi_option_set only writes mimalloc's static option table.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_DEFAULT_MS);
    }
}
