//! The Debian package on a machine that never saw Rust. `cargo xtask package` builds two
//! .debs of the binary under test (the second one with a higher version, as an upgrade); a
//! fresh Debian container booted with systemd (`tests/common/container.rs`, its own network
//! namespace, no toolchain in it) then lives through what an operator does:
//! `apt-get install ./sentinel_*.deb` → the service is active and `sentinel status` answers,
//! with a generated override key and the config as a 0640 conffile; an upgrade keeps an
//! edited config and the key and restarts the agent on the new binary; `apt-get remove`
//! stops it and leaves config, key, state and the blocks table; `apt-get purge` leaves
//! nothing; on a kernel older than the minimum, postinst installs but refuses to start with a
//! clear message.
//!
//! The container has a network namespace of its own: the agent's nftables table (the default
//! `sentinel`) is the container's, never the host's. Its dependencies (nftables, systemd) are
//! in the cached root already (`container::PACKAGES`), so apt resolves them offline.
//!
//! Needs root, `debootstrap`, `systemd-nspawn` and `dpkg-dev` (`scripts/setup.sh`).
//! `SENTINEL_PACKAGE_BINARY=target/release/sentinel` runs it on the release build instead.

mod common;

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use sha2::Digest as _;

use common::{
    BIN, TEST_COUNTRIES,
    container::{Container, container_root, workspace},
    mmdb, netns, require_root, serial,
};

const V1: &str = "0.1.0";
/// What the upgrade installs: the same binary, repackaged with a higher version.
const V2: &str = "0.1.0+upgrade1";
const CONFIG: &str = "/etc/sentinel/sentinel.toml";
const KEY: &str = "/etc/sentinel/override.key";

/// `cargo xtask package` of the binary under test (or of `SENTINEL_PACKAGE_BINARY`, e.g. the
/// release build) at `version`, shipping `geoip`; the .deb.
fn package(version: &str, geoip: &Path, out: &Path) -> PathBuf {
    let started = Instant::now();
    let binary = std::env::var("SENTINEL_PACKAGE_BINARY").unwrap_or_else(|_| BIN.into());
    let run = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["run", "--quiet", "--package", "xtask", "--", "package"])
        .args(["--binary", &binary, "--version", version, "--geoip"])
        .arg(geoip)
        .arg("--out-dir")
        .arg(out)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "cargo xtask package failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let deb = out.join(format!("sentinel_{version}_amd64.deb"));
    assert!(deb.is_file(), "no {}", deb.display());
    eprintln!("packaged {} in {:.1?}", deb.display(), started.elapsed());
    deb
}

