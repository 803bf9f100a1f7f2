//! Which container a process runs in. The kernel stamps every exec with the process's cgroup
//! v2 id; the first time the agent meets an id it resolves it to the cgroup's path (the
//! process's `/proc/<pid>/cgroup`, checked against the id: the path's inode *is* the id), reads
//! the container id and runtime from the path (`docker-<id>.scope`, `libpod-<id>.scope`,
//! `/libpod_parent/libpod-<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
//! `/docker/<id>`, `/kubepods/…/<id>`), and the name and image from the runtime's own state
//! on disk: Podman's `containers.json` in its storage (rootful, the configured stores, and a
//! rootless user's `~/.local/share/containers/storage`), Docker's
//! `containers/<id>/config.v2.json`. The answer is cached by cgroup id (a cgroup id is never
//! reused while the machine runs), so every later event of that cgroup costs one hash lookup.
//! Host processes resolve to no container.
//!
//! Names and images are chosen by whoever runs containers: they are escaped like argv, and the
//! runtime's files are read through [`crate::untrusted_file`] (regular files only, capped).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::untrusted_file::{Links, read_text};

mod monitor;
mod relay;

/// Largest runtime state file read (Podman's `containers.json` lists every container).
const STATE_CAP: u64 = 8 << 20;
/// Most cgroup directories walked to find one id (when its process is gone before the agent
/// read its `/proc` entry), and how deep.
const WALK_DIRS: usize = 20_000;
const WALK_DEPTH: usize = 12;
/// The longest one walk may take (it runs on the event loop), and the most walks a second: a
/// user who can create cgroups (delegation) and churns short-lived ones gets no more.
const WALK_TIME: Duration = Duration::from_millis(20);
const WALKS_PER_SECOND: u32 = 20;
/// The accounts file a rootless user's home is read from (never NSS, which may block on a
/// directory server).
const PASSWD: &str = "/etc/passwd";
const PASSWD_CAP: u64 = 16 << 20;
/// Cgroups remembered at most: transient ones (sessions, `systemd-run`, CI containers) come and
/// go for the agent's whole life; past this the cache starts afresh and re-resolves on demand.
const MAX_CGROUPS: usize = 16_384;
/// Distinct containers counted at most for `status`.
const MAX_SEEN: usize = 65_536;

/// A container, as events, alerts and decisions carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Container {
    /// The runtime's container id (64 hex digits for Docker, Podman and containerd).
    pub id: String,
    /// `docker`, `podman`, `containerd` or `cri-o`.
    pub runtime: String,
    /// The container's name, when the runtime's state says it (null otherwise). Every field
    /// is always written: exec and connect bodies are also stored as postcard, which is not
    /// self-describing.
    #[serde(default)]
    pub name: Option<String>,
    /// The image it was created from, when the runtime's state says it.
    #[serde(default)]
    pub image: Option<String>,
    /// Set when the process is not in the container but relays its network: `slirp4netns`
    /// (a rootless container's `--network slirp4netns`, see `relay`). Null for the
    /// container's own processes.
    #[serde(default)]
    pub network_relay: Option<String>,
}

impl Container {
    /// The first 12 digits of the id, as `docker ps` and `podman ps` show it.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// One phrase for humans: `container web (sentinel-test/app, podman 0123456789ab)`.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "container {}",
            self.name.as_deref().unwrap_or(self.short_id())
        );
        let image = self
            .image
            .as_deref()
            .map(|i| format!("{i}, "))
            .unwrap_or_default();
        out.push_str(&format!(" ({image}{} {})", self.runtime, self.short_id()));
        if let Some(relay) = &self.network_relay {
            out.push_str(&format!(" through its network relay {relay}"));
        }
        out
    }
}

/// Where the runtimes keep their state (`[containers]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainersConfig {
    /// Podman (containers/storage) graph roots whose `containers.json` names containers;
    /// rootless users' own stores are found from the cgroup path.
    pub podman_storage: Vec<PathBuf>,
    /// Docker's data root.
    pub docker_root: PathBuf,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        Self {
            podman_storage: vec!["/var/lib/containers/storage".into()],
            docker_root: "/var/lib/docker".into(),
        }
    }
}

/// A container's identity as its cgroup path gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromPath {
    pub id: String,
    pub runtime: &'static str,
    /// The uid of a rootless container's user (`user@<uid>.service` in the path).
    pub user: Option<u32>,
}

/// The container a cgroup path (`/proc/<pid>/cgroup`'s `0::` line) belongs to: the innermost
/// component that names one. A runtime's monitor (`libpod-conmon-<id>`) is not the container.
pub fn parse_cgroup_path(path: &str) -> Option<FromPath> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let user = parts.iter().find_map(|p| {
        p.strip_prefix("user@")?
            .strip_suffix(".service")?
            .parse()
            .ok()
    });
    parts.iter().enumerate().rev().find_map(|(i, part)| {
        let parent = i.checked_sub(1).map(|j| parts[j]);
        let (runtime, id) = container_component(part, parent)?;
        Some(FromPath {
            id: id.to_string(),
            runtime,
            user,
        })
    })
}

