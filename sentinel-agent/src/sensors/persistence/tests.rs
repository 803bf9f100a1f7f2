use std::{process::Command, time::Duration};

use super::{fanotify::dfid_name, *};

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: fanotify needs root (CAP_SYS_ADMIN)");
    false
}

/// Run `script` in `sh`; its pid.
fn sh(script: &str) -> u32 {
    let mut child = Command::new("/bin/sh")
        .args(["-c", script])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "{script}");
    pid
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Work>) -> Option<Write> {
    match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        Ok(Some(Work::Persisted(w))) => Some(w),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn writes_are_reported_with_their_writer_and_nothing_else_is() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cron_d = d.join("cron.d");
    let units = d.join("system");
    let other = d.join("other");
    for x in [&cron_d, &units, &other] {
        std::fs::create_dir(x).unwrap();
    }
    std::fs::create_dir(units.join("multi-user.target.wants")).unwrap();
    let watches = vec![
        Watch::dir(&cron_d.display().to_string(), Location::Cron),
        Watch {
            subdirs: true,
            ..Watch::dir(&units.display().to_string(), Location::SystemdUnit)
        },
        Watch::files(d, &["passwd"], Location::Accounts),
        Watch::files(d.join("home/.ssh"), &["authorized_keys"], Location::SshKeys),
        Watch::dir(
            &d.join("absent/deeper").display().to_string(),
            Location::Pam,
        ),
    ];
    std::fs::create_dir(d.join("home")).unwrap();
    let sensor = Sensor::new(&watches).unwrap();
    // cron.d, system, its subdirectory, the directory itself (for passwd), home (for .ssh).
    assert_eq!(sensor.marked(), 5);
    let (tx, mut rx) = mpsc::unbounded_channel();
    sensor.spawn(tx).unwrap();

    // Written in place by a short-lived shell.
    let pid = sh(&format!(
        "echo '* * * * * root true' > {}/job",
        cron_d.display()
    ));
    let w = next(&mut rx).await.expect("the write");
    assert_eq!(
        (w.pid, w.path.clone(), w.location),
        (pid, cron_d.join("job"), Location::Cron)
    );
    // Moved in from elsewhere: the mover is the writer.
    std::fs::write(other.join("x.timer"), "[Timer]\n").unwrap();
    let pid = sh(&format!(
        "exec mv {}/x.timer {}/",
        other.display(),
        units.display()
    ));
    let w = next(&mut rx).await.expect("the move");
    assert_eq!(
        (w.pid, w.location, w.how),
        (pid, Location::SystemdTimer, "moved in")
    );
    // A link in a subdirectory (`systemctl enable`).
    let pid = sh(&format!(
        "exec ln -s /dev/null {}/multi-user.target.wants/y.service",
        units.display()
    ));
    let w = next(&mut rx).await.expect("the link");
    assert_eq!((w.pid, w.how), (pid, "created"));
    // Only the file asked for in a shared directory; writes elsewhere are not seen at all.
    sh(&format!(
        "echo x > {0}/not-passwd; echo x > {1}/y; for i in 1 2 3; do echo $i >> {1}/z; done",
        d.display(),
        other.display()
    ));
    let pid = sh(&format!(": >> {}/passwd", d.display()));
    let w = next(&mut rx).await.expect("passwd");
    assert_eq!((w.pid, w.path.clone()), (pid, d.join("passwd")));
    // A directory created where one is expected, filled at once: watched from then on, and
    // what it held is its creator's.
    let pid = sh(&format!(
        "mkdir {0}/home/.ssh && echo key > {0}/home/.ssh/authorized_keys && echo x > {0}/home/.ssh/other",
        d.display()
    ));
    let mut seen = Vec::new();
    while let Some(w) = next(&mut rx).await {
        seen.push(w);
    }
    let keys = d.join("home/.ssh/authorized_keys");
    assert!(
        seen.iter()
            .any(|w| w.path == keys && w.location == Location::SshKeys),
        "{seen:?}"
    );
    assert!(seen.iter().all(|w| w.path == keys), "{seen:?}");
    let _ = pid;
    let pid = sh(&format!("echo key2 >> {}", keys.display()));
    let w = next(&mut rx).await.expect("the second key");
    assert_eq!((w.pid, w.path), (pid, keys));
    assert!(next(&mut rx).await.is_none());
}

#[test]
fn homes_come_from_passwd_without_system_directories() {
    let passwd = "root:x:0:0::/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
                  www-data:x:33:33::/var/www:/usr/sbin/nologin\nsshd:x:102:65534::/run/sshd:/x\n\
                  nobody:x:65534:65534::/nonexistent:/x\nalice:x:1000:1000::/home/alice/:/bin/sh\n\
                  twin:x:1001:1001::/home/alice:/bin/sh\nbad line\n";
    assert_eq!(
        homes(passwd),
        ["/root", "/var/www", "/home/alice"].map(PathBuf::from)
    );
    let all = locations(
        passwd,
        &["/etc/crontab".into(), "/etc/cron.d".into()],
        "x86_64",
    );
    let has = |dir: &str, loc: Location| {
        all.iter()
            .any(|w| w.dir == Path::new(dir) && w.location == loc)
    };
    assert!(has("/etc", Location::Cron));
    assert!(has("/etc/cron.d", Location::Cron));
    assert!(has("/root/.ssh", Location::SshKeys));
    assert!(has("/var/www/.ssh", Location::SshKeys));
    assert!(has("/home/alice", Location::ShellStartup));
    assert!(has("/usr/lib/x86_64-linux-gnu/security", Location::Pam));
    assert!(has("/etc/sudoers.d", Location::Sudoers));
    assert!(has("/var/spool/cron/atjobs", Location::At));
}

#[test]
fn malformed_event_records_end_the_parse_without_a_panic() {
    assert!(parse(&[]).is_empty());
    assert!(parse(&[0xff; 7]).is_empty());
    // An event_len past the buffer.
    let mut buf = vec![0u8; 24];
    buf[..4].copy_from_slice(&100u32.to_ne_bytes());
    assert!(parse(&buf).is_empty());
    // An info record with a length past its event.
    assert!(dfid_name(&[2, 0, 200, 0]).is_none());
    assert!(dfid_name(&[2, 0, 3, 0, 1, 2, 3]).is_none());
}

/// An overlayfs mount in a temp directory, unmounted on drop.
struct Overlay(PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_filesystem_without_file_handles_is_watched_for_writes_in_place() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["lower/cron.d", "upper", "work", "merged"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let merged = d.join("merged");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        d.join("lower").display(),
        d.join("upper").display(),
        d.join("work").display()
    );
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mounting an overlay");
    let _mount = Overlay(merged.clone());
    let cron_d = merged.join("cron.d");
    let sensor = Sensor::new(&[Watch::dir(&cron_d.display().to_string(), Location::Cron)]).unwrap();
    // Overlayfs without nfs_export has no file handles: the classic group took it.
    assert_eq!(sensor.marked(), 0);
    assert_eq!(sensor.classic.as_ref().map(|c| c.dirs.len()), Some(1));
    let (tx, mut rx) = mpsc::unbounded_channel();
    sensor.spawn(tx).unwrap();
    let pid = sh(&format!(
        "echo '* * * * * root true' > {}/job",
        cron_d.display()
    ));
    let w = next(&mut rx).await.expect("the write");
    assert_eq!(
        (w.pid, w.path, w.location),
        (pid, cron_d.join("job"), Location::Cron)
    );
    sh(&format!("echo x > {}/elsewhere", merged.display()));
    assert!(next(&mut rx).await.is_none());
}
