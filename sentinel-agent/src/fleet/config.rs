//! `[fleet]`: where the fleet store is and how the agent ships to it. The URL is parsed and
//! checked like every other key, but it may carry a password, so no message here (or
//! anywhere) ever repeats it; the password is better kept in `postgres_password_file` or the
//! standard `PGPASSWORD`. The connection settings libpq users expect from the environment
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`) fill in whatever
//! the URL leaves out.
//!
//! TLS by default: unless every host of the URL is a unix socket or loopback, the connection
//! uses TLS and verifies the server's certificate and name (`fleet.ca_file`, else the system's
//! roots) — Sentinel verifies whenever it uses TLS, so `require`, `verify-ca` and
//! `verify-full` all mean `verify-full`. `prefer`, `allow` and `disable` would let an on-path
//! attacker downgrade to plaintext: refused unless `fleet.insecure = true`.

use std::{path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;
use tokio_postgres::config::{Host, SslMode};

use crate::{
    config::{Problem, duration},
    fleet::sign::Keyring,
};

/// The `[fleet]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// `postgresql://user@host:port/db?sslmode=require` (or libpq `key=value` form); empty:
    /// the agent ships nothing and `sentinel fleet` has nowhere to look.
    pub postgres_url: String,
    /// A file holding the password (first line), read at start; empty: the URL's, or
    /// `PGPASSWORD`.
    pub postgres_password_file: PathBuf,
    /// Most rows sent in one transaction.
    pub batch: usize,
    /// Most rows the outbox keeps while the store cannot be reached; past it the oldest go
    /// (alerts first) and are counted (`status`, metrics and the fleet view show how many).
    pub outbox_max_rows: u64,
    /// How often the outbox is shipped (and answers polled when notifications are missed).
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// How often the host reports that it is alive; `sentinel fleet hosts` marks a host
    /// silent after three missed heartbeats.
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Also ship raw exec/connect/cpu events (many rows: size the database for it).
    pub ship_events: bool,
    /// Block on this host what a human confirmed as hostile on any host of the fleet (each
    /// address still passes this host's own guard), and lift it when the fleet view does.
    pub share_blocks: bool,
    /// The CA certificate(s), PEM, that the fleet store's certificate must chain to; empty:
    /// the system's root certificates.
    pub ca_file: PathBuf,
    /// Allow `sslmode=prefer|allow|disable` to a store that is not local (plaintext on the
    /// network: an on-path attacker reads the password and can pose as the store).
    pub insecure: bool,
    /// The operators' public keys (`NAME:HEX`, as `sentinel fleet keygen` prints them): only
    /// answers, shared blocks and lifts signed by one of them are acted on. Several keys may
    /// share a name (rotation).
    pub operator_keys: Vec<String>,
    /// `sentinel fleet decide|block|unblock`: the operator's private key (mode 0600); never on
    /// a host. `--key` overrides it.
    pub operator_key_file: PathBuf,
    /// An answer signed longer ago than this is refused.
    #[serde(deserialize_with = "duration")]
    pub answer_ttl: Duration,
    /// Also apply shared blocks that no operator signed, published by another host when a
    /// human confirmed a block there (that host, if compromised, chooses them).
    pub accept_unsigned_shares: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            postgres_url: String::new(),
            postgres_password_file: PathBuf::new(),
            batch: 500,
            outbox_max_rows: crate::fleet::outbox::MAX_ROWS,
            interval: Duration::from_secs(1),
            heartbeat: Duration::from_secs(10),
            ship_events: false,
            share_blocks: false,
            ca_file: PathBuf::new(),
            insecure: false,
            operator_keys: Vec::new(),
            operator_key_file: PathBuf::new(),
            answer_ttl: Duration::from_secs(600),
            accept_unsigned_shares: false,
        }
    }
}

/// Why the PostgreSQL settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgConfigError {
    #[error("fleet.postgres_url is empty: the fleet store is off")]
    Off,
    /// The parser's message can quote the URL: only say where the problem is.
    #[error("fleet.postgres_url is not a PostgreSQL URL or key=value string")]
    Url,
    #[error("fleet.postgres_password_file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error(
        "fleet.postgres_url: sslmode={0} to {1}, which is not local, would allow plaintext (an \
         on-path attacker reads the password and can pose as the store): use \
         sslmode=verify-full with fleet.ca_file, or set fleet.insecure = true on purpose"
    )]
    Plaintext(&'static str, String),
}

impl FleetConfig {
    pub fn enabled(&self) -> bool {
        !self.postgres_url.is_empty()
    }

