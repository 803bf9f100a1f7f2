//! Several exec or connect events in one row. SQLite's cost is per row (a statement step, a
//! b-tree insert, the bound values), postcard's per string: one row per event spent
//! about 3,000 instructions in `sqlite3_step` and wrote the host name into every body. Events
//! of the same kind (exec or connect) that arrive one after another in a write batch go into
//! one row, at most [`MAX_EVENTS`] of them and about [`MAX_BYTES`] of body; a row of any other
//! kind, an alert update or a change of kind ends a row, so rows keep the events' order.
//!
//! Ids: a packed row of `n` events takes the ids `id .. id + n` (the writer assigns them, the
//! next row starts after them), so every event keeps an id of its own that only grows: the
//! fleet ships events by it (`fleet_events (host, id)`, its cursor is the last id shipped) and a
//! row of one event, like every row written before packing, keeps its row id as the event's.
//! The `n` column holds the row's event count, so pruning, the cap's eviction and `status`
//! count events without reading bodies. A packed row's `ts_ns` is the time of its newest event:
//! retention deletes a row only when its newest event is older than the cutoff, so it never
//! deletes a newer event (it may keep up to a row's worth of older ones a little longer), and
//! its `pid` is its first event's.
//!
//! The body (format byte [`PACKED`]): the postcard encoding of the host and the kind (0 exec,
//! 1 connect), once per row; then for each event the change of its time in milliseconds from
//! the event before (from 0 for the first: events are stamped to the millisecond) as a
//! zigzag varint, and its body in the layout of [`body`](super::body)'s version 3.

use std::sync::Arc;

use rusqlite::types::ValueRef;

use super::body::{self, BodyError, Encoding};
use crate::event::{Body, ConnectBody, ExecBody, Record};

/// The format byte of a packed body (after the single-event binary versions 1 to 3).
pub const PACKED: u8 = 4;
/// Events in one row at most: 256 `/bin/true` execs are about 15 KiB of body. The writer's
/// SQLite cost per event falls with the row count (one statement step, one b-tree cell, seven
/// bound values a row); and a row larger than a page goes into overflow pages that SQLite fills
/// whole, while rows of 1–4 KiB leave most leaf pages partly empty (3,000 execs in batches of
/// 100: 82 bytes an event at 64 a row, 61 at 256, 108 one per row). A reader that wants the
/// newest event of a row decodes the others too: at most 255, a fraction of a millisecond.
pub const MAX_EVENTS: usize = 256;
/// A row is closed once its body passes this size (an exec's argv can be long): a reader
/// reads a row's overflow chain whole, whichever of its events it wants.
pub const MAX_BYTES: usize = 16 * 1024;

const EXEC: u8 = 0;
const CONNECT: u8 = 1;

/// One row to write: its columns, the body being in the writer's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Records of the write run it holds (`n` in the table).
    pub events: usize,
    /// The newest event's time.
    pub ts_ns: i64,
    pub encoding: Encoding,
}

/// Whether `r` goes into packed rows, and under which kind tag.
fn pack_kind(r: &Record) -> Option<u8> {
    match r.body {
        Body::Exec(_) => Some(EXEC),
        Body::Connect(_) => Some(CONNECT),
        _ => None,
    }
}

