//! Who wrote a persistence location: the writes the file watcher reports
//! (`sensors/persistence.rs`) attributed with the process tree, then judged
//! ([`detect::persistence`]). A write waits until its writer's records are in: the watcher's
//! event arrives at once, while the fork and exec records of a short-lived writer (`sh -c 'echo
//! x >> /etc/cron.d/y'`), all in the ring before the write happened, come with a later drain —
//! much later on a loaded host. The records travel in order, so once a record the kernel wrote
//! after the watcher read the write has been handled, the writer is in the tree (kept for a
//! second after its exit, with its ancestry); [`MAX_SETTLE`] when no record comes. A
//! suspicious line the `cron` detector found in the same file is a risk term of the alert.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use tracing::{debug, info};

use super::pipeline::Pipeline;
use crate::{
    detect::{
        self,
        persistence::{PersistenceConfig, Verdict, Write, Writer},
    },
    enrich::installed::SystemFiles,
    untrusted_file::{Links, UntrustedFile},
};

/// The longest a write waits for a younger kernel record.
const MAX_SETTLE: Duration = Duration::from_secs(3);

/// Most writes waiting at once; beyond it a write is attributed at once.
const MAX_WAITING: usize = 4096;

/// How long a suspicious cron line counts for a write to its file.
const CONTENT_TERM: Duration = Duration::from_secs(30);

/// The persistence detector's state in the event loop.
pub struct Persistence {
    config: PersistenceConfig,
    /// Writes not attributed yet, and when they arrived.
    waiting: VecDeque<(Instant, Write)>,
    /// The kernel time of the newest record handled (CLOCK_BOOTTIME, ns).
    handled_ns: u64,
    /// Cron files the `cron` detector lately found a suspicious line in, and when: a risk term
    /// of a write to them.
    suspicious: HashMap<PathBuf, Instant>,
    /// `/etc/passwd`'s text, re-read after it changed.
    passwd: Option<String>,
    etc: PathBuf,
}

impl Persistence {
    pub fn new(config: PersistenceConfig) -> Self {
        Self::with_etc(config, "/etc")
    }

    pub fn with_etc(config: PersistenceConfig, etc: impl Into<PathBuf>) -> Self {
        Self {
            config,
            waiting: VecDeque::new(),
            handled_ns: 0,
            suspicious: HashMap::new(),
            passwd: None,
            etc: etc.into(),
        }
    }

    /// When the oldest waiting write is due at the latest (a record may make it due sooner).
    pub fn due(&self) -> Option<Instant> {
        self.waiting.front().map(|(at, _)| *at + MAX_SETTLE)
    }

    /// Whether the write that arrived at `at` is due `now`.
    fn is_due(&self, at: Instant, write: &Write, now: Instant) -> bool {
        self.handled_ns > write.seen_ns || now.saturating_duration_since(at) >= MAX_SETTLE
    }

    /// The `cron` detector found a suspicious line in `path`.
    pub fn cron_suspicious(&mut self, path: PathBuf) {
        let now = Instant::now();
        if self.suspicious.len() >= MAX_WAITING {
            self.suspicious
                .retain(|_, at| now.saturating_duration_since(*at) < CONTENT_TERM);
        }
        self.suspicious.insert(path, now);
    }

    /// Whether `path` lately gained a line the `cron` detector found suspicious.
    fn has_suspicious_content(&self, path: &std::path::Path) -> bool {
        self.suspicious
            .get(path)
            .is_some_and(|at| at.elapsed() < CONTENT_TERM)
    }

    /// The name and home of `uid`.
    fn account(&mut self, uid: u32) -> (Option<String>, Option<PathBuf>) {
        let etc = &self.etc;
        let passwd = self.passwd.get_or_insert_with(|| read_passwd(etc));
        let wanted = uid.to_string();
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 5 && f[2] == wanted)
            .map_or((None, None), |f| {
                (Some(f[0].to_string()), Some(PathBuf::from(f[5])))
            })
    }
}

impl Pipeline {
    /// The watcher saw a write: attribute it once its writer's records are in.
    pub(super) fn persisted(&mut self, write: Write) {
        let p = &mut self.detect.persistence;
        if p.waiting.len() >= MAX_WAITING {
            self.attribute_write(write);
            return;
        }
        p.waiting.push_back((Instant::now(), write));
    }

