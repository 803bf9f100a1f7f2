//! What the agent does for its service manager and for least privilege: systemd's
//! readiness, stopping and watchdog notifications (`Type=notify`, `WatchdogSec=` in
//! `config/sentinel.service`), and dropping every capability the agent no longer needs once
//! its programs are loaded and attached.
//!
//! The notifications are no-ops (with a debug line) when `NOTIFY_SOCKET` is unset, e.g. when
//! the agent runs in a terminal. Dropping capabilities always happens.
//!
//! Capabilities on Linux belong to threads, not processes, and `capset(2)` only changes the
//! calling thread. By the time the agent has attached its programs the async runtime's
//! threads (and the store writer) exist, so [`drop_capabilities`] changes the calling thread
//! with the `caps` crate and then signals every other thread of the process to make the same
//! change itself (the technique of libcap's `psx`), and checks every thread in
//! `/proc/self/task` before it returns.

use std::{
    fmt, fs,
    sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use caps::{CapSet, Capability};
use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Capabilities the agent still needs once its programs are attached; everything else is
/// dropped. Loading needs more, which only the unit grants (see `config/sentinel.service`):
/// `CAP_PERFMON` for the tracing programs and perf events, and nothing after attach.
pub const RUNTIME_CAPS: &[Capability] = &[
    // The `bpf()` calls the agent keeps making on maps it already holds: the lost counters,
    // the CPU sample map, the connect guard's blocked-address map. Since Linux 6.5 such calls
    // on an open map fd need no capability, but before it (Debian 12's 6.1, Ubuntu 22.04's
    // 5.15), with `kernel.unprivileged_bpf_disabled` set (their default), every `bpf()`
    // command needs CAP_BPF. Ring buffers are read through mmap and need nothing.
    Capability::CAP_BPF,
    // nftables: adding and re-asserting blocks in `table inet <enforce.table>` (netlink, also
    // through the `nft` program, which inherits at most what the agent keeps).
    Capability::CAP_NET_ADMIN,
    // `enforce.kill`: signalling offending processes that belong to other users.
    Capability::CAP_KILL,
    // Reading other processes' /proc/<pid>/{cwd,exe,fd} (ptrace read access): the project an
    // npm install or a node server uses, a memfd or relative executable's real path, whether
    // a node process listens. Never used to attach to or write into a process.
    Capability::CAP_SYS_PTRACE,
    // Reading what the agent watches whoever owns it: a per-user crontab is mode 0600 and
    // owned by its user (`www-data`), a Node.js project may sit in a user's home. Read and
    // directory search only: never a write (that would be CAP_DAC_OVERRIDE, not kept).
    Capability::CAP_DAC_READ_SEARCH,
];

/// A realtime signal the agent does not otherwise use, borrowed while capabilities are
/// dropped on the other threads.
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
}

/// Errors from [`drop_capabilities`].
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what}: {source}")]
    Caps {
        what: String,
        source: caps::errors::CapsError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("threads {tids:?} still hold capabilities the agent dropped")]
    Threads { tids: Vec<i32> },
}

/// What [`drop_capabilities`] took away, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Capabilities that were permitted and no longer are.
    pub permitted: Vec<Capability>,
    /// Whether the bounding set was cut down to what is kept too (needs CAP_SETPCAP; under
    /// the unit the bounding set is already that small, and `NoNewPrivileges` keeps children
    /// from regaining anything either way).
    pub bounding: bool,
    /// Threads changed, this one included.
    pub threads: usize,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.permitted.iter().map(ToString::to_string).collect();
        write!(
            f,
            "dropped {} on {} thread(s){}",
            if names.is_empty() {
                "nothing".to_string()
            } else {
                names.join(", ")
            },
            self.threads,
            if self.bounding {
                " (bounding set too)"
            } else {
                ""
            }
        )
    }
}

fn notify(state: NotifyState, what: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        debug!("NOTIFY_SOCKET unset (not under systemd): not sending {what}");
        return;
    }
    if let Err(e) = sd_notify::notify(false, &[state]) {
        warn!("telling systemd {what} failed: {e}");
    }
}

