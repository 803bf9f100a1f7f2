//! Which programs the kill engine never signals: sshd and its session binaries, init and
//! systemd, login and logind (built in), and `enforce.protect`.
//!
//! A protected *path* stands for the file it names on the host: each is resolved to its
//! identity (device, inode) by the agent, in the host's mount namespace, and a process is
//! protected when the file it runs — `stat` of `/proc/PID/exe`, which reaches the real file
//! whatever path the process's own mount namespace shows — is that file. So a miner run as
//! `/usr/sbin/sshd` through a bind mount in a private mount namespace is no sshd, while sshd
//! started through a symlink or a hard link still is. The paths are resolved again before each
//! decision, and identities seen once stay protected: after a package upgrade replaced
//! `/usr/sbin/sshd`, both the daemon still running the old file and the sessions running the
//! new one are spared.
//!
//! A name entry of `enforce.protect` (no `/`) matches the executable's file name, as documented.
//! A process whose executable cannot be `stat`ed (running since before the agent, exiting, a
//! kernel thread) is judged as before: by the executable's path, else by its name, which can
//! only spare it.

use std::{collections::HashMap, path::Path};

use sentinel_common::events::exec::ExeId;

use super::kill::Facts;
use crate::{config::name_matches, enrich::shells::exe_id};

/// Executables never killed and never escalated over: sshd and its session binaries, init and
/// systemd (also the per-user manager), login and logind.
pub const ALWAYS_PROTECTED: [&str; 14] = [
    "/usr/sbin/sshd",
    "/sbin/sshd",
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/openssh/sshd-auth",
    "/usr/libexec/openssh/sshd-session",
    "/usr/libexec/openssh/sshd-auth",
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
    "/sbin/init",
    "/usr/sbin/init",
    "/usr/lib/systemd/systemd-logind",
    "/lib/systemd/systemd-logind",
    "/usr/bin/login",
    "/bin/login",
];

/// Names that protect a process whose executable is unknown.
const PROTECTED_NAMES: [&str; 5] = ["sshd", "sshd-session", "systemd", "init", "login"];

/// The identity of the file at `path` (symlinks followed), in the agent's mount namespace.
pub fn identity(path: &Path) -> Option<ExeId> {
    std::fs::metadata(path).ok().map(|m| exe_id(&m))
}

/// A protected path: built in, or an absolute `enforce.protect` entry.
#[derive(Debug)]
struct Guarded {
    path: String,
    builtin: bool,
}

impl Guarded {
    fn why(&self, exe: &str) -> String {
        match self.builtin {
            true => format!("{exe} is {} (always protected)", self.path),
            false => format!("{exe} is {} (in enforce.protect)", self.path),
        }
    }
}

/// The protected executables, by identity.
#[derive(Debug)]
pub struct Protection {
    paths: Vec<Guarded>,
    /// Every identity a protected path has had since start, and the path.
    ids: HashMap<ExeId, usize>,
    /// `enforce.protect`, as configured.
    protect: Vec<String>,
}

impl Protection {
    /// `builtin` absolute paths plus `protect` (`enforce.protect`), resolved now.
    pub fn new(builtin: &[&str], protect: Vec<String>) -> Self {
        let builtin = builtin.iter().map(|p| Guarded {
            path: (*p).into(),
            builtin: true,
        });
        let configured = protect
            .iter()
            .filter(|e| e.starts_with('/'))
            .map(|p| Guarded {
                path: p.clone(),
                builtin: false,
            });
        let mut me = Self {
            paths: builtin.chain(configured).collect(),
            ids: HashMap::new(),
            protect,
        };
        me.refresh();
        me
    }

    /// Resolve the protected paths again (a package upgrade replaces the file); identities
    /// seen before stay.
    pub fn refresh(&mut self) {
        for (i, g) in self.paths.iter().enumerate() {
            if let Some(id) = identity(Path::new(&g.path)) {
                self.ids.entry(id).or_insert(i);
            }
        }
    }

