//! A user's process that holds the override endpoint's port before the agent starts (an
//! `@reboot` job, run by hand here: no systemd socket) keeps the agent from nothing: it starts,
//! says in `status` that the endpoint is not listening and why, and takes the port as soon as
//! it is free. Under systemd the port is `sentinel.socket`'s from boot (`tests/systemd.rs`).

mod common;

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    thread,
    time::{Duration, Instant},
};

use common::{Agent, require_root, serial};
use serde_json::Value;

/// Poll the agent's `status` until `done` holds (at most `secs`).
fn status_until(agent: &Agent, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = agent.status();
        if done(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "not within {secs} s: {what}: {st}\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_squatted_override_port_neither_stops_the_agent_nor_keeps_the_endpoint_down() {
    if !require_root("a_squatted_override_port_neither_stops_the_agent_nor_keeps_the_endpoint_down")
    {
        return;
    }
    let _serial = serial();
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("override.key");
    fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    // Starts (Agent waits until it answers) with the port taken.
    let agent = Agent::start_with(
        "",
        &format!(
            "[override]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
             secret_file = \"{}\"\n",
            key.display()
        ),
    );
    let st = status_until(&agent, 10, "status says why the endpoint is down", |st| {
        st["override"]["last_error"].is_string()
    });
    assert_eq!(st["override"]["enabled"], true, "{st}");
    assert_eq!(st["override"]["listening"], false, "{st}");
    assert!(
        st["override"]["last_error"]
            .as_str()
            .unwrap()
            .contains("taken by another process"),
        "{st}"
    );
    let text = agent.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("override endpoint: NOT LISTENING"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    assert!(
        agent.log().contains("taken by another process"),
        "{}",
        agent.log()
    );

    // The squatter goes: the agent binds at its next try and serves.
    drop(squatter);
    let st = status_until(
        &agent,
        25,
        "the endpoint listens once the port is free",
        |st| st["override"]["listening"] == true,
    );
    assert_eq!(st["override"]["socket"], "agent", "{st}");
    assert!(st["override"]["last_error"].is_null(), "{st}");
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET /decide HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 "), "{reply:?}");
}
