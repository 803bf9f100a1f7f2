//! `reverse_shell`: a process whose standard input, output or error is a TCP socket to an
//! untrusted, non-loopback peer — what bash `/dev/tcp`, python/perl `socket` + `dup2`,
//! `nc -e` and php one-liners all do before they run commands, whatever the program is
//! called. Critical, T1059. The peer is the target: the dead man's switch opens a decision
//! that blocks it, and `enforce.kill` terminates the process. Found from the kernel's
//! `stdio` sensor (a TCP socket duplicated onto fd 0, 1 or 2). Trust comes first: loopback,
//! `trust.ips` and live SSH peers never raise it.

use std::net::IpAddr;

use crate::enrich::trust::TrustSet;

use super::{Anomaly, Culprit, Finding};

#[derive(Debug, Default)]
pub struct ReverseShell;

/// fd 0, 1, 2 by name.
fn stream(fd: u32) -> &'static str {
    match fd {
        0 => "stdin",
        1 => "stdout",
        _ => "stderr",
    }
}

impl ReverseShell {
    /// `culprit` put a TCP socket connected to `peer:dport` on standard stream `newfd`.
    pub fn on_stdio(
        &self,
        culprit: &Culprit,
        newfd: u32,
        peer: IpAddr,
        dport: u16,
        country: Option<&str>,
        trust: &TrustSet,
    ) -> Option<Finding> {
        if newfd > 2 || peer.is_unspecified() {
            return None;
        }
        // Trust first: loopback, trust.ips and SSH peers have no ActionableAddr, so no finding.
        let target = trust.check(peer).ok()?;
        Some(Finding {
            anomaly: Anomaly::ReverseShell,
            culprit: culprit.clone(),
            target: Some(target),
            country: country.map(str::to_string),
            detail: format!(
                "{} (pid {}) has its {} on a TCP connection to {target} port {dport}",
                culprit.comm,
                culprit.pid,
                stream(newfd)
            ),
            subject: culprit.pid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::culprit;

    #[test]
    fn socket_on_stdio_to_an_untrusted_peer() {
        let c = culprit(7, "python3", &[(1, "bash")]);
        let peer: IpAddr = "198.51.100.130".parse().unwrap();
        let f = ReverseShell
            .on_stdio(&c, 0, peer, 4444, Some("DE"), &TrustSet::default())
            .unwrap();
        assert_eq!(f.anomaly, Anomaly::ReverseShell);
        assert_eq!(f.target.unwrap().ip(), peer);
        assert_eq!(f.subject, 7);
        assert!(f.detail.contains("stdin"), "{}", f.detail);
        assert!(
            f.detail.contains("198.51.100.130 port 4444"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn loopback_trusted_and_odd_input_raise_nothing() {
        let c = culprit(7, "bash", &[]);
        let open = TrustSet::default();
        for peer in ["127.0.0.1", "::1", "0.0.0.0"] {
            let peer: IpAddr = peer.parse().unwrap();
            assert!(
                ReverseShell
                    .on_stdio(&c, 1, peer, 80, None, &open)
                    .is_none()
            );
        }
        let peer: IpAddr = "198.51.100.130".parse().unwrap();
        let trusted = TrustSet::new(&["198.51.100.128/26".parse().unwrap()], &[]);
        assert!(
            ReverseShell
                .on_stdio(&c, 1, peer, 80, None, &trusted)
                .is_none()
        );
        assert!(
            ReverseShell
                .on_stdio(&c, 5, peer, 80, None, &open)
                .is_none()
        );
    }
}
