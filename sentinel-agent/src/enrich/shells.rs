//! Which programs are shells, by what they are rather than what they are called: a program is
//! a shell when its executable has the same content (SHA-256) as one of the installed shells —
//! every path in `/etc/shells` plus the `lineage.shells` names found in `PATH`. So `bash`
//! copied to `/tmp/kworker` is a shell, and a program merely named `sh` is not.
//!
//! Verdicts are cached by the file's (device, inode, mtime, size): a file is hashed once, and
//! only when its size is the size of an installed shell, so most executables cost one `stat`.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use sentinel_common::events::exec::ExeId;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::{
    config::name_matches,
    untrusted_file::{Links, UntrustedFile},
};

/// Verdicts kept before the cache is emptied (a host runs far fewer distinct executables).
const CACHE_MAX: usize = 4096;

/// Identity of a file's content as far as the cache is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            size: meta.size(),
        }
    }
}

/// What one `stat` tells of a candidate path, before anything is opened.
enum Known {
    Verdict(bool),
    NotTheExecd,
    Unknown,
}

/// The installed shells' fingerprints and a verdict cache.
#[derive(Debug, Default)]
pub struct Shells {
    hashes: HashSet<[u8; 32]>,
    sizes: HashSet<u64>,
    /// `lineage.shells`: the fallback when the executable cannot be read any more.
    names: Vec<String>,
    /// The installed shells, for the log and tests.
    paths: Vec<PathBuf>,
    cache: HashMap<FileKey, bool>,
}

/// SHA-256 of an open file's content, at most `limit` bytes of it.
fn hash(file: &File, limit: u64) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut file = file.take(limit);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

impl Shells {
    /// Fingerprint the shells listed in `etc_shells` and the `names` found in `path_env`.
    pub fn load(names: &[String], etc_shells: &Path, path_env: &str) -> Self {
        let mut candidates: Vec<PathBuf> = std::fs::read_to_string(etc_shells)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('/'))
            .map(PathBuf::from)
            .collect();
        for name in names {
            candidates.extend(
                std::env::split_paths(path_env)
                    .map(|dir| dir.join(name))
                    .filter(|p| p.is_file()),
            );
        }
        let mut shells = Self {
            names: names.to_vec(),
            ..Self::default()
        };
        let mut seen = HashSet::new();
        for path in candidates {
            let Ok(file) = File::open(&path) else {
                continue; // listed but not installed
            };
            // /bin/sh, /usr/bin/sh and a symlinked dash are one file: hash it once.
            let Ok(meta) = file.metadata() else { continue };
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            match (file.metadata(), hash(&file, u64::MAX)) {
                (Ok(meta), Ok(digest)) if meta.is_file() => {
                    shells.sizes.insert(meta.size());
                    shells.hashes.insert(digest);
                    shells.paths.push(path);
                }
                (_, Err(e)) | (Err(e), _) => {
                    warn!(path = %path.display(), "cannot hash shell: {e}")
                }
                _ => {}
            }
        }
        info!(
            distinct = shells.hashes.len(),
            "installed shells: {}",
            shells
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        shells
    }

