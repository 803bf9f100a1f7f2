//! Signed links: what they cover, when they expire, the secret file, and marking safe or
//! confirming a block through them (also in headless Chromium).

use super::*;

#[test]
fn signatures_cover_id_action_and_expiry() {
    let s = Secret::from_bytes(KEY);
    let sig = s.sign("d1", Verdict::Safe, 100);
    assert_eq!(sig.len(), 64);
    assert!(s.verify("d1", Verdict::Safe, 100, &sig));
    assert!(!s.verify("d2", Verdict::Safe, 100, &sig));
    assert!(!s.verify("d1", Verdict::Block, 100, &sig));
    assert!(!s.verify("d1", Verdict::Safe, 101, &sig));
    assert!(!s.verify("d1", Verdict::Safe, 100, "zz"));
    let other = Secret::from_bytes(b"another key of at least 32 bytes...");
    assert!(!other.verify("d1", Verdict::Safe, 100, &sig));
    assert_eq!(format!("{s:?}"), "Secret(..)");
}

#[test]
fn links_expire_at_the_deadline_rounded_up() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_500);
    assert_eq!(expiry(t), 1001);
    let link = decide_link(
        "https://sentinel.example/",
        &Secret::from_bytes(KEY),
        "d1",
        Verdict::Block,
        t,
    );
    assert!(
        link.starts_with("https://sentinel.example/v1/decide?id=d1&action=block&exp=1001&sig="),
        "{link}"
    );
}

#[test]
fn secret_file_must_be_private_and_long_enough() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("override.key");
    let err = Secret::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("override.key") && err.contains("cannot read"),
        "{err}"
    );

    std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Secret::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("readable by others") && err.contains("chmod go-rwx"),
        "{err}"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = Secret::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("owned by uid 65534, not root") && err.contains("chown root"),
            "{err}"
        );
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    }
    let s = Secret::load(&path).unwrap();
    assert_eq!(s.len(), 64, "the trailing newline is not part of the key");

    std::fs::write(&path, "short\n").unwrap();
    let err = Secret::load(&path).unwrap_err().to_string();
    assert!(err.contains("5 bytes is too short"), "{err}");
    assert!(!err.contains("short\n"), "the key is never shown: {err}");

    let err = Secret::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[tokio::test]
async fn signed_link_marks_safe_once() {
    let e = endpoint().await;
    let deadline = SystemTime::now() + Duration::from_secs(300);
    let link = e.link("d1", Verdict::Safe, deadline);

    // Opening the link (as a chat preview would) changes nothing.
    let (status, page) = e.open(&link).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("MARK AS SAFE"), "{page}");
    assert_eq!(e.switch.state("d1"), State::Pending);

    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("safe"), "{page}");
    assert_eq!(e.switch.state("d1"), State::Safe);
    assert_eq!(e.switch.decided_by("d1").as_deref(), Some("teams-link"));

    // Replayed: refused before it reaches the switch.
    let (status, _) = e.open(&link).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let answers = e.switch.answers_seen();
    let (status, body) = e
        .submit(&[
            ("id".into(), "d1".into()),
            ("action".into(), "safe".into()),
            ("exp".into(), expiry(deadline).to_string()),
            (
                "sig".into(),
                e.secret.sign("d1", Verdict::Safe, expiry(deadline)),
            ),
        ])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("already used"), "{body}");
    assert_eq!(e.switch.answers_seen(), answers);

    // The other link of the same decision: signed and fresh, but the decision has ended.
    let (status, body) = e.press(&e.link("d1", Verdict::Block, deadline)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("already ended: safe"), "{body}");
    assert_eq!(e.switch.state("d1"), State::Safe);
}

/// Run blocking browser work off the runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// The confirmation page in a real browser (headless Chromium over DevTools): opening the
/// MARK AS SAFE link, as a link preview does, changes nothing; pressing the page's button ends
/// the decision; pressing it again on a second copy of the page shows "already used" and
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirmation_page_works_in_headless_chromium() {
    let binary = super::chromium::binary()
        .expect("chromium is not installed: run scripts/setup.sh (it installs Debian's chromium)");
    let e = endpoint().await;
    let link = e.link(
        "d1",
        Verdict::Safe,
        SystemTime::now() + Duration::from_secs(300),
    );
    let browser = blocking(move || super::chromium::Browser::start(binary)).await;
    let browser = Arc::new(browser);

    // Previews: the page is shown twice, nothing is decided.
    let (b, l) = (browser.clone(), link.clone());
    let (mut first, mut second, page) = blocking(move || {
        let mut first = b.open(&l);
        let page = first.text();
        (first, b.open(&l), page)
    })
    .await;
    assert!(
        page.contains("MARK AS SAFE") && page.contains("d1"),
        "{page}"
    );
    assert_eq!(
        e.switch.state("d1"),
        State::Pending,
        "opening the link decided"
    );
    assert!(e.switch.answers_seen().is_empty());

    let (first, page) = blocking(move || {
        first.press("MARK AS SAFE");
        let page = first.text();
        (first, page)
    })
    .await;
    assert!(page.contains("is now safe"), "{page}");
    assert_eq!(e.switch.state("d1"), State::Safe);
    assert_eq!(e.switch.decided_by("d1").as_deref(), Some("teams-link"));

    let (b, l) = (browser.clone(), link.clone());
    let (again, reopened) = blocking(move || {
        second.press("MARK AS SAFE");
        let again = second.text();
        (again, b.open(&l).text())
    })
    .await;
    assert!(again.contains("already used"), "{again}");
    assert!(reopened.contains("already used"), "{reopened}");
    assert_eq!(
        e.switch.answers_seen().len(),
        1,
        "the second press reached the switch"
    );
    drop(first);
}

#[tokio::test]
async fn signed_link_confirms_block() {
    let e = endpoint().await;
    let link = e.link(
        "d2",
        Verdict::Block,
        SystemTime::now() + Duration::from_secs(60),
    );
    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(e.switch.state("d2"), State::Blocked);
}

/// A switch that cannot take the first answer (it goes away without replying, as when the
/// agent is stopping or the switch is busy) does not spend the link: pressed again, it lands,
/// and only then is it used up.
#[tokio::test]
async fn a_link_that_met_a_busy_switch_can_be_used_again() {
    let e = endpoint_through(Limits::default(), |switch| {
        let (tx, mut rx) = mpsc::channel::<Answer>(4);
        tokio::spawn(async move {
            let first = rx.recv().await;
            drop(first);
            while let Some(answer) = rx.recv().await {
                if switch.send(answer).await.is_err() {
                    return;
                }
            }
        });
        tx
    })
    .await;
    let link = e.link(
        "d1",
        Verdict::Block,
        SystemTime::now() + Duration::from_secs(300),
    );
    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert_eq!(e.switch.state("d1"), State::Pending);
    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "the link was not spent: {page}");
    assert_eq!(e.switch.state("d1"), State::Blocked);
    let (status, page) = e.open(&link).await;
    assert_eq!(status, StatusCode::CONFLICT, "now it is: {page}");
    assert!(page.contains("already used"), "{page}");
}
