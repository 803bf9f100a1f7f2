//! Real containers for the end-to-end tests: Debian's `podman` with Debian's `runc` (these
//! machines mount cgroups in hybrid mode, which crun refuses, and refuse raised rlimits, so
//! every container gets `--ulimit nofile=4096:4096 --ulimit nproc=4096:4096`).
//!
//! Nothing touches the machine's own Podman state: each [`Podman`] has its own storage,
//! run root, temp dir and network config in a temp dir (`CONTAINERS_CONF`,
//! `CONTAINERS_STORAGE_CONF`, `CONTAINERS_REGISTRIES_CONF` with no registry). The image,
//! `localhost/sentinel-test/bookworm`, is the Debian root `tests/common/container.rs` caches,
//! imported once into a read-only image store under /var/cache/sentinel-test/podman-images
//! that each test's storage uses as an additional store. Containers are removed on drop.
//!
//! Networking: Debian's netavark (1.4) can only program the host firewall through iptables,
//! in the host's own tables, which the tests must never touch. So no Podman network is
//! created: [`ContainerNet`] builds a namespace of its own with iproute2 (a veth on
//! 198.51.100.96/28 and 2001:db8:3::/64 — the first inside TestNet's 198.51.100.0/25 but more
//! specific — checked against every address and route of the machine first, and routed back
//! from TestNet's hosts), and containers join it with `--network ns:PATH`: their traffic is
//! bridged-like, forwarded by the host (IPv4 and IPv6 forwarding, restored on drop) through
//! the `forward` hook. `--network host` containers use the host's namespace directly.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use super::netns::{Net, TestNet, check_no_overlap, machine_network};

/// The read-only image store the image is imported into, once.
const IMAGES: &str = "/var/cache/sentinel-test/podman-images";
pub const IMAGE: &str = "localhost/sentinel-test/bookworm:latest";

