//! A container's network relay: a rootless container on its own network
//! (`--network slirp4netns`) reaches the outside through a `slirp4netns` process on the host,
//! a process of the container's user that Podman started and left to init. Its connections
//! are the container's, so its events name the container, marked as its relay.
//!
//! The relay is tied to its container by what the kernel says, never by a name alone:
//!
//! 1. it runs a packaged `slirp4netns` (`/proc/<pid>/exe`; any user can name a process
//!    `slirp4netns`);
//! 2. its command line names the container's network namespace: `--netns-type=path PATH`
//!    (Podman 4) or a PID (the default type). The path is never opened or stat'ed (it may lie
//!    on a filesystem its user serves, and it exists only in the user's mount namespace):
//!    the namespace mounted there is read from the kernel's `/proc/<conmon>/mountinfo`, the
//!    mount table of the container's monitor, whose mount namespace is the one Podman made
//!    the path in;
//! 3. that namespace is the one the container's processes are in: the monitor's child (the
//!    container's init) has it as `/proc/<pid>/ns/net`;
//! 4. the relay and the monitor are the same user in the same user namespace.
//!
//! Everything read is under `/proc` (kernel-made text, capped); the command line is the
//! relay user's choice, so only that user's own containers can be claimed by a relay, as with
//! [`super::monitor`].

use std::{
    io::Read,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Container, Containers, monitor};

/// Where distributions install slirp4netns.
const SLIRP_PATHS: [&str; 3] = [
    "/usr/bin/slirp4netns",
    "/usr/libexec/podman/slirp4netns",
    "/usr/local/bin/slirp4netns",
];
/// Largest command line and mount table read.
const CMDLINE_CAP: u64 = 64 * 1024;
const MOUNTINFO_CAP: u64 = 1 << 20;
/// Relays remembered at most; monitors, and distinct mount tables, examined at most per relay.
const MAX_RELAYS: usize = 4_096;
const MAX_MONITORS: usize = 64;
const MAX_MOUNT_TABLES: usize = 4;
/// The most relays of one user examined a second (each reads a few `/proc` files per monitor
/// of its user): a user starting many relays gets no more.
const LOOKUPS_PER_SECOND: u32 = 20;
/// What `network_relay` says for a slirp4netns relay.
pub const SLIRP4NETNS: &str = "slirp4netns";

/// The network namespace a relay's command line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--netns-type=path PATH`: a bind mount of the namespace.
    Path(String),
    /// `PID` (the default type): the namespace of that process.
    Pid(u32),
}

/// slirp4netns's options that take a value in the next argument when not written `--x=v`.
const WITH_VALUE: [&str; 14] = [
    "-e",
    "--exit-fd",
    "-r",
    "--ready-fd",
    "-m",
    "--mtu",
    "-a",
    "--api-socket",
    "--cidr",
    "--netns-type",
    "--userns-path",
    "--outbound-addr",
    "--outbound-addr6",
    "--macaddress",
];

/// The namespace a slirp4netns command line (NUL-separated, as in `/proc/<pid>/cmdline`)
/// relays for: `slirp4netns [OPTION]... PID|PATH [TAPNAME]`. `None` for anything else
/// (another target type, a relative path, more or fewer operands).
pub fn parse_slirp_cmdline(cmdline: &[u8]) -> Option<Target> {
    // A command line ends in a NUL; one a process rewrote is padded with more.
    let end = cmdline.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let args: Vec<&[u8]> = match end {
        0 => Vec::new(),
        _ => cmdline[..end].split(|b| *b == 0).collect(),
    };
    let args: Vec<&str> = args
        .iter()
        .map(|a| std::str::from_utf8(a).ok())
        .collect::<Option<_>>()?;
    let mut operands = Vec::new();
    let mut netns_type = "pid";
    let mut target_type = "netns";
    let mut rest = args.iter().skip(1);
    while let Some(&arg) = rest.next() {
        if arg == "--" {
            operands.extend(rest.by_ref().copied());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            operands.push(arg);
            continue;
        }
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) if arg.starts_with("--") => (f, Some(v)),
            _ => (arg, None),
        };
        let value = match value {
            Some(v) => Some(v),
            None if WITH_VALUE.contains(&flag) => Some(*rest.next()?),
            None => None,
        };
        match (flag, value) {
            ("--netns-type", Some(v)) => netns_type = v,
            ("--target-type", Some(v)) => target_type = v,
            _ => {}
        }
    }
    if target_type != "netns" || !(1..=2).contains(&operands.len()) {
        return None;
    }
    match netns_type {
        "path" if operands[0].starts_with('/') => Some(Target::Path(operands[0].to_string())),
        "pid" => operands[0].parse().ok().filter(|p| *p > 0).map(Target::Pid),
        _ => None,
    }
}

