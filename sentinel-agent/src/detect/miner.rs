//! `miner`: crypto-miners. Miner markers in a program's name or argv (`xmrig`,
//! `stratum+tcp://`, `--donate-level`, …) raise a high alert at exec. An executable in `/tmp`,
//! `/var/tmp`, `/dev/shm` or memory (memfd, deleted file) only makes the process a *suspect*:
//! `go run`, installers, test binaries and build trees run from there every day, so location
//! alone is a risk term, never an alert. A suspect that connects to a stratum port
//! (`miner.ports`) raises the high alert then; any suspect (location, marker or stratum port)
//! that holds `miner.cpu_percent` for `miner.sustain` raises a critical alert — the only one
//! the kill engine acts on: legitimate programs run from memfd too (container runtimes, some
//! service managers). T1496.

use rustc_hash::FxHashMap;
use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{Anomaly, Culprit, Finding, patterns, temp_or_memory};
use crate::untrusted_file::{Links, Unreadable, read_head};

/// `[miner]`: what counts as a miner's port and CPU use.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinerConfig {
    /// Destination ports of mining pools (stratum).
    pub ports: Vec<u16>,
    /// CPU % (of one CPU) that makes a suspect a miner at work.
    pub cpu_percent: f64,
    /// How long it must hold that.
    #[serde(deserialize_with = "crate::config::duration")]
    pub sustain: Duration,
    /// Mining pools by name (see `pools.rs`): a connection to an address resolved from one
    /// is a miner signal on any port.
    pub pool_domains: Vec<String>,
}

impl Default for MinerConfig {
    fn default() -> Self {
        Self {
            ports: vec![3333, 4444, 5555, 7777, 14444, 45700],
            cpu_percent: 50.0,
            sustain: Duration::from_secs(30),
            pool_domains: super::pools::BUILT_IN
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

impl MinerConfig {
    /// Problems with the values, as (key, reason).
    pub fn problems(&self, min_sustain: Duration) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.ports.contains(&0) {
            out.push(("miner.ports", "0 is not a port".into()));
        }
        out.extend(
            self.pool_domains
                .iter()
                .filter_map(|p| super::pools::problem(p))
                .map(|why| ("miner.pool_domains", why)),
        );
        if !(1.0..=100_000.0).contains(&self.cpu_percent) {
            out.push((
                "miner.cpu_percent",
                format!("{} is not between 1 and 100000", self.cpu_percent),
            ));
        }
        if self.sustain < min_sustain || self.sustain > Duration::from_secs(86_400) {
            out.push((
                "miner.sustain",
                format!(
                    "{} is not between agent.cpu_interval ({}) and 24h",
                    humantime::format_duration(self.sustain),
                    humantime::format_duration(min_sustain)
                ),
            ));
        }
        out
    }
}

/// Why a process is suspected, and since when it burns CPU.
#[derive(Debug, Clone)]
struct Suspect {
    culprit: Culprit,
    why: Vec<String>,
    /// It runs from a temp location or memory (a risk term, not an alert on its own).
    located: bool,
    /// The high alert (marker, or location with a stratum port) was raised.
    raised: bool,
    busy_since: Option<Instant>,
    raised_cpu: bool,
}

impl Suspect {
    /// A process suspected for no reason yet: its reasons are pushed by the caller.
    fn new(culprit: Culprit) -> Self {
        Suspect {
            culprit,
            why: Vec::new(),
            located: false,
            raised: false,
            busy_since: None,
            raised_cpu: false,
        }
    }
}

/// Whether `path` is a script (`#!`): the kernel ran its interpreter, not the file itself.
/// The path is the process's choice (it may be a FIFO by now), so it is read as an
/// [`UntrustedFile`](crate::untrusted_file): a symlink is followed (scripts are often run
/// through one, `node_modules/.bin/tsc`), to a regular file only. `Err` says why it could not
/// be read; the caller takes that as "not a script".
fn is_script(path: &str) -> Result<bool, Unreadable> {
    Ok(read_head(Path::new(path), Links::Follow, 2)? == b"#!")
}

/// Why a temp or memory executable is a suspect: where it runs from, and what made its file
/// unreadable when that is a trap (a FIFO or device swapped in after the exec).
fn located_why(exe: &str) -> Option<String> {
    match is_script(exe) {
        Ok(true) => None,
        Err(e) if e.is_trap() => Some(format!("runs from {exe} ({e})")),
        Ok(false) | Err(_) => Some(format!("runs from {exe}")),
    }
}

pub struct Miner {
    config: MinerConfig,
    /// `pool_domains`, normalised for matching.
    pools: Vec<String>,
    suspects: FxHashMap<u32, Suspect>,
    /// The text an exec is searched in, kept between execs (no allocation per exec).
    text: ExecText,
}

/// What an exec's markers are searched in: its name, executable and arguments joined by
/// NULs (which no marker spans), as given and ASCII lower-cased; two buffers reused.
#[derive(Debug, Default)]
struct ExecText {
    text: String,
    lower: String,
    /// Where the arguments (joined by spaces) start in `text`.
    args_at: usize,
}

impl ExecText {
    fn fill(&mut self, culprit: &Culprit, argv: &[String]) {
        let text = &mut self.text;
        text.clear();
        text.push_str(&culprit.comm);
        text.push('\0');
        text.push_str(culprit.exe.as_deref().unwrap_or(""));
        text.push('\0');
        self.args_at = text.len();
        for (i, arg) in argv.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(arg);
        }
        self.lower.clear();
        self.lower.push_str(text);
        self.lower.make_ascii_lowercase();
    }

    /// The first marker of the name, else of the executable, else of the arguments (one
    /// search, the leftmost match).
    fn marker(&self) -> Option<&str> {
        patterns::miner_marker_in(&self.text, &self.lower)
    }

    /// The arguments joined by spaces.
    fn args(&self) -> &str {
        &self.text[self.args_at..]
    }
}

impl Miner {
    pub fn new(config: MinerConfig) -> Self {
        Self {
            pools: config
                .pool_domains
                .iter()
                .map(|p| super::pools::normalise(p))
                .collect(),
            config,
            suspects: FxHashMap::default(),
            text: ExecText::default(),
        }
    }

