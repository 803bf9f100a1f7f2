//! Detectors: turn enriched events into alerts an operator can act on. Each detector is a
//! small unit with a name, a severity and a MITRE ATT&CK mapping (`lineage`, `geo`,
//! `resource`, `reverse_shell`, `blind`, `cron`, `npm`, `miner`, `respawn`, `node_abuse`,
//! `switch_flood`),
//! tested on plain data. This module holds what they share: the alert, its risk score, the
//! per-process signals and the behaviour history ([`intel`]) the score combines, and
//! de-duplication.

pub mod blind;
pub mod cron;
pub mod geo;
pub mod intel;
pub mod lineage;
pub mod miner;
pub mod node_abuse;
pub mod npm;
pub mod package_manager;
pub mod patterns;
pub mod resource;
pub mod respawn;
pub mod reverse_shell;
pub mod switch_flood;

use rustc_hash::FxHashMap;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    enrich::trust::ActionableAddr,
    event::{AlertBody, Mitre},
    untrusted::escaped,
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
    /// The agent is being impaired: T1562 Impair Defenses (Defense Evasion); T1562.001
    /// Disable or Modify Tools when a watched path refuses to be read (the only cause raised
    /// so far, see [`switch_flood`]).
    SwitchFlood { unreadable: bool },
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
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Anomaly::Lineage
            | Anomaly::Geo
            | Anomaly::ReverseShell
            | Anomaly::Cron { critical: true }
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
        }
    }
}

/// Whether `enforce.kill` terminates the offending process tree of `alert`: a shell under a
/// web server, CPU abuse, a miner that burns CPU (never a temp executable alone), a Node.js
/// server burning CPU, and a
/// `respawn` of a program the agent itself killed (its detail says so), where the kill
/// engine escalates to the origin that restarts it.
pub fn kills(alert: &AlertBody) -> bool {
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
    pub comm: String,
    /// What it executed, when known.
    pub exe: Option<String>,
    pub uid: u32,
    /// (pid, comm) of its parent, grandparent, … (parent first); the comms are the process
    /// tree's own.
    pub ancestry: Vec<(u32, Arc<str>)>,
}

/// A detector's finding, before scoring and de-duplication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub anomaly: Anomaly,
    pub culprit: Culprit,
    /// The remote address to act on. Only an address that passed the trust gate fits here.
    pub target: Option<ActionableAddr>,
    pub country: Option<String>,
    /// One line for humans: what was seen.
    pub detail: String,
    /// The process the anomaly is about, for de-duplication (a web server for `lineage`).
    pub subject: u32,
}

/// What the detectors' background threads (the cron-file watcher, the npm scanner) hand
/// to the event loop.
#[derive(Debug)]
pub enum Work {
    /// A cron file changed: judge what it gained ([`cron::judge`]).
    CronChanged(cron::Change),
    /// A finding ready to raise (an npm package; a watched path the agent cannot read).
    Found(Box<Finding>),
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
///   in its name or path;
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
        .map(|t| t.points())
        .sum::<u32>();
    score.min(100) as u8
}

/// What to do with a finding after de-duplication.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A new alert: store and stream it.
    New(AlertBody),
    /// The same anomaly again within the window: the stored alert (first raised at the
    /// given time) gets the new count.
    Repeat(AlertBody, SystemTime),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    anomaly: Anomaly,
    subject: u32,
}

/// Scores findings and folds repeats into one alert per (anomaly, process) and window. A
/// repeat never costs a decision (its target joins the alert's decision, see the pipeline) and
/// raises the alert's risk when new signals joined since.
pub struct Alerts {
    window: Duration,
    open: HashMap<Key, (Instant, SystemTime, AlertBody)>,
    pub signals: Signals,
    next_id: Box<dyn FnMut() -> String + Send>,
}

impl Alerts {
    pub fn new(window: Duration) -> Self {
        Self::with_ids(window, Box::new(random_id))
    }

    pub fn with_ids(window: Duration, next_id: Box<dyn FnMut() -> String + Send>) -> Self {
        Self {
            window,
            open: HashMap::new(),
            signals: Signals::default(),
            next_id,
        }
    }

    pub fn raise(&mut self, finding: Finding, now: Instant) -> Outcome {
        self.raise_at(finding, now, SystemTime::now())
    }

    /// [`Alerts::raise`] with the wall-clock time given.
    pub fn raise_at(&mut self, finding: Finding, now: Instant, wall: SystemTime) -> Outcome {
        self.open
            .retain(|_, (since, _, _)| now.duration_since(*since) < self.window);
        let key = Key {
            anomaly: finding.anomaly,
            subject: finding.subject,
        };
        if let Some((_, first, alert)) = self.open.get_mut(&key) {
            alert.count += 1;
            alert.risk = alert.risk.max(risk(&finding, &self.signals));
            return Outcome::Repeat(alert.clone(), *first);
        }
        let risk = risk(&finding, &self.signals);
        self.signals.mark(finding.culprit.pid, finding.anomaly);
        if let Some(exe) = &finding.culprit.exe {
            self.signals.intel.alerted(exe);
        }
        let alert = AlertBody {
            id: (self.next_id)(),
            anomaly: finding.anomaly.name().into(),
            severity: finding.anomaly.severity().as_str().into(),
            risk,
            mitre: finding.anomaly.mitre(),
            pid: finding.culprit.pid,
            // Escaped at intake already; again here so no detector can let raw text through.
            comm: escaped(finding.culprit.comm),
            exe: finding.culprit.exe.map(escaped),
            target_ip: finding.target.map(|t| t.ip()),
            country: finding.country,
            state: "none".into(),
            deadline: None,
            count: 1,
            detail: escaped(finding.detail),
        };
        self.open.insert(key, (now, wall, alert.clone()));
        Outcome::New(alert)
    }

