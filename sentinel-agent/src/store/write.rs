//! How a batch of writes becomes SQL, in one transaction: runs of inserts become rows
//! ([`pack`]: consecutive exec or connect events share one), written by multi-row `INSERT`s
//! of [`ROWS_PER_INSERT`] rows, each row taking the next ids (one per event); an alert's update
//! rewrites its row in place. The statements, `BEGIN` and `COMMIT` included, are prepared once
//! and cached.

use std::sync::Arc;

use rusqlite::Connection;

use super::{Write, body, pack};
use crate::event::{Body, Record};

/// Bytes a row costs in the table besides its body (the other columns, the record and cell
/// headers), rounded up.
const ROW_BYTES: u64 = 64;

/// Apply `writes` in one transaction, in order; the rows take their ids from `next_id`
/// (advanced past them, also when the transaction then fails: the caller keeps its own copy).
/// Returns about how many bytes it wrote: the bodies plus [`ROW_BYTES`] a row.
pub fn apply(
    conn: &Connection,
    writes: &[Write],
    rows: &mut Rows,
    next_id: &mut i64,
) -> rusqlite::Result<u64> {
    let tx = Batch::begin(conn)?;
    let mut bytes = 0;
    let mut start = 0;
    while start < writes.len() {
        let run = writes[start..]
            .iter()
            .take_while(|w| matches!(w, Write::Insert(_)))
            .count();
        if run == 0 {
            let (Write::Insert(r) | Write::Update(r)) = &writes[start];
            update_alert(&tx, r, &mut rows.bodies[0])?;
            bytes += rows.bodies[0].len() as u64 + ROW_BYTES;
            start += 1;
            continue;
        }
        let records: Vec<&Arc<Record>> = writes[start..start + run]
            .iter()
            .map(|w| match w {
                Write::Insert(r) | Write::Update(r) => r,
            })
            .collect();
        let mut rest = &records[..];
        while !rest.is_empty() {
            let used = rows.fill(rest);
            rows.insert(&tx, rest, next_id)?;
            bytes += rows.bytes();
            rest = &rest[used..];
        }
        start += run;
    }
    tx.commit()?;
    // A flood's batch fills a whole statement of rows: their buffers are not kept for good.
    rows.bodies.truncate(KEEP_BODIES);
    Ok(bytes)
}

/// Body buffers kept between batches: the rows of a batch of a few hundred events.
const KEEP_BODIES: usize = 4;

