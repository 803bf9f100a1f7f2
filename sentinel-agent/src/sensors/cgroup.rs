//! Where the cgroup v2 hierarchy is mounted: the `connect` sensor's programs and the connect
//! guard attach to its root, so that they see every process, in containers too.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The cgroup v2 root, from `/proc/self/mountinfo`; `None` without a cgroup v2 mount.
pub fn root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    cgroup2_root(&mountinfo)
}

/// Whether `root` is the whole machine's cgroup v2 root and not a cgroup namespace's (a
/// container's): the machine's root directory is kernfs node 1.
pub fn is_machine_root(root: &Path) -> bool {
    std::fs::metadata(root).is_ok_and(|m| m.ino() == 1)
}

/// Where the cgroup v2 hierarchy is mounted, from mountinfo text.
pub fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        (fstype == "cgroup2").then_some(())?;
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_root(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }
}
