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
        }
    }
}

/// A human duration string (`"30s"`, `"5m"`, `"24h"`, `"1h 30m"`).
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
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
        if a.retention < Duration::from_secs(3600) {
            bad(
                "agent.retention",
                format!(
                    "{} is shorter than 1h",
                    humantime::format_duration(a.retention)
                ),
            );
        }
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
