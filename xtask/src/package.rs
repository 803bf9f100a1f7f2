//! `cargo xtask package`: the Debian package, `target/debian/sentinel_<version>_<arch>.deb`,
//! for servers that should not build Sentinel themselves.
//!
//! The files are laid out by the installer's own steps (`install.rs`, `--destdir` style: the
//! binary, the config, the country database, the units), so a package and `cargo xtask
//! install` put the same things in the same places; this module adds what only a package has
//! (`DEBIAN/control`, the conffile list, the maintainer scripts in `packaging/debian/`, the
//! docs, man page and completions) and hands the tree to Debian's own `dpkg-deb`. Not
//! cargo-deb: it would be one more tool to compile on every fresh CI machine, and it would
//! describe the layout a second time, beside the installer's.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::install::{self, Place, make_dir, run, step, write_file};

/// Where the package puts the binary: `/usr/bin/sentinel`.
const PREFIX: &str = "/usr";
/// Packaged units live with the system's, not in /etc (the operator's place).
const UNIT_DIR: &str = "/lib/systemd/system";
/// The country database as shipped; postinst copies it to `/var/lib/sentinel` the first
/// time, and `sentinel-geoip.timer` keeps that copy current.
const SHIPPED_DB: &str = "/usr/share/sentinel/country.mmdb";
const DOC_DIR: &str = "/usr/share/doc/sentinel";
/// Files under /etc that are the operator's once installed (dpkg asks before replacing an
/// edited one, and keeps it on upgrade).
const CONFFILES: &[&str] = &["/etc/sentinel/sentinel.toml"];
/// `Maintainer:` unless --maintainer or DEBFULLNAME/DEBEMAIL say otherwise.
const MAINTAINER: &str = "Sentinel maintainers <sentinel@example.org>";

#[derive(clap::Args)]
pub struct PackageArgs {
    /// Package this `sentinel` binary instead of building target/release/sentinel.
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// Do not build: package target/release/sentinel as it is.
    #[arg(long)]
    no_build: bool,
    /// Ship this country database (.mmdb, its licence beside it as FILE.LICENSE) instead of
    /// fetching the default one with scripts/geoip.sh.
    #[arg(long, value_name = "FILE")]
    geoip: Option<PathBuf>,
    /// The package version (default: the workspace's).
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// Where the .deb goes (default: target/debian).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// The `Maintainer:` field, "Name <address>" (default: $DEBFULLNAME <$DEBEMAIL>, else a
    /// placeholder).
    #[arg(long, value_name = "NAME <EMAIL>")]
    maintainer: Option<String>,
}

/// `cargo xtask package`.
pub fn package(args: &PackageArgs) -> anyhow::Result<PathBuf> {
    let root = install::workspace_root();
    let version = args
        .version
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    if version.is_empty()
        || !version.starts_with(|c: char| c.is_ascii_digit())
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
    {
        bail!("--version {version:?} is not a Debian version (digits first, then [A-Za-z0-9.+~-])");
    }
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let maintainer = args.maintainer.clone().unwrap_or_else(|| {
        match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
            (Ok(name), Ok(mail)) if !name.is_empty() && !mail.is_empty() => {
                format!("{name} <{mail}>")
            }
            _ => MAINTAINER.to_string(),
        }
    });
    let built = install::release_binary(&root, args.binary.as_deref(), args.no_build)?;
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| install::target_dir(&root).join("debian"));
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let stage_dir = tempfile::Builder::new()
        .prefix("sentinel-deb.")
        .tempdir_in(&out_dir)
        .context("creating the staging directory")?;
    let stage = stage_dir.path().join("root");
    make_dir(&stage, 0o755)?;
    let place = Place::staged(stage.clone(), PREFIX.into());

    install::install_binary(&place, &built)?;
    // Debian ships stripped binaries; the kernel programs are data in the binary and stay.
    let binary = place.on_target(place.binary());
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment"])
        .arg(&binary))?;
    let settings = install::install_config(&place, &root)?;
    let db = place.on_target(SHIPPED_DB);
    install::install_geoip(&root, args.geoip.as_deref(), &db)?;
    install::install_units(&place, &root, Path::new(UNIT_DIR), settings.listen)?;
    docs(&place, &root, &db, &version, &maintainer)?;
    generated_docs(&place, &built)?;
    fix_dir_modes(&stage)?;
    control(&root, &stage, &version, &arch, &built, &maintainer)?;

    let deb = out_dir.join(format!("sentinel_{version}_{arch}.deb"));
    step(format!("dpkg-deb --build {}", deb.display()));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zgzip", "-z9"])
        .arg(&stage)
        .arg(&deb))?;
    step(format!("built {}", deb.display()));
    Ok(deb)
}