/// Rows per multi-row `INSERT` (7 parameters each, far below SQLite's limit).
pub const ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO events … VALUES (…), (…), …` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO events (id, ts_ns, kind, pid, ref, body, n) VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 {
            "(?,?,?,?,?,?,?)"
        } else {
            ",(?,?,?,?,?,?,?)"
        });
    }
    sql
}

/// The alert id an alert's row is found by; `None` for other events.
fn reference(r: &Record) -> Option<&str> {
    match &r.body {
        Body::Alert(a) => Some(a.id.as_str()),
        _ => None,
    }
}

/// The rows of one `INSERT` being written: what each holds and its encoded body, the body
/// buffers kept from one statement and one batch to the next (the writer keeps one).
pub struct Rows {
    rows: Vec<pack::Row>,
    bodies: Vec<Vec<u8>>,
}

impl Default for Rows {
    fn default() -> Self {
        Self {
            rows: Vec::with_capacity(ROWS_PER_INSERT),
            bodies: vec![Vec::with_capacity(256)],
        }
    }
}

impl Rows {
    /// Encode up to [`ROWS_PER_INSERT`] rows from the start of `records`; returns how many
    /// records they hold.
    fn fill(&mut self, records: &[&Arc<Record>]) -> usize {
        self.rows.clear();
        let mut used = 0;
        while used < records.len() && self.rows.len() < ROWS_PER_INSERT {
            if self.bodies.len() == self.rows.len() {
                self.bodies.push(Vec::with_capacity(256));
            }
            let row = pack::next_row(&records[used..], &mut self.bodies[self.rows.len()]);
            used += row.events;
            self.rows.push(row);
        }
        used
    }

    /// The bytes of the rows filled, as [`apply`] counts them.
    fn bytes(&self) -> u64 {
        self.bodies[..self.rows.len()]
            .iter()
            .map(|b| b.len() as u64 + ROW_BYTES)
            .sum()
    }

    /// Insert the rows [`fill`](Self::fill) made of `records`: a whole statement's worth in
    /// one `INSERT`, fewer row by row (two cached statements, not one per row count).
    fn insert(
        &self,
        tx: &Connection,
        records: &[&Arc<Record>],
        next_id: &mut i64,
    ) -> rusqlite::Result<()> {
        if self.rows.len() == ROWS_PER_INSERT {
            return insert_rows(tx, records, &self.rows, &self.bodies, next_id);
        }
        let mut first = 0;
        for (i, row) in self.rows.iter().enumerate() {
            let (rows, bodies) = (&self.rows[i..=i], &self.bodies[i..=i]);
            insert_rows(tx, &records[first..], rows, bodies, next_id)?;
            first += row.events;
        }
        Ok(())
    }
}

/// The writer's transaction, begun and committed by cached statements: rusqlite's
/// `Transaction` runs `BEGIN` and `COMMIT` through `execute_batch`, parsing them afresh for
/// every batch. Dropped uncommitted (an error on the way), it rolls back.
struct Batch<'c> {
    conn: &'c Connection,
    committed: bool,
}

impl<'c> Batch<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN")?.raw_execute()?;
        Ok(Self {
            conn,
            committed: false,
        })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.raw_execute()?;
        self.committed = true;
        Ok(())
    }
}

impl std::ops::Deref for Batch<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.committed && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Bind an encoded body: JSON as text (readable by `json_extract`), binary as a blob.
fn bind_body(
    stmt: &mut rusqlite::Statement<'_>,
    at: usize,
    encoding: body::Encoding,
    bytes: &[u8],
) -> rusqlite::Result<()> {
    match encoding {
        body::Encoding::Binary => stmt.raw_bind_parameter(at, bytes),
        body::Encoding::Json => {
            let text = std::str::from_utf8(bytes).expect("serde_json writes UTF-8");
            stmt.raw_bind_parameter(at, text)
        }
    }
}

/// Replace the stored version of alert `r` (found by its id).
fn update_alert(tx: &Connection, r: &Record, buf: &mut Vec<u8>) -> rusqlite::Result<()> {
    let encoding = body::encode(r, buf);
    let mut update = tx.prepare_cached("UPDATE events SET body = ?2 WHERE ref = ?1")?;
    update.raw_bind_parameter(1, reference(r))?;
    bind_body(&mut update, 2, encoding, buf)?;
    update.raw_execute()?;
    Ok(())
}

/// One `INSERT` of `rows` (bodies in `bodies`), holding `records`; the rows take their ids from
/// `next_id` (its statement is cached per row count).
fn insert_rows(
    tx: &Connection,
    records: &[&Arc<Record>],
    rows: &[pack::Row],
    bodies: &[Vec<u8>],
    next_id: &mut i64,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(&insert_sql(rows.len()))?;
    let mut first = 0;
    for (i, (row, body)) in rows.iter().zip(bodies).enumerate() {
        let r = records[first];
        let at = i * 7;
        insert.raw_bind_parameter(at + 1, *next_id)?;
        insert.raw_bind_parameter(at + 2, row.ts_ns)?;
        insert.raw_bind_parameter(at + 3, r.body.kind().as_str())?;
        insert.raw_bind_parameter(at + 4, r.body.pid())?;
        insert.raw_bind_parameter(at + 5, reference(r))?;
        bind_body(&mut insert, at + 6, row.encoding, body)?;
        insert.raw_bind_parameter(at + 7, row.events as i64)?;
        *next_id += row.events as i64;
        first += row.events;
    }
    insert.raw_execute()?;
    Ok(())
}
