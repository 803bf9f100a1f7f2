//! The persistence-location sensor: fanotify (the kernel's file event source that, unlike
//! inotify, names the process behind each event) with marks on the watched directories only —
//! the cron and `at` spools, systemd unit directories, every user's `~/.ssh`, `/etc` (for its
//! single files: `ld.so.preload`, `passwd`, `sudoers`, …), PAM, … A write anywhere else never
//! reaches the agent: the kernel checks an inode's marks, and an unmarked directory has none.
//!
//! One group, `FAN_REPORT_DFID_NAME`: each event carries the directory (as a file handle, matched
//! against the handles of the marked directories taken at start) and the entry's name, so a
//! file moved into place (`mv /tmp/x /etc/cron.d/`, `crontab`'s rename, `sed -i`) is seen as
//! well as one written in place. Events: `FAN_CLOSE_WRITE`, `FAN_MOVED_TO`, `FAN_CREATE`
//! (with `FAN_ONDIR`, so that a directory created where one is expected — `~/.ssh`,
//! `/etc/sudoers.d`, a systemd `*.wants` — is marked too, and what it already holds is
//! attributed to its creator).
//!
//! The sensor only says *who (pid) wrote where*; the event loop attributes the pid with its
//! process tree (`daemon/persistence.rs`), which keeps the ancestry of a writer that already
//! exited. Nothing here opens a watched file.

use std::{
    collections::{HashMap, HashSet},
    ffi::{OsStr, OsString},
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::fanotify::{handle_of, parse};
use crate::detect::{
    Work,
    persistence::{Location, Write},
};

/// A place watched: the entries of `dir` (only `names`, when given) are `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub dir: PathBuf,
    pub names: Option<Vec<String>>,
    pub location: Location,
    /// Its subdirectories (systemd's `*.wants`, `*.d`) are watched the same way.
    pub subdirs: bool,
}

impl Watch {
    fn dir(dir: &str, location: Location) -> Self {
        Self {
            dir: dir.into(),
            names: None,
            location,
            subdirs: false,
        }
    }

    fn files(dir: impl Into<PathBuf>, names: &[&str], location: Location) -> Self {
        Self {
            dir: dir.into(),
            names: Some(names.iter().map(|s| s.to_string()).collect()),
            location,
            subdirs: false,
        }
    }

    fn matches(&self, name: &OsStr) -> bool {
        self.names
            .as_ref()
            .is_none_or(|n| n.iter().any(|n| OsStr::new(n) == name))
    }
}

/// Home directories that are system directories, never watched as homes (daemon's `/usr/sbin`,
/// bin's `/bin`): their start-up files are not read by any login.
const NOT_HOMES: [&str; 10] = [
    "/",
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/games",
    "/dev",
    "/proc",
    "/sys",
    "/nonexistent",
];

/// Shell start-up files in a home directory.
const HOME_STARTUP: [&str; 7] = [
    ".bashrc",
    ".profile",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".zshrc",
    ".zprofile",
];

