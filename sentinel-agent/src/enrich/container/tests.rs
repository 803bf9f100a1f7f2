use std::{fs, os::unix::fs::MetadataExt};

use super::*;

const ID: &str = "40b15867205a3153fce6bc617936facbd70dc89d6f30744387dee82dd40eeb4c";

fn found(path: &str) -> Option<(&'static str, String, Option<u32>)> {
    parse_cgroup_path(path).map(|f| (f.runtime, f.id, f.user))
}

#[test]
fn container_ids_come_from_real_cgroup_paths() {
    let podman = Some(("podman", ID.to_string(), None));
    // Podman with cgroupfs (hybrid hosts), with systemd, and its split layout.
    assert_eq!(found(&format!("/libpod_parent/libpod-{ID}")), podman);
    assert_eq!(found(&format!("/machine.slice/libpod-{ID}.scope")), podman);
    assert_eq!(
        found(&format!("/machine.slice/libpod-{ID}.scope/container")),
        podman
    );
    // Rootless Podman: the user's uid comes along.
    assert_eq!(
        found(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
        )),
        Some(("podman", ID.to_string(), Some(1000)))
    );
    // Docker: systemd and cgroupfs drivers.
    let docker = Some(("docker", ID.to_string(), None));
    assert_eq!(found(&format!("/system.slice/docker-{ID}.scope")), docker);
    assert_eq!(found(&format!("/docker/{ID}")), docker);
    // containerd / CRI and CRI-O under Kubernetes.
    assert_eq!(
        found(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0d1c.slice/\
             cri-containerd-{ID}.scope"
        )),
        Some(("containerd", ID.to_string(), None))
    );
    assert_eq!(
        found(&format!("/kubepods/besteffort/pod0d1c-22/{ID}")),
        Some(("containerd", ID.to_string(), None))
    );
    assert_eq!(
        found(&format!("/kubepods.slice/crio-{ID}.scope")),
        Some(("cri-o", ID.to_string(), None))
    );
}

#[test]
fn containerd_and_cri_o_cgroup_paths_name_their_containers() {
    let containerd = Some(("containerd", ID.to_string(), None));
    let crio = Some(("cri-o", ID.to_string(), None));
    for (path, want) in [
        // Kubernetes, systemd driver: every QoS class, and a container's own sub-cgroups.
        (
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f1c_2a.slice/\
                 cri-containerd-{ID}.scope"
            ),
            &containerd,
        ),
        (
            format!("/kubepods.slice/kubepods-pod4f1c.slice/cri-containerd-{ID}.scope/init.scope"),
            &containerd,
        ),
        (
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod4f1c.slice/\
                 crio-{ID}.scope"
            ),
            &crio,
        ),
        // Kubernetes, cgroupfs driver: guaranteed pods have no QoS level.
        (format!("/kubepods/pod4f1c-2a/{ID}"), &containerd),
        (format!("/kubepods/burstable/pod4f1c-2a/crio-{ID}"), &crio),
        // nerdctl: systemd driver, and cgroupfs under the containerd namespace.
        (format!("/system.slice/nerdctl-{ID}.scope"), &containerd),
        (format!("/default/{ID}"), &containerd),
        (format!("/k8s.io/{ID}"), &containerd),
        // A bare containerd task started with a cgroup of its own name.
        (format!("/system.slice/containerd-{ID}.scope"), &containerd),
    ] {
        assert_eq!(&found(&path), want, "{path}");
    }
}

#[test]
fn host_cgroups_and_monitors_are_no_container() {
    for path in [
        "/",
        "/system.slice/nginx.service",
        "/user.slice/user-0.slice/session-3.scope",
        "/system.slice/docker.service",
        // Podman's monitor runs beside the container, not in it.
        &format!("/machine.slice/libpod-conmon-{ID}.scope"),
        &format!("/kubepods.slice/kubepods-pod4f1c.slice/crio-conmon-{ID}.scope"),
        // containerd's own service and a namespace without a task.
        "/system.slice/containerd.service",
        "/default",
        // Not 64 hex digits: a name someone chose.
        "/system.slice/docker-webapp.scope",
        &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
        &format!("/elsewhere/{ID}"),
    ] {
        assert_eq!(found(path), None, "{path}");
    }
}

