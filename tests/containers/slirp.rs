//! A rootless Podman container on its own network (`--network slirp4netns`, Debian's
//! slirp4netns): its traffic leaves through the host's `slirp4netns` process, a connect() of
//! that process on the host's own network. A block holds for it in the host's `output` hook
//! (the test turns the connect guard off: the nftables table alone must hold).
//!
//! The agent sees such a connection twice: the container process's own connect() (in the
//! container's network namespace, to slirp's gateway, but in the cgroup the connect hook sits
//! on), named after the container through its `conmon`, and slirp4netns's on the host, which
//! names no container (a process of the user, started by Podman and left to init). The
//! container's connection to a high-risk test host is the finding; the block lands on the
//! address, and the container's next connection times out.
//!
//! With the connect guard on, the container process's own connect() to a blocked address is
//! refused (EPERM) inside the container, before slirp4netns is asked for anything.
//!
//! slirp4netns's own network (10.0.2.0/24 and fd00::/64 inside the container) never touches
//! the host: the test checks that the host's addresses and routes are the same with the
//! container running.

use std::{collections::BTreeSet, process::Command, time::Duration};

use crate::common::{
    Agent,
    netns::{RU4, TestNet, knock, machine_network},
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

#[test]
fn a_blocked_address_is_unreachable_from_a_rootless_container_on_slirp4netns() {
    let test = "a_blocked_address_is_unreachable_from_a_rootless_container_on_slirp4netns";
    if !require_root(test) || !available(test) || !slirp_available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("l");
    let _listener = super::holding_listener(&net, 4451);
    if crate::common::container::container_root().is_none() {
        return;
    }
    let user = RootlessUser::create();
    user.import_image();
    let before = host_network();
    let name = format!("snt-slirp-{}", std::process::id());
    let id = user.run(&name, &["--network=slirp4netns"], &["sleep", "600"]);
    let reach = || {
        let out = user.sh(&format!(
            "podman exec {name} bash -c \"timeout 3 bash -c 'exec 3<>/dev/tcp/{RU4}/4451' && \
             echo OPEN\""
        ));
        out.stdout.starts_with(b"OPEN")
    };
    // Reachable through slirp4netns before anything is blocked.
    let open = wait_for(Duration::from_secs(10), || reach().then_some(()));
    assert!(
        open.is_some(),
        "{RU4} unreachable from the rootless container"
    );
    // slirp4netns added nothing to the host's network.
    let after = host_network();
    let added: Vec<_> = after.difference(&before).collect();
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
    // network, a process of the user that nothing ties to the container.
    let own = agent.wait_for("connect", "the container's connect", |c| {
        c["daddr"] == RU4 && c["dport"] == 4451 && c["comm"] == "bash"
    });
    super::names_the_container(&own, &id, &name);
    assert_eq!(own["uid"], user.uid, "{own}");
    let slirp = agent.wait_for("connect", "slirp4netns's connect", |c| {
        c["daddr"] == RU4 && c["dport"] == 4451 && c["comm"] == "slirp4netns"
    });
    assert_eq!(slirp["uid"], user.uid, "{slirp}");
    assert!(slirp["container"].is_null(), "{slirp}");
    let alert = agent.wait_for("alert", "the container's geo alert", |a| {
        a["anomaly"] == "geo" && a["target_ip"] == RU4 && a["comm"] == "bash"
    });
    super::names_the_container(&alert, &id, &name);
    let decision = agent.wait_for("decision", "the block of RU4", |d| {
        d["state"] == "auto-blocked"
            && d["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|a| a == RU4))
    });
    super::names_the_container(&decision, &id, &name);
    // A new connection from the container no longer gets through, while the block holds.
    assert!(
        !reach(),
        "{RU4} still reachable from the rootless container"
    );
    assert!(table.elements("block4").iter().any(|(a, _)| a == RU4));
}

#[test]
fn the_connect_guard_refuses_a_rootless_container_on_slirp4netns() {
    let test = "the_connect_guard_refuses_a_rootless_container_on_slirp4netns";
    if !require_root(test) || !available(test) || !slirp_available(test) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("g");
    let _listener = super::holding_listener(&net, 4452);
    if crate::common::container::container_root().is_none() {
        return;
    }
    let user = RootlessUser::create();
    user.import_image();
    let name = format!("snt-slguard-{}", std::process::id());
    user.run(&name, &["--network=slirp4netns"], &["sleep", "600"]);
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
