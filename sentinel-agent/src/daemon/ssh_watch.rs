//! When the live SSH sessions are re-read (`enrich::ssh`), on a thread of its own. A re-read
//! asks the kernel for the ESTABLISHED connections to the SSH ports, and sock_diag walks the
//! kernel's whole TCP hash to answer: 3–4 ms on a 24 GB machine, whose hash is large. Polling
//! every 2 s cost the idle agent more than everything else together, so the re-reads follow
//! sshd instead: the event loop nudges this thread whenever an sshd process forks, execs or
//! exits, or a program starts below one (a login, a session's shell, a logout, a dropped
//! connection), and the thread re-reads at once and twice more shortly after (a session's
//! title and uid settle a moment after its fork). A slow re-read every [`SAFETY_EVERY`]
//! catches what no event announced (a user added to `sudo`); records lost in a flood (`blind`)
//! nudge it too.

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::mpsc::{self, RecvTimeoutError, SyncSender},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::enrich::ssh::{Sources, SshTrust, authenticated_peers};

/// The longest the trusted peers go without a re-read (each costs a walk of the kernel's TCP
/// table: every 2 minutes is 0.003 % of a core here).
pub const SAFETY_EVERY: Duration = Duration::from_secs(120);
/// The first re-read after a nudge, and the later ones, counted from the latest nudge.
const SOON: Duration = Duration::from_millis(50);
const FOLLOW_UPS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
/// At most one re-read per this long, however many nudges arrive (a user forking processes
/// named sshd buys no more than this).
const MIN_GAP: Duration = Duration::from_millis(500);

/// Asks the SSH watcher for a re-read; cheap, never blocks, and a no-op when SSH trust is off.
#[derive(Debug, Clone, Default)]
pub struct Nudge(Option<SyncSender<()>>);

impl Nudge {
    pub fn send(&self) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(()); // full: a nudge is already waiting
        }
    }
}

/// When the next re-reads are due. A storm of nudges never postpones the first read it asked
/// for (reads keep coming every [`MIN_GAP`]); the follow-ups count from its last nudge.
#[derive(Debug)]
struct Schedule {
    soon: Option<Instant>,
    follow_ups: Vec<Instant>,
    last: Option<Instant>,
}

impl Schedule {
    fn new(now: Instant) -> Self {
        Self {
            soon: Some(now),
            follow_ups: Vec::new(),
            last: None,
        }
    }

    fn nudged(&mut self, now: Instant) {
        let soon = now + SOON;
        self.soon = Some(self.soon.map_or(soon, |s| s.min(soon)));
        self.follow_ups = FOLLOW_UPS.iter().map(|d| now + *d).collect();
    }

    /// The next re-read: the earliest due one, not sooner than [`MIN_GAP`] after the last, and
    /// at most [`SAFETY_EVERY`] after it.
    fn next(&self) -> Instant {
        let safety = self.last.map(|l| l + SAFETY_EVERY);
        let next = self
            .soon
            .into_iter()
            .chain(self.follow_ups.iter().copied())
            .chain(safety)
            .min()
            .expect("a schedule starts with a read due, then has its safety read");
        self.last.map_or(next, |l| next.max(l + MIN_GAP))
    }

    fn read_at(&mut self, now: Instant) {
        self.soon = self.soon.filter(|s| *s > now);
        self.follow_ups.retain(|d| *d > now);
        self.last = Some(now);
    }
}

/// Start the watcher: the receiver sees the trusted peers whenever the set changes, the
/// [`Nudge`] asks for a re-read. Nothing runs when SSH trust is off.
pub fn spawn(ssh: SshTrust) -> (watch::Receiver<HashSet<IpAddr>>, Nudge) {
    let (tx, rx) = watch::channel(HashSet::new());
    if ssh.is_off() {
        return (rx, Nudge(None));
    }
    let (nudge_tx, nudges) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("ssh-peers".into())
        .spawn(move || {
            let mut schedule = Schedule::new(Instant::now());
            loop {
                let wait = schedule.next().saturating_duration_since(Instant::now());
                match nudges.recv_timeout(wait) {
                    Ok(()) => {
                        schedule.nudged(Instant::now());
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                schedule.read_at(Instant::now());
                let peers = authenticated_peers(&Sources::default(), &ssh);
                tx.send_if_modified(|current| {
                    let changed = *current != peers;
                    if changed {
                        *current = peers;
                    }
                    changed
                });
                if tx.is_closed() {
                    return;
                }
            }
        })
        .expect("spawn the ssh-peers thread");
    (rx, Nudge(Some(nudge_tx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_start_then_every_safety_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert_eq!(s.next(), t0);
        s.read_at(t0);
        assert_eq!(s.next(), t0 + SAFETY_EVERY);
    }

    #[test]
    fn a_nudge_brings_reads_soon_and_twice_more() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.read_at(t0);
        let n = t0 + Duration::from_secs(10);
        s.nudged(n);
        let mut reads = Vec::new();
        for _ in 0..4 {
            let at = s.next();
            reads.push(at - n);
            s.read_at(at);
        }
        assert_eq!(
            reads,
            [
                Duration::from_millis(50),
                Duration::from_secs(1),
                Duration::from_secs(3),
                SAFETY_EVERY + Duration::from_secs(3),
            ]
        );
    }

    #[test]
    fn a_nudge_storm_reads_at_most_every_min_gap() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.read_at(t0);
        let mut now = t0;
        let mut reads = 0;
        // 1,000 nudges a second for 10 s.
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            s.nudged(now);
            if s.next() <= now {
                s.read_at(now);
                reads += 1;
            }
        }
        assert!(reads <= 20, "{reads} reads in 10 s");
        assert!(reads >= 19, "{reads} reads in 10 s");
        assert_eq!(s.follow_ups.len(), FOLLOW_UPS.len());
        // The storm ends: the follow-ups come 1 s and 3 s after its last nudge.
        let end = now;
        let mut after = Vec::new();
        for _ in 0..3 {
            let at = s.next();
            after.push(at - end);
            s.read_at(at);
        }
        assert_eq!(
            after,
            [
                Duration::from_secs(1),
                Duration::from_secs(3),
                SAFETY_EVERY + Duration::from_secs(3)
            ]
        );
    }
}
