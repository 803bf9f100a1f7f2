use super::*;

const SEC: u64 = 1_000_000_000;

fn piece(flow: u64, msg_seq: u32, wire_len: u16, offset: u32) -> Piece {
    Piece {
        flow,
        msg_seq,
        wire_len,
        offset,
        later: offset != 0,
    }
}

/// A message of `len` bytes, each byte telling where it sits.
fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_message_in_one_piece_passes_straight_through() {
    let mut t = TcpMessages::new();
    let m = message(300);
    let got = t.take(&piece(1, 100, 300, 0), SEC, &m).unwrap();
    assert!(matches!(got, Cow::Borrowed(_)));
    assert_eq!(&*got, &m[..]);
    assert_eq!(t.held(), (0, 0));
}

#[test]
fn three_segments_make_the_message() {
    let mut t = TcpMessages::new();
    let m = message(1000);
    assert!(t.take(&piece(1, 100, 1000, 0), SEC, &m[..358]).is_none());
    assert_eq!(t.held(), (1, 1000));
    assert!(
        t.take(&piece(1, 100, 1000, 358), SEC, &m[358..718])
            .is_none()
    );
    let got = t.take(&piece(1, 100, 1000, 718), SEC, &m[718..]).unwrap();
    assert_eq!(&*got, &m[..]);
    assert_eq!(t.held(), (0, 0));
    assert_eq!(t.counts().joined, 1);
}

#[test]
fn out_of_order_and_overlapping_pieces_fill_what_is_missing() {
    let mut t = TcpMessages::new();
    let m = message(1000);
    assert!(t.take(&piece(1, 100, 1000, 0), SEC, &m[..300]).is_none());
    // The last piece first, then one overlapping both neighbours, then a retransmission of
    // the start whose bytes differ (the first ones in are kept).
    assert!(t.take(&piece(1, 100, 1000, 700), SEC, &m[700..]).is_none());
    let mut forged = m[..400].to_vec();
    forged[..10].fill(0xee);
    assert!(t.take(&piece(1, 100, 1000, 0), SEC, &forged).is_none());
    let got = t
        .take(&piece(1, 100, 1000, 250), SEC, &m[250..750])
        .unwrap();
    assert_eq!(&*got, &m[..]);
}

#[test]
fn bytes_past_the_end_are_ignored_and_a_huge_length_is_held_to_the_maximum() {
    let mut t = TcpMessages::new();
    let m = message(600);
    assert!(t.take(&piece(1, 100, 500, 0), SEC, &m[..200]).is_none());
    // A piece running past the end (the next message's bytes, or a lie).
    let got = t.take(&piece(1, 100, 500, 200), SEC, &m[200..]).unwrap();
    assert_eq!(&*got, &m[..500]);
    // A length prefix of 65535: at most DNS_PAYLOAD_MAX bytes are ever held, and a piece
    // claiming an offset far beyond is dropped without growing anything.
    assert!(t.take(&piece(2, 7, u16::MAX, 0), SEC, &m[..100]).is_none());
    assert_eq!(t.held(), (1, DNS_PAYLOAD_MAX));
    assert!(t.take(&piece(2, 7, u16::MAX, 60_000), SEC, &m).is_none());
    assert!(t.take(&piece(2, 7, u16::MAX, u32::MAX), SEC, &m).is_none());
    assert_eq!(t.held(), (1, DNS_PAYLOAD_MAX));
    // Its first DNS_PAYLOAD_MAX bytes make it whole (cut, as the kernel copies no more).
    let rest = vec![1u8; DNS_PAYLOAD_MAX];
    let got = t.take(&piece(2, 7, u16::MAX, 100), SEC, &rest).unwrap();
    assert_eq!(got.len(), DNS_PAYLOAD_MAX);
}

#[test]
fn a_flood_of_bogus_pieces_holds_nothing() {
    let mut t = TcpMessages::new();
    let junk = vec![0u8; 4096];
    for i in 0..100_000u32 {
        assert!(
            t.take(
                &piece(u64::from(i), i, 4096, 1 + i % 4000),
                SEC,
                &junk[..64]
            )
            .is_none()
        );
    }
    assert_eq!(t.held(), (0, 0));
    assert_eq!(t.counts().stray, 100_000);
}

#[test]
fn a_flood_of_starts_that_never_complete_is_capped() {
    let mut t = TcpMessages::new();
    let start = message(64);
    for i in 0..10_000u32 {
        assert!(t.take(&piece(9, i, u16::MAX, 0), SEC, &start).is_none());
        let (n, bytes) = t.held();
        assert!(n <= MAX_WAITING && bytes <= MAX_WAITING * DNS_PAYLOAD_MAX);
    }
    assert_eq!(t.held().0, MAX_WAITING);
    assert_eq!(t.counts().evicted, 10_000 - MAX_WAITING as u64);
    // A real message still gets through right after.
    let m = message(800);
    assert!(t.take(&piece(10, 1, 800, 0), SEC, &m[..400]).is_none());
    assert_eq!(
        &*t.take(&piece(10, 1, 800, 400), SEC, &m[400..]).unwrap(),
        &m[..]
    );
}

#[test]
fn a_message_that_never_completes_is_dropped_when_old() {
    let mut t = TcpMessages::new();
    let m = message(1000);
    assert!(t.take(&piece(1, 100, 1000, 0), SEC, &m[..300]).is_none());
    // Still waiting just before the limit.
    assert!(
        t.take(&piece(2, 5, 10, 0), SEC + MAX_WAIT_NS - 1, &m[..10])
            .is_some()
    );
    assert_eq!(t.held().0, 1);
    // Any later record drops it; its missing piece then finds nothing.
    assert!(
        t.take(&piece(2, 6, 10, 0), SEC + MAX_WAIT_NS, &m[..10])
            .is_some()
    );
    assert_eq!(t.held(), (0, 0));
    assert_eq!(t.counts().expired, 1);
    assert!(
        t.take(&piece(1, 100, 1000, 300), SEC + MAX_WAIT_NS, &m[300..])
            .is_none()
    );
}

#[test]
fn pipelined_messages_on_one_connection_are_put_together_apart() {
    let mut t = TcpMessages::new();
    let (a, b) = (message(700), vec![0xab; 500]);
    // Message b starts where a (and its 2-byte length prefix) ends; their pieces interleave.
    let b_seq = 100 + 700 + 2;
    assert!(t.take(&piece(1, 100, 700, 0), SEC, &a[..360]).is_none());
    assert!(t.take(&piece(1, b_seq, 500, 0), SEC, &b[..200]).is_none());
    assert_eq!(
        &*t.take(&piece(1, 100, 700, 360), SEC, &a[360..]).unwrap(),
        &a[..]
    );
    assert_eq!(
        &*t.take(&piece(1, b_seq, 500, 200), SEC, &b[200..]).unwrap(),
        &b[..]
    );
    // The same sequence numbers on another socket are another message.
    assert!(t.take(&piece(2, 100, 700, 0), SEC, &a[..10]).is_none());
    assert!(t.take(&piece(1, 100, 700, 10), SEC, &a[10..]).is_none());
    assert_eq!(t.held().0, 1);
}
