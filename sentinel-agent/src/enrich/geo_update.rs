//! Keeping the country database current (`sentinel geoip-update`, run weekly by
//! `sentinel-geoip.timer`): the same database `scripts/geoip.sh` installs, from the same
//! place (the npm registry's `@ip-location-db/geo-whois-asn-country-mmdb`), fetched over
//! HTTPS without npm: the package's manifest names its tarball and the tarball's sha512.
//!
//! A new database replaces the old one only when it is whole: the tarball's sha512 matches
//! the manifest, the `.mmdb` inside opens with maxminddb, and it is at least half the size of
//! the one it replaces (a truncated or emptied upstream file is refused). It is written beside
//! the old one and renamed over it, so the agent, reading it at any moment, sees the old file
//! or the new one; its licence is replaced the same way.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha512};

use crate::enrich::geo::CountryDb;

/// The manifest of the latest release of the package scripts/geoip.sh installs.
pub const DEFAULT_SOURCE: &str =
    "https://registry.npmjs.org/@ip-location-db/geo-whois-asn-country-mmdb/latest";
/// The database and licence inside the package's tarball.
const DB_MEMBER: &str = "package/geo-whois-asn-country.mmdb";
const LICENSE_MEMBER: &str = "package/NRO_LICENSE";
/// Bounds on what is downloaded and unpacked (the database is about 8 MB).
const MAX_MANIFEST: usize = 1 << 20;
const MAX_TARBALL: usize = 256 << 20;
const MAX_MEMBER: u64 = 128 << 20;
const TIMEOUT: Duration = Duration::from_secs(300);

/// Why the database was not updated (the old one stays in place in every case).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("the manifest at {url} is not an npm package manifest: {reason}")]
    Manifest { url: String, reason: String },
    #[error(
        "the tarball {url} does not match the manifest's checksum (sha512 {got}, expected {expected})"
    )]
    Checksum {
        url: String,
        got: String,
        expected: String,
    },
    #[error("the tarball {url}: {reason}")]
    Tarball { url: String, reason: String },
    #[error("the new database does not open: {0}")]
    Invalid(#[from] crate::enrich::geo::GeoError),
    #[error(
        "the new database is {new} bytes, less than half of the {old} bytes of the one in place: \
         refused (a truncated upstream file?)"
    )]
    TooSmall { new: u64, old: u64 },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an update installed.
#[derive(Debug)]
pub struct Updated {
    pub version: String,
    pub bytes: u64,
    /// The database as the agent will describe it.
    pub describe: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    name: String,
    version: String,
    #[serde(default)]
    license: Option<String>,
    #[serde(default)]
    repository: Option<Repository>,
    dist: Dist,
}

#[derive(Debug, Deserialize)]
struct Repository {
    url: String,
}

#[derive(Debug, Deserialize)]
struct Dist {
    tarball: String,
    integrity: String,
}

/// Fetch the latest database named by the manifest at `source`, verify it and put it at `db`
/// (its licence at `db`.LICENSE).
pub async fn update(source: &str, db: &Path) -> Result<Updated, UpdateError> {
    let mut builder = reqwest::Client::builder();
    // The system's CA store too (ca-certificates, and what the operator added to it: a
    // registry mirror or a TLS-inspecting proxy), beside the built-in roots.
    for cert in rustls_native_certs::load_native_certs().certs {
        if let Ok(cert) = reqwest::Certificate::from_der(&cert) {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = builder
        .timeout(TIMEOUT)
        .user_agent(concat!("sentinel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fetch_error(source, &e))?;
    let manifest_bytes = get(&http, source, MAX_MANIFEST).await?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| UpdateError::Manifest {
            url: source.into(),
            reason: e.to_string(),
        })?;
    let expected = manifest
        .dist
        .integrity
        .strip_prefix("sha512-")
        .ok_or_else(|| UpdateError::Manifest {
            url: source.into(),
            reason: format!(
                "dist.integrity {:?} is not a sha512 digest",
                manifest.dist.integrity
            ),
        })?
        .to_string();
    let url = manifest.dist.tarball.clone();
    let tarball = get(&http, &url, MAX_TARBALL).await?;
    let got = base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&tarball));
    if got != expected {
        return Err(UpdateError::Checksum { url, got, expected });
    }
    let (mmdb, licence) = unpack(&tarball).map_err(|reason| UpdateError::Tarball {
        url: url.clone(),
        reason,
    })?;
    install(db, &mmdb, &licence_text(db, &manifest, &licence))?;
    let describe = CountryDb::open(db)?.describe();
    Ok(Updated {
        version: manifest.version,
        bytes: mmdb.len() as u64,
        describe,
    })
}

fn fetch_error(url: &str, e: &reqwest::Error) -> UpdateError {
    let mut reason = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        reason.push_str(&format!(": {c}"));
        cause = c.source();
    }
    UpdateError::Fetch {
        url: url.into(),
        reason,
    }
}

