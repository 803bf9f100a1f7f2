//! A day of a real VPS raises nothing (#25 §5): the ordinary work of an admin and of the
//! programs they run, each run as the admin would (root, from a shell or a scheduler, never
//! below a listening process unless the program itself is a server), with the real agent
//! watching. Every alert about these processes is a defect.
//!
//! The day: `go run` of a small program (its binary lands in /tmp/go-build…), `pip install` of
//! a local sdist that builds a C extension with gcc, `apt-get install`/`remove` of a small
//! package from the machine's mirror, a local `.deb` that ships a systemd unit and a cron file,
//! `ansible-playbook` on localhost with shell, copy, cron and unit-file tasks, a backup script
//! (`tar | gzip | ssh`) to a test host's own OpenSSH server, logrotate with a postrotate
//! script, a certbot-style deploy hook (a script run by a python parent that does not listen),
//! a Node app deployed with `git pull && npm ci` and restarted, and `crontab -e` by root.
//!
//! What this machine has no stand-in for is said where it matters: systemd is not PID 1 here, so
//! the backup runs as its timer's service would (a root shell), and the playbook installs a
//! unit file instead of starting it. Everything written outside the test's temp dir (a root
//! crontab line, /etc/cron.d and /etc/systemd/system files, two packages) is undone on drop.

mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use common::{
    Agent,
    netns::{DE4, TestNet},
    procs::Procs,
    require_root, serial,
    sshd::Sshd,
};
use serde_json::Value;

/// apt-get as a script runs it; a dpkg lock held by something else on the machine (its own
/// unattended-upgrades) is waited for, not a failure.
const APT_OPTIONS: [&str; 6] = [
    "-y",
    "-q",
    "-o",
    "Dpkg::Use-Pty=0",
    "-o",
    "DPkg::Lock::Timeout=300",
];

/// Names of what the day leaves outside its temp dir, unique to this run.
fn tag() -> String {
    format!("sentinel-vpsday-{}", std::process::id())
}

/// Run `cmd` to the end; it must succeed. Returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", script]);
    c
}

