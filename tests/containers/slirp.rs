//! A rootless Podman container on its own network (`--network slirp4netns`, Debian's
//! slirp4netns): its traffic leaves through the host's `slirp4netns` process, a connect() of
//! that process on the host's own network. A block holds for it in the host's `output` hook
//! (the test turns the connect guard off: the nftables table alone must hold).
//!
//! The agent sees such a connection twice: the container process's own connect() (in the
//! container's network namespace, but in the cgroup the connect hook sits on), named after
//! the container through its `conmon`, and slirp4netns's on the host (a process of the user,
//! started by Podman and left to init), named after the container too, as its
//! `network_relay`. The container's connection to a high-risk test host is the finding; the
//! relay's is folded into it (no second alert); the block lands on the address, and the
//! container's next connection times out. A process that only pretends to be the relay (its
//! name and command line those of the real one, naming the container's network namespace,
//! run by the same user in the container's user namespace) is named no container.
//!
//! With the connect guard on, the container process's own connect() to a blocked address is
//! refused (EPERM) inside the container, before slirp4netns is asked for anything.
//!
//! slirp4netns's own network (10.0.2.0/24 and fd00::/64 inside the container) never touches
//! the host: the test checks that the host's addresses and routes are the same with the
//! container running.
//!
//! IPv6 goes the same way (`--network slirp4netns:enable_ipv6=true`): the container's
//! connection to KP6 leaves through slirp4netns, the block lands in `block6`, and the
//! container's next IPv6 connection times out.

use std::{collections::BTreeSet, process::Command, time::Duration};

use crate::common::{
    Agent,
    netns::{KP6, RU4, TestNet, knock, machine_network},
    nft::Table,
    podman::{RootlessUser, available, wait_for},
    require_root, serial,
};

/// Whether slirp4netns is installed; says loudly when not.
fn slirp_available(test: &str) -> bool {
    let found = Command::new("which")
        .arg("slirp4netns")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "\n*** SKIPPED {test}: slirp4netns not installed (run scripts/setup.sh) — blocks \
             for rootless containers were NOT tested ***\n"
        );
    }
    found
}

/// The host's addresses and routes, as text.
fn host_network() -> BTreeSet<String> {
    machine_network()
        .unwrap()
        .into_iter()
        .map(|e| format!("{} ({})", e.net, e.what))
        .collect()
}

/// A throwaway user's container on `--network slirp4netns` (`sleep 600`), a test network
/// with a listener on `port` that holds connections; `None` (said loudly) when the tools are
/// missing or not root. Dropped in field order: the user (with its containers) first.
struct OnSlirp {
    user: RootlessUser,
    name: String,
    id: String,
    /// The host's addresses and routes just before the container started.
    before: BTreeSet<String>,
    _listener: super::Reaped,
    _net: TestNet,
}

fn rootless_on_slirp(test: &str, tag: &str, port: u16, network: &str) -> Option<OnSlirp> {
    if !require_root(test) || !available(test) || !slirp_available(test) {
        return None;
    }
    let net = TestNet::new(tag);
    let listener = dual_stack_listener(&net, port);
    crate::common::container::container_root()?;
    let user = RootlessUser::create();
    user.import_image();
    let name = format!("snt-sl{tag}-{}", std::process::id());
    let before = host_network();
    let id = user.run(&name, &[network], &["sleep", "600"]);
    Some(OnSlirp {
        user,
        name,
        id,
        before,
        _listener: listener,
        _net: net,
    })
}

/// A listener on `port` of RU4 and KP6 (one dual-stack socket) in the test hosts' namespace
/// that accepts and holds connections.
fn dual_stack_listener(net: &TestNet, port: u16) -> super::Reaped {
    let child = Command::new("ip")
        .args(["netns", "exec", net.ns(), "/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket\ns=socket.socket(socket.AF_INET6)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
             s.bind(('::', {port})); s.listen(50)\nheld=[]\n\
             while True:\n    held.append(s.accept()[0])\n"
        ))
        .spawn()
        .unwrap();
    super::Reaped(child)
}

/// Whether the container `name` of `user` opens a connection to `addr:port` within 3 s.
fn reaches(user: &RootlessUser, name: &str, addr: &str, port: u16) -> bool {
    let out = user.sh(&format!(
        "podman exec {name} bash -c \"timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' && \
         echo OPEN\""
    ));
    out.stdout.starts_with(b"OPEN")
}

/// The pid and command line of `uid`'s slirp4netns (Podman's relay for its container).
fn relay_of(uid: u32) -> (u32, Vec<u8>) {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let uid_of = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
            (comm.trim() == "slirp4netns" && uid_of == uid)
                .then(|| Some((pid, std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)))
                .flatten()
        })
        .expect("the container's slirp4netns")
}

