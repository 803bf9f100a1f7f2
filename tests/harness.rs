//! The test-host harness itself: it must never shadow the machine's own network. Plain tests
//! check the overlap rule on synthetic data; the root test builds a real test host and
//! compares the machine's routes and addresses before, during and after.

mod common;

use common::netns::{self, Existing, Net, TestNet};

fn net(s: &str) -> Net {
    Net::parse(s).unwrap()
}

fn existing(list: &[&str]) -> Vec<Existing> {
    list.iter()
        .map(|s| Existing {
            net: net(s),
            what: format!("route {s}"),
        })
        .collect()
}

#[test]
fn overlaps_with_the_machine_are_refused_and_named() {
    // The machine's own network as these machines have it (its /24, its address, its v6 /64,
    // its resolver), spelt from parts so no test host address is ever written with them.
    let own = |tail: &str| format!("192.0.{tail}");
    let (lan, me) = (own("2.0/24"), own("2.2/32"));
    let machine = existing(&[&lan, &me, "fd00::/64", "10.255.255.53/32"]);
    // Disjoint test networks pass.
    netns::check_no_overlap(&[net("198.51.100.0/25"), net("2001:db8:1::/64")], &machine).unwrap();
    // A machine address inside a test network, or a test network inside a machine route.
    let with_test_range = existing(&["198.51.100.77/32"]);
    let err = netns::check_no_overlap(&[net("198.51.100.0/25")], &with_test_range).unwrap_err();
    assert!(
        err.contains("198.51.100.0/25") && err.contains("198.51.100.77/32"),
        "{err}"
    );
    let wide = existing(&["198.51.0.0/16"]);
    let err = netns::check_no_overlap(&[net("198.51.100.128/26")], &wide).unwrap_err();
    assert!(err.contains("198.51.0.0/16"), "{err}");
    let v6 = existing(&["2001:db8::/32"]);
    assert!(netns::check_no_overlap(&[net("2001:db8:2::/64")], &v6).is_err());
}

#[test]
fn only_the_test_ranges_are_allowed() {
    let (lan, registries) = (
        format!("192.0.{}", "2.0/24"),
        format!("203.0.{}", "113.0/24"),
    );
    for outside in [
        lan.as_str(),
        registries.as_str(),
        "10.0.0.0/8",
        "198.51.0.0/16",
        "fd00::/64",
    ] {
        let err = netns::check_no_overlap(&[net(outside)], &[]).unwrap_err();
        assert!(err.contains("outside the test ranges"), "{outside}: {err}");
    }
}

#[test]
fn prefix_arithmetic() {
    assert!(net("198.51.100.0/25").contains("198.51.100.127".parse().unwrap()));
    assert!(!net("198.51.100.0/25").contains("198.51.100.128".parse().unwrap()));
    assert!(net("0.0.0.0/0").contains("203.0.113.9".parse().unwrap()));
    assert!(!net("0.0.0.0/0").contains("::1".parse().unwrap()));
    assert!(net("::/0").contains("2001:db8::1".parse().unwrap()));
    assert!(net("198.51.100.0/24").overlaps(&net("198.51.100.200/32")));
    assert!(!net("198.51.100.0/25").overlaps(&net("198.51.100.128/26")));
    assert!(Net::parse("198.51.100.0/33").is_err());
}

/// The routes and addresses of the machine's own namespace, excluding the test veth.
fn snapshot() -> (String, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains("snt"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let routes = [
        run(&["-4", "route", "show", "table", "all"]),
        run(&["-6", "route", "show", "table", "all"]),
    ]
    .join("\n")
    // The kernel adds routes for the veth's own networks: not the machine's.
    .lines()
    .filter(|l| !l.contains("198.51.100.") && !l.contains("2001:db8:"))
    .collect::<Vec<_>>()
    .join("\n");
    let addrs = run(&["-br", "addr"]);
    (routes, addrs)
}

#[test]
fn test_hosts_leave_the_machine_network_untouched() {
    if !common::require_root("test_hosts_leave_the_machine_network_untouched") {
        return;
    }
    let _serial = common::serial();
    let before = snapshot();
    let default_before = std::process::Command::new("ip")
        .args(["route", "show", "default"])
        .output()
        .unwrap()
        .stdout;
    {
        let net = TestNet::new("h");
        assert_eq!(
            snapshot(),
            before,
            "the machine's network changed while a test host exists"
        );
        let default_now = std::process::Command::new("ip")
            .args(["route", "show", "default"])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(default_now, default_before);
        // The machine's own addresses and gateway are never routed into the test veth.
        for own in netns::machine_network().unwrap() {
            if own.what.starts_with("address") && !own.what.contains(" on snt") {
                let out = std::process::Command::new("ip")
                    .args(["route", "get", &own.net.addr.to_string()])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    !text.contains("dev snt"),
                    "{} routed to the test veth: {text}",
                    own.net.addr
                );
            }
        }
        // The test hosts answer through it.
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", net.ns(), "ip", "-br", "addr"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for host in [netns::RU4, netns::DE4, netns::CN4, netns::KP6, netns::FR6] {
            assert!(
                text.contains(host),
                "{host} missing in the test host: {text}"
            );
        }
    }
    assert_eq!(
        snapshot(),
        before,
        "the machine's network changed after the test host was removed"
    );
    let out = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("snt"),
        "the test veth is left behind"
    );
}
