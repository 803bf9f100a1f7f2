//! The exec storm again, inside a cgroup named like a Docker container's
//! (`<cgroup v2 root>/sentinel-bench-<pid>/docker-<64 hex>.scope`, created and removed by the
//! bench): what naming the container costs per exec (a cached lookup, and the field on every
//! event) against the same storm on the host. The bench moves itself into that cgroup for the
//! storm (its children inherit it) and back to its own cgroup after.

use super::*;

/// The bench process inside a container-named cgroup, until dropped.
pub(super) struct ContainerCgroup {
    /// `sentinel-bench-<pid>`, holding the scope.
    parent: PathBuf,
    scope: PathBuf,
    /// The cgroup directory the bench came from, where it goes back.
    home: PathBuf,
}

impl ContainerCgroup {
    /// Create the cgroup and move this process (all its threads) into it.
    pub(super) fn enter() -> anyhow::Result<Self> {
        Self::enter_with(std::process::id())
    }

    /// Create the cgroup and move process `pid` into it (this process goes back to its own
    /// cgroup when dropped, wherever it was).
    fn enter_with(pid: u32) -> anyhow::Result<Self> {
        let root = cgroup2_root()?;
        let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let home = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let home = root.join(home.trim_start_matches('/'));
        let parent = root.join(format!("sentinel-bench-{pid}"));
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let scope = parent.join(format!("docker-{nanos:048x}{pid:016x}.scope"));
        fs::create_dir_all(&scope).with_context(|| format!("creating {}", scope.display()))?;
        let cgroup = ContainerCgroup {
            parent,
            scope,
            home,
        };
        fs::write(cgroup.scope.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving the bench into {}", cgroup.scope.display()))?;
        Ok(cgroup)
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let pid = std::process::id().to_string();
        if let Err(e) = fs::write(self.home.join("cgroup.procs"), &pid) {
            eprintln!(
                "warning: moving the bench back to {}: {e}",
                self.home.display()
            );
        }
        for dir in [&self.scope, &self.parent] {
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("warning: removing {}: {e}", dir.display());
            }
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid host), from `/proc/self/mountinfo`.
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            fs.starts_with("cgroup2 ")
                .then(|| mount.split(' ').nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup v2 hierarchy mounted: no container cgroup to measure in")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_cgroup() -> String {
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_bench_enters_a_container_named_cgroup_and_leaves_it_removed() {
        if effective_uid().unwrap() != 0 {
            eprintln!("\n*** SKIPPED: moving a process between cgroups needs root ***\n");
            return;
        }
        // A child stands in for the bench: moving this test process would take along what
        // the tests running beside it start meanwhile (and keep the cgroup busy).
        let home = own_cgroup();
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let cgroup = ContainerCgroup::enter_with(child.id()).unwrap();
        let inside = fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        let inside = inside.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let scope = inside.rsplit('/').next().unwrap();
        let id = scope
            .strip_prefix("docker-")
            .and_then(|s| s.strip_suffix(".scope"))
            .unwrap();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{inside}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let (scope_dir, parent) = (cgroup.scope.clone(), cgroup.parent.clone());
        drop(cgroup);
        assert_eq!(own_cgroup(), home);
        assert!(!scope_dir.exists() && !parent.exists());
    }
}
