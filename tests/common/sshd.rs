//! The test's own OpenSSH server, for SSH trust end to end: `sshd -D -f <tmp>/sshd_config`
//! (own host key, port, authorized keys, pid file; `UsePAM no`) on an address of this side of
//! the test veth, never the machine's sshd and never port 22; `ssh` clients run inside the test
//! host namespace. Also what the scenarios around it need and clean up on drop, even when a test
//! fails: a throwaway login user, the machine's utmp file (`/run/utmp`: sshd records each pty
//! login there) and a forged record in it.

use std::{
    ffi::CString,
    fs,
    net::{Ipv4Addr, TcpListener},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Kill `pid` and every process below it (sshd's session processes start sessions of their
/// own, so a process group would miss them).
pub fn kill_tree(pid: u32) {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
            if ppid == parent && !pids.contains(&child) {
                pids.push(child);
            }
        }
        i += 1;
    }
    for p in pids {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
}

/// A child process killed (with its descendants) on drop.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        kill_tree(self.0.id());
        let _ = self.0.wait();
    }
}

/// `/run/utmp`, created (as systemd-tmpfiles does at boot) when the machine has none, and
/// removed again on drop in that case.
pub struct Utmp {
    created: bool,
}

impl Utmp {
    pub const PATH: &str = "/run/utmp";

    pub fn ensure() -> Utmp {
        if Path::new(Self::PATH).exists() {
            return Utmp { created: false };
        }
        fs::write(Self::PATH, b"").unwrap();
        fs::set_permissions(Self::PATH, fs::Permissions::from_mode(0o664)).unwrap();
        Utmp { created: true }
    }
}

impl Drop for Utmp {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(Self::PATH);
        }
    }
}

/// A login record the test wrote into [`Utmp::PATH`] as `utempter` (setgid utmp, shipped with
/// tmux and screen) lets any user write one: the caller's name, a host of the caller's
/// choosing, a pid inside the caller's SSH session. Rewritten as ended (`DEAD_PROCESS`, as a
/// logout does) on drop.
pub struct ForgedLogin {
    record: libc::utmpx,
}

impl ForgedLogin {
    pub fn write(user: &str, host: &str, pid: u32) -> ForgedLogin {
        let addr: Ipv4Addr = host.parse().unwrap();
        // SAFETY: utmpx is plain old data; all zeros is a valid (empty) record.
        let mut u: libc::utmpx = unsafe { std::mem::zeroed() };
        u.ut_type = libc::USER_PROCESS;
        u.ut_pid = pid as i32;
        let put = |dst: &mut [libc::c_char], s: &str| {
            for (d, b) in dst.iter_mut().zip(s.bytes()) {
                *d = b as libc::c_char;
            }
        };
        put(&mut u.ut_id, "snt");
        put(&mut u.ut_line, &format!("pts/sntest{}", std::process::id()));
        put(&mut u.ut_user, user);
        put(&mut u.ut_host, host);
        u.ut_addr_v6[0] = i32::from_ne_bytes(addr.octets());
        u.ut_tv.tv_sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as _;
        assert!(
            put_record(&u),
            "pututxline: {}",
            std::io::Error::last_os_error()
        );
        ForgedLogin { record: u }
    }
}

impl Drop for ForgedLogin {
    fn drop(&mut self) {
        self.record.ut_type = libc::DEAD_PROCESS;
        let _ = put_record(&self.record);
    }
}

/// Write (or replace, by `ut_id`) a record in [`Utmp::PATH`] through glibc.
fn put_record(u: &libc::utmpx) -> bool {
    let path = CString::new(Utmp::PATH).unwrap();
    // SAFETY: glibc's utmp API on a valid path and a valid record; the tests that use it hold
    // `serial()`, so no other thread of this process uses the API meanwhile.
    unsafe {
        libc::utmpxname(path.as_ptr());
        libc::setutxent();
        let written = !libc::pututxline(u).is_null();
        libc::endutxent();
        written
    }
}

/// A throwaway account `sntest-<pid>` in no admin group (`useradd -N`: the default group), with no
/// password but not locked (sshd refuses a locked account's keys under `UsePAM no`), deleted on
/// drop even when the test fails.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
}

impl TestUser {
    pub fn create() -> TestUser {
        let name = format!("sntest-{}", std::process::id());
        let _ = Command::new("userdel").args(["-f", &name]).output();
        run(Command::new("useradd").args(["-M", "-N", "-p", "*", "-s", "/bin/sh", &name]));
        // Owned from here: deleted on drop even if the lookup below fails.
        let mut user = TestUser { uid: 0, name };
        user.uid = nix::unistd::User::from_name(&user.name)
            .unwrap()
            .expect("the user just added")
            .uid
            .as_raw();
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-f", &self.name]).output();
    }
}

/// The pid of a process running `comm` as `uid`, waiting up to 15 s for one.
pub fn process_of(uid: u32, comm: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            };
            if field("Name:").as_deref() == Some(comm)
                && field("Uid:").as_deref() == Some(uid.to_string().as_str())
            {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no {comm} process of uid {uid}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The test's own OpenSSH server and the client key it accepts.
pub struct Sshd {
    dir: tempfile::TempDir,
    /// The address it listens on.
    pub addr: String,
    pub port: u16,
    _proc: Proc,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path));
}

/// A port free on `addr` right now.
fn free_port(addr: &str) -> u16 {
    let l = TcpListener::bind((addr, 0)).unwrap();
    l.local_addr().unwrap().port()
}

impl Sshd {
    /// Start `sshd -D` on `addr` (an address of this side of a test veth) and a free port.
    pub fn start(addr: &str) -> Sshd {
        Self::start_in(None, addr, free_port(addr))
    }

    /// Start `sshd -D` inside network namespace `ns` (a test host) on `addr` and `port`, or
    /// on this side when `ns` is None.
    pub fn start_in(ns: Option<&str>, addr: &str, port: u16) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "openssh-server is not installed (scripts/setup.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // sshd reads AuthorizedKeysFile as the user logging in: the non-admin must reach it.
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd's privilege-separation directory (Debian's unit creates it at start).
        fs::create_dir_all("/run/sshd").unwrap();
        assert_ne!(port, 22);
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress {addr}\nHostKey {host}\n\
                 AuthorizedKeysFile {keys}\nPidFile {pid}\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUseDNS no\nPrintMotd no\nLogLevel VERBOSE\n",
                host = d.join("host_key").display(),
                keys = d.join("authorized_keys").display(),
                pid = d.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let log = d.join("sshd.log");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/sbin/sshd"]);
                c
            }
            None => Command::new("/usr/sbin/sshd"),
        };
        let child = cmd
            .args(["-D", "-f"])
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let sshd = Sshd {
            dir,
            addr: addr.to_string(),
            port,
            _proc: Proc(child),
        };
        sshd.wait_log("Server listening");
        sshd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "sshd log has no {what:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The private key the server accepts (for root and the test user).
    pub fn client_key(&self) -> std::path::PathBuf {
        self.dir.path().join("client_key")
    }

    /// A session of `user` from `src` inside `ns`: `ssh -tt` (a pty, so sshd records the
    /// login in utmp) running `sleep` on the server until dropped.
    pub fn login(&self, ns: &str, src: &str, user: &str) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "ssh", "-tt", "-F", "/dev/null", "-i"])
            .arg(self.dir.path().join("client_key"))
            .args(["-p", &self.port.to_string(), "-b", src])
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("{user}@{}", self.addr))
            .args(["sleep", "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Proc(child);
        self.wait_log(&format!("Accepted publickey for {user} from {src}"));
        p
    }
}
