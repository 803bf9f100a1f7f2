//! A real resolver for the end-to-end tests that need names: Debian's `dnsmasq`, started in
//! the test network namespace and serving a test zone, and python clients that resolve
//! through glibc (`getaddrinfo`) with a `resolv.conf` and `nsswitch.conf` of the test's own,
//! bind-mounted in a private mount namespace (the machine's files are never touched).

use std::{
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{
    netns::{DE4, KP6, RU4, TestNet},
    procs::Procs,
};

/// The zone the resolver serves: names → the high-risk test hosts.
pub const ZONE: [(&str, &str); 5] = [
    ("c2.sentinel.test", RU4),
    ("xmr.pool.sentinel.test", DE4),
    ("alias.sentinel.test", RU4),
    ("v6.sentinel.test", KP6),
    ("other.sentinel.test", RU4),
];

/// Start `dnsmasq` in the test namespace, answering on `listen` from `ZONE` (or forwarding to
/// `upstream`), and wait until it answers.
pub fn dnsmasq(net: &TestNet, listen: &str, upstream: Option<&str>, procs: &mut Procs) {
    dnsmasq_serving(net, listen, upstream, &ZONE, procs);
}

/// [`dnsmasq`] serving `zone` (names → addresses) instead of `ZONE`.
pub fn dnsmasq_serving(
    net: &TestNet,
    listen: &str,
    upstream: Option<&str>,
    zone: &[(&str, &str)],
    procs: &mut Procs,
) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", net.ns(), "dnsmasq", "--keep-in-foreground"])
        .args(["--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
        .args(["--bind-interfaces", "--port=53", "--pid-file="])
        .args(["--user=root", "--group=root", "--cache-size=0"])
        .arg(format!("--listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match upstream {
        Some(up) => {
            cmd.arg(format!("--server={up}"));
        }
        None => {
            for (name, addr) in zone {
                cmd.arg(format!("--host-record={name},{addr}"));
            }
            cmd.arg("--cname=www.sentinel.test,c2.sentinel.test");
        }
    }
    procs.spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                net.ns(),
                "ss",
                "-Hlun",
                "sport",
                "=",
                ":53",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(listen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dnsmasq on {listen} did not start"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `resolv.conf` and `nsswitch.conf` (DNS only) for clients of `nameserver`, in `dir`.
pub fn resolver_files(dir: &Path, tag: &str, nameserver: &str) -> (PathBuf, PathBuf) {
    resolver_files_with(dir, tag, nameserver, "")
}

/// [`resolver_files`] with more resolver `options` (`use-vc`: queries over TCP).
pub fn resolver_files_with(
    dir: &Path,
    tag: &str,
    nameserver: &str,
    options: &str,
) -> (PathBuf, PathBuf) {
    let resolv = dir.join(format!("resolv-{tag}.conf"));
    std::fs::write(
        &resolv,
        format!("nameserver {nameserver}\noptions timeout:2 attempts:2 {options}\n"),
    )
    .unwrap();
    let nss = dir.join("nsswitch.conf");
    std::fs::write(&nss, "hosts: files dns\n").unwrap();
    (resolv, nss)
}

/// What a client does once told: connect to every address it got (port 443: the test host
/// resets), then say `connected`.
pub const CONNECT_ALL: &str = "for fam, typ, proto, _, addr in infos:\n\
    \x20   s = socket.socket(fam, typ, proto); s.settimeout(2)\n\
    \x20   try: s.connect(addr)\n\
    \x20   except OSError: pass\n\
    \x20   s.close()\n\
    print('connected', flush=True)\n";

/// A python client that resolves `name` through glibc, says `resolved`, waits for a line on
/// stdin, then runs `then` (python, with `infos` from `getaddrinfo`; [`CONNECT_ALL`]). Runs in a
/// private mount namespace with the given resolver files; `in_ns` runs it inside the test
/// namespace. The child's pid is the client's (every step execs).
pub fn client(
    net: &TestNet,
    in_ns: bool,
    files: &(PathBuf, PathBuf),
    name: &str,
    then: &str,
    procs: &mut Procs,
) -> (
    u32,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let script = format!(
        "import os, socket, sys, time\n\
         infos = socket.getaddrinfo('{name}', 443, type=socket.SOCK_STREAM)\n\
         print('resolved', ' '.join(sorted({{i[4][0] for i in infos}})), flush=True)\n\
         sys.stdin.readline()\n{then}"
    );
    let mut cmd = Command::new("ip");
    if in_ns {
        cmd.args(["netns", "exec", net.ns(), "unshare", "-m"]);
    } else {
        cmd = Command::new("unshare");
        cmd.arg("-m");
    }
    cmd.args([
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/resolv.conf && mount --bind \"$1\" /etc/nsswitch.conf \
         && exec /usr/bin/python3 -c \"$2\"",
    ])
    .arg(&files.0)
    .arg(&files.1)
    .arg(script)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    let child = procs.spawn(&mut cmd);
    let pid = child.id();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("resolved ") && line.trim().len() > "resolved".len(),
        "{name} did not resolve: {line:?}"
    );
    (pid, stdin, stdout)
}

/// Let a client connect and wait until it did.
pub fn connect_now(
    stdin: &mut std::process::ChildStdin,
    stdout: &mut BufReader<std::process::ChildStdout>,
) {
    stdin.write_all(b"go\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
}

pub fn require_dnsmasq(test: &str) -> bool {
    if Command::new("dnsmasq").arg("--version").output().is_ok() {
        return true;
    }
    panic!("{test}: dnsmasq is missing (scripts/setup.sh installs dnsmasq-base)");
}