#[test]
fn podman_state_names_the_container() {
    let json = format!(
        r#"[{{"id":"{ID}","names":["web"],"image":"a396","layer":"97",
        "metadata":"{{\"image-name\":\"localhost/sentinel-test/bookworm:latest\",\"image-id\":\"a396\",\"name\":\"web\",\"created-at\":1796577333}}",
        "created":"2026-12-06T17:15:33Z","flags":{{}}}}]"#
    );
    assert_eq!(
        podman_lookup(&json, ID),
        Some((
            Some("web".into()),
            Some("localhost/sentinel-test/bookworm:latest".into())
        ))
    );
    assert_eq!(podman_lookup(&json, &"0".repeat(64)), None);
    // Without metadata the image id stands in; garbage is no answer, not a crash.
    let bare = format!(r#"[{{"id":"{ID}","names":[],"image":"a396"}}]"#);
    assert_eq!(podman_lookup(&bare, ID), Some((None, Some("a396".into()))));
    assert_eq!(podman_lookup("[{\"id\":", ID), None);
    assert_eq!(podman_lookup("\u{0}\u{1}", ID), None);
}

#[test]
fn docker_state_names_the_container() {
    let json = r#"{"ID":"x","Name":"/shop","Config":{"Image":"node:20","Env":[]},"State":{}}"#;
    assert_eq!(
        docker_lookup(json),
        Some((Some("shop".into()), Some("node:20".into())))
    );
    assert_eq!(docker_lookup("nope"), None);
}

/// A fake machine: a cgroup root with real directories (their inodes are the ids) and a
/// `/proc` whose processes sit in them.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["cg", "proc", "storage/overlay-containers"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Machine { dir }
    }

    /// Process `pid` in cgroup `path`; the cgroup's id.
    fn process(&self, pid: u32, path: &str) -> u64 {
        let cg = self
            .dir
            .path()
            .join("cg")
            .join(path.trim_start_matches('/'));
        fs::create_dir_all(&cg).unwrap();
        let p = self.dir.path().join("proc").join(pid.to_string());
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("cgroup"), format!("1:cpu:{path}\n0::{path}\n")).unwrap();
        fs::metadata(cg).unwrap().ino()
    }

    fn containers(&self) -> Containers {
        Containers::new(
            ContainersConfig {
                podman_storage: vec![self.dir.path().join("storage")],
                docker_root: self.dir.path().join("docker"),
            },
            Some(self.dir.path().join("cg")),
            self.dir.path().join("proc"),
        )
        .with_walk_time(Duration::from_secs(60))
    }
}

#[test]
fn a_cgroup_is_resolved_once_then_cached() {
    let m = Machine::new();
    fs::write(
        m.dir.path().join("storage/overlay-containers/containers.json"),
        format!(
            r#"[{{"id":"{ID}","names":["web\u001b[31m"],"metadata":"{{\"image-name\":\"app:1\"}}"}}]"#
        ),
    )
    .unwrap();
    let cg = m.process(100, &format!("/libpod_parent/libpod-{ID}"));
    let host = m.process(200, "/system.slice/ssh.service");
    let mut c = m.containers();
    let first = c.of(cg, 100).expect("a container");
    assert_eq!(first.id, ID);
    assert_eq!(first.runtime, "podman");
    assert_eq!(first.name.as_deref(), Some("web\\x1b[31m"), "escaped");
    assert_eq!(first.image.as_deref(), Some("app:1"));
    assert_eq!(c.of(host, 200), None);
    // The cache answers without /proc: the process is gone, its cgroup still known.
    fs::remove_dir_all(m.dir.path().join("proc/100")).unwrap();
    assert_eq!(c.of(cg, 100), Some(first.clone()));
    assert_eq!(c.of(cg, 4242), Some(first));
    assert_eq!(c.seen(), 1);
    // A process known only from /proc (seeded at start) is found by its path.
    let pid300 = m.process(300, &format!("/libpod_parent/libpod-{ID}"));
    assert_eq!(pid300, cg);
    assert_eq!(
        c.of(0, 300).map(|c| c.runtime.clone()).as_deref(),
        Some("podman")
    );
}

