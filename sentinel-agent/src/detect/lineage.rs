//! `lineage`: a shell anywhere below a web server in the process tree — the classic sign of
//! remote code execution — or a reconnaissance or tooling program (`lineage.tools`: `id`,
//! `uname`, `curl`, `nc`, a compiler, `cat /etc/passwd`, `chmod +x`), with or without a shell
//! between: a payload in `python3 -c` or `perl -e` needs no shell to run `id` through pipes.
//! Critical, T1059. Evaluated at exec time.
//!
//! Both ends are judged by behaviour, not by name:
//! - a *web server* is a process that accepts connections: it called `listen(2)` (TCP or a
//!   unix stream socket, as php-fpm behind nginx), or it is a worker forked by a process that
//!   did. Dedicated daemons (`lineage.web_servers`: nginx, apache2, httpd, php-fpm) count by
//!   name; general interpreters (`lineage.interpreters`) and any other program
//!   (`lineage.any_listener`) count only while they accept connections. Package managers
//!   never count, and the walk up the tree stops at one: the shells an install runs are the
//!   package manager's. A package manager is recognised by its installed, root-owned file
//!   ([`super::package_manager`]), never by its comm or argv alone, and never below a web
//!   server: the real `npm` run by an exploited server is still the server's. Services
//!   that hand out shells by design (`lineage.shell_services`: init, sshd, tmux, …) are not
//!   web servers either, so an SSH login below a listening sshd raises nothing.
//! - a *shell* is a program whose executable is an installed shell (`enrich::shells`:
//!   same content as `/etc/shells` or `lineage.shells`), whatever it is called.

use rustc_hash::FxHashMap;

use crate::{
    config::{LineageConfig, name_matches},
    enrich::installed::SystemFiles,
};

use super::{Anomaly, Culprit, Finding, package_manager};

/// What the pipeline knows about one ancestor of the new process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ancestor<'a> {
    pub pid: u32,
    pub comm: &'a str,
    /// It accepts connections (it, or the pool master that forked it, called `listen`).
    pub listening: bool,
    /// It runs a package manager (an installed one, not below a web server:
    /// [`Lineage::is_package_manager`]).
    pub package_manager: bool,
    /// What its comm is to `lineage` ([`Lineage::roles`]) when the caller kept it from an
    /// earlier exec; looked up otherwise.
    pub roles: Option<Roles>,
}

/// What a process name is to `lineage`, from the configured lists (a name may be in several).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    package_manager: bool,
    shell_service: bool,
    web_server: bool,
    interpreter: bool,
    tool: bool,
}

impl Roles {
    /// The roles as one byte, for a cache that should not know this type.
    pub fn to_bits(self) -> u8 {
        u8::from(self.package_manager)
            | u8::from(self.shell_service) << 1
            | u8::from(self.web_server) << 2
            | u8::from(self.interpreter) << 3
            | u8::from(self.tool) << 4
    }

    pub fn from_bits(bits: u8) -> Self {
        Roles {
            package_manager: bits & 1 != 0,
            shell_service: bits & 2 != 0,
            web_server: bits & 4 != 0,
            interpreter: bits & 8 != 0,
            tool: bits & 16 != 0,
        }
    }
}

/// The configured names, looked up by hash: every exec asks about each of its ancestors, and
/// comparing each against every list was a large share of the agent's work per exec.
#[derive(Debug, Default)]
struct Names(FxHashMap<String, Roles>);

impl Names {
    fn new(config: &LineageConfig) -> Self {
        let mut names = Names::default();
        let mut mark = |list: &[String], set: fn(&mut Roles)| {
            for name in list {
                set(names.0.entry(name.clone()).or_default());
            }
        };
        mark(&config.package_managers, |r| r.package_manager = true);
        mark(&config.shell_services, |r| r.shell_service = true);
        mark(&config.web_servers, |r| r.web_server = true);
        mark(&config.interpreters, |r| r.interpreter = true);
        mark(&config.tools, |r| r.tool = true);
        names
    }

    /// The roles of every name `comm` matches ([`name_matches`]: the name itself or the name
    /// and a version, `python3.11`, `php-fpm8.2`): `comm` and each of its prefixes that only
    /// drops digits and dots from the end.
    fn roles(&self, comm: &str) -> Roles {
        let mut out = Roles::default();
        let mut end = comm.len();
        loop {
            if let Some(r) = self.0.get(&comm[..end]) {
                out.package_manager |= r.package_manager;
                out.shell_service |= r.shell_service;
                out.web_server |= r.web_server;
                out.interpreter |= r.interpreter;
                out.tool |= r.tool;
            }
            match comm.as_bytes()[..end].last() {
                Some(c) if c.is_ascii_digit() || *c == b'.' => end -= 1,
                _ => return out,
            }
        }
    }
}

pub struct Lineage {
    config: LineageConfig,
    names: Names,
    /// The host's installed files, where package managers are looked up.
    files: SystemFiles,
}