/// GET `url`, at most `limit` bytes, failing on a non-2xx answer.
async fn get(http: &reqwest::Client, url: &str, limit: usize) -> Result<Vec<u8>, UpdateError> {
    let mut response = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fetch_error(url, &e))?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fetch_error(url, &e))? {
        if body.len() + chunk.len() > limit {
            return Err(UpdateError::Fetch {
                url: url.into(),
                reason: format!("larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The database and the licence from the package's .tgz.
fn unpack(tarball: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    let (mut mmdb, mut licence) = (None, None);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let slot = match path.to_str() {
            Some(DB_MEMBER) => &mut mmdb,
            Some(LICENSE_MEMBER) => &mut licence,
            _ => continue,
        };
        let mut bytes = Vec::new();
        entry
            .take(MAX_MEMBER)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        *slot = Some(bytes);
    }
    Ok((
        mmdb.ok_or_else(|| format!("no {DB_MEMBER} in it"))?,
        licence.ok_or_else(|| format!("no {LICENSE_MEMBER} in it"))?,
    ))
}

/// The licence file beside the database, as scripts/geoip.sh writes it.
fn licence_text(db: &Path, manifest: &Manifest, nro: &[u8]) -> Vec<u8> {
    let mut text = format!(
        "{} is {} from the npm package {}@{},\nlicensed {} ({}).\nIt is built from GeoFeed, RIR \
         WHOIS and ASN data; the RIR data comes with this notice:\n\n",
        db.file_name().unwrap_or_default().to_string_lossy(),
        Path::new(DB_MEMBER)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        manifest.name,
        manifest.version,
        manifest.license.as_deref().unwrap_or("as the package says"),
        manifest
            .repository
            .as_ref()
            .map_or("see the npm package", |r| r.url.as_str()),
    )
    .into_bytes();
    text.extend_from_slice(nro);
    text.push(b'\n');
    text
}

/// Verify `mmdb` and put it at `db` atomically, the licence beside it.
fn install(db: &Path, mmdb: &[u8], licence: &[u8]) -> Result<(), UpdateError> {
    let tmp = sibling(db, ".update");
    write_new(&tmp, mmdb)?;
    let outcome = CountryDb::open(&tmp)
        .map_err(UpdateError::Invalid)
        .and_then(|_| {
            let old = fs::metadata(db).map_or(0, |m| m.len());
            let new = mmdb.len() as u64;
            if new < old / 2 {
                return Err(UpdateError::TooSmall { new, old });
            }
            Ok(())
        });
    if let Err(e) = outcome {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let licence_path = PathBuf::from(format!("{}.LICENSE", db.display()));
    let licence_tmp = sibling(&licence_path, ".update");
    write_new(&licence_tmp, licence)?;
    rename(&tmp, db)?;
    rename(&licence_tmp, &licence_path)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    let err = |source| UpdateError::Write {
        path: path.into(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(err)
}

fn rename(from: &Path, to: &Path) -> Result<(), UpdateError> {
    fs::rename(from, to).map_err(|source| UpdateError::Write {
        path: to.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::geo::mmdb;

    /// A valid country database with `n` networks, each its own country (more, larger).
    fn db_bytes(n: u8) -> Vec<u8> {
        let ranges: Vec<(String, String)> = (0..n)
            .map(|i| {
                let code = format!("{}{}", (b'A' + i / 26) as char, (b'A' + i % 26) as char);
                (format!("2001:db8:{i:x}::/48"), code)
            })
            .collect();
        let entries: Vec<(&str, &str)> = ranges
            .iter()
            .map(|(r, c)| (r.as_str(), c.as_str()))
            .collect();
        mmdb::country_db_bytes(mmdb::Layout::Flat, &entries)
    }

    #[test]
    fn install_swaps_a_whole_database_and_refuses_one_under_half_the_old_size() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("country.mmdb");
        let (big, small) = (db_bytes(120), db_bytes(2));
        assert!(small.len() * 2 < big.len());
        install(&db, &big, b"licence 1").unwrap();
        assert_eq!(fs::read(&db).unwrap(), big);
        assert_eq!(
            fs::read(dir.path().join("country.mmdb.LICENSE")).unwrap(),
            b"licence 1"
        );
        let err = install(&db, &small, b"licence 2").unwrap_err();
        assert!(matches!(err, UpdateError::TooSmall { .. }), "{err}");
        assert_eq!(fs::read(&db).unwrap(), big, "the old database was replaced");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "a temp file stayed"
        );
    }

    fn tgz(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpack_finds_the_database_and_licence_and_names_what_is_missing() {
        let both = tgz(&[
            ("package/package.json", b"{}"),
            (DB_MEMBER, b"db"),
            (LICENSE_MEMBER, b"nro"),
        ]);
        assert_eq!(unpack(&both).unwrap(), (b"db".to_vec(), b"nro".to_vec()));
        let no_db = tgz(&[(LICENSE_MEMBER, b"nro")]);
        assert!(unpack(&no_db).unwrap_err().contains(DB_MEMBER));
        assert!(unpack(b"not gzip").is_err());
    }

    #[test]
    fn install_refuses_what_does_not_open_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("country.mmdb");
        fs::write(&db, b"old").unwrap();
        let err = install(&db, b"garbage", b"licence").unwrap_err();
        assert!(matches!(err, UpdateError::Invalid(_)), "{err}");
        assert_eq!(fs::read(&db).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a temp file stayed"
        );
    }
}