#[test]
fn a_gone_process_is_found_by_its_cgroup_id_not_its_new_home() {
    let m = Machine::new();
    let old = m.process(100, &format!("/docker/{ID}"));
    // The process now sits elsewhere: its /proc path is not the kernel's id; the walk of the
    // cgroup tree finds the id's own directory.
    m.process(100, "/system.slice/cron.service");
    let mut c = m.containers();
    assert_eq!(
        c.of(old, 100).map(|c| c.runtime.clone()).as_deref(),
        Some("docker")
    );
    // A short-lived process already gone: the same walk.
    let other = "ab".repeat(32);
    let gone = m.process(200, &format!("/system.slice/docker-{other}.scope"));
    fs::remove_dir_all(m.dir.path().join("proc/200")).unwrap();
    assert_eq!(c.of(gone, 200).map(|c| c.id.clone()), Some(other));
    // A cgroup already removed is nobody's container (and is not walked again).
    assert_eq!(c.of(987_654_321, 300), None);
    assert_eq!(c.seen(), 2);
}

#[test]
fn the_cache_is_bounded_and_starts_afresh() {
    let m = Machine::new();
    let host = m.process(100, "/system.slice/ssh.service");
    let cg = m.process(200, &format!("/libpod_parent/libpod-{ID}"));
    let mut c = m.containers();
    assert!(c.of(cg, 200).is_some());
    // Fill the cache with cgroups that no longer exist (each remembered as no container).
    for id in 0..MAX_CGROUPS as u64 {
        c.of(1_000_000_000 + id, 4242);
    }
    assert!(c.by_cgroup.len() <= MAX_CGROUPS);
    // Known ones resolve again after a fresh start, from /proc.
    assert_eq!(c.of(host, 100), None);
    assert_eq!(c.of(cg, 200).map(|c| c.id.clone()).as_deref(), Some(ID));
    assert_eq!(c.seen(), 1);
}

#[test]
fn describe_reads_well() {
    let c = Container {
        id: ID.into(),
        runtime: "podman".into(),
        name: Some("web".into()),
        image: Some("app:1".into()),
        network_relay: None,
    };
    assert_eq!(c.describe(), "container web (app:1, podman 40b15867205a)");
    let bare = Container {
        name: None,
        image: None,
        ..c
    };
    assert_eq!(
        bare.describe(),
        "container 40b15867205a (podman 40b15867205a)"
    );
}

#[test]
fn a_pid_namespace_init_is_told_by_its_last_nspid() {
    let status = |nspid: &str| format!("Name:\tsleep\nTgid:\t7\nNSpid:\t{nspid}\nPPid:\t6\n");
    assert!(nspid_is_init(&status("21972\t1")));
    assert!(nspid_is_init(&status("21972\t40\t1")));
    // The host's own init and a container's other processes.
    assert!(!nspid_is_init(&status("1")));
    assert!(!nspid_is_init(&status("21973\t2")));
    assert!(!nspid_is_init("Name:\tx\n"));
    // This test runs on the host (or at least not as an init).
    assert!(!is_pid_namespace_init(
        Path::new("/proc"),
        std::process::id()
    ));
    assert!(!is_pid_namespace_init(Path::new("/proc"), u32::MAX));
}

#[test]
fn a_rootless_home_comes_from_the_accounts_file() {
    let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                  broken line\n\
                  web:x:1000:1000::/home/web:/bin/sh\n\
                  odd:x:1001:1001::relative:/bin/sh\n";
    assert_eq!(
        home_in_passwd(passwd, 1000),
        Some(PathBuf::from("/home/web"))
    );
    assert_eq!(home_in_passwd(passwd, 1001), None);
    assert_eq!(home_in_passwd(passwd, 4242), None);
    assert_eq!(home_in_passwd("", 0), None);
}

