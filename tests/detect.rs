//! End-to-end tests of the detectors with the real agent: a shell under a process named
//! `node` raises `lineage`; a connection to a test host (network namespace, documentation
//! range that the tests' own GeoIP database puts in a high-risk country) raises `geo`, over
//! IPv4 and IPv6; a busy loop raises `resource`. The benign twins raise nothing.

mod common;

use std::{os::unix::fs::PermissionsExt, process::Command, time::SystemTime};

use common::{
    Agent, BIN,
    netns::{TestNet, knock},
    require_root, serial,
};
use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn ts(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(s(&v["ts"])).unwrap()
}

#[test]
fn geo_alerts_for_high_risk_countries_over_ipv4_and_ipv6() {
    if !require_root("geo_alerts_for_high_risk_countries_over_ipv4_and_ipv6") {
        return;
    }
    let _serial = serial();
    let _net = TestNet::new("g");
    let agent = Agent::start_with("", "[trust]\nips = [\"198.51.100.192/26\"]\n");
    let me = std::process::id();

    // Benign first: a low-risk country (v4, v6) and a trusted high-risk one.
    knock("198.51.100.130", 8001);
    knock("2001:db8:2::2", 8002);
    knock("198.51.100.194", 8003);
    // Then the anomalies.
    knock("198.51.100.2", 8004);
    // The IPv6 one from a child: another process, another alert, but the same decision.
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import socket; s = socket.socket(socket.AF_INET6); s.settimeout(1); \
             s.connect_ex(('2001:db8:1::2', 8005))",
        ])
        .spawn()
        .unwrap();
    let child_pid = child.id();
    assert!(child.wait().unwrap().success());

    for (addr, port, country) in [("198.51.100.2", 8004, "RU"), ("2001:db8:1::2", 8005, "KP")] {
        let alert = agent.wait_for("alert", &format!("geo for {addr}"), |a| {
            a["anomaly"] == "geo" && a["target_ip"] == addr
        });
        assert_eq!(s(&alert["country"]), country, "{alert}");
        assert_eq!(s(&alert["severity"]), "critical", "{alert}");
        assert_eq!(s(&alert["mitre"]["technique"]), "T1071.001", "{alert}");
        assert_eq!(
            s(&alert["mitre"]["tactic"]),
            "Command and Control",
            "{alert}"
        );
        if country == "RU" {
            assert_eq!(alert["pid"], me, "{alert}");
        }
        // A target to act on: the dead man's switch has a decision pending (dry-run here).
        let alert = agent.wait_for("alert", &format!("pending geo for {addr}"), |a| {
            a["id"] == alert["id"] && a["state"] == "pending"
        });
        assert!(alert["deadline"].is_string(), "{alert}");
        let risk = alert["risk"].as_u64().unwrap();
        assert!((70..=100).contains(&risk), "{alert}");
        let connect = agent.wait_for("connect", &format!("to {addr}"), |c| {
            c["daddr"] == addr && c["dport"] == port
        });
        assert_eq!(s(&connect["country"]), country, "{connect}");
        assert!(
            ts(&alert) >= ts(&connect),
            "alert before its event: {alert} {connect}"
        );
    }
    // The agent logs each alert's latency from the kernel event to the alert. Only the geo
    // alerts count: other detectors may speak about other processes (a checkout under /tmp
    // makes every `sentinel` CLI run a miner suspect).
    let log = agent.log();
    let latencies: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("anomaly=geo"))
        .filter_map(|l| l.split("latency_us=").nth(1)?.split(' ').next())
        .collect();
    eprintln!("detection latency, kernel event → alert (µs): {latencies:?}");
    assert_eq!(latencies.len(), 2, "{}", agent.log());

    // The benign connects were seen, with their countries, and raised nothing.
    for (addr, country) in [
        ("198.51.100.130", "DE"),
        ("2001:db8:2::2", "FR"),
        ("198.51.100.194", "CN"),
    ] {
        let c = agent.wait_for("connect", &format!("to {addr}"), |c| c["daddr"] == addr);
        assert_eq!(s(&c["country"]), country, "{c}");
    }
    // (Other processes on the machine may raise alerts of their own: only ours count.)
    let ours = || -> Vec<Value> {
        agent
            .events("alert")
            .into_iter()
            .filter(|a| a["pid"] == me || a["pid"] == child_pid)
            .collect()
    };
    let alerts = ours();
    assert_eq!(
        alerts.len(),
        2,
        "expected exactly the two geo alerts: {alerts:?}"
    );
    // One decision for the process tree, holding both destinations.
    let pending = agent.json_lines(&["pending", "--json"]);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        pending[0]["targets"],
        serde_json::json!(["198.51.100.2", "2001:db8:1::2"]),
        "{pending:?}"
    );

    // Repeats fold into the same alert with a count.
    knock("198.51.100.2", 8004);
    knock("198.51.100.2", 8004);
    let folded = agent.wait_for("alert", "counted three times", |a| {
        a["target_ip"] == "198.51.100.2" && a["count"] == 3
    });
    assert_eq!(ours().len(), 2, "repeat raised a new alert: {folded}");
}

