use std::{os::unix::fs::symlink, path::PathBuf};

use super::*;
use crate::enrich::container::ContainersConfig;

const ID: &str = "84dae01f9bbb475bef3c9e1dca49baa36ecb84cd8242bed31efa7933c3ccbac3";
const NETNS_PATH: &str = "/tmp/podman-run-1001/netns/netns-28d1b8ce-9835-0e83-59e1-4ca032dcaa8a";
/// The container's network namespace, the host's, and the rootless user namespace.
const CONTAINER_NET: u64 = 4026532176;
const HOST_NET: u64 = 4026531833;
const ROOTLESS_USER: u64 = 4026532174;
const HOST_USER: u64 = 4026531837;

fn line(args: &[&str]) -> Vec<u8> {
    let mut out = args.join("\0").into_bytes();
    out.push(0);
    out
}

/// The command line Podman 4.3 gives slirp4netns (seen on this machine).
fn podman_relay(netns: &str) -> Vec<u8> {
    line(&[
        "/usr/bin/slirp4netns",
        "--disable-host-loopback",
        "--mtu=65520",
        "--enable-sandbox",
        "--enable-seccomp",
        "--enable-ipv6",
        "-c",
        "-e",
        "3",
        "-r",
        "4",
        "--netns-type=path",
        netns,
        "tap0",
    ])
}

/// The mount table of a rootless user's mount namespace (the monitor's), as the kernel
/// writes it.
fn user_mountinfo(path: &str, netns: u64) -> String {
    format!(
        "22 21 0:21 / /run/user rw - tmpfs tmpfs rw\n\
         71 48 254:0 /tmp/podman-run-1001/netns /tmp/podman-run-1001/netns rw,relatime \
         shared:2 - ext4 /dev/vda rw\n\
         72 71 0:4 net:[{netns}] {path} rw shared:3 - nsfs nsfs rw\n"
    )
}

#[test]
fn podmans_relay_names_its_namespace_path() {
    assert_eq!(
        parse_slirp_cmdline(&podman_relay(NETNS_PATH)),
        Some(Target::Path(NETNS_PATH.into()))
    );
    // The default type is a pid; values of options never count as operands.
    assert_eq!(
        parse_slirp_cmdline(&line(&[
            "slirp4netns",
            "-c",
            "-m",
            "1500",
            "--api-socket",
            "/tmp/api.sock",
            "31502",
            "tap0"
        ])),
        Some(Target::Pid(31502))
    );
    assert_eq!(
        parse_slirp_cmdline(&line(&["slirp4netns", "--netns-type", "pid", "31502"])),
        Some(Target::Pid(31502))
    );
    // A rewritten command line's padding is no operand.
    let mut padded = podman_relay(NETNS_PATH);
    padded.extend([0; 64]);
    assert_eq!(
        parse_slirp_cmdline(&padded),
        Some(Target::Path(NETNS_PATH.into()))
    );
}

#[test]
fn what_is_not_a_relays_command_line_names_nothing() {
    for args in [
        &["slirp4netns"][..],
        &["slirp4netns", "--netns-type=path", "relative/netns", "tap0"],
        &[
            "slirp4netns",
            "--netns-type=path",
            NETNS_PATH,
            "tap0",
            "extra",
        ],
        &["slirp4netns", "--netns-type=bogus", NETNS_PATH],
        &["slirp4netns", "--target-type=bess", NETNS_PATH],
        &["slirp4netns", "0", "tap0"],
        &["slirp4netns", "-1", "tap0"],
        &["slirp4netns", "not-a-pid", "tap0"],
        // An option's value missing: the command line is cut short.
        &["slirp4netns", "31502", "-e"],
    ] {
        assert_eq!(parse_slirp_cmdline(&line(args)), None, "{args:?}");
    }
    assert_eq!(parse_slirp_cmdline(b"slirp4netns\0\xff\xfe\0tap0\0"), None);
    assert_eq!(parse_slirp_cmdline(b""), None);
    assert_eq!(parse_slirp_cmdline(b"\0\0"), None);
    // An empty operand in the middle is one.
    assert_eq!(
        parse_slirp_cmdline(&line(&["slirp4netns", "", "31502", "tap0"])),
        None
    );
}

#[test]
fn the_namespace_at_a_path_comes_from_the_mount_table() {
    let table = user_mountinfo(NETNS_PATH, CONTAINER_NET);
    assert_eq!(netns_mounted_at(&table, NETNS_PATH), Some(CONTAINER_NET));
    // Not a namespace there (a plain directory, a file), or not a network namespace.
    assert_eq!(netns_mounted_at(&table, "/tmp/podman-run-1001/netns"), None);
    assert_eq!(netns_mounted_at(&table, "/tmp/elsewhere"), None);
    let mnt = format!("72 71 0:4 mnt:[4026532242] {NETNS_PATH} rw - nsfs nsfs rw\n");
    assert_eq!(netns_mounted_at(&mnt, NETNS_PATH), None);
    // The topmost mount counts; the kernel escapes spaces in mount points.
    let stacked = format!("{table}90 72 0:4 net:[{HOST_NET}] {NETNS_PATH} rw - nsfs nsfs rw\n");
    assert_eq!(netns_mounted_at(&stacked, NETNS_PATH), Some(HOST_NET));
    let spaced = format!("72 71 0:4 net:[{CONTAINER_NET}] /tmp/a\\040b rw - nsfs nsfs rw\n");
    assert_eq!(netns_mounted_at(&spaced, "/tmp/a b"), Some(CONTAINER_NET));
    assert_eq!(netns_mounted_at("garbage\n - \n", NETNS_PATH), None);
}