/// (runtime, id) when one path component names a container.
fn container_component<'a>(part: &'a str, parent: Option<&str>) -> Option<(&'static str, &'a str)> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    const PREFIXES: [(&str, &str); 6] = [
        ("docker-", "docker"),
        ("libpod-", "podman"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("containerd-", "containerd"),
        ("nerdctl-", "containerd"),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((runtime, id));
        }
    }
    // cgroupfs drivers: `/docker/<id>`, `/kubepods/<qos>/pod<uid>/<id>`, and nerdctl's
    // `/<containerd namespace>/<id>` (`default`, `k8s.io`).
    if is_container_id(name) {
        return match parent {
            Some("docker") => Some(("docker", name)),
            Some(p) if p.starts_with("pod") => Some(("containerd", name)),
            Some("default" | "k8s.io") => Some(("containerd", name)),
            _ => None,
        };
    }
    None
}

/// 64 lower-case hex digits, as Docker, Podman and containerd make container ids.
fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Name and image from Podman's `containers.json` text, for container `id`.
pub fn podman_lookup(containers_json: &str, id: &str) -> Option<(Option<String>, Option<String>)> {
    #[derive(Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        image: Option<String>,
        #[serde(default)]
        metadata: Option<String>,
    }
    #[derive(Deserialize)]
    struct Metadata {
        #[serde(rename = "image-name")]
        image_name: Option<String>,
        name: Option<String>,
    }
    let entries: Vec<Entry> = serde_json::from_str(containers_json).ok()?;
    let entry = entries.into_iter().find(|e| e.id == id)?;
    let meta: Option<Metadata> = entry
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok());
    let (meta_name, meta_image) = meta.map_or((None, None), |m| (m.name, m.image_name));
    let name = entry.names.into_iter().next().or(meta_name);
    Some((name, meta_image.or(entry.image)))
}

/// Name and image from Docker's `config.v2.json` text.
pub fn docker_lookup(config_v2: &str) -> Option<(Option<String>, Option<String>)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Config {
        name: Option<String>,
        config: Option<Inner>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Inner {
        image: Option<String>,
    }
    let c: Config = serde_json::from_str(config_v2).ok()?;
    let name = c.name.map(|n| n.trim_start_matches('/').to_string());
    Some((name, c.config.and_then(|i| i.image)))
}

/// Whether process `pid` is PID 1 of its own pid namespace (the last `NSpid` of its
/// `/proc/<pid>/status`): a container's init, as only its runtime starts it.
pub fn is_pid_namespace_init(proc_root: &Path, pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")) else {
        return false;
    };
    nspid_is_init(&status)
}

/// Whether a `/proc/<pid>/status` text's `NSpid` line ends in pid 1 of a nested namespace.
fn nspid_is_init(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| ids.split_whitespace().collect::<Vec<_>>())
        .is_some_and(|ids| ids.len() > 1 && ids.last() == Some(&"1"))
}

/// The home directory of `uid` in the text of an accounts file (`/etc/passwd`).
fn home_in_passwd(passwd: &str, uid: u32) -> Option<PathBuf> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [_, _, id, _, _, home, ..] = fields[..] else {
            return None;
        };
        (id.parse() == Ok(uid) && home.starts_with('/')).then(|| PathBuf::from(home))
    })
}

/// Name and image of container `id` in Podman store `store` (any storage driver).
fn podman_store_lookup(store: &Path, id: &str) -> Option<(Option<String>, Option<String>)> {
    ["overlay-containers", "vfs-containers", "btrfs-containers"]
        .iter()
        .find_map(|dir| {
            let file = store.join(dir).join("containers.json");
            let text = read_text(&file, Links::Follow, STATE_CAP).ok()?;
            podman_lookup(&text, id)
        })
}

/// The container, its name and image escaped like argv (whoever runs containers chose them).
fn named(found: FromPath, name: Option<String>, image: Option<String>) -> Container {
    let clean = |s: String| crate::untrusted::escape(&s).into_owned();
    Container {
        id: found.id,
        runtime: found.runtime.into(),
        name: name.map(clean),
        image: image.map(clean),
        network_relay: None,
    }
}

/// What the agent knows about each cgroup it met.
#[derive(Debug)]
enum Known {
    /// The host's, or a cgroup already gone when the agent looked.
    Host,
    Container(Arc<Container>),
}

