//! Who holds an **authenticated** SSH session to this host right now: the peers `trust` lets
//! through. A TCP connection to the SSH port proves nothing (anyone on the internet can open
//! one and sit in the pre-authentication phase for `LoginGraceTime`), so a peer counts only
//! when all of these hold:
//!
//! 1. **A login record names it.** OpenSSH writes one only after authentication succeeded:
//!    `record_login()` (utmp, `USER_PROCESS`, with `ut_addr_v6` and `ut_host`) is called from
//!    `do_login()` in `session.c`, for sessions with a pty; with `UsePAM yes` (Debian's
//!    default) `pam_systemd` also registers every session, pty or not, with logind, which
//!    writes `/run/systemd/sessions/<id>` (`SERVICE=sshd`, `REMOTE_HOST=`, `LEADER=`) from
//!    `do_pam_session()` — again post-authentication. Before authentication sshd's processes
//!    only carry titles (`sshd: [accepted]`, `sshd: [net]`, `sshd: USER [priv]` once a valid
//!    user name was sent), and those are not read: no record, no trust. Both files are
//!    writable only by root (utmp also by group `utmp`), and reading them needs no privilege,
//!    which matters because the agent drops `CAP_SYS_PTRACE`-like rights after start-up and
//!    sshd is not dumpable (its `/proc/PID/fd` cannot be read).
//! 2. **The session is alive and is sshd's.** The record's process (utmp `ut_pid`: the login
//!    shell; logind `LEADER`: sshd's session process) still runs, and it or an ancestor a few
//!    levels up is a root-owned `sshd`/`sshd-session` process. A stale record (sshd killed
//!    with `-9` leaves one behind), a reused pid, or a record written by something else
//!    (tmux, mosh, a serial `login`) grants nothing.
//! 3. **Its connection is still up, to an SSH port.** An ESTABLISHED TCP connection from that
//!    peer to a local port in `trust.ssh_ports` exists, asked of the kernel through sock_diag
//!    netlink (`enrich::sockets`: filtered on state in the kernel, so TIME_WAIT storms cost
//!    nothing), with `/proc/net/tcp{,6}` as the fallback. Only asked when steps 1 and 2 left a
//!    candidate: a host with nobody logged in never looks at its sockets.
//!
//! Limits: a session without a pty under `UsePAM no` writes no record and is not trusted
//! (set `trust.ips` for such automation); a peer behind the same NAT as a logged-in operator
//! shares the operator's address and so its trust.

use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use tracing::debug;

use crate::enrich::{
    sockets,
    tree::read_stat,
    trust::{canonical, established_peers},
};

/// Process names of sshd's own processes (OpenSSH < 9.8 runs sessions in `sshd`, later
/// releases in `sshd-session`).
const SSHD_NAMES: [&str; 2] = ["sshd", "sshd-session"];
/// How far above the recorded process sshd's session process may sit (shell → sshd session
/// → sshd monitor → listener).
const SSHD_ANCESTRY: usize = 3;

/// Where the login records and the process and socket tables are read.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `/run/utmp` (`/var/run/utmp`).
    pub utmp: PathBuf,
    /// `/run/systemd/sessions`.
    pub logind: PathBuf,
    /// `/proc`.
    pub proc_root: PathBuf,
    /// Ask the kernel for the connections (sock_diag); false: read `<proc_root>/net/tcp*`.
    pub netlink: bool,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            utmp: PathBuf::from("/run/utmp"),
            logind: PathBuf::from("/run/systemd/sessions"),
            proc_root: PathBuf::from("/proc"),
            netlink: true,
        }
    }
}

/// A login record of a remote session: where from, and which process holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub peer: IpAddr,
    /// utmp `ut_pid` (the login shell) or logind `LEADER` (sshd's session process).
    pub pid: u32,
    /// `utmp` or `logind`, for the log.
    pub source: &'static str,
}