/// A Python program that poses as the relay — its name `slirp4netns` (`prctl`), its command
/// line rewritten to `claim` (the real relay's, through `/proc/self/mem`) — then connects to
/// `addr:port` and prints its pid. Run by the container's user in the container's user
/// namespace (`podman unshare`): only the program it runs (`/proc/<pid>/exe`) tells it apart.
fn fake_relay(user: &RootlessUser, claim: &[u8], addr: &str, port: u16) -> u32 {
    let hex: String = claim.iter().map(|b| format!("{b:02x}")).collect();
    let script = format!(
        "import ctypes, os, socket, sys\n\
         ctypes.CDLL(None).prctl(15, b'slirp4netns', 0, 0, 0)\n\
         f = open('/proc/self/stat').read().rsplit(')', 1)[1].split()\n\
         start, end = int(f[45]), int(f[46])\n\
         claim = bytes.fromhex('{hex}')\n\
         assert len(claim) <= end - start, (len(claim), end - start)\n\
         with open('/proc/self/mem', 'r+b') as m:\n    m.seek(start); m.write(claim.ljust(end - start, b'\\0'))\n\
         print(os.getpid(), flush=True)\n\
         s = socket.socket(); s.settimeout(2)\n\
         try: s.connect(('{addr}', {port}))\n\
         except OSError: pass\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fake.py");
    std::fs::write(&file, script).unwrap();
    let perm = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(dir.path(), perm).unwrap();
    // Room in argv for the claim: the rewritten command line must fit where the real one was.
    let pad = "x".repeat(claim.len() + 16);
    let out = user.sh(&format!(
        "podman unshare /usr/bin/python3 {} {pad}",
        file.display()
    ));
    let pid = String::from_utf8_lossy(&out.stdout).trim().parse();
    pid.unwrap_or_else(|_| panic!("the fake relay did not run: {out:?}"))
}