/// The cache from cgroup id to container.
#[derive(Debug)]
pub struct Containers {
    config: ContainersConfig,
    /// The cgroup v2 mount, whose directories' inodes are the kernel's cgroup ids.
    cgroup_root: Option<PathBuf>,
    proc_root: PathBuf,
    by_cgroup: FxHashMap<u64, Known>,
    /// Containers seen since start, by id (for `status`).
    seen: FxHashMap<String, Arc<Container>>,
    /// What each `conmon` (pid, start time) monitors, for containers without a cgroup.
    by_monitor: FxHashMap<u32, (u64, Option<Arc<Container>>)>,
    /// Walks of the cgroup tree in the current second: (when it began, how many).
    walks: (Instant, u32),
    /// How long one walk may take ([`WALK_TIME`]).
    walk_time: Duration,
    /// What each process called `slirp4netns` (pid, start time) is a relay of.
    by_relay: FxHashMap<u32, (u64, relay::Relay)>,
    /// Relays examined in the current second, per user: (when it began, how many).
    relay_lookups: FxHashMap<u32, (Instant, u32)>,
}

impl Containers {
    pub fn new(config: ContainersConfig, cgroup_root: Option<PathBuf>, proc_root: PathBuf) -> Self {
        Self {
            config,
            cgroup_root,
            proc_root,
            by_cgroup: FxHashMap::default(),
            seen: FxHashMap::default(),
            by_monitor: FxHashMap::default(),
            walks: (Instant::now(), 0),
            walk_time: WALK_TIME,
            by_relay: FxHashMap::default(),
            relay_lookups: FxHashMap::default(),
        }
    }

    /// A walk budget other than [`WALK_TIME`]: the tests' walks must not depend on how busy
    /// the machine running them is (a 20 ms budget failed now and then under a loaded build).
    #[cfg(test)]
    pub(crate) fn with_walk_time(mut self, walk_time: Duration) -> Self {
        self.walk_time = walk_time;
        self
    }

    /// How many distinct containers the agent has seen processes of.
    pub fn seen(&self) -> usize {
        self.seen.len()
    }

    /// The container of process `tgid`, whose cgroup id the kernel gave as `cgroup_id` (0:
    /// unknown; the process's `/proc` entry says it). Cached by cgroup id.
    pub fn of(&mut self, cgroup_id: u64, tgid: u32) -> Option<Arc<Container>> {
        if self.by_cgroup.len() >= MAX_CGROUPS {
            self.by_cgroup.clear();
        }
        if cgroup_id != 0 {
            match self.by_cgroup.get(&cgroup_id) {
                Some(Known::Host) => return None,
                Some(Known::Container(c)) => return Some(c.clone()),
                None => {}
            }
        }
        let path = self.cgroup_path(tgid);
        let (path, id) = match (path, cgroup_id) {
            (Some((p, ino)), 0) => (Some(p), ino),
            (Some((p, ino)), id) if ino == id => (Some(p), id),
            // The process is gone (or moved): find the kernel's id among the cgroups.
            (_, id) if id != 0 => (self.find_cgroup(id), id),
            _ => return None,
        };
        if path.is_none() {
            tracing::debug!(cgroup_id, tgid, "cgroup not found");
            self.by_cgroup.insert(id, Known::Host);
            return None;
        }
        if let Some(known) = self.by_cgroup.get(&id) {
            return match known {
                Known::Container(c) => Some(c.clone()),
                _ => None,
            };
        }
        let container = path
            .as_deref()
            .and_then(parse_cgroup_path)
            .map(|found| Arc::new(self.describe(found)));
        tracing::debug!(id, tgid, container = ?container, "cgroup resolved");
        match &container {
            Some(c) => {
                self.saw(c);
                self.by_cgroup.insert(id, Known::Container(c.clone()));
            }
            None => {
                self.by_cgroup.insert(id, Known::Host);
            }
        }
        container
    }

    fn saw(&mut self, c: &Arc<Container>) {
        if self.seen.len() < MAX_SEEN {
            self.seen.insert(c.id.clone(), c.clone());
        }
    }

