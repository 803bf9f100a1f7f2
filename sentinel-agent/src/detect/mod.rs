//! Detectors: turn enriched events into alerts an operator can act on. Each detector is a
//! small unit with a name, a severity and a MITRE ATT&CK mapping (`lineage`, `geo`,
//! `resource`, `reverse_shell`, `blind`, `cron`, `npm`, `miner`, `respawn`, `node_abuse`,
//! `switch_flood`, `persistence`),
//! tested on plain data. This module holds what they share: the alert, its risk score, the
//! per-process signals and the behaviour history ([`intel`]) the score combines, the alerts
//! themselves with their de-duplication ([`alerts`]) and the per-origin budget ([`budget`]).

pub mod alerts;
pub mod blind;
pub mod budget;
pub mod cron;
pub mod geo;
pub mod intel;
pub mod lineage;
pub mod miner;
pub mod node_abuse;
pub mod npm;
pub mod package_manager;
pub mod patterns;
pub mod persistence;
pub mod pools;
pub mod resource;
pub mod respawn;
pub mod reverse_shell;
pub mod switch_flood;

pub use alerts::{Alerts, Outcome};

use rustc_hash::FxHashMap;
use std::sync::Arc;

use crate::{
    enrich::trust::ActionableAddr,
    event::{AlertBody, Mitre},
};

/// How bad an anomaly is on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The anomalies Sentinel knows, with their fixed severity and MITRE mapping (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// A shell below a web server: T1059 Command and Scripting Interpreter (Execution).
    Lineage,
    /// A connection to a high-risk country: T1071.001 Web Protocols (Command and Control).
    Geo,
    /// CPU abuse: T1496 Resource Hijacking (Impact).
    Resource,
    /// Standard input/output on a TCP socket to an untrusted peer: T1059 (Execution).
    ReverseShell,
    /// A sensor lost events: T1562 Impair Defenses (Defense Evasion).
    Blind,
    /// A cron file gained a suspicious line: T1053.003 (Persistence); critical when the line
    /// also carries a miner or reverse-shell pattern.
    Cron { critical: bool },
    /// A suspicious installed Node.js package: T1195.002 (Initial Access).
    Npm,
    /// A miner: temp/memory executable, miner markers, stratum ports; critical (and only
    /// then killable) once it also burns CPU. T1496 (Impact).
    Miner { cpu: bool },
    /// A killed program came back, or one spawns far too often: T1053 when cron restarts
    /// it, T1543 otherwise (Persistence).
    Respawn { cron: bool },
    /// A listening Node.js server burning CPU (T1496), or dynamic code execution markers
    /// (T1059.007).
    NodeAbuse { dynamic_code: bool },
    /// The agent is being impaired: T1562 Impair Defenses (Defense Evasion) when an origin's
    /// alerts fold past its budget ([`budget`]); T1562.001 Disable or Modify Tools when a
    /// watched path refuses to be read ([`switch_flood`]).
    SwitchFlood { unreadable: bool },
    /// A persistence location written ([`persistence`]): critical when the writer descends
    /// from a web server or runs as a service user; the technique is the location's.
    Persistence {
        critical: bool,
        location: persistence::Location,
    },
}

