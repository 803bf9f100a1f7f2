//! The kill engine's plans on plain snapshots: who is a target, when it widens, what is spared.

use super::*;

const AGENT: u32 = 99;

fn p(ppid: u32, comm: &str, exe: Option<&str>, forked_by: u32) -> Facts {
    Facts {
        ppid,
        start: 1000,
        comm: comm.into(),
        exe: exe.map(Into::into),
        exe_id: None,
        forked_by,
        login_leader: false,
    }
}

/// systemd (1) → sshd (5) → session (6) → login shell (7); systemd → node (10) → sh (20)
/// → /tmp/xmrig (21); systemd → the agent (99).
fn host() -> Snapshot {
    let mut s = Snapshot::from([
        (1, p(0, "systemd", Some("/usr/lib/systemd/systemd"), 0)),
        (5, p(1, "sshd", Some("/usr/sbin/sshd"), 1)),
        (6, p(5, "sshd", Some("/usr/sbin/sshd"), 5)),
        (7, p(6, "bash", Some("/usr/bin/bash"), 6)),
        (10, p(1, "node", Some("/usr/bin/node"), 1)),
        (20, p(10, "sh", Some("/usr/bin/dash"), 10)),
        (21, p(20, "xmrig", Some("/tmp/xmrig"), 20)),
        (AGENT, p(1, "sentinel", Some("/usr/local/bin/sentinel"), 1)),
    ]);
    s.get_mut(&7).unwrap().login_leader = true;
    s
}

fn killer() -> Killer {
    Killer::new(Duration::from_secs(1), vec![], AGENT, Path::new("/proc"))
}

/// `pid` as an alert names it: with its start time.
fn at(snap: &Snapshot, pid: u32) -> (u32, u64) {
    (pid, snap[&pid].start)
}

fn pids(plan: &Plan) -> Vec<u32> {
    plan.targets.iter().map(|t| t.pid).collect()
}

/// `pid` exits and `new` (same program) appears under its parent, started later.
fn respawn(snap: &mut Snapshot, pid: u32, new: u32) {
    let mut f = snap.remove(&pid).unwrap();
    f.start += 500;
    f.forked_by = f.ppid;
    snap.insert(new, f);
}

#[test]
fn kills_the_subtree_once_and_repeats_change_nothing() {
    let mut snap = host();
    snap.insert(22, p(10, "sh", Some("/usr/bin/dash"), 10));
    let mut k = killer();
    let now = Instant::now();
    let plan = k.plan(&snap, "a1", at(&snap, 20), now);
    assert_eq!((pids(&plan), plan.escalated), (vec![20, 21], false));
    // A repeat while the process lingers (SIGTERM ignored, grace running): nothing.
    let again = k.plan(&snap, "a1", at(&snap, 20), now + Duration::from_secs(1));
    assert!(again.targets.is_empty(), "{again:?}");
    assert!(k.settled("a1", 20, 1000));
    // A repeat of the same alert naming another process that was already there.
    snap.remove(&20);
    let other = k.plan(&snap, "a1", at(&snap, 22), now + Duration::from_secs(2));
    assert!(other.targets.is_empty(), "{other:?}");
}

#[test]
fn a_reused_pid_is_never_planned() {
    // The alert named /tmp/xmrig (21, started at 1000); it exited and its pid now belongs
    // to another process, with a child of its own.
    let mut snap = host();
    let alerted = at(&snap, 21);
    let bystander = snap.get_mut(&21).unwrap();
    (bystander.start, bystander.comm) = (2000, "postgres".into());
    bystander.exe = Some("/usr/lib/postgresql/bin/postgres".into());
    snap.insert(
        25,
        p(21, "postgres", Some("/usr/lib/postgresql/bin/postgres"), 21),
    );
    let mut k = killer();
    let plan = k.plan(&snap, "a1", alerted, Instant::now());
    assert!(plan.targets.is_empty(), "{plan:?}");
    assert!(plan.note.unwrap().contains("another process"));
    // Nothing was recorded: an alert on the process that holds the pid now is answered.
    assert_eq!(
        pids(&k.plan(&snap, "a2", at(&snap, 21), Instant::now())),
        [21, 25]
    );
}

#[test]
fn a_double_forked_burner_under_pid_1_never_widens() {
    // The burner's forking parent (40) exited: it was adopted by pid 1.
    let mut snap = host();
    snap.insert(50, p(1, "burn", Some("/tmp/burn"), 40));
    snap.insert(60, p(1, "bystander", Some("/usr/bin/sleep"), 41));
    let mut k = killer();
    let now = Instant::now();
    assert_eq!(pids(&k.plan(&snap, "r1", at(&snap, 50), now)), [50]);
    for i in 1..5 {
        let plan = k.plan(&snap, "r1", at(&snap, 50), now + Duration::from_secs(i));
        assert!(plan.targets.is_empty(), "{plan:?}");
    }
    // It comes back under pid 1 (a service manager restarting it): only the new one.
    respawn(&mut snap, 50, 51);
    let plan = k.plan(&snap, "r2", at(&snap, 51), now + Duration::from_secs(6));
    assert_eq!(pids(&plan), [51]);
    assert!(!plan.escalated);
    assert!(plan.note.unwrap().contains("pid 1"));
}