/// The inode of the network namespace mounted at `path` in a `/proc/<pid>/mountinfo` text
/// (the topmost mount there), when it is one (`nsfs`, root `net:[N]`).
pub fn netns_mounted_at(mountinfo: &str, path: &str) -> Option<u64> {
    mountinfo.lines().rev().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        (fs.split(' ').next() == Some("nsfs") && unescape_mount(point) == path)
            .then(|| netns_inode(root))
            .flatten()
    })
}

/// A mount point as the kernel writes it in `mountinfo`: space, tab, newline and backslash
/// as octal escapes.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// `N` of a namespace link's text `net:[N]`.
pub fn netns_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// What the kernel says of a process, for tying a relay to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub uid: u32,
    /// The inode of its user namespace.
    pub userns: u64,
}

/// Whether a relay (`relay`, whose command line names network namespace `named`) serves the
/// container monitored by `monitor`, whose init is in network namespace `container_netns`:
/// the same namespace, the same user, the same user namespace.
pub fn serves(relay: &Seen, named: u64, monitor: &Seen, container_netns: u64) -> bool {
    named == container_netns && relay.uid == monitor.uid && relay.userns == monitor.userns
}

/// Whether process `pid` runs a packaged slirp4netns (by the file it runs).
pub fn is_slirp4netns(proc_root: &Path, pid: u32) -> bool {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe"))
        .is_ok_and(|exe| SLIRP_PATHS.iter().any(|p| exe == Path::new(p)))
}

/// A `/proc` file of process `pid`, capped.
pub fn read_proc(proc_root: &Path, pid: u32, file: &str, cap: u64) -> Option<Vec<u8>> {
    let f = std::fs::File::open(proc_root.join(pid.to_string()).join(file)).ok()?;
    let mut out = Vec::new();
    f.take(cap).read_to_end(&mut out).ok()?;
    Some(out)
}

/// The relay's command line.
pub fn cmdline(proc_root: &Path, pid: u32) -> Option<Vec<u8>> {
    read_proc(proc_root, pid, "cmdline", CMDLINE_CAP)
}

/// The mount table of process `pid` (its mount namespace's), capped.
pub fn mountinfo(proc_root: &Path, pid: u32) -> Option<String> {
    read_proc(proc_root, pid, "mountinfo", MOUNTINFO_CAP)
        .map(|m| String::from_utf8_lossy(&m).into_owned())
}

/// The inode of process `pid`'s namespace `kind` (`net`, `user`).
pub fn ns_inode(proc_root: &Path, pid: u32, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(proc_root.join(format!("{pid}/ns/{kind}"))).ok()?;
    let text = link.to_str()?;
    text.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The uid and user namespace of process `pid`.
pub fn seen(proc_root: &Path, pid: u32) -> Option<Seen> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(proc_root.join(pid.to_string()))
        .ok()?
        .uid();
    Some(Seen {
        uid,
        userns: ns_inode(proc_root, pid, "user")?,
    })
}

