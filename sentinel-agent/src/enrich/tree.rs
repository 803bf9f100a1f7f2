//! The process tree: who is whose parent, kept exact from the kernel's fork, exec and exit
//! records after being seeded from `/proc` at start-up.
//!
//! Processes are identified by (tgid, start time): a pid is reused, a start time is not. Start
//! times are kept in clock ticks since boot, the unit of `/proc/<pid>/stat`, so kernel
//! (`start_boottime`, ns) and `/proc` views of the same process compare equal.

use rustc_hash::FxHashMap;
use std::{collections::hash_map::Entry, fs, path::Path, sync::Arc};

use sentinel_common::events::exec::ExeId;

/// Deepest ancestry walked; also guards against cycles in a damaged tree.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub ppid: u32,
    /// Start time in clock ticks since boot.
    pub start: u64,
    /// Shared: every exec below it copies the pointer into its ancestry, not the name.
    pub comm: Arc<str>,
    /// What a detector made of `comm` (`lineage`'s roles, as bits), kept here because every
    /// exec below this process asks again; `None` until asked and whenever `comm` changes.
    pub comm_class: Option<u8>,
    /// What the process last exec'd, when the agent saw it. Shared: a fork copies the
    /// pointer, not the path.
    pub filename: Option<Arc<str>>,
    /// The process that forked it, when the agent saw the fork (0: unknown). Differs from
    /// `ppid` once an orphan was adopted by a subreaper or pid 1.
    pub forked_by: u32,
    /// The executable's (inode, device) from the kernel; zero when unknown.
    pub exe: ExeId,
    /// Its cgroup v2 id from the kernel at exec (inherited at fork); 0 when unknown (a
    /// process seeded from `/proc`, until `enrich::container` looks it up).
    pub cgroup_id: u64,
    /// It called `listen(2)` since its last exec, or it is a forked worker of a process that
    /// did (a pool's worker holds the pool's listening socket): it accepts connections.
    pub listening: bool,
    /// It runs an installed package manager (apt, dpkg, npm, pip, …), directly or as an
    /// interpreter's script, and is not below a web server; set by the pipeline at exec
    /// (`lineage`), inherited by forks.
    pub package_manager: bool,
    /// The uid it exec'd (or was forked) with; `u32::MAX` when the agent did not see it.
    pub uid: u32,
}

/// Where apt's fetch methods live: apt downloads through these children.
pub const APT_METHODS: &str = "/usr/lib/apt/methods/";

impl Proc {
    /// A process the tree learns of from `/proc`: no exec or fork seen.
    fn from_stat(s: Stat) -> Self {
        Proc::known_only_as(s.ppid, s.start, s.comm.into())
    }

    /// A process of which the tree knows only its parent, start and name.
    fn known_only_as(ppid: u32, start: u64, comm: Arc<str>) -> Self {
        Proc {
            ppid,
            start,
            comm,
            comm_class: None,
            filename: None,
            forked_by: 0,
            exe: ExeId::default(),
            cgroup_id: 0,
            listening: false,
            package_manager: false,
            uid: u32::MAX,
        }
    }
}

#[derive(Debug)]
pub struct ProcessTree {
    /// By pid: a fast hash (pids are the kernel's, not an attacker's choice of keys).
    procs: FxHashMap<u32, Proc>,
    ns_per_tick: u64,
}

/// The fields of `/proc/<pid>/stat` the tree needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub ppid: u32,
    pub start: u64,
    /// Session id: a login shell leads its session.
    pub session: u32,
    /// Controlling terminal (`tty_nr`, 0: none).
    pub tty: u32,
}

/// Parse one `/proc/<pid>/stat` line. The comm sits in parentheses and may itself contain
/// spaces and parentheses, so the fields are taken after the *last* `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    // The process chose its name: escaped like the kernel's copy (see `crate::untrusted`).
    let comm = crate::untrusted::escape(line.get(open + 1..close)?).into_owned();
    // After ")": state(3) ppid(4) ... starttime(22): index 0 is the state.
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let session = rest.get(3)?.parse().ok()?;
    let tty = rest.get(4)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some(Stat {
        pid,
        comm,
        ppid,
        start,
        session,
        tty,
    })
}

