//! Value checks: what a config may not say even when it parses (ranges, names, keys that
//! need each other). Each problem names its key.

use std::time::Duration;

use super::{Config, KILLABLE, Problem};

/// `http://…` or `https://…` with a host.
fn is_http_url(text: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        text.strip_prefix(scheme).is_some_and(|rest| {
            !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace)
        })
    })
}

/// Whether `comm` is `name` or `name` followed by a version (`python3.11`, `php-fpm8.2`).
pub fn name_matches(name: &str, comm: &str) -> bool {
    comm.strip_prefix(name)
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Kernel comms are at most 15 bytes: a longer name can never match.
const COMM_MAX: usize = 15;

/// A file name (NAME_MAX).
const FILE_NAME_MAX: usize = 255;

impl Config {
    /// Everything wrong with the values, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, reason: String| out.push(Problem::new(key, reason));
        let a = &self.agent;
        if a.db.as_os_str().is_empty() {
            bad("agent.db", "must not be empty".into());
        }
        if a.socket.as_os_str().is_empty() {
            bad("agent.socket", "must not be empty".into());
        } else if a.socket.as_os_str().len() > 107 {
            bad(
                "agent.socket",
                "longer than a unix socket path may be (107 bytes)".into(),
            );
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&a.log_level.as_str()) {
            bad(
                "agent.log_level",
                format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    a.log_level
                ),
            );
        }
        let kib = a.ring_buffer_kib;
        if !kib.is_power_of_two() || !(4..=1024 * 1024).contains(&kib) {
            bad(
                "agent.ring_buffer_kib",
                format!("{kib} is not a power of two between 4 and 1048576"),
            );
        }
        if !(1..=1000).contains(&a.cpu_sample_hz) {
            bad(
                "agent.cpu_sample_hz",
                format!("{} is not between 1 and 1000", a.cpu_sample_hz),
            );
        }
        if a.cpu_interval < Duration::from_millis(100) || a.cpu_interval > Duration::from_secs(3600)
        {
            bad(
                "agent.cpu_interval",
                format!(
                    "{} is not between 100ms and 1h",
                    humantime::format_duration(a.cpu_interval)
                ),
            );
        }
        if !(0.0..=100_000.0).contains(&a.cpu_report_percent) {
            bad(
                "agent.cpu_report_percent",
                format!("{} is not between 0 and 100000", a.cpu_report_percent),
            );
        }
        let g = &self.geo;
        if g.enabled && g.database.as_os_str().is_empty() {
            bad(
                "geo.database",
                "must not be empty while geo is enabled (set geo.enabled = false to turn geo off)"
                    .into(),
            );
        }
        let is_url = |s: &str| s.starts_with("https://") || s.starts_with("http://");
        if !g.update_source.is_empty() && !is_url(&g.update_source) {
            bad(
                "geo.update_source",
                format!(
                    "{:?} is not an http(s) URL (empty: no updates)",
                    g.update_source
                ),
            );
        }
        for code in &g.high_risk_countries {
            if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                bad(
                    "geo.high_risk_countries",
                    format!(
                        "{code:?} is not an ISO 3166-1 alpha-2 code (two capital letters, e.g. \"RU\")"
                    ),
                );
            }
        }
        if self.trust.ssh_peers && self.trust.ssh_ports.is_empty() {
            bad(
                "trust.ssh_ports",
                "must list at least one port while trust.ssh_peers is on".into(),
            );
        }
        if self.trust.ssh_ports.contains(&0) {
            bad("trust.ssh_ports", "0 is not a port".into());
        }
        if self.trust.ssh_peers && self.trust.ssh_users.is_empty() {
            bad(
                "trust.ssh_users",
                "must name at least one user or %group while trust.ssh_peers is on".into(),
            );
        }
        for user in &self.trust.ssh_users {
            let name = user.strip_prefix('%').unwrap_or(user);
            if name.is_empty() || name.contains(|c: char| c == ':' || c.is_whitespace()) {
                bad(
                    "trust.ssh_users",
                    format!("{user:?} is not a user name or %group"),
                );
            }
        }
        let l = &self.lineage;
        for (key, names) in [
            ("lineage.web_servers", &l.web_servers),
            ("lineage.interpreters", &l.interpreters),
            ("lineage.shell_services", &l.shell_services),
            ("lineage.shells", &l.shells),
        ] {
            for name in names {
                if name.is_empty() || name.len() > COMM_MAX || name.contains('/') {
                    bad(
                        key,
                        format!("{name:?} is not a process name (1 to {COMM_MAX} bytes, no '/')"),
                    );
                }
            }
        }
        // Package managers are matched on file names (the program or script), not on comm.
        for name in &l.package_managers {
            if name.is_empty() || name.len() > FILE_NAME_MAX || name.contains('/') {
                bad(
                    "lineage.package_managers",
                    format!("{name:?} is not a file name (1 to {FILE_NAME_MAX} bytes, no '/')"),
                );
            }
        }
        for rule in &l.allow {
            let known = l
                .web_servers
                .iter()
                .chain(&l.interpreters)
                .any(|w| name_matches(w, &rule.parent));
            if !known && !l.any_listener {
                bad(
                    "lineage.allow.parent",
                    format!(
                        "{:?} is not one of lineage.web_servers or lineage.interpreters",
                        rule.parent
                    ),
                );
            }
            if !l
                .shells
                .iter()
                .chain(&l.tools)
                .any(|s| name_matches(s, &rule.child))
            {
                bad(
                    "lineage.allow.child",
                    format!(
                        "{:?} is not one of lineage.shells or lineage.tools",
                        rule.child
                    ),
                );
            }
        }
        let r = &self.resource;
        if !(1.0..=100_000.0).contains(&r.cpu_percent) {
            bad(
                "resource.cpu_percent",
                format!("{} is not between 1 and 100000", r.cpu_percent),
            );
        }
        if r.sustain < a.cpu_interval || r.sustain > Duration::from_secs(86_400) {
            bad(
                "resource.sustain",
                format!(
                    "{} is not between agent.cpu_interval ({}) and 24h",
                    humantime::format_duration(r.sustain),
                    humantime::format_duration(a.cpu_interval)
                ),
            );
        }
        if !(1.0..=100.0).contains(&r.baseline_deviation) {
            bad(
                "resource.baseline_deviation",
                format!(
                    "{} is not between 1 and 100 (percentage points)",
                    r.baseline_deviation
                ),
            );
        }
        for (key, reason) in self
            .cron
            .problems()
            .into_iter()
            .chain(self.npm.problems())
            .chain(self.miner.problems(a.cpu_interval))
            .chain(self.respawn.problems())
            .chain(self.node_abuse.problems(a.cpu_interval))
        {
            bad(key, reason);
        }
        if self.alerts.dedup_window > Duration::from_secs(7 * 86_400) {
            bad(
                "alerts.dedup_window",
                format!(
                    "{} is longer than 7d",
                    humantime::format_duration(self.alerts.dedup_window)
                ),
            );
        }
        let sw = &self.switch;
        if sw.countdown < Duration::from_secs(1) || sw.countdown > Duration::from_secs(86_400) {
            bad(
                "switch.countdown",
                format!(
                    "{} is not between 1s and 24h",
                    humantime::format_duration(sw.countdown)
                ),
            );
        }
        if sw.safe_ttl > Duration::from_secs(365 * 86_400) {
            bad("switch.safe_ttl", "is longer than a year".into());
        }
        if !(1..=65_536).contains(&sw.max_targets) {
            bad(
                "switch.max_targets",
                format!("{} is not between 1 and 65536", sw.max_targets),
            );
        }
        if !(1..=100_000).contains(&sw.max_pending) {
            bad(
                "switch.max_pending",
                format!("{} is not between 1 and 100000", sw.max_pending),
            );
        }
        if !(1..=100_000).contains(&sw.max_auto_blocks) {
            bad(
                "switch.max_auto_blocks",
                format!("{} is not between 1 and 100000", sw.max_auto_blocks),
            );
        }
        let e = &self.enforce;
        if e.table.is_empty()
            || e.table.len() > 32
            || !e
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || !e.table.as_bytes()[0].is_ascii_alphabetic()
        {
            bad(
                "enforce.table",
                format!(
                    "{:?} is not a table name (a letter, then letters, digits, '_' or '-'; at most 32)",
                    e.table
                ),
            );
        }
        if e.block_ttl < Duration::from_secs(1) || e.block_ttl > Duration::from_secs(365 * 86_400) {
            bad(
                "enforce.block_ttl",
                format!(
                    "{} is not between 1s and 365d",
                    humantime::format_duration(e.block_ttl)
                ),
            );
        }
        if e.kill_grace > Duration::from_secs(60) {
            bad("enforce.kill_grace", "is longer than 60s".into());
        }
        for a in &e.kill_on {
            if !KILLABLE.contains(&a.as_str()) {
                bad(
                    "enforce.kill_on",
                    format!("{a:?} is not one of {}", KILLABLE.join(", ")),
                );
            }
        }
        for p in &e.protect {
            let path = p.starts_with('/') && !p.split('/').any(|c| c == "..");
            if p.is_empty() || (p.contains('/') && !path) {
                bad(
                    "enforce.protect",
                    format!("{p:?} is neither an executable name nor an absolute path"),
                );
            }
        }
        let o = &self.override_;
        if o.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "override.listen",
                format!("{:?} is not an address:port", o.listen),
            );
        }
        if !o.public_url.is_empty() && !is_http_url(&o.public_url) {
            bad(
                "override.public_url",
                format!("{:?} is not an http(s) URL", o.public_url),
            );
        }
        let n = &self.notify;
        if n.timeout < Duration::from_millis(100) || n.timeout > Duration::from_secs(120) {
            bad("notify.timeout", "is not between 100ms and 2m".into());
        }
        if !(1..=20).contains(&n.attempts) {
            bad(
                "notify.attempts",
                format!("{} is not between 1 and 20", n.attempts),
            );
        }
        for (key, url) in [
            ("notify.slack.webhook_url", &n.slack.webhook_url),
            ("notify.teams.webhook_url", &n.teams.webhook_url),
        ] {
            if !url.is_empty() && !is_http_url(url) {
                bad(key, "is not an http(s) URL".into());
            }
        }
        if !n.slack.webhook_url.is_empty() && n.slack.signing_secret.is_empty() {
            bad(
                "notify.slack.signing_secret",
                "is needed with notify.slack.webhook_url (button clicks are verified with it)"
                    .into(),
            );
        }
        if !n.telegram.bot_token.is_empty() {
            if !is_http_url(&n.telegram.api_base) {
                bad("notify.telegram.api_base", "is not an http(s) URL".into());
            }
            if n.telegram.chat_id.is_empty() {
                bad(
                    "notify.telegram.chat_id",
                    "is needed with notify.telegram.bot_token".into(),
                );
            }
        }
        if (!n.teams.webhook_url.is_empty() || !n.slack.webhook_url.is_empty())
            && o.public_url.is_empty()
        {
            bad(
                "override.public_url",
                "is needed for Teams and Slack buttons (how chat users reach this agent)".into(),
            );
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "metrics.listen",
                format!("{:?} is not an address:port", self.metrics.listen),
            );
        }
        if !(16..=1024 * 1024).contains(&a.max_db_mb) {
            bad(
                "agent.max_db_mb",
                format!("{} is not between 16 and 1048576 (MiB)", a.max_db_mb),
            );
        }
        if a.retention < Duration::from_secs(3600) {
            bad(
                "agent.retention",
                format!(
                    "{} is shorter than 1h",
                    humantime::format_duration(a.retention)
                ),
            );
        }
        out.extend(self.fleet.problems());
        out
    }
}
