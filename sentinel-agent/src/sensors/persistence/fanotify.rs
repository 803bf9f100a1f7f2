//! The raw fanotify interface the persistence sensor needs: a directory's file handle
//! (`name_to_handle_at`) and the parse of a `FAN_REPORT_DFID_NAME` group's events, bounded
//! (a malformed record ends the parse, never a read past the buffer).

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use super::Handle;

/// The handle of `dir` as fanotify reports it: type, then bytes.
pub(super) fn handle_of(dir: &Path) -> io::Result<Handle> {
    #[repr(C)]
    struct Raw {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut raw = Raw {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0;
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `raw` is a file_handle with room for 128 bytes, as its header says.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&raw mut raw).cast(),
            &mut mount_id,
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (raw.bytes as usize).min(raw.data.len());
    Ok(handle_key(raw.kind, &raw.data[..len]))
}

fn handle_key(kind: i32, bytes: &[u8]) -> Handle {
    let mut key = kind.to_ne_bytes().to_vec();
    key.extend_from_slice(bytes);
    key
}

/// One event: what happened, who did it, and in which directory to which name.
#[derive(Debug)]
pub(super) struct Event {
    pub mask: u64,
    pub pid: u32,
    pub dir: Handle,
    pub name: OsString,
    /// The file itself (a group without file handles only).
    pub file: Option<OwnedFd>,
}

/// A notification group: with directory handles and names (`fid`), or the classic kind whose
/// events carry an open descriptor of the file (for a filesystem without file handles, such
/// as an overlayfs root without `nfs_export`). Needs CAP_SYS_ADMIN to report pids.
pub(super) fn init(fid: bool) -> io::Result<OwnedFd> {
    let report = if fid { libc::FAN_REPORT_DFID_NAME } else { 0 };
    let file_flags = libc::O_RDONLY | libc::O_LARGEFILE | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: plain system call; the descriptor is owned below.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | report,
            file_flags as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add a mark for `mask` on `dir` to group `group`.
pub(super) fn mark(group: &OwnedFd, dir: &Path, mask: u64) -> io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid descriptor and NUL-terminated path.
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD,
            mask,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where the open file `file` is now (after a rename, its new path).
pub(super) fn path_of(file: &OwnedFd) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// The events in `buf` (as read from a `FAN_REPORT_DFID_NAME` group); a malformed record ends
/// the parse.
pub(super) fn parse(buf: &[u8]) -> Vec<Event> {
    const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= META {
        // SAFETY: META bytes are there; read unaligned into a plain C struct.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let len = meta.event_len as usize;
        if len < META || at + len > buf.len() || (meta.metadata_len as usize) < META {
            break;
        }
        let event = &buf[at..at + len];
        // A descriptor of the file comes only from a group without file handles; owned here,
        // so never leaked.
        // SAFETY: the kernel gave us this descriptor.
        let file = (meta.fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(meta.fd) });
        let mut ev = Event {
            mask: meta.mask,
            pid: meta.pid.max(0) as u32,
            dir: Vec::new(),
            name: OsString::new(),
            file,
        };
        if let Some((dir, name)) = dfid_name(&event[meta.metadata_len as usize..]) {
            ev.dir = dir;
            ev.name = name;
        }
        out.push(ev);
        at += len;
    }
    out
}

/// The directory handle and name of the first `DFID_NAME` info record in `info`.
pub(super) fn dfid_name(mut info: &[u8]) -> Option<(Handle, OsString)> {
    while info.len() >= 4 {
        let kind = info[0];
        let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        let record = &info[..len];
        if kind == libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
            // header (4), fsid (8), handle_bytes (4), handle_type (4), handle, name, NUL.
            let rest = record.get(12..)?;
            let bytes = u32::from_ne_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let kind = i32::from_ne_bytes(rest.get(4..8)?.try_into().ok()?);
            let handle = rest.get(8..8 + bytes)?;
            let name = rest.get(8 + bytes..)?;
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            return Some((
                handle_key(kind, handle),
                OsStr::from_bytes(name).to_os_string(),
            ));
        }
        info = &info[len..];
    }
    None
}
