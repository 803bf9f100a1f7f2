//! A block ends when it ends: after `enforce.block_ttl` the address leaves the switch's
//! blocked set, so a new finding opens a new decision and a fleet share applies again.

use super::*;

const ADDR: &str = "198.51.100.9";

/// Auto-block `ADDR` under alert `a1`; the instant the block was made.
fn auto_block(r: &mut Rig, t0: Now) -> Now {
    r.open("a1", ADDR, t0).unwrap();
    let at = t0.after(T.countdown);
    let ended = r.tick(&TrustSet::default(), at);
    assert_eq!(ended[0].decision.state, State::AutoBlocked);
    assert_eq!(r.recorded(), [ip(ADDR)]);
    at
}

#[test]
fn an_ended_block_is_judged_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let blocked_at = auto_block(&mut r, t0());
    let just_before = blocked_at.after(T.block_ttl - Duration::from_secs(1));
    assert!(r.open("a2", ADDR, just_before).is_none(), "still blocked");

    // The tick after the ttl forgets it; the next finding opens a new decision.
    let after = blocked_at.after(T.block_ttl);
    assert!(r.tick(&TrustSet::default(), after).is_empty());
    assert_eq!(r.sw.blocked.len(), 0, "pruned from memory");
    let c = r.open("a2", ADDR, after).expect("a new decision");
    assert_eq!(c.decision.state, State::Pending);
    assert_eq!(c.decision.targets, [ip(ADDR)]);
    assert_eq!(r.sw.holder_of(ip(ADDR)), Some("a2"));
}

#[test]
fn an_ended_block_is_judged_afresh_before_any_tick() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let blocked_at = auto_block(&mut r, t0());
    // A joining target too: the expiry is checked where the set is read, not only pruned.
    let after = blocked_at.after(T.block_ttl);
    r.open("a2", "198.51.100.10", after).unwrap();
    assert!(r.join("a2", ADDR, after));
}

#[test]
fn a_wall_clock_step_does_not_end_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let blocked_at = auto_block(&mut r, t0());
    let stepped = Now {
        wall: blocked_at.wall + T.block_ttl * 2,
        boot: blocked_at.boot + Duration::from_secs(1),
    };
    r.tick(&TrustSet::default(), stepped);
    assert!(r.open("a2", ADDR, stepped).is_none());
}

#[test]
fn a_fleet_share_applies_again_after_the_block_ended() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let trust = TrustSet::default();
    let t0 = t0();
    assert_eq!(
        r.sw.block_shared(&trust, ip(ADDR), "fleet:b/x", None, t0),
        Ok(true)
    );
    let later = t0.after(T.block_ttl - Duration::from_secs(1));
    assert_eq!(
        r.sw.block_shared(&trust, ip(ADDR), "fleet:c/y", None, later),
        Ok(false)
    );
    let after = t0.after(T.block_ttl);
    assert_eq!(
        r.sw.block_shared(&trust, ip(ADDR), "fleet:c/y", None, after),
        Ok(true)
    );
}

#[test]
fn a_reasserted_block_ends_with_its_remaining_time() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = t0();
    let expires = {
        let mut r = Rig::new(dir.path());
        auto_block(&mut r, t0);
        r.worker.ledger().blocks(t0.wall).unwrap()[0].expires
    };
    // A restart with an hour left: the block is re-asserted for that hour, then ends.
    let left = Duration::from_secs(3600);
    let restart = Now {
        wall: expires - left,
        boot: Duration::from_secs(10),
    };
    let mut r = Rig::new(dir.path());
    r.sw.resume(&TrustSet::default(), restart).unwrap();
    r.sync();
    let before_end = restart.after(left - Duration::from_secs(1));
    assert!(r.open("a2", ADDR, before_end).is_none());
    assert!(r.open("a2", ADDR, restart.after(left)).is_some());
}
