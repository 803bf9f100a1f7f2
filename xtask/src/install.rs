//! `cargo xtask install`: put Sentinel on a host as a hardened systemd service (the unit is
//! `config/sentinel.service`); `uninstall.rs` takes it off again.
//!
//! Install lays out the binary (`<prefix>/bin/sentinel`), the config (`/etc/sentinel`, never
//! overwriting an operator's file), the override signing key, the GeoIP database, the state
//! directory and the unit; on a live systemd host it then starts the service and waits until
//! the agent answers. With `--destdir` everything lands under that directory instead and
//! systemd is never touched, which is how packaging and the tests use it.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Where the config lives; the unit and the CLI default to it.
pub(crate) const CONFIG: &str = "/etc/sentinel/sentinel.toml";
pub(crate) const CONFIG_DIR: &str = "/etc/sentinel";
pub(crate) const STATE_DIR: &str = "/var/lib/sentinel";
pub(crate) const RUNTIME_DIR: &str = "/run/sentinel";
pub(crate) const UNIT: &str = "/etc/systemd/system/sentinel.service";
pub(crate) const UNIT_NAME: &str = "sentinel.service";
/// The override endpoint's socket, bound by systemd at boot (`config/sentinel.socket`).
pub(crate) const SOCKET_UNIT: &str = "/etc/systemd/system/sentinel.socket";
pub(crate) const SOCKET_NAME: &str = "sentinel.socket";
/// The weekly country-database refresh: a oneshot service and its timer.
pub(crate) const GEOIP_SERVICE: &str = "sentinel-geoip.service";
pub(crate) const GEOIP_TIMER: &str = "sentinel-geoip.timer";
/// `ListenStream=` in the shipped socket unit, rewritten to `override.listen`.
pub(crate) const SHIPPED_LISTEN: &str = "ListenStream=127.0.0.1:8787";
/// The ExecStart path in `config/sentinel.service`, rewritten to `--prefix`.
pub(crate) const SHIPPED_PREFIX: &str = "/usr/local";
/// How long `install` waits for the started agent to answer `sentinel status`.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    place: Place,
    /// Do not build: install target/release/sentinel as it is.
    #[arg(long)]
    no_build: bool,
    /// Install this `sentinel` binary instead of building one (implies --no-build).
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// Install this country database (.mmdb) instead of fetching the default one with
    /// scripts/geoip.sh.
    #[arg(long, value_name = "FILE")]
    geoip: Option<PathBuf>,
}

/// Where things go.
#[derive(clap::Args)]
pub struct Place {
    /// Stage the files under DIR instead of / (for packaging and tests); systemctl is never
    /// run then.
    #[arg(long, value_name = "DIR")]
    pub(crate) destdir: Option<PathBuf>,
    /// The binary goes to PREFIX/bin/sentinel.
    #[arg(long, value_name = "PREFIX", default_value = SHIPPED_PREFIX)]
    prefix: PathBuf,
}

