//! A SAFE from a chat message covers the targets that message showed, never one that joined
//! since (`Switch::keep_unseen_targets`).

use super::*;

#[test]
fn a_chat_safe_covers_what_its_message_showed_and_the_rest_keeps_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let trust = TrustSet::default();
    let t0 = t0();
    // Announced with the decoy alone; the real C2 joins a moment later (no new message: the
    // set has not grown tenfold).
    let id = r.open("a", "198.51.100.7", t0).unwrap().decision.id;
    assert!(r.join(&id, "203.0.113.66", t0.after(Duration::from_secs(1))));
    let answered = t0.after(Duration::from_secs(2));
    let c =
        r.sw.answer(&trust, &id, Verdict::Safe, "slack:U1", answered, None)
            .unwrap();
    r.sync();
    assert_eq!(
        c.decision.targets,
        [ip("198.51.100.7")],
        "only what was shown"
    );
    assert!(r.sw.is_safe(ip("198.51.100.7"), answered.wall));
    assert!(!r.sw.is_safe(ip("203.0.113.66"), answered.wall));
    // The C2 is in a follow-up with the original deadline, announced (opened in the ledger).
    let follow = r.worker.ledger().get(&format!("{id}.2")).unwrap().unwrap();
    assert_eq!(follow.targets, [ip("203.0.113.66")]);
    assert_eq!(follow.state, State::Pending);
    assert_eq!(follow.deadline, t0.wall + T.countdown);
    assert_eq!(follow.waiting, None);
    // Silence blocks it at that deadline.
    let ended = r.tick(&trust, t0.after(T.countdown));
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].decision.state, State::AutoBlocked);
    assert_eq!(r.recorded(), [ip("203.0.113.66")]);
}

#[test]
fn the_cli_safe_covers_every_target_pending_shows() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let trust = TrustSet::default();
    let t0 = t0();
    let id = r.open("a", "198.51.100.7", t0).unwrap().decision.id;
    assert!(r.join(&id, "203.0.113.66", t0));
    let c = r.answer(&trust, &id, Verdict::Safe, t0).unwrap();
    assert_eq!(c.decision.targets.len(), 2);
    assert_eq!(r.sw.pending_count(), 0);
}

#[test]
fn a_chat_safe_after_a_follow_up_covers_what_the_follow_up_showed() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rig::new(dir.path());
    let trust = TrustSet::default();
    let t0 = t0();
    let id = r.open("a", "198.51.100.1", t0).unwrap().decision.id;
    // Ten targets a minute later: a follow-up message shows all ten.
    let later = t0.after(Duration::from_secs(61));
    for i in 2..=10 {
        assert!(r.join(&id, &format!("198.51.100.{i}"), later));
    }
    let c =
        r.sw.answer(&trust, &id, Verdict::Safe, "telegram:42", later, None)
            .unwrap();
    r.sync();
    assert_eq!(c.decision.targets.len(), 10);
    assert_eq!(r.sw.pending_count(), 0);
}