/// The peers of live authenticated SSH sessions to a local port in `ports` (empty: none).
pub fn authenticated_peers(src: &Sources, ports: &[u16]) -> HashSet<IpAddr> {
    if ports.is_empty() {
        return HashSet::new();
    }
    let mut logins = fs::read(&src.utmp)
        .map(|b| utmp_logins(&b))
        .unwrap_or_default();
    logins.extend(logind_logins(&src.logind));
    let candidates: HashSet<IpAddr> = logins
        .iter()
        .filter(|l| is_sshd_session(&src.proc_root, l.pid))
        .map(|l| l.peer)
        .collect();
    if candidates.is_empty() {
        return candidates;
    }
    let connected = connected_peers(src, ports);
    candidates.intersection(&connected).copied().collect()
}

/// Remote addresses of ESTABLISHED TCP connections to a local port in `ports`.
fn connected_peers(src: &Sources, ports: &[u16]) -> HashSet<IpAddr> {
    if src.netlink {
        match sockets::established_peers(ports) {
            Ok(peers) => return peers,
            Err(e) => debug!("sock_diag failed, reading /proc/net/tcp instead: {e}"),
        }
    }
    let net = src.proc_root.join("net");
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(net.join(f)).ok())
        .flat_map(|text| established_peers(&text, ports))
        .collect()
}

/// Every record of a utmp or wtmp file, from its bytes.
pub fn utmp_records(bytes: &[u8]) -> impl Iterator<Item = libc::utmpx> + '_ {
    let size = std::mem::size_of::<libc::utmpx>();
    bytes.chunks_exact(size).map(|chunk| {
        // SAFETY: `chunk` holds exactly size_of::<utmpx>() bytes; utmpx is plain old data
        // (integers and byte arrays), valid for any bit pattern; read_unaligned copes
        // with the slice's alignment.
        unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<libc::utmpx>()) }
    })
}

/// The remote address of a record: `ut_addr_v6`, else `ut_host` when it holds an address.
pub fn record_peer(u: &libc::utmpx) -> Option<IpAddr> {
    utmp_addr(&u.ut_addr_v6)
        .or_else(|| host_addr(&u.ut_host))
        .map(canonical)
}

/// A NUL-terminated text field of a utmp record (`ut_user`, `ut_line`).
pub fn record_text(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `USER_PROCESS` records with a remote address, from the bytes of a utmp file.
pub fn utmp_logins(bytes: &[u8]) -> Vec<Login> {
    utmp_records(bytes)
        .filter_map(|u| {
            if u.ut_type != libc::USER_PROCESS || u.ut_pid <= 0 {
                return None;
            }
            Some(Login {
                peer: record_peer(&u)?,
                pid: u.ut_pid as u32,
                source: "utmp",
            })
        })
        .collect()
}

/// `ut_addr_v6`: an IPv4 address in the first word (network byte order) and zeros, or an IPv6
/// address in all four; all zeros when the login is local.
fn utmp_addr(words: &[i32; 4]) -> Option<IpAddr> {
    let mut bytes = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let ip = if bytes[4..].iter().all(|b| *b == 0) {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    (!ip.is_unspecified()).then_some(ip)
}

/// `ut_host` when it holds an address (sshd writes the address unless `UseDNS yes`).
fn host_addr(host: &[libc::c_char]) -> Option<IpAddr> {
    record_text(host).trim().parse().ok()
}

/// Remote sshd sessions registered with logind (`<dir>/<id>`: `SERVICE=sshd`,
/// `REMOTE_HOST=<address>`, `LEADER=<pid>`), skipping sessions that are closing.
pub fn logind_logins(dir: &Path) -> Vec<Login> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|text| logind_login(&text))
        .collect()
}

fn logind_login(text: &str) -> Option<Login> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    if field("SERVICE")? != "sshd" || field("STATE") == Some("closing") {
        return None;
    }
    Some(Login {
        peer: canonical(field("REMOTE_HOST")?.parse().ok()?),
        pid: field("LEADER")?.parse().ok()?,
        source: "logind",
    })
}

