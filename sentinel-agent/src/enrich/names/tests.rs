use proptest::prelude::*;

use super::*;

/// A record of a hand-built answer.
enum Rr<'a> {
    A(&'a str, [u8; 4], u32),
    Aaaa(&'a str, std::net::Ipv6Addr),
    Cname(&'a str, &'a str),
}

/// A name's labels, uncompressed.
fn name_bytes(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// A DNS message: header with `flags`, one question for `q` (type A), then `answers`.
fn message(flags: u16, q: &str, answers: &[Rr<'_>]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34];
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    name_bytes(&mut m, q);
    m.extend_from_slice(&[0, 1, 0, 1]);
    for rr in answers {
        let (owner, rtype, ttl, rdata) = match rr {
            Rr::A(owner, a, ttl) => (*owner, 1u16, *ttl, a.to_vec()),
            Rr::Aaaa(owner, a) => (*owner, 28, 60, a.octets().to_vec()),
            Rr::Cname(owner, target) => {
                let mut t = Vec::new();
                name_bytes(&mut t, target);
                (*owner, 5, 60, t)
            }
        };
        name_bytes(&mut m, owner);
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    m
}

const ANSWER: u16 = 0x8180;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn an_answer_names_its_addresses_through_the_cname_chain() {
    let m = message(
        ANSWER,
        "WwW.Example.TEST",
        &[
            Rr::Cname("www.example.test", "edge.cdn.test"),
            Rr::A("edge.cdn.test", [198, 51, 100, 7], 30),
            Rr::Aaaa("edge.cdn.test", "2001:db8:1::7".parse().unwrap()),
        ],
    );
    let a = parse_answer(&m).unwrap();
    assert_eq!(
        a.name, "www.example.test",
        "lower-cased (0x20 randomisation)"
    );
    assert_eq!(a.chain, vec!["edge.cdn.test".to_string()]);
    assert_eq!(
        a.addrs,
        vec![(ip("198.51.100.7"), 30), (ip("2001:db8:1::7"), 60)]
    );
}

#[test]
fn records_that_do_not_answer_the_question_are_ignored() {
    let m = message(
        ANSWER,
        "good.test",
        &[
            Rr::A("good.test", [198, 51, 100, 1], 60),
            Rr::A("bank.test", [198, 51, 100, 66], 60),
        ],
    );
    assert_eq!(
        parse_answer(&m).unwrap().addrs,
        vec![(ip("198.51.100.1"), 60)]
    );
}

#[test]
fn queries_and_failures_are_not_answers() {
    let q = message(0x0100, "a.test", &[]);
    assert_eq!(parse_answer(&q), Err(NameError::NotAnAnswer));
    let nx = message(0x8183, "a.test", &[]);
    assert!(matches!(parse_answer(&nx), Err(NameError::Failed(_))));
}

#[test]
fn every_truncation_of_an_answer_is_an_error_not_a_panic() {
    let m = message(
        ANSWER,
        "www.example.test",
        &[
            Rr::Cname("www.example.test", "edge.cdn.test"),
            Rr::A("edge.cdn.test", [198, 51, 100, 7], 30),
        ],
    );
    for cut in 0..m.len() {
        assert!(parse_answer(&m[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn compression_pointer_loops_end_in_an_error() {
    // The question's name is a pointer to itself.
    let mut self_loop = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
    self_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert!(parse_answer(&self_loop).is_err());
    // Two pointers to each other, and a label followed by a pointer back to it.
    let mut pair = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
    pair.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
    assert!(parse_answer(&pair).is_err());
    let mut label_loop = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
    label_loop.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
    assert!(parse_answer(&label_loop).is_err());
}

#[test]
fn a_cname_loop_ends() {
    let m = message(
        ANSWER,
        "a.test",
        &[
            Rr::Cname("a.test", "b.test"),
            Rr::Cname("b.test", "a.test"),
            Rr::A("b.test", [198, 51, 100, 2], 60),
        ],
    );
    let a = parse_answer(&m).unwrap();
    assert_eq!(a.chain, vec!["b.test".to_string()]);
    assert_eq!(a.addrs, vec![(ip("198.51.100.2"), 60)]);
}

#[test]
fn hostile_labels_come_out_inert() {
    let evil = "x\n[y](http:|a) `b`\u{1b}";
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    let q_at = m.len();
    m.push(evil.len() as u8);
    m.extend_from_slice(evil.as_bytes());
    m.extend_from_slice(&[4]);
    m.extend_from_slice(b"test\0");
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(&[
        0xc0, q_at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 9,
    ]);
    let a = parse_answer(&m).unwrap();
    assert_eq!(
        a.name,
        r"x\x0a\x5by\x5d\x28http\x3a\x7ca\x29\x20\x60b\x60\x1b.test"
    );
    assert_eq!(a.addrs, vec![(ip("198.51.100.9"), 60)]);
}

#[test]
fn a_process_sees_its_own_name_before_the_hosts() {
    let mut names = Names::default();
    let a = message(
        ANSWER,
        "mine.test",
        &[Rr::A("mine.test", [198, 51, 100, 5], 60)],
    );
    let b = message(
        ANSWER,
        "theirs.test",
        &[Rr::A("theirs.test", [198, 51, 100, 5], 60)],
    );
    names.learn(100, 0, &a).unwrap();
    names.learn(200, 1, &b).unwrap();
    let addr = ip("198.51.100.5");
    assert_eq!(&*names.name_for(100, addr, 2).unwrap().name, "mine.test");
    assert_eq!(&*names.name_for(200, addr, 2).unwrap().name, "theirs.test");
    // Another process gets the host's latest.
    assert_eq!(&*names.name_for(300, addr, 2).unwrap().name, "theirs.test");
    assert!(names.name_for(300, ip("198.51.100.6"), 2).is_none());
}

#[test]
fn the_names_of_processes_that_exited_are_swept_at_most_once_a_minute() {
    let mut names = Names::default();
    let a = message(
        ANSWER,
        "gone.test",
        &[Rr::A("gone.test", [198, 51, 100, 5], 600)],
    );
    let b = message(
        ANSWER,
        "stays.test",
        &[Rr::A("stays.test", [198, 51, 100, 5], 600)],
    );
    let start = SWEEP_EVERY_NS;
    names.learn(100, start, &a).unwrap();
    names.learn(200, start, &b).unwrap();
    let alive = |tgid: u32| tgid == 200;
    assert_eq!(names.sweep_exited(start, alive), Some(1));
    assert_eq!(names.len(), (1, 1));
    let addr = ip("198.51.100.5");
    // A later process given pid 100 does not inherit its name: it gets the host's.
    assert_eq!(
        &*names.name_for(100, addr, start + 1).unwrap().name,
        "stays.test"
    );
    // Not again within the minute, whatever exited meanwhile.
    names.learn(100, start + 2, &a).unwrap();
    assert_eq!(names.sweep_exited(start + 3, |_| false), None);
    assert_eq!(names.len().1, 2);
    assert_eq!(
        names.sweep_exited(start + SWEEP_EVERY_NS, |_| false),
        Some(2)
    );
    assert_eq!(names.len().1, 0);
}

#[test]
fn names_expire_with_their_ttl_within_bounds() {
    let mut names = Names::default();
    let short = message(ANSWER, "s.test", &[Rr::A("s.test", [198, 51, 100, 5], 0)]);
    let long = message(
        ANSWER,
        "l.test",
        &[Rr::A("l.test", [198, 51, 100, 6], u32::MAX)],
    );
    names.learn(1, 0, &short).unwrap();
    names.learn(1, 0, &long).unwrap();
    let s = 1_000_000_000;
    assert!(
        names
            .name_for(1, ip("198.51.100.5"), (MIN_KEEP_S - 1) * s)
            .is_some()
    );
    assert!(
        names
            .name_for(1, ip("198.51.100.5"), MIN_KEEP_S * s)
            .is_none()
    );
    assert!(
        names
            .name_for(1, ip("198.51.100.6"), (MAX_KEEP_S - 1) * s)
            .is_some()
    );
    assert!(
        names
            .name_for(1, ip("198.51.100.6"), MAX_KEEP_S * s)
            .is_none()
    );
}

#[test]
fn a_flood_of_answers_stays_within_the_cap() {
    let mut names = Names::with_capacity(64);
    for i in 0..10_000u32 {
        let b = i.to_be_bytes();
        let m = message(
            ANSWER,
            "f.test",
            &[Rr::A("f.test", [198, 51, b[2], b[3]], 60)],
        );
        names.learn(i % 7 + 1, 0, &m).unwrap();
    }
    assert_eq!(names.len(), (64, 64));
}

#[test]
fn many_records_are_capped_per_answer() {
    let rrs: Vec<Rr<'_>> = (0..100u8)
        .map(|i| Rr::A("many.test", [198, 51, 100, i], 60))
        .collect();
    let m = message(ANSWER, "many.test", &rrs);
    assert_eq!(parse_answer(&m).unwrap().addrs.len(), MAX_ADDRS);
}

#[test]
fn an_alert_line_names_its_address_once() {
    let addr = ip("198.51.100.2");
    assert_eq!(
        with_name(
            "sh (pid 7) has its stdin on a TCP connection to 198.51.100.2 port 4444",
            addr,
            "c2.test"
        ),
        "sh (pid 7) has its stdin on a TCP connection to c2.test (198.51.100.2) port 4444"
    );
    // Not inside a longer address, not twice, not when absent.
    assert_eq!(
        with_name("to 198.51.100.23 then 198.51.100.2.", addr, "c2.test"),
        "to 198.51.100.23 then c2.test (198.51.100.2)."
    );
    let named = "to c2.test (198.51.100.2) port 1";
    assert_eq!(with_name(named, addr, "c2.test"), named);
    assert_eq!(with_name("no address", addr, "c2.test"), "no address");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Any bytes: an answer or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_answer(&bytes);
    }

    /// A valid answer with some bytes flipped: still no panic.
    #[test]
    fn mangled_answers_never_panic(flips in proptest::collection::vec((0usize..80, any::<u8>()), 1..8)) {
        let mut m = message(
            ANSWER,
            "www.example.test",
            &[Rr::Cname("www.example.test", "edge.cdn.test"), Rr::A("edge.cdn.test", [198, 51, 100, 7], 30)],
        );
        for (at, b) in flips {
            let at = at % m.len();
            m[at] = b;
        }
        let _ = parse_answer(&m);
    }
}