impl Place {
    /// Stage under `destdir` with the binary in `prefix`/bin (packaging).
    pub fn staged(destdir: PathBuf, prefix: PathBuf) -> Place {
        Place {
            destdir: Some(destdir),
            prefix,
        }
    }

    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if !self.prefix.is_absolute() {
            bail!(
                "--prefix must be an absolute path, got {}",
                self.prefix.display()
            );
        }
        match &self.destdir {
            Some(d) if !d.is_absolute() => {
                bail!("--destdir must be an absolute path, got {}", d.display())
            }
            Some(_) => Ok(()),
            None if !nix::unistd::geteuid().is_root() => bail!(
                "installing into / needs root: run it as root (e.g. `sudo -E env \"PATH=$PATH\" \
                 cargo xtask ...`), or give --destdir DIR to stage the files elsewhere"
            ),
            None => Ok(()),
        }
    }

    /// `path` (absolute, as the running system sees it) on the target: under --destdir.
    pub fn on_target(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        match &self.destdir {
            Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    /// The binary as the running system sees it.
    pub fn binary(&self) -> PathBuf {
        self.prefix.join("bin/sentinel")
    }

    /// Whether to drive systemd: only on the real root of a host that runs it.
    pub(crate) fn systemd(&self) -> bool {
        self.destdir.is_none() && Path::new("/run/systemd/system").is_dir()
    }
}

pub fn step(what: impl std::fmt::Display) {
    println!("==> {what}");
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The values of the config the installer acts on, with the agent's defaults.
pub struct Settings {
    pub geo_enabled: bool,
    pub geo_database: PathBuf,
    pub secret_file: PathBuf,
    pub table: String,
    /// `override.listen`, for the socket unit.
    pub listen: std::net::SocketAddr,
}

impl Settings {
    pub fn read(path: &Path) -> anyhow::Result<Settings> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: toml::Table = text.parse().with_context(|| {
            format!(
                "{} is not valid TOML (`sentinel check-config --config {}` says more)",
                path.display(),
                path.display()
            )
        })?;
        let get = |section: &str, key: &str| doc.get(section).and_then(|s| s.get(key));
        let string = |section: &str, key: &str, default: &str| {
            get(section, key)
                .and_then(toml::Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(default)
                .to_string()
        };
        let table = string("enforce", "table", "sentinel");
        if table.is_empty()
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!(
                "enforce.table in {} is {table:?}: expected a plain nftables table name",
                path.display()
            );
        }
        let listen = string("override", "listen", "127.0.0.1:8787");
        let listen = listen.parse().map_err(|e| {
            anyhow::anyhow!(
                "override.listen in {} is {listen:?}: {e} (expected address:port)",
                path.display()
            )
        })?;
        Ok(Settings {
            listen,
            geo_enabled: get("geo", "enabled")
                .and_then(toml::Value::as_bool)
                .unwrap_or(true),
            geo_database: string("geo", "database", "/var/lib/sentinel/country.mmdb").into(),
            secret_file: string("override", "secret_file", "/etc/sentinel/override.key").into(),
            table,
        })
    }
}

pub fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

/// Write `bytes` to `path` with `mode`, atomically: a reader (or the running agent's binary)
/// sees the old file or the new one, never half of one.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.xtask-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    // The mode given to open() is filtered by the umask; set it exactly.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("moving {} into place", path.display()))
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// The `sentinel` binary to install: `binary` when given, else target/release/sentinel,
/// built first unless `no_build`.
pub fn release_binary(
    root: &Path,
    binary: Option<&Path>,
    no_build: bool,
) -> anyhow::Result<PathBuf> {
    let built = match binary {
        Some(b) => b.to_path_buf(),
        None => {
            let built = target_dir(root).join("release/sentinel");
            if no_build {
                step(format!("using {} (--no-build)", built.display()));
            } else {
                step("building release (cargo build --release -p sentinel-agent)");
                run(
                    Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
                        .args(["build", "--release", "--package", "sentinel-agent"])
                        .args(["--bin", "sentinel"])
                        .current_dir(root),
                )
                .context("the build failed: run scripts/setup.sh first, then retry")?;
            }
            built
        }
    };
    if !built.is_file() {
        bail!(
            "no binary at {}: build it (cargo build --release) or drop --no-build",
            built.display()
        );
    }
    Ok(built)
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// `cargo xtask install`.
pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let place = &args.place;
    place.check()?;
    let root = workspace_root();

    // 1. The binary.
    let built = release_binary(&root, args.binary.as_deref(), args.no_build)?;
    install_binary(place, &built)?;

    // 2. The config: an operator's file is never overwritten.
    let settings = install_config(place, &root)?;

    // 3. The key that signs override links.
    let key = place.on_target(&settings.secret_file);
    if key.exists() {
        let mode = fs::metadata(&key)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            step(format!(
                "keeping {}, tightening its mode {mode:o} to 600",
                key.display()
            ));
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        } else {
            step(format!("keeping the override key {}", key.display()));
        }
    } else {
        step(format!(
            "generating the override key {} (mode 600)",
            key.display()
        ));
        let mut secret = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .context("reading /dev/urandom")?;
        let mut text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        write_file(&key, text.as_bytes(), 0o600)?;
    }

    // 4. State directory and GeoIP database.
    let state = place.on_target(STATE_DIR);
    step(format!("creating {} (mode 750)", state.display()));
    make_dir(&state, 0o750)?;
    if settings.geo_enabled {
        install_geoip(
            &root,
            args.geoip.as_deref(),
            &place.on_target(&settings.geo_database),
        )?;
    } else {
        step("geo.enabled = false: no country database");
    }

    // 5. The unit, pointing at the installed binary.
    install_units(
        place,
        &root,
        Path::new(UNIT).parent().unwrap(),
        settings.listen,
    )?;

    // 6. Start it.
    if place.destdir.is_some() {
        step(format!(
            "staged under {} (--destdir): systemd not touched",
            place
                .destdir
                .as_ref()
                .map_or("/".into(), |d| d.display().to_string())
        ));
        return Ok(());
    }
    if !place.systemd() {
        step("systemd is not running here: the service was not started");
        println!(
            "    start the agent yourself: {} run --config {CONFIG}",
            place.binary().display()
        );
        return Ok(());
    }
    step("systemctl daemon-reload");
    run(Command::new("systemctl").arg("daemon-reload"))?;
    step(format!(
        "systemctl enable {UNIT_NAME} {SOCKET_NAME} {GEOIP_TIMER}"
    ));
    run(Command::new("systemctl").args(["enable", UNIT_NAME, SOCKET_NAME, GEOIP_TIMER]))?;
    step(format!("systemctl start {GEOIP_TIMER}"));
    run(Command::new("systemctl").args(["start", GEOIP_TIMER]))?;
    // The socket first: a restart of the service alone would not rebind a changed address.
    step(format!("systemctl restart {SOCKET_NAME}"));
    run(Command::new("systemctl").args(["restart", SOCKET_NAME]))?;
    // restart, not start: after an upgrade the running agent must pick up the new binary.
    step(format!("systemctl restart {UNIT_NAME}"));
    let started = run(Command::new("systemctl").args(["restart", UNIT_NAME]));
    if let Err(e) = started {
        print_journal();
        bail!("{e:#}: the agent did not start (its log is above: journalctl -u sentinel)");
    }
    wait_ready(&place.binary())?;
    println!(
        "Sentinel is running. Logs: journalctl -u sentinel -f. Status: {} status",
        place.binary().display()
    );
    Ok(())
}