    /// The switch moved `alert` to a new state: later repeats must carry it (and the switch's
    /// copy must carry the current count). Returns the alert as it should be stored.
    pub fn sync_state(&mut self, mut alert: AlertBody) -> AlertBody {
        if let Some((_, _, open)) = self.open.values_mut().find(|(_, _, a)| a.id == alert.id) {
            open.state = alert.state.clone();
            open.deadline = alert.deadline.clone();
            open.target_ip = alert.target_ip;
            alert.count = open.count;
        }
        alert
    }

    /// The process ended: its signals go with it.
    pub fn forget(&mut self, pid: u32) {
        self.signals.forget(pid);
    }
}

/// 8 hex digits from the kernel's random pool: short enough to type in `sentinel safe ID`.
fn random_id() -> String {
    let mut bytes = [0u8; 4];
    // SAFETY: writes at most 4 bytes into `bytes`. getrandom(2) does not fail for 4 bytes
    // once the pool is initialised (it is, after boot); on failure the time stands in.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        bytes = t.subsec_nanos().to_ne_bytes();
    }
    format!("{:08x}", u32::from_ne_bytes(bytes))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::enrich::trust::TrustSet;

    pub(crate) fn culprit(pid: u32, comm: &str, ancestry: &[(u32, &str)]) -> Culprit {
        Culprit {
            pid,
            comm: comm.into(),
            exe: Some(format!("/usr/bin/{comm}")),
            uid: 1000,
            ancestry: ancestry.iter().map(|(p, c)| (*p, Arc::from(*c))).collect(),
        }
    }

    fn finding(anomaly: Anomaly, c: Culprit, target: Option<&str>) -> Finding {
        let trust = TrustSet::default();
        Finding {
            anomaly,
            subject: c.pid,
            culprit: c,
            target: target.map(|t| trust.check(t.parse().unwrap()).unwrap()),
            country: target.map(|_| "RU".into()),
            detail: String::new(),
        }
    }

    fn ids() -> Box<dyn FnMut() -> String + Send> {
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
            f.subject = alerts.open.len() as u32 + 100;
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

    #[test]
    fn repeats_within_the_window_are_counted_not_raised() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let t0 = Instant::now();
        let c = culprit(7, "curl", &[]);
        let first = alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.9")), t0);
        assert!(matches!(first, Outcome::New(ref a) if a.id == "id1" && a.count == 1));
        for n in 2..=5 {
            let again = alerts.raise(
                finding(Anomaly::Geo, c.clone(), Some("203.0.113.9")),
                t0 + Duration::from_secs(n),
            );
            assert!(
                matches!(again, Outcome::Repeat(ref a, _) if a.id == "id1" && a.count == n as u32)
            );
        }
        // Another target of the same process folds in too (its target joins the decision).
        let other = alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.10")), t0);
        assert!(matches!(other, Outcome::Repeat(ref a, _) if a.id == "id1" && a.count == 6));
        // Another process is another alert.
        let elsewhere = alerts.raise(
            finding(Anomaly::Geo, culprit(8, "wget", &[]), Some("203.0.113.9")),
            t0,
        );
        assert!(matches!(elsewhere, Outcome::New(ref a) if a.id == "id2"));
        // After the window, a new alert.
        let later = alerts.raise(
            finding(Anomaly::Geo, c, Some("203.0.113.9")),
            t0 + Duration::from_secs(61),
        );
        assert!(matches!(later, Outcome::New(ref a) if a.id == "id3" && a.count == 1));
    }

    #[test]
    fn a_repeat_with_new_signals_raises_the_risk() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let t0 = Instant::now();
        let web = culprit(7, "sh", &[(5, "node")]);
        let first = alerts.raise(finding(Anomaly::Lineage, web.clone(), None), t0);
        let Outcome::New(a) = first else { panic!() };
        // The shell's tree connects to a high-risk country: a new signal on the tree.
        alerts.signals.mark(7, Anomaly::Geo);
        let Outcome::Repeat(b, _) = alerts.raise(finding(Anomaly::Lineage, web, None), t0) else {
            panic!()
        };
        assert!(b.risk > a.risk, "{} then {}", a.risk, b.risk);
    }

    #[test]
    fn repeats_keep_the_state_the_switch_gave() {
        let mut alerts = Alerts::with_ids(Duration::from_secs(60), ids());
        let t0 = Instant::now();
        let c = culprit(7, "curl", &[]);
        let Outcome::New(mut a) =
            alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.9")), t0)
        else {
            panic!()
        };
        let _ = alerts.raise(finding(Anomaly::Geo, c.clone(), Some("203.0.113.9")), t0);
        a.state = "pending".into();
        a.deadline = Some("2026-11-22T21:00:00Z".into());
        let stored = alerts.sync_state(a);
        assert_eq!((stored.state.as_str(), stored.count), ("pending", 2));
        let Outcome::Repeat(again, _) =
            alerts.raise(finding(Anomaly::Geo, c, Some("203.0.113.9")), t0)
        else {
            panic!()
        };
        assert_eq!((again.state.as_str(), again.count), ("pending", 3));
        assert!(again.deadline.is_some());
    }

    #[test]
    fn random_ids_look_right() {
        let a = random_id();
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_id());
    }
}
