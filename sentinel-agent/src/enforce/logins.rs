//! Where the administrators log in from: the source addresses of successful SSH logins of the
//! last `trust.recent_logins` by root and the members of the sudo, admin and wheel groups, from
//! wtmp. Blocking the address an admin used yesterday would lock out the person who must
//! answer the alert. Read on the infrastructure thread; who the admins are is
//! [`accounts::admins`]. A record counts only when its `ut_user` is an admin: the setgid
//! `utempter` helper lets any user write records, but always with the caller's own name.

use std::{
    collections::HashSet,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::enrich::{accounts, trust::canonical};

/// Every record of a utmp or wtmp file, from its bytes.
fn utmp_records(bytes: &[u8]) -> impl Iterator<Item = libc::utmpx> + '_ {
    let size = std::mem::size_of::<libc::utmpx>();
    bytes.chunks_exact(size).map(|chunk| {
        // SAFETY: `chunk` holds exactly size_of::<utmpx>() bytes; utmpx is plain old data
        // (integers and byte arrays), valid for any bit pattern; read_unaligned copes
        // with the slice's alignment.
        unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<libc::utmpx>()) }
    })
}

/// A NUL-terminated text field of a utmp record (`ut_user`, `ut_line`, `ut_host`).
fn record_text(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether a `ut_line` is an SSH session's: a pseudo-terminal or sshd's `ssh:notty`.
fn is_ssh_line(line: &str) -> bool {
    line.starts_with("pts/") || line.starts_with("ssh")
}

/// (source address, user) of the successful SSH logins in `wtmp` since `since` by `admins`:
/// `USER_PROCESS` records on an SSH line whose `ut_host` is an address.
pub fn admin_logins(
    wtmp: &[u8],
    admins: &HashSet<String>,
    since: SystemTime,
) -> Vec<(IpAddr, String)> {
    let since = since
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut out: Vec<(IpAddr, String)> = Vec::new();
    for u in utmp_records(wtmp) {
        if u.ut_type != libc::USER_PROCESS || (u.ut_tv.tv_sec as i64) < since as i64 {
            continue;
        }
        let user = record_text(&u.ut_user);
        if !admins.contains(&user) || !is_ssh_line(&record_text(&u.ut_line)) {
            continue;
        }
        let Ok(ip) = record_text(&u.ut_host).trim().parse::<IpAddr>() else {
            continue;
        };
        let entry = (canonical(ip), user);
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

/// The admin logins of the last `window`, read below `root` (`/` on a real host).
/// A zero `window` turns this off.
pub fn recent(root: &std::path::Path, window: Duration) -> Vec<(IpAddr, String)> {
    if window.is_zero() {
        return Vec::new();
    }
    let (passwd, group) = accounts::read(&root.join("etc"));
    let admins = accounts::admins(&passwd, &group);
    let Ok(wtmp) = std::fs::read(root.join("var/log/wtmp")) else {
        return Vec::new();
    };
    let since = SystemTime::now().checked_sub(window).unwrap_or(UNIX_EPOCH);
    admin_logins(&wtmp, &admins, since)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One wtmp record, as glibc writes it.
    fn record(kind: i16, user: &str, line: &str, host: &str, age: Duration) -> Vec<u8> {
        // SAFETY: utmpx is plain old data; all zeros is a valid (empty) record.
        let mut u: libc::utmpx = unsafe { std::mem::zeroed() };
        u.ut_type = kind;
        u.ut_pid = 300;
        let put = |dst: &mut [libc::c_char], s: &str| {
            for (d, b) in dst.iter_mut().zip(s.bytes()) {
                *d = b as libc::c_char;
            }
        };
        put(&mut u.ut_user, user);
        put(&mut u.ut_line, line);
        put(&mut u.ut_host, host);
        let when = SystemTime::now() - age;
        u.ut_tv.tv_sec = when.duration_since(UNIX_EPOCH).unwrap().as_secs() as _;
        let size = std::mem::size_of::<libc::utmpx>();
        // SAFETY: reading the bytes of a plain-old-data struct we own.
        unsafe { std::slice::from_raw_parts((&raw const u).cast::<u8>(), size) }.to_vec()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn recent_ssh_logins_of_admins_count() {
        let admins: HashSet<String> = ["root", "alice"].map(String::from).into();
        let mut wtmp = Vec::new();
        wtmp.extend(record(
            libc::USER_PROCESS,
            "alice",
            "pts/0",
            "198.51.100.20",
            DAY,
        ));
        wtmp.extend(record(
            libc::USER_PROCESS,
            "root",
            "ssh:notty",
            "2001:db8::20",
            DAY,
        ));
        // Too old, not an admin, not SSH, not an address, not a login.
        wtmp.extend(record(
            libc::USER_PROCESS,
            "alice",
            "pts/1",
            "198.51.100.21",
            40 * DAY,
        ));
        wtmp.extend(record(
            libc::USER_PROCESS,
            "web",
            "pts/2",
            "198.51.100.22",
            DAY,
        ));
        wtmp.extend(record(
            libc::USER_PROCESS,
            "root",
            "tty1",
            "198.51.100.23",
            DAY,
        ));
        wtmp.extend(record(
            libc::USER_PROCESS,
            "root",
            "pts/3",
            "gw.example.org",
            DAY,
        ));
        wtmp.extend(record(
            libc::DEAD_PROCESS,
            "root",
            "pts/4",
            "198.51.100.24",
            DAY,
        ));
        // A second login from the same place is listed once.
        wtmp.extend(record(
            libc::USER_PROCESS,
            "alice",
            "pts/5",
            "198.51.100.20",
            DAY,
        ));
        let since = SystemTime::now() - 30 * DAY;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            admin_logins(&wtmp, &admins, since),
            [
                (ip("198.51.100.20"), "alice".to_string()),
                (ip("2001:db8::20"), "root".to_string()),
            ]
        );
    }

    #[test]
    fn wtmp_is_read_below_a_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var/log")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/group"), "sudo:x:27:alice\n").unwrap();
        std::fs::write(
            dir.path().join("var/log/wtmp"),
            record(libc::USER_PROCESS, "alice", "pts/0", "198.51.100.20", DAY),
        )
        .unwrap();
        assert_eq!(recent(dir.path(), 30 * DAY).len(), 1);
        assert!(recent(dir.path(), DAY / 2).is_empty());
        assert!(
            recent(dir.path(), Duration::ZERO).is_empty(),
            "0 turns it off"
        );
    }
}
