//! The raw BTF format: a header, a type section of variable-length records and a string
//! section. [`Btf::parse`] checks every bound and keeps only what member lookup needs (the
//! records and the STRUCT/UNION members); the trailing data of other kinds is checked for
//! length and skipped. Little-endian only, as the kernel writes it on this architecture.

use std::path::Path;

use super::BtfError;

pub(super) const MAGIC: u16 = 0xeb9f;
pub(super) const VERSION: u8 = 1;
/// Size of the header fields this parser knows; newer headers may be longer.
pub(super) const HEADER_LEN: usize = 24;
/// `name_off`, `info`, `size`/`type`: the part every type record starts with.
pub(super) const TYPE_LEN: usize = 12;

pub(super) const KIND_INT: u8 = 1;
pub(super) const KIND_PTR: u8 = 2;
pub(super) const KIND_ARRAY: u8 = 3;
pub(super) const KIND_STRUCT: u8 = 4;
pub(super) const KIND_UNION: u8 = 5;
pub(super) const KIND_ENUM: u8 = 6;
pub(super) const KIND_FWD: u8 = 7;
pub(super) const KIND_TYPEDEF: u8 = 8;
pub(super) const KIND_VOLATILE: u8 = 9;
pub(super) const KIND_CONST: u8 = 10;
pub(super) const KIND_RESTRICT: u8 = 11;
pub(super) const KIND_FUNC: u8 = 12;
pub(super) const KIND_FUNC_PROTO: u8 = 13;
pub(super) const KIND_VAR: u8 = 14;
pub(super) const KIND_DATASEC: u8 = 15;
pub(super) const KIND_FLOAT: u8 = 16;
pub(super) const KIND_DECL_TAG: u8 = 17;
pub(super) const KIND_TYPE_TAG: u8 = 18;
pub(super) const KIND_ENUM64: u8 = 19;

/// One decoded type record (ids start at 1; id 0 is `void` and has no record).
#[derive(Clone, Copy, Debug)]
pub(super) struct Type {
    pub(super) name_off: u32,
    pub(super) kind: u8,
    pub(super) kind_flag: bool,
    pub(super) vlen: u16,
    /// `size` for INT/STRUCT/UNION/…, the referenced type id for PTR/TYPEDEF/qualifiers/….
    pub(super) size_or_type: u32,
    /// INT: the encoding word. STRUCT/UNION: index of the first member in `Btf::members`.
    pub(super) extra: u32,
}

/// One STRUCT/UNION member as stored in BTF.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member {
    pub(super) name_off: u32,
    pub(super) type_id: u32,
    /// Bit offset, or (when the parent's kind_flag is set) bitfield size << 24 | bit offset.
    pub(super) offset: u32,
}

/// Parsed BTF: the string section and the decoded type records. Only what member lookup needs
/// is kept; the trailing data of other kinds is checked for length and skipped.
#[derive(Clone)]
pub struct Btf {
    strings: Vec<u8>,
    pub(super) types: Vec<Type>,
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

pub(super) fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub(super) fn u32_at(data: &[u8], at: usize) -> Option<u32> {
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
    /// Reads and parses a raw BTF file such as [`super::VMLINUX_BTF_PATH`].
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

    pub(super) fn last_id(&self) -> u32 {
        self.types.len() as u32
    }

    pub(super) fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
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
    pub(super) fn name(&self, off: u32) -> &[u8] {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        tail.split(|&b| b == 0).next().unwrap_or_default()
    }

    pub(super) fn members_of(&self, t: &Type) -> &[Member] {
        let start = t.extra as usize;
        self.members
            .get(start..start + usize::from(t.vlen))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{
        Builder, Rng, err, exercise, garble, mini_kernel, outer, vmlinux, with_type_len,
    };
    use super::*;

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
    fn io_error_names_the_file() {
        let e = Btf::from_file("/nonexistent/btf").unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read BTF from `/nonexistent/btf`: "),
            "{e}"
        );
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
}