/// The container network: host side, container side, prefix; and the same in IPv6.
pub const HOST_SIDE: &str = "198.51.100.97";
pub const CONTAINER_SIDE: &str = "198.51.100.98";
const PREFIX: &str = "198.51.100.96/28";
const HOST_SIDE6: &str = "2001:db8:3::1";
pub const CONTAINER_SIDE6: &str = "2001:db8:3::2";
const PREFIX6: &str = "2001:db8:3::/64";
/// TestNet's host-side addresses, through which its hosts route back to the container network.
const TESTNET_HOST4: &str = "198.51.100.1";
const TESTNET_HOST6: &str = "2001:db8:1::1";
const FORWARD4: &str = "/proc/sys/net/ipv4/ip_forward";
const FORWARD6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Whether podman and runc are installed; says loudly what is missing otherwise.
pub fn available(test: &str) -> bool {
    let missing: Vec<&str> = ["podman", "runc"]
        .into_iter()
        .filter(|t| {
            Command::new("which")
                .arg(t)
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED {test}: {missing:?} not installed (run scripts/setup.sh) — containers \
         were NOT tested ***\n"
    );
    false
}

/// A private Podman: its own storage and configuration in a temp dir.
pub struct Podman {
    dir: tempfile::TempDir,
    names: Vec<String>,
}

impl Podman {
    /// A private Podman with the test image available; `None` (said loudly) when the Debian
    /// root cannot be built here.
    pub fn new() -> Option<Podman> {
        let root = super::container::container_root()?;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["graph", "run", "tmp", "networks"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        fs::write(
            p.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 runtime = \"runc\"\ntmp_dir = \"{}\"\n[network]\nnetwork_config_dir = \"{}\"\n",
                p.join("tmp").display(),
                p.join("networks").display()
            ),
        )
        .unwrap();
        fs::write(
            p.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        let podman = Podman {
            dir,
            names: Vec::new(),
        };
        podman.write_storage_conf(&podman.path("graph"), &podman.path("run"), Some(IMAGES));
        podman.import_once(&root);
        Some(podman)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The graph root: where `containers.json` names this Podman's containers.
    pub fn storage(&self) -> PathBuf {
        self.path("graph")
    }

    fn write_storage_conf(&self, graph: &Path, run: &Path, images: Option<&str>) {
        let mut conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            graph.display(),
            run.display()
        );
        if let Some(images) = images {
            conf.push_str(&format!(
                "[storage.options]\nadditionalimagestores = [\"{images}\"]\n"
            ));
        }
        fs::write(self.path("storage.conf"), conf).unwrap();
    }

    /// `podman` on this private configuration.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"));
        c
    }

    fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Import the Debian root into the shared image store, once (under a lock).
    fn import_once(&self, root: &Path) {
        fs::create_dir_all(IMAGES).unwrap();
        let lock = File::create(format!("{IMAGES}.lock")).unwrap();
        lock.lock().unwrap();
        let marker = Path::new(IMAGES).join("sentinel-imported");
        if marker.exists() {
            return;
        }
        let started = Instant::now();
        // The import writes the store itself: a storage.conf whose graph root is the store.
        let import_run = self.path("import-run");
        self.write_storage_conf(Path::new(IMAGES), &import_run, None);
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | podman import - sentinel-test/bookworm",
                root.display()
            ))
            .envs(
                self.cmd()
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .output()
            .unwrap();
        self.write_storage_conf(&self.path("graph"), &self.path("run"), Some(IMAGES));
        assert!(
            out.status.success(),
            "importing the image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(&marker, "").unwrap();
        eprintln!("imported {IMAGE} in {:.0?}", started.elapsed());
    }

    /// Start container `name` (detached) with `opts` before the image and `cmd` after it; its
    /// full id.
    pub fn run(&mut self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ];
        args.extend(opts);
        args.push(IMAGE);
        args.extend(cmd);
        self.names.push(name.to_string());
        let out = self.run_ok(&args);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman exec NAME CMD…`, as an admin would.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        self.cmd().arg("exec").arg(name).args(cmd).output().unwrap()
    }

    /// The host pid of container `name`'s PID 1.
    pub fn pid1(&self, name: &str) -> u32 {
        let out = self.run_ok(&["inspect", "-f", "{{.State.Pid}}", name]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.cmd().args(["rm", "-f", "-t", "0", name]).output();
        }
        // Anything podman left mounted in the private storage goes before the temp dir.
        let _ = self.cmd().args(["unshare", "true"]).output();
        if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
            let graph = self.storage();
            let graph = graph.to_string_lossy();
            for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(4)) {
                if m.starts_with(&*graph) {
                    let _ = Command::new("umount").args(["-l", m]).output();
                }
            }
        }
    }
}

/// A namespace for containers, routed through the host to TestNet's hosts.
pub struct ContainerNet {
    ns: String,
    veth: String,
    /// IPv4 and IPv6 forwarding as they were, restored on drop.
    forward_was: [String; 2],
    /// TestNet's namespace, where the route back was added.
    testnet_ns: String,
}

impl ContainerNet {
    /// Build it beside `net` (whose machine-wide lock it relies on: drop it before `net`).
    pub fn new(net: &TestNet) -> ContainerNet {
        let prefixes = [PREFIX, PREFIX6].map(|p| Net::parse(p).unwrap());
        // Everything the machine has, except TestNet's own veth (whose /25 the /28 sits in on
        // purpose: the more specific route wins).
        let existing: Vec<_> = machine_network()
            .unwrap()
            .into_iter()
            .filter(|e| !e.what.contains(&format!(" {}", net.veth())))
            .collect();
        check_no_overlap(&prefixes, &existing).unwrap_or_else(|e| panic!("container network: {e}"));
        let id = std::process::id() % 100_000;
        let forward_was =
            [FORWARD4, FORWARD6].map(|f| fs::read_to_string(f).unwrap().trim().to_string());
        let cn = ContainerNet {
            ns: format!("sentinel-test-c{id}"),
            veth: format!("sntc{id}"),
            forward_was,
            testnet_ns: net.ns().to_string(),
        };
        let peer = format!("snq{id}");
        let ns = cn.ns.clone();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &cn.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns]);
        let host4 = format!("{HOST_SIDE}/28");
        let host6 = format!("{HOST_SIDE6}/64");
        ip(&["addr", "add", &host4, "dev", &cn.veth]);
        ip(&["addr", "add", &host6, "dev", &cn.veth, "nodad"]);
        ip(&["link", "set", &cn.veth, "up"]);
        let in_ns = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns, "ip"];
            a.extend(args);
            ip(&a);
        };
        let (cont4, cont6) = (
            format!("{CONTAINER_SIDE}/28"),
            format!("{CONTAINER_SIDE6}/64"),
        );
        in_ns(&["link", "set", "lo", "up"]);
        in_ns(&["link", "set", &peer, "name", "eth0"]);
        in_ns(&["addr", "add", &cont4, "dev", "eth0"]);
        in_ns(&["addr", "add", &cont6, "dev", "eth0", "nodad"]);
        in_ns(&["link", "set", "eth0", "up"]);
        in_ns(&["route", "add", "default", "via", HOST_SIDE]);
        in_ns(&["-6", "route", "add", "default", "via", HOST_SIDE6]);
        // TestNet's hosts see the /28 inside their /25: route both back through the host.
        let tn = net.ns();
        ip(&[
            "netns",
            "exec",
            tn,
            "ip",
            "route",
            "add",
            PREFIX,
            "via",
            TESTNET_HOST4,
        ]);
        ip(&[
            "netns",
            "exec",
            tn,
            "ip",
            "-6",
            "route",
            "add",
            PREFIX6,
            "via",
            TESTNET_HOST6,
        ]);
        for f in [FORWARD4, FORWARD6] {
            fs::write(f, "1").unwrap();
        }
        cn
    }

    /// `--network ns:PATH` for podman.
    pub fn podman_network(&self) -> String {
        format!("ns:/run/netns/{}", self.ns)
    }
}

impl Drop for ContainerNet {
    fn drop(&mut self) {
        for (f, was) in [FORWARD4, FORWARD6].iter().zip(&self.forward_was) {
            let _ = fs::write(f, was);
        }
        let tn = &self.testnet_ns;
        for args in [
            &["netns", "exec", tn, "ip", "route", "del", PREFIX][..],
            &["netns", "exec", tn, "ip", "-6", "route", "del", PREFIX6][..],
            &["link", "del", &self.veth][..],
            &["netns", "del", &self.ns][..],
        ] {
            let _ = Command::new("ip").args(args).output();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Poll `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A throwaway user running rootless Podman: created with a home in a temp dir and
/// subordinate uid/gid ranges (`usermod --add-subuids`, Debian's `uidmap` for the mappings),
/// removed on drop with everything it runs (its processes, found by uid, are the test's own:
/// the user did not exist before), its home and its runtime dirs.
pub struct RootlessUser {
    pub name: String,
    pub uid: u32,
    home: tempfile::TempDir,
}

impl RootlessUser {
    pub fn create() -> RootlessUser {
        let name = format!("sntrl-{}", std::process::id() % 100_000);
        let _ = Command::new("userdel").args(["-r", "-f", &name]).output();
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(&name);
        let out = Command::new("useradd")
            .args(["-m", "-N", "-p", "*", "-s", "/bin/sh", "-d"])
            .arg(&dir)
            .arg(&name)
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {out:?}");
        let mut user = RootlessUser { name, uid: 0, home };
        user.uid = nix::unistd::User::from_name(&user.name)
            .unwrap()
            .expect("the user just added")
            .uid
            .as_raw();
        let subuid = fs::read_to_string("/etc/subuid").unwrap_or_default();
        if !subuid
            .lines()
            .any(|l| l.starts_with(&format!("{}:", user.name)))
        {
            // Past every range the machine hands out.
            let end = subuid
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':').skip(1);
                    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
                })
                .max()
                .unwrap_or(100_000)
                .max(100_000);
            let range = format!("{end}-{}", end + 65_535);
            let out = Command::new("usermod")
                .args(["--add-subuids", &range, "--add-subgids", &range, &user.name])
                .output()
                .unwrap();
            assert!(out.status.success(), "usermod: {out:?}");
        }
        let conf = dir.join(".config/containers");
        fs::create_dir_all(&conf).unwrap();
        fs::write(
            conf.join("containers.conf"),
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\n",
        )
        .unwrap();
        fs::write(
            conf.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        let chown = Command::new("chown")
            .args(["-R", &format!("{}:", user.name)])
            .arg(dir.join(".config"))
            .output()
            .unwrap();
        assert!(chown.status.success(), "chown: {chown:?}");
        user
    }

    /// `sh -c CMD` as the user, in a login environment.
    pub fn sh(&self, cmd: &str) -> Output {
        Command::new("su")
            .args(["-", &self.name, "-c", cmd])
            .output()
            .unwrap()
    }

    fn sh_ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        assert!(
            out.status.success(),
            "as {}: {cmd}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Import the test image into the user's own store.
    pub fn import_image(&self) {
        let root = super::container::container_root().expect("the Debian root");
        self.sh_ok(&format!(
            "tar -C {} -c . 2>/dev/null | podman import - sentinel-test/bookworm >/dev/null",
            root.display()
        ));
    }

    /// `podman run -d --name NAME OPTS… IMAGE CMD…` as the user; the container's id.
    pub fn run(&self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
        let mut line = format!(
            "podman run -d --name {name} --ulimit nofile=4096:4096 --ulimit nproc=4096:4096"
        );
        for a in opts.iter().chain([&IMAGE]).chain(cmd) {
            line.push(' ');
            line.push_str(&quote(a));
        }
        self.sh_ok(&line)
    }

    /// The user's own graph root.
    pub fn storage(&self) -> PathBuf {
        self.home
            .path()
            .join(&self.name)
            .join(".local/share/containers/storage")
    }
}

impl Drop for RootlessUser {
    fn drop(&mut self) {
        let _ = self.sh("podman rm -a -f -t 0");
        // What the user still runs (Podman's pause process, conmon): the test's own.
        for _ in 0..3 {
            let pids: Vec<i32> = fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    use std::os::unix::fs::MetadataExt;
                    fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == self.uid)
                })
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = Command::new("userdel")
            .args(["-r", "-f", &self.name])
            .output();
        for dir in [
            format!("/tmp/podman-run-{}", self.uid),
            format!("/tmp/containers-user-{}", self.uid),
        ] {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
