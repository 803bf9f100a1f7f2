//! Test-only writer of MaxMind DB (`.mmdb`) country databases, so tests can make their own
//! small GeoIP database (SPEC §8: the documentation ranges get countries) instead of shipping
//! or downloading one. Pure std: it is `mod`-included by the end-to-end tests and, through
//! `#[path]`, by the `geo` unit tests. Format: <https://maxmind.github.io/MaxMind-DB/>.
//!
//! The database is an IPv6 tree (`ip_version` 6) with 24-bit records; IPv4 networks live at
//! `::a.b.c.d`, where readers look IPv4 addresses up. `::ffff:a.b.c.d` is deliberately *not*
//! aliased to them (real MaxMind databases do that), so the reader under test must map
//! IPv4-mapped IPv6 addresses to IPv4 itself.
//!
//! Overlapping entries: the more specific network wins over the one that contains it, and of
//! two entries for the same network the later one wins. Addresses no entry covers are not
//! found.

use std::{collections::HashMap, fs, io, net::IpAddr, path::Path};

/// How a record carries its country code.
#[allow(
    dead_code,
    reason = "each test binary that includes this module uses a different part of it"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// GeoLite2/GeoIP2 Country and DB-IP: `{"country": {"iso_code": "RU"}}`.
    MaxMind,
    /// The ip-location-db country databases: `{"country_code": "RU"}`.
    Flat,
}

/// Writes a country database to `path`; see [`country_db_bytes`]. A malformed CIDR is an
/// [`io::ErrorKind::InvalidInput`] error.
#[allow(
    dead_code,
    reason = "each test binary that includes this module uses a different part of it"
)]
pub fn write_country_db(path: &Path, layout: Layout, entries: &[(&str, &str)]) -> io::Result<()> {
    let bytes =
        build(layout, entries).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    fs::write(path, bytes)
}

/// A country database mapping each `(network, code)` entry's network (`"198.51.100.0/24"`,
/// `"2001:db8:1::/48"`, or a bare address for a single host) to its country code, written
/// as given. Host bits below the prefix are ignored. Panics on a malformed network.
#[allow(
    dead_code,
    reason = "each test binary that includes this module uses a different part of it"
)]
pub fn country_db_bytes(layout: Layout, entries: &[(&str, &str)]) -> Vec<u8> {
    build(layout, entries).unwrap_or_else(|e| panic!("{e}"))
}

/// Fixed build time (2026-01-01T00:00:00Z), so that equal input gives equal bytes.
const BUILD_EPOCH: u64 = 1_767_225_600;
const RECORD_SIZE: u16 = 24;
const DATA_SECTION_SEPARATOR: [u8; 16] = [0; 16];
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

// Data types of the MaxMind DB data section (types above 7 are "extended").
const UTF8_STRING: u8 = 2;
const UINT16: u8 = 5;
const UINT32: u8 = 6;
const MAP: u8 = 7;
const UINT64: u8 = 9;
const ARRAY: u8 = 11;

/// One side of a search-tree node.
#[derive(Clone, Copy)]
enum Record {
    /// No network here: "not found".
    Empty,
    /// Continue at this node.
    Node(usize),
    /// Found: the record at this offset in the data section.
    Data(usize),
}

fn build(layout: Layout, entries: &[(&str, &str)]) -> Result<Vec<u8>, String> {
    // Data section: one record per distinct code.
    let mut data = Vec::new();
    let mut offsets: HashMap<&str, usize> = HashMap::new();
    let mut networks = Vec::with_capacity(entries.len());
    for &(cidr, code) in entries {
        let (addr, prefix) = parse_network(cidr)?;
        let offset = *offsets.entry(code).or_insert_with(|| {
            let offset = data.len();
            encode_country(&mut data, layout, code);
            offset
        });
        networks.push((prefix, addr, offset));
    }

    // Inserting a network replaces everything below it, so insert the least specific first;
    // the sort is stable, so equal networks keep their order and the later one wins.
    networks.sort_by_key(|&(prefix, _, _)| prefix);
    let mut tree = vec![[Record::Empty; 2]];
    for (prefix, addr, offset) in networks {
        insert(&mut tree, addr, prefix, Record::Data(offset));
    }

    let node_count = tree.len();
    let record_value = |record: Record| match record {
        Record::Empty => node_count,
        Record::Node(node) => node,
        Record::Data(offset) => node_count + DATA_SECTION_SEPARATOR.len() + offset,
    };
    let mut out = Vec::with_capacity(node_count * 6 + data.len() + 256);
    for node in &tree {
        for &record in node {
            let value = u32::try_from(record_value(record))
                .ok()
                .filter(|&v| v < 1 << RECORD_SIZE)
                .ok_or("too many networks for 24-bit records")?;
            out.extend_from_slice(&value.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&DATA_SECTION_SEPARATOR);
    out.extend_from_slice(&data);
    out.extend_from_slice(METADATA_MARKER);
    encode_metadata(&mut out, layout, node_count);
    Ok(out)
}

/// `"198.51.100.0/24"` → (`::198.51.100.0` as 128 bits, masked; 120).
fn parse_network(cidr: &str) -> Result<(u128, u32), String> {
    let (addr, len) = match cidr.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (cidr, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("bad address in network {cidr:?}"))?;
    let (bits, offset, max) = match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 96, 32),
        IpAddr::V6(v6) => (u128::from(v6), 0, 128),
    };
    let len = match len {
        None => max,
        Some(len) => len
            .parse()
            .ok()
            .filter(|&len| len <= max)
            .ok_or_else(|| format!("bad prefix length in network {cidr:?}"))?,
    };
    let prefix = offset + len;
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    Ok((bits & mask, prefix))
}

