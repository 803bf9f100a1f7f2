//! A block is recorded under the name its address was resolved from
//! (`Switch::name_target`), also a shared block's, and a ledger from before names were kept
//! opens with the column added.

use super::*;

#[test]
fn each_block_row_carries_its_targets_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let t0 = t0();
    r.open("a1", "198.51.100.9", t0).unwrap();
    r.join("a1", "198.51.100.10", t0);
    r.sw.name_target(ip("198.51.100.9"), "c2.example");
    r.sw.name_target(ip("198.51.100.10"), "backup.example");
    // A second name for a named target does not replace the first; an unknown target is
    // no one's.
    r.sw.name_target(ip("198.51.100.9"), "later.example");
    r.sw.name_target(ip("198.51.100.77"), "nobody.example");
    r.sw.flush(t0);
    r.sync();
    let pending = r.worker.ledger().get("a1").unwrap().unwrap();
    assert_eq!(pending.names.len(), 2, "{:?}", pending.names);
    r.tick(&TrustSet::default(), t0.after(T.countdown));
    let mut rows = r.worker.ledger().blocks(t0.wall).unwrap();
    rows.sort_by_key(|b| b.addr);
    let named: Vec<_> = rows
        .iter()
        .map(|b| (b.addr.to_string(), b.domain.as_deref()))
        .collect();
    assert_eq!(
        named,
        [
            ("198.51.100.9".to_string(), Some("c2.example")),
            ("198.51.100.10".to_string(), Some("backup.example")),
        ]
    );
    let made = r
        .worker
        .ledger()
        .blocks_made_since(t0.wall - Duration::from_secs(1), 10)
        .unwrap();
    assert_eq!(made.len(), 2);
    assert!(
        r.worker
            .ledger()
            .blocks_made_since(t0.wall, 1)
            .unwrap()
            .len()
            <= 1,
        "the limit holds"
    );
}

#[test]
fn a_shared_block_keeps_the_name_it_was_made_under() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let t0 = t0();
    let trust = TrustSet::default();
    assert_eq!(
        r.sw.block_shared(&trust, ip("198.51.100.2"), "a1", Some("c2.example"), t0),
        Ok(true)
    );
    r.sync();
    let rows = r.worker.ledger().blocks(t0.wall).unwrap();
    assert_eq!(rows[0].domain.as_deref(), Some("c2.example"));
}

#[test]
fn a_ledger_without_names_gets_the_column_and_its_blocks_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE blocks (addr TEXT PRIMARY KEY, expires INTEGER NOT NULL,
                                  decision_id TEXT NOT NULL, created INTEGER NOT NULL);
             INSERT INTO blocks VALUES ('198.51.100.4', 9000000000000000000, 'old', 0);",
        )
        .unwrap();
    }
    let ledger = Ledger::open(&path).unwrap();
    let rows = ledger.blocks(SystemTime::now()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].decision_id.as_str(), rows[0].domain.clone()),
        ("old", None)
    );
    // Opening again (the column is there now) changes nothing.
    drop(ledger);
    assert_eq!(
        Ledger::open(&path)
            .unwrap()
            .blocks(SystemTime::now())
            .unwrap()
            .len(),
        1
    );
}
