//! The agent's nftables table, driven through the `nft` tool: `table inet <enforce.table>`
//! with one timeout set per family, dropping traffic to set members on output and from them
//! on input — except what arrives on the SSH ports (`trust.ssh_ports`) and sshd's replies to
//! it, so a block never locks an admin out of the host. Nothing outside this table is ever
//! touched, and the table stays when the agent stops: removing it is an explicit uninstall
//! step.
//!
//! `nft` runs as root with the agent's rules, so it must be the system's own: it is found
//! once, at start, in a fixed list of system directories ([`NFT_DIRS`]) and run by that
//! absolute path; `PATH` is never consulted (a root service's `PATH` is not under a user's
//! control, but `sudo sentinel unblock` from a shell with a doctored `PATH` would be). There
//! is deliberately no override, not even for tests: unit tests set [`Nft`]'s `program`, and the
//! end-to-end test that needs a failing `nft` runs the agent in a private mount namespace with
//! a fake bind-mounted over the system one (`tests/switch.rs`), so the resolution under test
//! is the real one.

use std::{
    io::Write,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

/// Where `nft` is looked for, in this order.
pub const NFT_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "nft not found in {} (is the nftables package installed? `enforce.mode = \"dry-run\"` \
         needs no nft)",
        .searched.join(", ")
    )]
    NotFound { searched: Vec<String> },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("nft refused `{script}`: {stderr}")]
    Refused { script: String, stderr: String },
    #[error("unreadable `nft -j` output: {0}")]
    Json(String),
}

pub const SET4: &str = "block4";
pub const SET6: &str = "block6";

pub struct Nft {
    table: String,
    /// The `nft` to run: an absolute path found by [`locate`] (a unit test sets its own).
    program: PathBuf,
    /// `trust.ssh_ports`: inbound connections to them pass whatever is blocked.
    ssh_ports: Vec<u16>,
}

fn set_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { SET4 } else { SET6 }
}

/// The system's `nft`: the first executable regular file named `nft` in [`NFT_DIRS`].
pub fn locate() -> Result<PathBuf, NftError> {
    locate_in(&NFT_DIRS)
}

fn locate_in(dirs: &[&str]) -> Result<PathBuf, NftError> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    dirs.iter()
        .map(|dir| Path::new(dir).join("nft"))
        .find(|p| executable(p))
        .ok_or_else(|| NftError::NotFound {
            searched: dirs.iter().map(|d| d.to_string()).collect(),
        })
}

impl Nft {
    /// The agent's table, driven by the system's `nft` (found now, see [`locate`]).
    pub fn new(table: &str) -> Result<Self, NftError> {
        Ok(Self {
            table: table.to_string(),
            program: locate()?,
            ssh_ports: Vec::new(),
        })
    }

    /// Let inbound connections to `ports` through whatever is blocked ([`ensure_script`]).
    pub fn with_ssh_ports(mut self, ports: &[u16]) -> Self {
        self.ssh_ports = ports.to_vec();
        self
    }

