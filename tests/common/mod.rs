//! Shared harness for the end-to-end tests: starts the real `sentinel run` on a private
//! config (its own db and socket in a temp dir), talks to it through the real CLI, and stops
//! it on drop, even when a test fails.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod container;
pub mod dns;
pub mod docker;
pub mod mmdb;
pub mod netns;
pub mod nft;
pub mod pg;
pub mod podman;
pub mod procs;
pub mod sshd;

/// The test GeoIP database: documentation ranges → countries (SPEC §8).
pub const TEST_COUNTRIES: [(&str, &str); 5] = [
    ("198.51.100.0/25", "RU"),
    ("198.51.100.128/26", "DE"),
    ("198.51.100.192/26", "CN"),
    ("2001:db8:1::/48", "KP"),
    ("2001:db8:2::/48", "FR"),
];

pub const BIN: &str = env!("CARGO_BIN_EXE_sentinel");

/// Tests that load programs share one kernel and two CPUs: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when root; otherwise says loudly that the test is skipped.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED {test}: loading eBPF programs needs root (run the tests as root) ***\n"
    );
    false
}

/// This process's comm, as the kernel and /proc see it.
pub fn own_comm() -> String {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()].to_string()
}

/// A running agent on a private config.
pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Extra environment for the agent process (e.g. a `PATH` with a failing `nft`).
    env: Vec<(String, String)>,
    /// A command the agent runs under (it ends by exec'ing the agent: same pid).
    wrapper: Vec<String>,
}

impl Agent {
    /// Start an agent; `agent_toml` is added to its `[agent]` section.
    pub fn start(agent_toml: &str) -> Agent {
        Self::start_with(agent_toml, "")
    }

    /// Start an agent with more config sections after `[agent]` and `[geo]`. It uses the test
    /// GeoIP database ([`TEST_COUNTRIES`]); unless `sections` has an `[enforce]` section, it
    /// runs in dry-run, so it never touches the host's firewall.
    pub fn start_with(agent_toml: &str, sections: &str) -> Agent {
        Self::start_with_env(agent_toml, sections, &[])
    }

    /// [`Agent::start_with`], the agent running with `env` added to its environment.
    pub fn start_with_env(agent_toml: &str, sections: &str, env: &[(&str, &str)]) -> Agent {
        let mut agent = Agent::start_with_env_unspawned(agent_toml, sections, env);
        agent.spawn();
        agent
    }

    fn start_with_env_unspawned(agent_toml: &str, sections: &str, env: &[(&str, &str)]) -> Agent {
        let sections = &without_recent_logins(sections);
        let sections = if sections.contains("[enforce]") {
            sections.to_string()
        } else {
            format!(
                "{sections}\n[enforce]\nmode = \"dry-run\"\ntable = \"snt_h{}\"\n",
                std::process::id()
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sentinel.toml");
        let geo = dir.path().join("country.mmdb");
        mmdb::write_country_db(&geo, mmdb::Layout::Flat, &TEST_COUNTRIES).unwrap();
        write_private(
            &config,
            &format!(
                "[agent]\ndb = \"{}\"\nsocket = \"{}\"\ncpu_interval = \"1s\"\n{agent_toml}\n\
                 [geo]\ndatabase = \"{}\"\n{sections}\n",
                dir.path().join("sentinel.db").display(),
                dir.path().join("sentinel.sock").display(),
                geo.display(),
            ),
        );
        Agent {
            child: None,
            dir,
            config,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: Vec::new(),
        }
    }

    /// Start an agent (default config) under `wrapper`, a command that ends by exec'ing the
    /// agent's command line it is given as arguments.
    pub fn start_wrapped(wrapper: &[&str]) -> Agent {
        Self::start_wrapped_with("", "", wrapper)
    }

    /// [`Agent::start_with`] under `wrapper` (see [`Agent::start_wrapped`]).
    pub fn start_wrapped_with(agent_toml: &str, sections: &str, wrapper: &[&str]) -> Agent {
        let mut agent = Agent::start_with_env_unspawned(agent_toml, sections, &[]);
        agent.wrapper = wrapper.iter().map(|w| w.to_string()).collect();
        agent.spawn();
        agent
    }

    /// Alerts about processes this test started. The agent watches the whole machine, where
    /// colleagues' tests run too: an alert is ours when the last exec of its process before the
    /// alert has this test binary among its ancestors (pids alone are reused within a run).
    pub fn our_alerts(&self) -> Vec<serde_json::Value> {
        let alerts = self.events("alert");
        if alerts.is_empty() {
            return alerts;
        }
        let me = own_comm();
        let execs = self.events("exec");
        let ts = |v: &serde_json::Value| v["ts"].as_str().unwrap_or_default().to_string();
        alerts
            .into_iter()
            .filter(|a| {
                execs
                    .iter()
                    .rfind(|e| e["pid"] == a["pid"] && ts(e) <= ts(a))
                    .and_then(|e| e["ancestors"].as_array())
                    .is_some_and(|up| up.iter().any(|c| c.as_str() == Some(me.as_str())))
            })
            .collect()
    }

    /// Start (again) on the same config, db and socket; waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "sentinel=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("agent not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited at start ({status}):\n{}", self.log());
            }
            if self.cli(&["status", "--json"]).status.success() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("agent not ready after 20 s:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sentinel.sock")
    }

    /// Run the CLI against this agent's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// A `--json` command's output, one object per line.
    pub fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every stored event of `kind`.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        let out = self.cli(&["tail", "--json", "--kind", kind, "-n", "1000000"]);
        if !out.status.success() {
            return Vec::new(); // the store may not exist for the first few ms
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// Poll the store until an event of `kind` satisfies `pred`.
    pub fn wait_for(&self, kind: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(ev) = self.events(kind).into_iter().find(|e| pred(e)) {
                return ev;
            }
            if Instant::now() > deadline {
                let recent: Vec<String> = self
                    .events(kind)
                    .iter()
                    .rev()
                    .take(20)
                    .map(Value::to_string)
                    .collect();
                panic!(
                    "no {kind} event {what} within 15 s. Last ones:\n{}\nagent log:\n{}",
                    recent.join("\n"),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!("agent ignored SIGTERM for 10 s ({status}):\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

/// Write `text` to a new file at `path`, mode 0600: what the agent requires of a file holding
/// secrets (configs with chat tokens, password files), as the installer does.
/// `sections` with `trust.recent_logins = "0s"` unless it sets the key: the machine's wtmp
/// holds the root logins `tests/trust.rs` made from test hosts, which would otherwise keep
/// those hosts from ever being blocked by a later test.
fn without_recent_logins(sections: &str) -> String {
    const OFF: &str = "recent_logins = \"0s\"\n";
    if sections.contains("recent_logins") {
        sections.to_string()
    } else if sections.contains("[trust]\n") {
        sections.replacen("[trust]\n", &format!("[trust]\n{OFF}"), 1)
    } else {
        format!("{sections}\n[trust]\n{OFF}")
    }
}

pub fn write_private(path: &Path, text: &str) {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Write `text` to a file in `dir`, returning its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}