    /// `postgres_url` parsed as it is (the client library knows only `disable`, `prefer` and
    /// `require`: `verify-ca` and `verify-full` are read as `require`, which Sentinel always
    /// verifies fully, and `allow` as `prefer`).
    fn parse(&self) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        let url = self
            .postgres_url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require")
            .replace("sslmode=allow", "sslmode=prefer");
        tokio_postgres::Config::from_str(&url)
    }

    /// Whether `postgres_url` itself carries a password (which makes the config file a
    /// secret-holding file).
    pub fn url_has_password(&self) -> bool {
        self.enabled() && self.parse().is_ok_and(|c| c.get_password().is_some())
    }

    /// Everything wrong with the section, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, reason: String| out.push(Problem::new(key, reason));
        if self.enabled() && self.parse().is_err() {
            bad(
                "fleet.postgres_url",
                "is not a PostgreSQL URL (postgresql://user@host:port/db) or key=value string \
                 (not repeated here: it may hold a password)"
                    .into(),
            );
        }
        let file = &self.postgres_password_file;
        if !file.as_os_str().is_empty() {
            if !self.enabled() {
                bad(
                    "fleet.postgres_password_file",
                    "is set but fleet.postgres_url is empty".into(),
                );
            } else if let Err(e) = std::fs::metadata(file) {
                bad(
                    "fleet.postgres_password_file",
                    format!("{}: {e}", file.display()),
                );
            }
        }
        if !self.ca_file.as_os_str().is_empty()
            && let Err(e) = std::fs::metadata(&self.ca_file)
        {
            bad("fleet.ca_file", format!("{}: {e}", self.ca_file.display()));
        }
        if let Err(e @ PgConfigError::Plaintext(..)) = self.pg_config_with(|_| None) {
            bad(
                "fleet.postgres_url",
                e.to_string()
                    .trim_start_matches("fleet.postgres_url: ")
                    .into(),
            );
        }
        if !(1..=10_000).contains(&self.batch) {
            bad(
                "fleet.batch",
                format!("{} is not between 1 and 10000", self.batch),
            );
        }
        if !(10..=10_000_000).contains(&self.outbox_max_rows) {
            bad(
                "fleet.outbox_max_rows",
                format!("{} is not between 10 and 10000000", self.outbox_max_rows),
            );
        }
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(300) {
            bad(
                "fleet.interval",
                format!(
                    "{} is not between 100ms and 5m",
                    humantime::format_duration(self.interval)
                ),
            );
        }
        if self.heartbeat < Duration::from_secs(1) || self.heartbeat > Duration::from_secs(3600) {
            bad(
                "fleet.heartbeat",
                format!(
                    "{} is not between 1s and 1h",
                    humantime::format_duration(self.heartbeat)
                ),
            );
        }
        if let Err(bad) = Keyring::parse(&self.operator_keys) {
            for (i, why) in bad {
                out.push(Problem::new(
                    "fleet.operator_keys",
                    format!("entry {} {why}", i + 1),
                ));
            }
        }
        if self.answer_ttl < Duration::from_secs(10)
            || self.answer_ttl > Duration::from_secs(86_400)
        {
            out.push(Problem::new(
                "fleet.answer_ttl",
                format!(
                    "{} is not between 10s and 24h",
                    humantime::format_duration(self.answer_ttl)
                ),
            ));
        }
        out
    }

    /// The operators' public keys (entries that do not parse are left out: `problems` names
    /// them, and a config with problems does not start).
    pub fn keyring(&self) -> Keyring {
        Keyring(
            self.operator_keys
                .iter()
                .filter_map(|k| k.parse().ok())
                .collect(),
        )
    }

    /// The connection settings: the URL, then the password file, then the `PG*` environment
    /// for what is still missing. A connect timeout of 5 s unless the URL sets one.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, PgConfigError> {
        self.pg_config_with(|var| std::env::var(var).ok())
    }

    fn pg_config_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<tokio_postgres::Config, PgConfigError> {
        if !self.enabled() {
            return Err(PgConfigError::Off);
        }
        let mut c = self.parse().map_err(|_| PgConfigError::Url)?;
        let mut explicit = self
            .postgres_url
            .contains("sslmode")
            .then(|| mode_name(&self.postgres_url));
        if c.get_hosts().is_empty() {
            match env("PGHOST") {
                Some(hosts) => {
                    for h in hosts.split(',') {
                        if h.starts_with('/') {
                            c.host_path(h);
                        } else {
                            c.host(h);
                        }
                    }
                }
                None => {
                    c.host_path("/var/run/postgresql");
                }
            }
        }
        if c.get_ports().is_empty()
            && let Some(port) = env("PGPORT")
        {
            let port = port.parse().map_err(|_| PgConfigError::Env {
                var: "PGPORT",
                reason: format!("{port:?} is not a port"),
            })?;
            c.port(port);
        }
        if c.get_user().is_none()
            && let Some(user) = env("PGUSER")
        {
            c.user(&user);
        }
        if c.get_dbname().is_none()
            && let Some(db) = env("PGDATABASE")
        {
            c.dbname(&db);
        }
        if explicit.is_none()
            && let Some(mode) = env("PGSSLMODE")
        {
            explicit = Some(match mode.as_str() {
                "disable" => "disable",
                "allow" => "allow",
                "prefer" => "prefer",
                _ => "require",
            });
            c.ssl_mode(match mode.as_str() {
                "disable" => SslMode::Disable,
                "prefer" | "allow" => SslMode::Prefer,
                "require" | "verify-ca" | "verify-full" => SslMode::Require,
                other => {
                    return Err(PgConfigError::Env {
                        var: "PGSSLMODE",
                        reason: format!("{other:?} is not an sslmode"),
                    });
                }
            });
        }
        if !is_local(&c) {
            match (c.get_ssl_mode(), explicit) {
                (SslMode::Require, _) => {}
                (_, None) => {
                    c.ssl_mode(SslMode::Require);
                }
                (_, Some(mode)) if !self.insecure => {
                    return Err(PgConfigError::Plaintext(mode, describe(&c)));
                }
                _ => {}
            }
        }
        if c.get_password().is_none() {
            let file = &self.postgres_password_file;
            if !file.as_os_str().is_empty() {
                let text = std::fs::read_to_string(file).map_err(|source| {
                    PgConfigError::PasswordFile {
                        path: file.clone(),
                        source,
                    }
                })?;
                c.password(text.lines().next().unwrap_or_default());
            } else if let Some(pw) = env("PGPASSWORD") {
                c.password(pw);
            }
        }
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(Duration::from_secs(5));
        }
        if c.get_application_name().is_none() {
            c.application_name("sentinel");
        }
        Ok(c)
    }
}

