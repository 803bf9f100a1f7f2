//! Which keys of the config hold secrets, and whether the files that hold secrets are the
//! admin's (see `secret_file`): the config file itself when it holds one, and the fleet
//! password file. `sentinel run` refuses to start on any problem found here and
//! `sentinel check-config` lists them. The override key is checked where it is read
//! (`override_http::Secret::load`).

use std::path::Path;

use super::{Config, Problem};
use crate::secret_file::{self, Readers};

impl Config {
    /// The keys set in this config whose values are secrets: signing secrets and tokens, and
    /// webhook URLs and a password inside `fleet.postgres_url` (bearer secrets too).
    pub fn secrets_held(&self) -> Vec<&'static str> {
        let n = &self.notify;
        [
            ("notify.slack.webhook_url", !n.slack.webhook_url.is_empty()),
            (
                "notify.slack.signing_secret",
                !n.slack.signing_secret.is_empty(),
            ),
            ("notify.teams.webhook_url", !n.teams.webhook_url.is_empty()),
            (
                "notify.telegram.bot_token",
                !n.telegram.bot_token.is_empty(),
            ),
            ("fleet.postgres_url", self.fleet.url_has_password()),
        ]
        .into_iter()
        .filter_map(|(key, held)| held.then_some(key))
        .collect()
    }
}

/// Every problem with the files holding the config's secrets: the config file at `path`
/// (when it holds a secret: owned by root, not writable by group or others, not readable by
/// others) and `fleet.postgres_password_file` (owned by root, private: 0600 or 0400).
pub fn secret_file_problems(path: &Path, config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let held = config.secrets_held();
    if !held.is_empty()
        && let Err(e) = secret_file::check_path(path, &held.join(", "), Readers::Group)
    {
        out.push(Problem::new("config", e.to_string()));
    }
    let password = &config.fleet.postgres_password_file;
    if config.fleet.enabled()
        && !password.as_os_str().is_empty()
        && let Err(e) = secret_file::check_path(password, "the fleet password", Readers::Owner)
    {
        out.push(Problem::new("fleet.postgres_password_file", e.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn the_secrets_a_config_holds_are_named() {
        assert!(config("").secrets_held().is_empty());
        let c = config(
            "[notify.telegram]\nbot_token = \"123:abc\"\nchat_id = \"1\"\n\
             [notify.teams]\nwebhook_url = \"https://example.invalid/hook\"\n\
             [override]\npublic_url = \"https://sentinel.example\"\n",
        );
        assert_eq!(
            c.secrets_held(),
            ["notify.teams.webhook_url", "notify.telegram.bot_token"]
        );
        let without = config("[fleet]\npostgres_url = \"postgresql://agent@db.example/fleet\"\n");
        assert!(without.secrets_held().is_empty());
        let with = config("[fleet]\npostgres_url = \"postgresql://agent:pw@db.example/fleet\"\n");
        assert_eq!(with.secrets_held(), ["fleet.postgres_url"]);
    }

    #[test]
    fn a_config_readable_by_others_is_refused_only_when_it_holds_a_secret() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (files must be root's)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sentinel.toml");
        let plain = "[switch]\ncountdown = \"1m\"\n";
        fs::write(&path, plain).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(secret_file_problems(&path, &config(plain)).is_empty());
        let secret = "[notify.telegram]\nbot_token = \"123:abc\"\nchat_id = \"1\"\n";
        let problems: Vec<String> = secret_file_problems(&path, &config(secret))
            .iter()
            .map(ToString::to_string)
            .collect();
        let p = path.display();
        assert_eq!(
            problems,
            [format!(
                "config: {p} is readable by others and holds notify.telegram.bot_token: \
                 chmod o-rwx {p}"
            )]
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(secret_file_problems(&path, &config(secret)).is_empty());
    }

    #[test]
    fn the_fleet_password_file_must_be_private_and_roots() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (to give a file away)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("sentinel.toml");
        let password = dir.path().join("pg.password");
        fs::write(&password, "pw\n").unwrap();
        fs::set_permissions(&password, fs::Permissions::from_mode(0o640)).unwrap();
        let c = config(&format!(
            "[fleet]\npostgres_url = \"postgresql://agent@db.example/fleet\"\n\
             postgres_password_file = \"{}\"\n",
            password.display()
        ));
        let problems = secret_file_problems(&config_path, &c);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .to_string()
                .starts_with("fleet.postgres_password_file: ")
                && problems[0]
                    .reason
                    .ends_with(&format!("chmod go-rwx {}", password.display())),
            "{problems:?}"
        );
        fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(secret_file_problems(&config_path, &c).is_empty());
        nix::unistd::chown(&password, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let problems = secret_file_problems(&config_path, &c);
        assert!(problems[0].reason.contains("not root"), "{problems:?}");
    }
}