/// Every place watched: `cron_paths` (`cron.paths`) and the built-in locations, with the homes
/// of the accounts in `passwd` (the text of `/etc/passwd`); `arch` is the Debian multiarch
/// triplet's CPU (`x86_64`) for the PAM module directories.
pub fn locations(passwd: &str, cron_paths: &[PathBuf], arch: &str) -> Vec<Watch> {
    use Location::*;
    let mut out: Vec<Watch> = cron_paths.iter().map(|p| cron_watch(p)).collect();
    for dir in ["/var/spool/cron/atjobs", "/var/spool/at"] {
        out.push(Watch::dir(dir, At));
    }
    out.push(Watch::dir("/var/spool/anacron", Cron));
    out.push(Watch::files("/etc", &["anacrontab"], Cron));
    for dir in [
        "/etc/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/usr/local/lib/systemd/system",
        "/etc/systemd/user",
        "/usr/lib/systemd/user",
    ] {
        out.push(Watch {
            subdirs: true,
            ..Watch::dir(dir, SystemdUnit)
        });
    }
    for dir in [
        "/etc/systemd/system-generators",
        "/usr/lib/systemd/system-generators",
        "/lib/systemd/system-generators",
        "/usr/local/lib/systemd/system-generators",
        "/etc/systemd/user-generators",
        "/usr/lib/systemd/user-generators",
    ] {
        out.push(Watch::dir(dir, SystemdUnit));
    }
    out.push(Watch::files(
        "/etc",
        &["ld.so.preload", "ld.so.conf"],
        Preload,
    ));
    out.push(Watch::dir("/etc/ld.so.conf.d", Preload));
    out.push(Watch::files(
        "/etc",
        &["profile", "bash.bashrc", "environment", "zshrc", "zprofile"],
        ShellStartup,
    ));
    out.push(Watch::dir("/etc/profile.d", ShellStartup));
    out.push(Watch::files("/etc", &["sudoers"], Sudoers));
    out.push(Watch::dir("/etc/sudoers.d", Sudoers));
    out.push(Watch::files("/etc", &["rc.local"], RcLocal));
    out.push(Watch::files("/etc/rc.d", &["rc.local"], RcLocal));
    out.push(Watch::files(
        "/etc",
        &["passwd", "shadow", "group", "gshadow"],
        Accounts,
    ));
    out.push(Watch::dir("/etc/pam.d", Pam));
    out.push(Watch::files("/etc", &["pam.conf"], Pam));
    let triplet = format!("{arch}-linux-gnu");
    for dir in ["/lib", "/usr/lib", "/lib64", "/usr/lib64"] {
        out.push(Watch::dir(&format!("{dir}/security"), Pam));
        out.push(Watch::dir(&format!("{dir}/{triplet}/security"), Pam));
    }
    out.push(Watch::files("/etc", &["modules"], KernelModules));
    for dir in [
        "/etc/modules-load.d",
        "/etc/modprobe.d",
        "/usr/lib/modules-load.d",
    ] {
        out.push(Watch::dir(dir, KernelModules));
    }
    for home in homes(passwd) {
        out.push(Watch::files(&home, &HOME_STARTUP, ShellStartup));
        out.push(Watch::files(
            home.join(".ssh"),
            &["authorized_keys", "authorized_keys2"],
            SshKeys,
        ));
        out.push(Watch::dir(
            &home.join(".config/systemd/user").display().to_string(),
            SystemdUnit,
        ));
    }
    out
}

/// A `cron.paths` entry: a directory's entries, or one file. An absent path is taken for a
/// directory unless its name says file (`crontab`, `anacrontab`).
fn cron_watch(path: &Path) -> Watch {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let file = match std::fs::metadata(path) {
        Ok(meta) => !meta.is_dir(),
        Err(_) => name.as_deref().is_some_and(|n| n.ends_with("tab")),
    };
    match (file, path.parent(), name) {
        (true, Some(parent), Some(name)) => Watch::files(parent, &[&name], Location::Cron),
        _ => Watch::dir(&path.display().to_string(), Location::Cron),
    }
}

/// Watch the persistence locations (with `cron_paths`) on a thread of its own; writes go to
/// `tx`. A failure is logged: the agent runs on without this sensor.
pub fn start(cron_paths: &[PathBuf], tx: mpsc::UnboundedSender<Work>) {
    let passwd = crate::enrich::accounts::read(Path::new("/etc")).0;
    let watches = locations(&passwd, cron_paths, std::env::consts::ARCH);
    match Sensor::new(&watches).and_then(|s| s.spawn(tx)) {
        Ok(()) => {}
        Err(e) => warn!("persistence locations not watched (fanotify): {e}"),
    }
}

/// The home directories of the accounts in `passwd` (system directories left out), once each.
pub fn homes(passwd: &str) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    passwd
        .lines()
        .filter_map(|l| l.split(':').nth(5))
        .map(|h| h.trim_end_matches('/'))
        .map(|h| if h.is_empty() { "/" } else { h })
        .filter(|h| h.starts_with('/') && !NOT_HOMES.contains(h) && !h.starts_with("/run/"))
        .filter(|h| seen.insert(h.to_string()))
        .map(PathBuf::from)
        .collect()
}

/// A directory's identity in events: its file handle (type and bytes).
type Handle = Vec<u8>;

/// What a marked directory is watched for.
#[derive(Debug, Clone)]
enum Rule {
    /// Its entries (see [`Watch`]).
    Entries(Watch),
    /// The directory `name` in it, which does not exist yet: watched once created.
    Expected(OsString, Watch),
}

#[derive(Debug)]
struct Marked {
    dir: PathBuf,
    rules: Vec<Rule>,
}

/// Events reported to the agent.
const MASK: u64 = libc::FAN_CLOSE_WRITE
    | libc::FAN_MOVED_TO
    | libc::FAN_CREATE
    | libc::FAN_ONDIR
    | libc::FAN_EVENT_ON_CHILD;

/// Most entries of a newly created directory attributed to its creator.
const MAX_SCAN: usize = 256;