    /// The pool (`miner.pool_domains`) `name` belongs to, if any.
    pub fn pool_of(&self, name: &str) -> Option<&str> {
        super::pools::pool_of(&self.pools, name)
    }

    /// `culprit` exec'd with `argv`: a high alert when its name or argv carry miner markers.
    /// A temp-location or in-memory executable makes it a suspect without an alert.
    pub fn on_exec(&mut self, culprit: &Culprit, argv: &[String]) -> Option<Finding> {
        self.suspects.remove(&culprit.pid);
        let mut why = Vec::new();
        // A script run from a temp directory (an installer, a test's run-parts) is executed by
        // its interpreter: only a binary placed there is a miner's habit.
        let located = culprit
            .exe
            .as_deref()
            .filter(|e| temp_or_memory(e))
            .and_then(located_why);
        let is_located = located.is_some();
        why.extend(located);
        self.text.fill(culprit, argv);
        let marker = self.text.marker();
        if let Some(m) = marker {
            why.push(format!("miner marker {m:?}"));
        }
        if why.is_empty() {
            return None;
        }
        let finding = marker.is_some().then(|| {
            self.finding(
                culprit,
                &why,
                Anomaly::Miner { cpu: false },
                self.text.args(),
            )
        });
        self.suspects.insert(
            culprit.pid,
            Suspect {
                culprit: culprit.clone(),
                why,
                located: is_located,
                raised: finding.is_some(),
                busy_since: None,
                raised_cpu: false,
            },
        );
        finding
    }

    /// Whether `dport` is a stratum port (`miner.ports`).
    pub fn watches_port(&self, dport: u16) -> bool {
        self.config.ports.contains(&dport)
    }