/// Encode the next row from the start of `records` into `buf` (cleared first): a packed row of
/// the longest run of exec (or connect) events the bounds allow, or one event of another kind.
pub fn next_row<R: AsRef<Record>>(records: &[R], buf: &mut Vec<u8>) -> Row {
    let first = records[0].as_ref();
    let Some(kind) = pack_kind(first) else {
        return Row {
            events: 1,
            ts_ns: first.ts_ns(),
            encoding: body::encode(first, buf),
        };
    };
    buf.clear();
    buf.push(PACKED);
    append(&(&*first.host, kind), buf);
    let (mut prev_ms, mut newest, mut events) = (0i64, i64::MIN, 0);
    for r in records.iter().map(AsRef::as_ref) {
        if events == MAX_EVENTS
            || buf.len() >= MAX_BYTES
            || pack_kind(r) != Some(kind)
            || !(Arc::ptr_eq(&r.host, &first.host) || r.host == first.host)
        {
            break;
        }
        let ts_ns = r.ts_ns();
        let ms = ts_ns.div_euclid(1_000_000);
        append(&(ms - prev_ms), buf);
        match &r.body {
            Body::Exec(b) => append(b, buf),
            Body::Connect(b) => append(b, buf),
            _ => unreachable!("checked by pack_kind"),
        }
        prev_ms = ms;
        newest = newest.max(ts_ns);
        events += 1;
    }
    Row {
        events,
        ts_ns: newest,
        encoding: Encoding::Binary,
    }
}

/// The postcard encoding of `value`, appended to `buf`.
fn append<T: serde::Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) {
    postcard::serialize_with_flavor(value, Append(buf)).expect("a Vec takes any postcard output");
}

/// A postcard output that appends to a borrowed `Vec`: strings with one copy, the few bytes
/// of a varint (postcard hands each integer over as a slice) pushed rather than through a
/// `memcpy` call each.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 10 {
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The `n` events of a row stamped `ts_ns` whose body is `value`, oldest first: a packed body,
/// or the one event of any older or non-packed body.
pub fn decode_row(ts_ns: i64, n: i64, value: ValueRef<'_>) -> Result<Vec<Record>, BodyError> {
    let events = match value {
        ValueRef::Blob([PACKED, rest @ ..]) => decode_packed(rest)?,
        other => vec![body::decode(ts_ns, other)?],
    };
    if events.len() as i64 != n {
        return Err(BodyError::Count {
            column: n,
            body: events.len(),
        });
    }
    Ok(events)
}

