//! The events the agent stores, streams and prints: the JSON contract of SPEC §5.
//!
//! Kernel records are decoded in `sensors`; what leaves the agent is a [`Record`]: a
//! timestamp, the host, and one [`Body`] per kind, serialised with the exact field names
//! operators' tooling relies on.

use std::{
    fmt,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{enrich::container::Container, untrusted::escape};

/// An event's timestamp as text, kept inside the record (`2026-12-07T05:41:44.123Z` is 24
/// bytes, CompactString's inline room on 64-bit): a heap string for each was one allocation
/// per exec and per connect. The text is whatever the record was made or read with, so a
/// longer one goes to the heap rather than being cut.
pub type Ts = compact_str::CompactString;

/// One event as stored, streamed and printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC, millisecond precision.
    pub ts: Ts,
    /// One allocation for the agent's life, shared by every record it makes.
    pub host: Arc<str>,
    #[serde(flatten)]
    pub body: Body,
}

/// What happened; the `kind` field of the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Exec(ExecBody),
    Connect(ConnectBody),
    Cpu(CpuBody),
    Alert(Box<AlertBody>),
    Decision(Box<DecisionBody>),
}

/// A dead man's switch transition: a decision opened (`pending`) or ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionBody {
    /// The decision's id (the alert's).
    pub id: String,
    pub anomaly: String,
    /// `pending`, `safe`, `blocked`, `auto-blocked` or `block-failed`.
    pub state: String,
    pub pid: u32,
    pub comm: String,
    /// The first target (`targets[0]`).
    pub target_ip: Option<IpAddr>,
    /// Every destination the decision blocks together.
    #[serde(default)]
    pub targets: Vec<IpAddr>,
    /// Targets the enforcement gate refused to block (infrastructure, trusted, …).
    #[serde(default)]
    pub refused: Vec<IpAddr>,
    pub country: Option<String>,
    /// The name `target_ip` was resolved from, when known (see `AlertBody::domain`).
    #[serde(default)]
    pub domain: Option<String>,
    /// RFC 3339: when silence becomes a block.
    pub deadline: String,
    /// Who ended it: `cli`, `slack:<user>`, `teams-link`, `telegram:<user>` or `timer`.
    pub decided_by: Option<String>,
    /// Why, when the outcome needs explaining (dry-run, a refused block, …).
    pub reason: Option<String>,
    /// Who the decision is charged to (`uid 33`, or root's tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Why the timer will not block it: it waits for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The container the process runs in (`enrich::container`); absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecBody {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// Shared with the process tree.
    pub filename: Arc<str>,
    pub argv: Vec<String>,
    /// Comms of the parent, grandparent, … (parent first): shared with the process tree's
    /// entries, not copied for every exec.
    pub ancestors: Vec<Arc<str>>,
    /// The container the process runs in (`enrich::container`); null on the host.
    #[serde(default)]
    pub container: Option<Arc<Container>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectBody {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    /// 4 or 6.
    pub family: u8,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    /// ISO country code of `daddr`, when GeoIP knows it.
    pub country: Option<String>,
    /// The container the process runs in (`enrich::container`); null on the host.
    #[serde(default)]
    pub container: Option<Arc<Container>>,
    /// The name the process (or, failing that, the host) most recently resolved to `daddr`,
    /// from the DNS answers the `dns` sensor saw; escaped (`\xNN` outside `[a-z0-9-_*]`).
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuBody {
    pub pid: u32,
    pub comm: String,
    /// Share of one CPU over the last interval (can exceed 100 for multi-threaded processes).
    pub cpu_pct: f64,
    /// The container the process runs in (`enrich::container`); absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Arc<Container>>,
}

/// A detector's verdict (SPEC §5 `alert`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertBody {
    /// Short id, used to answer the alert (`sentinel safe ID`).
    pub id: String,
    /// `lineage`, `geo` or `resource`.
    pub anomaly: String,
    /// `critical` or `high`.
    pub severity: String,
    /// 0–100: severity combined with the other signals seen (see `detect::risk`).
    pub risk: u8,
    pub mitre: Mitre,
    pub pid: u32,
    pub comm: String,
    /// What the process executed, when known.
    pub exe: Option<String>,
    /// The remote address to act on, never a trusted one: the first of `targets`.
    pub target_ip: Option<IpAddr>,
    /// Every destination the alert gathered (its repeats' and its tree's), first seen first,
    /// at most [`AlertBody::MAX_TARGETS`]; each of its decisions holds some of them.
    #[serde(default)]
    pub targets: Vec<IpAddr>,
    pub country: Option<String>,
    /// The name `target_ip` was resolved from (by the process, else by the host), when the
    /// `dns` sensor saw it; escaped like [`ConnectBody::domain`].
    #[serde(default)]
    pub domain: Option<String>,
    /// `none` (no decision pending), `pending`, `safe`, `blocked` or `auto-blocked`.
    pub state: String,
    /// When a pending decision blocks by itself (RFC 3339), if one is pending.
    pub deadline: Option<String>,
    /// How many times this anomaly was seen within the de-duplication window.
    pub count: u32,
    /// One line for humans: what was seen.
    pub detail: String,
    /// The container the process runs in (`enrich::container`); absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

impl AlertBody {
    /// Targets one alert keeps at most (a decision has its own cap).
    pub const MAX_TARGETS: usize = 256;

    /// `ip` joins the alert's targets (the first becomes its `target_ip`). Whether it was new.
    pub fn gather(&mut self, ip: IpAddr) -> bool {
        if self.target_ip.is_none() {
            self.target_ip = Some(ip);
        }
        // Rows written before `targets` existed have only `target_ip`.
        if self.targets.is_empty()
            && let Some(first) = self.target_ip
            && first != ip
        {
            self.targets.push(first);
        }
        if self.targets.contains(&ip) || self.targets.len() >= Self::MAX_TARGETS {
            return false;
        }
        self.targets.push(ip);
        true
    }

    /// Everything `other` (another copy of this alert) gathered joins this one.
    pub fn gather_from(&mut self, other: &AlertBody) {
        for ip in other.target_ip.iter().chain(&other.targets) {
            self.gather(*ip);
        }
    }
}

/// A MITRE ATT&CK technique and its tactic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mitre {
    pub technique: String,
    pub tactic: String,
    pub name: String,
}

