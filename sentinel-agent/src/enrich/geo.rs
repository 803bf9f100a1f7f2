//! Offline GeoIP: the country of an address, from any MaxMind-format (`.mmdb`) country
//! database on disk (GeoLite2/GeoIP2, DB-IP, ip-location-db). It gives connect events their
//! `country` and the geo detector its input, without any network access at run time.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use maxminddb::{MaxMindDbError, Reader};
use serde::Deserialize;

/// Why a country database could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// The file could not be read: missing, unreadable, a directory, ….
    #[error("cannot read GeoIP database `{}`: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a usable MaxMind DB (corrupt, truncated, another format).
    #[error("`{}` is not a valid MaxMind DB (.mmdb) file: {source}", path.display())]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// What the reader found wrong.
        #[source]
        source: MaxMindDbError,
    },
}

/// A country database, loaded into memory. Lookups never fail: they answer `None`.
#[derive(Debug)]
pub struct CountryDb {
    path: PathBuf,
    reader: Reader<Bytes>,
    mapped: bool,
}

/// The database's bytes: read into memory (the CLI), or, for the agent, a private copy in an
/// unnamed file beside the database, mapped. Mapped, only the pages lookups touch are resident,
/// and they are clean file pages the kernel can reclaim: the agent's resident memory is ~7 MiB
/// smaller than with the whole database on its heap. The copy has no name, so no one can
/// truncate or rewrite it under the mapping (an admin's in-place `cp` over the database would
/// make the agent's next lookup of a mapped original fault with SIGBUS); the original may
/// change at will and is read again on `sentinel reload`.
#[derive(Debug)]
enum Bytes {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            Bytes::Read(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// The database file's content.
fn read(path: &Path) -> Result<Vec<u8>, GeoError> {
    std::fs::read(path).map_err(|source| GeoError::Open {
        path: path.to_owned(),
        source,
    })
}

/// `bytes` in an unnamed file (`O_TMPFILE`) in `dir`, mapped read-only.
fn private_copy(dir: &Path, bytes: &[u8]) -> std::io::Result<memmap2::Mmap> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};

    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)?;
    file.write_all(bytes)?;
    // SAFETY: the file has no name and only this process holds it, so nothing truncates or
    // writes it while it is mapped.
    unsafe { memmap2::Mmap::map(&file) }
}

/// The only fields read from a record, borrowed from the database: GeoLite2/GeoIP2 Country
/// and DB-IP have `country.iso_code` (and `registered_country.iso_code`), the ip-location-db
/// databases a flat `country_code`. Everything else in the record is skipped unread.
#[derive(Debug, Default, Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
    country_code: Option<&'a str>,
}

#[derive(Debug, Default, Deserialize)]
struct IsoCode<'a> {
    iso_code: Option<&'a str>,
}

impl CountryRecord<'_> {
    /// The first well-formed code of `country`, `registered_country`, `country_code`,
    /// uppercased.
    fn code(&self) -> Option<String> {
        [&self.country, &self.registered_country]
            .into_iter()
            .flatten()
            .filter_map(|c| c.iso_code)
            .chain(self.country_code)
            .find(|code| code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
            .map(str::to_ascii_uppercase)
    }
}

impl CountryDb {
    /// Open a MaxMind-format (.mmdb) database; errors name the path and the reason.
    pub fn open(path: &Path) -> Result<CountryDb, GeoError> {
        Self::from_bytes(path, Bytes::Read(read(path)?))
    }

    /// Open a database for the agent: as [`CountryDb::open`], then kept as a private mapped
    /// copy in the database's directory ([`Bytes`]); in memory where that directory takes no
    /// unnamed file (read-only, or a filesystem without `O_TMPFILE`).
    pub fn open_mapped(path: &Path) -> Result<CountryDb, GeoError> {
        let bytes = read(path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match private_copy(dir, &bytes) {
            Ok(map) => Self::from_bytes(path, Bytes::Mapped(map)),
            Err(e) => {
                tracing::info!(
                    dir = %dir.display(),
                    "country database kept in memory (no private copy beside it: {e})"
                );
                Self::from_bytes(path, Bytes::Read(bytes))
            }
        }
    }

    /// Whether lookups read a private mapped copy (not the heap).
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    fn from_bytes(path: &Path, bytes: Bytes) -> Result<CountryDb, GeoError> {
        let mapped = matches!(bytes, Bytes::Mapped(_));
        let reader = Reader::from_source(bytes).map_err(|source| GeoError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        Ok(CountryDb {
            path: path.to_owned(),
            reader,
            mapped,
        })
    }

    /// ISO 3166-1 alpha-2 country code (uppercase) of `ip`, if the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        // `::ffff:a.b.c.d` is an IPv4 peer seen through an IPv6 socket.
        let ip = ip.to_canonical();
        // Loopback is this host: no country, and no tree walk to learn it (a local service's
        // clients connect to it all day).
        if ip.is_loopback() {
            return None;
        }
        let record: CountryRecord = self.reader.lookup(ip).ok()?.decode().ok()??;
        record.code()
    }

    /// One line for the log: database type, build date, IP version, node count.
    pub fn describe(&self) -> String {
        let meta = self.reader.metadata();
        let built = meta.build_time().map_or_else(
            |_| format!("epoch {}", meta.build_epoch),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        );
        format!(
            "{}: type \"{}\", built {built}, IPv{} tree, {} nodes",
            self.path.display(),
            meta.database_type,
            meta.ip_version,
            meta.node_count
        )
    }
}

#[cfg(test)]
#[path = "../../../tests/common/mmdb.rs"]
pub(crate) mod mmdb;

#[cfg(test)]
mod tests {
    use std::fs;

