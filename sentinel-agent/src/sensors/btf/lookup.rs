//! Where a member lies in a struct: its byte offset, looking through anonymous struct/union
//! members and typedef/qualifier chains, refusing bitfields, unaligned members and
//! definitions that disagree. Every walk is bounded ([`MAX_DEPTH`]), so cyclic (corrupt) BTF
//! is an error, never a hang.

use super::{
    BtfError,
    parse::{
        Btf, KIND_CONST, KIND_FWD, KIND_INT, KIND_RESTRICT, KIND_STRUCT, KIND_TYPE_TAG,
        KIND_TYPEDEF, KIND_UNION, KIND_VOLATILE, Member, Type,
    },
};

/// Limit on anonymous-member nesting and on typedef/qualifier chains, so that cyclic
/// (corrupt) BTF cannot recurse or loop forever.
pub(super) const MAX_DEPTH: u32 = 32;

/// Where a member was found: bit offset from the start of the struct searched, and bitfield
/// width (0 for an ordinary member).
pub(super) struct Location {
    pub(super) bit_offset: u64,
    pub(super) bits: u32,
}

impl Btf {
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
    pub(super) fn find_member(
        &self,
        id: u32,
        name: &[u8],
        depth: u32,
    ) -> Result<Option<Location>, BtfError> {
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

#[cfg(test)]
mod tests {
    use super::super::testkit::{Builder, mini_kernel, outer};
    use super::*;

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
}