impl Anomaly {
    pub fn name(self) -> &'static str {
        match self {
            Anomaly::Lineage => "lineage",
            Anomaly::Geo => "geo",
            Anomaly::Resource => "resource",
            Anomaly::ReverseShell => "reverse_shell",
            Anomaly::Blind => "blind",
            Anomaly::Cron { .. } => "cron",
            Anomaly::Npm => "npm",
            Anomaly::Miner { .. } => "miner",
            Anomaly::Respawn { .. } => "respawn",
            Anomaly::NodeAbuse { .. } => "node_abuse",
            Anomaly::SwitchFlood { .. } => "switch_flood",
            Anomaly::Persistence { .. } => "persistence",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Anomaly::Lineage
            | Anomaly::Geo
            | Anomaly::ReverseShell
            | Anomaly::Cron { critical: true }
            | Anomaly::Persistence { critical: true, .. }
            | Anomaly::Miner { cpu: true } => Severity::Critical,
            _ => Severity::High,
        }
    }

    pub fn mitre(self) -> Mitre {
        let (technique, tactic, name) = match self {
            Anomaly::Lineage | Anomaly::ReverseShell => {
                ("T1059", "Execution", "Command and Scripting Interpreter")
            }
            Anomaly::Geo => ("T1071.001", "Command and Control", "Web Protocols"),
            Anomaly::Resource
            | Anomaly::Miner { .. }
            | Anomaly::NodeAbuse {
                dynamic_code: false,
            } => ("T1496", "Impact", "Resource Hijacking"),
            Anomaly::Cron { .. } => ("T1053.003", "Persistence", "Scheduled Task/Job: Cron"),
            Anomaly::Npm => (
                "T1195.002",
                "Initial Access",
                "Supply Chain Compromise: Compromise Software Supply Chain",
            ),
            Anomaly::Respawn { cron: true } => ("T1053", "Persistence", "Scheduled Task/Job"),
            Anomaly::Respawn { cron: false } => {
                ("T1543", "Persistence", "Create or Modify System Process")
            }
            Anomaly::NodeAbuse { dynamic_code: true } => (
                "T1059.007",
                "Execution",
                "Command and Scripting Interpreter: JavaScript",
            ),
            Anomaly::Blind | Anomaly::SwitchFlood { unreadable: false } => {
                ("T1562", "Defense Evasion", "Impair Defenses")
            }
            Anomaly::SwitchFlood { unreadable: true } => (
                "T1562.001",
                "Defense Evasion",
                "Impair Defenses: Disable or Modify Tools",
            ),
            Anomaly::Persistence { location, .. } => location.mitre(),
        };
        Mitre {
            technique: technique.into(),
            tactic: tactic.into(),
            name: name.into(),
        }
    }

    fn bit(self) -> u16 {
        match self {
            Anomaly::Lineage => 1,
            Anomaly::Geo => 2,
            Anomaly::Resource => 4,
            Anomaly::ReverseShell => 8,
            Anomaly::Blind => 16,
            Anomaly::Cron { .. } => 32,
            Anomaly::Npm => 64,
            Anomaly::Miner { .. } => 128,
            Anomaly::Respawn { .. } => 256,
            Anomaly::NodeAbuse { .. } => 512,
            Anomaly::SwitchFlood { .. } => 1024,
            Anomaly::Persistence { .. } => 2048,
        }
    }
}

/// Whether `enforce.kill` terminates the offending process tree of `alert`: a shell under a
/// web server, CPU abuse, a miner that burns CPU (never a temp executable alone), a Node.js
/// server burning CPU, and a
/// `respawn` of a program the agent itself killed (its detail says so), where the kill
/// engine escalates to the origin that restarts it. An alert that names no process (pid 0:
/// `blind`, a host-wide `resource` alert) never does.
pub fn kills(alert: &AlertBody) -> bool {
    if alert.pid == 0 {
        return false;
    }
    match alert.anomaly.as_str() {
        "lineage" | "resource" | "reverse_shell" => true,
        "miner" => alert.severity == "critical",
        "node_abuse" => alert.mitre.technique == "T1496",
        "respawn" => alert.detail.contains(respawn::AFTER_AGENT_KILL),
        _ => false,
    }
}

/// The offending process, as the detectors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Culprit {
    pub pid: u32,
    /// Its start time in clock ticks (as in the process tree and `/proc/PID/stat`), as known
    /// when the event that raised the finding was handled: with `pid`, the process's identity
    /// (a pid is reused, a start time is not). 0: no process, or it is gone.
    pub start: u64,
    pub comm: String,
    /// What it executed, when known (shared with the process tree: no copy per exec).
    pub exe: Option<Arc<str>>,
    pub uid: u32,
    /// (pid, comm) of its parent, grandparent, … (parent first); the comms are the process
    /// tree's own.
    pub ancestry: Vec<(u32, Arc<str>)>,
    /// The container it runs in (`enrich::container`), `None` on the host.
    pub container: Option<Arc<crate::enrich::container::Container>>,
}

/// A detector's finding, before scoring and de-duplication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub anomaly: Anomaly,
    pub culprit: Culprit,
    /// The remote address to act on. Only an address that passed the trust gate fits here.
    pub target: Option<ActionableAddr>,
    pub country: Option<String>,
    /// The name the target was resolved from (by the culprit, else by the host), when the
    /// `dns` sensor saw it; set by the pipeline, not the detectors.
    pub domain: Option<String>,
    /// One line for humans: what was seen.
    pub detail: String,
    /// The process the anomaly is about, for de-duplication (a web server for `lineage`).
    pub subject: u32,
}

