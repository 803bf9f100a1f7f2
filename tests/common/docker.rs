//! A private Docker for the end-to-end tests: Debian's `docker.io` (dockerd 20.10), started by
//! the test in a temp dir with its own data root, exec root, pid file and API socket, and the
//! containerd it starts itself (under the exec root). It never touches the host's network or
//! firewall: `--iptables=false --ip6tables=false --bridge=none --ip-forward=false
//! --ip-masq=false`, so containers run with `--network none` or `--network host` only. The
//! cgroup driver is cgroupfs (no systemd here): a container's unified cgroup is
//! `/docker/<id>`.
//!
//! The image is the Debian root `tests/common/container.rs` caches, `docker import`ed into the
//! private data root (a few seconds; no registry). The client is Debian's `/usr/bin/docker`
//! by its full path (another `docker` may come first on PATH).
//!
//! dockerd 20.10 also writes `/etc/docker/key.json` and `/run/docker/plugins` whatever its
//! flags say: both are removed on drop when the test created them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use super::podman::wait_for;

const DOCKERD: &str = "/usr/sbin/dockerd";
const CLIENT: &str = "/usr/bin/docker";
/// The image, as containers name it.
pub const IMAGE: &str = "sentinel-test/bookworm:latest";
/// Files dockerd writes outside its roots.
const KEY: &str = "/etc/docker/key.json";
const RUN_DIR: &str = "/run/docker";

/// Whether Debian's dockerd and client are installed; says loudly what is missing otherwise.
pub fn available(test: &str) -> bool {
    let missing: Vec<&str> = [DOCKERD, CLIENT, "/usr/bin/containerd", "/usr/bin/runc"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED {test}: {missing:?} not installed (run scripts/setup.sh: docker.io) — \
         Docker containers were NOT tested ***\n"
    );
    false
}

/// A running private dockerd.
pub struct Docker {
    dir: tempfile::TempDir,
    daemon: Child,
    names: Vec<String>,
    /// What dockerd writes outside its roots and was not there before.
    created: Vec<PathBuf>,
}

impl Docker {
    /// Start dockerd and import the test image; `None` (said loudly) when the Debian root
    /// cannot be built here.
    pub fn start() -> Option<Docker> {
        let root = super::container::container_root()?;
        let created = [KEY, RUN_DIR]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .map(PathBuf::from)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let log = fs::File::create(p.join("dockerd.log")).unwrap();
        let daemon = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(p.join("data"))
            .arg("--exec-root")
            .arg(p.join("exec"))
            .arg("--pidfile")
            .arg(p.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", p.join("docker.sock").display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
                "--storage-driver=overlay2",
                "--default-ulimit",
                "nofile=4096:4096",
                "--default-ulimit",
                "nproc=4096:4096",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let docker = Docker {
            dir,
            daemon,
            names: Vec::new(),
            created,
        };
        let up = wait_for(Duration::from_secs(60), || {
            docker
                .cmd()
                .arg("version")
                .output()
                .ok()
                .filter(|o| o.status.success())
        });
        assert!(up.is_some(), "dockerd did not come up:\n{}", docker.log());
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | {CLIENT} import - sentinel-test/bookworm",
                root.display()
            ))
            .envs(
                docker
                    .cmd()
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(docker)
    }

    /// Docker's data root: where `containers/<id>/config.v2.json` names the containers.
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The client on this daemon.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(CLIENT);
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        )
        .env("DOCKER_CONFIG", self.dir.path().join("client"));
        c
    }

    fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Start container `name` (detached) with `opts` before the image and `cmd` after it; its
    /// full id.
    pub fn run(&mut self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(opts);
        args.push(IMAGE);
        args.extend(cmd);
        self.names.push(name.to_string());
        let out = self.run_ok(&args);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker exec NAME CMD…`, as an admin would.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        self.cmd().arg("exec").arg(name).args(cmd).output().unwrap()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.cmd().args(["rm", "-f", name]).output();
        }
        // SIGTERM: dockerd stops its containerd and unmounts its roots.
        let _ = Command::new("kill")
            .arg(self.daemon.id().to_string())
            .output();
        let stopped = wait_for(Duration::from_secs(30), || {
            self.daemon.try_wait().ok().flatten()
        });
        if stopped.is_none() {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
            let dir = self.dir.path().to_string_lossy().into_owned();
            for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(4)) {
                if m.starts_with(&dir) {
                    let _ = Command::new("umount").args(["-l", m]).output();
                }
            }
        }
        for p in &self.created {
            let _ = fs::remove_file(p).or_else(|_| fs::remove_dir_all(p));
        }
    }
}
