//! The fleet store shared with hosts that may be compromised (#24), on a real PostgreSQL
//! server started by the test: the operator sets it up (`sentinel fleet init`, `add-host`,
//! `add-operator`); a host's credentials write only rows under its own name, read only what is
//! addressed to it, never answer, lift, delete or change the schema; an old single-role store
//! is upgraded in place. What an operator signs: `tests/fleet_sign.rs`.

mod common;

use common::{
    pg::{Postgres, USER},
    require_root, serial, write_private,
};

const A: &str = "trust-a";
const B: &str = "trust-b";

/// `r` is a refusal by the server's access control (not a typo in the test's SQL).
#[track_caller]
fn refused(r: Result<Vec<String>, String>, what: &str) {
    match r {
        Ok(rows) => panic!("{what}: allowed ({rows:?})"),
        Err(e) => assert!(
            e.contains("permission denied")
                || e.contains("row-level security")
                || e.contains("must be owner"),
            "{what}: {e}"
        ),
    }
}

#[test]
fn a_host_writes_only_its_own_rows_and_reads_only_what_is_addressed_to_it() {
    if !require_root("a_host_writes_only_its_own_rows_and_reads_only_what_is_addressed_to_it") {
        return;
    }
    let _serial = serial();
    let pg = Postgres::start();
    let op = pg.operator(std::path::Path::new(common::BIN));
    op.init();
    let (_, pw_a) = op.add_host(A);
    let (_, pw_b) = op.add_host(B);
    let as_a = |q: &str| pg.sql_as(A, &pw_a, q);
    let as_b = |q: &str| pg.sql_as(B, &pw_b, q);

    // What B legitimately wrote, and what the operator addressed to each host.
    as_b(&format!(
        "INSERT INTO fleet_alerts (host, id, seq, ts, anomaly, state, body)
         VALUES ('{B}', 'b1', 1, now(), 'geo', 'pending', '{{}}')"
    ))
    .unwrap();
    as_b(&format!(
        "INSERT INTO fleet_shared_blocks (addr, origin_host, decision_id, confirmed_by, at)
         VALUES ('198.51.100.7', '{B}', 'b1', 'root', now())"
    ))
    .unwrap();
    pg.sql(&format!(
        "INSERT INTO fleet_answers (host, decision_id, verdict, requested_by)
         VALUES ('{B}', 'b1', 'block', 'ops'), ('{A}', 'a1', 'safe', 'ops')"
    ));
    let snapshot = || {
        [
            pg.sql("SELECT host, id, state FROM fleet_alerts ORDER BY host, id"),
            pg.sql("SELECT host, decision_id, verdict, status FROM fleet_answers ORDER BY id"),
            pg.sql(
                "SELECT addr, origin_host, lifted_at IS NULL FROM fleet_shared_blocks ORDER BY addr",
            ),
            pg.sql("SELECT host FROM fleet_hosts ORDER BY host"),
        ]
    };
    let before = snapshot();

    // A row for host B.
    refused(
        as_a(&format!(
            "INSERT INTO fleet_hosts (host, version, last_seen, heartbeat_s, sensors, lost, pending, outbox)
             VALUES ('{B}', '0', now(), 10, '{{}}', 0, 0, 0)"
        )),
        "a heartbeat under B's name",
    );
    refused(
        as_a(&format!(
            "INSERT INTO fleet_decisions (host, id, seq, state, deadline, body)
             VALUES ('{B}', 'x', 1, 'safe', now(), '{{}}')"
        )),
        "a decision under B's name",
    );
    // An answer, for B or for itself.
    refused(
        as_a(&format!(
            "INSERT INTO fleet_answers (host, decision_id, verdict, requested_by)
             VALUES ('{B}', 'b1', 'safe', 'root@a')"
        )),
        "an answer for B",
    );
    refused(
        as_a(&format!(
            "INSERT INTO fleet_answers (host, decision_id, verdict, requested_by)
             VALUES ('{A}', 'a2', 'safe', 'root@a')"
        )),
        "an answer for itself",
    );
    refused(
        as_a("UPDATE fleet_answers SET verdict = 'block'"),
        "changing an answer's verdict",
    );
    // A shared block under B's name, and a lift.
    refused(
        as_a(&format!(
            "INSERT INTO fleet_shared_blocks (addr, origin_host, at)
             VALUES ('203.0.113.9', '{B}', now())"
        )),
        "a shared block under B's name",
    );
    refused(
        as_a(&format!(
            "INSERT INTO fleet_shared_blocks (addr, origin_host, at, lifted_at, lifted_by)
             VALUES ('203.0.113.10', '{A}', now(), now(), 'root@a')"
        )),
        "a lift",
    );
    // A signature of its own making, or one put back (schema v3: never a signature column).
    refused(
        as_a(&format!(
            "INSERT INTO fleet_shared_blocks (addr, origin_host, at, signer, signed_ms, signature)
             VALUES ('203.0.113.11', '{A}', now(), 'ops', 1, '00')"
        )),
        "a signed shared block",
    );
    refused(
        as_b("UPDATE fleet_shared_blocks SET signer = 'ops', signature = '00'"),
        "a signature put on a shared block",
    );
    refused(
        as_b("UPDATE fleet_answers SET signature = '00'"),
        "a signature put on an answer",
    );
    // Deleting anything, or changing the schema.
    refused(as_a("DELETE FROM fleet_alerts"), "a delete");
    refused(as_a("DELETE FROM fleet_shared_blocks"), "a delete");
    refused(as_a("CREATE TABLE mine (i int)"), "a table of its own");
    refused(
        as_a("ALTER TABLE fleet_alerts DISABLE ROW LEVEL SECURITY"),
        "turning row-level security off",
    );
    refused(as_a("DROP TABLE fleet_answers"), "dropping a table");
    // Updates of rows it does not own find nothing to change.
    for q in [
        format!("UPDATE fleet_alerts SET state = 'safe' WHERE host = '{B}'"),
        format!("UPDATE fleet_alerts SET host = '{A}' WHERE host = '{B}'"),
        "UPDATE fleet_shared_blocks SET lifted_at = now(), lifted_by = 'root@a'".into(),
        format!("UPDATE fleet_answers SET status = 'applied' WHERE host = '{B}'"),
    ] {
        as_a(&q).unwrap_or_else(|e| panic!("{q}: {e}"));
    }
    assert_eq!(snapshot(), before, "host A's credentials changed something");

    // It reads only its own rows and answers, and every shared block.
    assert_eq!(as_a("SELECT count(*) FROM fleet_alerts").unwrap(), ["0"]);
    assert_eq!(
        as_a("SELECT host || '/' || decision_id FROM fleet_answers").unwrap(),
        [format!("{A}/a1")]
    );
    assert_eq!(
        as_a("SELECT host(addr) FROM fleet_shared_blocks").unwrap(),
        ["198.51.100.7"]
    );
    // And does its own job: a heartbeat, a shared block, an answer's outcome.
    as_a(&format!(
        "INSERT INTO fleet_hosts (host, version, last_seen, heartbeat_s, sensors, lost, pending, outbox)
         VALUES ('{A}', '0', now(), 10, '{{}}', 0, 0, 0)"
    ))
    .unwrap();
    as_a(&format!(
        "INSERT INTO fleet_shared_blocks (addr, origin_host, decision_id, confirmed_by, at)
         VALUES ('203.0.113.11', '{A}', 'a1', 'root', now())"
    ))
    .unwrap();
    as_a(&format!(
        "UPDATE fleet_answers SET status = 'applied', result = 'safe', done_at = now()
         WHERE host = '{A}'"
    ))
    .unwrap();
    assert_eq!(
        pg.sql(&format!(
            "SELECT status FROM fleet_answers WHERE host = '{A}'"
        )),
        ["applied"]
    );
}