/// Points the first `prefix` bits of `addr` at `record`, splitting nodes on the way.
fn insert(tree: &mut Vec<[Record; 2]>, addr: u128, prefix: u32, record: Record) {
    if prefix == 0 {
        tree[0] = [record; 2];
        return;
    }
    let mut node = 0;
    for depth in 0..prefix {
        let bit = usize::from((addr >> (127 - depth)) & 1 == 1);
        if depth + 1 == prefix {
            tree[node][bit] = record;
            return;
        }
        node = match tree[node][bit] {
            Record::Node(next) => next,
            above => {
                // A less specific network (or nothing) covered this half: it keeps covering
                // both halves of the new node.
                tree.push([above; 2]);
                let next = tree.len() - 1;
                tree[node][bit] = Record::Node(next);
                next
            }
        };
    }
}

fn encode_country(out: &mut Vec<u8>, layout: Layout, code: &str) {
    encode_control(out, MAP, 1);
    match layout {
        Layout::MaxMind => {
            encode_string(out, "country");
            encode_control(out, MAP, 1);
            encode_string(out, "iso_code");
        }
        Layout::Flat => encode_string(out, "country_code"),
    }
    encode_string(out, code);
}

fn encode_metadata(out: &mut Vec<u8>, layout: Layout, node_count: usize) {
    let database_type = match layout {
        Layout::MaxMind => "Sentinel-Test-Country",
        Layout::Flat => "Sentinel-Test-Country-Flat",
    };
    encode_control(out, MAP, 9);
    encode_string(out, "binary_format_major_version");
    encode_uint(out, UINT16, 2);
    encode_string(out, "binary_format_minor_version");
    encode_uint(out, UINT16, 0);
    encode_string(out, "build_epoch");
    encode_uint(out, UINT64, BUILD_EPOCH);
    encode_string(out, "database_type");
    encode_string(out, database_type);
    encode_string(out, "description");
    encode_control(out, MAP, 1);
    encode_string(out, "en");
    encode_string(out, "Sentinel test country database");
    encode_string(out, "ip_version");
    encode_uint(out, UINT16, 6);
    encode_string(out, "languages");
    encode_control(out, ARRAY, 1);
    encode_string(out, "en");
    encode_string(out, "node_count");
    encode_uint(out, UINT32, node_count as u64);
    encode_string(out, "record_size");
    encode_uint(out, UINT16, u64::from(RECORD_SIZE));
}

/// Control byte (type and size), extended-type byte and size bytes of a field.
fn encode_control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(
        size < 65_821 + (1 << 24),
        "field of size {size} is too large for a MaxMind DB"
    );
    let (size_bits, extra_bytes, extra) = match size {
        0..29 => (size as u8, 0, 0),
        29..285 => (29, 1, size - 29),
        285..65_821 => (30, 2, size - 285),
        _ => (31, 3, size - 65_821),
    };
    if kind <= 7 {
        out.push(kind << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(kind - 7);
    }
    out.extend_from_slice(&(extra as u32).to_be_bytes()[4 - extra_bytes..]);
}

fn encode_string(out: &mut Vec<u8>, s: &str) {
    encode_control(out, UTF8_STRING, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Unsigned integers are big-endian without leading zero bytes (0 has no bytes at all).
fn encode_uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    encode_control(out, kind, bytes.len() - skip);
    out.extend_from_slice(&bytes[skip..]);
}