/// The `sslmode` a URL names (only to say it back): `disable`, `allow`, `prefer` or another.
fn mode_name(url: &str) -> &'static str {
    for mode in ["disable", "allow", "prefer"] {
        if url.contains(&format!("sslmode={mode}")) || url.contains(&format!("sslmode = {mode}")) {
            return mode;
        }
    }
    "require"
}

/// Whether every host is a unix socket or a loopback address (no network to cross).
pub fn is_local(c: &tokio_postgres::Config) -> bool {
    c.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        }
    }) && c.get_hostaddrs().iter().all(|a| a.is_loopback())
}

/// Where the store is, for messages: hosts and port, never user or password.
pub fn describe(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}:{port}/{}",
        hosts.join(","),
        c.get_dbname().unwrap_or("(default db)")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> FleetConfig {
        FleetConfig {
            postgres_url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_off_and_valid() {
        let c = FleetConfig::default();
        assert!(!c.enabled());
        assert!(c.problems().is_empty());
        assert!(matches!(c.pg_config(), Err(PgConfigError::Off)));
    }

    #[test]
    fn the_shipped_config_comments_the_defaults() {
        let text = include_str!("../../../config/sentinel.toml");
        let c = crate::config::Config::parse(text, std::path::Path::new("sentinel.toml"))
            .unwrap()
            .fleet;
        let d = FleetConfig::default();
        assert_eq!(
            (&c.postgres_url, &c.postgres_password_file, c.batch),
            (&d.postgres_url, &d.postgres_password_file, d.batch)
        );
        assert_eq!(
            (c.interval, c.heartbeat, c.ship_events, c.share_blocks),
            (d.interval, d.heartbeat, d.ship_events, d.share_blocks)
        );
        assert_eq!((&c.ca_file, c.insecure), (&d.ca_file, d.insecure));
        assert_eq!(
            (&c.operator_keys, &c.operator_key_file, c.answer_ttl),
            (&d.operator_keys, &d.operator_key_file, d.answer_ttl)
        );
        assert_eq!(c.accept_unsigned_shares, d.accept_unsigned_shares);
    }

    #[test]
    fn a_bad_url_is_named_but_never_repeated() {
        let c = cfg("postgresql://u:s3cret@host:notaport/db");
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "fleet.postgres_url");
        assert!(!p[0].reason.contains("s3cret"));
        let e = c.pg_config().unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        let c = FleetConfig {
            batch: 0,
            outbox_max_rows: 0,
            interval: Duration::from_millis(10),
            heartbeat: Duration::from_secs(7200),
            postgres_password_file: "/nonexistent/pw".into(),
            ..Default::default()
        };
        let problems = c.problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "fleet.postgres_password_file",
                "fleet.batch",
                "fleet.outbox_max_rows",
                "fleet.interval",
                "fleet.heartbeat"
            ]
        );
    }

    #[test]
    fn environment_fills_what_the_url_leaves_out() {
        let env = |var: &str| {
            Some(
                match var {
                    "PGHOST" => "/tmp/pg",
                    "PGPORT" => "6543",
                    "PGUSER" => "envuser",
                    "PGPASSWORD" => "envpw",
                    "PGDATABASE" => "envdb",
                    "PGSSLMODE" => "require",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let c = cfg("postgresql://").pg_config_with(env).unwrap();
        assert_eq!(c.get_ports(), [6543]);
        assert_eq!(c.get_user(), Some("envuser"));
        assert_eq!(c.get_password(), Some(&b"envpw"[..]));
        assert_eq!(c.get_dbname(), Some("envdb"));
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(describe(&c), "/tmp/pg:6543/envdb");
        // The URL wins over the environment.
        let c = FleetConfig {
            insecure: true,
            ..cfg("postgresql://u:urlpw@db.example:5433/fleet?sslmode=disable")
        }
        .pg_config_with(env)
        .unwrap();
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.get_password(), Some(&b"urlpw"[..]));
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
        assert_eq!(describe(&c), "db.example:5433/fleet");
    }

    #[test]
    fn the_password_file_comes_before_pgpassword() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = FleetConfig {
            postgres_password_file: file,
            ..cfg("postgresql://u@localhost/db")
        };
        let pg = c
            .pg_config_with(|v| (v == "PGPASSWORD").then(|| "env".to_string()))
            .unwrap();
        assert_eq!(pg.get_password(), Some(&b"from-file"[..]));
    }

    #[test]
    fn a_store_across_the_network_gets_verified_tls_by_default() {
        let none = |_: &str| None;
        for url in [
            "postgresql://web1@db.example:5432/fleet",
            "postgresql://web1@198.51.100.7/fleet",
            "postgresql://web1@db.example/fleet?sslmode=require",
            "postgresql://web1@db.example/fleet?sslmode=verify-full",
            "host=db.example user=web1 sslmode=verify-ca",
        ] {
            let c = cfg(url).pg_config_with(none).unwrap();
            assert_eq!(c.get_ssl_mode(), SslMode::Require, "{url}");
            assert!(cfg(url).problems().is_empty(), "{url}");
        }
        // PGSSLMODE=verify-full too.
        let c = cfg("postgresql://web1@db.example/fleet")
            .pg_config_with(|v| (v == "PGSSLMODE").then(|| "verify-full".to_string()))
            .unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn plaintext_across_the_network_is_refused_unless_insecure() {
        let none = |_: &str| None;
        for (url, mode) in [
            (
                "postgresql://web1@db.example/fleet?sslmode=disable",
                "disable",
            ),
            (
                "postgresql://web1@198.51.100.7/fleet?sslmode=prefer",
                "prefer",
            ),
            (
                "postgresql://web1@198.51.100.7/fleet?sslmode=allow",
                "allow",
            ),
            ("host=db.example user=web1 sslmode=disable", "disable"),
        ] {
            let e = cfg(url).pg_config_with(none).unwrap_err().to_string();
            assert!(e.contains(&format!("sslmode={mode}")), "{e}");
            assert!(e.contains("fleet.insecure = true"), "{e}");
            let p = cfg(url).problems();
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].key, "fleet.postgres_url");
            assert!(p[0].reason.contains("plaintext"), "{p:?}");
            let insecure = FleetConfig {
                insecure: true,
                ..cfg(url)
            };
            assert_ne!(
                insecure.pg_config_with(none).unwrap().get_ssl_mode(),
                SslMode::Require
            );
            assert!(insecure.problems().is_empty());
        }
        let e = cfg("postgresql://web1@db.example/fleet")
            .pg_config_with(|v| (v == "PGSSLMODE").then(|| "disable".to_string()))
            .unwrap_err();
        assert!(matches!(e, PgConfigError::Plaintext("disable", _)), "{e}");
    }

    #[test]
    fn a_local_store_may_go_without_tls() {
        let none = |_: &str| None;
        for url in [
            "postgresql://web1@127.0.0.1:5432/fleet?sslmode=disable",
            "postgresql://web1@localhost/fleet?sslmode=disable",
            "postgresql://web1@[::1]/fleet?sslmode=disable",
            "host=/var/run/postgresql user=web1 sslmode=disable",
            "postgresql://web1@127.0.0.1/fleet",
        ] {
            let c = cfg(url).pg_config_with(none).unwrap();
            assert_ne!(c.get_ssl_mode(), SslMode::Require, "{url}");
        }
        let c = cfg("postgresql://web1@db.example/fleet?hostaddr=198.51.100.7&sslmode=disable");
        assert!(c.pg_config_with(none).is_err());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let c = FleetConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..cfg("postgresql://web1@db.example/fleet")
        };
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "fleet.ca_file");
    }
}
