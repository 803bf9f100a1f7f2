//! One origin, one decision, and a budget for the timer: what keeps a local user from
//! choosing what the switch cuts off (`switch::origin`, `switch::charge`).

use super::*;

const WWW: &str = "uid 33";

fn target(s: &str) -> ActionableAddr {
    TrustSet::default().check(s.parse().unwrap()).unwrap()
}

/// Open (or, as the pipeline does, join the origin's open decision) `alert_id` on `addr`.
fn offer(r: &mut Rig, alert_id: &str, addr: &str, origin: &str, now: Now) -> String {
    let id = match r.sw.pending_of(origin).map(str::to_string) {
        Some(id) => {
            r.sw.join(&id, target(addr), now);
            r.sw.flush(now);
            id
        }
        None => {
            let c =
                r.sw.open(
                    &alert(alert_id, addr),
                    now.wall,
                    vec![],
                    target(addr),
                    origin,
                    now,
                )
                .unwrap();
            c.decision.id
        }
    };
    r.sync();
    id
}

fn rig(max_auto_blocks: usize) -> (tempfile::TempDir, Rig) {
    let dir = tempfile::tempdir().unwrap();
    let r = Rig::with_limits(
        dir.path(),
        Limits {
            max_auto_blocks,
            ..Limits::default()
        },
    );
    (dir, r)
}

#[test]
fn one_origin_holds_one_decision_whatever_it_floods() {
    let (_d, mut r) = rig(32);
    let t0 = t0();
    let ids: std::collections::HashSet<String> = (0..300)
        .map(|i| {
            let addr = format!("198.51.{}.{}", 100 + i / 250, 1 + i % 250);
            offer(&mut r, &format!("a{i}"), &addr, WWW, t0)
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        r.sw.pending_count(),
        1,
        "max_pending never reached by one user"
    );
    // Another origin has its own.
    let other = offer(&mut r, "b", "203.0.113.77", "uid 1000", t0);
    assert!(!ids.contains(&other));
}

#[test]
fn the_timer_blocks_at_most_max_auto_blocks_per_origin_and_hour_the_rest_waits() {
    let (_d, mut r) = rig(3);
    let trust = TrustSet::default();
    let t0 = t0();
    let first = offer(&mut r, "a", "198.51.100.1", WWW, t0);
    for i in 2..=5 {
        offer(&mut r, "a", &format!("198.51.100.{i}"), WWW, t0);
    }
    let due = t0.after(T.countdown);
    let ended = r.tick(&trust, due);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].decision.id, first);
    assert_eq!(
        ended[0].decision.targets,
        [ip("198.51.100.1"), ip("198.51.100.2"), ip("198.51.100.3")],
        "the first targets (the alerted one first) within the budget"
    );
    assert_eq!(r.recorded().len(), 3);
    // The rest moved to a follow-up that waits for a human, and says why.
    let waiting = r.sw.pending_of(WWW).unwrap().to_string();
    assert_ne!(waiting, first);
    let stored = r.worker.ledger().get(&waiting).unwrap().unwrap();
    assert_eq!(stored.targets, [ip("198.51.100.4"), ip("198.51.100.5")]);
    assert!(
        stored
            .waiting
            .as_deref()
            .unwrap()
            .contains("max_auto_blocks (3)"),
        "{stored:?}"
    );
    // Hours of silence later it is still waiting, and new findings of the origin join it.
    let much_later = due.after(Duration::from_secs(1800));
    assert!(r.tick(&trust, much_later).is_empty());
    assert_eq!(offer(&mut r, "c", "198.51.100.6", WWW, much_later), waiting);
    assert_eq!(r.recorded().len(), 3);
    // A human's CONFIRM BLOCK is never capped.
    r.answer(&trust, &waiting, Verdict::Block, much_later)
        .unwrap();
    assert_eq!(r.recorded().len(), 6);
}

#[test]
fn a_spent_budget_comes_back_after_an_hour_and_other_origins_keep_theirs() {
    let (_d, mut r) = rig(1);
    let trust = TrustSet::default();
    let t0 = t0();
    offer(&mut r, "a", "198.51.100.1", WWW, t0);
    assert_eq!(r.tick(&trust, t0.after(T.countdown)).len(), 1);
    // The next decision of the same user waits at its deadline …
    let t1 = t0.after(T.countdown + Duration::from_secs(1));
    let waits = offer(&mut r, "b", "198.51.100.2", WWW, t1);
    assert!(r.tick(&trust, t1.after(T.countdown)).is_empty());
    assert!(r.sw.is_pending(&waits));
    let stored = r.worker.ledger().get(&waits).unwrap().unwrap();
    assert!(stored.waiting.is_some(), "{stored:?}");
    // … while another user's is blocked as usual.
    let other = offer(&mut r, "c", "198.51.100.3", "uid 1000", t1);
    let ended = r.tick(&trust, t1.after(T.countdown));
    assert_eq!(
        ended
            .iter()
            .map(|c| c.decision.id.clone())
            .collect::<Vec<_>>(),
        [other]
    );
    // An hour on, the user's budget is back: a new decision is blocked at its deadline.
    let t2 = t0.after(crate::switch::origin::HOUR + T.countdown * 2);
    r.answer(&trust, &waits, Verdict::Safe, t2).unwrap();
    offer(&mut r, "d", "198.51.100.4", WWW, t2);
    assert_eq!(r.tick(&trust, t2.after(T.countdown)).len(), 1);
}