    /// The process connects to `dport` at an address resolved from `domain`: a mining pool's
    /// name raises the high alert at once (any port); a stratum port makes it a suspect, and
    /// raises the high alert when it already was one by location (a temp binary talking
    /// stratum).
    pub fn on_connect(
        &mut self,
        culprit: impl FnOnce() -> Culprit,
        dport: u16,
        domain: Option<&str>,
    ) -> Option<Finding> {
        let pool = domain.and_then(|d| self.pool_of(d).map(|p| (d, p.to_string())));
        if let Some((name, pool)) = pool {
            return self.on_pool(culprit(), name, &pool, dport);
        }
        if !self.config.ports.contains(&dport) {
            return None;
        }
        let culprit = culprit();
        let why = format!("connects to stratum port {dport}");
        let s = self
            .suspects
            .entry(culprit.pid)
            .or_insert_with(|| Suspect::new(culprit));
        if !s.why.contains(&why) {
            s.why.push(why);
        }
        if !s.located || s.raised {
            return None;
        }
        s.raised = true;
        let (culprit, why) = (s.culprit.clone(), s.why.clone());
        Some(self.finding(&culprit, &why, Anomaly::Miner { cpu: false }, ""))
    }

    /// `culprit` connects to `name`, a name of mining pool `pool`: a suspect, and the high
    /// alert unless it was raised already.
    fn on_pool(&mut self, culprit: Culprit, name: &str, pool: &str, dport: u16) -> Option<Finding> {
        let why = if name == pool {
            format!("connects to mining pool {name} port {dport}")
        } else {
            format!("connects to mining pool {name} ({pool}) port {dport}")
        };
        let s = self
            .suspects
            .entry(culprit.pid)
            .or_insert_with(|| Suspect::new(culprit));
        if !s.why.contains(&why) {
            s.why.push(why);
        }
        if s.raised {
            return None;
        }
        s.raised = true;
        let (culprit, why) = (s.culprit.clone(), s.why.clone());
        Some(self.finding(&culprit, &why, Anomaly::Miner { cpu: false }, ""))
    }

    /// One CPU interval (pid, % of one CPU): a suspect holding `cpu_percent` for `sustain`
    /// raises the critical alert (once per process).
    pub fn on_cpu(&mut self, now: Instant, procs: &[(u32, f64)]) -> Vec<Finding> {
        let mut out = Vec::new();
        let (limit, sustain) = (self.config.cpu_percent, self.config.sustain);
        let mut found = Vec::new();
        for (pid, s) in self.suspects.iter_mut() {
            let pct = procs
                .iter()
                .find(|(p, _)| p == pid)
                .map_or(0.0, |(_, pct)| *pct);
            if pct < limit {
                s.busy_since = None;
                continue;
            }
            let since = *s.busy_since.get_or_insert(now);
            if !s.raised_cpu && now.duration_since(since) >= sustain {
                s.raised_cpu = true;
                let mut why = s.why.clone();
                why.push(format!(
                    "{pct:.0}% CPU for {}",
                    humantime::format_duration(Duration::from_secs(
                        now.duration_since(since).as_secs()
                    ))
                ));
                found.push((s.culprit.clone(), why));
            }
        }
        for (culprit, why) in found {
            out.push(self.finding(&culprit, &why, Anomaly::Miner { cpu: true }, ""));
        }
        out
    }

    fn finding(&self, c: &Culprit, why: &[String], anomaly: Anomaly, args: &str) -> Finding {
        let args = if args.is_empty() {
            String::new()
        } else {
            format!(": {args}")
        };
        Finding {
            domain: None,
            anomaly,
            subject: c.pid,
            detail: format!(
                "possible miner {} (pid {}): {}{args}",
                c.comm,
                c.pid,
                why.join(", ")
            ),
            culprit: c.clone(),
            target: None,
            country: None,
        }
    }

    /// The process ended.
    pub fn forget(&mut self, pid: u32) {
        self.suspects.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Severity, tests::culprit};

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    fn miner() -> Miner {
        Miner::new(MinerConfig {
            sustain: Duration::from_secs(10),
            ..Default::default()
        })
    }

