//! `sentinel reload` and SIGHUP: the running agent re-reads its country database and config
//! without a restart. A test host's address is seen with the country the database says; the
//! database file is replaced (as sentinel-geoip.timer does: a new file renamed over it) and,
//! after `sentinel reload`, then after SIGHUP, the same agent (same pid) gives the next
//! connect the new country. A database that does not open is refused by name and the agent
//! keeps the one it had; a changed key that cannot change at run time is named in the error.

mod common;

use std::{fs, path::Path};

use common::{
    Agent, TEST_COUNTRIES, mmdb,
    netns::{DE4, TestNet, knock},
    require_root, serial,
};

/// Replace the database at `path` the way an updater does: a new file renamed over it.
fn swap_db(path: &Path, de_range_country: &str) {
    let entries: Vec<(&str, &str)> = TEST_COUNTRIES
        .iter()
        .map(|&(range, country)| {
            if range == "198.51.100.128/26" {
                (range, de_range_country)
            } else {
                (range, country)
            }
        })
        .collect();
    let tmp = path.with_extension("new");
    mmdb::write_country_db(&tmp, mmdb::Layout::Flat, &entries).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Knock on the DE test host from this process on `port`; the country the agent gave it.
fn country_of_knock(agent: &Agent, port: u16) -> String {
    knock(DE4, port);
    let me = std::process::id();
    let ev = agent.wait_for("connect", &format!("to {DE4}:{port}"), |e| {
        e["pid"] == me && e["dport"] == port && e["daddr"] == DE4
    });
    ev["country"].as_str().unwrap_or("(none)").to_string()
}

#[test]
fn reload_and_sighup_swap_the_country_database_in_the_running_agent() {
    if !require_root("reload_and_sighup_swap_the_country_database_in_the_running_agent") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("rl");
    let agent = Agent::start("");
    let pid = agent.pid();
    let db = agent.dir.path().join("country.mmdb");
    assert_eq!(country_of_knock(&agent, 9401), "DE");

    // `sentinel reload`: the new database is in use at once.
    swap_db(&db, "FR");
    let out = agent.cli(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("country.mmdb"), "{said}");
    assert_eq!(country_of_knock(&agent, 9402), "FR");

    // SIGHUP (what `kill -HUP` and a reload without the CLI do): the same.
    swap_db(&db, "NL");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut port = 9403;
    while country_of_knock(&agent, port) != "NL" {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload the database\n{}",
            agent.log()
        );
        port += 1;
    }

    // A broken database: refused by name, the agent keeps the one it had.
    fs::write(&db, b"not a MaxMind DB at all").unwrap();
    let out = agent.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken database was accepted");
    assert!(err.contains("not a valid MaxMind DB"), "{err}");
    assert_eq!(country_of_knock(&agent, 9431), "NL");

    // A key that cannot change at run time: named, the rest applied.
    swap_db(&db, "SE");
    let config = fs::read_to_string(&agent.config).unwrap();
    assert!(config.contains("cpu_interval = \"1s\""), "{config}");
    fs::write(
        &agent.config,
        config.replace("cpu_interval = \"1s\"", "cpu_interval = \"2s\""),
    )
    .unwrap();
    let out = agent.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a restart-only change was accepted");
    assert!(
        err.contains("cannot change at run time") && err.contains("agent.cpu_interval"),
        "{err}"
    );
    assert_eq!(country_of_knock(&agent, 9432), "SE");
    assert_eq!(agent.pid(), pid, "the agent restarted");
    assert!(agent.status()["pid"] == pid, "the agent stopped answering");
}