#[test]
fn shell_under_a_web_server_raises_lineage_and_its_twin_does_not() {
    if !require_root("shell_under_a_web_server_raises_lineage_and_its_twin_does_not") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    // A process named `node` (a copy of python3): a web server only while it listens.
    let node = agent.dir.path().join("node");
    std::fs::copy("/usr/bin/python3", &node).unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
    // `listen`: "no", "yes", or "closed" (listened for a moment, then closed the socket).
    let run = |listen: &str, shell: &str| {
        let script = format!(
            "import socket, subprocess, time\n\
             s = socket.socket()\n\
             if '{listen}' != 'no':\n    s.bind(('127.0.0.1', 0)); s.listen()\n\
             if '{listen}' == 'closed':\n    time.sleep(0.3); s.close()\n\
             for _ in range(3):\n    subprocess.run(['/bin/sh', '-c', '{shell}'])\n\
             if '{listen}' == 'closed':\n    time.sleep(3)\n"
        );
        let child = Command::new(&node).args(["-c", &script]).spawn().unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        pid
    };

    // Benign: the same program running shells while it does not accept connections.
    let benign_pid = run("no", "true benign");
    // A script that listened for a moment and closed its socket is no server any more (it
    // stays a while: one that has ended cannot be told from a server, and counts as one).
    let closed_pid = run("closed", "true closed");
    // The anomaly, three times from the same (listening) web server.
    let bad_pid = run("yes", "true lineage-marker");

    let alert = agent.wait_for("alert", "lineage, counted three times", |a| {
        a["anomaly"] == "lineage" && a["count"] == 3
    });
    assert_eq!(s(&alert["comm"]), "sh", "{alert}");
    assert_eq!(s(&alert["severity"]), "critical", "{alert}");
    assert_eq!(s(&alert["mitre"]["technique"]), "T1059", "{alert}");
    assert_eq!(s(&alert["mitre"]["tactic"]), "Execution", "{alert}");
    assert!(alert["target_ip"].is_null(), "{alert}");
    let detail = s(&alert["detail"]);
    assert!(detail.contains("node → sh"), "{alert}");
    assert!(
        detail.contains(&format!("web server pid {bad_pid}")),
        "{alert}"
    );

    // Only the alerts about this test's two web servers count: other processes on the machine
    // raise their own (and the copy named node, run from a temp dir, is a `miner` suspect).
    let about = |pid: u32| format!("web server pid {pid}");
    let alerts: Vec<Value> = agent
        .events("alert")
        .into_iter()
        .filter(|a| {
            a["anomaly"] == "lineage"
                && [bad_pid, benign_pid, closed_pid]
                    .iter()
                    .any(|p| s(&a["detail"]).contains(&about(*p)))
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        !alerts
            .iter()
            .any(|a| s(&a["detail"]).contains(&about(benign_pid))),
        "the benign web server raised an alert: {alerts:?}"
    );
    assert!(
        !alerts
            .iter()
            .any(|a| s(&a["detail"]).contains(&about(closed_pid))),
        "a server that had closed its socket raised an alert: {alerts:?}"
    );
    // The exec stream shows the lineage too.
    let exec = agent.wait_for("exec", "of the marker shell", |e| {
        e["argv"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "true lineage-marker"))
    });
    assert_eq!(s(&exec["ancestors"][0]), "node", "{exec}");
}

/// `python3 /tmp/…/pip` is a script somebody uploaded, not pip: its name (argv) buys no
/// package-manager exemption, so the shell it runs below a listening server is `lineage`.
#[test]
fn a_script_named_pip_below_a_server_buys_no_exemption() {
    if !require_root("a_script_named_pip_below_a_server_buys_no_exemption") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start("");
    // The upload, owned by nobody (65534) like a file a web exploit drops.
    let upload = tempfile::tempdir().unwrap();
    let pip = upload.path().join("pip");
    std::fs::write(
        &pip,
        "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id >/dev/null'])\n",
    )
    .unwrap();
    std::os::unix::fs::chown(&pip, Some(65534), Some(65534)).unwrap();
    // A listening python3 server runs it.
    let server = format!(
        "import socket, subprocess\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
         subprocess.run(['/usr/bin/python3', '{}'], check=True)\n",
        pip.display()
    );
    let child = Command::new("/usr/bin/python3")
        .args(["-c", &server])
        .spawn()
        .unwrap();
    let server_pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());

    // Only alerts about this test's server count: other tests run on this kernel too.
    let about = format!("web server pid {server_pid}");
    let alert = agent.wait_for("alert", "lineage below the upload named pip", |a| {
        a["anomaly"] == "lineage" && s(&a["detail"]).contains(&about)
    });
    assert_eq!(s(&alert["comm"]), "sh", "{alert}");
    assert!(
        s(&alert["detail"]).contains("python3 → python3 → sh"),
        "{alert}"
    );
}

#[test]
fn sustained_cpu_raises_resource() {
    if !require_root("sustained_cpu_raises_resource") {
        return;
    }
    let _serial = serial();
    let agent = Agent::start_with("", "[resource]\ncpu_percent = 50\nsustain = \"2s\"\n");
    let mut busy = // At the highest priority: a normal one gets well under half a CPU while two
    // builds share this machine's two, and the test would measure the load, not the agent.
    Command::new("nice")
        .args(["-n", "-19", "/bin/sh", "-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = busy.id();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        agent.wait_for("alert", "resource for the busy loop", |a| {
            a["anomaly"] == "resource" && a["pid"] == pid
        })
    }));
    let _ = busy.kill();
    let _ = busy.wait();
    let alert = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(s(&alert["severity"]), "high", "{alert}");
    assert_eq!(s(&alert["mitre"]["technique"]), "T1496", "{alert}");
    assert_eq!(s(&alert["comm"]), "sh", "{alert}");
    assert!(s(&alert["detail"]).contains("% CPU"), "{alert}");
}

#[test]
fn missing_geoip_database_is_a_start_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write(
        dir.path(),
        "c.toml",
        &format!(
            "[agent]\ndb = \"{0}/s.db\"\nsocket = \"{0}/s.sock\"\n[geo]\ndatabase = \"{0}/nope.mmdb\"\n",
            dir.path().display()
        ),
    );
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.mmdb"), "{err}");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("geo.database") && err.contains("nope.mmdb"),
        "{err}"
    );
}
