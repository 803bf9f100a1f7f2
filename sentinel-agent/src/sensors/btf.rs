//! Minimal reader for the running kernel's BTF (`/sys/kernel/btf/vmlinux`). Rust eBPF has no
//! CO-RE relocations, so the agent looks up the byte offsets of the few kernel struct fields its
//! programs read and hands them over as [`KernelOffsets`].
//!
//! Why a parser of our own (evaluated for issue 15):
//! - `aya-obj` 0.3 (already a dependency, through aya) parses BTF, but keeps what is needed
//!   here private: `Btf::type_by_id` and the members of `Struct`/`Union` are `pub(crate)`, so
//!   a member's offset cannot be read from outside the crate.
//! - `btfparse` 1.3 (Apache-2.0) does answer the question (`TypeInformation::offset_of(type,
//!   "a.b")`, anonymous members included), but its `offset_of` follows typedef and qualifier
//!   chains in an unbounded loop (read in 1.3.9's `type_information.rs`): a cyclic chain in
//!   damaged BTF would hang the agent at start, which this parser refuses (`MAX_DEPTH`; see
//!   the `bad_references_and_cycles` and garbled-input tests). The swap was therefore not
//!   made; it is worth revisiting if btfparse bounds that walk.

use std::path::{Path, PathBuf};

use sentinel_common::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;
/// Size of the header fields this parser knows; newer headers may be longer.
const HEADER_LEN: usize = 24;
/// `name_off`, `info`, `size`/`type`: the part every type record starts with.
const TYPE_LEN: usize = 12;
/// Limit on anonymous-member nesting and on typedef/qualifier chains, so that cyclic
/// (corrupt) BTF cannot recurse or loop forever.
const MAX_DEPTH: u32 = 32;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Everything that can go wrong reading BTF or looking up a member in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("cannot read BTF from `{}`: {source}", path.display())]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data is shorter than the fixed header.
    #[error("BTF data is {len} bytes long, too short for the {HEADER_LEN}-byte header")]
    HeaderTruncated {
        /// Length of the data.
        len: usize,
    },
    /// The first two bytes are not the BTF magic in this machine's byte order.
    #[error("bad BTF magic {found:#06x} (expected {MAGIC:#06x}{})", byte_order_hint(*found))]
    BadMagic {
        /// The magic as read.
        found: u16,
    },
    /// The header announces a version other than 1.
    #[error("unsupported BTF version {0} (expected {VERSION})")]
    UnsupportedVersion(u8),
    /// `hdr_len` is smaller than the known header or larger than the data.
    #[error(
        "BTF header length {hdr_len} is invalid for {len} bytes of data (minimum {HEADER_LEN})"
    )]
    BadHeaderLen {
        /// `hdr_len` as read.
        hdr_len: u32,
        /// Length of the data.
        len: usize,
    },
    /// A section announced by the header does not lie within the data.
    #[error(
        "BTF {section} section (offset {offset}, length {section_len}, after a {hdr_len}-byte header) \
         runs past the end of the data ({len} bytes): truncated BTF?"
    )]
    SectionOutOfBounds {
        /// `"type"` or `"string"`.
        section: &'static str,
        /// Section offset, relative to the end of the header.
        offset: u32,
        /// Section length.
        section_len: u32,
        /// Header length.
        hdr_len: u32,
        /// Length of the data.
        len: usize,
    },
    /// The string section is empty or not delimited by NUL bytes.
    #[error("malformed BTF string section: {0}")]
    BadStringSection(&'static str),
    /// A type record, or its trailing data, is cut off by the end of the type section.
    #[error(
        "BTF type section truncated: type id {id} at byte {offset} of the section needs {needed} bytes \
         for its {what}, only {available} left"
    )]
    TypeTruncated {
        /// Id the record would have.
        id: u32,
        /// Byte offset of the record within the type section.
        offset: usize,
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes left in the section.
        available: usize,
    },
    /// A type record has a kind this parser does not know.
    #[error("type id {id} at byte {offset} of the BTF type section has unknown kind {kind}")]
    UnknownKind {
        /// Id of the record.
        id: u32,
        /// Byte offset of the record within the type section.
        offset: usize,
        /// The kind number.
        kind: u8,
    },
    /// A type or member name points outside the string section.
    #[error(
        "type id {id}: name offset {name_off} is outside the {str_len}-byte BTF string section"
    )]
    BadNameOffset {
        /// Id of the type (or of the struct holding the member).
        id: u32,
        /// The offending offset.
        name_off: u32,
        /// Length of the string section.
        str_len: usize,
    },
    /// A type refers to a type id that does not exist.
    #[error("type id {from} refers to type id {to}, but the last type id is {last}")]
    BadTypeRef {
        /// The referring type.
        from: u32,
        /// The missing type.
        to: u32,
        /// Highest valid type id.
        last: u32,
    },
    /// Anonymous members or typedef/qualifier chains nest implausibly deep.
    #[error("type id {id}: types nest deeper than {MAX_DEPTH} levels (cyclic BTF?)")]
    TooDeep {
        /// Where the limit was hit.
        id: u32,
    },
    /// No struct of that name exists.
    #[error("struct `{0}` not found")]
    StructNotFound(String),
    /// Structs of that name exist only as forward declarations or without members.
    #[error("struct `{0}` is only declared in BTF (no definition with members)")]
    StructNotDefined(String),
    /// The struct (including its anonymous members) has no member of that name.
    #[error("member `{member}` not found in struct `{strukt}`")]
    MemberNotFound {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
    },
    /// The member is a bitfield, which has no byte offset.
    #[error(
        "member `{member}` of struct `{strukt}` is a {bits}-bit bitfield at bit offset {bit_offset}"
    )]
    Bitfield {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
        /// Bit offset from the start of the struct.
        bit_offset: u64,
        /// Bitfield width.
        bits: u32,
    },
    /// The member does not start on a byte boundary (or lies beyond 4 GiB).
    #[error(
        "member `{member}` of struct `{strukt}` is at bit offset {bit_offset}, which is not a usable byte offset"
    )]
    BadOffset {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
        /// Bit offset from the start of the struct.
        bit_offset: u64,
    },
    /// Several definitions of the struct put the member at different offsets.
    #[error(
        "struct `{strukt}` has several definitions that disagree on member `{member}` ({first} vs {second} bytes)"
    )]
    Ambiguous {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
        /// Byte offset in the first definition.
        first: u32,
        /// A different byte offset in a later definition.
        second: u32,
    },
}