/// Whether `pid` runs and it, or an ancestor up to [`SSHD_ANCESTRY`] levels up, is a
/// root-owned sshd process (a user can name a process `sshd`, not make it root's).
fn is_sshd_session(proc_root: &Path, pid: u32) -> bool {
    let mut cur = pid;
    for _ in 0..=SSHD_ANCESTRY {
        let Some(stat) = read_stat(proc_root, cur) else {
            return false;
        };
        if SSHD_NAMES.contains(&stat.comm.as_str()) && real_uid(proc_root, cur) == Some(0) {
            return true;
        }
        if stat.ppid <= 1 {
            return false;
        }
        cur = stat.ppid;
    }
    false
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
    use super::*;

    /// A fake `/proc` with processes (pid, ppid, comm, uid) and a `net/tcp` table.
    struct FakeProc(tempfile::TempDir);

    impl FakeProc {
        fn new(procs: &[(u32, u32, &str, u32)], tcp: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            for (pid, ppid, comm, uid) in procs {
                let p = dir.path().join(pid.to_string());
                fs::create_dir(&p).unwrap();
                let mut fields = vec!["S".to_string(), ppid.to_string()];
                fields.extend((2..19).map(|_| "0".to_string()));
                fields.push("4242".into());
                fs::write(
                    p.join("stat"),
                    format!("{pid} ({comm}) {}", fields.join(" ")),
                )
                .unwrap();
                fs::write(
                    p.join("status"),
                    format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
                )
                .unwrap();
            }
            fs::create_dir(dir.path().join("net")).unwrap();
            fs::write(dir.path().join("net/tcp"), tcp).unwrap();
            Self(dir)
        }

        fn sources(&self, utmp: &[u8]) -> Sources {
            fs::write(self.0.path().join("utmp"), utmp).unwrap();
            Sources {
                utmp: self.0.path().join("utmp"),
                logind: self.0.path().join("sessions"),
                proc_root: self.0.path().into(),
                netlink: false,
            }
        }
    }

    /// One utmp record, as glibc writes it.
    fn record(kind: i16, pid: i32, addr: Option<Ipv4Addr>, host: &str) -> Vec<u8> {
        // SAFETY: utmpx is plain old data; all zeros is a valid (empty) record.
        let mut u: libc::utmpx = unsafe { std::mem::zeroed() };
        u.ut_type = kind;
        u.ut_pid = pid;
        if let Some(a) = addr {
            u.ut_addr_v6[0] = i32::from_ne_bytes(a.octets());
        }
        for (d, s) in u.ut_host.iter_mut().zip(host.bytes()) {
            *d = s as libc::c_char;
        }
        let size = std::mem::size_of::<libc::utmpx>();
        // SAFETY: reading the bytes of a plain-old-data struct we own.
        unsafe { std::slice::from_raw_parts((&raw const u).cast::<u8>(), size) }.to_vec()
    }

    const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);

    // Local 198.51.100.1:22 ← 198.51.100.2 and ← 198.51.100.3, both ESTABLISHED.
    const TCP: &str = "  sl  local_address rem_address   st
   0: 016433C6:0016 026433C6:D431 01 0
   1: 016433C6:0016 036433C6:D432 01 0
