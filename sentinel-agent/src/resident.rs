//! Handing back the pages of code only start-up ran. Start-up runs a large share of the
//! binary once (the command line, the kernel's BTF, the loader, the config checks, the
//! seeding of the tree), and every page it touched, plus the kernel's fault-around of 64 KiB
//! about each, stays mapped: 10–11 MiB of the release binary's 15 MiB of code and read-only
//! data counted in the agent's resident memory for good, against 2–3 MiB the steady state
//! runs. Once ready, the agent unmaps those pages (`MADV_DONTNEED`); what the event loop uses
//! comes back at its next touch, from the page cache, with a minor fault.
//!
//! Only read-only mappings of regular files with no private (copy-on-write) page are dropped:
//! their pages are exactly the file's, so dropping them loses nothing. A page the dynamic
//! loader relocated (RELRO) is private and keeps its mapping whole.

use std::{fs, io};

/// A mapping of `/proc/self/smaps` that may be dropped.
#[derive(Debug, PartialEq, Eq)]
struct Droppable {
    start: usize,
    end: usize,
}

/// Drop the resident pages of every read-only file mapping whose pages all come from its
/// file; the number of bytes that were resident in them.
pub fn drop_file_pages() -> io::Result<usize> {
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    let mut dropped = 0;
    for (m, rss) in droppable(&smaps) {
        // SAFETY: the range is a whole mapping of this process, read-only and backed by its
        // file only (no private page): unmapping its pages changes no byte the process sees.
        let ret = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if ret == 0 {
            dropped += rss;
        }
    }
    Ok(dropped)
}

/// The droppable mappings of a `/proc/PID/smaps` text, each with its resident bytes.
fn droppable(smaps: &str) -> Vec<(Droppable, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(Droppable, usize)> = None;
    let mut anonymous = 0;
    let finish = |current: Option<(Droppable, usize)>,
                  anonymous: usize,
                  out: &mut Vec<(Droppable, usize)>| {
        if let Some(c) = current
            && anonymous == 0
            && c.1 > 0
        {
            out.push(c);
        }
    };
    for line in smaps.lines() {
        if let Some(m) = mapping_header(line) {
            finish(current.take(), anonymous, &mut out);
            anonymous = 0;
            current = m.map(|m| (m, 0));
        } else if let Some(kb) = field_kb(line, "Rss:") {
            if let Some(c) = current.as_mut() {
                c.1 = kb * 1024;
            }
        } else if let Some(kb) = field_kb(line, "Anonymous:") {
            anonymous = kb;
        }
    }
    finish(current, anonymous, &mut out);
    out
}

/// A mapping's header line: `Some(Some(m))` for a read-only private mapping of a regular
/// file, `Some(None)` for any other mapping, `None` for a field line.
fn mapping_header(line: &str) -> Option<Option<Droppable>> {
    let mut parts = line.split_whitespace();
    let range = parts.next()?;
    let (start, end) = range.split_once('-')?;
    let (Ok(start), Ok(end)) = (
        usize::from_str_radix(start, 16),
        usize::from_str_radix(end, 16),
    ) else {
        return None; // a field line ("Rss:" …) has no hex range
    };
    let perms = parts.next()?;
    let path = parts.nth(3).unwrap_or("");
    let read_only_private = perms.len() == 4 && !perms.contains('w') && perms.ends_with('p');
    let regular_file = path.starts_with('/') && !line.ends_with("(deleted)");
    Some((read_only_private && regular_file && end > start).then_some(Droppable { start, end }))
}

/// `name   123 kB` → 123.
fn field_kb(line: &str, name: &str) -> Option<usize> {
    line.strip_prefix(name)?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
555e608be000-555e60ce6000 r--p 00000000 fe:01 123 /usr/bin/sentinel
Size:               4256 kB
Rss:                2184 kB
Anonymous:             0 kB
555e60ce6000-555e616fc000 r-xp 00428000 fe:01 123 /usr/bin/sentinel
Size:              10328 kB
Rss:                8344 kB
Anonymous:             0 kB
555e616fc000-555e61756000 r--p 00e3e000 fe:01 123 /usr/bin/sentinel
Size:                360 kB
Rss:                 360 kB
Anonymous:           356 kB
555e61756000-555e61760000 rw-p 00e98000 fe:01 123 /usr/bin/sentinel
Rss:                  40 kB
Anonymous:            40 kB
5cb74000000-5cb74980000 rw-p 00000000 00:00 0 
Rss:                8360 kB
Anonymous:          8360 kB
7f37a3c9f000-7f37a3da0000 r--s 00000000 00:0f 1060 anon_inode:bpf-map
Rss:                1028 kB
Anonymous:             0 kB
7f37a4018000-7f37a416e000 r-xp 00028000 fe:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1112 kB
Anonymous:             0 kB
7f37a4400000-7f37a4401000 r-xp 00000000 fe:01 78 /tmp/gone (deleted)
Rss:                   4 kB
Anonymous:             0 kB
7f37a4500000-7f37a4501000 r-xp 00000000 fe:01 79 /usr/lib/unused.so
Rss:                   0 kB
Anonymous:             0 kB
7fffe7d70000-7fffe7d91000 rw-p 00000000 00:00 0 [stack]
Rss:                 124 kB
Anonymous:           124 kB
";

    #[test]
    fn only_read_only_file_mappings_without_private_pages() {
        let got: Vec<(usize, usize)> = droppable(SMAPS)
            .into_iter()
            .map(|(m, rss)| (m.start, rss / 1024))
            .collect();
        assert_eq!(
            got,
            [
                (0x555e608be000, 2184), // read-only data
                (0x555e60ce6000, 8344), // code
                (0x7f37a4018000, 1112), // libc's code
            ]
        );
    }

    #[test]
    fn fields_parse() {
        assert_eq!(field_kb("Rss:                2184 kB", "Rss:"), Some(2184));
        assert_eq!(field_kb("Rss: x kB", "Rss:"), None);
        assert_eq!(mapping_header("Rss:                2184 kB"), None);
    }

    /// On this very process: what it drops is read-only file memory, and the code still runs.
    #[test]
    fn dropping_keeps_the_process_working() {
        let before = droppable(&fs::read_to_string("/proc/self/smaps").unwrap());
        assert!(!before.is_empty(), "a test binary maps its own code");
        drop_file_pages().unwrap();
        let text = format!("{:?}", (1..100).map(|i| i * 3).sum::<u32>());
        assert_eq!(text, "14850");
    }
}