fn byte_order_hint(magic: u16) -> &'static str {
    if magic == MAGIC.swap_bytes() {
        "; this is big-endian BTF, which is not supported"
    } else {
        ""
    }
}

/// One decoded type record (ids start at 1; id 0 is `void` and has no record).
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    /// `size` for INT/STRUCT/UNION/…, the referenced type id for PTR/TYPEDEF/qualifiers/….
    size_or_type: u32,
    /// INT: the encoding word. STRUCT/UNION: index of the first member in `Btf::members`.
    extra: u32,
}

/// One STRUCT/UNION member as stored in BTF.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset, or (when the parent's kind_flag is set) bitfield size << 24 | bit offset.
    offset: u32,
}

/// Where a member was found: bit offset from the start of the struct searched, and bitfield
/// width (0 for an ordinary member).
struct Location {
    bit_offset: u64,
    bits: u32,
}

/// Parsed BTF: the string section and the decoded type records. Only what member lookup needs
/// is kept; the trailing data of other kinds is checked for length and skipped.
#[derive(Clone)]
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
    members: Vec<Member>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .field("members", &self.members.len())
            .field("string_bytes", &self.strings.len())
            .finish()
    }
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Bytes of kind-specific data following the 12-byte record, or `None` for an unknown kind.
fn trailing_len(kind: u8, vlen: u16) -> Option<usize> {
    let vlen = usize::from(vlen);
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        _ => return None,
    })
}

