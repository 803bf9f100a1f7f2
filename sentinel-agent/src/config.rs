//! The agent's configuration: TOML (SPEC §6), parsed into a validated `Config` before anything
//! runs. Every key has a default (commented in `config/sentinel.toml`); unknown keys and bad
//! values are errors that name the key and the reason.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/sentinel/sentinel.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}:\n{}", .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One bad value: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    pub geo: GeoConfig,
    pub trust: TrustConfig,
    pub lineage: LineageConfig,
    pub resource: ResourceConfig,
    pub alerts: AlertsConfig,
    pub cron: crate::detect::cron::CronConfig,
    pub npm: crate::detect::npm::NpmConfig,
    pub miner: crate::detect::miner::MinerConfig,
    pub respawn: crate::detect::respawn::RespawnConfig,
    pub node_abuse: crate::detect::node_abuse::NodeAbuseConfig,
    pub switch: SwitchConfig,
    pub enforce: EnforceConfig,
    #[serde(rename = "override")]
    pub override_: OverrideConfig,
    pub notify: NotifyConfig,
    pub metrics: MetricsConfig,
    pub fleet: crate::fleet::FleetConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwitchConfig {
    /// How long a pending decision waits for a human before the automatic block.
    #[serde(deserialize_with = "duration")]
    pub countdown: Duration,
    /// A target marked safe is not alerted on again for this long.
    #[serde(deserialize_with = "duration")]
    pub safe_ttl: Duration,
    /// Most targets one decision holds; reaching it ends the countdown at once (fail closed).
    pub max_targets: usize,
    /// Most decisions pending at once; beyond it a new decision is blocked at once.
    pub max_pending: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            countdown: Duration::from_secs(300),
            safe_ttl: Duration::from_secs(24 * 3600),
            max_targets: 16_384,
            max_pending: 256,
        }
    }
}

/// `enforce.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnforceMode {
    /// Block through the agent's nftables table.
    Nftables,
    /// Decide and record; touch nothing.
    DryRun,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforceConfig {
    pub mode: EnforceMode,
    /// The agent's own nftables table: `table inet <table>`.
    pub table: String,
    /// How long a block lasts (the nftables element timeout).
    #[serde(deserialize_with = "duration")]
    pub block_ttl: Duration,
    /// Also terminate the offending process tree (`lineage`, `resource`, `reverse_shell`).
    pub kill: bool,
    /// Time between SIGTERM and SIGKILL.
    #[serde(deserialize_with = "duration")]
    pub kill_grace: Duration,
    /// The anomalies whose process tree is terminated (a subset of [`KILLABLE`]).
    pub kill_on: Vec<String>,
    /// Executables never killed: a name matches the executable's file name (`node` also
    /// `node18`), an absolute path that one file (pid 1, the agent, sshd, systemd and login
    /// never are).
    pub protect: Vec<String>,
    /// Also refuse `connect()` to blocked addresses in the kernel (cgroup connect4/6).
    pub connect_guard: bool,
    /// Allow blocking private and unique-local addresses (RFC 1918, 100.64/10, fc00::/7).
    pub block_private: bool,
}

/// Anomalies whose culprit is a process that `enforce.kill` can terminate.
/// Anomalies whose process tree `enforce.kill` may terminate (each still only when its own
/// rule allows: a miner only once it burns CPU, `node_abuse` only for CPU abuse, `respawn` only
/// after the agent's own kill; see `detect::kills`).
pub const KILLABLE: [&str; 6] = [
    "lineage",
    "resource",
    "reverse_shell",
    "miner",
    "node_abuse",
    "respawn",
];

