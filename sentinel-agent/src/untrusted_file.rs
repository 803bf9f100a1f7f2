//! Files a process chose are read, never waited on. Detectors open files by a path an
//! unprivileged process controls: the program it exec'd (`miner` looks for `#!`, `shells`
//! hashes it), a `package.json` under a project's `node_modules` (`npm`). A plain `open` of a
//! FIFO blocks until a writer appears — forever, on the single-threaded event loop — and
//! reading `/dev/zero` never ends. So every such file is opened here: refused without being
//! opened when a `stat` says it is not a regular file, then opened `O_NONBLOCK` (a FIFO swapped
//! in after the `stat` opens at once instead of blocking) and `O_NOCTTY`, checked again with
//! `fstat` on the descriptor itself, and read up to a fixed number of bytes. What could not be
//! read says why ([`Unreadable`], shown as `unreadable: fifo`), so a detector can carry it
//! into an alert. Reading a regular file with `O_NONBLOCK` works as usual.
//!
//! A symlink is refused ([`Links::Refuse`], `O_NOFOLLOW`) unless the caller needs it resolved
//! ([`Links::Follow`]): `/proc/PID/exe` is a symlink by design (it resolves to the mapped
//! executable, which cannot be swapped for a FIFO), and a script is often run through one
//! (`node_modules/.bin/tsc`). A followed link is still checked before and after the open, so a
//! link to a device is refused without its device being opened.

use std::{
    fs::{File, Metadata, OpenOptions},
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// Whether the last component of a path may be a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// A symlink is refused (`O_NOFOLLOW`): the attacker could point it anywhere.
    Refuse,
    /// A symlink is resolved; what it leads to must still be a regular file.
    Follow,
}

/// What a path is when it is not a regular file (the FIFO and the symlink have variants of
/// their own in [`Unreadable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    CharDevice,
    BlockDevice,
    Socket,
    Other,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Directory => "directory",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Socket => "socket",
            Kind::Other => "not a regular file",
        })
    }
}

/// Why a file a process chose was not read.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("unreadable: fifo")]
    Fifo,
    #[error("unreadable: symlink")]
    Symlink,
    #[error("unreadable: {0}")]
    NotRegular(Kind),
    #[error("unreadable: larger than {cap} bytes")]
    TooLarge { cap: u64 },
    #[error("unreadable: {0}")]
    Io(#[from] std::io::Error),
}

impl Unreadable {
    /// Whether the path is something no program would put there by accident: a FIFO, a
    /// device, a socket or a directory where a file belongs (a trap for scanners). A missing
    /// file, a symlink or a too-large file is not.
    pub fn is_trap(&self) -> bool {
        matches!(self, Unreadable::Fifo | Unreadable::NotRegular(_))
    }
}

/// A regular file a process chose, open for reading.
#[derive(Debug)]
pub struct UntrustedFile {
    file: File,
    meta: Metadata,
}

impl UntrustedFile {
    /// Open `path` if it is a regular file; never blocks on a FIFO, never opens a device a
    /// `stat` already showed.
    pub fn open(path: &Path, links: Links) -> Result<Self, Unreadable> {
        let before = match links {
            Links::Refuse => std::fs::symlink_metadata(path)?,
            Links::Follow => std::fs::metadata(path)?,
        };
        regular(&before)?;
        open_nonblocking(path, links)
    }

    /// The file's metadata, from `fstat` on the open descriptor.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The open file, for a caller that streams it (e.g. a hash).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// At most the first `n` bytes (fewer when the file is shorter).
    pub fn head(&self, n: u64) -> Result<Vec<u8>, Unreadable> {
        let mut bytes = Vec::new();
        (&self.file).take(n).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The whole file, refused when it holds more than `cap` bytes (also when it grew past
    /// `cap` after the `fstat`).
    pub fn whole(&self, cap: u64) -> Result<Vec<u8>, Unreadable> {
        if self.meta.len() > cap {
            return Err(Unreadable::TooLarge { cap });
        }
        let bytes = self.head(cap.saturating_add(1))?;
        if bytes.len() as u64 > cap {
            return Err(Unreadable::TooLarge { cap });
        }
        Ok(bytes)
    }
}

/// At most the first `n` bytes of the regular file at `path`.
pub fn read_head(path: &Path, links: Links, n: u64) -> Result<Vec<u8>, Unreadable> {
    UntrustedFile::open(path, links)?.head(n)
}

/// The regular file at `path` as text (lossy UTF-8), refused beyond `cap` bytes.
pub fn read_text(path: &Path, links: Links, cap: u64) -> Result<String, Unreadable> {
    let bytes = UntrustedFile::open(path, links)?.whole(cap)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The open itself: `O_NONBLOCK` so a FIFO put in place after the `stat` cannot block,
/// `O_NOCTTY` so a terminal never becomes the agent's, `O_NOFOLLOW` unless links are followed;
/// then `fstat` on the descriptor decides.
fn open_nonblocking(path: &Path, links: Links) -> Result<UntrustedFile, Unreadable> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // O_NOFOLLOW on a symlink.
            Some(libc::ELOOP) if links == Links::Refuse => Unreadable::Symlink,
            // What open(2) says of a socket.
            Some(libc::ENXIO) => Unreadable::NotRegular(Kind::Socket),
            _ => Unreadable::Io(e),
        })?;
    let meta = file.metadata()?;
    regular(&meta)?;
    Ok(UntrustedFile { file, meta })
}

