//! `sentinel reload`, SIGHUP and `systemctl reload sentinel`: re-read the configuration file
//! and the country database without a restart, so that the programs stay attached, pending
//! decisions keep their countdowns and nothing is missed meanwhile.
//!
//! What can change at run time is `[geo]` (the database is re-opened from `geo.database`,
//! `geo.enabled`, `geo.high_risk_countries`); every other key is wired into a part started
//! once (programs, the store, the switch, chat, sockets), so a change to it is named in the
//! answer as needing a restart, and the rest of the reload still applies. A config that does
//! not validate, or a database that does not open, changes nothing: the agent keeps running
//! on what it had.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::{config::Config, daemon::pipeline::Pipeline, detect, enrich::geo::CountryDb};

/// Keys (and key prefixes, ending in `.`) that a reload applies.
const LIVE: &[&str] = &["geo."];

/// A reload asked for on the CLI socket, with where its answer goes.
#[derive(Debug)]
pub struct Request {
    pub reply: oneshot::Sender<Result<Reloaded, String>>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The country database now in use (`describe()`), or why there is none.
    pub geo: String,
    /// Changed keys that took effect.
    pub applied: Vec<String>,
    /// Changed keys that cannot change at run time: in force after a restart.
    pub needs_restart: Vec<String>,
}

/// The configuration file as the running agent applied it.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    /// A missing file means the defaults (only at the default path, as at start).
    optional: bool,
    /// Its keys as applied, flattened (`section.key` → value).
    applied: BTreeMap<String, toml::Value>,
}

impl Source {
    /// The file the agent started on (read again just after the config was loaded).
    pub fn new(path: &Path, optional: bool) -> Source {
        let applied = read(path, optional)
            .ok()
            .and_then(|text| flatten(&text).ok())
            .unwrap_or_default();
        Source {
            path: path.to_owned(),
            optional,
            applied,
        }
    }
}

fn read(path: &Path, optional: bool) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Every leaf key of a TOML document as `section.key` (arrays, arrays of tables included, are
/// leaves).
fn flatten(text: &str) -> Result<BTreeMap<String, toml::Value>, String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
        for (key, value) in table {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(t) => walk(&name, t, out),
                other => {
                    out.insert(name, other.clone());
                }
            }
        }
    }
    let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let mut out = BTreeMap::new();
    walk("", &table, &mut out);
    Ok(out)
}

/// The keys whose values differ between `old` and `new` (added and removed ones too).
fn changed_keys(
    old: &BTreeMap<String, toml::Value>,
    new: &BTreeMap<String, toml::Value>,
) -> Vec<String> {
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn is_live(key: &str) -> bool {
    LIVE.iter()
        .any(|l| key == *l || (l.ends_with('.') && key.starts_with(l)))
}

/// Re-read the config file and the country database and apply what can change at run time.
pub fn reload(core: &mut Pipeline, source: &mut Source) -> Result<Reloaded, String> {
    let text = read(&source.path, source.optional)?;
    let config = Config::parse(&text, &source.path).map_err(|e| format!("{e}"))?;
    let new = flatten(&text)?;
    let changed = changed_keys(&source.applied, &new);
    let (applied, needs_restart): (Vec<String>, Vec<String>) =
        changed.into_iter().partition(|k| is_live(k));

    // Open first: a database that does not open leaves the running one in place.
    let geoip = if config.geo.enabled {
        Some(CountryDb::open_mapped(&config.geo.database).map_err(|e| {
            format!("{e} (the agent keeps the database it had; fix the file and reload again)")
        })?)
    } else {
        None
    };
    let geo = geoip.as_ref().map_or_else(
        || "geo.enabled = false: no database".into(),
        CountryDb::describe,
    );
    core.detect.geoip = geoip;
    core.detect.geo = detect::geo::Geo::new(&config.geo.high_risk_countries);
    for key in &applied {
        match new.get(key) {
            Some(value) => source.applied.insert(key.clone(), value.clone()),
            None => source.applied.remove(key),
        };
    }
    Ok(Reloaded {
        geo,
        applied,
        needs_restart,
    })
}

/// Say in the log what a reload did (SIGHUP has no one else to tell).
pub fn log(outcome: &Result<Reloaded, String>) {
    match outcome {
        Ok(r) => {
            info!(geo = %r.geo, applied = ?r.applied, "configuration and GeoIP database reloaded");
            if !r.needs_restart.is_empty() {
                warn!(
                    keys = ?r.needs_restart,
                    "changed keys that cannot change at run time: restart the agent to apply them"
                );
            }
        }
        Err(e) => warn!("reload refused, nothing changed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_names_leaves_added_removed_and_changed() {
        let old =
            flatten("[geo]\nenabled = true\n[enforce]\ntable = \"a\"\nkill = false\n").unwrap();
        let new =
            flatten("[geo]\nenabled = false\n[enforce]\ntable = \"b\"\n[agent]\nid = \"x\"\n")
                .unwrap();
        assert_eq!(
            changed_keys(&old, &new),
            ["agent.id", "enforce.kill", "enforce.table", "geo.enabled"]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn only_geo_is_live() {
        assert!(is_live("geo.database"));
        assert!(is_live("geo.high_risk_countries"));
        assert!(!is_live("geography"));
        assert!(!is_live("enforce.table"));
        assert!(!is_live("agent.log_level"));
    }
}