#[test]
fn a_real_respawn_escalates_to_the_loop_that_respawns() {
    let mut snap = host();
    let mut k = killer();
    let now = Instant::now();
    assert_eq!(pids(&k.plan(&snap, "r1", at(&snap, 21), now)), [21]);
    respawn(&mut snap, 21, 23);
    let plan = k.plan(&snap, "r2", at(&snap, 23), now + Duration::from_secs(3));
    assert!(plan.escalated, "{plan:?}");
    assert_eq!(pids(&plan), [20, 23]);
    // Long after the kill it is a fresh start, not a respawn.
    let mut k = killer();
    let mut snap = host();
    k.plan(&snap, "r1", at(&snap, 21), now);
    respawn(&mut snap, 21, 24);
    let late = k.plan(&snap, "r3", at(&snap, 24), now + RESPAWN_WINDOW);
    assert_eq!((pids(&late), late.escalated), (vec![24], false));
}

#[test]
fn never_escalates_to_a_subreaper() {
    // 70 adopted 71 (forked by 72, gone), and also forks burners itself.
    let mut snap = host();
    snap.insert(70, p(1, "supervise", Some("/usr/bin/supervise"), 1));
    snap.insert(71, p(70, "orphan", Some("/usr/bin/sleep"), 72));
    snap.insert(73, p(70, "burn", Some("/tmp/burn"), 70));
    let mut k = killer();
    let now = Instant::now();
    k.plan(&snap, "r1", at(&snap, 73), now);
    respawn(&mut snap, 73, 74);
    let plan = k.plan(&snap, "r2", at(&snap, 74), now + Duration::from_secs(3));
    assert_eq!((pids(&plan), plan.escalated), (vec![74], false));
    assert!(plan.note.unwrap().contains("subreaper"));
}

#[test]
fn never_escalates_over_a_login_session_or_sshd() {
    // A burner respawned by the operator's login shell: the shell is spared.
    let mut snap = host();
    snap.insert(80, p(7, "burn", Some("/tmp/burn"), 7));
    let mut k = killer();
    let now = Instant::now();
    k.plan(&snap, "r1", at(&snap, 80), now);
    respawn(&mut snap, 80, 81);
    let plan = k.plan(&snap, "r2", at(&snap, 81), now + Duration::from_secs(3));
    assert_eq!((pids(&plan), plan.escalated), (vec![81], false));
    assert!(plan.note.unwrap().contains("login session"));
    // A loop started from that shell is fair game: its subtree holds no login.
    snap.insert(90, p(7, "bash", Some("/usr/bin/bash"), 7));
    snap.insert(91, p(90, "burn2", Some("/tmp/burn2"), 90));
    k.plan(&snap, "r3", at(&snap, 91), now);
    respawn(&mut snap, 91, 92);
    let plan = k.plan(&snap, "r4", at(&snap, 92), now + Duration::from_secs(3));
    assert_eq!((pids(&plan), plan.escalated), (vec![90, 92], true));
    // A supervisor whose subtree holds sshd is never a target.
    let mut snap = host();
    snap.insert(30, p(1, "runsv", Some("/usr/bin/runsv"), 1));
    let sshd = snap.get_mut(&5).unwrap();
    (sshd.ppid, sshd.forked_by) = (30, 30);
    snap.insert(31, p(30, "burn", Some("/tmp/burn"), 30));
    let mut k = killer();
    k.plan(&snap, "r1", at(&snap, 31), now);
    respawn(&mut snap, 31, 32);
    let plan = k.plan(&snap, "r2", at(&snap, 32), now + Duration::from_secs(3));
    assert_eq!((pids(&plan), plan.escalated), (vec![32], false));
    assert!(plan.note.unwrap().contains("/usr/sbin/sshd"));
}

#[test]
fn protection_goes_by_executable_not_by_name() {
    let mut snap = host();
    // A miner calling itself sshd is no sshd; sshd renamed is still sshd.
    snap.insert(40, p(10, "sshd", Some("/tmp/.x/sshd"), 10));
    snap.insert(41, p(10, "xmrig", Some("/usr/sbin/sshd"), 10));
    // Unknown executable (running since before the agent): the name can only spare it.
    snap.insert(42, p(10, "sshd", None, 0));
    snap.insert(43, p(10, "node", None, 0));
    let k = Killer::new(
        Duration::from_secs(1),
        vec!["node".into(), "/opt/app/bin/worker".into()],
        AGENT,
        Path::new("/proc"),
    );
    assert_eq!(k.protected_reason(&snap, 40), None);
    assert!(k.protected_reason(&snap, 41).is_some());
    assert!(k.protected_reason(&snap, 42).is_some());
    assert!(
        k.protected_reason(&snap, 43).is_some(),
        "enforce.protect by name"
    );
    assert!(
        k.protected_reason(&snap, 10).is_some(),
        "/usr/bin/node by name"
    );
    assert!(k.protected_reason(&snap, 1).is_some());
    assert!(k.protected_reason(&snap, AGENT).is_some());
    assert!(k.protected_reason(&snap, 20).is_none());
    snap.insert(44, p(10, "worker", Some("/opt/app/bin/worker"), 10));
    snap.insert(45, p(10, "worker", Some("/tmp/worker"), 10));
    assert!(k.protected_reason(&snap, 44).is_some(), "by path");
    assert!(
        k.protected_reason(&snap, 45).is_none(),
        "a path names one file"
    );
}

#[test]
fn the_agent_and_its_ancestors_are_never_targets() {
    // The agent runs below the culprit (e.g. started from a shell the alert names).
    let mut snap = host();
    snap.get_mut(&AGENT).unwrap().ppid = 21;
    let mut k = killer();
    let plan = k.plan(&snap, "a", at(&snap, 20), Instant::now());
    assert!(plan.targets.is_empty(), "{plan:?}");
    // Beside the culprit's own child: that child still goes.
    snap.get_mut(&AGENT).unwrap().ppid = 20;
    let mut k = killer();
    assert_eq!(
        pids(&k.plan(&snap, "a", at(&snap, 20), Instant::now())),
        [21]
    );
}