#[test]
fn a_walk_out_of_time_finds_nothing() {
    let m = Machine::new();
    let other = "ef".repeat(32);
    let gone = m.process(200, &format!("/system.slice/docker-{other}.scope"));
    fs::remove_dir_all(m.dir.path().join("proc/200")).unwrap();
    let mut c = m.containers().with_walk_time(Duration::ZERO);
    assert_eq!(c.of(gone, 200), None, "walked with no time left");
    let mut c = m.containers();
    assert_eq!(c.of(gone, 200).map(|c| c.id.clone()), Some(other));
}

#[test]
fn cgroup_walks_are_bounded_per_second() {
    let m = Machine::new();
    let mut c = m.containers();
    // A gone process's cgroup is found by a walk…
    let other = "cd".repeat(32);
    let gone = m.process(200, &format!("/system.slice/docker-{other}.scope"));
    fs::remove_dir_all(m.dir.path().join("proc/200")).unwrap();
    // …unless this second's walks are spent (cgroups churned by someone who can).
    for id in 0..WALKS_PER_SECOND as u64 {
        assert_eq!(c.of(2_000_000_000 + id, 4242), None);
    }
    assert_eq!(c.of(gone, 200), None, "walked past the limit");
    // The next second walks again (a fresh cache: the refused id was remembered as none).
    let mut c = m.containers();
    assert_eq!(c.of(gone, 200).map(|c| c.id.clone()), Some(other));
}

/// What naming a container costs per event: the first lookup of a cgroup (its `/proc` entry,
/// its directory's inode, Podman's `containers.json` with 200 containers) against every later
/// one (the cache: a hash lookup and a reference count), and a host cgroup's cached "none".
/// A measurement, not a speed check (speed targets live in `cargo xtask bench-cost`):
/// `cargo test --release -p sentinel-agent --bin sentinel container_lookup_cost -- --ignored
/// --nocapture` (the files are a temp dir's, the code the agent's).
#[test]
#[ignore = "a measurement: run with --ignored --nocapture (and --release for the agent's code)"]
fn container_lookup_cost() {
    use std::hint::black_box;
    const CONTAINERS: u32 = 200;
    const LOOKUPS: u32 = 2_000_000;
    let m = Machine::new();
    let ids: Vec<String> = (0..CONTAINERS).map(|i| format!("{i:064x}")).collect();
    let store: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                r#"{{"id":"{id}","names":["app-{}"],"metadata":"{{\"image-name\":\"localhost/app:1\"}}"}}"#,
                &id[58..]
            )
        })
        .collect();
    fs::write(
        m.dir
            .path()
            .join("storage/overlay-containers/containers.json"),
        format!("[{}]", store.join(",")),
    )
    .unwrap();
    let pids = 1000..1000 + CONTAINERS;
    let cgroups: Vec<u64> = pids
        .clone()
        .zip(&ids)
        .map(|(pid, id)| m.process(pid, &format!("/libpod_parent/libpod-{id}")))
        .collect();
    let host = m.process(5000, "/system.slice/nginx.service");
    let mut c = m.containers();

    let start = Instant::now();
    for (pid, cg) in pids.zip(&cgroups) {
        assert!(c.of(*cg, pid).is_some_and(|c| c.name.is_some()));
    }
    let first = start.elapsed() / CONTAINERS;
    assert_eq!(c.of(host, 5000), None);

    let start = Instant::now();
    for i in 0..LOOKUPS {
        let cg = cgroups[(i % CONTAINERS) as usize];
        black_box(c.of(black_box(cg), 1000));
    }
    let cached = start.elapsed() / LOOKUPS;
    let start = Instant::now();
    for _ in 0..LOOKUPS {
        black_box(c.of(black_box(host), 5000));
    }
    let cached_host = start.elapsed() / LOOKUPS;
    eprintln!(
        "container lookup: first of a cgroup {first:?} (/proc, stat, containers.json of \
         {CONTAINERS}); cached {cached:?} (container), {cached_host:?} (host); \
         {LOOKUPS} cached lookups each"
    );
    assert_eq!(c.seen(), CONTAINERS as usize);
}
