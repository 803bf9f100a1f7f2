//! A real PostgreSQL server for one test, from Debian's `postgresql` package: `initdb` and
//! `pg_ctl` in a temp dir, on its own loopback port and unix socket directory, run as the
//! package's `postgres` user (the server refuses root), password authentication (SCRAM) for
//! the `sentinel` role. Never the machine's own instance. Stopped and removed on drop, even
//! when the test fails.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub const USER: &str = "sentinel";
pub const PASSWORD: &str = "fleet-test-password";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    uid: u32,
    gid: u32,
    /// Flush to disk on commit, as a production server does (tests turn it off for speed).
    fsync: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql package (scripts/setup.sh installs it)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no initdb under /usr/lib/postgresql")
        .1
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// initdb and start a server without fsync (fast; for tests).
    pub fn start() -> Postgres {
        Self::start_with(false)
    }

    /// initdb and start a server that flushes every commit (for measurements).
    pub fn start_durable() -> Postgres {
        Self::start_with(true)
    }

    fn start_with(fsync: bool) -> Postgres {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("the postgres system user (created by the postgresql package)");
        let dir = tempfile::Builder::new()
            .prefix("sentinel-pg")
            .tempdir()
            .unwrap();
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let pg = Postgres {
            dir,
            bin: bin_dir(),
            port: free_port(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            fsync,
        };
        let pwfile = pg.dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        nix::unistd::chown(&pwfile, Some(user.uid), Some(user.gid)).unwrap();
        pg.initdb(&pwfile);
        pg.start_server();
        pg
    }

    /// `initdb`, tried up to 3 times: on a machine shared with other agents under test, a
    /// process-response detector (respawn: "spawns far too often") may terminate initdb's
    /// rapid `sh -c postgres …` probes; the retry is said out loud.
    fn initdb(&self, pwfile: &Path) {
        let mut last = String::new();
        for attempt in 1..=3 {
            let _ = std::fs::remove_dir_all(self.data());
            let out = self.try_initdb(pwfile);
            if out.status.success() {
                return;
            }
            last = text(&out);
            eprintln!(
                "*** initdb attempt {attempt} failed ({}): {last}",
                out.status
            );
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        panic!("initdb: {last}");
    }

    fn try_initdb(&self, pwfile: &Path) -> Output {
        let pg = self;
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data().to_str().unwrap(),
                "-U",
                USER,
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(self.bin.join(tool))
            .args(args)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .unwrap()
    }

    /// (Re)start the server on the same port and data.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=40",
            self.port,
            self.dir.path().display(),
            if self.fsync { "on" } else { "off" }
        );
        let log = self.dir.path().join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stop the server (fast shutdown: clients are disconnected).
    pub fn stop_server(&self) {
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out));
    }

    /// The URL agents and the CLI use (the password comes from a file or the environment).
    pub fn url(&self) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// A `[fleet]` section for an agent whose password file is `password_file`.
    pub fn fleet_section(&self, password_file: &Path, extra: &str) -> String {
        format!(
            "[fleet]\npostgres_url = \"{}\"\npostgres_password_file = \"{}\"\ninterval = \"500ms\"\nheartbeat = \"2s\"\n{extra}\n",
            self.url(),
            password_file.display()
        )
    }

    /// Run SQL with psql over the unix socket; the rows, `|`-separated.
    pub fn sql(&self, query: &str) -> Vec<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                self.dir.path().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                query,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {query}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