/// The watcher: the fanotify group and its marks.
pub struct Sensor {
    fd: OwnedFd,
    marks: HashMap<Handle, Marked>,
    /// When each (writer, path) was last reported: a create, its close and a rewrite by the
    /// same process within [`REPEAT`] are one write.
    recent: HashMap<(u32, PathBuf), Instant>,
    /// The kernel's queue overflowed since the last read: `blind`.
    overflowed: bool,
    /// Directories on a filesystem without file handles, in a classic group.
    classic: Option<Classic>,
}

/// The classic group (no file handles): directories on a filesystem that has none, by path.
struct Classic {
    fd: OwnedFd,
    dirs: HashMap<PathBuf, Vec<Watch>>,
}

impl Classic {
    fn spawn(self, tx: mpsc::UnboundedSender<Work>) -> io::Result<()> {
        std::thread::Builder::new()
            .name("persist-watch2".into())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                while let Some(n) = read(&self.fd, &mut buf) {
                    let now = super::boot_ns();
                    for mut w in self.writes(&buf[..n]) {
                        w.seen_ns = now;
                        if tx.send(Work::Persisted(w)).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(())
    }

    fn writes(&self, buf: &[u8]) -> Vec<Write> {
        let mut out = Vec::new();
        for ev in parse(buf) {
            let Some(path) = ev.file.as_ref().and_then(fanotify::path_of) else {
                continue;
            };
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            for w in self.dirs.get(dir).into_iter().flatten() {
                if w.matches(name) {
                    out.push(Write {
                        pid: ev.pid,
                        path: path.clone(),
                        location: w.location.of_name(&name.to_string_lossy()),
                        how: "written",
                        seen_ns: 0,
                    });
                }
            }
        }
        out
    }
}

/// One read of a group's events: the bytes read, `None` once the group fails.
fn read(fd: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: reading into a buffer we own, of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Some(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            warn!("persistence watch stopped: {e}");
            return None;
        }
    }
}

/// Writes of one file by one process within this long are reported once.
const REPEAT: Duration = Duration::from_secs(2);

/// (writer, path) pairs remembered before the old ones are dropped.
const MAX_RECENT: usize = 1024;

impl Sensor {
    /// A fanotify group watching `watches` (needs CAP_SYS_ADMIN: call before the agent drops
    /// its capabilities). Absent places are skipped, or watched for when their parent exists.
    pub fn new(watches: &[Watch]) -> io::Result<Self> {
        let fd = fanotify::init(true)?;
        let mut sensor = Sensor {
            fd,
            marks: HashMap::new(),
            recent: HashMap::new(),
            overflowed: false,
            classic: None,
        };
        for w in watches {
            sensor.watch(w, None);
        }
        Ok(sensor)
    }

    /// Directories marked.
    #[cfg(test)]
    pub fn marked(&self) -> usize {
        self.marks.len()
    }

