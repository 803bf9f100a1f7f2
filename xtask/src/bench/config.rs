//! The agent's config for the benchmarks: its own db and socket and dry-run enforcement, so
//! the host's firewall is never touched (the sensors are what is measured). bench-cost adds
//! what a production host has configured besides the default config (every sensor and
//! detector is on by default): the fleet store, a chat channel with its override endpoint,
//! and the metrics endpoint, each pointing at a server the bench runs itself on loopback.

use std::os::unix::fs::OpenOptionsExt as _;

use super::*;

/// What the agent is configured with besides its own db, socket and dry-run.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub(super) struct Extras {
    /// `agent.id`: the fleet role the agent ships under.
    pub(super) id: Option<String>,
    pub(super) fleet: Option<FleetKeys>,
    pub(super) chat: Option<ChatKeys>,
    /// `metrics.listen`.
    pub(super) metrics: Option<SocketAddr>,
}

/// The `[fleet]` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FleetKeys {
    pub(super) postgres_url: String,
    pub(super) password_file: PathBuf,
    /// The operator's public key, `NAME:HEX`.
    pub(super) operator_key: String,
}

/// `[notify.slack]` and the `[override]` endpoint its buttons need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChatKeys {
    pub(super) webhook_url: String,
    pub(super) signing_secret: String,
    /// `override.listen`, also its `public_url`.
    pub(super) override_listen: SocketAddr,
    pub(super) override_key_file: PathBuf,
}

/// The config text; paths and values quoted as TOML basic strings.
pub(super) fn bench_config(dir: &Path, extras: &Extras) -> String {
    let quote = |s: &str| format!("{s:?}");
    let path = |p: &Path| quote(&p.display().to_string());
    let mut text = String::from("[agent]\n");
    if let Some(id) = &extras.id {
        text += &format!("id = {}\n", quote(id));
    }
    text += &format!(
        "db = {}\nsocket = {}\n[enforce]\nmode = \"dry-run\"\n",
        path(&dir.join("bench.db")),
        path(&dir.join("bench.sock"))
    );
    if let Some(fleet) = &extras.fleet {
        text += &format!(
            "[fleet]\npostgres_url = {}\npostgres_password_file = {}\noperator_keys = [{}]\n",
            quote(&fleet.postgres_url),
            path(&fleet.password_file),
            quote(&fleet.operator_key)
        );
    }
    if let Some(chat) = &extras.chat {
        text += &format!(
            "[override]\nlisten = {}\npublic_url = {}\nsecret_file = {}\n\
             [notify.slack]\nwebhook_url = {}\nsigning_secret = {}\n",
            quote(&chat.override_listen.to_string()),
            quote(&format!("http://{}", chat.override_listen)),
            path(&chat.override_key_file),
            quote(&chat.webhook_url),
            quote(&chat.signing_secret)
        );
    }
    if let Some(metrics) = extras.metrics {
        text += &format!("[metrics]\nlisten = {}\n", quote(&metrics.to_string()));
    }
    text
}

/// Write `text` to a new file only its owner (root) can read or write: the agent refuses a
/// config holding a webhook URL that others can read, and a key file that is not 0600.
pub(super) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A fresh work dir holding the agent's bench config with `extras` (made from the dir by
/// `extras`), and the config's path; says where it is.
pub(super) fn work_dir<T>(
    binary: &Path,
    extras: impl FnOnce(&Path) -> anyhow::Result<(Extras, T)>,
) -> anyhow::Result<(TempDir, PathBuf, T)> {
    let tmp = TempDir::create()?;
    let (extras, keep) = extras(tmp.path())?;
    let config = tmp.path().join("bench.toml");
    write_private(&config, &bench_config(tmp.path(), &extras))?;
    eprintln!(
        "agent {}; work dir {}; load average {}",
        binary.display(),
        tmp.path().display(),
        load_average()
    );
    Ok((tmp, config, keep))
}

/// A free TCP port on 127.0.0.1 (bound, then released for whoever needs it).
pub(super) fn free_loopback() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_quotes_paths() {
        let config = bench_config(Path::new("/tmp/sentinel-bench-1-2"), &Extras::default());
        assert_eq!(
            config,
            "[agent]\n\
             db = \"/tmp/sentinel-bench-1-2/bench.db\"\n\
             socket = \"/tmp/sentinel-bench-1-2/bench.sock\"\n\
             [enforce]\n\
             mode = \"dry-run\"\n"
        );
    }

    #[test]
    fn config_with_fleet_chat_and_metrics() {
        let extras = Extras {
            id: Some("bench-cost".into()),
            fleet: Some(FleetKeys {
                postgres_url: "postgresql://bench-cost@127.0.0.1:5433/postgres".into(),
                password_file: "/tmp/d/pg \"x\".password".into(),
                operator_key: "ops:00ff".into(),
            }),
            chat: Some(ChatKeys {
                webhook_url: "http://127.0.0.1:4000/slack".into(),
                signing_secret: "s3cret".into(),
                override_listen: "127.0.0.1:4001".parse().unwrap(),
                override_key_file: "/tmp/d/override.key".into(),
            }),
            metrics: Some("127.0.0.1:4002".parse().unwrap()),
        };
        let config = bench_config(Path::new("/tmp/d"), &extras);
        assert_eq!(
            config,
            "[agent]\n\
             id = \"bench-cost\"\n\
             db = \"/tmp/d/bench.db\"\n\
             socket = \"/tmp/d/bench.sock\"\n\
             [enforce]\n\
             mode = \"dry-run\"\n\
             [fleet]\n\
             postgres_url = \"postgresql://bench-cost@127.0.0.1:5433/postgres\"\n\
             postgres_password_file = \"/tmp/d/pg \\\"x\\\".password\"\n\
             operator_keys = [\"ops:00ff\"]\n\
             [override]\n\
             listen = \"127.0.0.1:4001\"\n\
             public_url = \"http://127.0.0.1:4001\"\n\
             secret_file = \"/tmp/d/override.key\"\n\
             [notify.slack]\n\
             webhook_url = \"http://127.0.0.1:4000/slack\"\n\
             signing_secret = \"s3cret\"\n\
             [metrics]\n\
             listen = \"127.0.0.1:4002\"\n"
        );
        let parsed: toml::Table = config.parse().expect("valid TOML");
        assert_eq!(
            parsed["fleet"]["postgres_password_file"].as_str(),
            Some("/tmp/d/pg \"x\".password")
        );
    }
}
