//! `cargo xtask uninstall`: take Sentinel off a host that `cargo xtask install` put it on —
//! stop and remove the service, and on request lift its blocks and purge its state.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::install::{
    CONFIG, CONFIG_DIR, GEOIP_SERVICE, GEOIP_TIMER, Place, RUNTIME_DIR, SOCKET_NAME, SOCKET_UNIT,
    STATE_DIR, Settings, UNIT, UNIT_NAME, run, step,
};

#[derive(clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    place: Place,
    /// Also delete the agent's nftables table (`table inet <enforce.table>`), lifting every
    /// block now instead of letting them expire.
    #[arg(long)]
    remove_blocks: bool,
    /// Also delete /etc/sentinel (config, override key) and /var/lib/sentinel (events,
    /// decisions, GeoIP database).
    #[arg(long)]
    purge: bool,
}

/// `cargo xtask uninstall`.
pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let place = &args.place;
    place.check()?;
    let config = place.on_target(CONFIG);
    let settings = Settings::read(&config).ok();

    // 1. Stop the agent.
    if place.systemd() {
        step(format!(
            "systemctl disable --now {UNIT_NAME} {SOCKET_NAME} {GEOIP_TIMER}"
        ));
        if let Err(e) = run(Command::new("systemctl").args([
            "disable",
            "--now",
            UNIT_NAME,
            SOCKET_NAME,
            GEOIP_TIMER,
        ])) {
            println!("    {e:#} (continuing: the unit may not be installed)");
        }
    } else if place.destdir.is_none() {
        step("systemd is not running here: stop a running `sentinel run` yourself");
    }

    // 2. Blocks: kept unless asked, they expire on their own.
    let table = settings.as_ref().map_or("sentinel", |s| s.table.as_str());
    if args.remove_blocks {
        if place.destdir.is_some() {
            step("--remove-blocks with --destdir: the host's nftables are not touched");
        } else if Command::new("nft")
            .args(["list", "table", "inet", table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            step(format!(
                "nft delete table inet {table} (every block lifted)"
            ));
            run(Command::new("nft").args(["delete", "table", "inet", table]))?;
        } else {
            step(format!("no nftables table inet {table}: no blocks to lift"));
        }
    } else if place.destdir.is_none() {
        step(format!(
            "keeping nftables table inet {table}: its blocks expire on their own \
             (--remove-blocks lifts them now)"
        ));
    }

    // 3. The unit and the binary.
    let mut removed_unit = false;
    for path in [
        place.on_target(UNIT),
        place.on_target(SOCKET_UNIT),
        place.on_target(Path::new(UNIT).with_file_name(GEOIP_SERVICE)),
        place.on_target(Path::new(UNIT).with_file_name(GEOIP_TIMER)),
        place.on_target(place.binary()),
    ] {
        if path.exists() {
            step(format!("removing {}", path.display()));
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed_unit |= path.ends_with(UNIT_NAME);
        } else {
            step(format!("{} is not there", path.display()));
        }
    }
    if removed_unit && place.systemd() {
        step("systemctl daemon-reload");
        run(Command::new("systemctl").arg("daemon-reload"))?;
        let _ = Command::new("systemctl")
            .args(["reset-failed", UNIT_NAME])
            .stderr(Stdio::null())
            .status();
    }

    // 4. Data: only with --purge.
    let dirs = [CONFIG_DIR, STATE_DIR, RUNTIME_DIR];
    if args.purge {
        for dir in dirs {
            let path = place.on_target(dir);
            if path.exists() {
                step(format!("removing {}", path.display()));
                fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        if let Some(s) = &settings {
            for (what, path) in [
                ("GeoIP database", &s.geo_database),
                ("override key", &s.secret_file),
            ] {
                if !dirs.iter().any(|d| path.starts_with(d)) {
                    println!(
                        "    kept the {what} {} (outside Sentinel's directories)",
                        path.display()
                    );
                }
            }
        }
    } else {
        step(format!(
            "keeping {} (config, override key) and {} (events, decisions, GeoIP database): \
             --purge removes them",
            place.on_target(CONFIG_DIR).display(),
            place.on_target(STATE_DIR).display()
        ));
    }
    step("Sentinel is uninstalled");
    Ok(())
}