#[test]
fn a_blocked_address_is_unreachable_from_a_rootless_container_on_slirp4netns() {
    let test = "a_blocked_address_is_unreachable_from_a_rootless_container_on_slirp4netns";
    let _serial = serial();
    let Some(setup) = rootless_on_slirp(test, "l", 4451, "--network=slirp4netns") else {
        return;
    };
    let OnSlirp {
        user,
        name,
        id,
        before,
        ..
    } = &setup;
    let reach = || reaches(user, name, RU4, 4451);
    // Reachable through slirp4netns before anything is blocked.
    let open = wait_for(Duration::from_secs(10), || reach().then_some(()));
    assert!(
        open.is_some(),
        "{RU4} unreachable from the rootless container"
    );
    // slirp4netns added nothing to the host's network.
    let after = host_network();
    let added: Vec<_> = after.difference(before).collect();
    assert!(
        added.is_empty(),
        "the rootless container's network added to the host's: {added:?}"
    );

    // The agent comes now; the container's own next connection to RU4 (a high-risk
    // country) is the finding, auto-blocked after a 1 s countdown. The connect guard is off:
    // the nftables table alone must hold.
    let table = Table::new("slp");
    let agent = Agent::start_with(
        "",
        &format!(
            "[switch]\ncountdown = \"1s\"\n[enforce]\ntable = \"{}\"\nconnect_guard = false\n",
            table.0
        ),
    );
    // The container's next connection to RU4 (held a few seconds, as a C2 channel would be)
    // provokes it; it may make it before the block lands, or not.
    let _ = user.sh(&format!(
        "podman exec {name} timeout 4 bash -c 'exec 3<>/dev/tcp/{RU4}/4451 && sleep 3'"
    ));
    let blocked = wait_for(Duration::from_secs(20), || {
        table
            .elements("block4")
            .iter()
            .any(|(a, _)| a == RU4)
            .then_some(())
    });
    assert!(
        blocked.is_some(),
        "the block of {RU4} never landed; log:\n{}",
        agent.log()
    );
    // The agent sees the connection twice, both in the host's kernel: the container's own
    // connect() (inside its network namespace, but in the cgroup the connect hook sits on),
    // which names the container through its conmon, and slirp4netns's on the host's
    // network, which names the container as its network relay.
    let own = agent.wait_for("connect", "the container's connect", |c| {
        c["daddr"] == RU4 && c["dport"] == 4451 && c["comm"] == "bash"
    });
    super::names_the_container(&own, id, name);
    assert!(own["container"]["network_relay"].is_null(), "{own}");
    assert_eq!(own["uid"], user.uid, "{own}");
    let (relay, claim) = relay_of(user.uid);
    let slirp = agent.wait_for("connect", "slirp4netns's connect", |c| {
        c["daddr"] == RU4 && c["dport"] == 4451 && c["pid"] == relay
    });
    assert_eq!(slirp["comm"], "slirp4netns", "{slirp}");
    assert_eq!(slirp["uid"], user.uid, "{slirp}");
    super::names_the_container(&slirp, id, name);
    assert_eq!(
        slirp["container"]["network_relay"], "slirp4netns",
        "{slirp}"
    );
    let alert = agent.wait_for("alert", "the container's geo alert", |a| {
        a["anomaly"] == "geo" && a["target_ip"] == RU4 && a["comm"] == "bash"
    });
    super::names_the_container(&alert, id, name);
    let decision = agent.wait_for("decision", "the block of RU4", |d| {
        d["state"] == "auto-blocked"
            && d["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|a| a == RU4))
    });
    super::names_the_container(&decision, id, name);
    // A new connection from the container no longer gets through, while the block holds.
    assert!(
        !reach(),
        "{RU4} still reachable from the rootless container"
    );
    assert!(table.elements("block4").iter().any(|(a, _)| a == RU4));
    // One connection, one finding: the relay's connection was folded into the container's.
    let relay_alerts: Vec<_> = agent
        .events("alert")
        .into_iter()
        .filter(|a| a["pid"] == relay)
        .collect();
    assert!(relay_alerts.is_empty(), "{relay_alerts:?}");

    // A process posing as the relay (name and command line the real one's, the same user,
    // the container's user namespace) is named no container.
    let fake = fake_relay(user, &claim, RU4, 4451);
    let posed = agent.wait_for("connect", "the fake relay's connect", |c| c["pid"] == fake);
    assert_eq!(posed["comm"], "slirp4netns", "{posed}");
    assert!(posed["container"].is_null(), "{posed}");
    for a in agent.events("alert").iter().filter(|a| a["pid"] == fake) {
        assert!(a["container"].is_null(), "{a}");
    }
}

#[test]
fn the_connect_guard_refuses_a_rootless_container_on_slirp4netns() {
    let test = "the_connect_guard_refuses_a_rootless_container_on_slirp4netns";
    let _serial = serial();
    let Some(setup) = rootless_on_slirp(test, "g", 4452, "--network=slirp4netns") else {
        return;
    };
    let OnSlirp { user, name, .. } = &setup;
    // The connect guard on (the default); the test's own connection to RU4 is the finding.
    let table = Table::new("slg");
    let agent = Agent::start_with(
        "",
        &format!(
            "[switch]\ncountdown = \"1s\"\n[enforce]\ntable = \"{}\"\n",
            table.0
        ),
    );
    knock(RU4, 4453);
    let blocked = wait_for(Duration::from_secs(20), || {
        table
            .elements("block4")
            .iter()
            .any(|(a, _)| a == RU4)
            .then_some(())
    });
    assert!(
        blocked.is_some(),
        "the block of {RU4} never landed; log:\n{}",
        agent.log()
    );
    // The container's own connect() (in its network namespace, towards slirp's gateway) is
    // refused by the guard before slirp4netns is asked for anything.
    let out = user.sh(&format!(
        "podman exec {name} timeout 3 bash -c 'exec 3<>/dev/tcp/{RU4}/4452'"
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Operation not permitted"),
        "connect() in the rootless container was not refused by the guard: {out:?}"
    );
}

#[test]
fn a_blocked_ipv6_address_is_unreachable_from_a_rootless_container_on_slirp4netns() {
    let test = "a_blocked_ipv6_address_is_unreachable_from_a_rootless_container_on_slirp4netns";
    let _serial = serial();
    let network = "--network=slirp4netns:enable_ipv6=true";
    let Some(setup) = rootless_on_slirp(test, "6", 4454, network) else {
        return;
    };
    let OnSlirp { user, name, id, .. } = &setup;
    // slirp4netns gives the container fd00::/64 by router advertisement: reachable once the
    // container has its address and route.
    let open = wait_for(Duration::from_secs(20), || {
        reaches(user, name, KP6, 4454).then_some(())
    });
    assert!(
        open.is_some(),
        "{KP6} unreachable from the rootless container"
    );
    let table = Table::new("sl6");
    let agent = Agent::start_with(
        "",
        &format!(
            "[switch]\ncountdown = \"1s\"\n[enforce]\ntable = \"{}\"\nconnect_guard = false\n",
            table.0
        ),
    );
    let _ = user.sh(&format!(
        "podman exec {name} timeout 4 bash -c 'exec 3<>/dev/tcp/{KP6}/4454 && sleep 3'"
    ));
    let blocked = wait_for(Duration::from_secs(20), || {
        table
            .elements("block6")
            .iter()
            .any(|(a, _)| a == KP6)
            .then_some(())
    });
    assert!(
        blocked.is_some(),
        "the block of {KP6} never landed; log:\n{}",
        agent.log()
    );
    let own = agent.wait_for("connect", "the container's connect", |c| {
        c["daddr"] == KP6 && c["dport"] == 4454 && c["comm"] == "bash"
    });
    super::names_the_container(&own, id, name);
    let (relay, _) = relay_of(user.uid);
    let slirp = agent.wait_for("connect", "slirp4netns's connect", |c| {
        c["daddr"] == KP6 && c["dport"] == 4454 && c["pid"] == relay
    });
    assert_eq!(slirp["family"], 6, "{slirp}");
    super::names_the_container(&slirp, id, name);
    assert_eq!(
        slirp["container"]["network_relay"], "slirp4netns",
        "{slirp}"
    );
    // A new IPv6 connection from the container no longer gets through, while block6 holds.
    assert!(
        !reaches(user, name, KP6, 4454),
        "{KP6} still reachable from the rootless container"
    );
    assert!(table.elements("block6").iter().any(|(a, _)| a == KP6));
    let relay_alerts: Vec<_> = agent
        .events("alert")
        .into_iter()
        .filter(|a| a["pid"] == relay)
        .collect();
    assert!(relay_alerts.is_empty(), "{relay_alerts:?}");
}
