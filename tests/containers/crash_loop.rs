//! A container crash-looping through its restart policy: its init dies by a signal (a real
//! segfault) about a second after each start, and Podman (`--restart=on-failure:4`) starts it
//! again under a new `conmon` each time. The agent counts those starts per container, so the
//! loop crosses `respawn.max_spawns` (2 here) and raises `respawn` naming the runtime and the
//! container. No kill: the agent runs in dry-run; the policy gives up by itself.

use std::time::Duration;

use crate::common::{
    Agent,
    podman::{Podman, available, wait_for},
    require_root, serial,
};

/// The container's init: lives a second (the agent checks that it is its pid namespace's
/// init while it runs), then reads address 8 (SIGSEGV).
const CRASH: &str = r#"sleep 1; print unpack("p", pack("J", 8))"#;

#[test]
fn a_container_crash_looping_through_its_restart_policy_is_a_respawn() {
    let test = "a_container_crash_looping_through_its_restart_policy_is_a_respawn";
    if !require_root(test) || !available(test) {
        return;
    }
    let _serial = serial();
    let Some(mut podman) = Podman::new() else {
        return;
    };
    let agent = Agent::start_with(
        "",
        &format!(
            "[containers]\npodman_storage = [\"{}\"]\n[respawn]\nmax_spawns = 2\n",
            podman.storage().display()
        ),
    );
    let name = format!("snt-crash-{}", std::process::id());
    let id = podman.run(
        &name,
        &["--network=none", "--restart=on-failure:4"],
        &["perl", "-e", CRASH],
    );
    let alert = agent.wait_for("alert", "the crash loop as a respawn", |a| {
        a["anomaly"] == "respawn" && a["container"]["id"] == id.as_str()
    });
    super::names_the_container(&alert, &id, &name);
    let detail = alert["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(&format!(
            "/usr/bin/perl restarted 3 times within a minute after dying by a signal, by the \
             container runtime podman (conmon), the restart policy of container {name}"
        )),
        "{alert}"
    );
    // Each start had a monitor of its own: the inits' parents differ.
    let inits: Vec<_> = agent
        .events("exec")
        .into_iter()
        .filter(|e| e["container"]["id"] == id.as_str() && e["filename"] == "/usr/bin/perl")
        .collect();
    let monitors: std::collections::BTreeSet<_> =
        inits.iter().map(|e| e["ppid"].to_string()).collect();
    assert!(
        inits.len() >= 4 && monitors.len() == inits.len(),
        "the starts and their parents: {inits:?}"
    );
    // The runtime did restart it, and gives up after four restarts.
    let stopped = wait_for(Duration::from_secs(30), || {
        let out = podman
            .cmd()
            .args([
                "inspect",
                "-f",
                "{{.State.Status}} {{.RestartCount}}",
                &name,
            ])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        s.starts_with("exited").then_some(s)
    });
    assert_eq!(stopped.as_deref(), Some("exited 4"));
    // One alert for the loop, not one per start past the limit.
    let respawns = agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == "respawn" && a["container"]["id"] == id.as_str())
        .count();
    assert_eq!(respawns, 1);
}
