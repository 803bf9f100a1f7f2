//! Whether a file is part of the installed system rather than something a user (or an
//! attacker) put there: after resolving every symlink it is a regular file under one of the
//! system's program directories (`/usr/bin`, `/usr/sbin`, `/bin`, `/sbin`, `/usr/lib`,
//! `/usr/share`, `/usr/local/bin`, `/usr/local/lib`), owned by root and writable by nobody
//! else, and so is every directory on its way. Only a package (or root) puts files there, so
//! such a file is what its name says; a name, a comm or an argv proves nothing.
//!
//! Nothing is opened: `realpath` and `stat` only, so a FIFO or a slow device cannot stall the
//! caller.

use std::{
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

/// Where packages install programs, their libraries and their scripts (`npm` is
/// `/usr/share/nodejs/npm/bin/npm-cli.js` on Debian, `/usr/lib/node_modules/npm/...` from
/// NodeSource, `/usr/local/lib/node_modules/npm/...` from a tarball).
const SYSTEM_DIRS: [&str; 8] = [
    "usr/bin",
    "usr/sbin",
    "bin",
    "sbin",
    "usr/lib",
    "usr/share",
    "usr/local/bin",
    "usr/local/lib",
];

/// Bits that let group or others write.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// The installed system as seen from `root` (`/` on a host; a directory of its own in tests).
#[derive(Debug, Clone)]
pub struct SystemFiles {
    root: PathBuf,
    /// Who owns the system's files: root, unless a test says otherwise.
    owner: u32,
}

impl Default for SystemFiles {
    fn default() -> Self {
        Self::at("/", 0)
    }
}

impl SystemFiles {
    /// The system under `root`, its files owned by `owner`.
    pub fn at(root: impl Into<PathBuf>, owner: u32) -> Self {
        Self {
            root: root.into(),
            owner,
        }
    }

    /// Whether the absolute `path` is an installed system file (see the module doc). A
    /// relative path is not: it depends on a working directory someone else chose.
    pub fn is_installed(&self, path: &str) -> bool {
        self.resolve(path)
            .is_some_and(|rel| self.is_owned_chain(&rel))
    }

    /// `path` with every symlink resolved, relative to the root, when it lies in a system
    /// directory.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let rel = path.strip_prefix('/')?;
        let real = self.root.join(rel).canonicalize().ok()?;
        let root = self.root.canonicalize().ok()?;
        let rel = real.strip_prefix(&root).ok()?.to_path_buf();
        SYSTEM_DIRS
            .iter()
            .any(|dir| rel.starts_with(dir) && rel != Path::new(dir))
            .then_some(rel)
    }

    /// The file at `rel` is a regular file, and it and every directory above it (below the
    /// root) belong to the owner and are writable by nobody else.
    fn is_owned_chain(&self, rel: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(self.root.join(rel)) else {
            return false;
        };
        if !meta.is_file() || !self.is_private(&meta) {
            return false;
        }
        let mut dir = self.root.clone();
        let parents = rel.parent().into_iter().flat_map(Path::components);
        for part in parents {
            let Component::Normal(name) = part else {
                return false;
            };
            dir.push(name);
            match std::fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() && self.is_private(&meta) => {}
                _ => return false,
            }
        }
        true
    }

    fn is_private(&self, meta: &std::fs::Metadata) -> bool {
        meta.uid() == self.owner && meta.mode() & WRITABLE_BY_OTHERS == 0
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::{
        os::unix::fs::{PermissionsExt, symlink},
        path::Path,
    };

    use super::SystemFiles;

    /// A fake system root in `dir`, its files owned by whoever runs the test.
    pub fn system(dir: &Path) -> SystemFiles {
        SystemFiles::at(dir, nix::unistd::geteuid().as_raw())
    }

    /// Create the directories above `rel` under `root`, mode 0755.
    fn parents(root: &Path, rel: &str) {
        let mut dir = root.to_path_buf();
        for part in Path::new(rel).parent().unwrap().components() {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
    }

    /// Create the file `rel` under `root` with `mode`.
    pub fn file(root: &Path, rel: &str, mode: u32) {
        parents(root, rel);
        let path = root.join(rel);
        std::fs::write(&path, "#!/usr/bin/env node\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A symlink `rel` under `root` pointing at `target` (relative, as packages make them).
    pub fn link(root: &Path, rel: &str, target: &str) {
        parents(root, rel);
        symlink(target, root.join(rel)).unwrap();
    }

    /// Give `rel` under `root` to another owner: `uid` when the test runs as root, else (it
    /// cannot chown) a system whose files belong to someone else sees the same thing.
    pub fn foreign(root: &Path, rel: &str, uid: u32) -> SystemFiles {
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(root.join(rel), Some(uid), None).unwrap();
            system(root)
        } else {
            SystemFiles::at(root, nix::unistd::geteuid().as_raw() + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;

    #[test]
    fn an_installed_file_resolves_through_relative_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        file(root, "usr/share/nodejs/npm/bin/npm-cli.js", 0o755);
        file(root, "usr/bin/apt", 0o755);
        link(root, "usr/bin/npm", "../share/nodejs/npm/bin/npm-cli.js");
        let sys = system(root);
        assert!(sys.is_installed("/usr/bin/npm"));
        assert!(sys.is_installed("/usr/share/nodejs/npm/bin/npm-cli.js"));
        assert!(sys.is_installed("/usr/bin/apt"));
        assert!(!sys.is_installed("usr/bin/apt"), "relative");
        assert!(!sys.is_installed("/usr/bin/nothing"));
        assert!(!sys.is_installed("/usr/bin"), "a directory");
    }

    #[test]
    fn files_outside_the_system_dirs_or_writable_by_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        file(root, "var/www/up/pip", 0o755);
        file(root, "tmp/xyz/pip", 0o755);
        file(root, "usr/bin/pip-g", 0o775);
        file(root, "usr/bin/pip-o", 0o757);
        file(root, "usr/local/bin/x/pip", 0o755);
        link(root, "usr/bin/pip", "../../var/www/up/pip");
        let sys = system(root);
        for path in [
            "/var/www/up/pip",
            "/tmp/xyz/pip",
            "/usr/bin/pip",
            "/usr/bin/pip-g",
            "/usr/bin/pip-o",
            "/usr/bin/../../tmp/xyz/pip",
        ] {
            assert!(!sys.is_installed(path), "{path}");
        }
        assert!(sys.is_installed("/usr/local/bin/x/pip"));
        // A directory on the way that others may write: anyone could have swapped the file.
        std::fs::set_permissions(
            root.join("usr/local/bin/x"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        assert!(!sys.is_installed("/usr/local/bin/x/pip"));
    }

    #[test]
    fn the_hosts_own_shell_is_installed() {
        let host = super::SystemFiles::default();
        assert!(host.is_installed("/bin/sh"));
        assert!(!host.is_installed("/tmp"));
    }

    #[test]
    fn a_file_of_another_owner_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        file(root, "usr/bin/pip3", 0o755);
        assert!(system(root).is_installed("/usr/bin/pip3"));
        let sys = foreign(root, "usr/bin/pip3", 33);
        assert!(!sys.is_installed("/usr/bin/pip3"));
    }
}
