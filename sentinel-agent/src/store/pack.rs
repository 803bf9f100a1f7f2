//! Several exec or connect events in one row. SQLite's cost is per row (a statement step, a
//! b-tree insert, five or six bound values), postcard's per string: one row per event spent
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
/// Events in one row at most. 64 `/bin/true` execs are about 4 KiB of body: the row still
/// costs one statement step, and a reader that wants the newest event decodes at most 63
/// others. More would save little more (the per-row share of the cost is already ~1/64).
pub const MAX_EVENTS: usize = 64;
/// A row is closed once its body passes this size (an exec's argv can be long): SQLite keeps
/// a row's overflow as a chain of pages that is read whole, whoever wants one event of it.
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
            || *r.host != *first.host
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

/// A postcard output that appends to a borrowed `Vec` (slices with one copy, not byte by byte).
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
        self.0.extend_from_slice(data);
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
