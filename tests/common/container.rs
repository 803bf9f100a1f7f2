//! A Debian container booted with systemd as PID 1, for the tests of what runs under a real
//! systemd (`tests/systemd.rs`: the unit; `tests/package.rs`: the .deb). `debootstrap` builds
//! the root once, cached under /var/cache/sentinel-test; each test boots `systemd-nspawn
//! --boot` on a copy-on-write overlay of it, so the cache stays clean.
//!
//! This host has no systemd as PID 1, so the container runs unregistered
//! (`--register=no --keep-unit`), with every capability and the `bpf`/`perf_event_open`
//! system calls allowed so that the agent can load its programs. The host's tracefs is bound
//! in, as systemd's `sys-kernel-tracing.mount` would mount it on a real machine.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Where the container root is cached between runs.
pub const CACHE: &str = "/var/cache/sentinel-test/bookworm";
/// What the container needs beyond the minimal base.
pub const PACKAGES: &str = "systemd,systemd-sysv,dbus,nftables,iproute2,ca-certificates";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Debian mirror apt uses on this machine (the only package registry reachable).
pub fn mirror() -> String {
    let mut sources = String::new();
    for file in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        sources.push_str(&fs::read_to_string(file).unwrap_or_default());
        sources.push('\n');
    }
    sources
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("URIs:")
                .map(|u| u.split_whitespace().next().unwrap_or("").to_string())
                .or_else(|| {
                    l.strip_prefix("deb ")
                        .and_then(|r| r.split_whitespace().find(|w| w.starts_with("http")))
                        .map(str::to_string)
                })
        })
        .filter(|u| !u.is_empty() && !u.contains("security"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The cached container root, built with `debootstrap` when missing; `None` (after saying
/// why, loudly) when it cannot be built here.
pub fn container_root() -> Option<PathBuf> {
    let root = PathBuf::from(CACHE);
    if root.join("usr/lib/systemd/systemd").exists() || root.join("lib/systemd/systemd").exists() {
        return Some(root);
    }
    let missing = ["debootstrap", "systemd-nspawn"]
        .into_iter()
        .filter(|tool| {
            Command::new("which")
                .arg(tool)
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect::<Vec<_>>();
    if !missing.is_empty() {
        eprintln!(
            "\n*** SKIPPED: {missing:?} not installed (run scripts/setup.sh) — the unit was NOT \
             tested under systemd ***\n"
        );
        return None;
    }
    let building = root.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&building);
    fs::create_dir_all(root.parent().unwrap()).unwrap();
    let mirror = mirror();
    let started = Instant::now();
    eprintln!("building the container root with debootstrap from {mirror} (cached in {CACHE})");
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&building)
        .arg(&mirror)
        .output()
        .unwrap();
    if !out.status.success() {
        let _ = fs::remove_dir_all(&building);
        eprintln!(
            "\n*** SKIPPED: debootstrap could not build the container from {mirror} — the unit \
             was NOT tested under systemd ***\n{}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
        return None;
    }
    fs::rename(&building, &root).unwrap();
    eprintln!("container root built in {:.0?}", started.elapsed());
    Some(root)
}

/// A booted container on an overlay of the cached root; powered off and unmounted on drop.
pub struct Container {
    nspawn: Child,
    leader: u32,
    merged: PathBuf,
    _dir: tempfile::TempDir,
}

impl Container {
    /// Boot `root`, with `prepare` run on the merged tree first (to copy files in); with
    /// `private_network` the container gets a network namespace of its own (only `lo`).
    pub fn boot(root: &Path, private_network: bool, prepare: impl FnOnce(&Path)) -> Container {
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
        prepare(&merged);
        let nspawn = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(&merged)
            .args(private_network.then_some("--private-network"))
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--capability=all",
                // What the agent needs beyond nspawn's own allow-list (a host has none):
                // its programs, and the persistence watcher's fanotify group.
                "--system-call-filter=bpf perf_event_open fanotify_init fanotify_mark \
                 name_to_handle_at",
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

    /// The container's PID 1 as the host sees it (its namespaces are the container's).
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// The container's PID 1, as the host sees it: nspawn's child.
    pub fn wait_for_leader(&self) -> u32 {
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
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.leader.to_string(), "--all", "--"])
            .args(args)
            .output()
            .unwrap()
    }

    /// A command's standard output (its failure is the caller's to judge).
    pub fn sh(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.exec(args).stdout).into_owned()
    }

    /// `systemctl show sentinel -p PROP --value`.
    pub fn unit(&self, prop: &str) -> String {
        self.sh(&["systemctl", "show", "sentinel", "-p", prop, "--value"])
            .trim()
            .to_string()
    }

    pub fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&Container) -> bool) {
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

    pub fn journal(&self) -> String {
        self.sh(&["journalctl", "-u", "sentinel", "--no-pager", "-n", "40"])
    }

    /// The alerts the agent stored (`sentinel tail --json --kind alert`).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
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

pub fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