    /// A batch of kernel records up to `newest_ns` was handled: the writes whose writers'
    /// records are in now.
    pub fn records_handled(&mut self, newest_ns: u64) {
        let p = &mut self.detect.persistence;
        p.handled_ns = p.handled_ns.max(newest_ns);
        if !self.detect.persistence.waiting.is_empty() {
            self.attribute_writes();
        }
    }

    /// Attribute the writes that waited long enough.
    pub fn attribute_writes(&mut self) {
        let now = Instant::now();
        loop {
            let p = &self.detect.persistence;
            let due = p
                .waiting
                .front()
                .is_some_and(|(at, write)| p.is_due(*at, write, now));
            if !due {
                break;
            }
            let (_, write) = self.detect.persistence.waiting.pop_front().expect("front");
            self.attribute_write(write);
        }
    }

    /// Who wrote `write`, and what it makes.
    fn attribute_write(&mut self, write: Write) {
        if write.location == detect::persistence::Location::Accounts
            && write.path.file_name().is_some_and(|n| n == "passwd")
        {
            self.detect.persistence.passwd = None;
        }
        if write.pid == 0 || self.is_agent(write.pid) {
            return;
        }
        let known = self.tree.get(write.pid);
        let uid = known.map(|p| p.uid).filter(|u| *u != u32::MAX);
        let listening = known.is_some_and(|p| p.listening);
        let own_pm = known.is_some_and(|p| p.package_manager);
        let comm = self.comm_of(write.pid).unwrap_or_else(|| "?".into());
        let culprit = self.culprit(write.pid, comm, uid);
        let ancestors = self.ancestors(&culprit);
        let package_manager = if own_pm {
            Some(culprit.comm.clone())
        } else {
            ancestors
                .iter()
                .find(|a| a.package_manager)
                .map(|a| a.comm.to_string())
        };
        let server = if listening && package_manager.is_none() {
            Some((culprit.pid, culprit.comm.clone()))
        } else {
            self.detect
                .lineage
                .web_server(&ancestors)
                .map(|a| (a.pid, a.comm.to_string()))
        };
        drop(ancestors);
        let installed = culprit
            .exe
            .as_deref()
            .is_some_and(|e| SystemFiles::default().is_installed(e));
        let (user, home) = self.detect.persistence.account(culprit.uid);
        let writer = Writer {
            server,
            package_manager,
            installed,
            user,
            home,
        };
        let verdict = self
            .detect
            .persistence
            .config
            .judge(&write, &culprit, &writer);
        let path = write.path.display();
        match &verdict {
            Verdict::Benign(why) => {
                info!(pid = write.pid, comm = %culprit.comm, "persistence location {path} written by {why}");
            }
            _ => debug!(pid = write.pid, "persistence location {path}: {verdict:?}"),
        }
        let server_pid = writer.server.as_ref().map(|(pid, _)| *pid);
        if let Some(mut f) = detect::persistence::finding(&write, culprit, &verdict) {
            // Below a web server the alert is about the server (one per exploited server,
            // repeats folded), and the payload between them joins the decision.
            if let Some(server) = server_pid.filter(|s| *s != f.culprit.pid) {
                f.subject = server;
            }
            // What the line says is a risk term: the `cron` alert on the same file counts as
            // another anomaly around the writer.
            if self.detect.persistence.has_suspicious_content(&write.path) {
                f.detail
                    .push_str(", with a suspicious line (see its cron alert)");
                let flag = detect::Anomaly::Cron { critical: false };
                self.detect.alerts.signals.mark(f.culprit.pid, flag);
            }
            self.raise(f, None);
        }
    }
}

/// `<etc>/passwd` as an [`UntrustedFile`]: a FIFO or device put in its place is skipped at
/// once (this runs on the event loop), and at most 4 MiB are read.
fn read_passwd(etc: &std::path::Path) -> String {
    UntrustedFile::open(&etc.join("passwd"), Links::Follow)
        .and_then(|f| f.head(4 << 20))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