/// Run `script` with `sh -c` in the container, asserting success; its output.
fn must(c: &Container, script: &str) -> String {
    let out = c.exec(&["sh", "-c", script]);
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\n{}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.journal()
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether `script` succeeds in the container.
fn ok(c: &Container, script: &str) -> bool {
    c.exec(&["sh", "-c", script]).status.success()
}

fn apt(c: &Container, args: &str) -> String {
    must(
        c,
        &format!("cd /root && DEBIAN_FRONTEND=noninteractive apt-get -y -q {args} 2>&1"),
    )
}

/// The agent answers `sentinel status` (it may still be attaching right after a restart).
fn assert_status_answers(c: &Container) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok(c, "sentinel status --json >/dev/null") {
        assert!(
            Instant::now() < deadline,
            "sentinel status does not answer\n{}",
            c.journal()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What the test's HTTP server answers: path → body.
type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// A small HTTP server on 127.0.0.1 inside the container's network namespace (a thread of
/// this process that joined it), serving `files`; its port. It stands in for the npm
/// registry: the test never reaches the internet.
fn serve_in(c: &Container, files: Files) -> u16 {
    let ns = fs::File::open(format!("/proc/{}/ns/net", c.leader())).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = files.lock().unwrap().get(&path).cloned();
            let _ = match body {
                Some(body) => conn
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| conn.write_all(&body)),
                None => conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    rx.recv().unwrap()
}

/// An npm package tarball holding `mmdb` and a licence, as the registry serves
/// @ip-location-db/geo-whois-asn-country-mmdb.
fn npm_tarball(mmdb: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in [
        ("package/package.json", &b"{}"[..]),
        ("package/geo-whois-asn-country.mmdb", mmdb),
        ("package/NRO_LICENSE", b"test licence"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// The registry's manifest of the latest version, naming the tarball and its sha512.
fn npm_manifest(port: u16, tarball: &[u8]) -> Vec<u8> {
    let integrity = base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(tarball));
    serde_json::json!({
        "name": "@ip-location-db/geo-whois-asn-country-mmdb",
        "version": "9.9.9",
        "license": "CC0-1.0",
        "repository": {"url": "test"},
        "dist": {
            "tarball": format!("http://127.0.0.1:{port}/db.tgz"),
            "integrity": format!("sha512-{integrity}"),
        },
    })
    .to_string()
    .into_bytes()
}

/// sentinel-geoip.timer's service, run once: a database served by the test replaces the
/// installed one (after a tampered tarball was refused), and the running agent reloads it.
fn assert_timer_swaps_the_database(c: &Container) {
    assert_eq!(
        must(
            c,
            "systemctl is-enabled sentinel-geoip.timer; systemctl is-active sentinel-geoip.timer"
        ),
        "enabled\nactive\n"
    );
    let files: Files = Arc::default();
    let port = serve_in(c, files.clone());
    let source = format!("http://127.0.0.1:{port}/manifest");
    must(
        c,
        &format!("sed -i 's|^update_source = .*|update_source = \"{source}\"|' {CONFIG}"),
    );
    let shipped = must(c, "sha256sum < /usr/share/sentinel/country.mmdb");
    let served_dir = tempfile::tempdir().unwrap();
    let served = served_dir.path().join("served.mmdb");
    let fresh: Vec<(&str, &str)> = TEST_COUNTRIES
        .iter()
        .map(|&(range, cc)| (range, if cc == "DE" { "NL" } else { cc }))
        .collect();
    mmdb::write_country_db(&served, mmdb::Layout::Flat, &fresh).unwrap();
    let served = fs::read(&served).unwrap();
    let tarball = npm_tarball(&served);
    let pid = c.unit("MainPID");

    // A tarball that does not match the manifest's sha512: refused, nothing replaced.
    let mut tampered = tarball.clone();
    *tampered.last_mut().unwrap() ^= 1;
    files
        .lock()
        .unwrap()
        .insert("/manifest".into(), npm_manifest(port, &tarball));
    files.lock().unwrap().insert("/db.tgz".into(), tampered);
    assert!(!ok(c, "systemctl start sentinel-geoip.service"));
    assert!(
        c.sh(&["journalctl", "-u", "sentinel-geoip", "--no-pager"])
            .contains("does not match the manifest's checksum")
    );
    assert_eq!(
        must(c, "sha256sum < /var/lib/sentinel/country.mmdb"),
        shipped
    );

    // The real thing: swapped in, the agent told, still the same process.
    files.lock().unwrap().insert("/db.tgz".into(), tarball);
    must(c, "systemctl start sentinel-geoip.service");
    let want = format!("{:x}  -\n", sha2::Sha256::digest(&served));
    assert_eq!(must(c, "sha256sum < /var/lib/sentinel/country.mmdb"), want);
    assert!(must(c, "cat /var/lib/sentinel/country.mmdb.LICENSE").contains("@9.9.9"));
    let log = c.sh(&["journalctl", "-u", "sentinel-geoip", "--no-pager"]);
    assert!(log.contains("the running agent reloaded it"), "{log}");
    assert_eq!(c.unit("MainPID"), pid, "the agent restarted");
    assert_eq!(c.unit("ActiveState"), "active");
    assert!(
        c.journal().contains("GeoIP database reloaded"),
        "{}",
        c.journal()
    );
}

#[test]
fn the_package_installs_upgrades_and_purges() {
    if !require_root("the_package_installs_upgrades_and_purges") {
        return;
    }
    let Some(root) = container_root() else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let out = tempfile::tempdir().unwrap();
    let geoip = out.path().join("test-country.mmdb");
    mmdb::write_country_db(&geoip, mmdb::Layout::Flat, &TEST_COUNTRIES).unwrap();
    fs::write(
        out.path().join("test-country.mmdb.LICENSE"),
        "The test country database of tests/package.rs: documentation ranges only.\n",
    )
    .unwrap();
    let v1 = package(V1, &geoip, &out.path().join("v1"));
    let v2 = package(V2, &geoip, &out.path().join("v2"));
    // The agent loads programs into the one shared kernel: one such test at a time.
    let _lock = netns::take_lock().unwrap();
    let container = Container::boot(&root, true, |merged| {
        for deb in [&v1, &v2] {
            fs::copy(deb, merged.join("root").join(deb.file_name().unwrap())).unwrap();
        }
    });
    let c = &container;
    eprintln!("container booted after {:.1?}", started.elapsed());
    assert!(
        !ok(c, "command -v cargo || command -v rustc"),
        "the container has a Rust toolchain"
    );

    // 1. A fresh install: the service comes up on its own.
    let log = apt(c, &format!("install ./sentinel_{V1}_amd64.deb"));
    eprintln!("installed after {:.1?}", started.elapsed());
    assert_eq!(c.unit("ActiveState"), "active", "{log}\n{}", c.journal());
    assert_eq!(c.unit("UnitFileState"), "enabled");
    assert_status_answers(c);
    assert_eq!(
        must(
            c,
            &format!("stat -c '%a %U' {CONFIG} {KEY} /var/lib/sentinel")
        ),
        "640 root\n600 root\n750 root\n"
    );
    let key = must(c, &format!("cat {KEY}"));
    assert!(
        key.len() == 65 && key.trim_end().bytes().all(|b| b.is_ascii_hexdigit()),
        "the override key is not 32 random bytes in hex: {key:?}"
    );
    assert_eq!(
        must(
            c,
            "cmp /var/lib/sentinel/country.mmdb /usr/share/sentinel/country.mmdb && echo same"
        ),
        "same\n",
        "the country database was not put where geo.database points"
    );
    assert!(ok(c, "test -s /var/lib/sentinel/country.mmdb.LICENSE"));
    assert!(ok(c, "nft list table inet sentinel >/dev/null"));
    assert!(ok(
        c,
        "test -s /usr/share/man/man1/sentinel.1.gz && \
         test -s /usr/share/man/man1/sentinel-reload.1.gz"
    ));
    assert!(ok(
        c,
        "test -s /usr/share/bash-completion/completions/sentinel"
    ));
    let pid_v1 = c.unit("MainPID");

    // 2. The operator edits the config; the upgrade keeps it and the key, and restarts the
    // agent on the new package.
    must(
        c,
        &format!("sed -i 's/^log_level = \"info\"/log_level = \"debug\"/' {CONFIG}"),
    );
    let edited = must(c, &format!("cat {CONFIG}"));
    assert!(edited.contains("log_level = \"debug\""));
    // `systemctl reload` (ExecReload): the log level cannot change at run time, and says so;
    // the agent keeps running.
    let reload = c.exec(&["systemctl", "reload", "sentinel"]);
    assert!(!reload.status.success(), "a restart-only change reloaded");
    assert!(
        c.journal().contains("agent.log_level"),
        "the reload did not name the key\n{}",
        c.journal()
    );
    assert_eq!(c.unit("MainPID"), pid_v1);
    let log = apt(c, &format!("install ./sentinel_{V2}_amd64.deb"));
    assert_eq!(
        must(c, "dpkg-query -W -f '${Version}' sentinel"),
        V2,
        "{log}"
    );
    assert_eq!(must(c, &format!("cat {CONFIG}")), edited, "{log}");
    assert_eq!(
        must(c, &format!("cat {KEY}")),
        key,
        "the upgrade changed the key"
    );
    assert_eq!(c.unit("ActiveState"), "active", "{log}\n{}", c.journal());
    assert_ne!(
        c.unit("MainPID"),
        pid_v1,
        "the upgrade did not restart the agent"
    );
    assert_status_answers(c);

    // The weekly database refresh, run once.
    assert_timer_swaps_the_database(c);

    // 3. remove: stopped and gone, config, key, state and blocks kept.
    let log = apt(c, "remove sentinel");
    assert!(!ok(c, "test -e /usr/bin/sentinel"), "{log}");
    assert!(!ok(c, "test -e /lib/systemd/system/sentinel.service"));
    assert!(!ok(c, "systemctl is-active --quiet sentinel"));
    assert!(!ok(c, "systemctl is-active --quiet sentinel-geoip.timer"));
    for kept in [CONFIG, KEY, "/var/lib/sentinel/country.mmdb"] {
        assert!(ok(c, &format!("test -e {kept}")), "remove deleted {kept}");
    }
    assert!(
        ok(c, "nft list table inet sentinel >/dev/null"),
        "remove lifted the blocks (they expire on their own)"
    );

    // 4. purge: nothing left.
    let log = apt(c, "purge sentinel");
    let left = must(
        c,
        "find / -xdev \\( -path /proc -o -path /sys -o -path /root -o -path /var/log/journal \\) \
         -prune -o -name '*sentinel*' -print",
    );
    assert_eq!(left, "", "purge left files behind\n{log}");
    assert!(
        !ok(c, "nft list table inet sentinel >/dev/null 2>&1"),
        "purge left the nftables table"
    );
    assert!(!ok(c, "test -e /run/sentinel"));

    // 5. A kernel older than the programs need: installed, enabled, not started, and said why.
    let out = c.exec(&[
        "sh",
        "-c",
        &format!(
            "cd /root && SENTINEL_MIN_KERNEL=999.0 DEBIAN_FRONTEND=noninteractive \
             apt-get -y -q install ./sentinel_{V1}_amd64.deb 2>&1"
        ),
    ]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("NOT STARTED: this kernel") && log.contains("older than Linux 999.0"),
        "{log}"
    );
    assert_eq!(c.unit("ActiveState"), "inactive", "{log}");
    eprintln!("package test took {:.1?}", started.elapsed());
}
