//! `persistence`: a write to a place a Linux server runs things from — cron and `at` spools,
//! systemd units and timers, `authorized_keys`, `/etc/ld.so.preload`, shell start-up files,
//! sudoers, `/etc/rc.local`, the account files, PAM, kernel module lists — judged by *who*
//! wrote it, not by what the line says: after a web exploit the attacker's persistence rarely
//! looks suspicious. The file watcher (`sensors/persistence.rs`, fanotify) reports each write
//! with the writer's pid; the event loop attributes it with the process tree
//! (`daemon/persistence.rs`) and asks [`judge`]:
//!
//! - **critical**, with a decision on the tree's destinations, when the writer descends from a
//!   web server or runs as a service user (a uid below 1000 other than root, `nobody`, or a
//!   name in `persistence.service_users`);
//! - nothing when a package manager (recognised by its installed, root-owned executable:
//!   [`super::package_manager`]) or its scripts wrote it, when an admin tool
//!   (`persistence.admin_tools`: `crontab`, `visudo`, `useradd`, …, installed system files)
//!   did, when configuration management (`persistence.config_management`) run by root did,
//!   or when a login user (uid ≥ 1000) wrote in their own home;
//! - **high** otherwise (a root shell appending to `/etc/cron.d/x`).
//!
//! The MITRE technique is the location's ([`Location::mitre`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Anomaly, Culprit, Finding};
use crate::config::name_matches;

/// Where persistence lives, each with its ATT&CK technique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    Cron,
    At,
    SystemdUnit,
    SystemdTimer,
    SshKeys,
    Preload,
    ShellStartup,
    Sudoers,
    RcLocal,
    Accounts,
    Pam,
    KernelModules,
}

impl Location {
    pub fn name(self) -> &'static str {
        match self {
            Location::Cron => "cron",
            Location::At => "at",
            Location::SystemdUnit => "systemd unit",
            Location::SystemdTimer => "systemd timer",
            Location::SshKeys => "authorized_keys",
            Location::Preload => "dynamic linker",
            Location::ShellStartup => "shell start-up file",
            Location::Sudoers => "sudoers",
            Location::RcLocal => "rc.local",
            Location::Accounts => "account database",
            Location::Pam => "PAM",
            Location::KernelModules => "kernel modules",
        }
    }

    /// (technique, tactic, name).
    pub fn mitre(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Location::Cron => ("T1053.003", "Persistence", "Scheduled Task/Job: Cron"),
            Location::At => ("T1053.002", "Persistence", "Scheduled Task/Job: At"),
            Location::SystemdUnit => (
                "T1543.002",
                "Persistence",
                "Create or Modify System Process: Systemd Service",
            ),
            Location::SystemdTimer => (
                "T1053.006",
                "Persistence",
                "Scheduled Task/Job: Systemd Timers",
            ),
            Location::SshKeys => (
                "T1098.004",
                "Persistence",
                "Account Manipulation: SSH Authorized Keys",
            ),
            Location::Preload => (
                "T1574.006",
                "Persistence",
                "Hijack Execution Flow: Dynamic Linker Hijacking",
            ),
            Location::ShellStartup => (
                "T1546.004",
                "Persistence",
                "Event Triggered Execution: Unix Shell Configuration Modification",
            ),
            Location::Sudoers => (
                "T1548.003",
                "Privilege Escalation",
                "Abuse Elevation Control Mechanism: Sudo and Sudo Caching",
            ),
            Location::RcLocal => (
                "T1037.004",
                "Persistence",
                "Boot or Logon Initialization Scripts: RC Scripts",
            ),
            Location::Accounts => ("T1136.001", "Persistence", "Create Account: Local Account"),
            Location::Pam => (
                "T1556.003",
                "Persistence",
                "Modify Authentication Process: Pluggable Authentication Modules",
            ),
            Location::KernelModules => (
                "T1547.006",
                "Persistence",
                "Boot or Logon Autostart Execution: Kernel Modules and Extensions",
            ),
        }
    }

    /// The location of `name` written in a directory watched for `self`: in a systemd
    /// directory a `.timer` is a timer.
    pub fn of_name(self, name: &str) -> Location {
        match self {
            Location::SystemdUnit if name.ends_with(".timer") => Location::SystemdTimer,
            other => other,
        }
    }
}

/// `[persistence]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceConfig {
    /// Watch the persistence locations at all.
    pub enabled: bool,
    /// Accounts that are services whatever their uid (a uid below 1000 other than root
    /// always is one).
    pub service_users: Vec<String>,
    /// Programs an admin changes these files with; installed system files only.
    pub admin_tools: Vec<String>,
    /// Configuration management: a write below one, run by root, is the admin's.
    pub config_management: Vec<String>,
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            service_users: names(&[
                "www-data", "nobody", "nginx", "apache", "http", "httpd", "nogroup",
            ]),
            admin_tools: names(&[
                "crontab",
                "visudo",
                "passwd",
                "chpasswd",
                "chsh",
                "chfn",
                "vipw",
                "vigr",
                "useradd",
                "usermod",
                "userdel",
                "groupadd",
                "groupmod",
                "groupdel",
                "gpasswd",
                "newusers",
                "adduser",
                "deluser",
                "addgroup",
                "delgroup",
                "pam-auth-update",
                "systemctl",
                "systemd",
                "at",
                "batch",
                "atd",
                "cron",
            ]),
            config_management: names(&[
                "ansible-playbook",
                "ansible",
                "puppet",
                "chef-client",
                "salt-call",
                "salt-minion",
                "cf-agent",
            ]),
        }
    }
}

