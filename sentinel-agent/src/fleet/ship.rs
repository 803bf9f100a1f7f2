//! The agent's fleet task: connect (and reconnect, with backoff, forever), check that the
//! schema is the one it knows and that it works under its own role (it never changes the
//! schema: [`admin`](super::admin)), then ship the outbox every `fleet.interval`, send a heartbeat every `fleet.heartbeat`, and
//! hand answers and shared blocks to [`decide`](super::decide). It runs beside the event
//! loop and never inside it: an outage only grows the outbox, and `status` says why.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    daemon::control::Shared,
    fleet::{
        FleetConfig, Stats, decide,
        outbox::{EventRow, Outbox, OutboxError, Row},
        postgres::{self, Heartbeat, PgError},
    },
    switch::decision::Answer,
    timer::{Every, Start},
};

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often waiting answers are polled when no notification came. LISTEN is the path
/// answers take (the store's trigger notifies on every answer); the poll only covers a
/// notification lost by a proxy between the agent and PostgreSQL. Each poll is a round trip
/// to the store, so it is rare: an idle agent's cost is its timers.
const ANSWER_POLL: Duration = Duration::from_secs(30);
/// How often shared blocks are re-read without a notification (same reason).
const SHARED_POLL: Duration = Duration::from_secs(60);
/// How often the outbox is read although no row was queued since the last drain: rows left by
/// an earlier run of the agent, or by a drain that failed half-way, go out at least this often.
const OUTBOX_SWEEP: Duration = Duration::from_secs(60);

/// What the fleet task needs from the agent.
pub struct Context {
    pub config: FleetConfig,
    pub host: String,
    pub db: PathBuf,
    pub shared: Arc<Shared>,
    pub stats: Arc<Stats>,
    /// Answers go the same way as the chat buttons' (exactly once, in the switch).
    pub answers: mpsc::Sender<Answer>,
    /// Shared blocks and lifts, to the event loop.
    pub commands: mpsc::Sender<super::Command>,
}

