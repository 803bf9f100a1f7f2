//! `switch_flood`: someone impairs the agent itself (SPEC §3, high, T1562 Impair Defenses).
//! SPEC names two ways: an origin that keeps opening decisions or alerts past its budget, and a
//! watched file the agent cannot read. This module holds the second (T1562.001 Disable or
//! Modify Tools): a cron file or directory that exists but refuses the agent (`EACCES`,
//! `EPERM`) is persistence the agent is blind to — a per-user crontab is mode 0600 and owned by
//! its user, and a root agent without `CAP_DAC_READ_SEARCH` cannot open it. Silence would look
//! exactly like "nothing suspicious", so the refusal is an alert of its own: once per path,
//! again only after the path was readable (or gone) in between.

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
};

use super::{Anomaly, Culprit, Finding, cron};

/// The watched paths that refused the agent at their last read.
#[derive(Debug, Default)]
pub struct Blindspots {
    refused: HashSet<PathBuf>,
}

impl Blindspots {
    pub fn new() -> Self {
        Self::default()
    }

    /// What reading `path` gave (`Ok` when it was read): a finding when it refused the agent
    /// and did not at the last read.
    pub fn read(&mut self, path: &Path, result: Result<(), &io::Error>) -> Option<Finding> {
        match result {
            Err(e) if refused(e) => self
                .refused
                .insert(path.to_path_buf())
                .then(|| finding(path, e)),
            // Readable, or gone: a later refusal is news again.
            Ok(()) => {
                self.refused.remove(path);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.refused.remove(path);
                None
            }
            Err(_) => None,
        }
    }
}

/// Whether `e` is a permission refusal (`EACCES` or `EPERM`), not a missing or odd file.
pub fn refused(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
}

/// The finding for a watched `path` the agent could not read.
fn finding(path: &Path, e: &io::Error) -> Finding {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Finding {
        domain: None,
        anomaly: Anomaly::SwitchFlood { unreadable: true },
        // No process to blame (the owner may be anyone's): pid 0 never matches a process, so
        // no kill and no decision can follow.
        culprit: Culprit {
            pid: 0,
            start: 0,
            comm: name.chars().take(15).collect(),
            exe: Some(path.display().to_string().into()),
            uid: u32::MAX,
            ancestry: Vec::new(),
            container: None,
        },
        target: None,
        country: None,
        detail: format!(
            "cannot read the watched path {}: {e}. Changes to it go unseen (cron persistence \
             there raises nothing). The agent needs CAP_DAC_READ_SEARCH, which the shipped \
             unit keeps (config/sentinel.service); check drop-ins that change \
             CapabilityBoundingSet=, and any security module refusing the agent",
            path.display()
        ),
        subject: cron::subject(path),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::detect::{Alerts, Outcome, Severity, kills};

    fn eacces() -> io::Error {
        io::Error::from_raw_os_error(libc::EACCES)
    }

    #[test]
    fn a_refused_path_raises_once_until_it_was_readable_again() {
        let path = Path::new("/var/spool/cron/crontabs/www-data");
        let mut spots = Blindspots::new();
        let f = spots.read(path, Err(&eacces())).expect("a finding");
        assert_eq!(f.anomaly.name(), "switch_flood");
        assert_eq!(f.anomaly.severity(), Severity::High);
        let mitre = f.anomaly.mitre();
        assert_eq!(
            (mitre.technique.as_str(), mitre.tactic.as_str()),
            ("T1562.001", "Defense Evasion")
        );
        assert!(f.detail.contains(path.to_str().unwrap()), "{}", f.detail);
        assert!(f.detail.contains("Permission denied"), "{}", f.detail);
        assert!(f.detail.contains("CAP_DAC_READ_SEARCH"), "{}", f.detail);
        assert_eq!(f.culprit.pid, 0);
        assert!(f.target.is_none());
        // Every later change that is refused too: nothing new.
        assert!(spots.read(path, Err(&eacces())).is_none());
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert!(spots.read(path, Err(&eperm)).is_none());
        // Readable, then refused again: news again.
        assert!(spots.read(path, Ok(())).is_none());
        assert!(spots.read(path, Err(&eperm)).is_some());
        // Removed, then back and refused: news again.
        let gone = io::Error::from_raw_os_error(libc::ENOENT);
        assert!(spots.read(path, Err(&gone)).is_none());
        assert!(spots.read(path, Err(&eacces())).is_some());
        // Another path is another alert.
        assert!(
            spots
                .read(Path::new("/etc/cron.d"), Err(&eacces()))
                .is_some()
        );
    }

    #[test]
    fn readable_missing_and_odd_paths_raise_nothing() {
        let mut spots = Blindspots::new();
        let path = Path::new("/etc/crontab");
        assert!(spots.read(path, Ok(())).is_none());
        for errno in [libc::ENOENT, libc::EIO, libc::ELOOP, libc::ENXIO] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(spots.read(path, Err(&e)).is_none(), "{e}");
        }
    }

    #[test]
    fn the_alert_never_kills_and_has_no_target() {
        let mut alerts = Alerts::new(Duration::from_secs(60));
        let mut spots = Blindspots::new();
        let f = spots
            .read(Path::new("/etc/cron.d/job"), Err(&eacces()))
            .unwrap();
        let Outcome::New(alert) = alerts.raise(f, Instant::now()) else {
            panic!("not raised")
        };
        assert_eq!(
            (alert.anomaly.as_str(), alert.severity.as_str()),
            ("switch_flood", "high")
        );
        assert_eq!(alert.target_ip, None);
        assert!(!kills(&alert));
    }
}