    /// Mark `w.dir` (and its subdirectories when asked); when it is absent, its parent for
    /// its creation. With `creator`, the entries it already holds are reported as written by
    /// that pid (a directory created and filled at once: the fill came before the mark).
    fn watch(&mut self, w: &Watch, creator: Option<(u32, &mut Vec<Write>)>) {
        match self.mark(&w.dir, Rule::Entries(w.clone())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if creator.is_none()
                    && let (Some(parent), Some(name)) = (w.dir.parent(), w.dir.file_name())
                    && parent.is_dir()
                {
                    let _ = self.mark(parent, Rule::Expected(name.to_os_string(), w.clone()));
                }
                return;
            }
            Err(e) => {
                debug!(dir = %w.dir.display(), "not watched: {e}");
                return;
            }
        }
        let entries = || {
            std::fs::read_dir(&w.dir)
                .into_iter()
                .flatten()
                .flatten()
                .take(MAX_SCAN)
        };
        if w.subdirs {
            for e in entries().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                let sub = Watch {
                    dir: e.path(),
                    subdirs: false,
                    ..w.clone()
                };
                let _ = self.mark(&sub.dir, Rule::Entries(sub.clone()));
            }
        }
        if let Some((pid, out)) = creator {
            for e in entries().filter(|e| e.file_type().is_ok_and(|t| !t.is_dir())) {
                let name = e.file_name();
                if w.matches(&name) {
                    out.push(Write {
                        pid,
                        path: e.path(),
                        location: w.location.of_name(&name.to_string_lossy()),
                        how: "created",
                        seen_ns: 0,
                    });
                }
            }
        }
    }

    /// Add an fanotify mark on `dir` for `rule`. A directory on a filesystem without file
    /// handles (an overlayfs root without `nfs_export`) is marked in the classic group.
    fn mark(&mut self, dir: &Path, rule: Rule) -> io::Result<()> {
        let handle = match handle_of(dir) {
            Ok(handle) => handle,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(e) => return self.mark_classic(dir, rule, e),
        };
        fanotify::mark(&self.fd, dir, MASK)?;
        self.marks
            .entry(handle)
            .or_insert_with(|| Marked {
                dir: dir.to_path_buf(),
                rules: Vec::new(),
            })
            .rules
            .push(rule);
        Ok(())
    }

    /// Mark `dir` in the classic group (created on first use): writes in place only, the
    /// path read from the event's descriptor. `why` is what the handle lookup said.
    fn mark_classic(&mut self, dir: &Path, rule: Rule, why: io::Error) -> io::Result<()> {
        let Rule::Entries(w) = rule else {
            return Err(why);
        };
        if self.classic.is_none() {
            let fd = fanotify::init(false).map_err(|_| why)?;
            self.classic = Some(Classic {
                fd,
                dirs: HashMap::new(),
            });
        }
        let classic = self.classic.as_mut().expect("just made");
        fanotify::mark(
            &classic.fd,
            dir,
            libc::FAN_CLOSE_WRITE | libc::FAN_EVENT_ON_CHILD,
        )?;
        debug!(dir = %dir.display(), "no file handles: writes in place only");
        classic.dirs.entry(dir.to_path_buf()).or_default().push(w);
        Ok(())
    }

    /// Start reading events on a thread of its own; writes go to `tx`.
    pub fn spawn(mut self, tx: mpsc::UnboundedSender<Work>) -> io::Result<()> {
        info!(
            directories = self.marks.len(),
            without_file_handles = self.classic.as_ref().map_or(0, |c| c.dirs.len()),
            "persistence locations watched"
        );
        if let Some(classic) = self.classic.take() {
            classic.spawn(tx.clone())?;
        }
        std::thread::Builder::new()
            .name("persist-watch".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Some(n) = read(&self.fd, &mut buf) {
                    let writes = self.writes(&buf[..n]);
                    if std::mem::take(&mut self.overflowed) {
                        let lost = crate::detect::blind::queue_overflow();
                        let _ = tx.send(Work::Found(Box::new(lost)));
                    }
                    let now = super::boot_ns();
                    for mut w in writes {
                        w.seen_ns = now;
                        if tx.send(Work::Persisted(w)).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(())
    }

    /// The writes in one read's worth of events, each (pid, path) once.
    fn writes(&mut self, buf: &[u8]) -> Vec<Write> {
        let mut out = Vec::new();
        for ev in parse(buf) {
            if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
                warn!("persistence watch: the kernel's event queue overflowed; writes were lost");
                self.overflowed = true;
                continue;
            }
            let Some(marked) = self.marks.get(&ev.dir) else {
                continue;
            };
            let dir = marked.dir.clone();
            let is_dir = ev.mask & libc::FAN_ONDIR != 0;
            let appeared = ev.mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0;
            let mut new_dirs = Vec::new();
            for rule in &marked.rules {
                match rule {
                    Rule::Entries(w) if is_dir && appeared && w.subdirs => {
                        new_dirs.push(Watch {
                            dir: dir.join(&ev.name),
                            subdirs: false,
                            ..w.clone()
                        });
                    }
                    Rule::Entries(_) if is_dir => {}
                    Rule::Entries(w) if w.matches(&ev.name) => out.push(Write {
                        pid: ev.pid,
                        path: dir.join(&ev.name),
                        location: w.location.of_name(&ev.name.to_string_lossy()),
                        how: how(ev.mask),
                        seen_ns: 0,
                    }),
                    Rule::Expected(name, w) if is_dir && appeared && *name == ev.name => {
                        new_dirs.push(w.clone());
                    }
                    _ => {}
                }
            }
            for w in new_dirs {
                debug!(dir = %w.dir.display(), "watched directory appeared");
                self.watch(&w, Some((ev.pid, &mut out)));
            }
        }
        let now = Instant::now();
        if self.recent.len() > MAX_RECENT {
            self.recent
                .retain(|_, at| now.saturating_duration_since(*at) < REPEAT);
        }
        out.retain(|w| {
            let key = (w.pid, w.path.clone());
            let fresh = self
                .recent
                .get(&key)
                .is_none_or(|at| now.saturating_duration_since(*at) >= REPEAT);
            self.recent.insert(key, now);
            fresh
        });
        out
    }
}

fn how(mask: u64) -> &'static str {
    if mask & libc::FAN_MOVED_TO != 0 {
        "moved in"
    } else if mask & libc::FAN_CLOSE_WRITE != 0 {
        "written"
    } else {
        "created"
    }
}

mod fanotify;
#[cfg(test)]
mod tests;