/// Read `<proc_root>/<pid>/stat`.
pub fn read_stat(proc_root: &Path, pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Whether the process `pid` that started at `start` (clock ticks) is still running: a
/// process that exited, or a pid reused by another process, is not.
pub fn is_alive(proc_root: &Path, pid: u32, start: u64) -> bool {
    read_stat(proc_root, pid).is_some_and(|s| s.start == start)
}

/// Whether a process `pid` runs at all (its `/proc` entry exists): one `stat`, no read of its
/// status. A pid reused since is not told apart ([`is_alive`] does that).
pub fn exists(proc_root: &Path, pid: u32) -> bool {
    fs::symlink_metadata(proc_root.join(pid.to_string())).is_ok()
}

impl ProcessTree {
    /// An empty tree; `ticks_per_sec` is `sysconf(_SC_CLK_TCK)` (USER_HZ).
    pub fn new(ticks_per_sec: u64) -> Self {
        Self {
            procs: FxHashMap::default(),
            ns_per_tick: 1_000_000_000 / ticks_per_sec.max(1),
        }
    }

    /// A tree holding every process now in `proc_root` (normally `/proc`).
    pub fn seed(proc_root: &Path, ticks_per_sec: u64) -> std::io::Result<Self> {
        let mut tree = Self::new(ticks_per_sec);
        for entry in fs::read_dir(proc_root)? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may exit between readdir and read: skip it.
            if let Some(stat) = read_stat(proc_root, pid) {
                tree.insert_stat(stat);
            }
        }
        Ok(tree)
    }

    fn insert_stat(&mut self, s: Stat) {
        self.procs.insert(s.pid, Proc::from_stat(s));
    }

    /// Kernel ns since boot → clock ticks, exactly as `/proc` rounds them.
    pub fn ticks(&self, boot_ns: u64) -> u64 {
        boot_ns / self.ns_per_tick
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn get(&self, tgid: u32) -> Option<&Proc> {
        self.procs.get(&tgid)
    }

    /// `parent` created the new process `child`, which starts with the forking task's comm.
    pub fn on_fork(&mut self, parent: u32, child: u32, child_start_ns: u64, comm: &str) {
        let start = self.ticks(child_start_ns);
        let (filename, exe, cgroup_id, listening, package_manager, uid, parent_comm) =
            self.procs.get(&parent).map_or(
                (None, ExeId::default(), 0, false, false, u32::MAX, None),
                |p| {
                    (
                        p.filename.clone(),
                        p.exe,
                        p.cgroup_id,
                        p.listening,
                        p.package_manager,
                        p.uid,
                        Some((&p.comm, p.comm_class)),
                    )
                },
            );
        // The child starts with the forking task's comm: nearly always the parent's own.
        let (comm, comm_class) = match parent_comm {
            Some((c, class)) if **c == *comm => (c.clone(), class),
            _ => (Arc::from(comm), None),
        };
        self.procs.insert(
            child,
            Proc {
                ppid: parent,
                start,
                comm,
                comm_class,
                filename,
                forked_by: parent,
                exe,
                cgroup_id,
                listening,
                package_manager,
                uid,
            },
        );
    }

    /// `tgid` (child of `ppid`) now runs `filename` as `comm`. A new program has not
    /// listened yet (listening sockets are close-on-exec by convention).
    pub fn on_exec(&mut self, tgid: u32, ppid: u32, start_ns: u64, comm: &str, filename: Arc<str>) {
        let start = self.ticks(start_ns);
        let p = self
            .procs
            .entry(tgid)
            .or_insert_with(|| Proc::known_only_as(ppid, start, Arc::from("")));
        if ppid != 0 {
            p.ppid = ppid;
        }
        p.start = start;
        if *p.comm != *comm {
            p.comm = Arc::from(comm);
            p.comm_class = None;
        }
        p.filename = Some(filename);
        p.exe = ExeId::default();
        p.listening = false;
        p.package_manager = false;
    }

    /// Keep what a detector made of `tgid`'s current comm (see [`Proc::comm_class`]).
    pub fn set_comm_class(&mut self, tgid: u32, class: u8) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.comm_class = Some(class);
        }
    }

    /// The exec identity of `tgid`, set after [`ProcessTree::on_exec`]: its executable, its uid
    /// and its cgroup (0: unknown, keeps what the tree had).
    pub fn set_exec_details(&mut self, tgid: u32, exe: ExeId, uid: u32, cgroup_id: u64) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.exe = exe;
            p.uid = uid;
            if cgroup_id != 0 {
                p.cgroup_id = cgroup_id;
            }
        }
    }

    /// `tgid`'s cgroup id, looked up from `/proc` for a process the kernel has not stamped.
    pub fn set_cgroup(&mut self, tgid: u32, cgroup_id: u64) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.cgroup_id = cgroup_id;
        }
    }

    /// `tgid`'s new program is a package manager (until its next exec; its forks too).
    pub fn mark_package_manager(&mut self, tgid: u32) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.package_manager = true;
        }
    }

    /// The name of the package manager `tgid` runs for: its own program's, or, for one of
    /// apt's fetch methods ([`APT_METHODS`], which apt forks to download), its parent's. Other
    /// descendants (a package's scripts, a build tool's children) do not count: their
    /// connections are not package sources.
    pub fn package_manager_of(&self, tgid: u32) -> Option<Arc<str>> {
        let p = self.procs.get(&tgid)?;
        if p.package_manager {
            return Some(p.comm.clone());
        }
        let method = p
            .filename
            .as_deref()
            .is_some_and(|f| f.starts_with(APT_METHODS));
        let parent = self.procs.get(&p.ppid).filter(|_| method)?;
        parent.package_manager.then(|| parent.comm.clone())
    }

    /// `tgid` called `listen(2)`: it accepts connections (TCP or unix stream).
    pub fn on_listen(&mut self, tgid: u32, proc_root: &Path) {
        if self.lookup_or_load(tgid, proc_root).is_some()
            && let Some(p) = self.procs.get_mut(&tgid)
        {
            p.listening = true;
        }
    }

    /// `tgid` no longer holds a listening socket: it is no server any more.
    pub fn stopped_listening(&mut self, tgid: u32) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.listening = false;
        }
    }

    /// The process `tgid` started at `start_ns` ended. A later process that reused the pid
    /// (different start) is left alone.
    pub fn on_exit(&mut self, tgid: u32, start_ns: u64) {
        let start = self.ticks(start_ns);
        if let Some(p) = self.procs.get(&tgid)
            && (start_ns == 0 || p.start == start)
        {
            self.procs.remove(&tgid);
        }
    }

    /// Look `tgid` up, filling it in from `/proc` if the tree missed it (lost records).
    fn lookup_or_load(&mut self, tgid: u32, proc_root: &Path) -> Option<&Proc> {
        // One hash lookup for the common case: every exec walks its ancestors through here.
        match self.procs.entry(tgid) {
            Entry::Occupied(known) => Some(known.into_mut()),
            Entry::Vacant(missed) => {
                let stat = read_stat(proc_root, tgid).filter(|s| s.pid == tgid)?;
                Some(missed.insert(Proc::from_stat(stat)))
            }
        }
    }

    /// (pid, comm) of `tgid`'s parent, grandparent, … (parent first), up to pid 1.
    pub fn ancestry(&mut self, tgid: u32, proc_root: &Path) -> Vec<(u32, Arc<str>)> {
        self.ancestry_with(tgid, proc_root, |_| {})
    }

    /// [`Self::ancestry`], showing each ancestor's node to `each` on the way (so a caller
    /// needing more of them does not look each one up again).
    pub fn ancestry_with(
        &mut self,
        tgid: u32,
        proc_root: &Path,
        mut each: impl FnMut(&Proc),
    ) -> Vec<(u32, Arc<str>)> {
        // Most processes sit a handful of levels below pid 1: one allocation, no regrowth.
        let mut out = Vec::with_capacity(8);
        let mut cur = self.procs.get(&tgid).map_or(0, |p| p.ppid);
        while cur != 0 && out.len() < MAX_DEPTH {
            let Some(p) = self.lookup_or_load(cur, proc_root) else {
                break;
            };
            each(p);
            out.push((cur, p.comm.clone()));
            if cur == 1 {
                break;
            }
            cur = p.ppid;
        }
        out
    }

    /// `tgid`'s children, grandchildren, … (breadth first), with their start times.
    #[allow(
        dead_code,
        reason = "the killer walks live parents from /proc instead; kept for tree consumers \
                  (decision target sets follow a process tree)"
    )]
    pub fn descendants(&self, tgid: u32) -> Vec<(u32, u64)> {
        let mut out: Vec<(u32, u64)> = Vec::new();
        let mut frontier = vec![tgid];
        while let Some(parent) = frontier.pop() {
            for (&pid, p) in &self.procs {
                if p.ppid == parent && pid != parent && !out.iter().any(|(q, _)| *q == pid) {
                    out.push((pid, p.start));
                    frontier.push(pid);
                }
            }
            if out.len() > 10_000 {
                break; // a damaged tree; enough
            }
        }
        out
    }

    /// The processes called `comm` (a scan of the whole tree: for rare lookups only).
    pub fn pids_named(&self, comm: &str) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, p)| &*p.comm == comm)
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// Whether `ancestor` is `tgid` or above it in the tree.
    pub fn descends_from(&self, tgid: u32, ancestor: u32) -> bool {
        let mut cur = tgid;
        for _ in 0..MAX_DEPTH {
            if cur == ancestor {
                return true;
            }
            match self.procs.get(&cur) {
                Some(p) if p.ppid != 0 && p.ppid != cur => cur = p.ppid,
                _ => return false,
            }
        }
        false
    }

    /// Drop every process for which `alive(tgid, start)` says no: the safety net for exit
    /// records lost to a full ring buffer. Returns how many were dropped.
    pub fn retain_alive(&mut self, mut alive: impl FnMut(u32, u64) -> bool) -> usize {
        let before = self.procs.len();
        self.procs.retain(|&tgid, p| alive(tgid, p.start));
        before - self.procs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKS: u64 = 100;
    const NS: u64 = 10_000_000; // one tick at 100 Hz

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "1234 (we ird) (x)) S 77 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 98765 1000 200 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.comm, "we ird) (x)");
        assert_eq!(s.ppid, 77);
        assert_eq!(s.start, 98765);
        assert_eq!((s.session, s.tty), (1234, 0));
        let s =
            parse_stat("9 (a\nb\x1b[2J) S 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 0").unwrap();
        assert_eq!(s.comm, "a\\nb\\x1b[2J", "escaped like the kernel's copy");
    }

    #[test]
    fn rejects_garbage_stat() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S"), None);
        assert_eq!(parse_stat("abc (x) S 1 2 3"), None);
    }

    #[test]
    fn fork_exec_exit_build_and_prune() {
        let mut t = ProcessTree::new(TICKS);
        let root = Path::new("/nonexistent");
        t.on_exec(1, 0, 0, "systemd", "/sbin/init".into());
        t.on_fork(1, 100, 5 * NS, "systemd");
        t.on_exec(100, 1, 5 * NS, "node", "/usr/bin/node".into());
        t.on_fork(100, 200, 9 * NS, "node");
        t.on_exec(200, 100, 9 * NS, "sh", "/bin/sh".into());
        t.on_fork(200, 300, 12 * NS, "sh");
        t.on_exec(300, 200, 12 * NS, "bash", "/bin/bash".into());
        let ancestry = t.ancestry(300, root);
        assert_eq!(
            ancestry,
            [
                (200, "sh".into()),
                (100, "node".into()),
                (1, "systemd".into())
            ]
        );
        assert!(t.descends_from(300, 100));
        assert!(!t.descends_from(100, 300));

        // A stale exit for a reused pid (other start time) changes nothing.
        t.on_exit(200, 99 * NS);
        assert!(t.get(200).is_some());
        t.on_exit(200, 9 * NS);
        assert!(t.get(200).is_none());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn descendants_of_a_subtree() {
        let mut t = ProcessTree::new(TICKS);
        t.on_exec(1, 0, 0, "init", "/init".into());
        t.on_fork(1, 10, NS, "init");
        t.on_fork(10, 11, 2 * NS, "a");
        t.on_fork(11, 12, 3 * NS, "b");
        t.on_fork(1, 20, 4 * NS, "init");
        let mut d = t.descendants(10);
        d.sort();
        assert_eq!(d, [(11, 2), (12, 3)]);
        assert!(t.descendants(12).is_empty());
    }

    #[test]
    fn forked_child_inherits_comm_until_exec() {
        let mut t = ProcessTree::new(TICKS);
        t.on_exec(10, 1, NS, "bash", "/bin/bash".into());
        t.on_fork(10, 11, 2 * NS, "bash");
        let c = t.get(11).unwrap();
        assert_eq!((c.ppid, &*c.comm, c.start), (10, "bash", 2));
        assert_eq!(c.filename.as_deref(), Some("/bin/bash"));
    }

    /// A cached classification belongs to a comm: a fork with the same comm keeps it, a fork
    /// under another name (the forking thread renamed itself) and an exec drop it.
    #[test]
    fn comm_class_follows_the_comm() {
        let mut t = ProcessTree::new(TICKS);
        t.on_exec(10, 1, NS, "nginx", "/usr/sbin/nginx".into());
        t.set_comm_class(10, 4);
        t.on_fork(10, 11, 2 * NS, "nginx");
        assert_eq!(t.get(11).unwrap().comm_class, Some(4));
        t.on_fork(10, 12, 2 * NS, "worker");
        assert_eq!(t.get(12).unwrap().comm_class, None);
        t.on_exec(11, 10, 2 * NS, "sh", "/bin/sh".into());
        assert_eq!(t.get(11).unwrap().comm_class, None);
        t.set_comm_class(11, 1);
        t.on_exec(11, 10, 2 * NS, "sh", "/bin/sh".into());
        assert_eq!(
            t.get(11).unwrap().comm_class,
            Some(1),
            "same comm, same class"
        );
    }

    #[test]
    fn listening_is_inherited_by_forks_and_reset_by_exec() {
        let mut t = ProcessTree::new(TICKS);
        let root = Path::new("/nonexistent");
        t.on_exec(10, 1, NS, "php-fpm8.2", "/usr/sbin/php-fpm8.2".into());
        t.on_listen(10, root);
        t.on_fork(10, 11, 2 * NS, "php-fpm8.2");
        assert!(
            t.get(11).unwrap().listening,
            "a pool worker holds the socket"
        );
        t.on_exec(11, 10, 2 * NS, "sh", "/bin/sh".into());
        assert!(
            !t.get(11).unwrap().listening,
            "a new program has not listened"
        );
        // An unknown process that is not in /proc either is not invented.
        t.on_listen(999_999, root);
        assert!(t.get(999_999).is_none());
    }

    #[test]
    fn exec_details_are_kept_and_inherited() {
        let mut t = ProcessTree::new(TICKS);
        t.on_exec(10, 1, NS, "node", "/usr/bin/node".into());
        let id = ExeId {
            ino: 5,
            dev: 8,
            _pad: 0,
        };
        t.set_exec_details(10, id, 0, 0);
        t.mark_package_manager(10);
        t.on_fork(10, 11, 2 * NS, "node");
        let c = t.get(11).unwrap();
        assert_eq!((c.exe, c.package_manager), (id, true));
        t.on_exec(11, 10, 2 * NS, "sh", "/bin/sh".into());
        let c = t.get(11).unwrap();
        assert_eq!((c.exe, c.package_manager), (ExeId::default(), false));
    }

    #[test]
    fn a_package_manager_fetches_itself_or_through_its_child() {
        let mut t = ProcessTree::new(TICKS);
        t.on_exec(10, 1, NS, "apt", "/usr/bin/apt".into());
        t.mark_package_manager(10);
        t.on_fork(10, 11, 2 * NS, "apt");
        t.on_exec(11, 10, 2 * NS, "http", "/usr/lib/apt/methods/http".into());
        t.on_fork(11, 12, 3 * NS, "http");
        t.on_exec(12, 11, 3 * NS, "curl", "/usr/bin/curl".into());
        // Any other child of a package manager (a build tool's test binary) is not one.
        t.on_fork(10, 13, 4 * NS, "apt");
        t.on_exec(13, 10, 4 * NS, "sh", "/bin/sh".into());
        assert_eq!(t.package_manager_of(10).as_deref(), Some("apt"));
        assert_eq!(t.package_manager_of(11).as_deref(), Some("apt"));
        assert_eq!(t.package_manager_of(12), None);
        assert_eq!(t.package_manager_of(13), None);
        assert_eq!(t.package_manager_of(1), None);
    }

    #[test]
    fn kernel_ns_round_like_proc() {
        let t = ProcessTree::new(100);
        assert_eq!(t.ticks(19_999_999), 1);
        assert_eq!(t.ticks(20_000_000), 2);
    }

    #[test]
    fn ancestry_is_bounded_on_cycles() {
        let mut t = ProcessTree::new(TICKS);
        t.on_exec(5, 6, 0, "a", "/a".into());
        t.on_exec(6, 5, 0, "b", "/b".into());
        let root = Path::new("/nonexistent");
        assert_eq!(t.ancestry(5, root).len(), MAX_DEPTH);
        assert!(!t.descends_from(5, 99));
    }

    #[test]
    fn seeds_from_real_proc() {
        let t = ProcessTree::seed(Path::new("/proc"), 100).unwrap();
        let me = std::process::id();
        let p = t.get(me).expect("own process in seeded tree");
        let stat = read_stat(Path::new("/proc"), me).unwrap();
        assert_eq!(p.ppid, stat.ppid);
        assert_eq!(p.start, stat.start);
    }

    #[test]
    fn a_process_exists_while_its_proc_entry_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        assert!(exists(dir.path(), 42));
        assert!(!exists(dir.path(), 43));
        assert!(exists(Path::new("/proc"), std::process::id()));
    }

    #[test]
    fn retain_alive_prunes() {
        let mut t = ProcessTree::new(TICKS);
        t.on_exec(1, 0, 0, "init", "/init".into());
        t.on_exec(2, 1, 0, "gone", "/gone".into());
        assert_eq!(t.retain_alive(|tgid, _| tgid == 1), 1);
        assert_eq!(t.len(), 1);
    }
}