fn write_exec(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Undoes, on drop, what the day wrote outside its temp dir.
struct Undo {
    crontab: Option<String>,
    files: Vec<PathBuf>,
    packages: Vec<String>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        for p in &self.packages {
            let _ = Command::new("dpkg")
                .args(["--purge", p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        match &self.crontab {
            Some(saved) => {
                let mut c = Command::new("crontab")
                    .arg("-")
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                let _ = c.stdin.take().unwrap().write_all(saved.as_bytes());
                let _ = c.wait();
            }
            None => {
                let _ = Command::new("crontab")
                    .arg("-r")
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Root's crontab as it is now (None: root has none).
fn saved_crontab() -> Option<String> {
    let out = Command::new("crontab").arg("-l").output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn go_run(dir: &Path) {
    let d = dir.join("go");
    fs::create_dir_all(&d).unwrap();
    fs::write(
        d.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\t\"os/exec\"\n)\n\nfunc main() {\n\
         \tout, _ := exec.Command(\"uname\", \"-r\").Output()\n\tfmt.Printf(\"kernel %s\", out)\n}\n",
    )
    .unwrap();
    let out = run_ok(
        Command::new("go")
            .args(["run", "main.go"])
            .current_dir(&d)
            .env("HOME", &d)
            .env("GOCACHE", d.join("cache"))
            .env("GOPATH", d.join("gopath"))
            .env("GO111MODULE", "off")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local"),
    );
    assert!(out.starts_with("kernel "), "{out}");
}

fn pip_c_extension(dir: &Path) {
    let d = dir.join("pip");
    let pkg = d.join("vpsday_ext");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(
        pkg.join("setup.py"),
        "from setuptools import setup, Extension\n\
         setup(name='vpsday_ext', version='1.0',\n\
               ext_modules=[Extension('vpsday_ext', ['vpsday_ext.c'])])\n",
    )
    .unwrap();
    fs::write(
        pkg.join("vpsday_ext.c"),
        "#include <Python.h>\n\
         static PyObject *answer(PyObject *s, PyObject *a) { return PyLong_FromLong(42); }\n\
         static PyMethodDef m[] = {{\"answer\", answer, METH_NOARGS, NULL}, {NULL}};\n\
         static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"vpsday_ext\", NULL, -1, m};\n\
         PyMODINIT_FUNC PyInit_vpsday_ext(void) { return PyModule_Create(&d); }\n",
    )
    .unwrap();
    let venv = d.join("venv");
    run_ok(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    );
    run_ok(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--no-index",
                "--no-build-isolation",
                "--disable-pip-version-check",
            ])
            .arg(&pkg)
            .env("HOME", &d)
            .env("TMPDIR", "/tmp"),
    );
    let out = run_ok(
        Command::new(venv.join("bin/python"))
            .args(["-c", "import vpsday_ext; print(vpsday_ext.answer())"]),
    );
    assert_eq!(out.trim(), "42");
}

fn apt_install_remove(undo: &mut Undo) {
    let apt = |args: &[&str]| {
        run_ok(
            Command::new("apt-get")
                .args(APT_OPTIONS)
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "hello"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&installed.stdout).contains("ok installed") {
        eprintln!("*** apt-get step skipped: GNU hello is already installed on this machine");
        return;
    }
    undo.packages.push("hello".into());
    apt(&["install", "--no-install-recommends", "hello"]);
    assert!(run_ok(&mut Command::new("/usr/bin/hello")).contains("Hello"));
    apt(&["remove", "hello"]);
}

/// A local package shipping a systemd unit and a cron file, with a postinst that reloads
/// systemd when it runs; installed with apt-get, then purged.
fn local_deb(dir: &Path, undo: &mut Undo) {
    let name = tag();
    let root = dir.join("deb");
    for sub in ["DEBIAN", "lib/systemd/system", "etc/cron.d", "usr/sbin"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: Sentinel tests <tests@example.org>\n\
             Description: a local package with a unit and a cron job\n"
        ),
    )
    .unwrap();
    write_exec(
        &root.join("DEBIAN/postinst"),
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload; fi\n",
    );
    write_exec(
        &root.join(format!("usr/sbin/{name}")),
        "#!/bin/sh\nfind /var/log -maxdepth 1 -name '*.gz' -mtime +30 | wc -l\n",
    );
    fs::write(
        root.join(format!("lib/systemd/system/{name}.service")),
        format!("[Unit]\nDescription=tidy\n[Service]\nType=oneshot\nExecStart=/usr/sbin/{name}\n"),
    )
    .unwrap();
    fs::write(
        root.join(format!("etc/cron.d/{name}")),
        format!("# tidy old logs\n17 4 * * * root /usr/sbin/{name} >/dev/null\n"),
    )
    .unwrap();
    let deb = dir.join(format!("{name}.deb"));
    run_ok(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&root)
            .arg(&deb),
    );
    undo.packages.push(name.clone());
    run_ok(
        Command::new("apt-get")
            .args(APT_OPTIONS)
            .arg("install")
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    assert!(Path::new(&format!("/etc/cron.d/{name}")).exists());
    run_ok(
        Command::new("apt-get")
            .args(APT_OPTIONS)
            .args(["purge", &name])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
}

fn ansible(dir: &Path, undo: &mut Undo) {
    let name = tag();
    let d = dir.join("ansible");
    fs::create_dir_all(&d).unwrap();
    let cron_file = format!("{name}-ansible");
    let unit = format!("/etc/systemd/system/{name}-ansible.service");
    undo.files.push(format!("/etc/cron.d/{cron_file}").into());
    undo.files.push(unit.clone().into());
    fs::write(
        d.join("play.yml"),
        format!(
            "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n\
             \x20   - name: uptime\n      ansible.builtin.shell: uptime && df -h / | tail -1\n\
             \x20   - name: config\n      ansible.builtin.copy:\n        content: \"listen 8080\\n\"\n        dest: {cfg}\n        mode: \"0644\"\n\
             \x20   - name: nightly job\n      ansible.builtin.cron:\n        name: tidy\n        minute: \"23\"\n        hour: \"2\"\n        user: root\n        job: /usr/bin/find /tmp -maxdepth 1 -name 'nothing-*' -delete\n        cron_file: {cron_file}\n\
             \x20   - name: unit file\n      ansible.builtin.copy:\n        content: \"[Unit]\\nDescription=app\\n[Service]\\nExecStart=/usr/bin/sleep infinity\\n\"\n        dest: {unit}\n        mode: \"0644\"\n\
             \x20   - name: undo the job\n      ansible.builtin.cron:\n        name: tidy\n        cron_file: {cron_file}\n        user: root\n        state: absent\n\
             \x20   - name: undo the unit\n      ansible.builtin.file:\n        path: {unit}\n        state: absent\n",
            cfg = d.join("app.conf").display(),
        ),
    )
    .unwrap();
    run_ok(
        Command::new("ansible-playbook")
            .args(["-i", "localhost,"])
            .arg(d.join("play.yml"))
            .env("HOME", &d)
            .env("ANSIBLE_LOCAL_TEMP", d.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", d.join("rtmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3"),
    );
    assert!(d.join("app.conf").exists());
}

/// The backup a timer would run: the web root and /etc, tarred and gzipped to a test host
/// over ssh (its own sshd, in its network namespace).
fn backup_over_ssh(dir: &Path, net: &TestNet) {
    let sshd = Sshd::start_in(Some(net.ns()), DE4, 2222);
    let dest = dir.join("backup.tar.gz");
    let script = dir.join("backup.sh");
    write_exec(
        &script,
        &format!(
            "#!/bin/sh\nset -e\n\
             tar -C / -cf - etc/hostname etc/os-release | gzip -c | \
             ssh -F /dev/null -i {key} -p 2222 -o IdentitiesOnly=yes -o BatchMode=yes \
             -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@{DE4} \
             'cat > {dest}'\n",
            key = sshd.client_key().display(),
            dest = dest.display(),
        ),
    );
    run_ok(&mut Command::new(&script));
    let listed = run_ok(Command::new("tar").arg("-tzf").arg(&dest));
    assert!(listed.contains("etc/hostname"), "{listed}");
}

fn logrotate(dir: &Path) {
    let d = dir.join("logrotate");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("app.log"), "line\n".repeat(1000)).unwrap();
    let conf = d.join("app.conf");
    fs::write(
        &conf,
        format!(
            "{log} {{\n  rotate 2\n  compress\n  missingok\n  postrotate\n    touch {reopened}; \
             /usr/bin/test -f {log}.1.gz || true\n  endscript\n}}\n",
            log = d.join("app.log").display(),
            reopened = d.join("reopened").display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
    run_ok(
        Command::new("logrotate")
            .args(["-f", "-s"])
            .arg(d.join("state"))
            .arg(&conf),
    );
    assert!(d.join("reopened").exists() && d.join("app.log.1.gz").exists());
}

/// certbot renews (here: openssl makes a certificate) and runs its deploy hook from python.
fn certbot_hook(dir: &Path) {
    let d = dir.join("certbot");
    let live = d.join("live");
    fs::create_dir_all(&live).unwrap();
    let hook = d.join("deploy-hook.sh");
    write_exec(
        &hook,
        &format!(
            "#!/bin/sh\nset -e\ninstall -m 600 \"$RENEWED_LINEAGE/privkey.pem\" {out}/key.pem\n\
             install -m 644 \"$RENEWED_LINEAGE/fullchain.pem\" {out}/cert.pem\n\
             openssl x509 -noout -subject -in {out}/cert.pem >/dev/null\n",
            out = d.display()
        ),
    );
    run_ok(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(
                "import os, subprocess, sys\n\
                 live = sys.argv[1]\n\
                 subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',\n\
                   '-subj', '/CN=www.example.org', '-keyout', live + '/privkey.pem',\n\
                   '-out', live + '/fullchain.pem'], check=True, capture_output=True)\n\
                 subprocess.run([sys.argv[2]], check=True, env=dict(os.environ, RENEWED_LINEAGE=live))\n",
            )
            .arg(&live)
            .arg(&hook),
    );
    assert!(d.join("key.pem").exists());
}

/// A Node app in git: running, then deployed with `git pull && npm ci` and restarted.
fn node_deploy(dir: &Path, procs: &mut Procs) {
    let d = dir.join("node");
    let origin = d.join("origin");
    let app = d.join("app");
    fs::create_dir_all(&origin).unwrap();
    let git = |cwd: &Path, args: &[&str]| {
        run_ok(
            Command::new("git")
                .args([
                    "-c",
                    "user.name=admin",
                    "-c",
                    "user.email=admin@example.org",
                ])
                .args(args)
                .current_dir(cwd)
                .env("HOME", &d),
        )
    };
    let server = |version: &str| {
        format!(
            "require('http').createServer((q, r) => r.end('{version}'))\
             .listen(0, '127.0.0.1', () => console.log('up'));\n"
        )
    };
    git(&origin, &["init", "-q", "-b", "main"]);
    fs::write(
        origin.join("package.json"),
        r#"{"name": "app", "version": "1.0.0", "private": true}"#,
    )
    .unwrap();
    fs::write(
        origin.join("package-lock.json"),
        r#"{"name": "app", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
            "packages": {"": {"name": "app", "version": "1.0.0"}}}"#,
    )
    .unwrap();
    fs::write(origin.join("server.js"), server("v1")).unwrap();
    git(&origin, &["add", "."]);
    git(&origin, &["commit", "-q", "-m", "v1"]);
    git(
        &d,
        &[
            "clone",
            "-q",
            origin.to_str().unwrap(),
            app.to_str().unwrap(),
        ],
    );
    let start = |procs: &mut Procs| -> u32 {
        procs
            .spawn(
                Command::new("node")
                    .arg("server.js")
                    .current_dir(&app)
                    .stdout(Stdio::null()),
            )
            .id()
    };
    let v1 = start(procs);
    fs::write(origin.join("server.js"), server("v2")).unwrap();
    git(&origin, &["commit", "-q", "-am", "v2"]);
    // The deploy, as an admin types it.
    run_ok(
        sh("git pull -q && npm ci --offline --no-audit --no-fund --loglevel=error")
            .current_dir(&app)
            .env("HOME", &d)
            .env("npm_config_cache", d.join("npm-cache"))
            .env("npm_config_update_notifier", "false"),
    );
    run_ok(Command::new("kill").arg(v1.to_string()));
    start(procs);
    assert!(
        fs::read_to_string(app.join("server.js"))
            .unwrap()
            .contains("v2")
    );
}

/// `crontab -e` by root: the editor adds a line.
fn crontab_edit(dir: &Path) {
    let editor = dir.join("editor.sh");
    write_exec(
        &editor,
        &format!(
            // crontab(1) keeps a file whose mtime did not change ("No modification made").
            "#!/bin/sh\nsleep 1.1\necho '41 3 * * * /usr/bin/find /var/tmp -maxdepth 1 -name {} -delete' >> \"$1\"\n",
            tag()
        ),
    );
    run_ok(
        Command::new("crontab")
            .arg("-e")
            .env("EDITOR", &editor)
            .env("VISUAL", &editor),
    );
    assert!(run_ok(Command::new("crontab").arg("-l")).contains(&tag()));
}

#[test]
fn a_day_of_a_real_vps_raises_nothing() {
    if !require_root("a_day_of_a_real_vps_raises_nothing") {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("vd");
    // Dry-run: the agent sees the whole machine, and colleagues' tests run on it too.
    let agent = Agent::start_with(
        "",
        "[switch]\ncountdown = \"2s\"\n[alerts]\ndedup_window = \"1s\"\n",
    );
    let dir = agent.dir.path().join("day");
    fs::create_dir_all(&dir).unwrap();
    let mut undo = Undo {
        crontab: saved_crontab(),
        files: Vec::new(),
        packages: Vec::new(),
    };
    let mut procs = Procs::default();

    let mut report: Vec<(&str, Vec<Value>)> = Vec::new();
    let mut seen = 0;
    let mut step = |name: &'static str, work: &mut dyn FnMut()| {
        work();
        thread::sleep(Duration::from_secs(1)); // let the agent drain its rings
        let alerts = agent.our_alerts();
        report.push((name, alerts[seen..].to_vec()));
        seen = alerts.len();
    };
    step("go run", &mut || go_run(&dir));
    step("pip install (C extension)", &mut || pip_c_extension(&dir));
    step("apt-get install/remove", &mut || {
        apt_install_remove(&mut undo)
    });
    step("local .deb with unit and cron", &mut || {
        local_deb(&dir, &mut undo)
    });
    step("ansible-playbook", &mut || ansible(&dir, &mut undo));
    step("backup over ssh", &mut || backup_over_ssh(&dir, &net));
    step("logrotate", &mut || logrotate(&dir));
    step("certbot deploy hook", &mut || certbot_hook(&dir));
    step("node deploy", &mut || node_deploy(&dir, &mut procs));
    step("crontab -e", &mut || crontab_edit(&dir));

    for (name, alerts) in &report {
        eprintln!("VPS day: {name}: {} alerts", alerts.len());
    }
    // The day was seen (so "nothing raised" means something).
    let execs = agent.events("exec");
    for comm in [
        "go",
        "cc1", // gcc's compiler proper, whatever the driver is called (x86_64-linux-gnu-gcc)
        "apt-get",
        "ansible-playboo",
        "ssh",
        "logrotate",
        "npm",
    ] {
        assert!(
            execs.iter().any(|e| e["comm"] == comm),
            "the agent saw no {comm} exec"
        );
    }
    let raised: Vec<String> = report
        .iter()
        .flat_map(|(name, alerts)| {
            alerts.iter().map(move |a| {
                format!(
                    "{name}: {} {} {} ({})",
                    a["anomaly"], a["severity"], a["comm"], a["detail"]
                )
            })
        })
        .collect();
    assert!(
        raised.is_empty(),
        "a benign day raised:\n{}",
        raised.join("\n")
    );
}