/// The binary at `<prefix>/bin/sentinel` on the target.
pub fn install_binary(place: &Place, built: &Path) -> anyhow::Result<()> {
    let binary = place.on_target(place.binary());
    step(format!("installing {}", binary.display()));
    let bytes = fs::read(built).with_context(|| format!("reading {}", built.display()))?;
    write_file(&binary, &bytes, 0o755)
}

/// The shipped config at /etc/sentinel/sentinel.toml (mode 0640, in a 0750 directory), never
/// overwriting an operator's file; the settings of the config in place.
pub fn install_config(place: &Place, root: &Path) -> anyhow::Result<Settings> {
    let config_dir = place.on_target(CONFIG_DIR);
    make_dir(&config_dir, 0o750)?;
    let shipped = fs::read(root.join("config/sentinel.toml")).context("reading config/")?;
    let config = place.on_target(CONFIG);
    if !config.exists() {
        step(format!("installing {}", config.display()));
        write_file(&config, &shipped, 0o640)?;
    } else if fs::read(&config).is_ok_and(|c| c == shipped) {
        step(format!(
            "keeping {} (already the shipped default)",
            config.display()
        ));
    } else {
        let new = config.with_extension("toml.new");
        step(format!(
            "keeping your {}; the new default is at {} (compare: diff {} {})",
            config.display(),
            new.display(),
            config.display(),
            new.display()
        ));
        write_file(&new, &shipped, 0o640)?;
    }
    Settings::read(&config)
}