/// The kinds `tail --kind` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Exec,
    Connect,
    Cpu,
    Alert,
    Decision,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Connect => "connect",
            Kind::Cpu => "cpu",
            Kind::Alert => "alert",
            Kind::Decision => "decision",
        }
    }
}

impl Body {
    pub fn kind(&self) -> Kind {
        match self {
            Body::Exec(_) => Kind::Exec,
            Body::Connect(_) => Kind::Connect,
            Body::Cpu(_) => Kind::Cpu,
            Body::Alert(_) => Kind::Alert,
            Body::Decision(_) => Kind::Decision,
        }
    }

    /// The container the event's process runs in; `None` on the host.
    pub fn container(&self) -> Option<&Container> {
        match self {
            Body::Exec(b) => b.container.as_deref(),
            Body::Connect(b) => b.container.as_deref(),
            Body::Cpu(b) => b.container.as_deref(),
            Body::Alert(b) => b.container.as_ref(),
            Body::Decision(b) => b.container.as_ref(),
        }
    }

    pub fn pid(&self) -> u32 {
        match self {
            Body::Exec(b) => b.pid,
            Body::Connect(b) => b.pid,
            Body::Cpu(b) => b.pid,
            Body::Alert(b) => b.pid,
            Body::Decision(b) => b.pid,
        }
    }
}

impl Record {
    pub fn new(at: SystemTime, host: impl Into<Arc<str>>, body: Body) -> Self {
        Self {
            ts: rfc3339_millis(at),
            host: host.into(),
            body,
        }
    }

