//! Parsing and validation of the config, shipped file included.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.agent.db, PathBuf::from("/var/lib/sentinel/sentinel.db"));
    assert_eq!(c.agent.cpu_interval, Duration::from_secs(2));
    assert_eq!(c.agent.ring_buffer_kib, 256);
}

#[test]
fn shipped_config_is_valid_and_matches_defaults() {
    let text = include_str!("../../../config/sentinel.toml");
    let c = parse(text).unwrap();
    let d = AgentConfig::default();
    assert_eq!(c.agent.db, d.db);
    assert_eq!(c.agent.socket, d.socket);
    assert_eq!(c.agent.ring_buffer_kib, d.ring_buffer_kib);
    assert_eq!(c.agent.cpu_interval, d.cpu_interval);
    assert_eq!(c.agent.retention, d.retention);
    assert_eq!(c.agent.max_db_mb, d.max_db_mb);
    let (g, dg) = (&c.geo, GeoConfig::default());
    assert_eq!(
        (g.enabled, &g.database, &g.high_risk_countries),
        (dg.enabled, &dg.database, &dg.high_risk_countries)
    );
    let (t, dt) = (&c.trust, TrustConfig::default());
    assert_eq!(
        (&t.ips, t.ssh_peers, &t.ssh_ports, &t.ssh_users),
        (&dt.ips, dt.ssh_peers, &dt.ssh_ports, &dt.ssh_users)
    );
    let (l, dl) = (&c.lineage, LineageConfig::default());
    assert_eq!((&l.web_servers, &l.shells), (&dl.web_servers, &dl.shells));
    assert_eq!(
        (
            &l.interpreters,
            l.any_listener,
            &l.package_managers,
            &l.shell_services
        ),
        (
            &dl.interpreters,
            dl.any_listener,
            &dl.package_managers,
            &dl.shell_services
        )
    );
    assert!(l.allow.is_empty());
    let (r, dr) = (&c.resource, ResourceConfig::default());
    assert_eq!(
        (r.cpu_percent, r.sustain, r.baseline_deviation),
        (dr.cpu_percent, dr.sustain, dr.baseline_deviation)
    );
    assert_eq!(c.alerts.dedup_window, AlertsConfig::default().dedup_window);
    use crate::detect::{cron, miner, node_abuse, respawn};
    assert_eq!(c.cron.paths, cron::CronConfig::default().paths);
    assert!(c.npm.blocklist.is_empty());
    let (m, dm) = (&c.miner, miner::MinerConfig::default());
    assert_eq!(
        (&m.ports, m.cpu_percent, m.sustain),
        (&dm.ports, dm.cpu_percent, dm.sustain)
    );
    let (r, dr) = (&c.respawn, respawn::RespawnConfig::default());
    assert_eq!((r.window, r.max_spawns), (dr.window, dr.max_spawns));
    let (n, dn) = (&c.node_abuse, node_abuse::NodeAbuseConfig::default());
    assert_eq!((n.cpu_percent, n.sustain), (dn.cpu_percent, dn.sustain));
    let (sw, dsw) = (&c.switch, SwitchConfig::default());
    assert_eq!(
        (sw.countdown, sw.safe_ttl, sw.max_targets, sw.max_pending),
        (
            dsw.countdown,
            dsw.safe_ttl,
            dsw.max_targets,
            dsw.max_pending
        )
    );
    let (e, de) = (&c.enforce, EnforceConfig::default());
    assert_eq!(
        (
            e.mode,
            &e.table,
            e.block_ttl,
            e.kill,
            e.kill_grace,
            &e.kill_on,
            &e.protect,
            e.connect_guard,
            e.block_private
        ),
        (
            de.mode,
            &de.table,
            de.block_ttl,
            de.kill,
            de.kill_grace,
            &de.kill_on,
            &de.protect,
            de.connect_guard,
            de.block_private
        )
    );
    let (o, d) = (&c.override_, OverrideConfig::default());
    assert_eq!(
        (&o.listen, &o.public_url, &o.secret_file),
        (&d.listen, &d.public_url, &d.secret_file)
    );
    let (n, d) = (&c.notify, NotifyConfig::default());
    assert_eq!((n.timeout, n.attempts), (d.timeout, d.attempts));
    assert_eq!(n.telegram.api_base, d.telegram.api_base);
    assert!(n.slack.webhook_url.is_empty() && n.teams.webhook_url.is_empty());
    assert!(n.telegram.bot_token.is_empty() && c.metrics.listen.is_empty());
}