";

    /// sshd listener (root) → session `sshd: root@pts/0` (root) → bash (the utmp pid), and
    /// a user's own process that calls itself sshd.
    fn procs() -> Vec<(u32, u32, &'static str, u32)> {
        vec![
            (100, 1, "sshd", 0),
            (200, 100, "sshd", 0),
            (300, 200, "bash", 0),
            (400, 1, "sshd", 1000),
            (500, 400, "bash", 1000),
        ]
    }

    #[test]
    fn an_authenticated_session_with_its_connection_is_trusted() {
        let fake = FakeProc::new(&procs(), TCP);
        let utmp = record(libc::USER_PROCESS, 300, Some(PEER), "198.51.100.2");
        let peers = authenticated_peers(&fake.sources(&utmp), &[22]);
        assert_eq!(peers, HashSet::from([IpAddr::V4(PEER)]));
        // Another port configured: that connection is not an SSH session.
        assert!(authenticated_peers(&fake.sources(&utmp), &[2222]).is_empty());
        // SSH trust off.
        assert!(authenticated_peers(&fake.sources(&utmp), &[]).is_empty());
    }

    #[test]
    fn a_connection_without_a_login_record_grants_nothing() {
        // 198.51.100.3 is connected (pre-authentication, or another program on the port) but
        // no record names it.
        let fake = FakeProc::new(&procs(), TCP);
        let utmp = record(libc::USER_PROCESS, 300, Some(PEER), "");
        let peers = authenticated_peers(&fake.sources(&utmp), &[22]);
        assert!(!peers.contains(&IpAddr::V4(OTHER)), "{peers:?}");
        assert!(authenticated_peers(&fake.sources(&[]), &[22]).is_empty());
    }

    #[test]
    fn ended_stale_or_foreign_records_grant_nothing() {
        let fake = FakeProc::new(&procs(), TCP);
        let cases = [
            // Logged out: sshd rewrote the record as DEAD_PROCESS.
            record(libc::DEAD_PROCESS, 300, Some(PEER), "198.51.100.2"),
            // Stale: the session's process is gone (sshd killed with -9).
            record(libc::USER_PROCESS, 999, Some(PEER), "198.51.100.2"),
            // Not below a root-owned sshd: a user's process named "sshd".
            record(libc::USER_PROCESS, 500, Some(PEER), "198.51.100.2"),
            // A local login (no address).
            record(libc::USER_PROCESS, 300, None, ":0"),
        ];
        for utmp in cases {
            assert!(authenticated_peers(&fake.sources(&utmp), &[22]).is_empty());
        }
        // A record whose connection has ended.
        let gone = FakeProc::new(&procs(), "header\n");
        let utmp = record(libc::USER_PROCESS, 300, Some(PEER), "198.51.100.2");
        assert!(authenticated_peers(&gone.sources(&utmp), &[22]).is_empty());
    }

    #[test]
    fn utmp_falls_back_to_ut_host_and_skips_garbage() {
        let mut bytes = record(libc::LOGIN_PROCESS, 7, None, "");
        bytes.extend(record(libc::USER_PROCESS, 300, None, "2001:db8:1::2"));
        bytes.extend(record(libc::USER_PROCESS, 301, None, "gw.example.org"));
        bytes.extend([0xff; 17]); // a torn tail
        let logins = utmp_logins(&bytes);
        assert_eq!(
            logins,
            [Login {
                peer: "2001:db8:1::2".parse().unwrap(),
                pid: 300,
                source: "utmp"
            }]
        );
    }

    #[test]
    fn logind_sessions_of_sshd_count() {
        let fake = FakeProc::new(&procs(), TCP);
        let src = fake.sources(&[]);
        fs::create_dir(&src.logind).unwrap();
        fs::write(
            src.logind.join("3"),
            "UID=0\nUSER=root\nSTATE=active\nREMOTE=1\nSERVICE=sshd\nREMOTE_HOST=198.51.100.2\nLEADER=200\n",
        )
        .unwrap();
        fs::write(
            src.logind.join("4"),
            "STATE=active\nSERVICE=cron\nREMOTE_HOST=198.51.100.3\nLEADER=200\n",
        )
        .unwrap();
        fs::write(
            src.logind.join("5"),
            "STATE=closing\nSERVICE=sshd\nREMOTE_HOST=198.51.100.3\nLEADER=200\n",
        )
        .unwrap();
        assert_eq!(
            authenticated_peers(&src, &[22]),
            HashSet::from([IpAddr::V4(PEER)])
        );
    }
}