    /// Why the process `p` is never signalled by what it runs, if it is not.
    pub fn reason(&self, p: &Facts) -> Option<String> {
        let exe = p.exe.as_deref();
        if let Some(id) = p.exe_id {
            let shown = exe.unwrap_or(&p.comm);
            if let Some(&i) = self.ids.get(&id) {
                return Some(self.paths[i].why(shown));
            }
            // The file is none of the protected ones, whatever its path reads.
            return exe.and_then(|exe| self.by_name(exe));
        }
        match exe {
            Some(exe) => match self.paths.iter().find(|g| g.path == exe) {
                Some(g) => Some(g.why(exe)),
                None => self.by_name(exe),
            },
            None => {
                let mut all = PROTECTED_NAMES
                    .iter()
                    .copied()
                    .chain(self.protect.iter().map(String::as_str));
                all.any(|n| name_matches(n, &p.comm))
                    .then(|| format!("{} (executable unknown) is protected by name", p.comm))
            }
        }
    }

    /// A name entry of `enforce.protect` matching the file name of `exe`.
    fn by_name(&self, exe: &str) -> Option<String> {
        let base = exe.rsplit('/').next().unwrap_or(exe);
        self.protect
            .iter()
            .filter(|e| !e.starts_with('/'))
            .find(|n| name_matches(n, base))
            .map(|n| format!("{exe} is in enforce.protect ({n})"))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn facts(comm: &str, exe: Option<&str>, exe_id: Option<ExeId>) -> Facts {
        Facts {
            ppid: 1,
            start: 1000,
            comm: comm.into(),
            exe: exe.map(Into::into),
            exe_id,
            forked_by: 1,
            login_leader: false,
        }
    }

    #[test]
    fn a_protected_path_stands_for_its_file_not_for_what_a_path_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, body: &str| {
            let p = dir.path().join(name);
            fs::write(&p, body).unwrap();
            p.to_str().unwrap().to_string()
        };
        let sshd = file("sshd", "the real sshd");
        let worker = file("worker", "the app's worker");
        let burn = file("burn", "a miner");
        let link = dir.path().join("sshd-link");
        std::os::unix::fs::symlink(&sshd, &link).unwrap();
        let id = |p: &str| identity(Path::new(p));
        let k = Protection::new(
            &[link.to_str().unwrap()],
            vec!["node".into(), worker.clone()],
        );
        // A miner whose executable's path reads like sshd (a bind mount in its own mount
        // namespace): its file is the miner's.
        let fake = facts("sshd", Some(&link.to_string_lossy()), id(&burn));
        assert_eq!(k.reason(&fake), None);
        let fake = facts("worker", Some(&worker), id(&burn));
        assert_eq!(k.reason(&fake), None);
        // The real file, whatever path the process shows.
        let real = facts("xmrig", Some("/tmp/x"), id(&sshd));
        assert!(k.reason(&real).unwrap().contains("always protected"));
        let real = facts("worker", Some(&worker), id(&worker));
        assert!(k.reason(&real).unwrap().contains("enforce.protect"));
        // Name entries go by the executable's file name, as documented.
        let node = facts("node", Some("/usr/bin/node"), id(&burn));
        assert!(k.reason(&node).unwrap().contains("(node)"));
        // Executable not stat-able: today's fallbacks, path then name.
        assert!(k.reason(&facts("x", Some(&worker), None)).is_some());
        assert!(k.reason(&facts("sshd", None, None)).is_some());
        assert!(k.reason(&facts("xmrig", None, None)).is_none());
    }

    #[test]
    fn a_replaced_file_is_protected_after_a_refresh_and_the_old_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sshd");
        fs::write(&path, "v1").unwrap();
        let old = identity(&path);
        let mut k = Protection::new(&[path.to_str().unwrap()], Vec::new());
        // An upgrade writes the new binary beside and renames it over the old one.
        let new = dir.path().join("sshd.new");
        fs::write(&new, "v2").unwrap();
        fs::rename(&new, &path).unwrap();
        let running_new = facts("sshd", Some(path.to_str().unwrap()), identity(&path));
        assert_ne!(running_new.exe_id, old);
        assert_eq!(k.reason(&running_new), None);
        k.refresh();
        assert!(k.reason(&running_new).is_some());
        assert!(k.reason(&facts("sshd", None, old)).is_some());
    }
}