    /// How many distinct shell executables are known.
    #[cfg(test)]
    pub fn distinct(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the regular file open as `file` is a shell. One byte past its size is hashed,
    /// so a file that grows while it is read never keeps the hash going, and is no shell.
    fn is_shell_file(&mut self, file: &UntrustedFile) -> std::io::Result<bool> {
        let meta = file.metadata();
        let key = FileKey::of(meta);
        if let Some(&verdict) = self.cache.get(&key) {
            return Ok(verdict);
        }
        let verdict = self.sizes.contains(&meta.size())
            && self
                .hashes
                .contains(&hash(file.file(), meta.size().saturating_add(1))?);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(key, verdict);
        Ok(verdict)
    }

    /// What the cache knows of the file at `path` as it is now: a verdict when it is the
    /// exec'd file (`exe`) unchanged since it was judged (same device, inode, size and
    /// modification time); that it is not the exec'd file (nothing to open); or nothing.
    fn cached_verdict(&self, path: &Path, exe: ExeId) -> Known {
        let Ok(meta) = std::fs::metadata(path) else {
            return Known::NotTheExecd; // gone, or unreadable: opening it fails too
        };
        if !meta.is_file() || !is_same_file(exe, &meta) {
            return Known::NotTheExecd;
        }
        match self.cache.get(&FileKey::of(&meta)) {
            Some(&verdict) => Known::Verdict(verdict),
            None => Known::Unknown,
        }
    }

    /// Whether process `pid`, which exec'd `filename` as `comm`, runs a shell. `exe` is the
    /// kernel's identity of what it exec'd: the file read must be that one, since the process
    /// may have exec'd again by now (`sh -c 'python3 …'` replaces sh at once). The file is
    /// `filename` if absolute and still the exec'd file, else `/proc/<pid>/exe` (right even
    /// when the path was replaced or deleted); when neither is the exec'd file, the name decides
    /// (`lineage.shells`).
    /// Both are opened as an [`UntrustedFile`]: a FIFO or device put at `filename` after the
    /// exec is refused at once (the name decides), never waited on.
    pub fn is_shell(
        &mut self,
        proc_root: &Path,
        pid: u32,
        filename: &str,
        comm: &str,
        exe: ExeId,
    ) -> bool {
        // The exec'd path first: it is nearly always the exec'd file still, and a `stat` of it
        // is cheap, while one of `/proc/<pid>/exe` builds the dentries of a process that has
        // usually exited by the time its record is handled. Either counts only when it is the
        // kernel's `exe`; without one (an old record), `/proc/<pid>/exe` comes first.
        let by_path = filename.starts_with('/').then(|| PathBuf::from(filename));
        let by_proc = Some(proc_root.join(pid.to_string()).join("exe"));
        let candidates = if exe == ExeId::default() {
            [by_proc, by_path]
        } else {
            [by_path, by_proc]
        };
        for path in candidates.into_iter().flatten() {
            // Every exec below a server asks: a verdict cached for what the path holds now
            // takes one `stat`, no open.
            match self.cached_verdict(&path, exe) {
                Known::Verdict(verdict) => return verdict,
                Known::NotTheExecd => continue,
                Known::Unknown => {}
            }
            let file = match UntrustedFile::open(&path, Links::Follow) {
                Ok(file) => file,
                Err(e) => {
                    debug!(path = %path.display(), "shell check: {e}");
                    continue;
                }
            };
            if !is_same_file(exe, file.metadata()) {
                continue;
            }
            if let Ok(verdict) = self.is_shell_file(&file) {
                return verdict;
            }
        }
        self.names.iter().any(|n| name_matches(n, comm))
    }
}

/// Whether `meta` is the file the kernel identified as `exe` (unknown identities match).
fn is_same_file(exe: ExeId, meta: &std::fs::Metadata) -> bool {
    exe == ExeId::default() || exe == exe_id(meta)
}

/// The kernel's identity ([`ExeId`]) of the file `meta` describes.
pub fn exe_id(meta: &std::fs::Metadata) -> ExeId {
    // The kernel's dev_t is MAJOR << 20 | MINOR; userspace encodes it its own way.
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    ExeId {
        ino: meta.ino(),
        dev: major << 20 | minor,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn fixture() -> (tempfile::TempDir, Shells) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("mysh"), b"#!shell content, 1").unwrap();
        std::fs::write(bin.join("other"), b"#!shell content, 2").unwrap();
        std::fs::write(dir.path().join("shells"), "# comment\n/nonexistent/zsh\n").unwrap();
        let shells = Shells::load(
            &["mysh".to_string()],
            &dir.path().join("shells"),
            bin.to_str().unwrap(),
        );
        (dir, shells)
    }