impl Default for EnforceConfig {
    fn default() -> Self {
        Self {
            mode: EnforceMode::Nftables,
            table: "sentinel".into(),
            block_ttl: Duration::from_secs(24 * 3600),
            kill: false,
            kill_grace: Duration::from_secs(2),
            kill_on: KILLABLE.iter().map(|a| a.to_string()).collect(),
            protect: Vec::new(),
            connect_guard: true,
            block_private: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverrideConfig {
    /// Where the HTTP endpoint for chat buttons and signed links listens.
    pub listen: String,
    /// How chat users reach that endpoint (e.g. behind a TLS proxy); empty: no links.
    pub public_url: String,
    /// The key signing override links (HMAC-SHA256); created by the installer, mode 0600.
    pub secret_file: PathBuf,
}

impl Default for OverrideConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8787".into(),
            public_url: String::new(),
            secret_file: "/etc/sentinel/override.key".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Longest wait for one chat request.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Attempts per message before it is recorded as failed.
    pub attempts: u32,
    pub slack: SlackConfig,
    pub teams: TeamsConfig,
    pub telegram: TelegramConfig,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempts: 5,
            slack: SlackConfig::default(),
            teams: TeamsConfig::default(),
            telegram: TelegramConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// Incoming-webhook URL; empty: Slack is off.
    pub webhook_url: String,
    /// The Slack app's signing secret, to verify button clicks.
    pub signing_secret: String,
    /// Also send a summary of the last day, once a day.
    pub daily_summary: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsConfig {
    /// Workflows "when a Teams webhook request is received" URL; empty: Teams is off.
    pub webhook_url: String,
    pub daily_summary: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramConfig {
    pub api_base: String,
    /// Bot token; empty: Telegram is off.
    pub bot_token: String,
    /// The chat alerts go to; button presses are accepted from it only (or `allowed_user_ids`).
    pub chat_id: String,
    /// Telegram user ids whose button presses are accepted too.
    pub allowed_user_ids: Vec<i64>,
    pub daily_summary: bool,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            api_base: "https://api.telegram.org".into(),
            bot_token: String::new(),
            chat_id: String::new(),
            allowed_user_ids: Vec::new(),
            daily_summary: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus endpoint (`/metrics`), e.g. "127.0.0.1:9187"; empty: off.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// Off: no countries, no geo alerts (a warning at start).
    pub enabled: bool,
    /// Any MaxMind-format country database.
    pub database: PathBuf,
    /// ISO 3166-1 alpha-2 codes whose addresses raise a `geo` alert.
    pub high_risk_countries: Vec<String>,
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            database: "/var/lib/sentinel/country.mmdb".into(),
            high_risk_countries: ["RU", "CN", "KP", "IR", "BY", "SY", "VE"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// IPs and CIDRs (v4 and v6) never alerted on as geo anomalies and never blocked.
    #[serde(deserialize_with = "networks")]
    pub ips: Vec<ipnet::IpNet>,
    /// Peers of live authenticated SSH sessions are trusted while the session lasts.
    pub ssh_peers: bool,
    /// Local ports sshd listens on: only sessions connected to one of these count.
    pub ssh_ports: Vec<u16>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            ips: Vec::new(),
            ssh_peers: true,
            ssh_ports: vec![22],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineageConfig {
    /// Process names (comm) of dedicated server daemons: web servers by name, listening or
    /// not. A name also matches its versioned binary (`php-fpm` matches `php-fpm8.2`).
    pub web_servers: Vec<String>,
    /// General interpreters (`node`, `python3`, …): web servers only while they accept
    /// connections (they, or the master of their worker pool, called `listen`).
    pub interpreters: Vec<String>,
    /// Any other program that accepts connections (a renamed server binary) is a web server
    /// too. Off: only `web_servers` and listening `interpreters` are.
    pub any_listener: bool,
    /// Package managers (apt, dpkg, npm, pip, …), by process name or by the script an
    /// interpreter runs: never web servers, and the shells they run (install scripts) are
    /// theirs, not the server's above them.
    pub package_managers: Vec<String>,
    /// Services that accept connections and hand out shells by design (init, logins,
    /// terminal multiplexers, container runtimes): never web servers.
    pub shell_services: Vec<String>,
    /// Names of shells, found in `PATH`; with `/etc/shells` they say which executables are
    /// shells, compared by content, whatever a copy is called.
    pub shells: Vec<String>,
    /// Known-good web server → shell patterns that raise nothing.
    pub allow: Vec<LineageAllow>,
}

impl Default for LineageConfig {
    fn default() -> Self {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
        Self {
            web_servers: names(&["nginx", "apache2", "httpd", "php-fpm"]),
            interpreters: names(&["node", "python", "python3", "ruby", "java"]),
            any_listener: true,
            package_managers: names(&[
                "apt",
                "apt-get",
                "aptitude",
                "dpkg",
                "unattended-upgr",
                "npm",
                "npm-cli",
                "npx",
                "npx-cli",
                "yarn",
                "yarnpkg",
                "pnpm",
                "pip",
                "pip3",
            ]),
            shell_services: names(&[
                "systemd",
                "init",
                "sshd",
                "sshd-session",
                "login",
                "agetty",
                "tmux",
                "screen",
                "containerd",
                "containerd-shim",
                "dockerd",
                "runc",
                "cron",
                "atd",
            ]),
            shells: names(&["sh", "bash", "dash", "zsh", "ash", "ksh", "busybox"]),
            allow: Vec::new(),
        }
    }
}

/// One allowed web server → shell pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageAllow {
    /// The web server's name (as in `web_servers` or `interpreters`, or any name with
    /// `any_listener`).
    pub parent: String,
    /// The shell's name (as in `shells`).
    pub child: String,
    /// Optional regular expression the shell's arguments (joined by spaces) must match.
    #[serde(default, deserialize_with = "optional_regex")]
    pub argv: Option<regex::Regex>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceConfig {
    /// A process above this CPU % (of one CPU) for `sustain` raises `resource`.
    pub cpu_percent: f64,
    #[serde(deserialize_with = "duration")]
    pub sustain: Duration,
    /// Host CPU % more than this many points over the learned baseline for `sustain`
    /// raises `resource` too.
    pub baseline_deviation: f64,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        Self {
            cpu_percent: 90.0,
            sustain: Duration::from_secs(300),
            baseline_deviation: 40.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// The same anomaly, target and process within this window raise one alert (with a count).
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// How alerts name this host; empty means the hostname.
    pub id: String,
    /// The SQLite event store.
    pub db: PathBuf,
    /// The unix socket the CLI talks to (created mode 0600).
    pub socket: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// Size of each sensor's ring buffer in KiB: a power of two, at least 4 (one page).
    pub ring_buffer_kib: u32,
    /// CPU samples per second on each CPU.
    pub cpu_sample_hz: u64,
    /// How often CPU % is computed and `cpu` events are emitted.
    #[serde(deserialize_with = "duration")]
    pub cpu_interval: Duration,
    /// Processes at or above this CPU % (of one CPU) get a `cpu` event each interval.
    pub cpu_report_percent: f64,
    /// Events older than this are deleted from the store.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// The store's size cap in MiB: the oldest exec/connect/cpu events make room.
    pub max_db_mb: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            db: "/var/lib/sentinel/sentinel.db".into(),
            socket: "/run/sentinel/sentinel.sock".into(),
            log_level: "info".into(),
            ring_buffer_kib: 256,
            cpu_sample_hz: sentinel_common::events::cpu::DEFAULT_HZ,
            cpu_interval: Duration::from_secs(2),
            cpu_report_percent: 10.0,
            retention: Duration::from_secs(14 * 24 * 3600),
            max_db_mb: 1024,
        }
    }
}

/// A human duration string (`"30s"`, `"5m"`, `"24h"`, `"1h 30m"`).
pub(crate) fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

/// IPs and CIDRs: `"203.0.113.7"` or `"198.51.100.0/24"`, v4 or v6.
fn networks<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let items = Vec::<String>::deserialize(de)?;
    items
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    serde::de::Error::custom(format!("{text:?} is not an IP address or CIDR"))
                })
        })
        .collect()
}