/// Tell systemd the agent is ready (`READY=1`): every program attached, the store open, the
/// socket listening. `Type=notify` makes `systemctl start` wait for this.
pub fn notify_ready() {
    notify(NotifyState::Ready, "READY=1");
}

/// Tell systemd the agent is stopping (`STOPPING=1`).
pub fn notify_stopping() {
    notify(NotifyState::Stopping, "STOPPING=1");
}

/// Tell systemd the event loop is alive (`WATCHDOG=1`); call it every
/// [`watchdog_interval`] from the loop itself, so a stalled loop misses it and is restarted.
pub fn notify_watchdog() {
    notify(NotifyState::Watchdog, "WATCHDOG=1");
}

/// How often to call [`notify_watchdog`]: half of `WATCHDOG_USEC` when systemd set a
/// watchdog for this process (`WatchdogSec=`), otherwise `None`.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        debug!("no systemd watchdog for this process");
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

fn mask_of(caps: impl IntoIterator<Item = Capability>) -> u64 {
    caps.into_iter().fold(0, |m, c| m | c.bitmask())
}

/// The capabilities in a mask, e.g. a `CapEff:` line of `/proc/PID/status`, lowest first.
pub fn caps_in(mask: u64) -> Vec<Capability> {
    let mut caps: Vec<Capability> = caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .collect();
    caps.sort_by_key(Capability::index);
    caps
}

/// Parse the `Cap*:` hex masks of a `/proc/PID/status` or `/proc/PID/task/TID/status` text.
pub fn status_masks(status: &str) -> CapMasks {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(u64::MAX)
    };
    CapMasks {
        inheritable: field("CapInh:"),
        permitted: field("CapPrm:"),
        effective: field("CapEff:"),
        bounding: field("CapBnd:"),
        ambient: field("CapAmb:"),
    }
}

/// A thread's capability sets as masks (bit n = capability n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapMasks {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

// What the signal handler applies on each thread, prepared before any signal is sent.
static PLAN_KEEP: AtomicU64 = AtomicU64::new(0);
static PLAN_BOUNDING_DROP: AtomicU64 = AtomicU64::new(0);
static PLAN_DONE: AtomicUsize = AtomicUsize::new(0);
static PLAN_FAILED: AtomicUsize = AtomicUsize::new(0);
static PLAN_ERRNO: AtomicI32 = AtomicI32::new(0);
static PLAN_LOCK: AtomicU32 = AtomicU32::new(0);

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Apply the plan to the calling thread with raw syscalls only (it runs in a signal
/// handler): no new privileges, bounding set, ambient set, then effective/permitted/
/// inheritable. Returns 0 or the first errno.
fn apply_plan_raw() -> libc::c_int {
    let keep = PLAN_KEEP.load(Ordering::SeqCst);
    let bounding_drop = PLAN_BOUNDING_DROP.load(Ordering::SeqCst);
    let mut first_err = 0;
    let mut note = |rc: libc::c_long| {
        if rc != 0 && first_err == 0 {
            // SAFETY: reading this thread's errno.
            first_err = unsafe { *libc::__errno_location() };
        }
    };
    // SAFETY: plain prctl/capget/capset syscalls with valid arguments; all async-signal-safe.
    unsafe {
        note(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long);
        for cap in 0..64 {
            if bounding_drop & (1 << cap) != 0 {
                note(libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) as libc::c_long);
            }
        }
        // EINVAL before Linux 4.3 (no ambient set): nothing to clear then.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        let rc = libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr());
        note(rc);
        if rc == 0 {
            for (i, d) in data.iter_mut().enumerate() {
                let keep = (keep >> (32 * i)) as u32;
                d.permitted &= keep;
                d.effective = d.permitted;
                d.inheritable = 0;
            }
            note(libc::syscall(libc::SYS_capset, &header, data.as_ptr()));
        }
    }
    first_err
}

