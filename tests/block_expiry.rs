//! End to end: a block ends when it ends. With a short `enforce.block_ttl`, a connection to a
//! test host is auto-blocked; once the nftables element has timed out, the same connection is
//! judged afresh: it opens a new pending decision (which, unanswered, blocks it again).
//! Only this test's own process (the one that connects) is looked at: other tests run on the
//! same kernel at the same time.

mod common;

use std::time::{Duration, Instant};

use common::{
    Agent,
    netns::{TestNet, knock},
    nft::Table,
    require_root, serial,
};
use serde_json::Value;

const ADDR: &str = "198.51.100.2";

fn config(table: &Table) -> String {
    format!(
        "[switch]\ncountdown = \"1s\"\n[enforce]\ntable = \"{}\"\nconnect_guard = false\nblock_ttl = \"3s\"\n",
        table.0
    )
}

/// A decision event of this test's process on `ADDR`.
fn ours(d: &Value) -> bool {
    d["pid"] == std::process::id() && d["target_ip"] == ADDR
}

/// Wait until the block's nftables element has timed out.
fn wait_unblocked(table: &Table) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !table.elements("block4").is_empty() {
        assert!(Instant::now() < deadline, "the block never timed out");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_expired_block_is_judged_afresh() {
    if !require_root("an_expired_block_is_judged_afresh") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("e");
    let table = Table::new("expiry");
    let agent = Agent::start_with("", &config(&table));

    knock(ADDR, 9971);
    let first = agent.wait_for("decision", "the first auto-block", |d| {
        ours(d) && d["state"] == "auto-blocked"
    });
    let first_id = first["id"].as_str().unwrap().to_string();
    let els = table.elements("block4");
    assert_eq!(els.len(), 1, "{els:?}");
    assert_eq!(els[0].0, ADDR);
    assert!(els[0].1.is_some_and(|t| t <= 3), "block_ttl 3s: {els:?}");

    wait_unblocked(&table);
    knock(ADDR, 9972);
    let again = agent.wait_for("decision", "a new pending decision", |d| {
        ours(d) && d["state"] == "pending" && d["id"] != first_id.as_str()
    });
    let again_id = again["id"].as_str().unwrap().to_string();
    // Unanswered, it blocks the address again.
    agent.wait_for("decision", "the second auto-block", |d| {
        d["id"] == again_id.as_str() && d["state"] == "auto-blocked"
    });
    let els: Vec<String> = table.elements("block4").into_iter().map(|e| e.0).collect();
    assert_eq!(els, [ADDR]);
}
