//! Operator signatures (#24 §2) on a real PostgreSQL server started by the test: an agent
//! applies only an answer an operator signed, for itself, fresh and not applied before; an
//! unsigned, wrongly signed, tampered, stale or replayed answer is refused, logged, and changes
//! nothing. `sentinel fleet keygen` writes the private key once, mode 0600.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    Agent,
    netns::{RU4, TestNet, knock},
    pg::{Operator, Postgres},
    require_root, serial, write_private,
};
use ed25519_dalek::{Signer as _, SigningKey};

/// The signed message, written out again from docs/fleet.md (not the agent's code): a domain
/// tag, then each field as a 4-byte big-endian length and its bytes.
fn answer_message(host: &str, id: &str, verdict: &str, at_ms: i64, operator: &str) -> Vec<u8> {
    let mut out = b"sentinel fleet operator signature v1\0".to_vec();
    for f in ["answer", host, id, verdict, &at_ms.to_string(), operator] {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// The private key in a key file `sentinel fleet keygen` wrote.
fn signing_key(file: &std::path::Path) -> SigningKey {
    let text = std::fs::read_to_string(file).unwrap();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret = \""))
        .unwrap()
        .trim_end_matches('"');
    SigningKey::from_bytes(&hex::decode(secret).unwrap().try_into().unwrap())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Write an answer row as the admin (a store whose every role is compromised): `signed` is
/// (what the signature covers: host, verdict, time) and the key.
fn forge(
    pg: &Postgres,
    host: &str,
    id: &str,
    verdict: &str,
    signed: Option<(&str, &str, i64, &SigningKey)>,
) {
    let (op, at, sig) = match signed {
        Some((h, v, at, key)) => {
            let sig = key.sign(&answer_message(h, id, v, at, "ops")).to_bytes();
            (
                "'ops'".to_string(),
                at.to_string(),
                format!("'{}'", hex::encode(sig)),
            )
        }
        None => ("NULL".into(), "NULL".into(), "NULL".into()),
    };
    pg.sql(&format!(
        "INSERT INTO fleet_answers (host, decision_id, verdict, requested_by, operator, signed_ms, signature)
         VALUES ('{host}', '{id}', '{verdict}', 'mallory', {op}, {at}, {sig})"
    ));
}

/// Wait until no answer for `host` is waiting; the results, oldest first.
fn settled(pg: &Postgres, host: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = pg.sql(&format!(
            "SELECT status || ': ' || COALESCE(result, '') FROM fleet_answers WHERE host = '{host}' ORDER BY id"
        ));
        if rows.iter().all(|r| !r.starts_with("waiting")) {
            return rows;
        }
        assert!(Instant::now() < deadline, "answers still waiting: {rows:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn only_a_fresh_answer_an_operator_signed_for_this_host_is_applied_once() {
    if !require_root("only_a_fresh_answer_an_operator_signed_for_this_host_is_applied_once") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("sg");
    let pg = Postgres::start();
    let op: Operator = pg.operator(std::path::Path::new(common::BIN));
    op.init();
    let host = format!("sign-{}", std::process::id());
    let (pw, _) = op.add_host(&host);
    let fleet = pg.fleet_section(&host, &pw, &op.keys_line());
    let mut agent = Agent::start_with(
        &format!("id = \"{host}\""),
        &format!("[switch]\ncountdown = \"5m\"\n{fleet}"),
    );
    knock(RU4, 9501);
    let pending = |a: &Agent| -> Vec<String> {
        a.json_lines(&["pending", "--json"])
            .into_iter()
            .filter(|p| p["pid"] == std::process::id())
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let id = loop {
        if let Some(id) = pending(&agent).into_iter().next() {
            break id;
        }
        assert!(Instant::now() < deadline, "no pending decision");
        std::thread::sleep(Duration::from_millis(100));
    };
    let key = signing_key(&op.key_file);
    let other = SigningKey::from_bytes(&[7u8; 32]);
    let now = now_ms();
    forge(&pg, &host, &id, "safe", None); // unsigned
    forge(&pg, &host, &id, "safe", Some((&host, "safe", now, &other))); // another key
    forge(&pg, &host, &id, "safe", Some(("web9", "safe", now, &key))); // host changed
    forge(&pg, &host, &id, "safe", Some((&host, "block", now, &key))); // verdict changed
    forge(
        &pg,
        &host,
        &id,
        "safe",
        Some((&host, "safe", now - 11 * 60_000, &key)),
    ); // stale
    let results = settled(&pg, &host);
    let expected = [
        "not signed by an operator",
        "does not match",
        "does not match",
        "does not match",
        "older than fleet.answer_ttl",
    ];
    assert_eq!(results.len(), expected.len(), "{results:?}");
    for (r, why) in results.iter().zip(expected) {
        assert!(r.starts_with("refused: ") && r.contains(why), "{r} ({why})");
    }
    assert_eq!(agent.log().matches("fleet answer refused").count(), 5);
    // Nothing changed: the decision is still pending.
    assert_eq!(pending(&agent), std::slice::from_ref(&id));

    // Signed by the operator, through `sentinel fleet decide`: applied within 3 s.
    let started = Instant::now();
    let out = op.cli(&[
        "fleet",
        "decide",
        &format!("{host}/{id}"),
        "safe",
        "--wait",
        "3s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(pending(&agent).is_empty());
    let applied = pg.sql(&format!(
        "SELECT operator || ' ' || signed_ms || ' ' || signature FROM fleet_answers
         WHERE host = '{host}' AND status = 'applied'"
    ));
    assert_eq!(applied.len(), 1, "{applied:?}");
    let replay = |pg: &Postgres| {
        pg.sql(&format!(
            "INSERT INTO fleet_answers (host, decision_id, verdict, requested_by, operator, signed_ms, signature)
             SELECT host, decision_id, verdict, requested_by, operator, signed_ms, signature
             FROM fleet_answers WHERE host = '{host}' AND status = 'applied'"
        ));
        settled(pg, &host).last().unwrap().clone()
    };
    // Replayed: refused as such (before the switch sees it), now and after a restart.
    let r = replay(&pg);
    assert!(r.contains("replayed"), "{r}");
    agent.kill9();
    agent.spawn();
    let r = replay(&pg);
    assert!(r.contains("replayed"), "{r}");
    assert!(agent.log().contains("already applied (replayed)"));
}

#[test]
fn keygen_writes_a_private_key_once_and_prints_the_public_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.key");
    let keygen = || {
        std::process::Command::new(common::BIN)
            .args(["fleet", "keygen", "alice", "--out"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = keygen();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(
        public.starts_with("alice:") && public.len() == 6 + 64,
        "{public}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("alice.pub"))
            .unwrap()
            .trim(),
        public
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&file).unwrap();
    let out = keygen();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&file).unwrap(), before);
    // The public key is accepted by an agent's config as it is printed.
    let config = dir.path().join("host.toml");
    write_private(
        &config,
        &format!("[fleet]\noperator_keys = [\"{public}\", \"bob:12\"]\n"),
    );
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("fleet.operator_keys") && text.contains("entry 2"),
        "{text}"
    );
    assert!(!text.contains("entry 1"), "{text}");
}
