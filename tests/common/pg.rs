//! A real PostgreSQL server for one test, from Debian's `postgresql` package: `initdb` and
//! `pg_ctl` in a temp dir, on its own loopback port and unix socket directory, run as the
//! package's `postgres` user (the server refuses root), password authentication (SCRAM) for
//! the `sentinel` role (the server's superuser: the operator's admin DSN). Never the machine's
//! own instance. Stopped and removed on drop, even when the test fails. [`Operator`] runs
//! `sentinel fleet` as the operator: `init`, `add-host`, and the fleet view.

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
    /// With TLS: the non-loopback address it also listens on (TLS only there).
    tls: Option<std::net::IpAddr>,
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
        Self::start_with(false, None)
    }

    /// initdb and start a server that also listens on `addr`, a non-loopback address of this
    /// machine, where it takes only TLS connections (`hostssl`), with a certificate for `addr`
    /// and 127.0.0.1 signed by a CA made here ([`Postgres::ca_file`]).
    pub fn start_tls(addr: std::net::IpAddr) -> Postgres {
        Self::start_with(false, Some(addr))
    }

    /// initdb and start a server that flushes every commit (for measurements).
    pub fn start_durable() -> Postgres {
        Self::start_with(true, None)
    }

    fn start_with(fsync: bool, tls: Option<std::net::IpAddr>) -> Postgres {
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
            tls,
        };
        let pwfile = pg.dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        nix::unistd::chown(&pwfile, Some(user.uid), Some(user.gid)).unwrap();
        pg.initdb(&pwfile);
        if let Some(addr) = tls {
            pg.make_certs(addr, user.uid, user.gid);
        }
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

    /// The test CA's certificate (PEM), with [`Postgres::start_tls`].
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A CA, and a server certificate it signs for `addr`, 127.0.0.1 and localhost; only TLS
    /// connections from other addresses than loopback.
    fn make_certs(&self, addr: std::net::IpAddr, uid: nix::unistd::Uid, gid: nix::unistd::Gid) {
        let dir = self.dir.path();
        make_ca(dir, "ca");
        std::fs::write(
            dir.join("ext.cnf"),
            format!(
                "subjectAltName=IP:127.0.0.1,IP:{addr},DNS:localhost\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        openssl(
            dir,
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key \
             -out server.csr -subj /CN=sentinel-test-store",
        );
        openssl(
            dir,
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
             -days 2 -extfile ext.cnf",
        );
        for f in ["server.crt", "server.key"] {
            nix::unistd::chown(&dir.join(f), Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let hba = self.data().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str(
            "hostssl all all 0.0.0.0/0 scram-sha-256\nhostssl all all ::/0 scram-sha-256\n",
        );
        std::fs::write(&hba, text).unwrap();
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
        let mut opts = format!(
            "-p {} -k {} -c fsync={} -c max_connections=40",
            self.port,
            self.dir.path().display(),
            if self.fsync { "on" } else { "off" }
        );
        match self.tls {
            None => opts.push_str(" -c listen_addresses=127.0.0.1"),
            Some(addr) => opts.push_str(&format!(
                " -c listen_addresses=127.0.0.1,{addr} -c ssl=on -c ssl_cert_file={0}/server.crt \
                 -c ssl_key_file={0}/server.key",
                self.dir.path().display()
            )),
        }
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

    /// The admin URL (the password comes from a file or the environment).
    pub fn url(&self) -> String {
        self.url_as(USER)
    }

    /// The URL of `role`, over TCP on loopback.
    pub fn url_as(&self, role: &str) -> String {
        format!("postgresql://{role}@127.0.0.1:{}/postgres", self.port)
    }

    /// A `[fleet]` section for the agent of host `role` whose password file is
    /// `password_file`.
    pub fn fleet_section(&self, role: &str, password_file: &Path, extra: &str) -> String {
        format!(
            "[fleet]\npostgres_url = \"{}\"\npostgres_password_file = \"{}\"\ninterval = \"500ms\"\nheartbeat = \"2s\"\n{extra}\n",
            self.url_as(role),
            password_file.display()
        )
    }

    /// The operator running `sentinel` binary `bin`, with the admin DSN; the store is not set
    /// up yet.
    pub fn operator(&self, bin: &Path) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("admin.password");
        write_private(&pw, &format!("{PASSWORD}\n"));
        let config = dir.path().join("operator.toml");
        let ca = if self.tls.is_some() {
            format!("ca_file = \"{}\"\n", self.ca_file().display())
        } else {
            String::new()
        };
        // The operator's signing key, made as an operator makes it.
        let key_file = dir.path().join("ops.key");
        let out = Command::new(bin)
            .args(["fleet", "keygen", "ops", "--out"])
            .arg(&key_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "fleet keygen: {}", text(&out));
        let public_key = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .to_string();
        write_private(
            &config,
            &format!(
                "[fleet]\npostgres_url = \"{}\"\npostgres_password_file = \"{}\"\n\
                 operator_key_file = \"{}\"\n{ca}",
                self.url(),
                pw.display(),
                key_file.display()
            ),
        );
        Operator {
            dir,
            config,
            bin: bin.to_path_buf(),
            key_file,
            public_key,
        }
    }

    /// Run SQL with psql over the unix socket as `role`: the rows, or psql's error.
    pub fn sql_as(&self, role: &str, password: &str, query: &str) -> Result<Vec<String>, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                self.dir.path().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                role,
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                query,
            ])
            .env("PGPASSWORD", password)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(text(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Run SQL with psql over the unix socket as the admin; the rows, `|`-separated.
    pub fn sql(&self, query: &str) -> Vec<String> {
        self.sql_as(USER, PASSWORD, query)
            .unwrap_or_else(|e| panic!("psql {query}: {e}"))
    }
}

/// The operator's `sentinel fleet`, on a config of its own with the admin DSN.
pub struct Operator {
    dir: tempfile::TempDir,
    pub config: PathBuf,
    bin: PathBuf,
    /// The operator's private key (`sentinel fleet keygen ops`), named in its config.
    pub key_file: PathBuf,
    /// Its public key, `ops:HEX`.
    pub public_key: String,
}

impl Operator {
    /// `sentinel fleet ARGS --config <operator's>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// The `[fleet]` line that makes an agent trust this operator's signatures.
    pub fn keys_line(&self) -> String {
        format!("operator_keys = [\"{}\"]", self.public_key)
    }

    /// `sentinel fleet init`, which must succeed.
    pub fn init(&self) -> &Self {
        let out = self.cli(&["fleet", "init"]);
        assert!(out.status.success(), "fleet init: {}", text(&out));
        self
    }

    /// `sentinel fleet add-host NAME --password-file …`: the file (mode 0600) and the password.
    pub fn add_host(&self, name: &str) -> (PathBuf, String) {
        self.add("add-host", name)
    }

    /// `sentinel fleet add-operator NAME --password-file …`.
    pub fn add_operator(&self, name: &str) -> (PathBuf, String) {
        self.add("add-operator", name)
    }

    fn add(&self, command: &str, name: &str) -> (PathBuf, String) {
        let file = self.dir.path().join(format!("{name}.password"));
        let out = self.cli(&[
            "fleet",
            command,
            name,
            "--password-file",
            file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "fleet {command} {name}: {}",
            text(&out)
        );
        let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
        (file, password)
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

/// A self-signed CA in `dir`: `NAME.crt` and `NAME.key`.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key \
             -out {name}.crt -days 2 -subj /CN=sentinel-test-{name} \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
        ),
    );
    dir.join(format!("{name}.crt"))
}

fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args}: {}", text(&out));
}

/// A new file only root can read (0600), as the installer makes secret files (this module is
/// also used by xtask, without the rest of the test harness).
fn write_private(path: &Path, text: &str) {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