impl Btf {
    /// Reads and parses a raw BTF file such as [`VMLINUX_BTF_PATH`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Btf, BtfError> {
        let path = path.as_ref();
        let raw = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Btf::parse(&raw)
    }

    /// Parses raw little-endian BTF (header, type section, string section).
    pub fn parse(raw: &[u8]) -> Result<Btf, BtfError> {
        let header = |at| u32_at(raw, at).ok_or(BtfError::HeaderTruncated { len: raw.len() });
        let magic = u16_at(raw, 0).ok_or(BtfError::HeaderTruncated { len: raw.len() })?;
        if magic != MAGIC {
            return Err(BtfError::BadMagic { found: magic });
        }
        // magic u16, version u8, flags u8, then hdr_len, type_off, type_len, str_off, str_len.
        let version = raw
            .get(2)
            .copied()
            .ok_or(BtfError::HeaderTruncated { len: raw.len() })?;
        if version != VERSION {
            return Err(BtfError::UnsupportedVersion(version));
        }
        let hdr_len = header(4)?;
        let [type_off, type_len, str_off, str_len] =
            [header(8)?, header(12)?, header(16)?, header(20)?];
        if (hdr_len as usize) < HEADER_LEN || hdr_len as usize > raw.len() {
            return Err(BtfError::BadHeaderLen {
                hdr_len,
                len: raw.len(),
            });
        }
        let body = &raw[hdr_len as usize..];
        let section = |name, offset: u32, section_len: u32| {
            let start = offset as usize;
            start
                .checked_add(section_len as usize)
                .and_then(|end| body.get(start..end))
                .ok_or(BtfError::SectionOutOfBounds {
                    section: name,
                    offset,
                    section_len,
                    hdr_len,
                    len: raw.len(),
                })
        };
        let type_sec = section("type", type_off, type_len)?;
        let strings = section("string", str_off, str_len)?;
        match (strings.first(), strings.last()) {
            (None, _) => return Err(BtfError::BadStringSection("it is empty")),
            (Some(&first), _) if first != 0 => {
                return Err(BtfError::BadStringSection(
                    "it does not start with an empty string",
                ));
            }
            (_, Some(&last)) if last != 0 => {
                return Err(BtfError::BadStringSection(
                    "its last string is not NUL-terminated",
                ));
            }
            _ => {}
        }

        let mut btf = Btf {
            strings: strings.to_vec(),
            types: Vec::new(),
            members: Vec::new(),
        };
        let mut pos = 0;
        while pos < type_sec.len() {
            // Each record is at least 12 bytes, so ids stay far below u32::MAX.
            let id = btf.types.len() as u32 + 1;
            let available = type_sec.len() - pos;
            let truncated = |what, needed| BtfError::TypeTruncated {
                id,
                offset: pos,
                what,
                needed,
                available,
            };
            let rec = &type_sec[pos..];
            let (Some(name_off), Some(info), Some(size_or_type)) =
                (u32_at(rec, 0), u32_at(rec, 4), u32_at(rec, 8))
            else {
                return Err(truncated("type record", TYPE_LEN));
            };
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as u16;
            let trailing = trailing_len(kind, vlen).ok_or(BtfError::UnknownKind {
                id,
                offset: pos,
                kind,
            })?;
            let needed = TYPE_LEN + trailing;
            let Some(data) = rec.get(TYPE_LEN..needed) else {
                return Err(truncated("record and kind-specific data", needed));
            };
            btf.check_name(id, name_off)?;
            let mut ty = Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
                extra: 0,
            };
            match kind {
                KIND_INT => ty.extra = u32_at(data, 0).unwrap_or_default(),
                KIND_STRUCT | KIND_UNION => {
                    ty.extra = btf.members.len() as u32;
                    for m in data.chunks_exact(12) {
                        let member = Member {
                            name_off: u32_at(m, 0).unwrap_or_default(),
                            type_id: u32_at(m, 4).unwrap_or_default(),
                            offset: u32_at(m, 8).unwrap_or_default(),
                        };
                        btf.check_name(id, member.name_off)?;
                        btf.members.push(member);
                    }
                }
                _ => {}
            }
            btf.types.push(ty);
            pos += needed;
        }
        Ok(btf)
    }

    /// Byte offset of `member` in the struct named `struct_name`, looking through anonymous
    /// struct/union members. Of several types with that name only definitions with members
    /// count (forward declarations are skipped), and they must agree on the offset. Errors if
    /// the member is a bitfield or not byte-aligned.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let named: Vec<u32> = (1..=self.last_id())
            .filter(|&id| {
                self.ty(id).is_some_and(|t| {
                    matches!(t.kind, KIND_STRUCT | KIND_FWD)
                        && self.name(t.name_off) == struct_name.as_bytes()
                })
            })
            .collect();
        let mut defined = named
            .iter()
            .copied()
            .filter(|&id| {
                self.ty(id)
                    .is_some_and(|t| t.kind == KIND_STRUCT && t.vlen > 0)
            })
            .peekable();
        if defined.peek().is_none() {
            return Err(if named.is_empty() {
                BtfError::StructNotFound(struct_name.to_owned())
            } else {
                BtfError::StructNotDefined(struct_name.to_owned())
            });
        }
        let mut found = None;
        for id in defined {
            let Some(loc) = self.find_member(id, member.as_bytes(), 0)? else {
                continue;
            };
            let bytes = byte_offset(loc, struct_name, member)?;
            match found {
                None => found = Some(bytes),
                Some(first) if first != bytes => {
                    return Err(BtfError::Ambiguous {
                        strukt: struct_name.to_owned(),
                        member: member.to_owned(),
                        first,
                        second: bytes,
                    });
                }
                Some(_) => {}
            }
        }
        found.ok_or_else(|| BtfError::MemberNotFound {
            strukt: struct_name.to_owned(),
            member: member.to_owned(),
        })
    }

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

    fn last_id(&self) -> u32 {
        self.types.len() as u32
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The type `to`, referred to by `from`; `None` for void (id 0).
    fn referred(&self, from: u32, to: u32) -> Result<Option<&Type>, BtfError> {
        match (to, self.ty(to)) {
            (0, _) => Ok(None),
            (_, Some(t)) => Ok(Some(t)),
            (_, None) => Err(BtfError::BadTypeRef {
                from,
                to,
                last: self.last_id(),
            }),
        }
    }

    fn check_name(&self, id: u32, name_off: u32) -> Result<(), BtfError> {
        if (name_off as usize) < self.strings.len() {
            Ok(())
        } else {
            Err(BtfError::BadNameOffset {
                id,
                name_off,
                str_len: self.strings.len(),
            })
        }
    }

    /// The NUL-terminated string at `off` (offsets were checked during parsing).
    fn name(&self, off: u32) -> &[u8] {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        tail.split(|&b| b == 0).next().unwrap_or_default()
    }

    fn members_of(&self, t: &Type) -> &[Member] {
        let start = t.extra as usize;
        self.members
            .get(start..start + usize::from(t.vlen))
            .unwrap_or_default()
    }

    /// Follows typedefs and qualifiers from `id` (referred to by `from`); returns the id
    /// reached (0 for void).
    fn strip_modifiers(&self, mut from: u32, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            match self.referred(from, id)? {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    (from, id) = (id, t.size_or_type);
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::TooDeep { id })
    }

    /// Searches the STRUCT/UNION `id` for `name`, first among its own members, then inside its
    /// anonymous struct/union members. Bit offsets are relative to `id`.
    fn find_member(&self, id: u32, name: &[u8], depth: u32) -> Result<Option<Location>, BtfError> {
        if depth >= MAX_DEPTH {
            return Err(BtfError::TooDeep { id });
        }
        let Some(t) = self.ty(id) else {
            return Ok(None);
        };
        let split = |m: &Member| {
            if t.kind_flag {
                (u64::from(m.offset & 0xff_ffff), m.offset >> 24)
            } else {
                (u64::from(m.offset), 0)
            }
        };
        let members = self.members_of(t);
        if let Some(m) = members
            .iter()
            .find(|m| m.name_off != 0 && self.name(m.name_off) == name)
        {
            let (bit_offset, mut bits) = split(m);
            if !t.kind_flag {
                // Old-style bitfields are INT types narrower than their storage.
                let base = self.strip_modifiers(id, m.type_id)?;
                if let Some(int) = self.ty(base).filter(|b| b.kind == KIND_INT) {
                    let (int_bits, int_offset) = (int.extra & 0xff, (int.extra >> 16) & 0xff);
                    if int_offset != 0 || u64::from(int_bits) != u64::from(int.size_or_type) * 8 {
                        bits = int_bits;
                    }
                }
            }
            return Ok(Some(Location { bit_offset, bits }));
        }
        for m in members.iter().filter(|m| m.name_off == 0) {
            let inner = self.strip_modifiers(id, m.type_id)?;
            if !self
                .ty(inner)
                .is_some_and(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
            {
                continue;
            }
            if let Some(mut loc) = self.find_member(inner, name, depth + 1)? {
                loc.bit_offset += split(m).0;
                return Ok(Some(loc));
            }
        }
        Ok(None)
    }
}

fn byte_offset(loc: Location, strukt: &str, member: &str) -> Result<u32, BtfError> {
    if loc.bits != 0 {
        return Err(BtfError::Bitfield {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
            bit_offset: loc.bit_offset,
            bits: loc.bits,
        });
    }
    if loc.bit_offset.is_multiple_of(8)
        && let Ok(bytes) = u32::try_from(loc.bit_offset / 8)
    {
        return Ok(bytes);
    }
    Err(BtfError::BadOffset {
        strukt: strukt.to_owned(),
        member: member.to_owned(),
        bit_offset: loc.bit_offset,
    })
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

    use super::*;

    /// Builds little-endian BTF blobs type by type.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn name(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        /// Appends a record with `data` as its kind-specific trailing words; returns its id.
        fn raw(
            &mut self,
            kind: u8,
            flag: bool,
            vlen: u16,
            name: &str,
            size_or_type: u32,
            data: &[u32],
        ) -> u32 {
            let name_off = self.name(name);
            let info = u32::from(flag) << 31 | u32::from(kind) << 24 | u32::from(vlen);
            self.words(&[name_off, info, size_or_type]);
            self.words(data);
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.raw(KIND_INT, false, 0, name, size, &[size * 8])
        }

        /// A STRUCT or UNION; members are (name, type id, offset word).
        fn composite(
            &mut self,
            kind: u8,
            flag: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut data = Vec::new();
            for &(n, ty, off) in members {
                data.extend([self.name(n), ty, off]);
            }
            self.raw(kind, flag, members.len() as u16, name, size, &data)
        }

        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_STRUCT, false, name, size, members)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend([VERSION, 0]);
            let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
            for w in [HEADER_LEN as u32, 0, tl, tl, sl] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// `struct outer { int a; struct { long b; long c; }; }`.
    fn outer() -> Builder {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let anon = b.strukt("", 16, &[("b", long, 0), ("c", long, 64)]);
        b.strukt("outer", 24, &[("a", int, 0), ("", anon, 64)]);
        b
    }

    /// A blob with one record of every kind (so a wrong trailing size desyncs the rest), and
    /// `task_struct` / `mm_struct` shaped like a modern kernel's.
    fn mini_kernel() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let ulong = b.int("unsigned long", 8);
        let u64_ = b.raw(KIND_TYPEDEF, false, 0, "u64", ulong, &[]);
        let pid_t = b.raw(KIND_TYPEDEF, false, 0, "pid_t", int, &[]);
        b.raw(KIND_ARRAY, false, 0, "", 0, &[int, int, 16]);
        b.raw(KIND_ENUM, false, 2, "e", 4, &[0, 1, 0, 2]);
        b.raw(KIND_FWD, false, 0, "task_struct", 0, &[]);
        b.raw(KIND_FWD, false, 0, "mm_struct", 0, &[]);
        let proto = b.raw(KIND_FUNC_PROTO, false, 3, "", int, &[0, int, 0, int, 0, 0]);
        b.raw(KIND_FUNC, false, 0, "f", proto, &[]);
        let var = b.raw(KIND_VAR, false, 0, "v", int, &[1]);
        b.raw(KIND_DATASEC, false, 2, ".data", 8, &[var, 0, 4, var, 4, 4]);
        b.raw(KIND_FLOAT, false, 0, "double", 8, &[]);
        b.raw(KIND_DECL_TAG, false, 0, "tag", int, &[u32::MAX]);
        let tagged = b.raw(KIND_TYPE_TAG, false, 0, "user", int, &[]);
        b.raw(KIND_ENUM64, false, 2, "e64", 8, &[0, 1, 0, 0, 2, 1]);
        b.raw(KIND_RESTRICT, false, 0, "", tagged, &[]);
        // An empty definition must not be preferred over the real one below.
        b.strukt("task_struct", 0, &[]);
        let mm_inner = b.strukt(
            "",
            64,
            &[("arg_start", ulong, 128), ("arg_end", ulong, 192)],
        );
        let mm = b.strukt(
            "mm_struct",
            72,
            &[("", mm_inner, 0), ("cpu_bitmap", ulong, 512)],
        );
        let mm_ptr = b.raw(KIND_PTR, false, 0, "", mm, &[]);
        let task_ptr = b.raw(KIND_PTR, false, 0, "", 0, &[]);
        let vol = b.raw(KIND_VOLATILE, false, 0, "", int, &[]);
        let times = b.composite(
            KIND_UNION,
            true,
            "",
            8,
            &[("start_boottime", u64_, 0), ("x", int, 0)],
        );
        let times = b.raw(KIND_CONST, false, 0, "", times, &[]);
        let times = b.raw(KIND_TYPEDEF, false, 0, "times_t", times, &[]);
        b.composite(
            KIND_STRUCT,
            true,
            "task_struct",
            128,
            &[
                ("__state", vol, 0),
                ("flag", int, 1 << 24 | 32),
                ("mm", mm_ptr, 64),
                ("pid", pid_t, 128),
                ("tgid", pid_t, 160),
                ("real_parent", task_ptr, 192),
                ("", times, 256),
            ],
        );
        b.build()
    }

    fn err(raw: &[u8]) -> String {
        Btf::parse(raw).expect_err("parse should fail").to_string()
    }

    #[test]
    fn anonymous_members_add_their_offset() {
        let btf = Btf::parse(&outer().build()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 16);
        assert_eq!(
            btf.member_offset("outer", "d").unwrap_err().to_string(),
            "member `d` not found in struct `outer`"
        );
        assert_eq!(
            btf.member_offset("inner", "b").unwrap_err().to_string(),
            "struct `inner` not found"
        );
    }

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
    fn kind_flag_bitfields() {
        let raw = mini_kernel();
        let btf = Btf::parse(&raw).unwrap();
        assert_eq!(
            btf.member_offset("task_struct", "flag")
                .unwrap_err()
                .to_string(),
            "member `flag` of struct `task_struct` is a 1-bit bitfield at bit offset 32"
        );

        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.composite(
            KIND_STRUCT,
            true,
            "kf",
            12,
            &[("x", int, 32), ("y", int, 3 << 24 | 64), ("z", int, 96)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member_offset("kf", "x").unwrap(), 4);
        assert_eq!(btf.member_offset("kf", "z").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("kf", "y"),
            Err(BtfError::Bitfield {
                bits: 3,
                bit_offset: 64,
                ..
            })
        ));
    }

    #[test]
    fn old_style_bitfields_and_unaligned_members() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let int3 = b.raw(KIND_INT, false, 0, "int", 4, &[3]);
        b.strukt("s", 8, &[("bf", int3, 32), ("odd", int, 12)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert!(matches!(
            btf.member_offset("s", "bf"),
            Err(BtfError::Bitfield {
                bits: 3,
                bit_offset: 32,
                ..
            })
        ));
        assert_eq!(
            btf.member_offset("s", "odd").unwrap_err().to_string(),
            "member `odd` of struct `s` is at bit offset 12, which is not a usable byte offset"
        );
    }

    #[test]
    fn duplicate_names() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.raw(KIND_FWD, false, 0, "fwd_only", 0, &[]);
        b.strukt("dup", 8, &[("a", int, 0), ("b", int, 32)]);
        b.strukt("dup", 8, &[("b", int, 32)]);
        b.strukt("dup", 8, &[("a", int, 32)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member_offset("dup", "b").unwrap(), 4);
        assert_eq!(
            btf.member_offset("dup", "a").unwrap_err().to_string(),
            "struct `dup` has several definitions that disagree on member `a` (0 vs 4 bytes)"
        );
        assert_eq!(
            btf.member_offset("fwd_only", "a").unwrap_err().to_string(),
            "struct `fwd_only` is only declared in BTF (no definition with members)"
        );
    }

    #[test]
    fn malformed_headers_and_sections() {
        let good = outer().build();
        assert_eq!(
            err(&good[..10]),
            "BTF data is 10 bytes long, too short for the 24-byte header"
        );
        assert_eq!(
            err(&[]),
            "BTF data is 0 bytes long, too short for the 24-byte header"
        );
        let mut bad = good.clone();
        bad[..2].copy_from_slice(&[0xeb, 0x9f]);
        assert_eq!(
            err(&bad),
            "bad BTF magic 0x9feb (expected 0xeb9f; this is big-endian BTF, which is not supported)"
        );
        bad[..2].copy_from_slice(&0x1234u16.to_le_bytes());
        assert_eq!(err(&bad), "bad BTF magic 0x1234 (expected 0xeb9f)");
        let mut bad = good.clone();
        bad[2] = 2;
        assert_eq!(err(&bad), "unsupported BTF version 2 (expected 1)");
        let mut bad = good.clone();
        bad[4] = 8;
        assert!(err(&bad).starts_with("BTF header length 8 is invalid"));
        assert!(
            err(&good[..good.len() - 1]).starts_with("BTF string section (offset "),
            "{}",
            err(&good[..good.len() - 1])
        );
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] = b'x';
        assert_eq!(
            err(&bad),
            "malformed BTF string section: its last string is not NUL-terminated"
        );
    }

    /// Rewrites the header's type_len (keeping the string section where it is).
    fn with_type_len(raw: &[u8], type_len: u32) -> Vec<u8> {
        let mut raw = raw.to_vec();
        raw[12..16].copy_from_slice(&type_len.to_le_bytes());
        raw
    }

    #[test]
    fn truncated_and_unknown_types() {
        let mut b = Builder::new();
        b.int("int", 4);
        b.strukt("s", 8, &[("a", 1, 0), ("b", 1, 32)]);
        let raw = b.build();
        // The struct starts at byte 16 of the type section and needs 12 + 2 * 12 bytes.
        assert_eq!(
            err(&with_type_len(&raw, 16 + 30)),
            "BTF type section truncated: type id 2 at byte 16 of the section needs 36 bytes for its \
             record and kind-specific data, only 30 left"
        );
        assert_eq!(
            err(&with_type_len(&raw, 16 + 5)),
            "BTF type section truncated: type id 2 at byte 16 of the section needs 12 bytes for its \
             type record, only 5 left"
        );
        let mut bad = raw.clone();
        bad[HEADER_LEN + 16 + 7] = 20;
        assert_eq!(
            err(&bad),
            "type id 2 at byte 16 of the BTF type section has unknown kind 20"
        );
        bad[HEADER_LEN + 16 + 7] = 0;
        assert_eq!(
            err(&bad),
            "type id 2 at byte 16 of the BTF type section has unknown kind 0"
        );
        let mut bad = raw.clone();
        bad[HEADER_LEN + 16 + 12..][..4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            err(&bad),
            "type id 2: name offset 1000 is outside the 11-byte BTF string section"
        );
    }

    #[test]
    fn bad_references_and_cycles() {
        let mut b = Builder::new();
        b.strukt("dangling", 8, &[("", 99, 0)]);
        let td = b.raw(KIND_TYPEDEF, false, 0, "loop", 3, &[]);
        b.raw(KIND_CONST, false, 0, "", td, &[]);
        b.strukt("looping", 8, &[("", td, 0)]);
        b.strukt("selfish", 8, &[("", 5, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            btf.member_offset("dangling", "x").unwrap_err().to_string(),
            "type id 1 refers to type id 99, but the last type id is 5"
        );
        assert!(matches!(
            btf.member_offset("looping", "x"),
            Err(BtfError::TooDeep { .. })
        ));
        assert!(matches!(
            btf.member_offset("selfish", "x"),
            Err(BtfError::TooDeep { id: 5 })
        ));
    }

    #[test]
    fn io_error_names_the_file() {
        let e = Btf::from_file("/nonexistent/btf").unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read BTF from `/nonexistent/btf`: "),
            "{e}"
        );
    }

    /// xorshift64*, so the garbling is reproducible without extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Parses and queries `raw`; only a panic would fail the test.
    fn exercise(raw: &[u8]) {
        if let Ok(btf) = Btf::parse(raw) {
            let _ = btf.kernel_offsets();
            let _ = btf.member_offset("outer", "c");
        }
    }

    fn garble(rng: &mut Rng, good: &[u8], region: std::ops::Range<usize>) -> Vec<u8> {
        let mut raw = good.to_vec();
        for _ in 0..=rng.below(4) {
            let at = region.start + rng.below(region.len());
            raw[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => raw[at] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
        }
        if rng.below(8) == 0 {
            raw.truncate(rng.below(raw.len()));
        }
        raw
    }

    #[test]
    fn garbled_synthetic_input_never_panics() {
        let good = mini_kernel();
        for len in 0..good.len() {
            exercise(&good[..len]);
        }
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..20_000 {
            exercise(&garble(&mut rng, &good, 0..good.len()));
        }
    }

    fn vmlinux() -> Option<Vec<u8>> {
        match std::fs::read(VMLINUX_BTF_PATH) {
            Ok(raw) => Some(raw),
            Err(e) => {
                eprintln!(
                    "SKIPPED: cannot read {VMLINUX_BTF_PATH} ({e}); real-kernel BTF not tested"
                );
                None
            }
        }
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
        ] {
            assert_ne!(v, 0, "{name}");
        }
        // Fields at the start of their struct.
        assert_eq!((o.fdt_max_fds, o.inode_mode, o.sk_daddr), (0, 0, 0));
        assert_eq!(kernel_offsets().unwrap(), o);
    }

    #[test]
    fn garbled_real_input_never_panics() {
        let Some(good) = vmlinux() else { return };
        let btf = Btf::parse(&good).unwrap();
        let hdr_len = u32_at(&good, 4).unwrap() as usize;
        let type_len = u32_at(&good, 12).unwrap() as usize;
        // Truncations fail at the header or at the section bounds.
        for len in [0, 1, 5, 23, 24, 100, good.len() / 2, good.len() - 1] {
            assert!(Btf::parse(&good[..len]).is_err(), "{len}");
        }
        // Cutting the type section anywhere must fail cleanly or leave a shorter, valid list.
        let mut rng = Rng(0xbad_b7f);
        for _ in 0..8 {
            let cut = rng.below(type_len);
            match Btf::parse(&with_type_len(&good, cut as u32)) {
                Ok(short) => assert!(short.types.len() < btf.types.len()),
                Err(e) => assert!(matches!(e, BtfError::TypeTruncated { .. }), "{e}"),
            }
        }
        for _ in 0..24 {
            exercise(&garble(&mut rng, &good, 0..hdr_len + 4096));
        }
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
