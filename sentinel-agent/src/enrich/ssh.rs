//! Whose SSH sessions make their peer trusted: only an **admin's own** session. A TCP connection
//! to the SSH port proves nothing (anyone can open one and sit in the pre-authentication phase
//! for `LoginGraceTime`), and neither does a login record: `ut_host` in utmp can be written by
//! the setgid `utempter` helper that tmux and screen bring, so any local user could make a C2
//! address look like a logged-in peer. Nothing here reads utmp or logind. A peer is trusted
//! when all of these hold:
//!
//! 1. **A connection to an SSH port.** An ESTABLISHED TCP connection from that peer to a local
//!    port in `trust.ssh_ports`, asked of the kernel through sock_diag netlink
//!    (`enrich::sockets`, filtered on state in the kernel, so TIME_WAIT storms cost nothing),
//!    with `/proc/net/tcp{,6}` as the fallback; each with its socket inode. None: nothing more
//!    is read.
//! 2. **Held by sshd's session process, by inode.** A process whose executable name is `sshd`
//!    or `sshd-session` holds that socket (`/proc/PID/fd` → `socket:[inode]`). sshd is not
//!    dumpable, so reading its descriptors takes `CAP_SYS_PTRACE`, which the agent keeps for
//!    exactly such reads (`daemon::service::RUNTIME_CAPS`). The process runs as root, or is the
//!    child of a root-owned sshd process (a user's own program named `sshd` is neither).
//! 3. **Of a user in `trust.ssh_users`.** The login user is the process's real uid, and its
//!    title must name that user. What OpenSSH 9.2 (Debian 12) shows, checked on the real server
//!    with privilege separation: a non-root login is served by the root-owned monitor
//!    (`sshd: alice [priv]`) and its child `sshd: alice@pts/0` (or `alice@notty`, or `alice`
//!    before a session channel opens), which runs as alice; both hold the socket. A root login
//!    skips that second fork: one root-owned `sshd: root@pts/0` holds it. Before
//!    authentication the holders are `sshd: [accepted]` (root, alone until it forks) and its
//!    `sshd: [net]` child (the privsep user), and the monitor is titled `sshd: NAME [priv]` as
//!    soon as a valid user *name* was sent; a new session child is root for a moment before it
//!    drops to the user. So a uid alone is no proof (a fresh connection's process is root too).
//!    The title `PROG: NAME` or `PROG: NAME@ttys` is set only after authentication, by the
//!    process serving the session once it runs as the user; it is trusted only when NAME's uid
//!    in `/etc/passwd` is the process's real uid and NAME is in `trust.ssh_users` (names and
//!    `%groups`, resolved by `enrich::accounts` from `/etc/passwd` and `/etc/group` at every
//!    refresh: a user added to `sudo` counts at once). No user can rewrite the title of a
//!    root process or of a non-dumpable sshd child.
//!
//! Limits: an SSH server other than OpenSSH (dropbear), or one without privilege separation,
//! serves no such process, and its sessions are not trusted (set `trust.ips` for them); a peer
//! behind the same NAT as a logged-in admin shares the admin's address and so its trust.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use tracing::debug;

use crate::enrich::{accounts, sockets, tree::read_stat};

/// Process names of sshd's own processes (OpenSSH < 9.8 runs sessions in `sshd`, later
/// releases in `sshd-session`).
const SSHD_NAMES: [&str; 2] = ["sshd", "sshd-session"];

/// Whether `comm` is the name of one of sshd's own processes.
pub fn is_sshd(comm: &str) -> bool {
    SSHD_NAMES.contains(&comm)
}

/// Where the process, socket and account tables are read.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `/proc`.
    pub proc_root: PathBuf,
    /// `/etc` (`passwd`, `group`).
    pub etc: PathBuf,
    /// Ask the kernel for the connections (sock_diag); false: read `<proc_root>/net/tcp*`.
    pub netlink: bool,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            etc: PathBuf::from("/etc"),
            netlink: true,
        }
    }
}

/// Whose SSH sessions are trusted: sessions to these local ports (`trust.ssh_ports`), of these
/// users (`trust.ssh_users`: names and `%groups`). Either empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshTrust {
    pub ports: Vec<u16>,
    pub users: Vec<String>,
}