/// The children of process `pid` (its main thread's), as `/proc/<pid>/task/<pid>/children`
/// lists them.
pub fn children(proc_root: &Path, pid: u32) -> Vec<u32> {
    read_proc(proc_root, pid, &format!("task/{pid}/children"), 64 * 1024)
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What the agent knows of a process called `slirp4netns`.
#[derive(Debug)]
pub(super) enum Relay {
    /// It serves this container (marked as its relay's).
    Serves(Arc<Container>),
    /// It is no relay (another program, a command line naming no namespace): final.
    Not,
    /// No container of its user matched while these monitors (sorted pids) ran: examined
    /// again once they change (the container it serves may not have started yet).
    NotYet(Vec<u32>),
}

impl Containers {
    /// The container process `tgid` relays the network of, when it is a packaged
    /// `slirp4netns` whose command line names the network namespace of a container
    /// monitored by one of `monitors` (the pids of processes called `conmon`; asked only for
    /// a relay not tied yet) of the same user and user namespace. Cached by pid and start
    /// time; at most [`LOOKUPS_PER_SECOND`] examinations a second per user.
    pub fn of_relay(
        &mut self,
        tgid: u32,
        monitors: impl FnOnce() -> Vec<u32>,
    ) -> Option<Arc<Container>> {
        let start = crate::enrich::tree::read_stat(&self.proc_root, tgid)?.start;
        let cached = self
            .by_relay
            .get(&tgid)
            .filter(|(at, _)| *at == start)
            .map(|(_, r)| r);
        let before = match cached {
            Some(Relay::Serves(c)) => return Some(c.clone()),
            Some(Relay::Not) => return None,
            Some(Relay::NotYet(before)) => Some(before.clone()),
            None => None,
        };
        if self.by_relay.len() >= MAX_RELAYS {
            self.by_relay.clear();
        }
        // Another program named slirp4netns costs one look at its executable, once.
        let me = seen(&self.proc_root, tgid);
        let Some(me) = me.filter(|_| is_slirp4netns(&self.proc_root, tgid)) else {
            self.by_relay.insert(tgid, (start, Relay::Not));
            return None;
        };
        let mut monitors = monitors();
        monitors.sort_unstable();
        if before.as_ref() == Some(&monitors) {
            return None;
        }
        if !self.may_examine(me.uid) {
            tracing::debug!(tgid, "network relay not examined: too many this second");
            return None;
        }
        let relay = self.examine_relay(tgid, &me, monitors);
        tracing::debug!(tgid, relay = ?relay, "network relay examined");
        let container = match &relay {
            Relay::Serves(c) => Some(c.clone()),
            _ => None,
        };
        self.by_relay.insert(tgid, (start, relay));
        container
    }

    /// Whether one more relay of user `uid` may be examined this second: each user has
    /// [`LOOKUPS_PER_SECOND`], so one user's relays never hold up another's.
    fn may_examine(&mut self, uid: u32) -> bool {
        let now = Instant::now();
        if self.relay_lookups.len() >= MAX_RELAYS {
            self.relay_lookups.clear();
        }
        let (since, count) = self.relay_lookups.entry(uid).or_insert((now, 0));
        if now.duration_since(*since) >= Duration::from_secs(1) {
            (*since, *count) = (now, 0);
        }
        *count += 1;
        *count <= LOOKUPS_PER_SECOND
    }

    /// Which of the containers `monitors` watch the packaged slirp4netns `tgid` (`relay`:
    /// its user) serves.
    fn examine_relay(&mut self, tgid: u32, relay: &Seen, monitors: Vec<u32>) -> Relay {
        let proc_root = self.proc_root.clone();
        let p = proc_root.as_path();
        let Some(target) = cmdline(p, tgid).and_then(|c| parse_slirp_cmdline(&c)) else {
            return Relay::Not;
        };
        // The network namespace the command line names, by each monitor's mount namespace
        // (a few mount tables read at most: a user's monitors share one).
        let mut tables: Vec<(u64, Option<u64>)> = Vec::new();
        let mut named_by = |m: u32| match &target {
            Target::Path(path) => {
                let mnt = ns_inode(p, m, "mnt")?;
                if let Some((_, named)) = tables.iter().find(|(ns, _)| *ns == mnt) {
                    return *named;
                }
                if tables.len() >= MAX_MOUNT_TABLES {
                    return None;
                }
                let named = mountinfo(p, m).and_then(|t| netns_mounted_at(&t, path));
                tables.push((mnt, named));
                named
            }
            Target::Pid(pid) => ns_inode(p, *pid, "net"),
        };
        let mine = monitors
            .iter()
            .copied()
            .filter(|m| seen(p, *m).as_ref() == Some(relay) && monitor::is_conmon(p, *m))
            .take(MAX_MONITORS)
            .collect::<Vec<_>>();
        for m in mine {
            let (Some(named), Some(mon)) = (named_by(m), seen(p, m)) else {
                continue;
            };
            let served = children(p, m).into_iter().find(|child| {
                ns_inode(p, *child, "net").is_some_and(|netns| serves(relay, named, &mon, netns))
            });
            if let Some(c) =
                served.and_then(|child| self.of_monitored(child, &[(m, Arc::from("conmon"))]))
            {
                return Relay::Serves(Arc::new(Container {
                    network_relay: Some(SLIRP4NETNS.into()),
                    ..(*c).clone()
                }));
            }
        }
        Relay::NotYet(monitors)
    }
}

#[cfg(test)]
mod tests;
