//! The kernel struct offsets the sensors need, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`). Rust eBPF has no CO-RE relocations, so the agent looks up the
//! byte offsets of the few kernel struct fields its programs read and hands them over as
//! [`KernelOffsets`].
//!
//! Why a parser of our own (evaluated for issue 15):
//! - `aya-obj` 0.3 (already a dependency, through aya) parses BTF, but keeps what is needed
//!   here private: `Btf::type_by_id` and the members of `Struct`/`Union` are `pub(crate)`, so
//!   a member's offset cannot be read from outside the crate.
//! - `btfparse` 1.3 (Apache-2.0) does answer the question (`TypeInformation::offset_of(type,
//!   "a.b")`, anonymous members included), but its `offset_of` follows typedef and qualifier
//!   chains in an unbounded loop (read in 1.3.9's `type_information.rs`): a cyclic chain in
//!   damaged BTF would hang the agent at start, which this parser refuses
//!   (`lookup::MAX_DEPTH`; see the `bad_references_and_cycles` and garbled-input tests). The
//!   swap was therefore not made; it is worth revisiting if btfparse bounds that walk.
//!
//! The folder: [`parse`] reads the raw BTF format into a [`Btf`] (types and members, checked
//! for bounds); [`lookup`] finds a member's byte offset in a struct, through anonymous members;
//! this file asks for the fields the kernel programs read and fills [`KernelOffsets`].

mod error;
mod lookup;
mod parse;
#[cfg(test)]
mod testkit;

use sentinel_common::KernelOffsets;

pub use self::{error::BtfError, parse::Btf};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

impl Btf {
    /// All the `task_struct`/`mm_struct` offsets the kernel programs need; any missing field
    /// is an error. `tp_exit_group_dead` is a tracepoint offset, not BTF: left at 0 here.
    /// The offsets behind the exec identity and the `stdio` sensor (files, inodes, sockets)
    /// are best effort: one missing leaves it 0, and the programs then report no identity
    /// or no socket on stdio rather than read a wrong address.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let task = |member| self.member_offset("task_struct", member);
        let mm = |member| self.member_offset("mm_struct", member);
        let opt = |strukt, member| self.member_offset(strukt, member).unwrap_or(0);
        let mut o = KernelOffsets {
            task_real_parent: task("real_parent")?,
            task_tgid: task("tgid")?,
            task_pid: task("pid")?,
            task_mm: task("mm")?,
            task_start_boottime: task("start_boottime")?,
            mm_arg_start: mm("arg_start")?,
            mm_arg_end: mm("arg_end")?,
            mm_exe_file: opt("mm_struct", "exe_file"),
            task_files: opt("task_struct", "files"),
            files_fdt: opt("files_struct", "fdt"),
            fdt_max_fds: opt("fdtable", "max_fds"),
            fdt_fd: opt("fdtable", "fd"),
            file_inode: opt("file", "f_inode"),
            file_private_data: opt("file", "private_data"),
            inode_mode: opt("inode", "i_mode"),
            inode_ino: opt("inode", "i_ino"),
            inode_sb: opt("inode", "i_sb"),
            sb_dev: opt("super_block", "s_dev"),
            socket_sk: opt("socket", "sk"),
            sk_family: opt("sock_common", "skc_family"),
            sk_daddr: opt("sock_common", "skc_daddr"),
            sk_dport: opt("sock_common", "skc_dport"),
            sk_v6_daddr: opt("sock_common", "skc_v6_daddr"),
            sk_protocol: opt("sock", "sk_protocol"),
            task_group_leader: opt("task_struct", "group_leader"),
            task_comm: opt("task_struct", "comm"),
            socket_alloc_inode: opt("socket_alloc", "vfs_inode"),
            // Optional: without it exits carry no exit code and `respawn` only knows the
            // agent's own kills.
            task_exit_code: task("exit_code").unwrap_or(0),
            ..KernelOffsets::UNKNOWN
        };
        // `skc_daddr` is legitimately 0; without the family the socket fields mean nothing.
        if o.sk_family == 0 || self.member_offset("sock_common", "skc_daddr").is_err() {
            o.sk_family = 0;
        }
        Ok(o)
    }
}

/// Reads [`VMLINUX_BTF_PATH`] and returns the offsets the kernel programs need.
pub fn kernel_offsets() -> Result<KernelOffsets, BtfError> {
    Btf::from_file(VMLINUX_BTF_PATH)?.kernel_offsets()
}