#[test]
fn behaviour_detector_sections_name_their_keys() {
    let err = parse(
        "[cron]\npaths = [\"etc/crontab\"]\n[npm]\nblocklist = [\"bad name\"]\n\
         [miner]\nports = [0]\ncpu_percent = 0\nsustain = \"1ms\"\n\
         [respawn]\nwindow = \"0s\"\nmax_spawns = 1\n\
         [node_abuse]\ncpu_percent = 0\nsustain = \"100d\"\n",
    )
    .unwrap_err()
    .to_string();
    for key in [
        "cron.paths:",
        "npm.blocklist:",
        "miner.ports:",
        "miner.cpu_percent:",
        "miner.sustain:",
        "respawn.window:",
        "respawn.max_spawns:",
        "node_abuse.cpu_percent:",
        "node_abuse.sustain:",
    ] {
        assert!(err.contains(key), "{key} missing from {err}");
    }
    let err = parse("[miner]\nbogus = 1\n").unwrap_err().to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let err = parse("[agent]\nbogus_key = 1\n").unwrap_err().to_string();
    assert!(err.contains("bogus_key"), "{err}");
    let err = parse("[nonsense]\n").unwrap_err().to_string();
    assert!(err.contains("nonsense"), "{err}");
}

#[test]
fn bad_duration_is_named() {
    let err = parse("[agent]\ncpu_interval = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cpu_interval") && err.contains("soon"),
        "{err}"
    );
}

#[test]
fn bad_values_each_name_their_key() {
    let err = parse("[agent]\nring_buffer_kib = 5\ncpu_sample_hz = 0\nlog_level = \"loud\"\n")
        .unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "agent.log_level",
            "agent.ring_buffer_kib",
            "agent.cpu_sample_hz"
        ]
    );
}

#[test]
fn max_db_mb_is_validated() {
    assert_eq!(
        parse("[agent]\nmax_db_mb = 64\n").unwrap().agent.max_db_mb,
        64
    );
    for bad in ["0", "15", "1048577"] {
        let err = parse(&format!("[agent]\nmax_db_mb = {bad}\n")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("agent.max_db_mb") && text.contains(bad),
            "{text}"
        );
    }
    let err = parse("[agent]\nmax_db_mb = \"1G\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_db_mb"), "{err}");
}

#[test]
fn detector_sections_validate_each_key() {
    let err = parse(
        "[geo]\nhigh_risk_countries = [\"RU\", \"russia\", \"cn\"]\n\
         [lineage]\nweb_servers = [\"a-name-longer-than-fifteen\"]\n\
         interpreters = [\"\"]\npackage_managers = [\"bin/npm\"]\n\
         [resource]\ncpu_percent = 0\nbaseline_deviation = 500\nsustain = \"100ms\"\n",
    )
    .unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "geo.high_risk_countries",
            "geo.high_risk_countries",
            "lineage.web_servers",
            "lineage.interpreters",
            "lineage.package_managers",
            "resource.cpu_percent",
            "resource.sustain",
            "resource.baseline_deviation",
        ]
    );
    assert!(problems[0].reason.contains("russia"));
}

#[test]
fn trust_ips_parse_addresses_and_cidrs() {
    let c = parse("[trust]\nips = [\"203.0.113.7\", \"198.51.100.9/24\", \"2001:db8::/32\"]\n")
        .unwrap();
    let ips: Vec<String> = c.trust.ips.iter().map(|n| n.to_string()).collect();
    assert_eq!(ips, ["203.0.113.7/32", "198.51.100.0/24", "2001:db8::/32"]);
    let err = parse("[trust]\nips = [\"10.0.0.0/33\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ips") && err.contains("10.0.0.0/33"), "{err}");
}