fn optional_regex<'de, D: Deserializer<'de>>(de: D) -> Result<Option<regex::Regex>, D::Error> {
    let text = String::deserialize(de)?;
    regex::Regex::new(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid regular expression {text:?}: {e}")))
}

/// `http://…` or `https://…` with a host.
fn is_http_url(text: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        text.strip_prefix(scheme).is_some_and(|rest| {
            !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace)
        })
    })
}

/// Whether `comm` is `name` or `name` followed by a version (`python3.11`, `php-fpm8.2`).
pub fn name_matches(name: &str, comm: &str) -> bool {
    comm.strip_prefix(name)
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Kernel comms are at most 15 bytes: a longer name can never match.
const COMM_MAX: usize = 15;

impl Config {
    /// Read and validate the config at `path`. With `optional`, a missing file (the default
    /// path on a machine with no config yet) gives the built-in defaults.
    pub fn load(path: &Path, optional: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parse and validate TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.into(),
                problems,
            })
        }
    }

    /// Everything wrong with the values, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key, reason: String| out.push(Problem { key, reason });
        let a = &self.agent;
        if a.db.as_os_str().is_empty() {
            bad("agent.db", "must not be empty".into());
        }
        if a.socket.as_os_str().is_empty() {
            bad("agent.socket", "must not be empty".into());
        } else if a.socket.as_os_str().len() > 107 {
            bad(
                "agent.socket",
                "longer than a unix socket path may be (107 bytes)".into(),
            );
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&a.log_level.as_str()) {
            bad(
                "agent.log_level",
                format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    a.log_level
                ),
            );
        }
        let kib = a.ring_buffer_kib;
        if !kib.is_power_of_two() || !(4..=1024 * 1024).contains(&kib) {
            bad(
                "agent.ring_buffer_kib",
                format!("{kib} is not a power of two between 4 and 1048576"),
            );
        }
        if !(1..=1000).contains(&a.cpu_sample_hz) {
            bad(
                "agent.cpu_sample_hz",
                format!("{} is not between 1 and 1000", a.cpu_sample_hz),
            );
        }
        if a.cpu_interval < Duration::from_millis(100) || a.cpu_interval > Duration::from_secs(3600)
        {
            bad(
                "agent.cpu_interval",
                format!(
                    "{} is not between 100ms and 1h",
                    humantime::format_duration(a.cpu_interval)
                ),
            );
        }
        if !(0.0..=100_000.0).contains(&a.cpu_report_percent) {
            bad(
                "agent.cpu_report_percent",
                format!("{} is not between 0 and 100000", a.cpu_report_percent),
            );
        }
        let g = &self.geo;
        if g.enabled && g.database.as_os_str().is_empty() {
            bad(
                "geo.database",
                "must not be empty while geo is enabled (set geo.enabled = false to turn geo off)"
                    .into(),
            );
        }
        for code in &g.high_risk_countries {
            if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                bad(
                    "geo.high_risk_countries",
                    format!(
                        "{code:?} is not an ISO 3166-1 alpha-2 code (two capital letters, e.g. \"RU\")"
                    ),
                );
            }
        }
        if self.trust.ssh_peers && self.trust.ssh_ports.is_empty() {
            bad(
                "trust.ssh_ports",
                "must list at least one port while trust.ssh_peers is on".into(),
            );
        }
        if self.trust.ssh_ports.contains(&0) {
            bad("trust.ssh_ports", "0 is not a port".into());
        }
        let l = &self.lineage;
        for (key, names) in [
            ("lineage.web_servers", &l.web_servers),
            ("lineage.interpreters", &l.interpreters),
            ("lineage.package_managers", &l.package_managers),
            ("lineage.shell_services", &l.shell_services),
            ("lineage.shells", &l.shells),
        ] {
            for name in names {
                if name.is_empty() || name.len() > COMM_MAX || name.contains('/') {
                    bad(
                        key,
                        format!("{name:?} is not a process name (1 to {COMM_MAX} bytes, no '/')"),
                    );
                }
            }
        }
        for rule in &l.allow {
            let known = l
                .web_servers
                .iter()
                .chain(&l.interpreters)
                .any(|w| name_matches(w, &rule.parent));
            if !known && !l.any_listener {
                bad(
                    "lineage.allow.parent",
                    format!(
                        "{:?} is not one of lineage.web_servers or lineage.interpreters",
                        rule.parent
                    ),
                );
            }
            if !l.shells.iter().any(|s| name_matches(s, &rule.child)) {
                bad(
                    "lineage.allow.child",
                    format!("{:?} is not one of lineage.shells", rule.child),
                );
            }
        }
        let r = &self.resource;
        if !(1.0..=100_000.0).contains(&r.cpu_percent) {
            bad(
                "resource.cpu_percent",
                format!("{} is not between 1 and 100000", r.cpu_percent),
            );
        }
        if r.sustain < a.cpu_interval || r.sustain > Duration::from_secs(86_400) {
            bad(
                "resource.sustain",
                format!(
                    "{} is not between agent.cpu_interval ({}) and 24h",
                    humantime::format_duration(r.sustain),
                    humantime::format_duration(a.cpu_interval)
                ),
            );
        }
        if !(1.0..=100.0).contains(&r.baseline_deviation) {
            bad(
                "resource.baseline_deviation",
                format!(
                    "{} is not between 1 and 100 (percentage points)",
                    r.baseline_deviation
                ),
            );
        }
        for (key, reason) in self
            .cron
            .problems()
            .into_iter()
            .chain(self.npm.problems())
            .chain(self.miner.problems(a.cpu_interval))
            .chain(self.respawn.problems())
            .chain(self.node_abuse.problems(a.cpu_interval))
        {
            bad(key, reason);
        }
        if self.alerts.dedup_window > Duration::from_secs(7 * 86_400) {
            bad(
                "alerts.dedup_window",
                format!(
                    "{} is longer than 7d",
                    humantime::format_duration(self.alerts.dedup_window)
                ),
            );
        }
        let sw = &self.switch;
        if sw.countdown < Duration::from_secs(1) || sw.countdown > Duration::from_secs(86_400) {
            bad(
                "switch.countdown",
                format!(
                    "{} is not between 1s and 24h",
                    humantime::format_duration(sw.countdown)
                ),
            );
        }
        if sw.safe_ttl > Duration::from_secs(365 * 86_400) {
            bad("switch.safe_ttl", "is longer than a year".into());
        }
        if !(1..=65_536).contains(&sw.max_targets) {
            bad(
                "switch.max_targets",
                format!("{} is not between 1 and 65536", sw.max_targets),
            );
        }
        if !(1..=100_000).contains(&sw.max_pending) {
            bad(
                "switch.max_pending",
                format!("{} is not between 1 and 100000", sw.max_pending),
            );
        }
        let e = &self.enforce;
        if e.table.is_empty()
            || e.table.len() > 32
            || !e
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || !e.table.as_bytes()[0].is_ascii_alphabetic()
        {
            bad(
                "enforce.table",
                format!(
                    "{:?} is not a table name (a letter, then letters, digits, '_' or '-'; at most 32)",
                    e.table
                ),
            );
        }
        if e.block_ttl < Duration::from_secs(1) || e.block_ttl > Duration::from_secs(365 * 86_400) {
            bad(
                "enforce.block_ttl",
                format!(
                    "{} is not between 1s and 365d",
                    humantime::format_duration(e.block_ttl)
                ),
            );
        }
        if e.kill_grace > Duration::from_secs(60) {
            bad("enforce.kill_grace", "is longer than 60s".into());
        }
        for a in &e.kill_on {
            if !KILLABLE.contains(&a.as_str()) {
                bad(
                    "enforce.kill_on",
                    format!("{a:?} is not one of {}", KILLABLE.join(", ")),
                );
            }
        }
        for p in &e.protect {
            let path = p.starts_with('/') && !p.split('/').any(|c| c == "..");
            if p.is_empty() || (p.contains('/') && !path) {
                bad(
                    "enforce.protect",
                    format!("{p:?} is neither an executable name nor an absolute path"),
                );
            }
        }
        let o = &self.override_;
        if o.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "override.listen",
                format!("{:?} is not an address:port", o.listen),
            );
        }
        if !o.public_url.is_empty() && !is_http_url(&o.public_url) {
            bad(
                "override.public_url",
                format!("{:?} is not an http(s) URL", o.public_url),
            );
        }
        let n = &self.notify;
        if n.timeout < Duration::from_millis(100) || n.timeout > Duration::from_secs(120) {
            bad("notify.timeout", "is not between 100ms and 2m".into());
        }
        if !(1..=20).contains(&n.attempts) {
            bad(
                "notify.attempts",
                format!("{} is not between 1 and 20", n.attempts),
            );
        }
        for (key, url) in [
            ("notify.slack.webhook_url", &n.slack.webhook_url),
            ("notify.teams.webhook_url", &n.teams.webhook_url),
        ] {
            if !url.is_empty() && !is_http_url(url) {
                bad(key, "is not an http(s) URL".into());
            }
        }
        if !n.slack.webhook_url.is_empty() && n.slack.signing_secret.is_empty() {
            bad(
                "notify.slack.signing_secret",
                "is needed with notify.slack.webhook_url (button clicks are verified with it)"
                    .into(),
            );
        }
        if !n.telegram.bot_token.is_empty() {
            if !is_http_url(&n.telegram.api_base) {
                bad("notify.telegram.api_base", "is not an http(s) URL".into());
            }
            if n.telegram.chat_id.is_empty() {
                bad(
                    "notify.telegram.chat_id",
                    "is needed with notify.telegram.bot_token".into(),
                );
            }
        }
        if (!n.teams.webhook_url.is_empty() || !n.slack.webhook_url.is_empty())
            && o.public_url.is_empty()
        {
            bad(
                "override.public_url",
                "is needed for Teams and Slack buttons (how chat users reach this agent)".into(),
            );
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "metrics.listen",
                format!("{:?} is not an address:port", self.metrics.listen),
            );
        }
        if !(16..=1024 * 1024).contains(&a.max_db_mb) {
            bad(
                "agent.max_db_mb",
                format!("{} is not between 16 and 1048576 (MiB)", a.max_db_mb),
            );
        }
        if a.retention < Duration::from_secs(3600) {
            bad(
                "agent.retention",
                format!(
                    "{} is shorter than 1h",
                    humantime::format_duration(a.retention)
                ),
            );
        }
        out.extend(self.fleet.problems());
        out
    }

    /// The host name alerts carry: `agent.id`, or the machine's hostname.
    pub fn host_id(&self) -> String {
        if !self.agent.id.is_empty() {
            return self.agent.id.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.agent.db, PathBuf::from("/var/lib/sentinel/sentinel.db"));
        assert_eq!(c.agent.cpu_interval, Duration::from_secs(2));
        assert_eq!(c.agent.ring_buffer_kib, 256);
    }

    #[test]
    fn shipped_config_is_valid_and_matches_defaults() {
        let text = include_str!("../../config/sentinel.toml");
        let c = parse(text).unwrap();
        let d = AgentConfig::default();
        assert_eq!(c.agent.db, d.db);
        assert_eq!(c.agent.socket, d.socket);
        assert_eq!(c.agent.ring_buffer_kib, d.ring_buffer_kib);
        assert_eq!(c.agent.cpu_interval, d.cpu_interval);
        assert_eq!(c.agent.retention, d.retention);
        assert_eq!(c.agent.max_db_mb, d.max_db_mb);
        let (g, dg) = (&c.geo, GeoConfig::default());
        assert_eq!(
            (g.enabled, &g.database, &g.high_risk_countries),
            (dg.enabled, &dg.database, &dg.high_risk_countries)
        );
        let (t, dt) = (&c.trust, TrustConfig::default());
        assert_eq!(
            (&t.ips, t.ssh_peers, &t.ssh_ports),
            (&dt.ips, dt.ssh_peers, &dt.ssh_ports)
        );
        let (l, dl) = (&c.lineage, LineageConfig::default());
        assert_eq!((&l.web_servers, &l.shells), (&dl.web_servers, &dl.shells));
        assert_eq!(
            (
                &l.interpreters,
                l.any_listener,
                &l.package_managers,
                &l.shell_services
            ),
            (
                &dl.interpreters,
                dl.any_listener,
                &dl.package_managers,
                &dl.shell_services
            )
        );
        assert!(l.allow.is_empty());
        let (r, dr) = (&c.resource, ResourceConfig::default());
        assert_eq!(
            (r.cpu_percent, r.sustain, r.baseline_deviation),
            (dr.cpu_percent, dr.sustain, dr.baseline_deviation)
        );
        assert_eq!(c.alerts.dedup_window, AlertsConfig::default().dedup_window);
        use crate::detect::{cron, miner, node_abuse, respawn};
        assert_eq!(c.cron.paths, cron::CronConfig::default().paths);
        assert!(c.npm.blocklist.is_empty());
        let (m, dm) = (&c.miner, miner::MinerConfig::default());
        assert_eq!(
            (&m.ports, m.cpu_percent, m.sustain),
            (&dm.ports, dm.cpu_percent, dm.sustain)
        );
        let (r, dr) = (&c.respawn, respawn::RespawnConfig::default());
        assert_eq!((r.window, r.max_spawns), (dr.window, dr.max_spawns));
        let (n, dn) = (&c.node_abuse, node_abuse::NodeAbuseConfig::default());
        assert_eq!((n.cpu_percent, n.sustain), (dn.cpu_percent, dn.sustain));
        let (sw, dsw) = (&c.switch, SwitchConfig::default());
        assert_eq!(
            (sw.countdown, sw.safe_ttl, sw.max_targets, sw.max_pending),
            (
                dsw.countdown,
                dsw.safe_ttl,
                dsw.max_targets,
                dsw.max_pending
            )
        );
        let (e, de) = (&c.enforce, EnforceConfig::default());
        assert_eq!(
            (
                e.mode,
                &e.table,
                e.block_ttl,
                e.kill,
                e.kill_grace,
                &e.kill_on,
                &e.protect,
                e.connect_guard,
                e.block_private
            ),
            (
                de.mode,
                &de.table,
                de.block_ttl,
                de.kill,
                de.kill_grace,
                &de.kill_on,
                &de.protect,
                de.connect_guard,
                de.block_private
            )
        );
        let (o, d) = (&c.override_, OverrideConfig::default());
        assert_eq!(
            (&o.listen, &o.public_url, &o.secret_file),
            (&d.listen, &d.public_url, &d.secret_file)
        );
        let (n, d) = (&c.notify, NotifyConfig::default());
        assert_eq!((n.timeout, n.attempts), (d.timeout, d.attempts));
        assert_eq!(n.telegram.api_base, d.telegram.api_base);
        assert!(n.slack.webhook_url.is_empty() && n.teams.webhook_url.is_empty());
        assert!(n.telegram.bot_token.is_empty() && c.metrics.listen.is_empty());
    }

    #[test]
    fn behaviour_detector_sections_name_their_keys() {
        let err = parse(
            "[cron]\npaths = [\"etc/crontab\"]\n[npm]\nblocklist = [\"bad name\"]\n\
             [miner]\nports = [0]\ncpu_percent = 0\nsustain = \"1ms\"\n\
             [respawn]\nwindow = \"0s\"\nmax_spawns = 1\n\
             [node_abuse]\ncpu_percent = 0\nsustain = \"100d\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "cron.paths:",
            "npm.blocklist:",
            "miner.ports:",
            "miner.cpu_percent:",
            "miner.sustain:",
            "respawn.window:",
            "respawn.max_spawns:",
            "node_abuse.cpu_percent:",
            "node_abuse.sustain:",
        ] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
        let err = parse("[miner]\nbogus = 1\n").unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[agent]\nbogus_key = 1\n").unwrap_err().to_string();
        assert!(err.contains("bogus_key"), "{err}");
        let err = parse("[nonsense]\n").unwrap_err().to_string();
        assert!(err.contains("nonsense"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = parse("[agent]\ncpu_interval = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cpu_interval") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_each_name_their_key() {
        let err = parse("[agent]\nring_buffer_kib = 5\ncpu_sample_hz = 0\nlog_level = \"loud\"\n")
            .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "agent.log_level",
                "agent.ring_buffer_kib",
                "agent.cpu_sample_hz"
            ]
        );
    }

    #[test]
    fn max_db_mb_is_validated() {
        assert_eq!(
            parse("[agent]\nmax_db_mb = 64\n").unwrap().agent.max_db_mb,
            64
        );
        for bad in ["0", "15", "1048577"] {
            let err = parse(&format!("[agent]\nmax_db_mb = {bad}\n")).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("agent.max_db_mb") && text.contains(bad),
                "{text}"
            );
        }
        let err = parse("[agent]\nmax_db_mb = \"1G\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_db_mb"), "{err}");
    }

    #[test]
    fn detector_sections_validate_each_key() {
        let err = parse(
            "[geo]\nhigh_risk_countries = [\"RU\", \"russia\", \"cn\"]\n\
             [lineage]\nweb_servers = [\"a-name-longer-than-fifteen\"]\n\
             interpreters = [\"\"]\npackage_managers = [\"bin/npm\"]\n\
             [resource]\ncpu_percent = 0\nbaseline_deviation = 500\nsustain = \"100ms\"\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "geo.high_risk_countries",
                "geo.high_risk_countries",
                "lineage.web_servers",
                "lineage.interpreters",
                "lineage.package_managers",
                "resource.cpu_percent",
                "resource.sustain",
                "resource.baseline_deviation",
            ]
        );
        assert!(problems[0].reason.contains("russia"));
    }

    #[test]
    fn trust_ips_parse_addresses_and_cidrs() {
        let c = parse("[trust]\nips = [\"203.0.113.7\", \"198.51.100.9/24\", \"2001:db8::/32\"]\n")
            .unwrap();
        let ips: Vec<String> = c.trust.ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(ips, ["203.0.113.7/32", "198.51.100.0/24", "2001:db8::/32"]);
        let err = parse("[trust]\nips = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ips") && err.contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn lineage_allow_rules_are_checked() {
        let c =
            parse("[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\nargv = \"^sh -c git \"\n")
                .unwrap();
        assert!(
            c.lineage.allow[0]
                .argv
                .as_ref()
                .unwrap()
                .is_match("sh -c git pull")
        );
        let err = parse("[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\nargv = \"(\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("argv") && err.contains("regular expression"),
            "{err}"
        );
        // Any listening program can be a web server: any parent name goes, unless that is off.
        assert!(parse("[[lineage.allow]]\nparent = \"app\"\nchild = \"sh\"\n").is_ok());
        let err = parse(
            "[lineage]\nany_listener = false\n[[lineage.allow]]\nparent = \"vim\"\nchild = \"sh\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("lineage.allow.parent"), "{err}");
        let err = parse("[[lineage.allow]]\nparent = \"node\"\nkid = \"sh\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kid"), "{err}");
    }

    #[test]
    fn versioned_binaries_match_their_name() {
        assert!(name_matches("python3", "python3"));
        assert!(name_matches("python3", "python3.11"));
        assert!(name_matches("php-fpm", "php-fpm8.2"));
        assert!(!name_matches("sh", "sshd"));
        assert!(!name_matches("node", "nodejs-helper"));
        assert!(!name_matches("python3", "python"));
    }

    #[test]
    fn switch_enforce_override_notify_are_checked() {
        let err = parse(
            "[switch]\ncountdown = \"0s\"\n[enforce]\nmode = \"dry-run\"\ntable = \"bad table\"\n\
             [override]\nlisten = \"nowhere\"\n[notify.slack]\nwebhook_url = \"ftp://x\"\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "switch.countdown",
                "enforce.table",
                "override.listen",
                "notify.slack.webhook_url",
                "notify.slack.signing_secret",
                "override.public_url",
            ]
        );
        let err = parse("[enforce]\nmode = \"yolo\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode") && err.contains("yolo"), "{err}");
        let c = parse("[enforce]\nmode = \"dry-run\"\n").unwrap();
        assert_eq!(c.enforce.mode, EnforceMode::DryRun);
        assert!(parse("[enforce]\nprotect = [\"node\", \"/opt/app/bin/worker\"]\n").is_ok());
        let c = parse("[enforce]\nkill_on = [\"resource\"]\n").unwrap();
        assert_eq!(c.enforce.kill_on, ["resource"]);
        let err = parse("[enforce]\nkill_on = [\"geo\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("enforce.kill_on") && err.contains("geo"),
            "{err}"
        );
        for bad in ["", "bin/node", "/opt/../tmp/x"] {
            let err = parse(&format!("[enforce]\nprotect = [{bad:?}]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("enforce.protect"), "{bad}: {err}");
        }
    }

    #[test]
    fn wrong_type_is_an_error() {
        assert!(parse("[agent]\nring_buffer_kib = \"big\"\n").is_err());
    }

    #[test]
    fn missing_optional_file_gives_defaults_but_explicit_one_errors() {
        let missing = Path::new("/nonexistent/sentinel.toml");
        assert!(Config::load(missing, true).is_ok());
        let err = Config::load(missing, false).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/sentinel.toml"), "{err}");
    }
}