    /// Nanoseconds since the Unix epoch of `ts` (0 if it does not parse).
    pub fn ts_ns(&self) -> i64 {
        if let Some(ns) = SECOND.with(|s| s.borrow().ns_of(&self.ts)) {
            return ns;
        }
        let ns = humantime::parse_rfc3339(&self.ts)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        SECOND.with(|s| s.borrow_mut().learn(&self.ts, ns));
        ns
    }
}

/// The last whole second a thread wrote or read a timestamp in: events come by the hundred
/// per second, and formatting or parsing a date for each was a few percent of the agent's
/// work per event. humantime does the first of each second; the milliseconds are appended
/// or read here.
#[derive(Default)]
struct Second {
    /// Its Unix time in seconds.
    secs: u64,
    /// `YYYY-MM-DDTHH:MM:SS.` as humantime writes it (empty: none yet).
    prefix: String,
}

thread_local! {
    static SECOND: std::cell::RefCell<Second> = std::cell::RefCell::new(Second::default());
}

impl Second {
    /// The epoch ns of `ts` when it is `prefix` + three digits + `Z`.
    fn ns_of(&self, ts: &str) -> Option<i64> {
        let millis = ts.strip_prefix(self.prefix.as_str())?.strip_suffix('Z')?;
        if self.prefix.is_empty()
            || millis.len() != 3
            || !millis.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let ms: u64 = millis.parse().ok()?;
        i64::try_from(self.secs * 1_000_000_000 + ms * 1_000_000).ok()
    }

    /// Remember the second of `ts` (stamped `ns`) when it has the millisecond shape.
    fn learn(&mut self, ts: &str, ns: i64) {
        if ns <= 0 || ts.len() < 5 || !ts.ends_with('Z') || ts.as_bytes()[ts.len() - 5] != b'.' {
            return;
        }
        let secs = ns as u64 / 1_000_000_000;
        self.secs = secs;
        self.prefix.clear();
        self.prefix.push_str(&ts[..ts.len() - 4]);
    }
}

/// `at` in RFC 3339, UTC, millisecond precision (as `humantime::format_rfc3339_millis`).
pub fn rfc3339_millis(at: SystemTime) -> Ts {
    let Ok(since) = at.duration_since(UNIX_EPOCH) else {
        return humantime::format_rfc3339_millis(at).to_string().into();
    };
    let (secs, ms) = (since.as_secs(), since.subsec_millis());
    SECOND.with(|s| {
        let mut s = s.borrow_mut();
        if s.prefix.is_empty() || s.secs != secs {
            let full = humantime::format_rfc3339_millis(at).to_string();
            s.learn(&full, (secs * 1_000_000_000) as i64);
            if s.secs != secs || s.prefix.is_empty() {
                return full.into(); // not the usual shape: no cache
            }
        }
        with_millis(&s.prefix, ms)
    })
}