/// The fleet task: runs until the agent stops.
pub async fn run(ctx: Context) {
    let outbox = match Outbox::open(&ctx.db) {
        Ok(o) => Arc::new(Mutex::new(o.with_cap(ctx.config.outbox_max_rows))),
        Err(e) => {
            ctx.stats.update(|s| s.last_error = Some(e.to_string()));
            warn!("fleet shipping is off: {e}");
            return;
        }
    };
    let mut shared_view =
        decide::SharedView::new(ctx.config.keyring(), ctx.config.accept_unsigned_shares);
    let mut checker = decide::Checker::new(ctx.config.keyring(), ctx.config.answer_ttl);
    if ctx.config.operator_keys.is_empty() {
        warn!("fleet.operator_keys is empty: every fleet answer and shared lift will be refused");
    }
    let mut backoff = ctx.config.interval;
    loop {
        refresh_outbox_len(&ctx, &outbox).await;
        let error = session(&ctx, &outbox, &mut shared_view, &mut checker).await;
        let was_connected = ctx.stats.snapshot().connected;
        ctx.stats.update(|s| {
            s.connected = false;
            s.last_error = Some(error.clone());
        });
        // A store that worked is retried at once at the normal pace; one that keeps failing
        // less and less often.
        backoff = if was_connected {
            ctx.config.interval
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
        warn!(
            retry_in = %humantime::format_duration(backoff),
            "fleet store: {error} (the outbox keeps everything until it is back)"
        );
        tokio::time::sleep(backoff).await;
    }
}

/// One connection's life, until it fails: why it ended.
async fn session(
    ctx: &Context,
    outbox: &Arc<Mutex<Outbox>>,
    shared_view: &mut decide::SharedView,
    checker: &mut decide::Checker,
) -> String {
    match connected(ctx, outbox, shared_view, checker).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn connected(
    ctx: &Context,
    outbox: &Arc<Mutex<Outbox>>,
    shared_view: &mut decide::SharedView,
    checker: &mut decide::Checker,
) -> Result<std::convert::Infallible, String> {
    let pg = ctx.config.pg_config().map_err(|e| e.to_string())?;
    let (mut client, mut notes) = postgres::connect(&pg, &ctx.config.ca_file)
        .await
        .map_err(|e| format!("{}: {e}", super::config::describe(&pg)))?;
    super::admin::check_store(&client, &ctx.host)
        .await
        .map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("LISTEN {}", postgres::CHANNEL))
        .await
        .map_err(|e| e.to_string())?;
    info!(store = %super::config::describe(&pg), "fleet store connected");
    ctx.stats.update(|s| {
        s.connected = true;
        s.last_error = None;
    });
    let pg_err = |e: PgError| e.to_string();
    let beat = postgres::prepare_heartbeat(&client).await.map_err(pg_err)?;
    heartbeat(ctx, &client, &beat).await.map_err(pg_err)?;
    shared_view
        .sync(&client, &ctx.host, ctx.config.share_blocks, &ctx.commands)
        .await
        .map_err(pg_err)?;
    decide::pickup(&client, &ctx.host, &ctx.answers, checker)
        .await
        .map_err(pg_err)?;

    // The shipping tick sits behind a condition: tokio's interval, which only runs while
    // polled. The others are always polled: the kernel's timers, one wake-up each per
    // period ([`timer`](crate::timer)), all from one start.
    let mut ship_tick = quiet_interval(ctx.config.interval);
    let start = Start::now().map_err(|e| format!("reading the monotonic clock: {e}"))?;
    let every = |period| {
        Every::from(start, period).map_err(|e| format!("creating the fleet task's timer: {e}"))
    };
    let mut heartbeat_tick = every(ctx.config.heartbeat)?;
    let mut answer_tick = every(ANSWER_POLL)?;
    let mut shared_tick = every(SHARED_POLL)?;
    let mut sweep_tick = every(OUTBOX_SWEEP)?;
    let answer_note = format!("answer {}", ctx.host);
    // Events are read from the event store after a cursor, which no notification covers: a
    // host that ships them reads at every tick.
    let mut dirty = true;
    loop {
        tokio::select! {
            _ = ctx.stats.outbox_filled(), if !dirty => dirty = true,
            _ = sweep_tick.tick() => dirty = true,
            _ = ship_tick.tick(), if dirty || ctx.config.ship_events => {
                dirty = !drain(ctx, &mut client, outbox).await.map_err(pg_err)?;
            }
            _ = heartbeat_tick.tick() => heartbeat(ctx, &client, &beat).await.map_err(pg_err)?,
            note = notes.recv() => match note {
                Some(n) if n == answer_note => {
                    decide::pickup(&client, &ctx.host, &ctx.answers, checker).await.map_err(pg_err)?
                }
                Some(n) if n == "shared" => shared_view
                    .sync(&client, &ctx.host, ctx.config.share_blocks, &ctx.commands)
                    .await
                    .map_err(pg_err)?,
                Some(_) => {}
                None => return Err("the connection to the fleet store was lost".into()),
            },
            _ = answer_tick.tick() => {
                decide::pickup(&client, &ctx.host, &ctx.answers, checker).await.map_err(pg_err)?
            }
            _ = shared_tick.tick() => shared_view
                .sync(&client, &ctx.host, ctx.config.share_blocks, &ctx.commands)
                .await
                .map_err(pg_err)?,
        }
    }
}

/// An interval that, after a pause (a disabled branch, a slow store), waits its full period
/// instead of firing the ticks it missed in a burst.
fn quiet_interval(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

async fn refresh_outbox_len(ctx: &Context, outbox: &Arc<Mutex<Outbox>>) {
    let ob = outbox.clone();
    let counts = tokio::task::spawn_blocking(move || {
        let ob = ob.lock().expect("outbox");
        Ok::<_, OutboxError>((ob.len()?, ob.dropped()?))
    })
    .await;
    if let Ok(Ok((n, dropped))) = counts {
        ctx.stats.update(|s| {
            s.outbox = n;
            s.outbox_dropped = dropped;
        });
    }
}

/// One batch from the outbox (and the event store after the cursor, with `ship_events`).
async fn take(
    outbox: &Arc<Mutex<Outbox>>,
    batch: usize,
    events: bool,
) -> Result<(Vec<Row>, Vec<EventRow>), String> {
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || {
        let ob = ob.lock().expect("outbox");
        let rows = ob.take(batch).map_err(|e| e.to_string())?;
        let events = if events {
            let cursor = ob.cursor().map_err(|e| e.to_string())?;
            ob.events_after(cursor, batch.saturating_sub(rows.len()).max(1))
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        Ok((rows, events))
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn ack(outbox: &Arc<Mutex<Outbox>>, rows: &[Row], events: &[EventRow]) -> Result<(), String> {
    let ob = outbox.clone();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let cursor = events.last().map(|e| e.id);
    tokio::task::spawn_blocking(move || {
        let ob = ob.lock().expect("outbox");
        ob.ack(&seqs).map_err(|e| e.to_string())?;
        if let Some(c) = cursor {
            ob.set_cursor(c).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Ship until the outbox is empty, one transaction per batch, acknowledging each batch only
/// once PostgreSQL committed it. False when the outbox could not be read (try again).
async fn drain(
    ctx: &Context,
    client: &mut tokio_postgres::Client,
    outbox: &Arc<Mutex<Outbox>>,
) -> Result<bool, PgError> {
    let cfg = &ctx.config;
    loop {
        let (rows, events) = match take(outbox, cfg.batch, cfg.ship_events).await {
            Ok(b) => b,
            Err(e) => {
                ctx.stats.update(|s| s.last_error = Some(e.clone()));
                warn!("reading the fleet outbox: {e}");
                return Ok(false);
            }
        };
        if rows.is_empty() && events.is_empty() {
            refresh_outbox_len(ctx, outbox).await;
            return Ok(true);
        }
        match postgres::ship(client, &ctx.host, &rows, &events, cfg.share_blocks).await {
            Ok(()) => {}
            Err(e) if e.is_data() => {
                // One bad row must not hold up the rest: ship them one by one, dropping what
                // the store refuses.
                warn!("the fleet store refused a batch ({e}); shipping it row by row");
                ship_one_by_one(ctx, client, &rows, &events).await?;
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = ack(outbox, &rows, &events).await {
            warn!("acknowledging shipped fleet rows: {e} (they will be shipped again, harmlessly)");
        }
        let n = (rows.len() + events.len()) as u64;
        ctx.stats.update(|s| {
            s.shipped += n;
            s.last_shipped = Some(super::rfc3339(SystemTime::now()));
            s.last_error = None;
        });
    }
}

async fn ship_one_by_one(
    ctx: &Context,
    client: &mut tokio_postgres::Client,
    rows: &[Row],
    events: &[EventRow],
) -> Result<(), PgError> {
    let share = ctx.config.share_blocks;
    for r in rows {
        match postgres::ship(client, &ctx.host, std::slice::from_ref(r), &[], share).await {
            Err(e) if e.is_data() => {
                warn!(seq = r.seq, kind = r.kind.as_str(), key = %r.key, "dropped a row the fleet store refuses: {e}")
            }
            other => other?,
        }
    }
    for ev in events {
        match postgres::ship(client, &ctx.host, &[], std::slice::from_ref(ev), false).await {
            Err(e) if e.is_data() => {
                warn!(id = ev.id, "dropped an event the fleet store refuses: {e}")
            }
            other => other?,
        }
    }
    Ok(())
}

async fn heartbeat(
    ctx: &Context,
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
) -> Result<(), PgError> {
    let status = ctx.shared.status();
    let snapshot = ctx.stats.snapshot();
    let hb = Heartbeat {
        version: env!("CARGO_PKG_VERSION"),
        heartbeat_s: ctx.config.heartbeat.as_secs().max(1) as i32,
        sensors: serde_json::to_value(&status.sensors).unwrap_or_default(),
        lost: status.sensors.values().map(|s| s.lost as i64).sum(),
        pending: status.pending as i64,
        outbox: snapshot.outbox as i64,
        outbox_dropped: snapshot.outbox_dropped as i64,
    };
    postgres::heartbeat(client, statement, &ctx.host, &hb).await
}
