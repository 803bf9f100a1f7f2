//! End-to-end tests of the fleet store with a real PostgreSQL server (started by the test in
//! a temp dir, on its own port) and real agents on this kernel, each with its own `agent.id`,
//! db and socket: alerts and decisions from both hosts reach the store; `sentinel fleet
//! decide` reaches the right agent within 2 s and ends its decision (a late answer is refused,
//! and the fleet view says why); stopping PostgreSQL for 20 s while alerts happen loses and
//! duplicates nothing, and the switch auto-blocks on time meanwhile; a wrong password is a
//! clear error in `status`; a block a human confirmed on one host is enforced on another
//! that accepts unsigned shares, through its own guard, and ignored by one that does not; an
//! operator's signed block and lift reach every host that shares blocks; the fleet's pending,
//! alerts and blocks show the name a target was resolved from (a real resolver, `dnsmasq`),
//! and a shared block carries it to a host that never saw the answer (`fleet init` upgrading
//! a schema-4 store first).

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent,
    netns::{CN4, DE4, RU4, TestNet, knock},
    nft::Table,
    pg::{Operator, Postgres},
    require_root, serial,
};
use serde_json::Value;

/// Poll `f` until it gives Some, or panic after `secs` naming `what`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn password_file(dir: &std::path::Path, password: &str) -> PathBuf {
    let p = dir.join("pg.password");
    common::write_private(&p, &format!("{password}\n"));
    p
}

/// An agent named `id` shipping to `pg` under its own role, which the operator adds (dry-run
/// unless `sections` has `[enforce]`).
fn agent(pg: &Postgres, op: &Operator, id: &str, sections: &str, fleet_extra: &str) -> Agent {
    let (pw, _) = op.add_host(id);
    Agent::start_with(
        &format!("id = \"{id}\""),
        &format!(
            "{sections}\n{}",
            pg.fleet_section(id, &pw, &format!("{}\n{fleet_extra}", op.keys_line()))
        ),
    )
}

/// The store set up by the operator (`fleet init`), as every test starts.
fn operator(pg: &Postgres) -> Operator {
    let op = pg.operator(std::path::Path::new(common::BIN));
    op.init();
    op
}