impl SshTrust {
    pub fn new<S: AsRef<str>>(ports: &[u16], users: &[S]) -> Self {
        Self {
            ports: ports.to_vec(),
            users: users.iter().map(|u| u.as_ref().to_string()).collect(),
        }
    }

    /// Whether no session can be trusted (nothing needs reading).
    pub fn is_off(&self) -> bool {
        self.ports.is_empty() || self.users.is_empty()
    }
}

/// The peers of the live SSH sessions of `trust.users` to a local port in `trust.ports`.
pub fn authenticated_peers(src: &Sources, trust: &SshTrust) -> HashSet<IpAddr> {
    let mut peers = HashSet::new();
    if trust.is_off() {
        return peers;
    }
    let connections = connections(src, &trust.ports);
    if connections.is_empty() {
        return peers;
    }
    let (passwd, group) = accounts::read(&src.etc);
    let trusted = accounts::resolve(&trust.users, &passwd, &group);
    let Ok(entries) = fs::read_dir(&src.proc_root) else {
        return peers;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Some(stat) = read_stat(&src.proc_root, pid) else {
            continue;
        };
        if !is_sshd(&stat.comm) {
            continue;
        }
        let held: Vec<IpAddr> = socket_inodes(&src.proc_root, pid)
            .filter_map(|inode| connections.get(&inode).copied())
            .collect();
        if held.is_empty() {
            continue;
        }
        match session_user(&src.proc_root, pid, stat.ppid, &passwd) {
            Some(user) if trusted.contains(&user) => peers.extend(held),
            Some(user) => debug!(
                pid,
                user,
                ?held,
                "SSH session of a user not in trust.ssh_users"
            ),
            None => {}
        }
    }
    peers
}

/// ESTABLISHED connections to a local port in `ports`: socket inode → peer.
fn connections(src: &Sources, ports: &[u16]) -> HashMap<u64, IpAddr> {
    if src.netlink {
        match sockets::established(ports) {
            Ok(conns) => return conns,
            Err(e) => debug!("sock_diag failed, reading /proc/net/tcp instead: {e}"),
        }
    }
    let net = src.proc_root.join("net");
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(net.join(f)).ok())
        .flat_map(|text| sockets::established_in_table(&text, ports))
        .collect()
}