    /// The container process `tgid`, whose cgroup names none, runs in, from its `ancestry`
    /// (parent first): the one its Podman monitor (`conmon`, by the file it runs) names —
    /// rootless Podman on a host without cgroup v2 delegation creates no cgroup per container.
    /// Only a process in another pid namespace than the monitor's is in the container: the
    /// monitor's own helpers (`runc`, the `podman container cleanup` it runs at the
    /// container's exit) are the host's. Host processes cost a scan of their ancestors' names;
    /// a monitor is read once (cached by pid and start time).
    pub fn of_monitored(
        &mut self,
        tgid: u32,
        ancestry: &[(u32, Arc<str>)],
    ) -> Option<Arc<Container>> {
        let (pid, _) = ancestry.iter().find(|(_, comm)| &**comm == "conmon")?;
        let pid = *pid;
        let pid_ns = |p: u32| std::fs::read_link(self.proc_root.join(format!("{p}/ns/pid"))).ok();
        if pid_ns(tgid)? == pid_ns(pid)? {
            return None;
        }
        let start = crate::enrich::tree::read_stat(&self.proc_root, pid)?.start;
        if let Some((at, known)) = self.by_monitor.get(&pid)
            && *at == start
        {
            return known.clone();
        }
        if self.by_monitor.len() >= MAX_CGROUPS {
            self.by_monitor.clear();
        }
        let container = monitor::is_conmon(&self.proc_root, pid)
            .then(|| monitor::cmdline_and_uid(&self.proc_root, pid))
            .flatten()
            .and_then(|(cmdline, uid)| monitor::parse_conmon_cmdline(&cmdline, uid))
            .map(|m| Arc::new(self.describe_monitored(m)));
        tracing::debug!(pid, container = ?container, "container monitor resolved");
        if let Some(c) = &container {
            self.saw(c);
        }
        self.by_monitor.insert(pid, (start, container.clone()));
        container
    }

    /// The path (from the cgroup root) of the cgroup whose directory's inode is `id`: a
    /// bounded walk of the cgroup v2 tree, once per unknown id whose process is gone.
    /// At most [`WALKS_PER_SECOND`] walks a second, each at most [`WALK_TIME`] and
    /// [`WALK_DIRS`] directories: past those the id is nobody's container.
    fn find_cgroup(&mut self, id: u64) -> Option<String> {
        let root = self.cgroup_root.as_deref()?;
        let now = Instant::now();
        if now.duration_since(self.walks.0) >= Duration::from_secs(1) {
            self.walks = (now, 0);
        }
        if self.walks.1 >= WALKS_PER_SECOND {
            tracing::debug!(id, "cgroup walk skipped: too many this second");
            return None;
        }
        self.walks.1 += 1;
        let deadline = now + self.walk_time;
        let mut frontier = vec![(root.to_path_buf(), 0usize)];
        let mut walked = 0;
        while let Some((dir, depth)) = frontier.pop() {
            walked += 1;
            if walked > WALK_DIRS || Instant::now() >= deadline {
                return None;
            }
            let meta = std::fs::symlink_metadata(&dir).ok()?;
            if meta.ino() == id {
                let rel = dir.strip_prefix(root).ok()?;
                return Some(format!("/{}", rel.display()));
            }
            if depth >= WALK_DEPTH {
                continue;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    frontier.push((entry.path(), depth + 1));
                }
            }
        }
        None
    }

    /// The cgroup id of process `tgid` (its v2 cgroup directory's inode), 0 when unknown.
    pub fn cgroup_id_of(&self, tgid: u32) -> u64 {
        self.cgroup_path(tgid).map_or(0, |(_, ino)| ino)
    }

    /// Process `tgid`'s cgroup v2 path and that directory's inode (its cgroup id).
    fn cgroup_path(&self, tgid: u32) -> Option<(String, u64)> {
        let root = self.cgroup_root.as_deref()?;
        let text =
            std::fs::read_to_string(self.proc_root.join(tgid.to_string()).join("cgroup")).ok()?;
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))?
            .to_string();
        let ino = std::fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()?
            .ino();
        Some((path, ino))
    }

    /// Name and image from the runtime's state, when it can be read.
    fn describe(&self, found: FromPath) -> Container {
        let (name, image) = match found.runtime {
            "podman" => self.podman_state(&found),
            "docker" => self.docker_state(&found.id),
            _ => None,
        }
        .unwrap_or((None, None));
        named(found, name, image)
    }

    /// Name and image from the store the monitor's bundle lies in, else the monitor's `-n`.
    fn describe_monitored(&self, m: monitor::Monitored) -> Container {
        let (name, image) = m
            .storage
            .as_deref()
            .and_then(|store| podman_store_lookup(store, &m.found.id))
            .unwrap_or((None, None));
        named(m.found, name.or(m.name), image)
    }

    fn podman_state(&self, found: &FromPath) -> Option<(Option<String>, Option<String>)> {
        let rootless = found
            .user
            .filter(|uid| *uid != 0)
            .and_then(|uid| {
                let passwd = read_text(Path::new(PASSWD), Links::Follow, PASSWD_CAP).ok()?;
                home_in_passwd(&passwd, uid)
            })
            .map(|home| home.join(".local/share/containers/storage"));
        self.config
            .podman_storage
            .iter()
            .cloned()
            .chain(rootless)
            .find_map(|store| podman_store_lookup(&store, &found.id))
    }

    fn docker_state(&self, id: &str) -> Option<(Option<String>, Option<String>)> {
        let file = self
            .config
            .docker_root
            .join("containers")
            .join(id)
            .join("config.v2.json");
        docker_lookup(&read_text(&file, Links::Follow, STATE_CAP).ok()?)
    }
}

#[cfg(test)]
mod tests;