/// Like [`kernel_offsets`], from raw BTF already in memory.
#[cfg(test)]
fn kernel_offsets_from(raw: &[u8]) -> Result<KernelOffsets, BtfError> {
    Btf::parse(raw)?.kernel_offsets()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::process::Command;

    use super::testkit::{mini_kernel, vmlinux};
    use super::*;

    #[test]
    fn every_kind_is_skipped_correctly() {
        let raw = mini_kernel();
        let btf = Btf::parse(&raw).unwrap();
        assert_eq!(btf.types.len(), 27);
        let offsets = kernel_offsets_from(&raw).unwrap();
        // The optional file/socket offsets are absent from this blob: left unknown.
        let expected = KernelOffsets {
            task_real_parent: 24,
            task_tgid: 20,
            task_pid: 16,
            task_mm: 8,
            task_start_boottime: 32,
            mm_arg_start: 16,
            mm_arg_end: 24,
            ..KernelOffsets::UNKNOWN
        };
        assert_eq!(offsets, expected);
    }

    #[test]
    fn real_kernel_offsets() {
        let Some(raw) = vmlinux() else { return };
        let o = kernel_offsets_from(&raw).unwrap();
        eprintln!("{o:?}");
        for (name, v) in [
            ("task_real_parent", o.task_real_parent),
            ("task_tgid", o.task_tgid),
            ("task_pid", o.task_pid),
            ("task_mm", o.task_mm),
            ("task_start_boottime", o.task_start_boottime),
            ("mm_arg_start", o.mm_arg_start),
            ("mm_arg_end", o.mm_arg_end),
            ("task_exit_code", o.task_exit_code),
        ] {
            assert_ne!(v, 0, "{name}");
        }
        assert_eq!(o.task_pid + 4, o.task_tgid);
        assert_eq!(o.mm_arg_start + 8, o.mm_arg_end);
        assert_eq!(o.tp_exit_group_dead, 0);
        for (name, v) in [
            ("mm_exe_file", o.mm_exe_file),
            ("task_files", o.task_files),
            ("files_fdt", o.files_fdt),
            ("fdt_fd", o.fdt_fd),
            ("file_inode", o.file_inode),
            ("file_private_data", o.file_private_data),
            ("inode_ino", o.inode_ino),
            ("inode_sb", o.inode_sb),
            ("sb_dev", o.sb_dev),
            ("socket_sk", o.socket_sk),
            ("sk_family", o.sk_family),
            ("sk_dport", o.sk_dport),
            ("sk_v6_daddr", o.sk_v6_daddr),
            ("sk_protocol", o.sk_protocol),
            ("task_group_leader", o.task_group_leader),
            ("task_comm", o.task_comm),
            ("socket_alloc_inode", o.socket_alloc_inode),
        ] {
            assert_ne!(v, 0, "{name}");
        }
        // Fields at the start of their struct.
        assert_eq!((o.fdt_max_fds, o.inode_mode, o.sk_daddr), (0, 0, 0));
        assert_eq!(kernel_offsets().unwrap(), o);
    }

    /// One type from `bpftool btf dump format raw`: kind, name and members
    /// (name, type id, bits_offset, bitfield_size).
    struct Dumped {
        kind: String,
        name: String,
        target: u32,
        members: Vec<(String, u32, u64, u32)>,
    }

    fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    }

    fn quoted(s: &str) -> String {
        s.split('\'').nth(1).unwrap_or_default().to_owned()
    }

    fn parse_dump(text: &str) -> HashMap<u32, Dumped> {
        let mut types = HashMap::new();
        let mut current = None;
        for line in text.lines() {
            if let Some(member) = line.strip_prefix('\t') {
                if let (Some(id), Some(type_id), Some(bits)) = (
                    current,
                    field(member, "type_id"),
                    field(member, "bits_offset"),
                ) {
                    let entry: &mut Dumped = types.get_mut(&id).unwrap();
                    let bitfield = field(member, "bitfield_size").unwrap_or(0);
                    entry
                        .members
                        .push((quoted(member), type_id, bits, bitfield));
                }
                continue;
            }
            let mut words = line.split_whitespace();
            let id = words
                .next()
                .and_then(|w| w.strip_prefix('[')?.strip_suffix(']')?.parse().ok());
            current = id;
            if let (Some(id), Some(kind)) = (id, words.next()) {
                types.insert(
                    id,
                    Dumped {
                        kind: kind.to_owned(),
                        name: quoted(line),
                        target: field(line, "type_id").unwrap_or(0),
                        members: Vec::new(),
                    },
                );
            }
        }
        types
    }

    /// Every named member reachable from `id` (through anonymous members), as bpftool reports
    /// it: name, bit offset from `id`, bitfield size. The first occurrence of a name wins, direct
    /// members before those of anonymous members, as in `Btf::member_offset`.
    fn flatten(
        types: &HashMap<u32, Dumped>,
        id: u32,
        base: u64,
        out: &mut Vec<(String, u64, u32)>,
    ) {
        let t = &types[&id];
        for (name, _, bits, bitfield) in &t.members {
            if name != "(anon)" && !out.iter().any(|(n, ..)| n == name) {
                out.push((name.clone(), base + bits, *bitfield));
            }
        }
        for &(ref name, mut ty, bits, _) in &t.members {
            if name != "(anon)" {
                continue;
            }
            while matches!(
                types[&ty].kind.as_str(),
                "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG"
            ) {
                ty = types[&ty].target;
            }
            if matches!(types[&ty].kind.as_str(), "STRUCT" | "UNION") {
                flatten(types, ty, base + bits, out);
            }
        }
    }

    #[test]
    fn real_kernel_matches_bpftool() {
        let Some(raw) = vmlinux() else { return };
        let bpftool = ["/usr/sbin/bpftool", "bpftool"]
            .into_iter()
            .find_map(|b| {
                Command::new(b)
                    .args(["btf", "dump", "file", VMLINUX_BTF_PATH, "format", "raw"])
                    .output()
                    .ok()
            })
            .filter(|out| out.status.success());
        let Some(out) = bpftool else {
            eprintln!("SKIPPED: bpftool not available; offsets not cross-checked against bpftool");
            return;
        };
        let types = parse_dump(&String::from_utf8_lossy(&out.stdout));
        let btf = Btf::parse(&raw).unwrap();
        assert_eq!(
            Some(btf.types.len()),
            types.keys().max().map(|&m| m as usize)
        );

        // The fields the agent uses, straight from bpftool's numbers.
        let o = btf.kernel_offsets().unwrap();
        let dumped = |strukt: &str, member: &str| {
            let id = *types
                .iter()
                .find(|(_, t)| t.kind == "STRUCT" && t.name == strukt && !t.members.is_empty())
                .unwrap()
                .0;
            let mut all = Vec::new();
            flatten(&types, id, 0, &mut all);
            let (_, bits, bitfield) = all.into_iter().find(|(n, ..)| n == member).unwrap();
            assert_eq!(bitfield, 0);
            (bits / 8) as u32
        };
        assert_eq!(o.task_real_parent, dumped("task_struct", "real_parent"));
        assert_eq!(o.task_tgid, dumped("task_struct", "tgid"));
        assert_eq!(o.task_pid, dumped("task_struct", "pid"));
        assert_eq!(o.task_mm, dumped("task_struct", "mm"));
        assert_eq!(
            o.task_start_boottime,
            dumped("task_struct", "start_boottime")
        );
        assert_eq!(o.mm_arg_start, dumped("mm_struct", "arg_start"));
        assert_eq!(o.mm_arg_end, dumped("mm_struct", "arg_end"));
        assert_eq!(o.mm_exe_file, dumped("mm_struct", "exe_file"));
        assert_eq!(o.task_files, dumped("task_struct", "files"));
        assert_eq!(o.files_fdt, dumped("files_struct", "fdt"));
        assert_eq!(o.fdt_fd, dumped("fdtable", "fd"));
        assert_eq!(o.file_inode, dumped("file", "f_inode"));
        assert_eq!(o.file_private_data, dumped("file", "private_data"));
        assert_eq!(o.inode_ino, dumped("inode", "i_ino"));
        assert_eq!(o.inode_sb, dumped("inode", "i_sb"));
        assert_eq!(o.sb_dev, dumped("super_block", "s_dev"));
        assert_eq!(o.socket_sk, dumped("socket", "sk"));
        assert_eq!(o.sk_family, dumped("sock_common", "skc_family"));
        assert_eq!(o.sk_dport, dumped("sock_common", "skc_dport"));
        assert_eq!(o.sk_v6_daddr, dumped("sock_common", "skc_v6_daddr"));
        assert_eq!(o.sk_protocol, dumped("sock", "sk_protocol"));
        assert_eq!(o.task_group_leader, dumped("task_struct", "group_leader"));
        assert_eq!(o.task_comm, dumped("task_struct", "comm"));
        assert_eq!(o.socket_alloc_inode, dumped("socket_alloc", "vfs_inode"));

        // Every member of every struct and union, bitfields included.
        let mut checked = 0;
        for (&id, t) in &types {
            if !matches!(t.kind.as_str(), "STRUCT" | "UNION") {
                continue;
            }
            let mut all = Vec::new();
            flatten(&types, id, 0, &mut all);
            for (name, bits, bitfield) in all {
                let loc = btf.find_member(id, name.as_bytes(), 0).unwrap().unwrap();
                assert_eq!(
                    (loc.bit_offset, loc.bits),
                    (bits, bitfield),
                    "[{id}] {} .{name}",
                    t.name
                );
                checked += 1;
            }
        }
        eprintln!("{checked} members agree with bpftool");
        assert!(checked > 10_000);
    }
}