    #[test]
    fn a_script_in_a_temp_directory_is_not_a_miner_by_location() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let script = dir.path().join("10-logs");
        std::fs::write(&script, "#!/bin/sh\necho rotated\n").unwrap();
        let mut m = miner();
        let mut c = culprit(7, "10-logs", &[]);
        c.exe = Some(script.display().to_string().into());
        assert!(m.on_exec(&c, &[script.display().to_string()]).is_none());
        assert!(m.on_connect(|| c.clone(), 3333, None).is_none());
        // A binary there is a suspect: with a stratum port, an alert.
        let bin = dir.path().join("kworker");
        std::fs::write(&bin, b"\x7fELF....").unwrap();
        c.exe = Some(bin.display().to_string().into());
        assert!(m.on_exec(&c, &[bin.display().to_string()]).is_none());
        assert!(m.on_connect(|| c.clone(), 3333, None).is_some());
    }

    #[test]
    fn a_fifo_swapped_in_after_the_exec_is_answered_at_once() {
        use crate::untrusted_file::testing::{answers_at_once, mkfifo};
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("a");
        mkfifo(&path);
        let exe = path.display().to_string();
        let (mut m, c) = answers_at_once(move || {
            let mut m = miner();
            let mut c = culprit(8, "a", &[]);
            c.exe = Some(exe.as_str().into());
            assert!(m.on_exec(&c, &[exe]).is_none());
            (m, c)
        });
        // Not a script, so a suspect; its alert says what the agent found there.
        let f = m.on_connect(|| c.clone(), 3333, None).unwrap();
        assert!(f.detail.contains("(unreadable: fifo)"), "{}", f.detail);
    }

    #[test]
    fn a_pool_by_name_is_a_high_alert_on_any_port_once() {
        let mut m = miner();
        let c = culprit(12, "python3", &[]);
        let f = m
            .on_connect(|| c.clone(), 443, Some("xmr.pool.supportxmr.com"))
            .unwrap();
        assert_eq!(f.anomaly, Anomaly::Miner { cpu: false });
        assert!(
            f.detail.contains(
                "connects to mining pool xmr.pool.supportxmr.com (supportxmr.com) port 443"
            ),
            "{}",
            f.detail
        );
        assert!(
            m.on_connect(|| c.clone(), 443, Some("supportxmr.com"))
                .is_none()
        );
        // Another name, or no name, on an ordinary port is nothing.
        let d = culprit(13, "curl", &[]);
        assert!(
            m.on_connect(|| d.clone(), 443, Some("www.example.test"))
                .is_none()
        );
        assert!(m.on_connect(|| d.clone(), 443, None).is_none());
        // Configured pools replace the built-in list.
        let mut own = Miner::new(MinerConfig {
            pool_domains: vec!["*.Pool.Example.TEST".into()],
            ..Default::default()
        });
        assert!(
            own.on_connect(|| d.clone(), 443, Some("eu.pool.example.test"))
                .is_some()
        );
        assert!(
            own.on_connect(|| c.clone(), 443, Some("supportxmr.com"))
                .is_none()
        );
    }

    #[test]
    fn a_temp_binary_talking_stratum_is_a_high_alert_once() {
        let mut m = miner();
        let mut c = culprit(51, "kthreadd2", &[(1, "systemd")]);
        c.exe = Some("/var/tmp/.x/kthreadd2".into());
        assert!(m.on_exec(&c, &argv("kthreadd2")).is_none());
        assert!(m.on_connect(|| c.clone(), 443, None).is_none());
        let f = m.on_connect(|| c.clone(), 14444, None).unwrap();
        assert_eq!(f.anomaly, Anomaly::Miner { cpu: false });
        assert!(
            f.detail.contains("runs from /var/tmp/.x/kthreadd2"),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("stratum port 14444"), "{}", f.detail);
        assert!(
            m.on_connect(|| c.clone(), 3333, None).is_none(),
            "once per process"
        );
        // A marker already alerted at exec: the port adds no second alert.
        let x = culprit(52, "xmrig", &[]);
        assert!(m.on_exec(&x, &argv("xmrig")).is_some());
        assert!(m.on_connect(|| x.clone(), 3333, None).is_none());
    }

