use std::sync::Arc;

use super::*;
use crate::detect::Severity;

fn write(path: &str, location: Location) -> Write {
    Write {
        pid: 50,
        path: path.into(),
        location,
        how: "written",
        seen_ns: 0,
    }
}

fn culprit(comm: &str, uid: u32, ancestry: &[&str]) -> Culprit {
    Culprit {
        pid: 50,
        start: 1,
        comm: comm.into(),
        exe: Some(format!("/usr/bin/{comm}").into()),
        uid,
        ancestry: ancestry
            .iter()
            .enumerate()
            .map(|(i, c)| (40 - i as u32, Arc::from(*c)))
            .collect(),
        container: None,
    }
}

#[test]
fn who_wrote_decides_the_verdict() {
    let config = PersistenceConfig::default();
    let cron = write("/etc/cron.d/x", Location::Cron);
    let server = Writer {
        server: Some((40, "nginx".into())),
        ..Writer::default()
    };
    let dpkg = Writer {
        package_manager: Some("dpkg".into()),
        installed: true,
        ..Writer::default()
    };
    let installed = Writer {
        installed: true,
        ..Writer::default()
    };
    let www = Writer {
        user: Some("www-data".into()),
        ..Writer::default()
    };
    let alice = Writer {
        user: Some("alice".into()),
        home: Some("/home/alice".into()),
        ..Writer::default()
    };
    let judge = |w: &Write, c: &Culprit, wr: &Writer| config.judge(w, c, wr);
    let sh = culprit("sh", 0, &["bash", "sshd"]);
    // Below a web server, even as root, and even a package manager's name.
    assert!(matches!(judge(&cron, &sh, &server), Verdict::Critical(_)));
    // A service user, with or without a name.
    let as_www = culprit("sh", 33, &["python3"]);
    assert!(matches!(judge(&cron, &as_www, &www), Verdict::Critical(_)));
    assert!(matches!(
        judge(&cron, &culprit("sh", 65534, &[]), &Writer::default()),
        Verdict::Critical(_)
    ));
    // A root shell: high.
    assert!(matches!(
        judge(&cron, &sh, &Writer::default()),
        Verdict::High(_)
    ));
    // The package manager and an installed admin tool: nothing.
    assert_eq!(
        judge(&cron, &culprit("dpkg", 0, &["bash"]), &dpkg),
        Verdict::Benign("a package manager")
    );
    let crontab = culprit("crontab", 0, &["bash", "sshd"]);
    assert_eq!(
        judge(&cron, &crontab, &installed),
        Verdict::Benign("an admin tool")
    );
    // A `crontab` that is not the installed one is not the admin tool.
    assert!(matches!(
        judge(&cron, &crontab, &Writer::default()),
        Verdict::High(_)
    ));
    // Configuration management run by root; not when run by someone else.
    let ansible = culprit("python3", 0, &["sh", "ansible-playboo", "bash"]);
    assert!(matches!(
        judge(&cron, &ansible, &Writer::default()),
        Verdict::Benign(_)
    ));
    // A login user in their own home; not in someone else's.
    let keys = write("/home/alice/.ssh/authorized_keys", Location::SshKeys);
    let own = culprit("sh", 1000, &["bash"]);
    assert!(matches!(judge(&keys, &own, &alice), Verdict::Benign(_)));
    let root_keys = write("/root/.ssh/authorized_keys", Location::SshKeys);
    assert!(matches!(judge(&root_keys, &own, &alice), Verdict::High(_)));
}

#[test]
fn every_location_has_its_technique_and_severity() {
    use Location::*;
    let table = [
        (Cron, "T1053.003"),
        (At, "T1053.002"),
        (SystemdUnit, "T1543.002"),
        (SystemdTimer, "T1053.006"),
        (SshKeys, "T1098.004"),
        (Preload, "T1574.006"),
        (ShellStartup, "T1546.004"),
        (Sudoers, "T1548.003"),
        (RcLocal, "T1037.004"),
        (Accounts, "T1136.001"),
        (Pam, "T1556.003"),
        (KernelModules, "T1547.006"),
    ];
    for (location, technique) in table {
        for (critical, severity) in [(false, Severity::High), (true, Severity::Critical)] {
            let a = Anomaly::Persistence { critical, location };
            assert_eq!(a.name(), "persistence");
            assert_eq!(a.mitre().technique, technique);
            assert_eq!(a.severity(), severity);
        }
    }
    assert_eq!(SystemdUnit.of_name("x.timer"), SystemdTimer);
    assert_eq!(SystemdUnit.of_name("x.service"), SystemdUnit);
    assert_eq!(Cron.of_name("x.timer"), Cron);
}

#[test]
fn the_alert_names_the_file_and_escapes_what_the_writer_chose() {
    let w = write("/etc/cron.d/a\nb", Location::Cron);
    let verdict = Verdict::Critical("below the web server node (40)".into());
    let f = finding(&w, culprit("sh", 0, &[]), &verdict).unwrap();
    assert_eq!(
        f.detail,
        "cron /etc/cron.d/a\\nb written by sh (/usr/bin/sh, pid 50) below the web server node (40)"
    );
    assert_eq!(f.anomaly.severity(), Severity::Critical);
    assert!(finding(&w, culprit("sh", 0, &[]), &Verdict::Benign("x")).is_none());
    // Never killed: the file stays; the decision is on the tree's destinations.
    let mut alerts = crate::detect::Alerts::with_ids(
        std::time::Duration::from_secs(60),
        crate::detect::tests::ids(),
    );
    let crate::detect::Outcome::New(alert) = alerts.raise(f, std::time::Instant::now()) else {
        panic!()
    };
    assert!(!crate::detect::kills(&alert));
}
