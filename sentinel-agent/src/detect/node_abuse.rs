//! `node_abuse`: a Node.js server turned into a miner or a code runner — the seed's "React
//! Flight" heuristics. A `node` process that listens on TCP and holds
//! `node_abuse.cpu_percent` for `node_abuse.sustain` while serving (T1496), or a `node`
//! process — or a child of one — whose argv carries dynamic code execution (`eval(`,
//! `Function(`, `vm.runIn…`) (T1059.007). High.

use rustc_hash::{FxHashMap, FxHashSet};
use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use regex::Regex;
use serde::Deserialize;

use super::{Anomaly, Culprit, Finding};
use crate::config::name_matches;

/// `[node_abuse]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeAbuseConfig {
    /// CPU % (of one CPU) a listening Node.js server must hold…
    pub cpu_percent: f64,
    /// …for this long.
    #[serde(deserialize_with = "crate::config::duration")]
    pub sustain: Duration,
}

impl Default for NodeAbuseConfig {
    fn default() -> Self {
        Self {
            cpu_percent: 20.0,
            sustain: Duration::from_secs(300),
        }
    }
}

impl NodeAbuseConfig {
    pub fn problems(&self, min_sustain: Duration) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(1.0..=100_000.0).contains(&self.cpu_percent) {
            out.push((
                "node_abuse.cpu_percent",
                format!("{} is not between 1 and 100000", self.cpu_percent),
            ));
        }
        if self.sustain < min_sustain || self.sustain > Duration::from_secs(86_400) {
            out.push((
                "node_abuse.sustain",
                format!(
                    "{} is not between agent.cpu_interval ({}) and 24h",
                    humantime::format_duration(self.sustain),
                    humantime::format_duration(min_sustain)
                ),
            ));
        }
        out
    }
}

/// Dynamic code execution in a command line.
const DYNAMIC_CODE: &str = r"\beval\s*\(|\bFunction\s*\(|\bvm\.runIn(This|New)?Context\b|\bvm\.compileFunction\b|new\s+vm\.Script\b";

/// Whether `comm` is a Node.js runtime.
pub fn is_node(comm: &str) -> bool {
    name_matches("node", comm) || name_matches("nodejs", comm)
}

pub struct NodeAbuse {
    config: NodeAbuseConfig,
    dynamic: Regex,
    busy_since: FxHashMap<u32, Instant>,
    raised: FxHashSet<u32>,
}

impl NodeAbuse {
    pub fn new(config: NodeAbuseConfig) -> Self {
        Self {
            config,
            dynamic: Regex::new(DYNAMIC_CODE).expect("the dynamic-code markers compile"),
            busy_since: FxHashMap::default(),
            raised: FxHashSet::default(),
        }
    }

    /// `culprit` exec'd `argv`: a finding when it is node (or a child of node) running code
    /// built from strings.
    pub fn on_exec(&self, culprit: &Culprit, argv: &[String]) -> Option<Finding> {
        let under_node = culprit.ancestry.first().is_some_and(|(_, c)| is_node(c));
        if !is_node(&culprit.comm) && !under_node {
            return None;
        }
        let args = argv.join(" ");
        let m = self.dynamic.find(&args)?;
        Some(Finding {
            domain: None,
            anomaly: Anomaly::NodeAbuse { dynamic_code: true },
            subject: culprit.pid,
            detail: format!(
                "{} (pid {}): dynamic code execution {:?}: {args}",
                culprit.comm,
                culprit.pid,
                m.as_str()
            ),
            culprit: culprit.clone(),
            target: None,
            country: None,
        })
    }

    /// One CPU interval: (pid, comm, % of one CPU) of the node processes that ran. Returns the
    /// pids that held the threshold for `sustain`; the caller checks that they listen
    /// ([`listens`]) before [`NodeAbuse::finding`].
    pub fn on_cpu(&mut self, now: Instant, procs: &[(u32, f64)]) -> Vec<(u32, f64, Duration)> {
        let limit = self.config.cpu_percent;
        self.busy_since
            .retain(|pid, _| procs.iter().any(|(p, pct)| p == pid && *pct >= limit));
        let mut out = Vec::new();
        for &(pid, pct) in procs.iter().filter(|(_, pct)| *pct >= limit) {
            let since = *self.busy_since.entry(pid).or_insert(now);
            let held = now.duration_since(since);
            if held >= self.config.sustain && !self.raised.contains(&pid) {
                out.push((pid, pct, held));
            }
        }
        out
    }