/// What the detectors' background threads (the cron-file and persistence watchers, the npm
/// scanner) hand to the event loop.
#[derive(Debug)]
pub enum Work {
    /// A cron file changed: judge what it gained ([`cron::judge`]).
    CronChanged(cron::Change),
    /// A finding ready to raise (an npm package; a watched path the agent cannot read).
    Found(Box<Finding>),
    /// A persistence location was written: attribute it ([`persistence`]).
    Persisted(persistence::Write),
}

/// What each process (by pid) has been flagged for: the signals a risk score combines.
#[derive(Debug, Default)]
pub struct Signals {
    flags: FxHashMap<u32, u16>,
    /// What the agent remembers about executables (across restarts).
    pub intel: intel::Intel,
}

impl Signals {
    pub fn mark(&mut self, pid: u32, anomaly: Anomaly) {
        *self.flags.entry(pid).or_default() |= anomaly.bit();
    }

    /// Anomalies flagged on `culprit` or any of its ancestors.
    fn around(&self, culprit: &Culprit) -> u16 {
        std::iter::once(culprit.pid)
            .chain(culprit.ancestry.iter().map(|(pid, _)| *pid))
            .filter_map(|pid| self.flags.get(&pid))
            .fold(0, |acc, f| acc | f)
    }

    pub fn forget(&mut self, pid: u32) {
        self.flags.remove(&pid);
    }
}

/// Where miners and droppers like to run from.
pub const TEMP_DIRS: [&str; 3] = ["/tmp/", "/var/tmp/", "/dev/shm/"];

/// Whether `exe` lives in a temporary directory or in memory (`memfd:`, or a file deleted
/// after it was started).
pub fn temp_or_memory(exe: &str) -> bool {
    TEMP_DIRS.iter().any(|d| exe.starts_with(d))
        || exe.starts_with("/memfd:")
        || exe.starts_with("memfd:")
        || exe.ends_with(" (deleted)")
}

/// The last component of a path (all of it without a `/`). A byte search: `rsplit('/')`
/// cost ~180 instructions a call in callgrind of an exec storm, called for argv and
/// filenames on every exec.
pub fn base_name(path: &str) -> &str {
    match path.bytes().rposition(|b| b == b'/') {
        Some(slash) => &path[slash + 1..],
        None => path,
    }
}