#[test]
fn a_relay_serves_only_a_namespace_its_own_user_owns() {
    let relay = Seen {
        uid: 1001,
        userns: ROOTLESS_USER,
    };
    let monitor = relay.clone();
    assert!(serves(&relay, CONTAINER_NET, &monitor, CONTAINER_NET));
    // Another namespace than the container's.
    assert!(!serves(&relay, HOST_NET, &monitor, CONTAINER_NET));
    // Another user naming the container's namespace.
    let other = Seen {
        uid: 65534,
        userns: ROOTLESS_USER,
    };
    assert!(!serves(&other, CONTAINER_NET, &monitor, CONTAINER_NET));
    // The same user outside the container's user namespace (not started by its Podman).
    let outside = Seen {
        uid: 1001,
        userns: HOST_USER,
    };
    assert!(!serves(&outside, CONTAINER_NET, &monitor, CONTAINER_NET));
}

/// A `/proc` with a rootless container: its monitor (conmon, 200), its init (201, in the
/// container's network namespace), and processes that claim to relay for it.
struct FakeProc {
    dir: tempfile::TempDir,
}

impl FakeProc {
    fn new() -> FakeProc {
        let fake = FakeProc {
            dir: tempfile::tempdir().unwrap(),
        };
        let conmon = line(&[
            "/usr/bin/conmon",
            "-c",
            ID,
            "-n",
            "web",
            "-b",
            &format!("/home/u/.local/share/containers/storage/vfs-containers/{ID}/userdata"),
        ]);
        fake.process(
            200,
            "conmon",
            "/usr/bin/conmon",
            &conmon,
            HOST_NET,
            ROOTLESS_USER,
        );
        fake.write(
            200,
            "mountinfo",
            user_mountinfo(NETNS_PATH, CONTAINER_NET).as_bytes(),
        );
        fake.write(200, "task/200/children", b"201 ");
        fake.process(
            201,
            "sleep",
            "/usr/bin/sleep",
            &line(&["sleep"]),
            CONTAINER_NET,
            ROOTLESS_USER,
        );
        // The init is in the container's own pid namespace.
        std::fs::remove_file(fake.pid_dir(201).join("ns/pid")).unwrap();
        symlink("pid:[4026532300]", fake.pid_dir(201).join("ns/pid")).unwrap();
        fake
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.dir.path().join(pid.to_string())
    }