/// A write to a watched location, as the file watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The writer (its thread group), as the kernel reported it.
    pub pid: u32,
    pub path: PathBuf,
    pub location: Location,
    /// What happened: "written", "moved in", "created".
    pub how: &'static str,
    /// When the watcher read it, on the kernel records' clock (CLOCK_BOOTTIME, ns): once a
    /// record younger than this is handled, the writer's own records are in the tree.
    pub seen_ns: u64,
}

/// What the tree says about the writer, beside its [`Culprit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writer {
    /// The web server it descends from (or is), by pid.
    pub server: Option<(u32, String)>,
    /// The package manager it or an ancestor runs.
    pub package_manager: Option<String>,
    /// Its executable is an installed system file (for the admin tools).
    pub installed: bool,
    /// The user name of its uid.
    pub user: Option<String>,
    /// That user's home directory.
    pub home: Option<PathBuf>,
}

/// Who wrote: the verdict's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to raise, and why (for the debug log).
    Benign(&'static str),
    High(String),
    Critical(String),
}

impl PersistenceConfig {
    /// Whether `uid` (named `user`) is a service account.
    pub fn is_service_user(&self, uid: u32, user: Option<&str>) -> bool {
        if uid == 0 || uid == u32::MAX {
            return false;
        }
        uid < 1000
            || uid == 65534
            || user.is_some_and(|u| self.service_users.iter().any(|s| s == u))
    }

    /// Judge who wrote `write`.
    pub fn judge(&self, write: &Write, culprit: &Culprit, writer: &Writer) -> Verdict {
        if let Some((pid, comm)) = &writer.server {
            return Verdict::Critical(format!("below the web server {comm} ({pid})"));
        }
        if self.is_service_user(culprit.uid, writer.user.as_deref()) {
            let name = writer.user.as_deref().unwrap_or("?");
            return Verdict::Critical(format!("by the service user {name} (uid {})", culprit.uid));
        }
        if writer.package_manager.is_some() {
            return Verdict::Benign("a package manager");
        }
        if writer.installed && listed(&self.admin_tools, &culprit.comm) {
            return Verdict::Benign("an admin tool");
        }
        if culprit.uid == 0
            && std::iter::once(culprit.comm.as_str())
                .chain(culprit.ancestry.iter().map(|(_, c)| &**c))
                .any(|c| listed(&self.config_management, c))
        {
            return Verdict::Benign("configuration management run by root");
        }
        if culprit.uid >= 1000
            && culprit.uid != u32::MAX
            && writer
                .home
                .as_deref()
                .is_some_and(|h| h != Path::new("/") && write.path.starts_with(h))
        {
            return Verdict::Benign("a login user in their own home");
        }
        Verdict::High(match culprit.uid {
            0 => "by root (uid 0)".into(),
            u32::MAX => "by a writer the agent did not see start".into(),
            uid => format!("by a login user (uid {uid})"),
        })
    }
}

/// Whether `comm` is one of `names` (a name longer than a kernel comm, 15 bytes, compared as
/// the kernel cuts it: `ansible-playbook` runs as `ansible-playboo`).
fn listed(names: &[String], comm: &str) -> bool {
    names.iter().any(|n| {
        let cut = n
            .char_indices()
            .nth(15)
            .map_or(n.as_str(), |(i, _)| &n[..i]);
        name_matches(cut, comm)
    })
}

/// The alert for a write judged high or critical.
pub fn finding(write: &Write, culprit: Culprit, verdict: &Verdict) -> Option<Finding> {
    let (critical, why) = match verdict {
        Verdict::Benign(_) => return None,
        Verdict::High(why) => (false, why),
        Verdict::Critical(why) => (true, why),
    };
    let path = crate::untrusted::escaped(write.path.display().to_string());
    let exe = culprit.exe.as_deref().unwrap_or(&culprit.comm);
    let detail = format!(
        "{} {path} {} by {} ({}, pid {}) {why}",
        write.location.name(),
        write.how,
        crate::untrusted::escape(&culprit.comm),
        crate::untrusted::escape(exe),
        culprit.pid,
    );
    Some(Finding {
        anomaly: Anomaly::Persistence {
            critical,
            location: write.location,
        },
        subject: culprit.pid,
        culprit,
        target: None,
        country: None,
        domain: None,
        detail,
    })
}

#[cfg(test)]
mod tests;