/// A command's trimmed standard output, failing when it fails.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// README, docs/ and the licences under /usr/share/doc/sentinel (compressed, as Debian
/// wants them), and `copyright` naming the country database's licence too.
fn docs(
    place: &Place,
    root: &Path,
    db: &Path,
    version: &str,
    maintainer: &str,
) -> anyhow::Result<()> {
    let doc = place.on_target(DOC_DIR);
    make_dir(&doc, 0o755)?;
    let mut files = vec![root.join("README.md")];
    let mut entries: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .context("reading docs/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    entries.sort();
    files.extend(entries);
    for file in files {
        let name = file.file_name().context("a doc has a name")?;
        let text = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        write_file(&doc.join(name), &text, 0o644)?;
        run(Command::new("gzip").args(["-9nf"]).arg(doc.join(name)))?;
    }
    let mut copyright = String::from(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: sentinel\n\n\
         Files: *\n\
         Copyright: 2026 the Sentinel authors\n\
         License: MIT or Apache-2.0\n\n\
         License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n\n\
         License: MIT\n",
    );
    let mit = fs::read_to_string(root.join("LICENSE-MIT")).context("reading LICENSE-MIT")?;
    copyright.push_str(&indent(&mit));
    let db_licence = PathBuf::from(format!("{}.LICENSE", db.display()));
    let db_text = fs::read_to_string(&db_licence).with_context(|| {
        format!(
            "reading {} (the country database's licence must ship with it)",
            db_licence.display()
        )
    })?;
    copyright.push_str(&format!(
        "\nFiles: {SHIPPED_DB}\nCopyright: see below\nLicense: see below\n{}",
        indent(&db_text)
    ));
    write_file(&doc.join("copyright"), copyright.as_bytes(), 0o644)?;
    // The config will hold chat tokens: not world-readable, on purpose.
    write_file(
        &place.on_target("/usr/share/lintian/overrides/sentinel"),
        b"sentinel: non-standard-dir-perm 0750 != 0755 [etc/sentinel/]\n\
          sentinel: non-standard-file-perm 0640 != 0644 [etc/sentinel/sentinel.toml]\n",
        0o644,
    )?;
    // A native package (no Debian revision): changelog.gz, not changelog.Debian.gz.
    let changelog = doc.join("changelog");
    write_file(
        &changelog,
        format!(
            "sentinel ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask \
             package.\n\n -- {maintainer}  {date}\n",
            date = output(Command::new("date").arg("-R"))?,
        )
        .as_bytes(),
        0o644,
    )?;
    run(Command::new("gzip").args(["-9nf"]).arg(&changelog))
}

/// Debian's continuation-line form: every line indented by one space, empty ones as " .".
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim().is_empty() {
                " .\n".to_string()
            } else {
                format!(" {l}\n")
            }
        })
        .collect()
}

/// The man pages and shell completions, generated by the binary from its own CLI.
fn generated_docs(place: &Place, built: &Path) -> anyhow::Result<()> {
    let man = place.on_target("/usr/share/man/man1");
    make_dir(&man, 0o755)?;
    run(Command::new(built).arg("manpage").arg(&man))?;
    run(Command::new("find")
        .arg(&man)
        .args([
            "-name", "*.1", "-exec", "chmod", "0644", "{}", "+", "-exec", "gzip", "-9nf",
        ])
        .args(["{}", "+"]))?;
    for (shell, path) in [
        ("bash", "/usr/share/bash-completion/completions/sentinel"),
        ("zsh", "/usr/share/zsh/vendor-completions/_sentinel"),
        ("fish", "/usr/share/fish/vendor_completions.d/sentinel.fish"),
    ] {
        let text = output(Command::new(built).args(["completions", shell]))?;
        write_file(
            &place.on_target(path),
            format!("{text}\n").as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

/// Directories the staging created with the umask get 0755; /etc/sentinel keeps its 0750.
fn fix_dir_modes(stage: &Path) -> anyhow::Result<()> {
    run(Command::new("find")
        .arg(stage)
        .args(["-type", "d", "!", "-path"])
        .arg(stage.join("etc/sentinel"))
        .args(["-exec", "chmod", "0755", "{}", "+"]))
}

/// DEBIAN/: control (dependencies from the binary's shared libraries), conffiles, md5sums and
/// the maintainer scripts.
fn control(
    root: &Path,
    stage: &Path,
    version: &str,
    arch: &str,
    built: &Path,
    maintainer: &str,
) -> anyhow::Result<()> {
    let debian = stage.join("DEBIAN");
    make_dir(&debian, 0o755)?;
    let size = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(stage),
    )?;
    let size = size.split_whitespace().next().unwrap_or("0");
    let depends = format!("{}, nftables, systemd", shlib_depends(built)?);
    let control = format!(
        "Package: sentinel\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {size}\n\
         Depends: {depends}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: eBPF active-defence agent for Linux servers\n\
         {}",
        indent(
            "Sentinel watches exec, connect and CPU from the kernel (eBPF), judges\n\
             what it sees (reverse shells, miners, web-server lineage, high-risk\n\
             countries) and blocks with nftables after a dead man's switch that an\n\
             operator can answer from chat.\n\n\
             This package runs it as a hardened systemd service, with a country\n\
             database kept current by sentinel-geoip.timer."
        )
    );
    write_file(&debian.join("control"), control.as_bytes(), 0o644)?;
    let conffiles: String = CONFFILES.iter().map(|c| format!("{c}\n")).collect();
    write_file(&debian.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        let text = fs::read(root.join("packaging/debian").join(script))
            .with_context(|| format!("reading packaging/debian/{script}"))?;
        write_file(&debian.join(script), &text, 0o755)?;
    }
    let sums = output(Command::new("sh").current_dir(stage).args([
        "-c",
        "find usr lib -type f -print0 | sort -z | xargs -0 md5sum",
    ]))?;
    write_file(
        &debian.join("md5sums"),
        format!("{sums}\n").as_bytes(),
        0o644,
    )
}

/// The binary's shared-library dependencies as Debian package relations (dpkg-shlibdeps).
fn shlib_depends(built: &Path) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    fs::create_dir(dir.path().join("debian"))?;
    fs::write(
        dir.path().join("debian/control"),
        "Source: sentinel\n\nPackage: sentinel\nArchitecture: any\n",
    )?;
    let out = output(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("-e{}", built.display()))
            .current_dir(dir.path()),
    )
    .context("dpkg-shlibdeps (apt-get install dpkg-dev)")?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}
