//! Containers found through their monitor, when their cgroup names none: rootless Podman on a
//! host without cgroup v2 delegation (cgroup v1 or hybrid, no systemd user manager) creates no
//! cgroup for a container, so its processes stay in the user's own cgroup. They still run
//! below Podman's monitor, `conmon`, whose command line names the container
//! (`-c <id>`, `-n <name>`, `-b <bundle>` under the user's storage). The monitor is recognised
//! by the file it runs (`/proc/<pid>/exe` is a packaged conmon), never by its name.
//!
//! What a conmon's command line says is chosen by the user who started it: only that user's
//! own processes can be mislabelled that way, and the values are escaped like argv.

use std::path::{Path, PathBuf};

use super::{FromPath, is_container_id};

/// Where distributions install Podman's monitor.
const CONMON_PATHS: [&str; 3] = [
    "/usr/bin/conmon",
    "/usr/libexec/podman/conmon",
    "/usr/local/libexec/podman/conmon",
];
/// Largest conmon command line read.
const CMDLINE_CAP: usize = 64 * 1024;

/// What a conmon's command line says of its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitored {
    pub found: FromPath,
    /// `-n`: the container's name (absent for an exec session's monitor).
    pub name: Option<String>,
    /// The graph root the bundle (`-b`) lies in: where `containers.json` is.
    pub storage: Option<PathBuf>,
}

/// The container a conmon command line (NUL-separated, as in `/proc/<pid>/cmdline`) monitors;
/// `uid` is the monitor's user.
pub fn parse_conmon_cmdline(cmdline: &[u8], uid: u32) -> Option<Monitored> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let id = value("-c").filter(|id| is_container_id(id))?;
    let storage = value("-b").and_then(|bundle| graph_root(&bundle, &id));
    Some(Monitored {
        found: FromPath {
            id,
            runtime: "podman",
            user: (uid != 0).then_some(uid),
        },
        name: value("-n"),
        storage,
    })
}

/// The graph root of a bundle path `<root>/<driver>-containers/<id>/userdata[/…]`.
fn graph_root(bundle: &str, id: &str) -> Option<PathBuf> {
    ["overlay-containers", "vfs-containers", "btrfs-containers"]
        .iter()
        .find_map(|dir| {
            let (root, rest) = bundle.split_once(&format!("/{dir}/{id}/"))?;
            (rest.starts_with("userdata") && root.starts_with('/')).then(|| PathBuf::from(root))
        })
}

/// Whether process `pid` runs a packaged conmon (by the file it runs).
pub fn is_conmon(proc_root: &Path, pid: u32) -> bool {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe"))
        .is_ok_and(|exe| CONMON_PATHS.iter().any(|p| exe == Path::new(p)))
}

/// The command line and user of process `pid`, capped.
pub fn cmdline_and_uid(proc_root: &Path, pid: u32) -> Option<(Vec<u8>, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dir = proc_root.join(pid.to_string());
    let uid = std::fs::metadata(&dir).ok()?.uid();
    let mut cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    cmdline.truncate(CMDLINE_CAP);
    Some((cmdline, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7d821003282713b7c554263e6c3b33d56a65664a1c5419e8a0ebac7d38da1522";

    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.join("\0").into_bytes()
    }

    #[test]
    fn a_rootless_conmon_names_its_container_and_store() {
        let bundle =
            format!("/home/u/.local/share/containers/storage/overlay-containers/{ID}/userdata");
        let line = cmdline(&[
            "/usr/bin/conmon",
            "--api-version",
            "1",
            "-c",
            ID,
            "-u",
            ID,
            "-r",
            "/usr/bin/runc",
            "-b",
            &bundle,
            "-p",
            "/run/user/1000/pidfile",
            "-n",
            "web",
        ]);
        let m = parse_conmon_cmdline(&line, 1000).unwrap();
        assert_eq!(m.found.id, ID);
        assert_eq!(m.found.runtime, "podman");
        assert_eq!(m.found.user, Some(1000));
        assert_eq!(m.name.as_deref(), Some("web"));
        assert_eq!(
            m.storage,
            Some(PathBuf::from("/home/u/.local/share/containers/storage"))
        );
    }

    #[test]
    fn a_conmon_without_a_container_id_names_nothing() {
        assert_eq!(
            parse_conmon_cmdline(&cmdline(&["conmon", "-c"]), 1000),
            None
        );
        assert_eq!(
            parse_conmon_cmdline(&cmdline(&["conmon", "-c", "../../etc"]), 1000),
            None
        );
        assert_eq!(parse_conmon_cmdline(b"", 0), None);
        // A bundle outside any store gives no store; the id and name stay.
        let m = parse_conmon_cmdline(&cmdline(&["conmon", "-c", ID, "-b", "x/y"]), 0).unwrap();
        assert_eq!((m.storage, m.found.user), (None, None));
    }
}
