//! Files that hold secrets must be the ones the admin put there. A key, a token or a password
//! read from a file anyone could have written (or swapped) is not the admin's, and one that
//! others can read is no longer a secret. So the agent refuses to start on a secret-holding
//! file that is not owned by root, is writable by its group or by others, or is readable by
//! others; each refusal names the file, what secret it holds and the exact `chown`/`chmod`
//! that fixes it. `sentinel check-config` reports the same refusals.
//!
//! Two kinds of file: a dedicated secret file (the override key, the fleet password file) is
//! private to its owner (0600 or 0400); the config file also holds plain settings and is
//! installed 0640 root:root, so its group may read it.

use std::{fs::Metadata, os::unix::fs::MetadataExt, path::Path};

/// Who besides the owner may read a secret-holding file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Only the owner (a dedicated secret file: mode 0600 or 0400).
    Owner,
    /// The owner and the file's group (the config file: mode 0640).
    Group,
}

/// Why a secret-holding file is refused; each message ends with the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    #[error("{path} is owned by uid {uid}, not root, and holds {holds}: chown root {path}")]
    Owner {
        path: String,
        uid: u32,
        holds: String,
    },
    #[error("{path} is {access} and holds {holds}: chmod {fix} {path}")]
    Mode {
        path: String,
        /// What is wrong, e.g. `readable by others` or `writable by its group`.
        access: String,
        holds: String,
        /// The symbolic mode change that fixes it, e.g. `o-rwx`.
        fix: &'static str,
    },
}

/// Check a secret-holding file's owner and mode. `holds` names the secret (e.g.
/// `notify.telegram.bot_token`) for the message. The owner is checked first: a file root does
/// not own is refused whatever its mode.
pub fn check(path: &Path, meta: &Metadata, holds: &str, readers: Readers) -> Result<(), Unsafe> {
    let shown = path.display().to_string();
    if meta.uid() != 0 {
        return Err(Unsafe::Owner {
            path: shown,
            uid: meta.uid(),
            holds: holds.into(),
        });
    }
    let faults = mode_faults(meta.mode(), readers);
    if faults.is_empty() {
        return Ok(());
    }
    Err(Unsafe::Mode {
        path: shown,
        access: faults.join(" and "),
        holds: holds.into(),
        fix: match readers {
            Readers::Owner => "go-rwx",
            Readers::Group if meta.mode() & 0o020 != 0 => "g-w,o-rwx",
            Readers::Group => "o-rwx",
        },
    })
}

/// [`check`] on the file at `path` (following symlinks: the file read is the one judged).
pub fn check_path(path: &Path, holds: &str, readers: Readers) -> Result<(), CheckError> {
    let meta = std::fs::metadata(path).map_err(|source| CheckError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(check(path, &meta, holds, readers)?)
}

/// Why a secret-holding file could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Unsafe(#[from] Unsafe),
}

/// What a mode allows that a secret-holding file must not: phrases for the message.
fn mode_faults(mode: u32, readers: Readers) -> Vec<&'static str> {
    let mut out = Vec::new();
    if mode & 0o020 != 0 {
        out.push("writable by its group");
    }
    if mode & 0o002 != 0 {
        out.push("writable by others");
    }
    if readers == Readers::Owner && mode & 0o040 != 0 {
        out.push("readable by its group");
    }
    if mode & 0o004 != 0 {
        out.push("readable by others");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use super::*;

    fn file(mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "s3cret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    fn verdict(path: &Path, readers: Readers) -> Result<(), String> {
        check_path(path, "notify.telegram.bot_token", readers).map_err(|e| e.to_string())
    }

    #[test]
    fn private_root_files_pass() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (files must be root's)");
            return;
        }
        for mode in [0o600, 0o400] {
            let (_d, path) = file(mode);
            assert_eq!(verdict(&path, Readers::Owner), Ok(()), "{mode:o}");
        }
        let (_d, path) = file(0o640);
        assert_eq!(verdict(&path, Readers::Group), Ok(()));
        assert!(verdict(&path, Readers::Owner).is_err());
    }

    #[test]
    fn readable_by_others_names_the_exact_fix() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (files must be root's)");
            return;
        }
        let (_d, path) = file(0o644);
        let p = path.display();
        assert_eq!(
            verdict(&path, Readers::Group).unwrap_err(),
            format!(
                "{p} is readable by others and holds notify.telegram.bot_token: chmod o-rwx {p}"
            )
        );
        assert_eq!(
            verdict(&path, Readers::Owner).unwrap_err(),
            format!(
                "{p} is readable by its group and readable by others and holds \
                 notify.telegram.bot_token: chmod go-rwx {p}"
            )
        );
        let (_d, path) = file(0o660);
        let p = path.display();
        assert_eq!(
            verdict(&path, Readers::Group).unwrap_err(),
            format!(
                "{p} is writable by its group and holds notify.telegram.bot_token: \
                 chmod g-w,o-rwx {p}"
            )
        );
        let (_d, path) = file(0o602);
        assert!(
            verdict(&path, Readers::Group)
                .unwrap_err()
                .contains("writable by others")
        );
    }

    #[test]
    fn a_file_root_does_not_own_is_refused_whatever_its_mode() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (to give a file away)");
            return;
        }
        let (_d, path) = file(0o600);
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let p = path.display();
        assert_eq!(
            verdict(&path, Readers::Owner).unwrap_err(),
            format!(
                "{p} is owned by uid 65534, not root, and holds notify.telegram.bot_token: \
                 chown root {p}"
            )
        );
    }

    #[test]
    fn a_missing_file_says_so() {
        let err = verdict(Path::new("/nonexistent/secret"), Readers::Owner).unwrap_err();
        assert!(err.starts_with("/nonexistent/secret: "), "{err}");
    }
}
