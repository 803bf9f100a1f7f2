//! Which processes already accept connections when the agent starts. The `connect` sensor sees
//! every later `listen(2)`, but a server started before the agent never calls it again: its
//! listening sockets (TCP v4/v6 in state LISTEN, unix stream sockets with `SO_ACCEPTCON`) are
//! read from `/proc/net/*` and matched to their owners through `/proc/<pid>/fd`.

use std::{collections::HashSet, fs, path::Path};

/// `TCP_LISTEN` as `/proc/net/tcp` writes it.
const TCP_LISTEN: &str = "0A";
/// `__SO_ACCEPTCON` in the flags column of `/proc/net/unix`.
const SO_ACCEPTCON: u32 = 1 << 16;

/// Socket inodes in state LISTEN in a `/proc/net/tcp`-format table.
pub fn tcp_listening(table: &str) -> HashSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(3) == Some(&TCP_LISTEN)).then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// Listening socket inodes in a `/proc/net/unix` table.
pub fn unix_listening(table: &str) -> HashSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            (flags & SO_ACCEPTCON != 0).then(|| f.get(6)?.parse().ok())?
        })
        .collect()
}

/// Processes in `proc_root` that hold a listening socket.
pub fn listening_pids(proc_root: &Path) -> Vec<u32> {
    let net = proc_root.join("net");
    let read = |name: &str| fs::read_to_string(net.join(name)).unwrap_or_default();
    let mut inodes = tcp_listening(&read("tcp"));
    inodes.extend(tcp_listening(&read("tcp6")));
    inodes.extend(unix_listening(&read("unix")));
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| holds_any(&proc_root.join(pid.to_string()).join("fd"), &inodes))
        .collect()
}

/// Whether the TCP socket on `pid`'s descriptor `fd` was accepted: its local port is one a
/// socket of the process's network namespace listens on. `Some(false)` for a socket whose port
/// nothing listens on (a connection made out), `None` when it cannot be told (gone,
/// unreadable). The outbound memory can forget a connection (a flood of connects evicts it);
/// a port nobody listens on cannot be faked without a listener on it.
pub fn accepted_on_listening_port(proc_root: &Path, pid: u32, fd: u32) -> Option<bool> {
    let dir = proc_root.join(pid.to_string());
    let link = fs::read_link(dir.join("fd").join(fd.to_string())).ok()?;
    let inode: u64 = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    let tables = ["tcp", "tcp6"].map(|t| fs::read_to_string(dir.join("net").join(t)).ok());
    let rows = || tables.iter().flatten().flat_map(|t| t.lines().skip(1));
    let port_of = |row: &str| -> Option<(u16, bool, u64)> {
        let f: Vec<&str> = row.split_whitespace().collect();
        let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        Some((port, *f.get(3)? == TCP_LISTEN, f.get(9)?.parse().ok()?))
    };
    let (port, _, _) = rows()
        .filter_map(port_of)
        .find(|(_, _, ino)| *ino == inode)?;
    Some(
        rows()
            .filter_map(port_of)
            .any(|(p, listens, _)| p == port && listens),
    )
}

/// Whether process `pid` still holds a listening socket. A process that listened once and
/// closed the socket is no server any more (a script that served for a moment must not make
/// every later shell it runs a `lineage` alert). Its own network namespace's tables are read
/// (a server in a container listens there, not in the agent's). What cannot be read counts as
/// still listening: never a missed alert for want of a permission.
pub fn still_listens(proc_root: &Path, pid: u32) -> bool {
    let dir = proc_root.join(pid.to_string());
    // Ended (or a zombie, whose descriptors are gone): it was a server when it ran its child.
    if !is_running(&dir) {
        return true;
    }
    let tables = ["tcp", "tcp6", "unix"].map(|t| fs::read_to_string(dir.join("net").join(t)));
    if tables.iter().any(Result::is_err) {
        return true;
    }
    let [tcp, tcp6, unix] = tables.map(Result::unwrap_or_default);
    let mut inodes = tcp_listening(&tcp);
    inodes.extend(tcp_listening(&tcp6));
    inodes.extend(unix_listening(&unix));
    let fd_dir = dir.join("fd");
    if fs::read_dir(&fd_dir).is_err() {
        return true;
    }
    holds_any(&fd_dir, &inodes)
}

/// Whether the process whose `/proc` directory is `dir` runs (is neither gone nor a zombie).
fn is_running(dir: &Path) -> bool {
    fs::read_to_string(dir.join("stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}

/// Whether the fd directory links to one of the socket `inodes`.
fn holds_any(fd_dir: &Path, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = fs::read_dir(fd_dir) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        fs::read_link(fd.path()).ok().is_some_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .is_some_and(|ino: u64| inodes.contains(&ino))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_socket_is_on_a_listening_port_a_connected_one_is_not() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (proc_root, me) = (Path::new("/proc"), std::process::id());
        let fd = |s: &std::net::TcpStream| s.as_raw_fd() as u32;
        assert_eq!(
            accepted_on_listening_port(proc_root, me, fd(&server)),
            Some(true)
        );
        assert_eq!(
            accepted_on_listening_port(proc_root, me, fd(&client)),
            Some(false)
        );
        // Not a socket, or no such descriptor: cannot tell.
        assert_eq!(accepted_on_listening_port(proc_root, me, 1 << 20), None);
    }

    #[test]
    fn parses_tcp_and_unix_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(tcp_listening(tcp), HashSet::from([4242]));
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 777 /run/php/php-fpm.sock\n0000000000000000: 00000003 00000000 00000000 0001 03 778\n";
        assert_eq!(unix_listening(unix), HashSet::from([777]));
        assert!(tcp_listening("").is_empty());
        assert!(unix_listening("garbage\nmore garbage here x y z").is_empty());
    }

    #[test]
    fn a_listener_that_closed_its_socket_no_longer_listens() {
        use std::io::{BufRead, BufReader, Write};
        let script = "import socket, sys\n\
            s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
            print('listening', flush=True); sys.stdin.readline(); s.close()\n\
            print('closed', flush=True); sys.stdin.readline()\n";
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening");
        let proc = Path::new("/proc");
        assert!(still_listens(proc, child.id()));
        stdin.write_all(b"\n").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "closed");
        assert!(!still_listens(proc, child.id()));
        drop(stdin);
        child.wait().unwrap();
    }

    #[test]
    fn finds_a_real_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pids = listening_pids(Path::new("/proc"));
        assert!(pids.contains(&std::process::id()), "{pids:?}");
        drop(listener);
    }
}
