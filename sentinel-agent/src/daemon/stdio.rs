//! The reverse-shell side of the event loop: a TCP socket on a standard stream (a `dup2`, or
//! found there at exec) is judged by `detect::reverse_shell`, with what the agent can see of
//! the process's descriptors and whether the socket was accepted or connected out. Part of the
//! [`Pipeline`] (same loop, same state), kept apart so the event loop's file reads as the data
//! flow.

use std::time::Instant;

use tracing::debug;

use super::pipeline::Pipeline;
use crate::{
    detect::reverse_shell::{Stream, Verdict},
    enrich::listeners,
    sensors::stdio::Stdio,
};

/// What descriptor `fd` of `tgid` points at, as far as the agent can see.
fn stream_of(proc_root: &std::path::Path, tgid: u32, fd: u32) -> Stream {
    match std::fs::read_link(proc_root.join(format!("{tgid}/fd/{fd}"))) {
        Ok(link) => Stream::Link(link.to_string_lossy().into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stream::Gone,
        Err(_) => Stream::Hidden,
    }
}

impl Pipeline {
    /// A TCP socket on a standard stream: `reverse_shell` when the peer is untrusted.
    pub(super) fn on_stdio(&mut self, s: Stdio) {
        if self.is_agent(s.tgid) {
            return;
        }
        // Not a peer this host connected out to (as far as the memory goes), and on a port
        // something listens on: an accepted connection handed to a server's child (inetd,
        // socket activation). A socket whose port nothing listens on was connected out, even
        // when a flood of connects pushed it out of the memory.
        if !self.outbound.reaches(s.peer, s.dport)
            && listeners::accepted_on_listening_port(&self.proc_root, s.tgid, s.newfd)
                .unwrap_or(true)
        {
            debug!(pid = s.tgid, comm = %s.comm, fd = s.newfd, peer = %s.peer,
                   "accepted connection on stdio (a server's child): not a reverse shell");
            return;
        }
        debug!(pid = s.tgid, comm = %s.comm, fd = s.newfd, peer = %s.peer,
               at_exec = s.exec_fds != 0, "socket on stdio");
        let country = self.detect.geoip.as_ref().and_then(|g| g.country(s.peer));
        let culprit = self.culprit(s.tgid, s.comm.clone(), Some(s.uid));
        // Found at exec, the socket is on each of those streams as the program starts.
        let fds: Vec<(u32, Stream)> = if s.exec_fds == 0 {
            vec![(s.newfd, stream_of(&self.proc_root, s.tgid, s.newfd))]
        } else {
            (0..3)
                .filter(|fd| s.exec_fds & (1 << fd) != 0)
                .map(|fd| (fd, Stream::Hidden))
                .collect()
        };
        for (fd, stream) in fds {
            let verdict = self.detect.reverse_shell.on_stdio(
                &culprit,
                fd,
                s.peer,
                s.dport,
                country.as_deref(),
                &self.detect.trust,
                stream,
                Instant::now(),
            );
            if let Verdict::Shell(finding) = verdict {
                self.raise(*finding, Some(s.ts_ns));
                return;
            }
        }
        // One stream at exec: the program runs with the socket there.
        if s.exec_fds != 0
            && let Some(f) = self
                .detect
                .reverse_shell
                .confirm(s.tgid, ", found there as it exec'd")
        {
            self.raise(f, Some(s.ts_ns));
        }
    }

    /// A process that holds a socket on one standard stream exec'd `filename`: with the
    /// socket still there, the program runs driven by it — a reverse shell.
    pub(super) fn stdio_at_exec(&mut self, tgid: u32, filename: &str, ts_ns: u64) {
        let Some(fd) = self.detect.reverse_shell.stream_of(tgid) else {
            return;
        };
        let now = stream_of(&self.proc_root, tgid, fd);
        if let Some(f) = self.detect.reverse_shell.judge_exec(tgid, filename, &now) {
            self.raise(f, Some(ts_ns));
        }
    }

    /// Sockets held on one standard stream for [`reverse_shell::HOLD`]: still there, a
    /// reverse shell; gone, a connectivity check.
    pub(super) fn judge_stdio_candidates(&mut self) {
        for (tgid, fd) in self.detect.reverse_shell.due(Instant::now()) {
            let now = stream_of(&self.proc_root, tgid, fd);
            match self.detect.reverse_shell.judge_hold(tgid, &now) {
                Some(f) => self.raise(f, None),
                None => debug!(
                    pid = tgid,
                    fd, "socket on stdio let go at once: a check, not a shell"
                ),
            }
        }
    }
}