/// `Ok` for a regular file, else why not.
fn regular(meta: &Metadata) -> Result<(), Unreadable> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_fifo() {
        return Err(Unreadable::Fifo);
    } else if t.is_symlink() {
        return Err(Unreadable::Symlink);
    } else if t.is_dir() {
        Kind::Directory
    } else if t.is_char_device() {
        Kind::CharDevice
    } else if t.is_block_device() {
        Kind::BlockDevice
    } else if t.is_socket() {
        Kind::Socket
    } else {
        Kind::Other
    };
    Err(Unreadable::NotRegular(kind))
}

/// Helpers for the detectors' tests: a FIFO, and a call that must answer at once.
#[cfg(test)]
pub mod testing {
    use std::{path::Path, sync::mpsc, thread, time::Duration};

    /// Make a FIFO at `path`.
    pub fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    /// `f()` on a thread of its own; panics when it has not answered within 2 s (a blocked
    /// open would otherwise hang the test run instead of failing it).
    pub fn answers_at_once<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(2))
            .expect("blocked: no answer within 2 s")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::{testing::*, *};

    #[test]
    fn a_regular_file_reads_fine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("package.json");
        std::fs::write(&path, "{\"name\": \"x\"}").unwrap();
        assert_eq!(
            read_text(&path, Links::Refuse, 1024).unwrap(),
            "{\"name\": \"x\"}"
        );
        assert_eq!(read_head(&path, Links::Refuse, 2).unwrap(), b"{\"");
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("a");
        mkfifo(&fifo);
        for links in [Links::Refuse, Links::Follow] {
            let path = fifo.clone();
            let got = answers_at_once(move || read_head(&path, links, 2));
            assert!(matches!(got, Err(Unreadable::Fifo)), "{got:?}");
        }
        assert_eq!(
            read_head(&fifo, Links::Refuse, 2).unwrap_err().to_string(),
            "unreadable: fifo"
        );
    }

    /// A FIFO swapped in after the `stat`: the open itself must not block either.
    #[test]
    fn a_fifo_met_by_the_open_itself_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("a");
        mkfifo(&fifo);
        let got = answers_at_once(move || open_nonblocking(&fifo, Links::Refuse).map(|_| ()));
        assert!(matches!(got, Err(Unreadable::Fifo)), "{got:?}");
    }

    #[test]
    fn a_symlink_to_dev_zero_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("package.json");
        symlink("/dev/zero", &link).unwrap();
        let got = read_text(&link, Links::Refuse, 1 << 20);
        assert!(matches!(got, Err(Unreadable::Symlink)), "{got:?}");
        // Followed, it leads to a device: refused too, and never read.
        let got = read_text(&link, Links::Follow, 1 << 20);
        assert!(
            matches!(got, Err(Unreadable::NotRegular(Kind::CharDevice))),
            "{got:?}"
        );
        assert_eq!(got.unwrap_err().to_string(), "unreadable: character device");
        // The open alone refuses the link too.
        let got = open_nonblocking(&link, Links::Refuse).map(|_| ());
        assert!(matches!(got, Err(Unreadable::Symlink)), "{got:?}");
    }

    #[test]
    fn a_large_file_is_read_only_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; 64 * 1024]).unwrap();
        assert_eq!(read_head(&path, Links::Refuse, 100).unwrap().len(), 100);
        let got = read_text(&path, Links::Refuse, 1000);
        assert!(
            matches!(got, Err(Unreadable::TooLarge { cap: 1000 })),
            "{got:?}"
        );
        assert_eq!(
            read_text(&path, Links::Refuse, 64 * 1024).unwrap().len(),
            64 * 1024
        );
    }

    #[test]
    fn proc_exe_is_followed_only_when_asked() {
        let exe = Path::new("/proc/self/exe");
        let got = read_head(exe, Links::Refuse, 4);
        assert!(matches!(got, Err(Unreadable::Symlink)), "{got:?}");
        assert_eq!(read_head(exe, Links::Follow, 4).unwrap(), b"\x7fELF");
    }

    #[test]
    fn a_directory_or_a_missing_file_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let got = read_head(dir.path(), Links::Refuse, 2);
        assert!(
            matches!(got, Err(Unreadable::NotRegular(Kind::Directory))),
            "{got:?}"
        );
        assert!(got.unwrap_err().is_trap());
        let missing = read_head(&dir.path().join("gone"), Links::Refuse, 2).unwrap_err();
        assert!(matches!(missing, Unreadable::Io(_)) && !missing.is_trap());
    }
}