    fn spawn_error(&self) -> impl Fn(std::io::Error) -> NftError + '_ {
        |source| NftError::Spawn {
            program: self.program.clone(),
            source,
        }
    }

    /// Run an nft script in one transaction (all or nothing).
    fn run(&self, script: &str) -> Result<(), NftError> {
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(self.spawn_error())?;
        let written = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes());
        // nft may stop reading and exit before the script is written (it refused it): its
        // own message says more than the broken pipe, and it is waited for either way.
        let out = child.wait_with_output().map_err(self.spawn_error())?;
        if !out.status.success() {
            return Err(NftError::Refused {
                script: script.trim().replace('\n', "; "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        written.map_err(self.spawn_error())
    }

    /// Create the table, its sets and chains if missing, and (re)write its rules — atomically,
    /// keeping the elements already in the sets.
    pub fn ensure(&self) -> Result<(), NftError> {
        self.run(&ensure_script(&self.table, &self.ssh_ports))
    }

    /// Block every address for its time, in one transaction. An element already there gets
    /// the new timeout: it is re-added (add, delete, add in the same transaction, so it never
    /// disappears in between).
    pub fn add_all(&self, targets: &[(IpAddr, Duration)]) -> Result<(), NftError> {
        let script = add_script(&self.table, targets);
        if script.is_empty() {
            return Ok(());
        }
        self.run(&script)
    }

    /// Lift the block on `ip`; nothing happens if it is not blocked.
    pub fn remove(&self, ip: IpAddr) -> Result<(), NftError> {
        let (t, s) = (&self.table, set_of(ip));
        // `add` first makes the delete valid whether or not the element exists.
        self.run(&format!(
            "add element inet {t} {s} {{ {ip} }}
             delete element inet {t} {s} {{ {ip} }}
             "
        ))
    }

    /// The elements in the kernel now, with the time each has left.
    pub fn elements(&self) -> Result<Vec<(IpAddr, Option<Duration>)>, NftError> {
        let mut out = Vec::new();
        for set in [SET4, SET6] {
            let o = Command::new(&self.program)
                .args(["-j", "list", "set", "inet", &self.table, set])
                .output()
                .map_err(self.spawn_error())?;
            if !o.status.success() {
                return Err(NftError::Refused {
                    script: format!("list set inet {} {set}", self.table),
                    stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
                });
            }
            out.extend(parse_elements(&o.stdout)?);
        }
        Ok(out)
    }
}

/// The script [`Nft::ensure`] runs. The `forward` chain drops what the host routes for
/// others to or from a blocked address: containers on a bridge (or their own namespace),
/// VMs, a router's clients; their packets never cross `output` or `input`. Before the drops, connections arriving on `ssh_ports` are
/// accepted on input and sshd's replies to them (conntrack's reply direction) on output: a
/// blocked address can still log in, while connections to it or to any other port stay
/// dropped. An accept here only ends this table's chain (policy accept): other tables still
/// see the packet.
pub fn ensure_script(t: &str, ssh_ports: &[u16]) -> String {
    let ports: Vec<String> = ssh_ports.iter().map(u16::to_string).collect();
    let ssh = if ports.is_empty() {
        String::new()
    } else {
        let ports = ports.join(", ");
        format!(
            "add rule inet {t} input tcp dport {{ {ports} }} accept\n\
             add rule inet {t} output tcp sport {{ {ports} }} ct direction reply accept\n"
        )
    };
    format!(
        "add table inet {t}
add set inet {t} {SET4} {{ type ipv4_addr; flags timeout; }}
add set inet {t} {SET6} {{ type ipv6_addr; flags timeout; }}
add chain inet {t} output {{ type filter hook output priority 0; policy accept; }}
add chain inet {t} input {{ type filter hook input priority 0; policy accept; }}
add chain inet {t} forward {{ type filter hook forward priority 0; policy accept; }}
flush chain inet {t} output
flush chain inet {t} input
flush chain inet {t} forward
{ssh}add rule inet {t} output ip daddr @{SET4} drop
add rule inet {t} output ip6 daddr @{SET6} drop
add rule inet {t} input ip saddr @{SET4} drop
add rule inet {t} input ip6 saddr @{SET6} drop
add rule inet {t} forward ip daddr @{SET4} drop
add rule inet {t} forward ip6 daddr @{SET6} drop
add rule inet {t} forward ip saddr @{SET4} drop
add rule inet {t} forward ip6 saddr @{SET6} drop
"
    )
}

/// Elements per `add element` statement (keeps each line of the script reasonable).
const CHUNK: usize = 2048;

/// The script [`Nft::add_all`] runs: for each set and chunk, add, delete, add with timeout.
pub fn add_script(table: &str, targets: &[(IpAddr, Duration)]) -> String {
    use std::fmt::Write as _;
    let mut script = String::new();
    for set in [SET4, SET6] {
        let mine: Vec<&(IpAddr, Duration)> = targets
            .iter()
            .filter(|(ip, _)| set_of(*ip) == set)
            .collect();
        for chunk in mine.chunks(CHUNK) {
            let bare: Vec<String> = chunk.iter().map(|(ip, _)| ip.to_string()).collect();
            let bare = bare.join(", ");
            let timed: Vec<String> = chunk
                .iter()
                .map(|(ip, ttl)| format!("{ip} timeout {}s", ttl.as_secs().max(1)))
                .collect();
            let _ = writeln!(script, "add element inet {table} {set} {{ {bare} }}");
            let _ = writeln!(script, "delete element inet {table} {set} {{ {bare} }}");
            let _ = writeln!(
                script,
                "add element inet {table} {set} {{ {} }}",
                timed.join(", ")
            );
        }
    }
    script
}

/// Elements of an `nft -j list set` answer.
pub fn parse_elements(json: &[u8]) -> Result<Vec<(IpAddr, Option<Duration>)>, NftError> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| NftError::Json(e.to_string()))?;
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for elem in item["set"]["elem"].as_array().into_iter().flatten() {
            let (val, expires) = match elem.get("elem") {
                Some(e) => (&e["val"], e["expires"].as_u64()),
                None => (elem, None),
            };
            if let Some(ip) = val.as_str().and_then(|s| s.parse().ok()) {
                out.push((ip, expires.map(Duration::from_secs)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An nft that refuses a script without reading it (the script is larger than a pipe
    /// holds, so the agent's write breaks): nft's own message is the error, not the pipe.
    #[test]
    fn an_nft_that_stops_reading_is_heard_and_waited_for() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("nft");
        std::fs::write(
            &program,
            "#!/bin/sh\necho 'nft: no such table' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let nft = Nft {
            table: "t".into(),
            program,
            ssh_ports: Vec::new(),
        };
        let err = nft.run(&"add element inet t block4 { 198.51.100.2 }\n".repeat(40_000));
        match err {
            Err(NftError::Refused { stderr, .. }) => assert_eq!(stderr, "nft: no such table"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nft_is_found_only_in_the_listed_directories() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dirs = [a.path().to_str().unwrap(), b.path().to_str().unwrap()];
        let err = locate_in(&dirs).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("nft not found in {}, {} (", dirs[0], dirs[1])),
            "{err}"
        );
        // Not executable: not a candidate.
        std::fs::write(a.path().join("nft"), "").unwrap();
        let found = b.path().join("nft");
        std::fs::write(&found, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&found, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(locate_in(&dirs).unwrap(), found);
        // The real list holds absolute system directories only.
        assert!(NFT_DIRS.iter().all(|d| d.starts_with('/')));
    }

    #[test]
    fn one_script_adds_every_target_per_family() {
        let t = |s: &str, secs| (s.parse::<IpAddr>().unwrap(), Duration::from_secs(secs));
        let script = add_script(
            "snt",
            &[
                t("198.51.100.2", 10),
                t("2001:db8:1::2", 0),
                t("198.51.100.3", 20),
            ],
        );
        assert_eq!(
            script,
            "add element inet snt block4 { 198.51.100.2, 198.51.100.3 }\n\
             delete element inet snt block4 { 198.51.100.2, 198.51.100.3 }\n\
             add element inet snt block4 { 198.51.100.2 timeout 10s, 198.51.100.3 timeout 20s }\n\
             add element inet snt block6 { 2001:db8:1::2 }\n\
             delete element inet snt block6 { 2001:db8:1::2 }\n\
             add element inet snt block6 { 2001:db8:1::2 timeout 1s }\n"
        );
        assert!(add_script("snt", &[]).is_empty());
        let many: Vec<_> = (0..5000u32)
            .map(|i| {
                (
                    IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i)),
                    Duration::from_secs(5),
                )
            })
            .collect();
        assert_eq!(
            add_script("snt", &many).lines().count(),
            9,
            "chunks of {CHUNK}"
        );
    }

    #[test]
    fn parses_elements_with_and_without_timeouts() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "block4", "table": "t", "type": "ipv4_addr", "handle": 1, "flags": ["timeout"], "elem": [{"elem": {"val": "203.0.113.9", "timeout": 500, "expires": 499}}, "198.51.100.7"]}}]}"#;
        let got = parse_elements(json).unwrap();
        assert_eq!(
            got,
            [
                (
                    "203.0.113.9".parse().unwrap(),
                    Some(Duration::from_secs(499))
                ),
                ("198.51.100.7".parse().unwrap(), None)
            ]
        );
        let empty = br#"{"nftables": [{"set": {"name": "block6"}}]}"#;
        assert!(parse_elements(empty).unwrap().is_empty());
        assert!(parse_elements(b"not json").is_err());
    }

    #[test]
    fn ssh_ports_are_accepted_before_the_drops() {
        let script = ensure_script("snt", &[22, 2222]);
        let lines: Vec<&str> = script.lines().collect();
        let accept = lines
            .iter()
            .position(|l| *l == "add rule inet snt input tcp dport { 22, 2222 } accept")
            .expect(&script);
        let reply = lines
            .iter()
            .position(|l| {
                *l == "add rule inet snt output tcp sport { 22, 2222 } ct direction reply accept"
            })
            .expect(&script);
        let first_drop = lines.iter().position(|l| l.ends_with(" drop")).unwrap();
        assert!(accept < first_drop && reply < first_drop, "{script}");
        assert!(lines.contains(&"add rule inet snt input ip saddr @block4 drop"));
        assert!(lines.contains(&"add rule inet snt output ip daddr @block4 drop"));
        // Only the agent's own table.
        assert!(lines.iter().all(|l| l.contains(" inet snt")), "{script}");
        let none = ensure_script("snt", &[]);
        assert!(!none.contains("dport"));
    }

    #[test]
    fn routed_traffic_is_dropped_both_ways_in_both_families() {
        let script = ensure_script("snt", &[22]);
        assert!(
            script.contains("hook forward priority 0; policy accept;"),
            "{script}"
        );
        for rule in [
            "forward ip daddr @block4 drop",
            "forward ip6 daddr @block6 drop",
            "forward ip saddr @block4 drop",
            "forward ip6 saddr @block6 drop",
        ] {
            assert!(
                script.contains(&format!("add rule inet snt {rule}\n")),
                "{rule}"
            );
        }
        // Re-running it replaces the forward rules instead of stacking them.
        assert!(script.contains("flush chain inet snt forward"));
    }
}