    use super::mmdb::{Layout, country_db_bytes, write_country_db};
    use super::*;

    /// A real database to check against when one is on this machine (never downloaded here):
    /// `$SENTINEL_TEST_GEO_DB`, or the one `scripts/setup.sh` installs.
    const REAL_DB: &str = "/var/lib/sentinel/country.mmdb";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn db(layout: Layout, entries: &[(&str, &str)]) -> (tempfile::TempDir, CountryDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        write_country_db(&path, layout, entries).unwrap();
        let geo = CountryDb::open(&path).unwrap_or_else(|e| panic!("{e}"));
        (dir, geo)
    }

    /// The agent's mapped private copy answers as the file did, and keeps answering after the
    /// file is overwritten in place (what `cp new.mmdb country.mmdb` does), shortened, then
    /// removed.
    #[test]
    fn a_mapped_copy_outlives_the_file_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        write_country_db(&path, Layout::MaxMind, DOC_RANGES).unwrap();
        let read = CountryDb::open(&path).unwrap();
        let mapped = CountryDb::open_mapped(&path).unwrap();
        assert!(mapped.is_mapped() && !read.is_mapped());
        for addr in [
            "198.51.100.1",
            "198.51.100.200",
            "2001:db8:1::1",
            "2001:db8:9::1",
        ] {
            assert_eq!(mapped.country(ip(addr)), read.country(ip(addr)), "{addr}");
        }
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(mapped.country(ip("198.51.100.1")).as_deref(), Some("RU"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(mapped.country(ip("198.51.100.200")).as_deref(), Some("CN"));
        // No file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    const DOC_RANGES: &[(&str, &str)] = &[
        ("198.51.100.0/25", "RU"),
        ("198.51.100.128/25", "CN"),
        ("2001:db8:3::/48", "DE"),
        ("2001:db8:1::/48", "KP"),
        ("2001:db8:2::/48", "FR"),
    ];

    fn check_doc_ranges(geo: &CountryDb) {
        for (addr, want) in [
            ("198.51.100.1", "RU"),
            ("198.51.100.127", "RU"),
            ("198.51.100.200", "CN"),
            ("2001:db8:3::200", "DE"),
            ("2001:db8:1::1", "KP"),
            ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", "KP"),
            ("2001:db8:2:3::4", "FR"),
        ] {
            assert_eq!(geo.country(ip(addr)).as_deref(), Some(want), "{addr}");
        }
    }

    #[test]
    fn maxmind_layout_ipv4_and_ipv6() {
        let (_dir, geo) = db(Layout::MaxMind, DOC_RANGES);
        check_doc_ranges(&geo);
    }

    #[test]
    fn flat_layout_ipv4_and_ipv6() {
        let (_dir, geo) = db(Layout::Flat, DOC_RANGES);
        check_doc_ranges(&geo);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_looked_up_as_ipv4() {
        for layout in [Layout::MaxMind, Layout::Flat] {
            let (_dir, geo) = db(layout, DOC_RANGES);
            assert_eq!(
                geo.country(ip("::ffff:198.51.100.9")).as_deref(),
                Some("RU")
            );
            assert_eq!(
                geo.country(ip("::ffff:198.51.100.201")).as_deref(),
                Some("CN")
            );
            assert_eq!(geo.country(ip("::ffff:198.51.101.1")), None);
            // The test database does not alias ::ffff:0:0/96 itself: the mapping is CountryDb's.
            let raw = geo.reader.lookup(ip("::ffff:198.51.100.9")).unwrap();
            assert!(!raw.has_data());
        }
    }

    #[test]
    fn addresses_not_in_the_database_are_none() {
        let (_dir, geo) = db(Layout::MaxMind, DOC_RANGES);
        for addr in [
            "198.51.99.255",
            "198.51.101.0",
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "2001:db8::1",
            "2001:db8:4::1",
            "fe80::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(geo.country(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn only_one_family_or_nothing_at_all() {
        let (_d4, v4) = db(Layout::Flat, &[("198.51.100.0/24", "RU")]);
        assert_eq!(v4.country(ip("198.51.100.1")).as_deref(), Some("RU"));
        assert_eq!(v4.country(ip("2001:db8::1")), None);
        let (_d6, v6) = db(Layout::Flat, &[("2001:db8::/32", "IR")]);
        assert_eq!(v6.country(ip("2001:db8::1")).as_deref(), Some("IR"));
        assert_eq!(v6.country(ip("198.51.100.1")), None);
        let (_d0, empty) = db(Layout::Flat, &[]);
        assert_eq!(empty.country(ip("198.51.100.1")), None);
        assert_eq!(empty.country(ip("2001:db8::1")), None);
        let (_da, all_v4) = db(Layout::Flat, &[("0.0.0.0/0", "SY")]);
        assert_eq!(all_v4.country(ip("203.0.113.1")).as_deref(), Some("SY"));
        assert_eq!(all_v4.country(ip("2001:db8::1")), None);
    }

    #[test]
    fn the_more_specific_network_wins() {
        // In either order; hosts and single addresses too.
        for entries in [
            &[
                ("198.51.100.0/24", "RU"),
                ("198.51.100.128/25", "BY"),
                ("198.51.100.200", "VE"),
                ("2001:db8::/32", "CN"),
                ("2001:db8:5::/48", "KP"),
            ][..],
            &[
                ("2001:db8:5::/48", "KP"),
                ("198.51.100.200/32", "VE"),
                ("198.51.100.128/25", "BY"),
                ("2001:db8::/32", "CN"),
                ("198.51.100.0/24", "RU"),
            ][..],
        ] {
            let (_dir, geo) = db(Layout::MaxMind, entries);
            for (addr, want) in [
                ("198.51.100.1", "RU"),
                ("198.51.100.127", "RU"),
                ("198.51.100.128", "BY"),
                ("198.51.100.199", "BY"),
                ("198.51.100.200", "VE"),
                ("198.51.100.201", "BY"),
                ("2001:db8:4::1", "CN"),
                ("2001:db8:5::1", "KP"),
                ("2001:db8:6::1", "CN"),
            ] {
                assert_eq!(geo.country(ip(addr)).as_deref(), Some(want), "{addr}");
            }
        }
        // The same network twice: the later entry wins.
        let (_dir, geo) = db(
            Layout::Flat,
            &[("198.51.100.0/24", "RU"), ("198.51.100.0/24", "CN")],
        );
        assert_eq!(geo.country(ip("198.51.100.1")).as_deref(), Some("CN"));
    }

    #[test]
    fn codes_are_uppercased_and_malformed_ones_ignored() {
        let (_dir, geo) = db(
            Layout::Flat,
            &[
                ("198.51.100.0/26", "ru"),
                ("198.51.100.64/26", "Cn"),
                ("198.51.100.128/26", "RUS"),
                ("198.51.100.192/27", "1A"),
                ("198.51.100.224/27", ""),
                ("2001:db8::/32", "é1"),
            ],
        );
        assert_eq!(geo.country(ip("198.51.100.1")).as_deref(), Some("RU"));
        assert_eq!(geo.country(ip("198.51.100.65")).as_deref(), Some("CN"));
        for addr in [
            "198.51.100.129",
            "198.51.100.193",
            "198.51.100.225",
            "2001:db8::1",
        ] {
            assert_eq!(geo.country(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn loopback_has_no_country_even_in_a_database_that_maps_it() {
        let (_dir, geo) = db(
            Layout::Flat,
            &[
                ("127.0.0.0/8", "RU"),
                ("198.51.100.0/24", "RU"),
                ("::1/128", "RU"),
            ],
        );
        assert_eq!(geo.country(ip("198.51.100.1")).as_deref(), Some("RU"));
        for addr in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(geo.country(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn country_falls_back_to_registered_country_then_country_code() {
        let iso = |code| {
            Some(IsoCode {
                iso_code: Some(code),
            })
        };
        let record = |country, registered_country, country_code| CountryRecord {
            country,
            registered_country,
            country_code,
        };
        assert_eq!(
            record(iso("ir"), iso("SY"), Some("CN")).code().as_deref(),
            Some("IR")
        );
        assert_eq!(
            record(None, iso("SY"), Some("CN")).code().as_deref(),
            Some("SY")
        );
        assert_eq!(
            record(iso("XXX"), iso("sy"), None).code().as_deref(),
            Some("SY")
        );
        assert_eq!(
            record(Some(IsoCode::default()), None, Some("cn"))
                .code()
                .as_deref(),
            Some("CN")
        );
        assert_eq!(CountryRecord::default().code(), None);
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such.mmdb");
        let err = CountryDb::open(&path).unwrap_err();
        assert!(matches!(err, GeoError::Open { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn a_directory_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = CountryDb::open(dir.path()).unwrap_err();
        assert!(matches!(err, GeoError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains(&*dir.path().to_string_lossy()));
    }

    #[test]
    fn garbage_or_truncated_file_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let good = country_db_bytes(Layout::MaxMind, DOC_RANGES);
        let marker = good
            .windows(14)
            .position(|w| w == b"\xAB\xCD\xEFMaxMind.com")
            .unwrap();
        for (name, bytes) in [
            ("empty.mmdb", Vec::new()),
            ("garbage.mmdb", b"this is not a database\n".repeat(100)),
            ("truncated.mmdb", good[..good.len() / 2].to_vec()),
            ("no-metadata.mmdb", good[..marker + 14].to_vec()),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            let err = CountryDb::open(&path).unwrap_err();
            assert!(matches!(err, GeoError::Invalid { .. }), "{name}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
            assert!(msg.contains("not a valid MaxMind DB"), "{msg}");
        }
    }

    #[test]
    fn the_test_writer_makes_databases_the_reader_verifies() {
        for layout in [Layout::MaxMind, Layout::Flat] {
            let bytes = country_db_bytes(layout, DOC_RANGES);
            assert_eq!(bytes, country_db_bytes(layout, DOC_RANGES), "deterministic");
            let reader = Reader::from_source(bytes).unwrap();
            reader
                .verify()
                .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
            let meta = reader.metadata();
            assert_eq!(
                (
                    meta.ip_version,
                    meta.record_size,
                    meta.binary_format_major_version
                ),
                (6, 24, 2)
            );
            assert_eq!(meta.languages, ["en"]);
            let found = reader.lookup(ip("198.51.100.1")).unwrap();
            assert_eq!(found.network().unwrap().to_string(), "198.51.100.0/25");
            let found = reader.lookup(ip("2001:db8:1::1")).unwrap();
            assert_eq!(found.network().unwrap().to_string(), "2001:db8:1::/48");
        }
    }

    #[test]
    fn bad_networks_are_refused_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        for cidr in [
            "198.51.100.0/33",
            "2001:db8::/129",
            "198.51.100/24",
            "x",
            "198.51.100.0/",
        ] {
            let err = write_country_db(&dir.path().join("x.mmdb"), Layout::Flat, &[(cidr, "RU")])
                .unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{cidr}");
        }
    }

    #[test]
    fn describe_names_type_build_date_ip_version_and_nodes() {
        let (_dir, geo) = db(Layout::MaxMind, DOC_RANGES);
        let line = geo.describe();
        let nodes = geo.reader.metadata().node_count;
        assert!(
            line.contains("type \"Sentinel-Test-Country\", built 2026-01-01T00:00:00Z"),
            "{line}"
        );
        assert!(
            line.contains(&format!("IPv6 tree, {nodes} nodes")),
            "{line}"
        );
        assert!(line.contains("country.mmdb"), "{line}");
    }

    #[test]
    fn real_database_if_present() {
        let path = std::env::var_os("SENTINEL_TEST_GEO_DB")
            .map_or_else(|| PathBuf::from(REAL_DB), PathBuf::from);
        if !path.exists() {
            eprintln!(
                "\n*** SKIPPED real_database_if_present: no database at {} \
                 (set SENTINEL_TEST_GEO_DB, or run scripts/geoip.sh) ***\n",
                path.display()
            );
            return;
        }
        let geo = CountryDb::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let line = geo.describe();
        eprintln!("real database: {line}");
        let database_type = &geo.reader.metadata().database_type;
        assert!(
            line.contains(&format!("type \"{database_type}\"")),
            "{line}"
        );
        // A local file lookup: no packet leaves this machine.
        let code = geo.country(ip("8.8.8.8"));
        eprintln!("real database: 8.8.8.8 -> {code:?}");
        let code = code.expect("8.8.8.8 has a country");
        assert!(
            code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()),
            "{code}"
        );
        assert_eq!(geo.country(ip("127.0.0.1")), None);
    }
}