impl Lineage {
    pub fn new(config: LineageConfig) -> Self {
        Self::with_files(config, SystemFiles::default())
    }

    /// [`Lineage::new`], looking package managers up in `files`.
    pub fn with_files(config: LineageConfig, files: SystemFiles) -> Self {
        let names = Names::new(&config);
        Self {
            config,
            names,
            files,
        }
    }

    /// What the process name `comm` is to `lineage` (a hash lookup or a few: worth caching
    /// per process, since every exec asks about each of its ancestors).
    pub fn roles(&self, comm: &str) -> Roles {
        self.names.roles(comm)
    }

    /// Whether a process that exec'd `filename` with `argv` runs a package manager: the
    /// program, or for an interpreter the script it runs (`node /usr/bin/npm`), is named in
    /// `lineage.package_managers` and is the installed system's file, and the process is not
    /// below a web server (`below_server`, asked only when the rest holds).
    pub fn is_package_manager(
        &self,
        filename: &str,
        argv: &[String],
        below_server: impl FnOnce() -> bool,
    ) -> bool {
        package_manager::claim(filename, argv, |name| {
            self.names.roles(name).package_manager
        })
        .is_some_and(|claim| !below_server() && claim.holds(&self.files))
    }

    /// The nearest ancestor that is a web server, unless a package manager comes first. Only
    /// a recognised package manager ([`Ancestor::package_manager`]) stops the walk: a comm is
    /// whatever its process chose.
    pub fn web_server<'a>(&self, ancestors: &'a [Ancestor<'a>]) -> Option<&'a Ancestor<'a>> {
        for a in ancestors {
            let roles = a.roles.unwrap_or_else(|| self.names.roles(a.comm));
            if a.package_manager {
                return None;
            }
            if roles.shell_service {
                continue;
            }
            if roles.web_server {
                return Some(a);
            }
            if a.listening && (self.config.any_listener || roles.interpreter) {
                return Some(a);
            }
        }
        None
    }

    /// Whether `comm` run with `argv` is one of `lineage.tools` at work: any use of most,
    /// `cat` of an account file, `chmod` making a file executable.
    fn is_tool(&self, comm: &str, argv: &[String]) -> bool {
        if !self.names.roles(comm).tool {
            return false;
        }
        let args = argv.iter().skip(1).map(String::as_str);
        match comm {
            "cat" => args
                .into_iter()
                .any(|a| matches!(a, "/etc/passwd" | "/etc/shadow" | "/etc/group")),
            "chmod" => args.into_iter().any(makes_executable),
            _ => true,
        }
    }

    /// `culprit` just exec'd with `argv` under `ancestors` (parent first): a finding when it
    /// is a shell (`is_shell`, asked only below a web server) or a tool at work, and no allow
    /// rule covers it.
    pub fn on_exec(
        &self,
        culprit: &Culprit,
        argv: &[String],
        ancestors: &[Ancestor<'_>],
        is_shell: impl FnOnce() -> bool,
    ) -> Option<Finding> {
        let server = self.web_server(ancestors)?;
        let what = if is_shell() {
            "shell"
        } else if self.is_tool(&culprit.comm, argv) {
            "reconnaissance or tooling program"
        } else {
            return None;
        };
        let args = argv.join(" ");
        let allowed = self.config.allow.iter().any(|rule| {
            name_matches(&rule.parent, server.comm)
                && name_matches(&rule.child, &culprit.comm)
                && rule.argv.as_ref().is_none_or(|re| re.is_match(&args))
        });
        if allowed {
            return None;
        }
        let mut chain: Vec<&str> = ancestors
            .iter()
            .take_while(|a| a.pid != server.pid)
            .map(|a| a.comm)
            .collect();
        chain.reverse();
        let path = if chain.is_empty() {
            format!("{} → {}", server.comm, culprit.comm)
        } else {
            format!("{} → {} → {}", server.comm, chain.join(" → "), culprit.comm)
        };
        let how = if server.listening {
            "accepts connections"
        } else {
            "server daemon"
        };
        Some(Finding {
            domain: None,
            anomaly: Anomaly::Lineage,
            culprit: culprit.clone(),
            target: None,
            country: None,
            detail: format!(
                "{what} below a web server: {path} (web server pid {}, {how}): {args}",
                server.pid
            ),
            subject: server.pid,
        })
    }
}

/// Whether a `chmod` argument is a mode that adds an execute bit: symbolic (`+x`, `u+rx`,
/// `a=rwx`) or numeric (`755`, `0700`).
fn makes_executable(arg: &str) -> bool {
    if !arg.is_empty() && arg.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return u32::from_str_radix(arg, 8).is_ok_and(|m| m & 0o111 != 0);
    }
    let mode = |c: &str| {
        !c.is_empty() && c.chars().all(|ch| "ugoa+-=rwxXst".contains(ch)) && !c.starts_with('-')
    };
    arg.split(',').all(mode)
        && arg
            .split(',')
            .any(|c| c.contains(['+', '=']) && c.contains('x'))
}

#[cfg(test)]
mod tests;