/// The country database at `db` (and its licence at `db`.LICENSE): a copy of `src` when
/// given, else what `scripts/geoip.sh` fetches.
pub fn install_geoip(root: &Path, src: Option<&Path>, db: &Path) -> anyhow::Result<()> {
    match src {
        Some(src) => {
            step(format!(
                "installing the country database {} from {}",
                db.display(),
                src.display()
            ));
            let bytes = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
            write_file(db, &bytes, 0o644)?;
            let licence = PathBuf::from(format!("{}.LICENSE", src.display()));
            if let Ok(text) = fs::read(&licence) {
                write_file(
                    Path::new(&format!("{}.LICENSE", db.display())),
                    &text,
                    0o644,
                )?;
            }
        }
        None => {
            step(format!(
                "installing the country database {} (scripts/geoip.sh)",
                db.display()
            ));
            run(Command::new("bash")
                .arg(root.join("scripts/geoip.sh"))
                .arg(db))
            .context(
                "fetching the GeoIP database failed: see geoip.sh's message above, or pass \
                 --geoip FILE with a country database you have",
            )?;
        }
    }
    Ok(())
}

/// `sentinel.service` (ExecStart at the installed binary), `sentinel.socket` (listening on
/// `listen`) and the country-database refresh (`sentinel-geoip.service` and `.timer`) in
/// `unit_dir` on the target.
pub fn install_units(
    place: &Place,
    root: &Path,
    unit_dir: &Path,
    listen: std::net::SocketAddr,
) -> anyhow::Result<()> {
    for name in [UNIT_NAME, GEOIP_SERVICE, GEOIP_TIMER] {
        let unit = place.on_target(unit_dir.join(name));
        step(format!("installing {}", unit.display()));
        let shipped = fs::read_to_string(root.join("config").join(name))
            .with_context(|| format!("reading config/{name}"))?;
        let text = shipped.replace(
            &format!("{SHIPPED_PREFIX}/bin/sentinel"),
            &place.binary().display().to_string(),
        );
        write_file(&unit, text.as_bytes(), 0o644)?;
    }
    let socket = place.on_target(unit_dir.join(SOCKET_NAME));
    step(format!(
        "installing {} (override.listen {listen}, bound by systemd at boot)",
        socket.display(),
    ));
    let shipped_socket =
        fs::read_to_string(root.join("config/sentinel.socket")).context("reading config/")?;
    let text = shipped_socket.replace(SHIPPED_LISTEN, &format!("ListenStream={listen}"));
    write_file(&socket, text.as_bytes(), 0o644)
}

fn print_journal() {
    let _ = Command::new("journalctl")
        .args(["-u", UNIT_NAME, "-n", "30", "--no-pager"])
        .status();
}

/// Poll `sentinel status` until the started agent answers.
fn wait_ready(binary: &Path) -> anyhow::Result<()> {
    step(format!(
        "waiting for the agent to answer (up to {} s)",
        READY_TIMEOUT.as_secs()
    ));
    let start = Instant::now();
    let mut last_note = Instant::now();
    loop {
        let ok = Command::new(binary)
            .args(["status", "--config", CONFIG])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            step(format!(
                "the agent is ready after {:.1} s",
                start.elapsed().as_secs_f64()
            ));
            let _ = Command::new(binary)
                .args(["status", "--config", CONFIG])
                .status();
            return Ok(());
        }
        let failed = Command::new("systemctl")
            .args(["is-failed", "--quiet", UNIT_NAME])
            .status()
            .is_ok_and(|s| s.success());
        if failed || start.elapsed() > READY_TIMEOUT {
            print_journal();
            bail!(
                "the agent {} (its log is above: journalctl -u sentinel); fix the cause and run \
                 the install again",
                if failed {
                    "failed to start"
                } else {
                    "did not answer within 30 s"
                }
            );
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            println!("    still waiting ({} s)", start.elapsed().as_secs());
            last_note = Instant::now();
        }
        thread::sleep(Duration::from_millis(250));
    }
}