    fn write(&self, pid: u32, file: &str, text: &[u8]) {
        let path = self.pid_dir(pid).join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn process(&self, pid: u32, comm: &str, exe: &str, cmdline: &[u8], net: u64, user: u64) {
        let dir = self.pid_dir(pid);
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        let stat =
            format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {pid}00 0");
        self.write(pid, "stat", stat.as_bytes());
        self.write(pid, "cmdline", cmdline);
        symlink(exe, dir.join("exe")).unwrap();
        symlink(format!("net:[{net}]"), dir.join("ns/net")).unwrap();
        symlink(format!("user:[{user}]"), dir.join("ns/user")).unwrap();
        symlink("mnt:[4026532175]", dir.join("ns/mnt")).unwrap();
        symlink("pid:[4026531836]", dir.join("ns/pid")).unwrap();
    }

    fn containers(&self) -> Containers {
        Containers::new(ContainersConfig::default(), None, self.dir.path().into())
    }
}

#[test]
fn podmans_relay_names_the_container_it_serves() {
    let fake = FakeProc::new();
    fake.process(
        300,
        "slirp4netns",
        "/usr/bin/slirp4netns",
        &podman_relay(NETNS_PATH),
        HOST_NET,
        ROOTLESS_USER,
    );
    let mut containers = fake.containers();
    let c = containers
        .of_relay(300, || vec![200])
        .expect("the relay's container");
    assert_eq!(c.id, ID);
    assert_eq!(c.name.as_deref(), Some("web"));
    assert_eq!(c.network_relay.as_deref(), Some(SLIRP4NETNS));
    assert!(
        c.describe()
            .ends_with("through its network relay slirp4netns"),
        "{}",
        c.describe()
    );
    // The pid form names the container's init.
    fake.process(
        301,
        "slirp4netns",
        "/usr/bin/slirp4netns",
        &line(&["slirp4netns", "-c", "201", "tap0"]),
        HOST_NET,
        ROOTLESS_USER,
    );
    assert_eq!(
        containers
            .of_relay(301, || vec![200])
            .map(|c| c.id.clone())
            .as_deref(),
        Some(ID)
    );
    // Cached: the monitors are not asked again.
    assert!(containers.of_relay(300, || panic!("asked again")).is_some());
}

#[test]
fn a_relay_started_before_its_container_is_tied_once_the_container_runs() {
    let fake = FakeProc::new();
    fake.process(
        300,
        "slirp4netns",
        "/usr/bin/slirp4netns",
        &podman_relay(NETNS_PATH),
        HOST_NET,
        ROOTLESS_USER,
    );
    let mut containers = fake.containers();
    // Podman starts the relay before the container's monitor: nothing to tie it to yet, and
    // nothing new while the monitors are the same.
    assert_eq!(containers.of_relay(300, Vec::new), None);
    assert_eq!(containers.of_relay(300, Vec::new), None);
    // The monitor came: the relay is examined again.
    assert_eq!(
        containers
            .of_relay(300, || vec![200])
            .map(|c| c.id.clone())
            .as_deref(),
        Some(ID)
    );
    // No relay is final: never examined again, whatever monitors come.
    fake.process(
        301,
        "slirp4netns",
        "/usr/bin/python3",
        &podman_relay(NETNS_PATH),
        HOST_NET,
        ROOTLESS_USER,
    );
    assert_eq!(containers.of_relay(301, || vec![200]), None);
    assert_eq!(containers.of_relay(301, || panic!("asked again")), None);
}

#[test]
fn a_fake_relay_claims_no_container() {
    let fake = FakeProc::new();
    let claim = podman_relay(NETNS_PATH);
    // Named slirp4netns but running another program (a script with its comm set, a copy).
    fake.process(
        400,
        "slirp4netns",
        "/usr/bin/python3.11",
        &claim,
        HOST_NET,
        ROOTLESS_USER,
    );
    fake.process(
        401,
        "slirp4netns",
        "/tmp/x/slirp4netns",
        &claim,
        HOST_NET,
        ROOTLESS_USER,
    );
    // The real program, outside the container's user namespace (not its Podman's).
    fake.process(
        402,
        "slirp4netns",
        "/usr/bin/slirp4netns",
        &claim,
        HOST_NET,
        HOST_USER,
    );
    // The real program naming a path where no namespace is mounted, or another namespace.
    let elsewhere = podman_relay("/tmp/podman-run-1001/netns/mine");
    fake.process(
        403,
        "slirp4netns",
        "/usr/bin/slirp4netns",
        &elsewhere,
        HOST_NET,
        ROOTLESS_USER,
    );
    fake.process(
        404,
        "slirp4netns",
        "/usr/bin/slirp4netns",
        &line(&["slirp4netns", "200", "tap0"]),
        HOST_NET,
        ROOTLESS_USER,
    );
    // A monitor that is no conmon.
    fake.process(
        500,
        "conmon",
        "/tmp/conmon",
        &line(&["conmon", "-c", ID]),
        HOST_NET,
        ROOTLESS_USER,
    );
    fake.write(
        500,
        "mountinfo",
        user_mountinfo(NETNS_PATH, CONTAINER_NET).as_bytes(),
    );
    fake.write(500, "task/500/children", b"201 ");
    let mut containers = fake.containers();
    for pid in 400..=404 {
        assert_eq!(containers.of_relay(pid, || vec![200]), None, "pid {pid}");
    }
    fake.process(
        405,
        "slirp4netns",
        "/usr/bin/slirp4netns",
        &claim,
        HOST_NET,
        ROOTLESS_USER,
    );
    assert_eq!(containers.of_relay(405, || vec![500]), None);
}

#[test]
fn a_users_relays_are_examined_at_most_so_often() {
    let fake = FakeProc::new();
    let claim = podman_relay("/tmp/podman-run-1001/netns/mine");
    let mut containers = fake.containers();
    // Real relays naming nothing of the container's: each is examined (and found no relay
    // of it yet) until the user's budget for this second is spent.
    for pid in 600..600 + LOOKUPS_PER_SECOND {
        fake.process(
            pid,
            "slirp4netns",
            "/usr/bin/slirp4netns",
            &claim,
            HOST_NET,
            ROOTLESS_USER,
        );
        assert_eq!(containers.of_relay(pid, || vec![200]), None);
    }
    let relay = |c: &Containers, pid| {
        c.by_relay
            .get(&pid)
            .map(|(_, r)| matches!(r, Relay::NotYet(_)))
    };
    assert_eq!(relay(&containers, 600), Some(true));
    // The container's real relay waits for the next second: not examined, not remembered.
    fake.process(
        300,
        "slirp4netns",
        "/usr/bin/slirp4netns",
        &podman_relay(NETNS_PATH),
        HOST_NET,
        ROOTLESS_USER,
    );
    assert_eq!(containers.of_relay(300, || vec![200]), None);
    assert_eq!(relay(&containers, 300), None);
    // Programs that are no slirp4netns cost no examination.
    fake.process(
        700,
        "slirp4netns",
        "/usr/bin/python3",
        &claim,
        HOST_NET,
        ROOTLESS_USER,
    );
    assert_eq!(
        containers.of_relay(700, || panic!("no monitors for a fake")),
        None
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert!(containers.of_relay(300, || vec![200]).is_some());
}