/// `sentinel fleet ARGS --json` as the operator: one object per line; None while the command
/// fails.
fn try_fleet(op: &Operator, args: &[&str]) -> Option<Vec<Value>> {
    let mut all = vec!["fleet"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = op.cli(&all);
    if !out.status.success() {
        eprintln!(
            "{}: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

/// [`try_fleet`] that must succeed.
fn fleet(op: &Operator, args: &[&str]) -> Vec<Value> {
    try_fleet(op, args).unwrap_or_else(|| panic!("fleet {args:?} failed"))
}

fn mine(v: &Value) -> bool {
    v["pid"] == std::process::id()
}

fn host_id(tag: &str) -> String {
    format!("fleet-{tag}-{}", std::process::id())
}

/// The local decision events of `agent` for the test process, by id: latest state.
fn local_decisions(agent: &Agent) -> BTreeMap<String, String> {
    agent
        .events("decision")
        .into_iter()
        .filter(mine)
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn two_hosts_ship_and_a_fleet_answer_reaches_the_right_agent() {
    if !require_root("two_hosts_ship_and_a_fleet_answer_reaches_the_right_agent") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("fa");
    let pg = Postgres::start();
    let op = operator(&pg);
    let (ha, hb) = (host_id("a"), host_id("b"));
    let a = agent(&pg, &op, &ha, "[switch]\ncountdown = \"5m\"", "");
    let b = agent(
        &pg,
        &op,
        &hb,
        "[switch]\ncountdown = \"5m\"",
        "ship_events = true",
    );
    knock(RU4, 9201);

    // Both hosts' alerts and pending decisions reach the store.
    let alerts = eventually(15, "alerts of both hosts in the fleet store", || {
        let alerts: Vec<Value> = try_fleet(&op, &["alerts"])?
            .into_iter()
            .filter(mine)
            .collect();
        let hosts: HashSet<&str> = alerts.iter().filter_map(|x| x["host"].as_str()).collect();
        (hosts.contains(ha.as_str()) && hosts.contains(hb.as_str())).then_some(alerts)
    });
    for x in &alerts {
        assert_eq!(x["anomaly"], "geo", "{x}");
        assert_eq!(x["target_ip"], RU4, "{x}");
        assert_eq!(x["kind"], "alert", "{x}");
        for key in [
            "ts", "id", "severity", "risk", "mitre", "comm", "country", "state",
        ] {
            assert!(!x[key].is_null(), "{key} missing: {x}");
        }
    }
    let pending = eventually(15, "pending decisions of both hosts", || {
        let p: Vec<Value> = try_fleet(&op, &["pending"])?
            .into_iter()
            .filter(|p| p["host"] == ha.as_str() || p["host"] == hb.as_str())
            .collect();
        (p.len() == 2).then_some(p)
    });
    for p in &pending {
        assert_eq!(p["target_ip"], RU4, "{p}");
        assert_eq!(p["anomaly"], "geo", "{p}");
        assert!(humantime::parse_rfc3339(p["deadline"].as_str().unwrap()).is_ok());
        let left = p["seconds_left"].as_i64().unwrap();
        assert!((250..=300).contains(&left), "{p}");
    }
    // Raw events only from the host that ships them.
    let connects = format!(
        "SELECT host FROM fleet_events WHERE kind = 'connect' AND body->>'daddr' = '{RU4}' \
         AND body->>'pid' = '{}' AND host IN ('{ha}', '{hb}')",
        std::process::id()
    );
    let shipped = eventually(15, "B's connect event in fleet_events", || {
        let rows = pg.sql(&connects);
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(shipped, std::slice::from_ref(&hb));
    let hosts = fleet(&op, &["hosts"]);
    for h in [&ha, &hb] {
        let row = hosts.iter().find(|x| x["host"] == h.as_str()).unwrap();
        assert_eq!(row["silent"], false, "{row}");
        assert_eq!(row["pending"], 1, "{row}");
        assert_eq!(row["version"], env!("CARGO_PKG_VERSION"));
        assert!(humantime::parse_rfc3339(row["last_seen"].as_str().unwrap()).is_ok());
    }

    // `fleet decide A/ID safe`: A's agent applies it within 2 s; B's decision stays open.
    let id_a = pending.iter().find(|p| p["host"] == ha.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id_b = pending.iter().find(|p| p["host"] == hb.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let out = op.cli(&["fleet", "decide", &format!("{ha}/{id_a}"), "safe"]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("safe"));
    assert!(took < Duration::from_secs(2), "the answer took {took:?}");
    let d = a.wait_for("decision", "ended safe by the fleet", |d| {
        d["id"] == id_a.as_str() && d["state"] == "safe"
    });
    assert!(
        d["decided_by"].as_str().unwrap().starts_with("fleet:"),
        "{d}"
    );
    assert!(
        a.json_lines(&["pending", "--json"])
            .iter()
            .all(|p| p["id"] != id_a.as_str())
    );
    let open_b = b.json_lines(&["pending", "--json"]);
    assert!(
        open_b.iter().any(|p| p["id"] == id_b.as_str()),
        "{open_b:?}"
    );
    // The fleet view follows: A's decision is no longer pending, B's is.
    eventually(10, "A's decision leaves the fleet's pending list", || {
        let p = fleet(&op, &["pending"]);
        (!p.iter().any(|x| x["host"] == ha.as_str())
            && p.iter()
                .any(|x| x["host"] == hb.as_str() && x["id"] == id_b.as_str()))
        .then_some(())
    });

    // A late answer is refused, and the fleet view says why.
    let out = op.cli(&["fleet", "decide", &format!("{ha}/{id_a}"), "block"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already ended") && err.contains("safe"),
        "{err}"
    );
    let row = pg.sql(&format!(
        "SELECT status || ' ' || result FROM fleet_answers WHERE host = '{ha}' ORDER BY id DESC LIMIT 1"
    ));
    assert!(
        row[0].starts_with("refused") && row[0].contains("already ended"),
        "{row:?}"
    );
    // An unknown host or a malformed reference is a clear error.
    let out = op.cli(&["fleet", "decide", "no-such-host/x1", "safe"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host \"no-such-host\""));
    let out = op.cli(&["fleet", "decide", "nohostid", "safe"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not HOST/ID"));

    // A silenced agent is itself a signal: B stops, and after 3 missed heartbeats (2 s each)
    // the fleet view marks it silent while A stays fine.
    let mut b = b;
    b.stop();
    eventually(20, "B marked silent", || {
        let hosts = try_fleet(&op, &["hosts"])?;
        let silent = |h: &str| {
            hosts
                .iter()
                .find(|x| x["host"] == h)
                .map(|x| x["silent"].clone())
        };
        (silent(&hb)? == true && silent(&ha)? == false).then_some(())
    });
}

#[test]
fn an_outage_loses_nothing_duplicates_nothing_and_the_switch_keeps_time() {
    if !require_root("an_outage_loses_nothing_duplicates_nothing_and_the_switch_keeps_time") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("fo");
    let pg = Postgres::start();
    let op = operator(&pg);
    let h = host_id("o");
    let mut a = agent(
        &pg,
        &op,
        &h,
        "[alerts]\ndedup_window = \"0s\"\n[switch]\ncountdown = \"3s\"",
        "",
    );
    knock(RU4, 9301);
    eventually(15, "the first alert in the store", || {
        try_fleet(&op, &["alerts"])?
            .into_iter()
            .find(|x| x["host"] == h.as_str() && mine(x))
    });

    pg.stop_server();
    let down = Instant::now();
    let before = local_decisions(&a).len();
    // A process's destinations join its pending decision: each knock waits for the last
    // decision to end (countdown 3 s), so each opens one of its own during the outage.
    for port in 9302..9305 {
        thread::sleep(Duration::from_millis(4500));
        knock(RU4, port);
    }
    // The agent notices, says why, and keeps everything in its outbox.
    let status = eventually(15, "status reports the outage", || {
        let s = a.status();
        (s["fleet"]["connected"] == false
            && s["fleet"]["last_error"].is_string()
            && s["fleet"]["outbox"].as_u64().unwrap() > 0)
            .then_some(s)
    });
    assert!(!status["fleet"]["last_error"].as_str().unwrap().is_empty());
    // The switch does not wait for the store: every decision auto-blocks on time.
    eventually(15, "decisions auto-blocked while the store is down", || {
        let d = local_decisions(&a);
        (d.len() >= before + 3 && d.values().all(|s| s == "auto-blocked")).then_some(())
    });
    // A restart during the outage: the outbox is on disk.
    a.kill9();
    a.spawn();
    knock(RU4, 9307);
    let remaining = Duration::from_secs(20).saturating_sub(down.elapsed());
    thread::sleep(remaining);
    pg.start_server();

    // It drains: every local alert and decision is in the store once, in its final state.
    eventually(30, "the outbox drains after the restart", || {
        let s = a.status();
        (s["fleet"]["connected"] == true && s["fleet"]["outbox"] == 0).then_some(())
    });
    let local_alerts = || -> BTreeMap<String, Value> {
        a.events("alert")
            .into_iter()
            .filter(mine)
            .map(|x| (x["id"].as_str().unwrap().to_string(), x))
            .collect()
    };
    let decisions = eventually(15, "every decision ended auto-blocked", || {
        let d = local_decisions(&a);
        d.values().all(|s| s == "auto-blocked").then_some(d)
    });
    // Compared as both sides stand now: an alert's state may still move after the snapshot
    // of the decisions (its last update ships a moment later).
    eventually(30, "the store holds exactly what the host holds", || {
        let shipped = pg.sql(&format!(
            "SELECT id || ' ' || state FROM fleet_alerts WHERE host = '{h}' AND body->>'pid' = '{}' ORDER BY id",
            std::process::id()
        ));
        let want: Vec<String> = local_alerts()
            .iter()
            .map(|(id, x)| format!("{id} {}", x["state"].as_str().unwrap()))
            .collect();
        let dec = pg.sql(&format!(
            "SELECT id || ' ' || state FROM fleet_decisions WHERE host = '{h}' AND body->>'pid' = '{}' ORDER BY id",
            std::process::id()
        ));
        let want_dec: Vec<String> = local_decisions(&a)
            .iter()
            .map(|(id, s)| format!("{id} {s}"))
            .collect();
        (shipped == want && dec == want_dec).then_some(())
    });
    let local_alerts = local_alerts();
    assert!(local_alerts.len() >= 5, "{}", local_alerts.len());
    // Keyed by (host, id): nothing twice, whatever was re-sent.
    let dups = pg.sql(&format!(
        "SELECT count(*) - count(DISTINCT id) FROM fleet_alerts WHERE host = '{h}'"
    ));
    assert_eq!(dups, ["0"]);
    // Only what this test's own process caused: the agent sees every process on the machine.
    let blocks = pg.sql(&format!(
        "SELECT count(*) FROM fleet_decisions WHERE host = '{h}' AND body->>'pid' = '{}' AND state = 'auto-blocked' AND body->>'reason' LIKE 'dry-run%'",
        std::process::id()
    ));
    assert_eq!(blocks, [decisions.len().to_string()]);
}

#[test]
fn a_full_outbox_is_counted_in_the_fleet_view_not_hidden() {
    if !require_root("a_full_outbox_is_counted_in_the_fleet_view_not_hidden") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("fd");
    let pg = Postgres::start();
    let op = operator(&pg);
    let h = host_id("d");
    let a = agent(
        &pg,
        &op,
        &h,
        "[alerts]\ndedup_window = \"0s\"",
        "outbox_max_rows = 10",
    );
    let row = |op: &Operator| -> Option<Value> {
        try_fleet(op, &["hosts"])?
            .into_iter()
            .find(|x| x["host"] == h.as_str())
    };
    let first = eventually(15, "the host's first heartbeat", || row(&op));
    assert_eq!(first["outbox_dropped"], 0, "{first}");

    // An outage long enough for the outbox to fill: 30 alerts (and their decision) for a
    // cap of 10 rows.
    pg.stop_server();
    for port in 9311..9341 {
        knock(RU4, port);
    }
    let dropped = eventually(20, "the outbox drops past its cap", || {
        let n = a.status()["fleet"]["outbox_dropped"].as_u64()?;
        (n > 0).then_some(n)
    });
    pg.start_server();

    // Back: the view says how many rows of this host it will never see, as the host counted.
    let back = eventually(30, "the heartbeat carries the drop count", || {
        let r = row(&op)?;
        (r["outbox_dropped"].as_u64()? >= dropped).then_some(r)
    });
    let counted = a.status()["fleet"]["outbox_dropped"].as_u64().unwrap();
    assert_eq!(back["outbox_dropped"].as_u64(), Some(counted), "{back}");
    let text = op.cli(&["fleet", "hosts"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = text.lines().find(|l| l.starts_with(h.as_str())).unwrap();
    assert!(
        line.ends_with(&format!("{counted} rows dropped")),
        "fleet hosts: {line:?}"
    );
}

#[test]
fn a_wrong_password_is_a_clear_error_in_status_not_a_crash() {
    if !require_root("a_wrong_password_is_a_clear_error_in_status_not_a_crash") {
        return;
    }
    let _serial = serial();
    let pg = Postgres::start();
    let op = operator(&pg);
    let h = host_id("w");
    op.add_host(&h);
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-password-42";
    let pw = password_file(dir.path(), wrong);
    let a = Agent::start_with(&format!("id = \"{h}\""), &pg.fleet_section(&h, &pw, ""));
    let pid = a.pid();
    let s = eventually(15, "status names the authentication failure", || {
        let s = a.status();
        s["fleet"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("password authentication failed"))
            .then_some(s)
    });
    assert_eq!(s["fleet"]["connected"], false);
    assert_eq!(s["pid"], pid, "the agent kept running");
    // The CLI says the same, and never prints the password.
    let out = a.cli(&["fleet", "hosts"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains(wrong) && !a.log().contains(wrong));
    assert!(
        !a.cli(&["status", "--json"])
            .stdout
            .windows(wrong.len())
            .any(|w| w == wrong.as_bytes())
    );
    // Nothing was written under that host.
    assert_eq!(
        pg.sql(&format!(
            "SELECT count(*) FROM fleet_hosts WHERE host = '{h}'"
        )),
        ["0"]
    );
}

#[test]
fn an_agent_never_changes_the_schema_and_ships_only_as_itself() {
    if !require_root("an_agent_never_changes_the_schema_and_ships_only_as_itself") {
        return;
    }
    let _serial = serial();
    let pg = Postgres::start();
    // Even with the admin's own credentials, an agent creates nothing: the store is the
    // operator's to set up.
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), common::pg::PASSWORD);
    let h = host_id("n");
    let a = Agent::start_with(
        &format!("id = \"{h}\""),
        &pg.fleet_section(common::pg::USER, &pw, ""),
    );
    eventually(15, "status says the store is not set up", || {
        a.status()["fleet"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("sentinel fleet init"))
            .then_some(())
    });
    assert_eq!(
        pg.sql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'fleet%' OR tablename LIKE 'sentinel%'"),
        ["0"]
    );
    // Once it is set up, a host must connect as its own role: not as the admin.
    let op = operator(&pg);
    eventually(15, "status says the role is not the host's", || {
        a.status()["fleet"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("its own role") && e.contains(&h))
            .then_some(())
    });
    assert_eq!(a.status()["fleet"]["connected"], false);
    assert_eq!(
        pg.sql(&format!(
            "SELECT count(*) FROM fleet_hosts WHERE host = '{h}'"
        )),
        ["0"]
    );
    drop(op);
}

#[test]
fn a_confirmed_block_is_shared_across_the_fleet_and_lifted_from_the_view() {
    if !require_root("a_confirmed_block_is_shared_across_the_fleet_and_lifted_from_the_view") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("fs");
    let pg = Postgres::start();
    let op = operator(&pg);
    let (ta, tb) = (Table::new("fsa"), Table::new("fsb"));
    let enforce = |t: &Table| format!("[enforce]\ntable = \"{}\"\nconnect_guard = false", t.0);
    let (ha, hb) = (host_id("sa"), host_id("sb"));
    // B trusts CN4.
    let a = agent(
        &pg,
        &op,
        &ha,
        &format!("[switch]\ncountdown = \"5m\"\n{}", enforce(&ta)),
        "share_blocks = true",
    );
    let b = agent(
        &pg,
        &op,
        &hb,
        &format!(
            "[switch]\ncountdown = \"5m\"\n[trust]\nips = [\"{CN4}\"]\n{}",
            enforce(&tb)
        ),
        "share_blocks = true\naccept_unsigned_shares = true",
    );
    // C takes only what an operator signed.
    let (hc, tc) = (host_id("sc"), Table::new("fsc"));
    let c = agent(&pg, &op, &hc, &enforce(&tc), "share_blocks = true");
    knock(RU4, 9401);
    knock(CN4, 9402);
    // One process reached both: its decision holds both targets (the switch's target sets).
    let id: String = eventually(15, "A's pending decision on RU4 and CN4", || {
        a.json_lines(&["pending", "--json"])
            .into_iter()
            .find(|x| {
                let targets = x["targets"].as_array().cloned().unwrap_or_default();
                mine(x) && [RU4, CN4].iter().all(|t| targets.iter().any(|v| v == *t))
            })
            .map(|x| x["id"].as_str().unwrap().to_string())
    });
    // The alert B raised on RU4 (B's own detector) would block RU4 on B by itself only in 5
    // minutes: within this test, a block on B can only come from the fleet.
    let out = a.cli(&["block", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    eventually(10, "B blocks RU4, shared by A", || {
        tb.elements("block4")
            .iter()
            .any(|(e, _)| e == RU4)
            .then_some(())
    });
    let took = started.elapsed();
    let b_blocks = b.json_lines(&["blocks", "--json"]);
    let shared = b_blocks.iter().find(|x| x["addr"] == RU4).unwrap();
    assert!(
        shared["decision_id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("fleet:{ha}/")),
        "{shared}"
    );
    // CN4 is trusted on B: its guard refuses it, whatever the fleet says.
    eventually(10, "B refuses CN4", || {
        b.log().contains("shared block refused").then_some(())
    });
    assert!(!tb.elements("block4").iter().any(|(e, _)| e == CN4));
    assert!(ta.elements("block4").iter().any(|(e, _)| e == CN4));
    eprintln!("shared block enforced on the other host after {took:?}");
    // A's block carries no operator's signature: C ignores it, and says so.
    eventually(10, "C ignores A's unsigned share", || {
        c.log().contains("shared block ignored").then_some(())
    });
    assert!(!tc.elements("block4").iter().any(|(e, _)| e == RU4));
    // An operator's signed block reaches C too, and its signed lift lifts it.
    const OPS4: &str = "198.51.100.77";
    let out = op.cli(&["fleet", "block", OPS4]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = |t: &Table| t.elements("block4").iter().any(|(e, _)| e == OPS4);
    eventually(10, "C blocks the operator's address", || {
        held(&tc).then_some(())
    });
    let out = op.cli(&["fleet", "unblock", OPS4]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(10, "C lifts it", || (!held(&tc)).then_some(()));

    // `fleet unblock` lifts it everywhere.
    let out = op.cli(&["fleet", "unblock", RU4]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(10, "RU4 lifted on both hosts", || {
        (!ta.elements("block4").iter().any(|(e, _)| e == RU4)
            && !tb.elements("block4").iter().any(|(e, _)| e == RU4))
        .then_some(())
    });
    // The worker lifts nft first, then forgets the row: the ledger follows within its job.
    eventually(5, "RU4 gone from B's blocks", || {
        b.json_lines(&["blocks", "--json"])
            .iter()
            .all(|x| x["addr"] != RU4)
            .then_some(())
    });
    assert!(
        ta.elements("block4").iter().any(|(e, _)| e == CN4),
        "only RU4 was lifted"
    );
}

#[test]
fn the_fleet_view_shows_the_names_targets_were_resolved_from() {
    if !require_root("the_fleet_view_shows_the_names_targets_were_resolved_from") {
        return;
    }
    common::dns::require_dnsmasq("the_fleet_view_shows_the_names_targets_were_resolved_from");
    let _serial = serial();
    let net = TestNet::new("fn");
    let mut procs = common::procs::Procs::default();
    common::dns::dnsmasq(&net, DE4, None, &mut procs);
    let pg = Postgres::start();
    let op = operator(&pg);
    // A store of schema version 4 (before shared blocks carried names): `fleet init`
    // upgrades it to 5 in place.
    pg.sql(
        "ALTER TABLE fleet_shared_blocks DROP COLUMN domain; \
         DELETE FROM sentinel_migrations WHERE version = 5",
    );
    assert_eq!(
        pg.sql("SELECT max(version) FROM sentinel_migrations"),
        ["4"]
    );
    op.init();
    assert_eq!(
        pg.sql("SELECT max(version) FROM sentinel_migrations"),
        ["5"]
    );
    assert_eq!(
        pg.sql(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'fleet_shared_blocks' AND column_name = 'domain'"
        ),
        ["1"]
    );
    let (table, table_b) = (Table::new("fn"), Table::new("fnb"));
    let enforce = |t: &Table| {
        format!(
            "[switch]\ncountdown = \"5m\"\n[enforce]\ntable = \"{}\"\nconnect_guard = false",
            t.0
        )
    };
    let (h, hb) = (host_id("n"), host_id("nb"));
    let a = agent(&pg, &op, &h, &enforce(&table), "share_blocks = true");
    let dir = tempfile::tempdir().unwrap();
    let files = common::dns::resolver_files(dir.path(), "fleet", DE4);
    let (_pid, mut stdin, mut stdout) = common::dns::client(
        &net,
        false,
        &files,
        "c2.sentinel.test",
        common::dns::CONNECT_ALL,
        &mut procs,
    );
    common::dns::connect_now(&mut stdin, &mut stdout);
    // B takes A's share. It starts after the answer, so it never saw it: the name it shows
    // is the one the shared block carries.
    let b = agent(
        &pg,
        &op,
        &hb,
        &enforce(&table_b),
        "share_blocks = true\naccept_unsigned_shares = true",
    );
    const NAMED: &str = "c2.sentinel.test (198.51.100.2)";
    assert_eq!(RU4, "198.51.100.2");

    // Pending: the row carries the name, the table shows `name (address)`.
    let row = eventually(15, "the pending decision in the fleet view", || {
        fleet(&op, &["pending"])
            .into_iter()
            .find(|p| p["host"] == h.as_str() && p["target_ip"] == RU4)
    });
    assert_eq!(row["domain"], "c2.sentinel.test", "{row}");
    let id = row["id"].as_str().unwrap().to_string();
    let text = String::from_utf8_lossy(&op.cli(&["fleet", "pending"]).stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with(h.as_str()) && l.contains(NAMED)),
        "{text}"
    );
    // The alert's line says it too.
    let text = String::from_utf8_lossy(&op.cli(&["fleet", "alerts"]).stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains(h.as_str()) && l.contains(NAMED)),
        "{text}"
    );

    // Blocked: the fleet's blocks list it under its name.
    let out = a.cli(&["block", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let block = eventually(15, "the block in the fleet view", || {
        fleet(&op, &["blocks"])
            .into_iter()
            .find(|b| b["host"] == h.as_str() && b["addr"] == RU4)
    });
    assert_eq!(block["domain"], "c2.sentinel.test", "{block}");
    assert_eq!(block["decision_id"], id.as_str(), "{block}");
    let text = String::from_utf8_lossy(&op.cli(&["fleet", "blocks"]).stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with(h.as_str()) && l.contains("c2.sentinel.test")),
        "{text}"
    );
    assert!(
        table.elements("block4").iter().any(|(e, _)| e == RU4),
        "blocked here"
    );
    // The row says the name; the host that took the share records the block under it.
    assert_eq!(
        pg.sql(&format!(
            "SELECT domain FROM fleet_shared_blocks WHERE addr = '{RU4}'"
        )),
        ["c2.sentinel.test"]
    );
    let shared = eventually(15, "B's shared block in the fleet view", || {
        fleet(&op, &["blocks"])
            .into_iter()
            .find(|b| b["host"] == hb.as_str() && b["addr"] == RU4)
    });
    assert_eq!(shared["domain"], "c2.sentinel.test", "{shared}");
    let local = b.json_lines(&["blocks", "--json"]);
    assert!(
        local
            .iter()
            .any(|x| x["addr"] == RU4 && x["domain"] == "c2.sentinel.test"),
        "{local:?}"
    );
}