extern "C" fn on_drop_signal(_: libc::c_int) {
    // SAFETY: errno of this thread, saved and restored around the handler.
    let saved = unsafe { *libc::__errno_location() };
    let err = apply_plan_raw();
    if err != 0 {
        PLAN_ERRNO.store(err, Ordering::SeqCst);
        PLAN_FAILED.fetch_add(1, Ordering::SeqCst);
    }
    PLAN_DONE.fetch_add(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Io { what, source }
}

/// The ids of this process's threads.
fn thread_ids() -> Result<Vec<i32>, ServiceError> {
    let mut tids: Vec<i32> = fs::read_dir("/proc/self/task")
        .map_err(io_err("listing /proc/self/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

fn thread_masks(tid: i32) -> Option<CapMasks> {
    fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .ok()
        .map(|s| status_masks(&s))
}

/// Drop every capability not in `keep` from the effective, permitted, inheritable and
/// ambient sets of every thread of the process, set no-new-privileges (so programs the agent
/// runs, such as `nft`, get at most what it kept), and cut the bounding set down to `keep`
/// when the agent holds CAP_SETPCAP. Capabilities in `keep` that the agent does not hold
/// stay absent. Call it once the programs are loaded and attached.
pub fn drop_capabilities(keep: &[Capability]) -> Result<Dropped, ServiceError> {
    let caps_err = |what: &str| {
        let what = what.to_string();
        move |source| ServiceError::Caps { what, source }
    };
    // One drop at a time: the plan lives in statics the signal handler reads.
    while PLAN_LOCK
        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        std::thread::yield_now();
    }
    struct Unlock;
    impl Drop for Unlock {
        fn drop(&mut self) {
            PLAN_LOCK.store(0, Ordering::SeqCst);
        }
    }
    let _unlock = Unlock;

    let keep_mask = mask_of(keep.iter().copied());
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_err("reading capabilities"))?;
    let can_setpcap = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(caps_err("reading capabilities"))?;
    let bounding =
        caps::read(None, CapSet::Bounding).map_err(caps_err("reading the bounding set"))?;
    let bounding_drop = if can_setpcap {
        mask_of(bounding.iter().copied()) & !keep_mask
    } else {
        0
    };
    PLAN_KEEP.store(keep_mask, Ordering::SeqCst);
    PLAN_BOUNDING_DROP.store(bounding_drop, Ordering::SeqCst);

    // This thread, with the caps crate. The bounding set first: dropping from it needs
    // CAP_SETPCAP in the effective set.
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io_err("setting no-new-privileges")(
            std::io::Error::last_os_error(),
        ));
    }
    for cap in caps_in(bounding_drop) {
        caps::drop(None, CapSet::Bounding, cap).map_err(caps_err("shrinking the bounding set"))?;
    }
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;
    }
    let kept: caps::CapsHashSet = permitted
        .iter()
        .copied()
        .filter(|c| keep_mask & c.bitmask() != 0)
        .collect();
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err("setting the effective set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clearing the inheritable set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("setting the permitted set"))?;

    // Every other thread, by signal. Threads started meanwhile copy the creds of the thread
    // that started them, so a second round catches any that copied them before the change.
    let own = nix::unistd::gettid().as_raw();
    let want = |m: &CapMasks| {
        m.permitted & !keep_mask == 0
            && m.effective & !keep_mask == 0
            && m.inheritable == 0
            && m.ambient == 0
            && m.bounding & bounding_drop == 0
    };
    // SAFETY: installing a handler that only makes async-signal-safe syscalls and touches
    // atomics; the previous disposition is restored below.
    let old = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_drop_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(drop_signal(), &action, &mut old) != 0 {
            return Err(io_err("installing the capability-drop signal handler")(
                std::io::Error::last_os_error(),
            ));
        }
        old
    };
    let result = (|| {
        let mut threads = 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pending: Vec<i32> = thread_ids()?
                .into_iter()
                .filter(|&tid| tid != own && thread_masks(tid).is_some_and(|m| !want(&m)))
                .collect();
            if pending.is_empty() {
                return Ok(threads);
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Threads { tids: pending });
            }
            PLAN_DONE.store(0, Ordering::SeqCst);
            let mut sent = 0;
            let pid = std::process::id() as libc::pid_t;
            for &tid in &pending {
                // SAFETY: tgkill to a thread of this process; a thread that has exited since
                // the listing gives ESRCH, which is fine.
                if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, drop_signal()) } == 0 {
                    sent += 1;
                }
            }
            let wait_until = Instant::now() + Duration::from_millis(500);
            while PLAN_DONE.load(Ordering::SeqCst) < sent && Instant::now() < wait_until {
                std::thread::sleep(Duration::from_millis(1));
            }
            threads += PLAN_DONE.load(Ordering::SeqCst);
            if PLAN_FAILED.swap(0, Ordering::SeqCst) > 0 {
                let errno = PLAN_ERRNO.load(Ordering::SeqCst);
                return Err(io_err("dropping capabilities on another thread")(
                    std::io::Error::from_raw_os_error(errno),
                ));
            }
        }
    })();
    // SAFETY: restoring the disposition saved above.
    unsafe { libc::sigaction(drop_signal(), &old, std::ptr::null_mut()) };
    let threads = result?;
    Ok(Dropped {
        permitted: caps_in(mask_of(permitted) & !keep_mask),
        bounding: bounding_drop != 0,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn notifications_are_no_ops_without_systemd() {
        // SAFETY: tests in this module do not read these variables concurrently.
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
        }
        notify_ready();
        notify_watchdog();
        notify_stopping();
        assert_eq!(watchdog_interval(), None);
    }

    #[test]
    fn status_masks_decode_proc_status() {
        let text = "Name:\tsentinel\nCapInh:\t0000000000000000\nCapPrm:\t0000008000081024\n\
                    CapEff:\t0000008000081024\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        let m = status_masks(text);
        assert_eq!(m.effective, mask_of(RUNTIME_CAPS.iter().copied()));
        let mut runtime = RUNTIME_CAPS.to_vec();
        runtime.sort_by_key(Capability::index);
        assert_eq!(caps_in(m.permitted), runtime);
        assert_eq!(m.inheritable, 0);
        assert_eq!(m.bounding, 0x1ff_ffff_ffff);
    }

    #[test]
    fn runtime_caps_leave_out_what_only_loading_needs() {
        for cap in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_PERFMON,
            Capability::CAP_SYS_RESOURCE,
            Capability::CAP_SETPCAP,
            Capability::CAP_DAC_OVERRIDE,
        ] {
            assert!(!RUNTIME_CAPS.contains(&cap), "{cap} kept");
        }
    }

    const CHILD: &str = "SENTINEL_CAPS_DROP_CHILD";

    /// Runs in a child copy of the test binary (dropping capabilities in the test process
    /// itself would hobble the other tests): drop all but CAP_KILL and CAP_NET_ADMIN with
    /// several threads alive, then check every thread and a program run afterwards.
    #[test]
    fn drop_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
                })
            })
            .collect();
        let keep = [Capability::CAP_KILL, Capability::CAP_NET_ADMIN];
        let dropped = drop_capabilities(&keep).unwrap();
        println!("{dropped}");
        assert!(dropped.permitted.contains(&Capability::CAP_SYS_ADMIN));
        assert!(dropped.threads >= 4, "{dropped:?}");
        let want = mask_of(keep);
        for tid in thread_ids().unwrap() {
            let m = thread_masks(tid).unwrap();
            assert_eq!(m.effective, want, "thread {tid}: {m:x?}");
            assert_eq!(m.permitted, want, "thread {tid}: {m:x?}");
            assert_eq!((m.inheritable, m.ambient), (0, 0), "thread {tid}");
            assert_eq!(m.bounding, want, "thread {tid}: {m:x?}");
        }
        // A root child regains nothing: it gets at most what was kept.
        let out = Command::new("/bin/sh")
            .args(["-c", "grep CapEff /proc/self/status"])
            .output()
            .unwrap();
        let m = status_masks(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(m.effective & !want, 0, "child: {m:x?}");
        // A thread started after the drop starts without them too.
        std::thread::spawn(move || {
            let m = status_masks(&fs::read_to_string("/proc/thread-self/status").unwrap());
            assert_eq!(m.effective, want);
        })
        .join()
        .unwrap();
        drop(tx);
        for s in sleepers {
            s.join().unwrap();
        }
        println!("CHILD-OK");
    }

    #[test]
    fn drop_capabilities_reaches_every_thread() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("\n*** SKIPPED drop_capabilities_reaches_every_thread: needs root ***\n");
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "daemon::service::tests::drop_child",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