    /// The finding for a listening node server found by [`NodeAbuse::on_cpu`].
    pub fn finding(
        &mut self,
        culprit: Culprit,
        pct: f64,
        held: Duration,
        ports: &[u16],
    ) -> Finding {
        self.raised.insert(culprit.pid);
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        Finding {
            domain: None,
            anomaly: Anomaly::NodeAbuse {
                dynamic_code: false,
            },
            subject: culprit.pid,
            detail: format!(
                "Node.js server {} (pid {}, listening on {}) at {pct:.0}% CPU for {}, above node_abuse.cpu_percent = {}",
                culprit.comm,
                culprit.pid,
                ports.join(", "),
                humantime::format_duration(Duration::from_secs(held.as_secs())),
                self.config.cpu_percent
            ),
            culprit,
            target: None,
            country: None,
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.busy_since.remove(&pid);
        self.raised.remove(&pid);
    }
}

/// The TCP ports `pid` listens on (its socket inodes matched against the LISTEN rows of its
/// network namespace's `tcp`/`tcp6` tables); empty when it listens on none.
pub fn listens(proc_root: &Path, pid: u32) -> Vec<u16> {
    let dir = proc_root.join(pid.to_string());
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<u64> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let l = link.to_str()?;
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut ports = Vec::new();
    for file in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(dir.join("net").join(file)) {
            ports.extend(listening_ports(&text, &inodes));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Local ports of the LISTEN rows of a `/proc/net/tcp{,6}` text whose inode is in `inodes`.
pub fn listening_ports(text: &str, inodes: &HashSet<u64>) -> Vec<u16> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&LISTEN) {
                return None;
            }
            let inode: u64 = f.get(9)?.parse().ok()?;
            inodes.contains(&inode).then_some(())?;
            let port = f.get(1)?.rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::culprit;

    fn abuse(pct: f64, sustain_s: u64) -> NodeAbuse {
        NodeAbuse::new(NodeAbuseConfig {
            cpu_percent: pct,
            sustain: Duration::from_secs(sustain_s),
        })
    }

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn sustained_cpu_is_reported_once_per_server() {
        let mut n = abuse(20.0, 10);
        let t0 = Instant::now();
        assert!(n.on_cpu(t0, &[(5, 45.0)]).is_empty());
        assert!(
            n.on_cpu(t0 + Duration::from_secs(5), &[(5, 45.0)])
                .is_empty()
        );
        let due = n.on_cpu(t0 + Duration::from_secs(10), &[(5, 45.0)]);
        assert_eq!(due.len(), 1);
        let (pid, pct, held) = due[0];
        let f = n.finding(culprit(pid, "node", &[]), pct, held, &[3000]);
        assert_eq!(f.anomaly.mitre().technique, "T1496");
        assert!(f.detail.contains("listening on 3000"), "{}", f.detail);
        assert!(f.detail.contains("45% CPU for 10s"), "{}", f.detail);
        assert!(
            n.on_cpu(t0 + Duration::from_secs(20), &[(5, 45.0)])
                .is_empty()
        );
    }

    #[test]
    fn a_dip_restarts_the_clock() {
        let mut n = abuse(20.0, 10);
        let t0 = Instant::now();
        n.on_cpu(t0, &[(5, 45.0)]);
        n.on_cpu(t0 + Duration::from_secs(6), &[(5, 2.0)]);
        assert!(
            n.on_cpu(t0 + Duration::from_secs(12), &[(5, 45.0)])
                .is_empty()
        );
        assert_eq!(
            n.on_cpu(t0 + Duration::from_secs(22), &[(5, 45.0)]).len(),
            1
        );
    }

    #[test]
    fn dynamic_code_in_node_or_its_children() {
        let n = abuse(20.0, 10);
        let node = culprit(7, "node", &[(1, "systemd")]);
        let f = n
            .on_exec(
                &node,
                &argv("node -e eval(Buffer.from(process.argv[1],'base64').toString())"),
            )
            .unwrap();
        assert_eq!(f.anomaly.mitre().technique, "T1059.007");
        let child = culprit(8, "python3", &[(7, "node")]);
        assert!(
            n.on_exec(&child, &argv("python3 -c vm.runInNewContext(x)"))
                .is_some()
        );
        // Ordinary node and non-node processes.
        assert!(
            n.on_exec(&node, &argv("node server.js --port 3000"))
                .is_none()
        );
        let other = culprit(9, "perl", &[(1, "bash")]);
        assert!(n.on_exec(&other, &argv("perl -e eval(1)")).is_none());
    }

    #[test]
    fn listening_ports_come_from_the_inode_table() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1";
        let mine: HashSet<u64> = [4242, 4243].into();
        assert_eq!(listening_ports(text, &mine), [3000]);
        assert!(listening_ports(text, &HashSet::new()).is_empty());
    }

    #[test]
    fn this_test_process_listens_where_it_binds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = listens(Path::new("/proc"), std::process::id());
        assert!(ports.contains(&port), "{ports:?} lacks {port}");
    }

    #[test]
    fn config_problems_name_their_keys() {
        let bad = NodeAbuseConfig {
            cpu_percent: 0.0,
            sustain: Duration::ZERO,
        };
        let keys: Vec<&str> = bad
            .problems(Duration::from_secs(1))
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(keys, ["node_abuse.cpu_percent", "node_abuse.sustain"]);
    }
}