fn decode_packed(bytes: &[u8]) -> Result<Vec<Record>, BodyError> {
    let ((host, kind), mut rest): ((Arc<str>, u8), _) = postcard::take_from_bytes(bytes)?;
    if !matches!(kind, EXEC | CONNECT) {
        return Err(BodyError::PackKind(kind));
    }
    let mut out = Vec::new();
    let mut ms = 0i64;
    while !rest.is_empty() {
        let (delta, tail): (i64, _) = postcard::take_from_bytes(rest)?;
        ms = ms.checked_add(delta).ok_or(BodyError::Time)?;
        let (body, tail) = match kind {
            EXEC => {
                let (b, tail): (ExecBody, _) = postcard::take_from_bytes(tail)?;
                (Body::Exec(b), tail)
            }
            _ => {
                let (b, tail): (ConnectBody, _) = postcard::take_from_bytes(tail)?;
                (Body::Connect(b), tail)
            }
        };
        rest = tail;
        out.push(Record {
            ts: body::stamp(ms)?,
            host: host.clone(),
            body,
        });
    }
    if out.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rusqlite::Connection;

    use super::*;
    use crate::{
        event::{AlertBody, CpuBody, Kind, sample_alert},
        store::{Store, StoreError, Write, cap},
    };

    const BIG: u64 = 1 << 40;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_790_000_000_000 + ms)
    }

    fn exec(pid: u32, ms: u64) -> Arc<Record> {
        Arc::new(Record::new(
            at(ms),
            "web-1",
            Body::Exec(ExecBody {
                pid,
                ppid: 1,
                uid: 0,
                comm: "true".into(),
                filename: "/bin/true".into(),
                argv: vec!["/bin/true".into(), format!("--n={pid}")],
                ancestors: vec!["python3".into(), "bash".into()],
                container: None,
            }),
        ))
    }

    fn connect(pid: u32, ms: u64) -> Arc<Record> {
        Arc::new(Record::new(
            at(ms),
            "web-1",
            Body::Connect(ConnectBody {
                pid,
                comm: "curl".into(),
                uid: 0,
                family: 4,
                saddr: "198.51.100.1".parse().unwrap(),
                daddr: "198.51.100.9".parse().unwrap(),
                dport: 443,
                country: Some("FR".into()),
                container: None,
                domain: None,
            }),
        ))
    }

    fn cpu(pid: u32, ms: u64) -> Arc<Record> {
        Arc::new(Record::new(
            at(ms),
            "web-1",
            Body::Cpu(CpuBody {
                pid,
                comm: "x".into(),
                cpu_pct: 50.0,
                container: None,
            }),
        ))
    }

    fn alert(id: &str, count: u32, ms: u64) -> Arc<Record> {
        Arc::new(Record::new(
            at(ms),
            "web-1",
            Body::Alert(Box::new(AlertBody {
                count,
                ..sample_alert(id, "198.51.100.9")
            })),
        ))
    }

    /// 150 execs, 3 connects, a cpu event, 70 execs, an alert, 10 connects: the mix a busy
    /// host writes in one batch.
    fn mixed() -> Vec<Arc<Record>> {
        let mut out = Vec::new();
        let mut ms = 0;
        let mut next = |f: fn(u32, u64) -> Arc<Record>, n: u32, out: &mut Vec<_>| {
            for _ in 0..n {
                ms += 1;
                out.push(f(ms as u32, ms));
            }
        };
        next(exec, 150, &mut out);
        next(connect, 3, &mut out);
        next(cpu, 1, &mut out);
        next(exec, 70, &mut out);
        out.push(alert("a1", 1, 300));
        next(connect, 10, &mut out);
        out
    }

    fn inserts(records: &[Arc<Record>]) -> Vec<Write> {
        records.iter().cloned().map(Write::Insert).collect()
    }

    fn rows(store: &Store) -> Vec<(i64, String, i64)> {
        store
            .conn
            .prepare("SELECT id, kind, n FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn plain(records: &[Arc<Record>]) -> Vec<Record> {
        records.iter().map(|r| (**r).clone()).collect()
    }

    #[test]
    fn packed_rows_round_trip_in_order_with_an_id_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        let records = mixed();
        store.apply(&inserts(&records)).unwrap();
        assert_eq!(store.recent(&[], 10_000).unwrap(), plain(&records));
        // A change of kind ends a row.
        let got = rows(&store);
        let shape: Vec<(&str, i64)> = got.iter().map(|(_, k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            shape,
            [
                ("exec", 150),
                ("connect", 3),
                ("cpu", 1),
                ("exec", 70),
                ("alert", 1),
                ("connect", 10)
            ]
        );
        // So does the bound: 600 execs are rows of 256, 256 and 88.
        store
            .apply(&inserts(
                &(0..600)
                    .map(|i| exec(i, 1000 + u64::from(i)))
                    .collect::<Vec<_>>(),
            ))
            .unwrap();
        let counts: Vec<i64> = rows(&store)[6..].iter().map(|r| r.2).collect();
        assert_eq!(counts, [256, 256, 88]);
        let got = rows(&store);
        // A row's id is its first event's; the next row starts after its events.
        for w in got.windows(2) {
            assert_eq!(w[0].0 + w[0].2, w[1].0, "{w:?}");
        }
        // The ids go on after a restart.
        drop(store);
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        store.apply(&[Write::Insert(exec(9, 9))]).unwrap();
        let last = got.last().unwrap();
        assert_eq!(rows(&store).last().unwrap().0, last.0 + last.2);
        assert_eq!(store.recent(&[], 1).unwrap()[0].body.pid(), 9);
    }

    #[test]
    fn recent_counts_events_and_cuts_packed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        let records = mixed();
        store.apply(&inserts(&records)).unwrap();
        let all = plain(&records);
        for limit in [0, 1, 5, 10, 11, 12, 63, 64, 65, 100, 150, all.len(), 10_000] {
            let got = store.recent(&[], limit).unwrap();
            assert_eq!(got, all[all.len().saturating_sub(limit)..], "limit {limit}");
        }
        let execs: Vec<Record> = all
            .iter()
            .filter(|r| r.body.kind() == Kind::Exec)
            .cloned()
            .collect();
        for limit in [1, 6, 7, 69, 70, 71, 219, 220, 500] {
            let got = store.recent(&[Kind::Exec], limit).unwrap();
            assert_eq!(got, execs[execs.len().saturating_sub(limit)..], "{limit}");
        }
        let got = store.recent(&[Kind::Connect, Kind::Alert], 12).unwrap();
        // The alert and the last 10 connects, and one connect before the alert.
        let want: Vec<Record> = all
            .iter()
            .filter(|r| matches!(r.body.kind(), Kind::Connect | Kind::Alert))
            .cloned()
            .collect();
        assert_eq!(got, want[want.len() - 12..]);
    }

    #[test]
    fn alerts_and_their_updates_keep_their_place_between_packed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        let mut writes = inserts(&(1..=40).map(|i| exec(i, i as u64)).collect::<Vec<_>>());
        writes.push(Write::Insert(alert("a1", 1, 41)));
        writes.extend(inserts(
            &(42..=60).map(|i| exec(i, i as u64)).collect::<Vec<_>>(),
        ));
        writes.push(Write::Update(alert("a1", 5, 61)));
        writes.extend(inserts(
            &(62..=70).map(|i| exec(i, i as u64)).collect::<Vec<_>>(),
        ));
        store.apply(&writes).unwrap();
        let got = store.recent(&[], 1000).unwrap();
        assert_eq!(got.len(), 69);
        let alert_at = got
            .iter()
            .position(|r| r.body.kind() == Kind::Alert)
            .unwrap();
        assert_eq!(alert_at, 40, "between the execs it came between");
        match &got[alert_at].body {
            Body::Alert(a) => assert_eq!(a.count, 5, "updated in place"),
            other => panic!("{other:?}"),
        }
        let pids: Vec<u32> = got
            .iter()
            .filter(|r| r.body.kind() == Kind::Exec)
            .map(|r| r.body.pid())
            .collect();
        let want: Vec<u32> = (1..=40).chain(42..=60).chain(62..=70).collect();
        assert_eq!(pids, want);
        // The update ended the run: the execs after it are a row of their own.
        let shape: Vec<i64> = rows(&store).iter().map(|r| r.2).collect();
        assert_eq!(shape, [40, 1, 19, 9]);
    }

    /// Retention at every cutoff: no event at or after it goes, a row goes whole, and the
    /// count is of events.
    #[test]
    fn prune_keeps_every_event_at_or_after_the_cutoff_and_counts_events() {
        for cutoff_ms in [0, 1, 10, 64, 65, 100, 128, 129, 150, 151, 400] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
            let records: Vec<_> = (1..=150).map(|i| exec(i, i as u64)).collect();
            store.apply(&inserts(&records[..75])).unwrap();
            store.apply(&inserts(&records[75..])).unwrap();
            let pruned = store.prune_before(at(cutoff_ms)).unwrap();
            let left = store.recent(&[], 1000).unwrap();
            assert_eq!(pruned + left.len(), 150, "cutoff {cutoff_ms}");
            let newer = records
                .iter()
                .filter(|r| {
                    r.ts_ns() >= at(cutoff_ms).duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
                })
                .count();
            assert!(
                left.len() >= newer,
                "cutoff {cutoff_ms}: {} left",
                left.len()
            );
            // Whole rows (two of 75 here): what is left starts at a row's first event.
            assert!(
                [0, 75, 150].contains(&pruned),
                "cutoff {cutoff_ms}: {pruned}"
            );
            assert!(
                left.len() - newer < MAX_EVENTS,
                "at most a row's worth kept"
            );
        }
    }

    #[test]
    fn eviction_takes_whole_packed_rows_and_counts_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        // Rows: 70 execs, an alert, 80 execs, then 3 connects and 3 execs by turns, a cpu event.
        let mut records: Vec<_> = (1..=150).map(|i| exec(i, i as u64)).collect();
        records.insert(70, alert("a1", 1, 70));
        for i in 0..4 {
            records.extend((0..3).map(|j| connect(300 + i * 10 + j, 200)));
            records.extend((0..3).map(|j| exec(200 + i * 10 + j, 200)));
        }
        records.push(cpu(500, 500));
        store.apply(&inserts(&records)).unwrap();
        // 10 events asked: the first row goes, all 70 of it.
        assert_eq!(cap::evict_oldest(&store.conn, 10).unwrap(), 70);
        // 65 asked: the next routine row (the alert is not one) reaches it, 80 events.
        assert_eq!(cap::evict_oldest(&store.conn, 65).unwrap(), 80);
        // 7 asked: rows of 3 until 7 are reached, 9 events.
        assert_eq!(cap::evict_oldest(&store.conn, 7).unwrap(), 9);
        let left = store.recent(&[], 1000).unwrap();
        assert_eq!(
            left.len(),
            1 + 15 + 1,
            "the alert, 15 execs and connects, the cpu event"
        );
        assert_eq!(left[0].body.kind(), Kind::Alert, "alerts stay");
        assert_eq!(
            left[1].body.pid(),
            210,
            "the rest starts where a row started"
        );
        assert_eq!(cap::evict_oldest(&store.conn, 1000).unwrap(), 16);
        assert_eq!(store.recent(&[], 1000).unwrap().len(), 1);
        assert_eq!(cap::evict_oldest(&store.conn, 1000).unwrap(), 0);
    }

    #[test]
    fn the_writer_counts_events_not_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let stats = Arc::new(crate::store::StoreStats::default());
        let (tx, rx) = crate::store::queue::channel(crate::store::QUEUE_MAX, stats.clone());
        let handle = crate::store::spawn_writer(
            Store::open(&path, BIG).unwrap(),
            rx,
            crate::store::Limits {
                retention: Duration::from_secs(86400 * 365 * 100),
                max_bytes: BIG,
            },
        );
        for i in 0..5000 {
            tx.send(Write::Insert(exec(i, u64::from(i)))).unwrap();
        }
        drop(tx);
        handle.join().unwrap();
        let written = stats.written.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(written, 5000);
        let store = Store::open_read_only(&path).unwrap();
        assert_eq!(store.recent(&[], 10_000).unwrap().len(), 5000);
        let rows = rows(&store).len();
        assert!(rows <= 5000 / 16, "{rows} rows");
    }

    #[test]
    fn a_corrupt_packed_row_is_a_precise_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), BIG).unwrap();
        let records: Vec<_> = (1..=10).map(|i| exec(i, i as u64)).collect();
        store.apply(&inserts(&records)).unwrap();
        let id = rows(&store)[0].0;
        store
            .conn
            .execute(
                "UPDATE events SET body = substr(body, 1, length(body) - 3)",
                [],
            )
            .unwrap();
        match store.recent(&[], 10) {
            Err(StoreError::Corrupt { id: bad, .. }) => assert_eq!(bad, id),
            other => panic!("{other:?}"),
        }
        // A whole body, but a count that does not match it.
        store.conn.execute("DELETE FROM events", []).unwrap();
        store.apply(&inserts(&records)).unwrap();
        store.conn.execute("UPDATE events SET n = 11", []).unwrap();
        let err = store.recent(&[], 10).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    source: BodyError::Count {
                        column: 11,
                        body: 10
                    },
                    ..
                }
            ),
            "{err}"
        );
    }

    fn packed(records: &[Arc<Record>]) -> Vec<u8> {
        let mut buf = Vec::new();
        let row = next_row(records, &mut buf);
        assert_eq!(row.events, records.len());
        buf
    }

    #[test]
    fn every_truncation_and_bad_byte_is_an_error_not_a_panic() {
        let records: Vec<_> = (1..=5).map(|i| exec(i, i as u64 * 1000)).collect();
        let buf = packed(&records);
        assert_eq!(
            decode_row(0, 5, ValueRef::Blob(&buf)).unwrap(),
            plain(&records)
        );
        for len in 1..buf.len() {
            let cut = &buf[..len];
            // Cut at an event's end it decodes, with fewer events than the row says.
            assert!(decode_row(0, 5, ValueRef::Blob(cut)).is_err(), "{len}");
        }
        let mut trailing = buf.clone();
        trailing.push(0x80);
        assert!(decode_row(0, 5, ValueRef::Blob(&trailing)).is_err());
        for i in 1..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0xff;
            let _ = decode_row(0, 5, ValueRef::Blob(&bad));
        }
        // An unknown kind, and a time past the year 9999.
        let mut kind = vec![PACKED];
        append(&("h", 7u8), &mut kind);
        assert!(matches!(
            decode_row(0, 1, ValueRef::Blob(&kind)),
            Err(BodyError::PackKind(7))
        ));
        let mut late = vec![PACKED];
        append(&("h", EXEC), &mut late);
        append(&i64::MAX, &mut late);
        if let Body::Exec(b) = &records[0].body {
            append(b, &mut late);
        }
        assert!(matches!(
            decode_row(0, 1, ValueRef::Blob(&late)),
            Err(BodyError::Time)
        ));
        // A packed row of no event.
        let mut empty = vec![PACKED];
        append(&("h", EXEC), &mut empty);
        assert!(matches!(
            decode_row(0, 1, ValueRef::Blob(&empty)),
            Err(BodyError::Empty)
        ));
    }

    #[test]
    fn rows_close_at_their_bounds_and_times_may_go_back() {
        // Out of order by a few milliseconds (two sensors' rings): each event keeps its own.
        let records = vec![exec(1, 50), exec(2, 40), connect(3, 45), exec(4, 60)];
        let mut buf = Vec::new();
        let row = next_row(&records, &mut buf);
        assert_eq!(row.events, 2);
        assert_eq!(row.ts_ns, records[0].ts_ns(), "the newest");
        assert_eq!(
            decode_row(row.ts_ns, 2, ValueRef::Blob(&buf)).unwrap(),
            plain(&records[..2])
        );
        // Long argv: the body bound closes the row before the count does.
        let long: Vec<_> = (0..64)
            .map(|i| {
                let mut r = (*exec(i, 1)).clone();
                if let Body::Exec(b) = &mut r.body {
                    b.argv = vec!["x".repeat(2000)];
                }
                Arc::new(r)
            })
            .collect();
        let row = next_row(&long, &mut buf);
        assert!(
            row.events == 9 && buf.len() < MAX_BYTES + 2100,
            "{}",
            row.events
        );
        // Another host's event (a replayed record, say) starts a row of its own.
        let mut other = (*exec(9, 9)).clone();
        other.host = "db-1".into();
        let row = next_row(&[exec(8, 8), Arc::new(other)], &mut buf);
        assert_eq!(row.events, 1);
    }

    /// A version-2 store (no `n` column; JSON and one-event binary rows) is taken over: the
    /// column is added, old rows keep their ids and read back beside new packed rows.
    #[test]
    fn a_version_2_store_is_taken_over_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let old: Vec<Arc<Record>> = vec![exec(1, 1), cpu(2, 2), connect(3, 3), exec(4, 4)];
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA auto_vacuum = INCREMENTAL;
                 CREATE TABLE events (id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL,
                     kind TEXT NOT NULL, pid INTEGER NOT NULL, ref TEXT, body TEXT NOT NULL);
                 CREATE INDEX events_ref ON events(ref) WHERE ref IS NOT NULL;
                 PRAGMA user_version = 2;",
            )
            .unwrap();
            for (i, r) in old.iter().enumerate() {
                let mut buf = Vec::new();
                let body = match body::encode(r, &mut buf) {
                    Encoding::Binary if i == 0 => {
                        // The first as an agent before 0.2 wrote it: JSON.
                        rusqlite::types::Value::Text(serde_json::to_string(&**r).unwrap())
                    }
                    Encoding::Binary => rusqlite::types::Value::Blob(buf),
                    Encoding::Json => rusqlite::types::Value::Text(String::from_utf8(buf).unwrap()),
                };
                conn.execute(
                    "INSERT INTO events (id, ts_ns, kind, pid, ref, body)
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
                    rusqlite::params![
                        10 + i as i64,
                        r.ts_ns(),
                        r.body.kind().as_str(),
                        r.body.pid(),
                        body
                    ],
                )
                .unwrap();
            }
        }
        let mut store = Store::open(&path, BIG).unwrap();
        let new: Vec<_> = (5..=80).map(|i| exec(i, i as u64)).collect();
        store.apply(&inserts(&new)).unwrap();
        let mut all = plain(&old);
        all.extend(plain(&new));
        assert_eq!(store.recent(&[], 1000).unwrap(), all);
        let got = rows(&store);
        assert_eq!(
            got.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
            [(10, 1), (11, 1), (12, 1), (13, 1), (14, 76)]
        );
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        // Opened again (already version 3): nothing changes.
        drop(store);
        let store = Store::open(&path, BIG).unwrap();
        assert_eq!(store.recent(&[], 1000).unwrap(), all);
    }

    /// 3,000 execs of `/bin/true` from a script, in batches as the writer makes them: packed
    /// rows take less room than the one row per event of schema 2 (same bodies, format 3).
    #[test]
    fn packed_rows_take_less_room_than_one_row_per_event() {
        let true_exec = |i: u32| {
            Arc::new(Record::new(
                at(u64::from(i)),
                "web-1.example.net",
                Body::Exec(ExecBody {
                    pid: 40_000 + i,
                    ppid: 39_000,
                    uid: 1000,
                    comm: "true".into(),
                    filename: "/usr/bin/true".into(),
                    argv: vec!["/bin/true".into()],
                    ancestors: vec!["python3".into(), "bash".into(), "sshd".into()],
                    container: None,
                }),
            ))
        };
        let records: Vec<_> = (0..3_000).map(true_exec).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("packed.db"), BIG).unwrap();
        let empty = cap::usage(&store.conn).unwrap().live;
        for batch in records.chunks(100) {
            store.apply(&inserts(batch)).unwrap();
        }
        let packed = cap::usage(&store.conn).unwrap().live - empty;
        // The same events one per row, as schema 2 wrote them.
        let mut single = Store::open(&dir.path().join("single.db"), BIG).unwrap();
        let empty = cap::usage(&single.conn).unwrap().live;
        let tx = single.conn.transaction().unwrap();
        for r in &records {
            let mut buf = Vec::new();
            body::encode(r, &mut buf);
            tx.execute(
                "INSERT INTO events (ts_ns, kind, pid, ref, body) VALUES (?1, 'exec', ?2, NULL, ?3)",
                rusqlite::params![r.ts_ns(), r.body.pid(), buf],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let one_per_row = cap::usage(&single.conn).unwrap().live - empty;
        eprintln!(
            "3,000 /bin/true execs: {} KiB packed, {} KiB one per row ({:.0} and {:.0} bytes \
             an event)",
            packed / 1024,
            one_per_row / 1024,
            packed as f64 / 3000.0,
            one_per_row as f64 / 3000.0
        );
        assert!(packed * 10 < one_per_row * 7, "{packed} vs {one_per_row}");
    }
}