#[test]
fn trust_ssh_users_are_names_or_groups() {
    let c = parse("").unwrap();
    assert_eq!(c.trust.ssh_users, ["root", "%sudo", "%admin", "%wheel"]);
    let c = parse("[trust]\nssh_users = [\"alice\", \"%ops\"]\n").unwrap();
    assert_eq!(c.trust.ssh_users, ["alice", "%ops"]);
    for bad in ["[]", "[\"%\"]", "[\"\"]", "[\"a b\"]", "[\"root:x\"]"] {
        let err = parse(&format!("[trust]\nssh_users = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("trust.ssh_users"), "{bad}: {err}");
    }
    // With SSH trust off, nobody needs naming.
    assert!(parse("[trust]\nssh_peers = false\nssh_users = []\n").is_ok());
}

#[test]
fn lineage_allow_rules_are_checked() {
    let c = parse(
        "[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\nargv = \"^sh -c git (pull|fetch)\"\n",
    )
    .unwrap();
    let argv = c.lineage.allow[0].argv.as_ref().unwrap();
    assert!(argv.is_match("sh -c git pull"));
    // Anchored: the pattern covers the whole argument string.
    assert!(!argv.is_match("sh -c git pull; curl http://x | sh"));
    assert!(!argv.is_match("x; sh -c git pull"));
    let err = parse("[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\nargv = \"(\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("argv") && err.contains("regular expression"),
        "{err}"
    );
    // Any listening program can be a web server: any parent name goes, unless that is off.
    assert!(parse("[[lineage.allow]]\nparent = \"app\"\nchild = \"sh\"\n").is_ok());
    let err = parse(
        "[lineage]\nany_listener = false\n[[lineage.allow]]\nparent = \"vim\"\nchild = \"sh\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("lineage.allow.parent"), "{err}");
    let err = parse("[[lineage.allow]]\nparent = \"node\"\nkid = \"sh\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("kid"), "{err}");
}

#[test]
fn versioned_binaries_match_their_name() {
    assert!(name_matches("python3", "python3"));
    assert!(name_matches("python3", "python3.11"));
    assert!(name_matches("php-fpm", "php-fpm8.2"));
    assert!(!name_matches("sh", "sshd"));
    assert!(!name_matches("node", "nodejs-helper"));
    assert!(!name_matches("python3", "python"));
}

#[test]
fn switch_enforce_override_notify_are_checked() {
    let err = parse(
        "[switch]\ncountdown = \"0s\"\n[enforce]\nmode = \"dry-run\"\ntable = \"bad table\"\n\
         [override]\nlisten = \"nowhere\"\n[notify.slack]\nwebhook_url = \"ftp://x\"\n",
    )
    .unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "switch.countdown",
            "enforce.table",
            "override.listen",
            "notify.slack.webhook_url",
            "notify.slack.signing_secret",
            "override.public_url",
        ]
    );
    let err = parse("[enforce]\nmode = \"yolo\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("mode") && err.contains("yolo"), "{err}");
    let c = parse("[enforce]\nmode = \"dry-run\"\n").unwrap();
    assert_eq!(c.enforce.mode, EnforceMode::DryRun);
    assert!(parse("[enforce]\nprotect = [\"node\", \"/opt/app/bin/worker\"]\n").is_ok());
    let c = parse("[enforce]\nkill_on = [\"resource\"]\n").unwrap();
    assert_eq!(c.enforce.kill_on, ["resource"]);
    let err = parse("[enforce]\nkill_on = [\"geo\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("enforce.kill_on") && err.contains("geo"),
        "{err}"
    );
    for bad in ["", "bin/node", "/opt/../tmp/x"] {
        let err = parse(&format!("[enforce]\nprotect = [{bad:?}]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("enforce.protect"), "{bad}: {err}");
    }
}

#[test]
fn wrong_type_is_an_error() {
    assert!(parse("[agent]\nring_buffer_kib = \"big\"\n").is_err());
}

#[test]
fn missing_optional_file_gives_defaults_but_explicit_one_errors() {
    let missing = Path::new("/nonexistent/sentinel.toml");
    assert!(Config::load(missing, true).is_ok());
    let err = Config::load(missing, false).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/sentinel.toml"), "{err}");
}

/// `docs/configuration.md`, generated from the shipped config: each key with its default and
/// the comment above it; comments not followed by a key are kept as a block.
fn reference(shipped: &str) -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from [`config/sentinel.toml`](../config/sentinel.toml) (the shipped file, \
         every key at its default) and checked against it by the test \
         `config::tests::configuration_reference_matches_the_shipped_config`; regenerate with \
         `SENTINEL_BLESS=1 cargo test --bin sentinel configuration_reference`.\n\n\
         `sentinel check-config --config FILE` reports every problem of a file at once, as \
         `section.key: reason (line L, column C)`.\n",
    );
    let mut comments: Vec<&str> = Vec::new();
    let mut section = String::new();
    let flush = |out: &mut String, comments: &mut Vec<&str>, in_section: bool| {
        if comments.is_empty() {
            return;
        }
        if in_section {
            out.push_str("\n```toml\n");
            for c in comments.iter() {
                out.push_str(&format!("# {c}\n"));
            }
            out.push_str("```\n");
        } else {
            out.push('\n');
            out.push_str(&comments.join(" "));
            out.push('\n');
        }
        comments.clear();
    };
    for line in shipped.lines().map(str::trim) {
        if let Some(comment) = line.strip_prefix('#') {
            comments.push(comment.trim());
        } else if line.is_empty() {
            if section.is_empty() {
                flush(&mut out, &mut comments, false);
            }
        } else if let Some(name) = line.strip_prefix('[') {
            flush(&mut out, &mut comments, !section.is_empty());
            section = name.trim_end_matches(']').to_string();
            out.push_str(&format!(
                "\n## `[{section}]`\n\n| key | default | meaning |\n|---|---|---|\n"
            ));
        } else if let Some((key, value)) = line.split_once('=') {
            let cell = |text: &str| text.replace('|', "\\|");
            out.push_str(&format!(
                "| `{section}.{}` | `{}` | {} |\n",
                key.trim(),
                cell(value.trim()),
                cell(&comments.join(" "))
            ));
            comments.clear();
        }
    }
    flush(&mut out, &mut comments, true);
    out
}

#[test]
fn configuration_reference_matches_the_shipped_config() {
    let shipped = include_str!("../../../config/sentinel.toml");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let want = reference(shipped);
    if std::env::var_os("SENTINEL_BLESS").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/configuration.md is not what config/sentinel.toml says: regenerate it with \
         SENTINEL_BLESS=1 cargo test --bin sentinel configuration_reference"
    );
}