#[test]
fn the_schema_and_roles_are_the_operators_alone() {
    if !require_root("the_schema_and_roles_are_the_operators_alone") {
        return;
    }
    let _serial = serial();
    let pg = Postgres::start();
    let op = pg.operator(std::path::Path::new(common::BIN));
    // Nothing before `fleet init`, and it says so.
    let out = op.cli(&["fleet", "add-host", A]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sentinel fleet init"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = op.cli(&["fleet", "hosts"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sentinel fleet init"));

    let out = op.cli(&["fleet", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("from schema version 0 to 5"));
    assert_eq!(
        pg.sql("SELECT version FROM sentinel_migrations ORDER BY version"),
        ["1", "2", "3", "4", "5"]
    );
    assert_eq!(
        pg.sql(
            "SELECT DISTINCT tableowner FROM pg_tables
             WHERE tablename LIKE 'fleet%' OR tablename = 'sentinel_migrations'"
        ),
        ["sentinel_owner"]
    );
    assert_eq!(
        pg.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'sentinel_owner'"),
        ["f"]
    );
    // Again: nothing to do.
    let out = op.cli(&["fleet", "init"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("at schema version 5"));

    // A host's role: its password in a private file, the only place it is written.
    let (file, pw) = op.add_host(A);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(pw.len(), 32);
    assert_eq!(pg.sql_as(A, &pw, "SELECT current_user").unwrap(), [A]);
    assert!(
        pg.sql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{A}'"
        ))[0]
            .starts_with("SCRAM-SHA-256$")
    );
    // Again: a new password; the old one stops working.
    let (_, pw2) = op.add_host(A);
    assert_ne!(pw, pw2);
    assert!(pg.sql_as(A, &pw, "SELECT 1").is_err());
    assert!(pg.sql_as(A, &pw2, "SELECT 1").is_ok());
    // A role that is not a Sentinel host's is never taken over.
    let out = op.cli(&["fleet", "add-host", USER]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a Sentinel host"));
    let out = op.cli(&["fleet", "add-host", "sentinel_owner"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));

    // An operator's role reads the fleet and lifts, but cannot delete or change the schema.
    let (ops_pw, ops) = op.add_operator("ops1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ops.toml");
    write_private(
        &config,
        &format!(
            "[fleet]\npostgres_url = \"{}\"\npostgres_password_file = \"{}\"\n\
             operator_key_file = \"{}\"\n",
            pg.url_as("ops1"),
            ops_pw.display(),
            op.key_file.display()
        ),
    );
    let cli = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = cli(&["fleet", "hosts", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["fleet", "unblock", "198.51.100.8"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.sql("SELECT lifted_by IS NOT NULL FROM fleet_shared_blocks"),
        ["t"]
    );
    refused(
        pg.sql_as("ops1", &ops, "DELETE FROM fleet_shared_blocks"),
        "an operator's delete",
    );
    refused(
        pg.sql_as("ops1", &ops, "CREATE TABLE mine (i int)"),
        "an operator's table",
    );
    // And the operator's role is not a host's: it cannot init or add hosts.
    let out = cli(&["fleet", "add-host", "trust-c"]);
    assert!(!out.status.success());
}

#[test]
fn a_single_role_store_is_upgraded_in_place() {
    if !require_root("a_single_role_store_is_upgraded_in_place") {
        return;
    }
    let _serial = serial();
    let pg = Postgres::start();
    // The store as agents before #24 left it: every table owned by the one shared role.
    pg.sql(
        "CREATE TABLE sentinel_migrations (version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO sentinel_migrations (version) VALUES (1)",
    );
    pg.sql(include_str!("../sentinel-agent/src/fleet/schema_v1.sql"));
    pg.sql(&format!(
        "INSERT INTO fleet_alerts (host, id, seq, ts, anomaly, state, body)
         VALUES ('{A}', 'old1', 1, now(), 'geo', 'blocked', '{{}}')"
    ));
    let op = pg.operator(std::path::Path::new(common::BIN));
    let out = op.cli(&["fleet", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("from schema version 1 to 5"));
    let (_, pw) = op.add_host(A);
    // The host's history is its own under its new role.
    assert_eq!(
        pg.sql_as(A, &pw, "SELECT id FROM fleet_alerts").unwrap(),
        ["old1"]
    );
    refused(
        pg.sql_as(A, &pw, "DELETE FROM fleet_alerts"),
        "a delete after the upgrade",
    );
}

#[test]
fn a_store_across_the_network_takes_only_verified_tls() {
    if !require_root("a_store_across_the_network_takes_only_verified_tls") {
        return;
    }
    let _serial = serial();
    // The store listens on the host side of the test network (not loopback, and not the
    // machine's own network: nothing outside this machine can reach it).
    let _net = common::netns::TestNet::new("ft");
    let addr: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    let pg = Postgres::start_tls(addr);
    let op = pg.operator(std::path::Path::new(common::BIN));
    op.init();
    let (pw, _) = op.add_host(A);
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = common::pg::make_ca(dir.path(), "other");
    let mut n = 0;
    // `sentinel fleet hosts` as host A with this [fleet] section: its stderr on failure.
    let mut try_with = |query: &str, extra: &str| -> Result<(), String> {
        n += 1;
        let config = dir.path().join(format!("a{n}.toml"));
        write_private(
            &config,
            &format!(
                "[fleet]\npostgres_url = \"postgresql://{A}@{addr}:{}/postgres{query}\"\n\
                 postgres_password_file = \"{}\"\n{extra}\n",
                pg.port,
                pw.display()
            ),
        );
        let out = std::process::Command::new(common::BIN)
            .args(["fleet", "hosts", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(())
        } else {
            Err(err)
        }
    };
    let ca = format!("ca_file = \"{}\"", pg.ca_file().display());
    // The server takes only TLS on this address: each success below is a verified TLS session.
    try_with("", &ca).expect("TLS by default, verified against fleet.ca_file");
    try_with("?sslmode=verify-full", &ca).expect("sslmode=verify-full");
    // Plaintext is refused before anything is sent, and the message says what to do.
    for mode in ["disable", "prefer", "allow"] {
        let err = try_with(&format!("?sslmode={mode}"), &ca).unwrap_err();
        assert!(
            err.contains(&format!("sslmode={mode}"))
                && err.contains("plaintext")
                && err.contains("fleet.insecure = true"),
            "{err}"
        );
    }
    // On purpose, it is tried in plaintext (which this server refuses).
    let err = try_with("?sslmode=disable", &format!("{ca}\ninsecure = true")).unwrap_err();
    assert!(err.contains("no encryption"), "{err}");
    // A certificate from another CA, or checked against the system's roots, is not the store.
    let err = try_with("", &format!("ca_file = \"{}\"", wrong_ca.display())).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    let err = try_with("", "").unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}
