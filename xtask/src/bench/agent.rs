//! The agent under measurement: started on a private config, asked for its counters over
//! the real CLI, stopped cleanly; and the temporary directory it lives in.

use super::*;

/// A running agent, stopped when dropped.
pub(super) struct Agent {
    pub(super) child: Option<Child>,
    pub(super) binary: PathBuf,
    pub(super) config: PathBuf,
    pub(super) log: PathBuf,
}

impl Agent {
    /// Start `sentinel run` with its stderr going to `DIR/agent-LABEL.log`.
    pub(super) fn start(bench: &Bench, label: &str) -> anyhow::Result<Self> {
        let log = bench.dir.join(format!("agent-{label}.log"));
        let stderr = File::create(&log).context("creating the agent log")?;
        let child = Command::new(bench.binary)
            .arg("run")
            .arg("--config")
            .arg(bench.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bench.binary.display()))?;
        Ok(Self {
            child: Some(child),
            binary: bench.binary.to_owned(),
            config: bench.config.to_owned(),
            log,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fail, with the log's tail, if the agent has exited.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!("the agent exited ({status}){}", self.log_tail());
        }
        Ok(())
    }

    /// Poll `status --json` until the agent answers.
    pub(super) fn wait_ready(&mut self) -> anyhow::Result<Status> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if let Ok(status) = self.status() {
                return Ok(status);
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "the agent did not answer `status` within {} s{}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Poll `status --json` until the sensors' counts grew by at least `execs` and `connects`
    /// since `before` (the ring buffers may still hold records right after a storm), or until
    /// the drain timeout; returns the last status.
    pub(super) fn wait_drained(
        &mut self,
        before: &Status,
        execs: u64,
        connects: u64,
    ) -> anyhow::Result<Status> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            let now = self.status()?;
            // Seen by the sensors, and written by the store (its batches wait up to a quarter
            // of a second): the storm's cost includes the writing.
            let stored = match (before.stored, now.stored) {
                (Some(before), Some(now)) => now >= before + execs + connects,
                _ => true,
            };
            let seen = now.exec.seen >= before.exec.seen + execs
                && now.connect.seen >= before.connect.seen + connects;
            if (seen && stored) || start.elapsed() > DRAIN_TIMEOUT {
                return Ok(now);
            }
            // Each poll is a `sentinel status` run, an exec and a request the agent handles
            // (about 80 µs of its CPU): once the sensors have everything, poll no more often
            // than the store commits.
            thread::sleep(if seen { STORE_POLL } else { SEEN_POLL });
        }
    }

    /// Poll `status --json` until the `dns` sensor saw `answers` more answers than in
    /// `before`, or until the drain timeout.
    pub(super) fn wait_dns(&mut self, before: &Status, answers: u64) -> anyhow::Result<()> {
        let start = Instant::now();
        let seen = |s: &Status| s.dns.as_ref().map_or(0, |c| c.seen);
        loop {
            self.check_alive()?;
            let now = self.status()?;
            if seen(&now) >= seen(before) + answers || start.elapsed() > DRAIN_TIMEOUT {
                return Ok(());
            }
            thread::sleep(SEEN_POLL);
        }
    }

    /// The agent's `status --json`, reduced to what the bench needs.
    pub(super) fn status(&self) -> anyhow::Result<Status> {
        let json = self.status_json()?;
        Status::parse(&json).with_context(|| format!("unexpected `status --json` output: {json}"))
    }

    /// The agent's `status --json`, whole.
    pub(super) fn status_json(&self) -> anyhow::Result<String> {
        let out = Command::new(&self.binary)
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .context("running `sentinel status`")?;
        ensure!(
            out.status.success(),
            "`sentinel status` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The agent's CPU time so far (utime + stime), in clock ticks.
    pub(super) fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .context("reading the agent's /proc stat")?;
        stat_cpu_ticks(&stat).context("unparsable /proc/PID/stat")
    }

    /// SIGTERM, wait for the exit, SIGKILL after the timeout. Fails if it did not exit cleanly.
    pub(super) fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Best effort: if `kill` cannot run, the timeout below escalates to SIGKILL.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(
                    status.success(),
                    "the agent exited with {status} after SIGTERM{}",
                    self.log_tail()
                );
                return Ok(());
            }
            if start.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the agent did not stop within {} s of SIGTERM and was killed{}",
                    STOP_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the agent's log, ready to append to an error message.
    pub(super) fn log_tail(&self) -> String {
        let lines: Vec<String> = match File::open(&self.log) {
            Ok(f) => BufReader::new(f).lines().map_while(Result::ok).collect(),
            Err(e) => return format!("\n(agent log {} unreadable: {e})", self.log.display()),
        };
        let tail = &lines[lines.len().saturating_sub(20)..];
        format!(
            "\n--- last lines of {} ---\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("while stopping the agent: {e:#}");
        }
    }
}

/// A fresh directory under /tmp, removed with everything in it when dropped.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn create() -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("sentinel-bench-{}-{nanos:09}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// One sensor's counters from `status --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) seen: u64,
    pub(super) lost: u64,
}

/// The part of `status --json` the bench uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Status {
    pub(super) exec: Counts,
    pub(super) connect: Counts,
    /// The `dns` sensor's; `None` from an agent without it.
    pub(super) dns: Option<Counts>,
    /// Events the store committed or dropped (`store.written + store.dropped`); `None` from
    /// an agent too old to say.
    pub(super) stored: Option<u64>,
}

impl Status {
    pub(super) fn parse(json: &str) -> Option<Self> {
        Some(Self {
            exec: sensor_counts(json, "exec")?,
            connect: sensor_counts(json, "connect")?,
            dns: sensor_counts(json, "dns"),
            stored: store_counts(json),
        })
    }
}

/// `written + dropped` of `{"store":{"written":N,"dropped":N,…},…}`.
fn store_counts(json: &str) -> Option<u64> {
    let store = &json[json.find("\"store\"")?..];
    let object = &store[..store.find('}')?];
    Some(json_u64(object, "written")? + json_u64(object, "dropped")?)
}

/// `seen` and `lost` of one sensor in `{"sensors":{"NAME":{"seen":N,"lost":N,…},…},…}`.
/// A deliberately small reader for this one known shape (xtask has no JSON crate).
pub(super) fn sensor_counts(json: &str, sensor: &str) -> Option<Counts> {
    let sensors = &json[json.find("\"sensors\"")?..];
    let key = format!("\"{sensor}\"");
    let mut rest = sensors;
    // The sensor's key is the one followed by `:` and an object.
    let object = loop {
        let at = rest.find(&key)?;
        rest = &rest[at + key.len()..];
        let object = rest
            .trim_start()
            .strip_prefix(':')
            .and_then(|after| after.trim_start().strip_prefix('{'));
        if let Some(body) = object {
            break &body[..body.find('}')?];
        }
    };
    Some(Counts {
        seen: json_u64(object, "seen")?,
        lost: json_u64(object, "lost")?,
    })
}

/// The unsigned integer value of `"key"` in a flat JSON object body.
pub(super) fn json_u64(object: &str, key: &str) -> Option<u64> {
    let key = format!("\"{key}\"");
    let rest = &object[object.find(&key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
