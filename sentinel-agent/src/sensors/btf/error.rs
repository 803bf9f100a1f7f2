//! What can go wrong reading BTF or looking up a member in it, each error saying where (type
//! id, byte offset, section) so a damaged or unusual kernel BTF can be diagnosed from the log.

use std::path::PathBuf;

use super::{
    lookup::MAX_DEPTH,
    parse::{HEADER_LEN, MAGIC, VERSION},
};

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
