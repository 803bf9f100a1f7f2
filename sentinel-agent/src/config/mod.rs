//! The agent's configuration: TOML (SPEC §6), parsed into a validated `Config` before anything
//! runs. Every key has a default (commented in `config/sentinel.toml`); unknown keys and bad
//! values are errors that name the key and the reason.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

pub use self::{secrets::secret_file_problems, validate::name_matches};

mod check;
mod secrets;
#[cfg(test)]
mod tests;
mod validate;

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/sentinel/sentinel.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}:\n{}", .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One problem: which key (dotted, e.g. `switch.countdown`; empty when the TOML itself is
/// broken), why, and where in the file (line, column) when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
    pub at: Option<(usize, usize)>,
}

impl Problem {
    /// A problem with `key`, not yet placed in the file.
    pub fn new(key: &str, reason: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            reason: reason.into(),
            at: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.at) {
            (true, Some((line, column))) => {
                write!(f, "line {line}, column {column}: {}", self.reason)
            }
            (true, None) => f.write_str(&self.reason),
            (false, Some((line, column))) => {
                write!(
                    f,
                    "{}: {} (line {line}, column {column})",
                    self.key, self.reason
                )
            }
            (false, None) => write!(f, "{}: {}", self.key, self.reason),
        }
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
    pub persistence: crate::detect::persistence::PersistenceConfig,
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
    pub containers: crate::enrich::container::ContainersConfig,
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
    /// Most decisions pending at once; beyond it a new decision waits for a human.
    pub max_pending: usize,
    /// Most addresses the timer blocks per origin (user, or root's tree) in any hour; beyond
    /// it the targets wait for a human.
    pub max_auto_blocks: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            countdown: Duration::from_secs(300),
            safe_ttl: Duration::from_secs(24 * 3600),
            max_targets: 16_384,
            max_pending: 256,
            max_auto_blocks: 32,
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
    /// `node18`), an absolute path that one file, by its identity (device, inode) on the host
    /// (pid 1, the agent, sshd, systemd and login never are).
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
    /// Reverse proxies (IPs and CIDRs) in front of the endpoint: for requests from them the
    /// client is the last `X-Forwarded-For` address that is not a proxy.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for OverrideConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8787".into(),
            public_url: String::new(),
            secret_file: "/etc/sentinel/override.key".into(),
            trusted_proxies: Vec::new(),
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
    /// Slack user ids (`U…`) whose clicks count; empty: anyone in the channel.
    pub allowed_users: Vec<String>,
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
    /// When set, only these Telegram user ids' presses count, in the chat too.
    pub allowed_users: Vec<i64>,
    pub daily_summary: bool,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            api_base: "https://api.telegram.org".into(),
            bot_token: String::new(),
            chat_id: String::new(),
            allowed_user_ids: Vec::new(),
            allowed_users: Vec::new(),
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
    /// The npm manifest `sentinel geoip-update` fetches the database from; empty: none.
    pub update_source: String,
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            database: "/var/lib/sentinel/country.mmdb".into(),
            high_risk_countries: ["RU", "CN", "KP", "IR", "BY", "SY", "VE"]
                .map(String::from)
                .to_vec(),
            update_source: crate::enrich::geo_update::DEFAULT_SOURCE.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// IPs and CIDRs (v4 and v6) never alerted on as geo anomalies and never blocked.
    #[serde(deserialize_with = "networks")]
    pub ips: Vec<ipnet::IpNet>,
    /// Peers of the live SSH sessions of `ssh_users` are trusted while the session lasts.
    pub ssh_peers: bool,
    /// Local ports sshd listens on: only sessions connected to one of these count. A block
    /// never drops what arrives on them.
    pub ssh_ports: Vec<u16>,
    /// Whose SSH sessions are trusted: user names and `%group`s (members, and the users whose
    /// primary group it is), resolved from /etc/passwd and /etc/group at every refresh.
    pub ssh_users: Vec<String>,
    /// Source addresses of successful SSH logins by admins (root, sudo/admin/wheel) within
    /// this long (wtmp) are never blocked; zero turns it off.
    #[serde(deserialize_with = "duration")]
    pub recent_logins: Duration,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            ips: Vec::new(),
            ssh_peers: true,
            ssh_ports: vec![22],
            ssh_users: crate::enrich::accounts::ADMINS.map(String::from).to_vec(),
            recent_logins: Duration::from_secs(30 * 24 * 3600),
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
    /// Package managers (apt, dpkg, npm, pip, …), by the name of the program or of the script
    /// an interpreter runs, which must also be the installed system's root-owned file: never
    /// web servers, and the shells they run (install scripts) are theirs. Never below a web
    /// server, and never by comm or argv alone.
    pub package_managers: Vec<String>,
    /// Services that accept connections and hand out shells by design (init, logins,
    /// terminal multiplexers, container runtimes): never web servers.
    pub shell_services: Vec<String>,
    /// Names of shells, found in `PATH`; with `/etc/shells` they say which executables are
    /// shells, compared by content, whatever a copy is called.
    pub shells: Vec<String>,
    /// Reconnaissance and tooling programs (by name, as `shells`' names match): one of them
    /// anywhere below a web server is a `lineage` finding too, whether or not a shell sits
    /// between (`python3 -c` running `id` through `subprocess`). `cat` counts only when it
    /// reads an account file (`/etc/passwd`, `/etc/shadow`, `/etc/group`), `chmod` only when
    /// it makes a file executable (`+x`, or a numeric mode with an execute bit).
    pub tools: Vec<String>,
    /// Known-good web server → shell (or tool) patterns that raise nothing.
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
                "unattended-upgrade",
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
                "crun",
                "conmon",
                "podman",
                "docker-init",
                "tini",
                "catatonit",
                "dumb-init",
                "cron",
                "atd",
            ]),
            shells: names(&["sh", "bash", "dash", "zsh", "ash", "ksh", "busybox"]),
            tools: names(&[
                "id", "whoami", "uname", "hostname", "cat", "ip", "ifconfig", "ss", "netstat",
                "ps", "curl", "wget", "nc", "ncat", "netcat", "socat", "gcc", "cc", "c++", "g++",
                "clang", "tcc", "chmod",
            ]),
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
    /// The shell's name (as in `shells`), or the tool's (as in `tools`).
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
    /// Host CPU % more than this many points over the learned baseline for `sustain`, while
    /// no process is above `cpu_percent`, raises a `resource` alert that names no process.
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
    /// At most this many new alerts per origin (the culprit's uid and executable) and minute;
    /// past it, the origin's findings fold into one `switch_flood` alert whose count grows
    /// (their targets still join decisions). 0: no budget.
    pub per_origin_per_minute: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(600),
            per_origin_per_minute: 20,
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
    // The pattern must match the whole string: `^sh -c git (pull|fetch)` must not allow
    // `sh -c git pull; curl … | sh`.
    regex::Regex::new(&text)
        .and_then(|_| regex::Regex::new(&format!("^(?:{text})$")))
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid regular expression {text:?}: {e}")))
}

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

    /// Parse and validate TOML text; `path` only names the source in errors, which list
    /// every problem found.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        match Self::check(text) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(ConfigError::Invalid {
                path: path.into(),
                problems,
            }),
        }
    }

    /// Parse TOML text and find every problem: the config as far as it could be read
    /// (defaults in place of the keys that failed; `None` when the TOML itself is broken),
    /// and the problems.
    pub fn check(text: &str) -> (Option<Self>, Vec<Problem>) {
        check::read(text)
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