    #[test]
    fn temp_executable_alone_is_no_alert_but_cpu_makes_it_critical() {
        let mut m = miner();
        let mut c = culprit(50, "kworkerds", &[(1, "systemd")]);
        c.exe = Some("/dev/shm/kworkerds".into());
        assert!(m.on_exec(&c, &argv("kworkerds")).is_none());
        let t0 = Instant::now();
        assert!(m.on_cpu(t0, &[(50, 99.0)]).is_empty());
        assert!(
            m.on_cpu(t0 + Duration::from_secs(5), &[(50, 99.0)])
                .is_empty()
        );
        let hits = m.on_cpu(t0 + Duration::from_secs(10), &[(50, 99.0)]);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].anomaly, Anomaly::Miner { cpu: true });
        assert_eq!(hits[0].anomaly.severity(), Severity::Critical);
        assert!(hits[0].detail.contains("99% CPU"), "{}", hits[0].detail);
        assert!(
            hits[0].detail.contains("runs from /dev/shm/kworkerds"),
            "{}",
            hits[0].detail
        );
        // Once per process.
        assert!(
            m.on_cpu(t0 + Duration::from_secs(20), &[(50, 99.0)])
                .is_empty()
        );
    }

    #[test]
    fn markers_in_argv_or_name() {
        let mut m = miner();
        let c = culprit(60, "sha256sum", &[]);
        let f = m
            .on_exec(
                &c,
                &argv("sha256sum -o stratum+tcp://198.51.100.2:3333 --donate-level 1"),
            )
            .unwrap();
        assert!(f.detail.contains("stratum+tcp://"), "{}", f.detail);
        assert!(m.on_exec(&culprit(61, "xmrig", &[]), &[]).is_some());
    }

    #[test]
    fn stratum_port_with_cpu_is_critical_without_other_signs() {
        let mut m = miner();
        let c = culprit(70, "worker", &[]);
        assert!(m.on_exec(&c, &argv("worker --threads 2")).is_none());
        assert!(m.on_connect(|| c.clone(), 443, None).is_none());
        assert!(m.on_connect(|| c.clone(), 3333, None).is_none());
        let t0 = Instant::now();
        m.on_cpu(t0, &[(70, 80.0)]);
        let hits = m.on_cpu(t0 + Duration::from_secs(11), &[(70, 80.0)]);
        assert_eq!(hits.len(), 1);
        assert!(
            hits[0].detail.contains("stratum port 3333"),
            "{}",
            hits[0].detail
        );
    }

    #[test]
    fn benign_programs_and_idle_suspects_raise_nothing() {
        let mut m = miner();
        // A compiler burning CPU from /usr/bin.
        let cc = culprit(80, "cc1", &[(79, "gcc")]);
        assert!(m.on_exec(&cc, &argv("cc1 -O2 big.c")).is_none());
        let t0 = Instant::now();
        for s in 0..30 {
            assert!(
                m.on_cpu(t0 + Duration::from_secs(s), &[(80, 100.0)])
                    .is_empty()
            );
        }
        // A temp executable that stays idle raises nothing at all.
        let mut idle = culprit(81, "installer", &[]);
        idle.exe = Some("/tmp/installer".into());
        assert!(m.on_exec(&idle, &[]).is_none());
        for s in 0..30 {
            assert!(
                m.on_cpu(t0 + Duration::from_secs(s), &[(81, 3.0)])
                    .is_empty()
            );
        }
    }

    #[test]
    fn memfd_and_deleted_executables_count_as_memory() {
        let mut m = miner();
        for exe in [
            "/memfd:x (deleted)",
            "/var/tmp/.a/b",
            "/opt/app/bin (deleted)",
        ] {
            let mut c = culprit(90, "x", &[]);
            c.exe = Some(exe.into());
            assert!(m.on_exec(&c, &[]).is_none(), "{exe}");
            assert!(m.on_connect(|| c.clone(), 3333, None).is_some(), "{exe}");
        }
    }

    #[test]
    fn config_problems_name_their_keys() {
        let bad = MinerConfig {
            ports: vec![0],
            cpu_percent: 0.0,
            sustain: Duration::from_millis(10),
            pool_domains: vec!["pool example".into()],
        };
        let keys: Vec<&str> = bad
            .problems(Duration::from_secs(1))
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            keys,
            [
                "miner.ports",
                "miner.pool_domains",
                "miner.cpu_percent",
                "miner.sustain"
            ]
        );
        assert!(
            MinerConfig::default()
                .problems(Duration::from_secs(2))
                .is_empty()
        );
    }
}