/// Risk score 0–100 of `finding`, given what else was seen around the same process.
///
/// - the anomaly's severity sets the base: critical 70, high 50;
/// - +15 for every *other* anomaly already flagged on the process or one of its ancestors
///   (a shell under a web server that then connects to a high-risk country: 70 + 15 = 85,
///   more than either alone);
/// - +10 when the process runs from a temporary directory (`/tmp`, `/var/tmp`, `/dev/shm`)
///   or from memory (`memfd:`), where droppers and miners live;
/// - +5 when it runs as root: whatever it does, it can do anywhere;
/// - the behaviour history of its executable ([`intel::Intel::terms`]): +10 seen before in
///   an alert, +10 respawned after being killed, +5 a high spawn count, +10 a miner keyword
///   in its name or path; and of the name its target was resolved from: +10 when an earlier
///   alert's target had that name;
/// - capped at 100.
pub fn risk(finding: &Finding, signals: &Signals) -> u8 {
    let base: u32 = match finding.anomaly.severity() {
        Severity::Critical => 70,
        Severity::High => 50,
    };
    let others = signals.around(&finding.culprit) & !finding.anomaly.bit();
    let mut score = base + 15 * others.count_ones();
    if let Some(exe) = &finding.culprit.exe
        && temp_or_memory(exe)
    {
        score += 10;
    }
    if finding.culprit.uid == 0 {
        score += 5;
    }
    score += signals
        .intel
        .terms(&finding.culprit)
        .iter()
        .chain(&signals.intel.name_terms(finding.domain.as_deref()))
        .map(|t| t.points())
        .sum::<u32>();
    score.min(100) as u8
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::enrich::trust::TrustSet;
    use std::time::{Duration, Instant};

    pub(crate) fn culprit(pid: u32, comm: &str, ancestry: &[(u32, &str)]) -> Culprit {
        Culprit {
            pid,
            start: 1000,
            comm: comm.into(),
            exe: Some(format!("/usr/bin/{comm}").into()),
            uid: 1000,
            ancestry: ancestry.iter().map(|(p, c)| (*p, Arc::from(*c))).collect(),
            container: None,
        }
    }

    #[test]
    fn a_base_name_is_what_follows_the_last_slash() {
        assert_eq!(base_name("/usr/bin/npm"), "npm");
        assert_eq!(base_name("npm"), "npm");
        assert_eq!(base_name("/usr/lib/node_modules/"), "");
        assert_eq!(base_name("/"), "");
        assert_eq!(base_name(""), "");
        assert_eq!(base_name("./é/ü"), "ü");
    }

    pub(crate) fn finding(anomaly: Anomaly, c: Culprit, target: Option<&str>) -> Finding {
        let trust = TrustSet::default();
        Finding {
            domain: None,
            anomaly,
            subject: c.pid,
            culprit: c,
            target: target.map(|t| trust.check(t.parse().unwrap()).unwrap()),
            country: target.map(|_| "RU".into()),
            detail: String::new(),
        }
    }

    pub(crate) fn ids() -> Box<dyn FnMut() -> String + Send> {
        let mut n = 0;
        Box::new(move || {
            n += 1;
            format!("id{n}")
        })
    }

    #[test]
    fn mitre_and_severity_follow_the_spec() {
        assert_eq!(Anomaly::Lineage.mitre().technique, "T1059");
        assert_eq!(Anomaly::Lineage.mitre().tactic, "Execution");
        assert_eq!(Anomaly::Geo.mitre().technique, "T1071.001");
        assert_eq!(Anomaly::Geo.mitre().tactic, "Command and Control");
        assert_eq!(Anomaly::Resource.mitre().technique, "T1496");
        assert_eq!(Anomaly::Resource.mitre().tactic, "Impact");
        assert_eq!(Anomaly::Lineage.severity(), Severity::Critical);
        assert_eq!(Anomaly::Geo.severity(), Severity::Critical);
        assert_eq!(Anomaly::Resource.severity(), Severity::High);
        assert_eq!(Anomaly::ReverseShell.severity(), Severity::Critical);
        assert_eq!(Anomaly::ReverseShell.mitre().technique, "T1059");
        assert_eq!(Anomaly::ReverseShell.name(), "reverse_shell");
        assert_eq!(Anomaly::Blind.severity(), Severity::High);
        assert_eq!(Anomaly::Blind.mitre().technique, "T1562");
        assert_eq!(Anomaly::Blind.mitre().tactic, "Defense Evasion");
        assert_eq!(Anomaly::Blind.mitre().name, "Impair Defenses");
    }

    #[test]
    fn combined_signals_score_higher_than_either_alone() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(600), ids());
        let now = Instant::now();
        let shell = culprit(200, "sh", &[(100, "node"), (1, "systemd")]);
        let Outcome::New(lineage) =
            alerts.raise(finding(Anomaly::Lineage, shell.clone(), None), now)
        else {
            panic!()
        };
        // The shell's child connects to a high-risk country.
        let curl = culprit(300, "curl", &[(200, "sh"), (100, "node"), (1, "systemd")]);
        let Outcome::New(geo) = alerts.raise(finding(Anomaly::Geo, curl, Some("203.0.113.9")), now)
        else {
            panic!()
        };
        // The same connection from an unrelated process.
        // (Another program: the same one would score "seen before in an alert".)
        let other = culprit(400, "wget", &[(1, "systemd")]);
        let Outcome::New(plain) =
            alerts.raise(finding(Anomaly::Geo, other, Some("203.0.113.9")), now)
        else {
            panic!()
        };
        assert_eq!(lineage.risk, 70);
        assert_eq!(plain.risk, 70);
        assert_eq!(geo.risk, 85);
        assert!(geo.risk > lineage.risk && geo.risk > plain.risk);
    }

    #[test]
    fn context_raises_risk_and_it_is_capped() {
        let signals = Signals::default();
        let mut c = culprit(5, "kthreadd2", &[]);
        c.exe = Some("/dev/shm/kthreadd2".into());
        c.uid = 0;
        assert_eq!(
            risk(&finding(Anomaly::Resource, c.clone(), None), &signals),
            65
        );
        let mut signals = Signals::default();
        signals.mark(5, Anomaly::Lineage);
        signals.mark(5, Anomaly::Geo);
        assert_eq!(risk(&finding(Anomaly::Resource, c, None), &signals), 95);
        let mut c = culprit(6, "x", &[]);
        c.exe = Some("/tmp/x".into());
        c.uid = 0;
        signals.mark(6, Anomaly::Resource);
        signals.mark(6, Anomaly::Geo);
        assert_eq!(risk(&finding(Anomaly::Lineage, c, None), &signals), 100);
    }

    #[test]
    fn behaviour_history_terms_add_to_the_score() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let now = Instant::now();
        let mut c = culprit(10, "xmrig", &[]);
        c.exe = Some("/opt/x/xmrig".into());
        // Miner keyword in the name: 50 + 10.
        let Outcome::New(first) =
            alerts.raise(finding(Anomaly::Miner { cpu: false }, c.clone(), None), now)
        else {
            panic!()
        };
        assert_eq!(first.risk, 60);
        // The same program again, another process: seen before in an alert, +10.
        let mut again = c.clone();
        again.pid = 11;
        alerts.signals.intel.respawned("/opt/x/xmrig");
        let Outcome::New(second) =
            alerts.raise(finding(Anomaly::Miner { cpu: false }, again, None), now)
        else {
            panic!()
        };
        // +10 keyword, +10 seen before, +10 respawned.
        assert_eq!(second.risk, 80);
    }

    #[test]
    fn a_target_named_like_an_earlier_alerts_adds_to_the_score() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let now = Instant::now();
        let named = |pid: u32, target: &str| {
            let mut f = finding(Anomaly::Geo, culprit(pid, "curl", &[]), Some(target));
            f.domain = Some("c2.example".into());
            f
        };
        let Outcome::New(first) = alerts.raise(named(20, "198.51.100.2"), now) else {
            panic!()
        };
        // Another program, another address, the same name: +10.
        let mut second = named(21, "198.51.100.3");
        second.culprit.exe = Some("/usr/bin/wget".into());
        second.culprit.comm = "wget".into();
        let Outcome::New(second) = alerts.raise(second, now) else {
            panic!()
        };
        assert_eq!(second.risk, first.risk + 10, "{first:?} {second:?}");
        assert_eq!(alerts.signals.intel.name("c2.example").unwrap().alerts, 2);
    }

    #[test]
    fn new_anomalies_have_their_severity_mitre_and_kill_policy() {
        use Anomaly::*;
        let cases = [
            (
                Cron { critical: false },
                "cron",
                Severity::High,
                "T1053.003",
            ),
            (
                Cron { critical: true },
                "cron",
                Severity::Critical,
                "T1053.003",
            ),
            (Npm, "npm", Severity::High, "T1195.002"),
            (Miner { cpu: false }, "miner", Severity::High, "T1496"),
            (Miner { cpu: true }, "miner", Severity::Critical, "T1496"),
            (Respawn { cron: true }, "respawn", Severity::High, "T1053"),
            (Respawn { cron: false }, "respawn", Severity::High, "T1543"),
            (
                NodeAbuse {
                    dynamic_code: false,
                },
                "node_abuse",
                Severity::High,
                "T1496",
            ),
            (
                NodeAbuse { dynamic_code: true },
                "node_abuse",
                Severity::High,
                "T1059.007",
            ),
            (
                SwitchFlood { unreadable: true },
                "switch_flood",
                Severity::High,
                "T1562.001",
            ),
            (
                SwitchFlood { unreadable: false },
                "switch_flood",
                Severity::High,
                "T1562",
            ),
        ];
        for (a, name, severity, technique) in cases {
            assert_eq!(
                (a.name(), a.severity(), a.mitre().technique.as_str()),
                (name, severity, technique)
            );
        }
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let mut kill = |a: Anomaly, detail: &str| {
            let mut f = finding(a, culprit(1, "x", &[]), None);
            f.detail = detail.into();
            f.subject = alerts.open_len() as u32 + 100;
            let Outcome::New(alert) = alerts.raise(f, Instant::now()) else {
                panic!()
            };
            kills(&alert)
        };
        assert!(!kill(Miner { cpu: false }, "temp executable alone"));
        assert!(kill(Miner { cpu: true }, "with CPU"));
        assert!(kill(
            NodeAbuse {
                dynamic_code: false
            },
            "cpu"
        ));
        assert!(!kill(NodeAbuse { dynamic_code: true }, "eval"));
        assert!(!kill(Cron { critical: true }, "x"));
        assert!(!kill(Npm, "x"));
        assert!(!kill(SwitchFlood { unreadable: true }, "cannot read"));
        assert!(!kill(
            Respawn { cron: false },
            "came back after it was killed by signal 9"
        ));
        assert!(kill(Respawn { cron: false }, respawn::AFTER_AGENT_KILL));
    }
}