    #[test]
    fn a_copy_under_another_name_is_a_shell() {
        let (dir, mut shells) = fixture();
        assert_eq!(shells.distinct(), 1);
        let copy = dir.path().join("kworker");
        std::fs::copy(dir.path().join("bin/mysh"), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let none = Path::new("/nonexistent-proc");
        assert!(shells.is_shell(none, 1, copy.to_str().unwrap(), "kworker", ExeId::default()));
        // Same size, other content: not a shell, even when named like one.
        let fake = dir.path().join("mysh");
        std::fs::write(&fake, b"#!shell content, 2").unwrap();
        assert!(!shells.is_shell(none, 1, fake.to_str().unwrap(), "mysh", ExeId::default()));
    }

    #[test]
    fn rewritten_in_place_is_looked_at_again() {
        let (dir, mut shells) = fixture();
        let none = Path::new("/nonexistent-proc");
        let f = dir.path().join("tool");
        std::fs::write(&f, b"not a shell at all").unwrap();
        assert!(!shells.is_shell(none, 1, f.to_str().unwrap(), "tool", ExeId::default()));
        // Same inode, new content and mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"#!shell content, 1").unwrap();
        assert!(shells.is_shell(none, 1, f.to_str().unwrap(), "tool", ExeId::default()));
    }

    /// The kernel's identity of `path`.
    fn kernel_id(path: &Path) -> ExeId {
        exe_id(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn the_exec_d_file_is_judged_not_what_the_process_runs_now() {
        let (dir, mut shells) = fixture();
        let copy = dir.path().join("kworker");
        std::fs::copy(dir.path().join("bin/mysh"), &copy).unwrap();
        let id = kernel_id(&copy);
        // This process's /proc exe is the test binary, not the file the kernel named: the
        // path is read instead.
        let me = std::process::id();
        let path = copy.to_str().unwrap();
        assert!(shells.is_shell(Path::new("/proc"), me, path, "kworker", id));
        // A shell exec'd, then replaced by another program at the same path: the name decides.
        let other = kernel_id(&dir.path().join("bin/other"));
        assert!(!shells.is_shell(Path::new("/proc"), me, path, "kworker", other));
        assert!(shells.is_shell(Path::new("/proc"), me, path, "mysh", other));
    }

    #[test]
    fn unreadable_falls_back_to_the_name() {
        let (_dir, mut shells) = fixture();
        let none = Path::new("/nonexistent-proc");
        assert!(shells.is_shell(none, 1, "relative/path", "mysh", ExeId::default()));
        assert!(!shells.is_shell(none, 1, "/gone/for/good", "git", ExeId::default()));
    }

    #[test]
    fn a_fifo_at_the_exec_d_path_is_answered_at_once_by_the_name() {
        use crate::untrusted_file::testing::{answers_at_once, mkfifo};
        let (dir, shells) = fixture();
        let fifo = dir.path().join("kworker");
        mkfifo(&fifo);
        let path = fifo.display().to_string();
        let verdicts = answers_at_once(move || {
            let mut shells = shells;
            let none = Path::new("/nonexistent-proc");
            [
                shells.is_shell(none, 1, &path, "mysh", ExeId::default()),
                shells.is_shell(none, 1, &path, "kworker", ExeId::default()),
            ]
        });
        assert_eq!(verdicts, [true, false]);
        drop(dir);
    }

    #[test]
    fn the_real_shells_are_found_through_proc() {
        let names = ["sh".to_string(), "bash".to_string()];
        let path = std::env::var("PATH").unwrap_or_default();
        let mut shells = Shells::load(&names, Path::new("/etc/shells"), &path);
        assert!(shells.distinct() >= 1);
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Give exec a moment to land; the verdict comes from /proc/<pid>/exe.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(shells.is_shell(Path::new("/proc"), pid, "", "whatever", ExeId::default()));
        drop(child.stdin.take());
        child.wait().unwrap();
        let me = std::process::id();
        assert!(!shells.is_shell(Path::new("/proc"), me, "", "sh", ExeId::default()));
    }
}