/// The socket inodes process `pid` holds (none when its descriptors cannot be read).
fn socket_inodes(proc_root: &Path, pid: u32) -> impl Iterator<Item = u64> {
    fs::read_dir(proc_root.join(pid.to_string()).join("fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| {
            let target = fs::read_link(fd.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
}

/// The user whose authenticated session the sshd process `pid` (child of `ppid`) serves: it
/// runs as root or below a root-owned sshd, and is titled `PROG: NAME` or `PROG: NAME@ttys`,
/// where NAME is the user of its real uid.
fn session_user(proc_root: &Path, pid: u32, ppid: u32, passwd: &str) -> Option<String> {
    let uid = real_uid(proc_root, pid)?;
    if uid != 0 && !is_root_sshd(proc_root, ppid) {
        return None;
    }
    let cmdline = fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
    let name = titled_user(&cmdline)?;
    (accounts::uid_of(passwd, name) == Some(uid)).then(|| name.to_string())
}

/// NAME from an sshd session's title `PROG: NAME` or `PROG: NAME@ttys` (the first string of its
/// cmdline, padded with spaces or NULs). Pre-authentication titles (`[accepted]`, `[net]`,
/// `NAME [priv]`) and the listener's have none.
fn titled_user(cmdline: &[u8]) -> Option<&str> {
    let first = cmdline.split(|b| *b == 0).next()?;
    let title = std::str::from_utf8(first).ok()?.trim_end();
    let (_, rest) = title.split_once(": ")?;
    if rest.is_empty() || rest.contains(char::is_whitespace) || rest.starts_with('[') {
        return None;
    }
    let name = rest.split_once('@').map_or(rest, |(name, _)| name);
    (!name.is_empty()).then_some(name)
}

/// Whether `pid` is a root-owned sshd process.
fn is_root_sshd(proc_root: &Path, pid: u32) -> bool {
    read_stat(proc_root, pid).is_some_and(|s| is_sshd(&s.comm))
        && real_uid(proc_root, pid) == Some(0)
}

/// The real uid of `pid`, from `/proc/<pid>/status` (readable without privileges).
fn real_uid(proc_root: &Path, pid: u32) -> Option<u32> {
    let status = fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, os::unix::fs::symlink};

    use super::*;

    /// One process of the fake `/proc`.
    struct P {
        pid: u32,
        ppid: u32,
        comm: &'static str,
        uid: u32,
        title: &'static str,
        /// Socket inodes it holds.
        sockets: &'static [u64],
    }

    const fn p(
        pid: u32,
        ppid: u32,
        comm: &'static str,
        uid: u32,
        title: &'static str,
        sockets: &'static [u64],
    ) -> P {
        P {
            pid,
            ppid,
            comm,
            uid,
            title,
            sockets,
        }
    }

    const PASSWD: &str = "root:x:0:0::/root:/bin/bash\ntoor:x:0:0::/root:/bin/sh\n\
        sshd:x:102:65534::/run/sshd:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n\
        ops:x:1001:1001::/home/ops:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:ops\nalice:x:1000:\nops:x:1001:\n";

    /// The peer of each established connection to local port 22, by socket inode.
    const CONNECTIONS: [(u64, u8); 8] = [
        (10, 2), // root's session
        (11, 4), // alice's (not an admin)
        (12, 5), // ops' (sudo)
        (13, 3), // pre-authentication
        (14, 6), // pre-authentication, user name "root" sent
        (15, 7), // a session child that has not dropped to its user yet
        (16, 8), // toor (uid 0)
        (17, 9), // held by a user's own program called sshd
    ];

    /// What OpenSSH 9.2 runs (see the module header), plus forgeries.
    const PROCS: [P; 16] = [
        p(
            100,
            1,
            "sshd",
            0,
            "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
            &[1],
        ),
        p(200, 100, "sshd", 0, "sshd: root@pts/0", &[10]),
        p(210, 200, "bash", 0, "-bash", &[]),
        p(300, 100, "sshd", 0, "sshd: alice [priv]", &[11]),
        p(301, 300, "sshd", 1000, "sshd: alice@pts/1", &[11]),
        p(400, 100, "sshd", 0, "sshd: ops [priv]", &[12]),
        p(401, 400, "sshd", 1001, "sshd: ops@notty", &[12]),
        p(500, 100, "sshd", 0, "sshd: [accepted]", &[13]),
        p(501, 500, "sshd", 102, "sshd: [net]", &[13]),
        p(600, 100, "sshd", 0, "sshd: root [priv]", &[14]),
        p(601, 600, "sshd", 102, "sshd: [net]", &[14]),
        p(700, 100, "sshd", 0, "sshd: alice [priv]", &[15]),
        p(701, 700, "sshd", 0, "sshd: alice [priv]", &[15]),
        p(800, 100, "sshd", 0, "sshd: toor@pts/2", &[16]),
        // alice's shell renames itself and claims to be root's session.
        p(900, 301, "sshd", 1000, "sshd: root@pts/9", &[17]),
        p(901, 900, "sshd", 1000, "sshd: alice@pts/9", &[17]),
    ];

    /// A fake root: `proc/` with the processes and `net/tcp`, `etc/` with passwd and group.
    struct Fake(tempfile::TempDir);

    impl Fake {
        fn new(procs: &[P], connections: &[(u64, u8)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let proc_root = dir.path().join("proc");
            for p in procs {
                let d = proc_root.join(p.pid.to_string());
                fs::create_dir_all(d.join("fd")).unwrap();
                let mut fields = vec!["S".to_string(), p.ppid.to_string()];
                fields.extend((2..19).map(|_| "0".to_string()));
                fields.push("4242".into());
                let stat = format!("{} ({}) {}", p.pid, p.comm, fields.join(" "));
                fs::write(d.join("stat"), stat).unwrap();
                let uid = p.uid;
                let status = format!("Name:\t{}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n", p.comm);
                fs::write(d.join("status"), status).unwrap();
                // setproctitle overwrites argv and pads it with NULs.
                let mut cmdline = p.title.as_bytes().to_vec();
                cmdline.extend([0; 16]);
                fs::write(d.join("cmdline"), cmdline).unwrap();
                for (fd, inode) in p.sockets.iter().enumerate() {
                    symlink(
                        format!("socket:[{inode}]"),
                        d.join("fd").join(fd.to_string()),
                    )
                    .unwrap();
                }
            }
            // Local 198.51.100.1:22 ← 198.51.100.<host>, ESTABLISHED; the listener in LISTEN.
            let mut tcp = String::from(
                "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
            );
            tcp.push_str("   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n");
            for (i, (inode, host)) in connections.iter().enumerate() {
                tcp.push_str(&format!(
                    "   {}: 016433C6:0016 {host:02X}6433C6:D431 01 00000000:00000000 00:00000000 00000000     0        0 {inode} 1\n",
                    i + 1
                ));
            }
            fs::create_dir_all(proc_root.join("net")).unwrap();
            fs::write(proc_root.join("net/tcp"), tcp).unwrap();
            fs::create_dir(dir.path().join("etc")).unwrap();
            fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
            fs::write(dir.path().join("etc/group"), GROUP).unwrap();
            Self(dir)
        }

        fn sources(&self) -> Sources {
            Sources {
                proc_root: self.0.path().join("proc"),
                etc: self.0.path().join("etc"),
                netlink: false,
            }
        }

        fn peers(&self, ports: &[u16], users: &[&str]) -> HashSet<IpAddr> {
            authenticated_peers(&self.sources(), &SshTrust::new(ports, users))
        }
    }

    fn hosts(hosts: &[u8]) -> HashSet<IpAddr> {
        hosts
            .iter()
            .map(|h| IpAddr::V4(Ipv4Addr::new(198, 51, 100, *h)))
            .collect()
    }

    #[test]
    fn only_the_sessions_of_the_admins_are_trusted_by_default() {
        let fake = Fake::new(&PROCS, &CONNECTIONS);
        // root (and its alias toor) and ops (sudo); not alice, not before authentication, not
        // a session child still running as root, not alice's renamed shell.
        assert_eq!(fake.peers(&[22], &accounts::ADMINS), hosts(&[2, 5, 8]));
    }

    #[test]
    fn ssh_users_names_whose_sessions_count() {
        let fake = Fake::new(&PROCS, &CONNECTIONS);
        assert_eq!(fake.peers(&[22], &["alice"]), hosts(&[4]));
        assert_eq!(fake.peers(&[22], &["%sudo"]), hosts(&[5]));
        // root is uid 0 under either name.
        assert_eq!(fake.peers(&[22], &["root"]), hosts(&[2, 8]));
        assert_eq!(fake.peers(&[22], &["sshd", "nobody"]), hosts(&[]));
        // Off: no users, no ports, or connections to another port.
        assert!(fake.peers(&[22], &[]).is_empty());
        assert!(fake.peers(&[], &["root"]).is_empty());
        assert!(fake.peers(&[2222], &["root"]).is_empty());
    }

    #[test]
    fn a_session_whose_connection_ended_grants_nothing() {
        // The session processes are still there, the connections are gone.
        let fake = Fake::new(&PROCS, &[]);
        assert!(fake.peers(&[22], &["root", "alice", "ops"]).is_empty());
        // A connection nobody holds (another program's, or an inode that was reused).
        let fake = Fake::new(&PROCS[..1], &CONNECTIONS);
        assert!(fake.peers(&[22], &["root"]).is_empty());
    }

    #[test]
    fn titles_name_the_user_only_after_authentication() {
        fn title(t: &str) -> Option<&str> {
            titled_user(t.as_bytes())
        }
        assert_eq!(title("sshd: root@pts/0"), Some("root"));
        assert_eq!(title("sshd: alice@pts/1,pts/2\0\0\0"), Some("alice"));
        assert_eq!(title("sshd: alice@notty"), Some("alice"));
        assert_eq!(title("sshd: alice   "), Some("alice"));
        assert_eq!(title("sshd-session: ops@pts/3"), Some("ops"));
        for pre in [
            "sshd: [accepted]",
            "sshd: [net]",
            "sshd: root [priv]",
            "sshd: root@x [priv]",
            "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
            "sshd: @pts/0",
            "/usr/sbin/sshd",
            "",
        ] {
            assert_eq!(title(pre), None, "{pre:?}");
        }
    }
}
