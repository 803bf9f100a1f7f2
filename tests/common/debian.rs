//! The Debian root the container tests share: `debootstrap` once from the machine's own
//! Debian mirror, cached under /var/cache/sentinel-test/bookworm. `tests/systemd.rs` boots it
//! with systemd-nspawn; `tests/containers.rs` imports it into Podman as a local image (no
//! registry needed).

use std::{fs, path::PathBuf, process::Command, time::Instant};

/// Where the container root is cached between runs.
pub const CACHE: &str = "/var/cache/sentinel-test/bookworm";
/// What the container needs beyond the minimal base.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,nftables,iproute2,ca-certificates";

/// The Debian mirror apt uses on this machine (the only package registry reachable).
fn mirror() -> String {
    let mut sources = String::new();
    for file in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        sources.push_str(&fs::read_to_string(file).unwrap_or_default());
        sources.push('\n');
    }
    sources
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("URIs:")
                .map(|u| u.split_whitespace().next().unwrap_or("").to_string())
                .or_else(|| {
                    l.strip_prefix("deb ")
                        .and_then(|r| r.split_whitespace().find(|w| w.starts_with("http")))
                        .map(str::to_string)
                })
        })
        .filter(|u| !u.is_empty() && !u.contains("security"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The cached container root, built with `debootstrap` when missing; `None` (after saying
/// why, loudly) when it cannot be built here.
pub fn root() -> Option<PathBuf> {
    let root = PathBuf::from(CACHE);
    if root.join("usr/lib/systemd/systemd").exists() || root.join("lib/systemd/systemd").exists() {
        return Some(root);
    }
    let missing = ["debootstrap", "systemd-nspawn"]
        .into_iter()
        .filter(|tool| {
            Command::new("which")
                .arg(tool)
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect::<Vec<_>>();
    if !missing.is_empty() {
        eprintln!(
            "\n*** SKIPPED: {missing:?} not installed (run scripts/setup.sh) — the unit was NOT \
             tested under systemd ***\n"
        );
        return None;
    }
    let building = root.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&building);
    fs::create_dir_all(root.parent().unwrap()).unwrap();
    let mirror = mirror();
    let started = Instant::now();
    eprintln!("building the container root with debootstrap from {mirror} (cached in {CACHE})");
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&building)
        .arg(&mirror)
        .output()
        .unwrap();
    if !out.status.success() {
        let _ = fs::remove_dir_all(&building);
        eprintln!(
            "\n*** SKIPPED: debootstrap could not build the container from {mirror} — the unit \
             was NOT tested under systemd ***\n{}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
        return None;
    }
    fs::rename(&building, &root).unwrap();
    eprintln!("container root built in {:.0?}", started.elapsed());
    Some(root)
}