/// `prefix` (`YYYY-MM-DDTHH:MM:SS.`) + `ms` as three digits + `Z`, assembled on the stack
/// and made a [`Ts`] in one step (four `push`es, each checking room and representation, were
/// ~80 instructions per event).
fn with_millis(prefix: &str, ms: u32) -> Ts {
    let n = prefix.len();
    let mut buf = [0u8; 32];
    if n + 4 > buf.len() {
        return Ts::from(format!("{prefix}{:03}Z", ms % 1000));
    }
    buf[..n].copy_from_slice(prefix.as_bytes());
    buf[n..n + 4].copy_from_slice(&[
        b'0' + (ms / 100 % 10) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
    // The prefix is a `str` and the rest ASCII: valid UTF-8.
    Ts::from_utf8(&buf[..n + 4]).expect("a str and ASCII digits")
}

/// Turns kernel `CLOCK_BOOTTIME` stamps into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall-clock time at boot (realtime − boottime), in ns since the epoch.
    boot_epoch_ns: i128,
}

impl BootClock {
    /// Measure the offset now.
    pub fn now() -> Self {
        use nix::time::{ClockId, clock_gettime};
        let ns = |c| {
            clock_gettime(c).map_or(0i128, |t| {
                t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
            })
        };
        let real = ns(ClockId::CLOCK_REALTIME);
        let boot = ns(ClockId::CLOCK_BOOTTIME);
        Self {
            boot_epoch_ns: real - boot,
        }
    }

    #[cfg(test)]
    pub fn with_boot_epoch_ns(boot_epoch_ns: i128) -> Self {
        Self { boot_epoch_ns }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = (self.boot_epoch_ns + boot_ns as i128).max(0) as u128;
        UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }
}

/// The aligned, one-line human form printed by `sentinel tail`.
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (pid, comm, detail) = match &self.body {
            Body::Exec(b) => {
                // One event, one line: control characters in arguments are escaped.
                let args: Vec<String> = b
                    .argv
                    .iter()
                    .map(|a| {
                        if a.chars().any(char::is_control) {
                            format!("\"{}\"", a.escape_debug())
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                let mut d = args.join(" ");
                if d.is_empty() {
                    d = b.filename.to_string();
                } else if !b.argv[0].ends_with(b.filename.rsplit('/').next().unwrap_or("")) {
                    d = format!("{} [{}]", d, b.filename);
                }
                if !b.ancestors.is_empty() {
                    d = format!("{d}  ⟵ {}", b.ancestors.join(" ⟵ "));
                }
                (b.pid, &b.comm, d)
            }
            Body::Connect(b) => {
                let dst = match b.daddr {
                    IpAddr::V4(a) => format!("{a}:{}", b.dport),
                    IpAddr::V6(a) => format!("[{a}]:{}", b.dport),
                };
                let country = b.country.as_deref().unwrap_or("-");
                (b.pid, &b.comm, format!("→ {dst}  country={country}"))
            }
            Body::Cpu(b) => (b.pid, &b.comm, format!("{:.1}% cpu", b.cpu_pct)),
            Body::Alert(b) => {
                let mut d = format!(
                    "[{}] {} {} risk={} {} ({})",
                    b.id,
                    b.severity.to_uppercase(),
                    b.anomaly,
                    b.risk,
                    b.mitre.technique,
                    b.mitre.tactic
                );
                if let Some(ip) = b.target_ip {
                    d.push_str(&format!(" → {ip}"));
                    if let Some(c) = &b.country {
                        d.push_str(&format!(" ({c})"));
                    }
                }
                if b.count > 1 {
                    d.push_str(&format!(" ×{}", b.count));
                }
                if b.state != "none" {
                    d.push_str(&format!(" state={}", b.state));
                }
                d.push_str(&format!(": {}", b.detail));
                (b.pid, &b.comm, d)
            }
            Body::Decision(b) => {
                let target = b.target_ip.map_or("-".to_string(), |ip| ip.to_string());
                let mut d = format!(
                    "[{}] {} {} → {target}",
                    b.id,
                    b.state.to_uppercase(),
                    b.anomaly
                );
                if b.state == "pending" {
                    d.push_str(&format!(" (auto-block at {})", b.deadline));
                }
                if let Some(by) = &b.decided_by {
                    d.push_str(&format!(" by {by}"));
                }
                if let Some(r) = &b.reason {
                    d.push_str(&format!(": {r}"));
                }
                (b.pid, &b.comm, d)
            }
        };
        let detail = match self.body.container() {
            Some(c) => format!("{detail}  [{}]", c.describe()),
            None => detail,
        };
        // Escaped at intake; again here for events an older agent stored: one event, one
        // line, and no escape sequence reaches the terminal.
        write!(
            f,
            "{:<24} {:<8} {:>7}  {:<16} {}",
            self.ts,
            self.body.kind().as_str(),
            pid,
            escape(comm),
            escape(&detail)
        )
    }
}

/// A geo alert on `target` for tests: the same fixture everywhere.
#[cfg(test)]
pub fn sample_alert(id: &str, target: &str) -> AlertBody {
    use crate::detect::Anomaly;
    AlertBody {
        id: id.into(),
        anomaly: "geo".into(),
        severity: "critical".into(),
        risk: 70,
        mitre: Anomaly::Geo.mitre(),
        pid: 9,
        comm: "curl".into(),
        exe: Some("/usr/bin/curl".into()),
        target_ip: Some(target.parse().unwrap()),
        targets: vec![target.parse().unwrap()],
        country: Some("RU".into()),
        domain: None,
        state: "none".into(),
        deadline: None,
        count: 1,
        detail: "curl connected".into(),
        container: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-second cache agrees with humantime, across second, day and year boundaries,
    /// in both directions, whatever order the times come in.
    #[test]
    fn cached_timestamps_agree_with_humantime() {
        let base = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31T23:59:59Z
        let mut times = Vec::new();
        for ms in [
            0u64, 1, 999, 1000, 1001, 1999, 2000, 61_000, 86_400_000, 3_000,
        ] {
            times.push(base + Duration::from_millis(ms));
            times.push(base + Duration::from_millis(ms) + Duration::from_nanos(999_999));
        }
        times.push(UNIX_EPOCH);
        for at in times.iter().chain(times.iter().rev()) {
            let want = humantime::format_rfc3339_millis(*at).to_string();
            assert_eq!(rfc3339_millis(*at).as_str(), want);
            let r = Record::new(
                *at,
                "h",
                Body::Cpu(CpuBody {
                    pid: 1,
                    comm: "x".into(),
                    cpu_pct: 0.0,
                    container: None,
                }),
            );
            let parsed = humantime::parse_rfc3339(&want)
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            assert_eq!(r.ts_ns(), parsed, "{want}");
        }
        assert_eq!(
            with_millis("2026-12-31T23:59:59.", 7),
            "2026-12-31T23:59:59.007Z"
        );
        let long = "+10000-12-31T23:59:59.".repeat(2);
        assert_eq!(with_millis(&long, 999), format!("{long}999Z"));
        // Shapes the cache does not know are parsed as before.
        for ts in [
            "2026-12-31T23:59:59Z",
            "2026-12-31T23:59:59.5Z",
            "garbage",
            "",
        ] {
            let r = Record {
                ts: ts.into(),
                ..exec()
            };
            let want = humantime::parse_rfc3339(ts)
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            assert_eq!(r.ts_ns(), want, "{ts}");
        }
    }

    fn exec() -> Record {
        Record {
            ts: "2026-11-22T20:00:00.123Z".into(),
            host: "web1".into(),
            body: Body::Exec(ExecBody {
                pid: 42,
                ppid: 7,
                uid: 1000,
                comm: "ls".into(),
                filename: "/usr/bin/ls".into(),
                argv: vec!["ls".into(), "-la".into()],
                ancestors: vec!["bash".into(), "sshd".into()],
                container: None,
            }),
        }
    }

    #[test]
    fn exec_json_has_contract_fields() {
        let v: serde_json::Value = serde_json::to_value(exec()).unwrap();
        for key in [
            "ts",
            "kind",
            "host",
            "pid",
            "ppid",
            "uid",
            "comm",
            "filename",
            "argv",
            "ancestors",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["kind"], "exec");
        assert_eq!(v["ancestors"][0], "bash");
    }

    #[test]
    fn connect_json_has_contract_fields() {
        let r = Record {
            ts: "2026-11-22T20:00:00.000Z".into(),
            host: "h".into(),
            body: Body::Connect(ConnectBody {
                pid: 1,
                comm: "curl".into(),
                uid: 0,
                family: 6,
                saddr: "::1".parse().unwrap(),
                daddr: "2001:db8::1".parse().unwrap(),
                dport: 443,
                country: None,
                container: None,
                domain: Some("www.example.test".into()),
            }),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "connect");
        assert_eq!(v["domain"], "www.example.test");
        assert_eq!(v["family"], 6);
        assert_eq!(v["daddr"], "2001:db8::1");
        assert_eq!(v["dport"], 443);
        assert!(v["country"].is_null());
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn alert_json_has_contract_fields() {
        let r = Record {
            ts: "2026-11-22T20:00:00.000Z".into(),
            host: "h".into(),
            body: Body::Alert(Box::new(AlertBody {
                risk: 85,
                count: 3,
                ..sample_alert("0badc0de", "203.0.113.9")
            })),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "ts",
            "kind",
            "host",
            "id",
            "anomaly",
            "severity",
            "risk",
            "mitre",
            "pid",
            "comm",
            "target_ip",
            "country",
            "state",
            "deadline",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["kind"], "alert");
        assert_eq!(v["mitre"]["technique"], "T1071.001");
        assert_eq!(v["mitre"]["tactic"], "Command and Control");
        assert_eq!(v["target_ip"], "203.0.113.9");
        assert!(v["deadline"].is_null());
        assert_eq!(serde_json::from_value::<Record>(v).unwrap(), r);
        let line = r.to_string();
        assert!(line.contains("CRITICAL geo risk=85 T1071.001"), "{line}");
        assert!(line.contains("→ 203.0.113.9 (RU) ×3"), "{line}");
    }

    #[test]
    fn record_round_trips_through_json() {
        let r = exec();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
    }

    #[test]
    fn human_line_is_aligned() {
        let line = exec().to_string();
        assert!(
            line.starts_with("2026-11-22T20:00:00.123Z exec          42  ls "),
            "{line}"
        );
        assert!(line.contains("ls -la"), "{line}");
        assert!(line.contains("bash ⟵ sshd"), "{line}");
        assert!(
            !line.contains("container"),
            "host processes carry none: {line}"
        );
    }

    #[test]
    fn human_line_names_the_container() {
        let mut r = exec();
        if let Body::Exec(b) = &mut r.body {
            b.container = Some(Arc::new(Container {
                id: "0123456789ab".repeat(5) + "cdef",
                runtime: "podman".into(),
                name: Some("web\x1b".into()),
                image: Some("app:1".into()),
                network_relay: None,
            }));
        }
        let line = r.to_string();
        assert!(
            line.ends_with("[container web\\x1b (app:1, podman 0123456789ab)]"),
            "{line}"
        );
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["container"]["name"], "web\u{1b}");
        assert_eq!(json["container"]["runtime"], "podman");
    }

    #[test]
    fn human_line_escapes_control_characters() {
        let mut r = exec();
        if let Body::Exec(b) = &mut r.body {
            b.argv = vec!["python3".into(), "-c".into(), "a\nb".into()];
        }
        let line = r.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r#""a\nb""#), "{line}");
        // An alert stored by an older agent, raw: its line is escaped too.
        let mut alert = sample_alert("a1", "198.51.100.2");
        alert.comm = "\x1b[31mx\ny".into();
        alert.detail = "line\nforged 2026-11-22T20:00:00Z alert\u{9b}2J".into();
        let line = Record::new(UNIX_EPOCH, "h", Body::Alert(Box::new(alert))).to_string();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains(r"\x1b[31mx\ny"), "{line}");
        assert!(
            line.contains(r"line\nforged") && line.contains(r"\u{9b}2J"),
            "{line}"
        );
    }

    #[test]
    fn boot_clock_adds_offset() {
        let c = BootClock::with_boot_epoch_ns(1_000_000_000_000_000_000);
        let t = c.wall(1_500_000_000);
        let ns = t.duration_since(UNIX_EPOCH).unwrap().as_nanos();
        assert_eq!(ns, 1_000_000_001_500_000_000);
    }

    #[test]
    fn ts_ns_parses_back() {
        let at = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let r = Record::new(at, "h", exec().body);
        assert_eq!(r.ts_ns(), 1_790_000_000_123_000_000);
    }
}
