//! `sentinel run`: start-up and the event loop. [`run`] reads as the table of contents: the
//! start-up steps (each in [`startup`], building one part: sensors, store, switch, chat, the
//! CLI socket…), then the loop that feeds the [`Pipeline`] with kernel records, timer ticks and
//! human answers (and reloads, [`reload`]) until SIGTERM, then a clean stop: programs detached, every event committed,
//! the enforcement table left in force.

pub mod behaviour;
pub mod control;
mod culprit;
pub mod decisions;
mod follow;
pub mod ipc;
pub mod metrics;
mod outcomes;
mod persistence;
pub mod pipeline;
pub mod reload;
mod repeats;
pub mod service;
mod ssh_watch;
mod startup;
mod stdio;
mod ticks;

use std::{collections::HashSet, net::IpAddr, path::Path, time::Duration};

use anyhow::Context as _;

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use self::{control::Unblock, pipeline::Pipeline};
use crate::{
    config::Config,
    detect,
    enforce::infra::Infrastructure,
    fleet,
    sensors::{KernelEvent, Sensors},
    switch::{clock::Now, decision::Answer, worker::Report},
    timer::{Every, Start},
};

/// Run the agent until SIGTERM or SIGINT: start-up as named steps, the event loop, the stop.
/// `source` is the config file, re-read on `sentinel reload` and SIGHUP.
pub async fn run(config: Config, source: reload::Source) -> anyhow::Result<()> {
    let agent = &config.agent;
    control::ensure_not_running(&agent.socket)?;
    // First, before a user's process could take its port: the override endpoint's socket.
    let override_socket = startup::take_override_socket(&config);
    let enrich = startup::open_enrichment(&config)?;
    let mut sensors = startup::load_sensors(agent, std::process::id())?;
    let seeded = startup::seed_tree()?;
    let store = startup::open_store(agent)?;
    let behaviour = startup::start_behaviour(&config);
    let enforcer = startup::start_enforcer(&config, &mut sensors.ebpf)?;
    let mut switch = startup::open_ledger_and_switch(&config, enforcer)?;

    // Human answers reach the loop on one channel: chat, signed links, the CLI, the fleet.
    let (answers_tx, answers_rx) = mpsc::channel::<Answer>(64);
    let mut tasks = Vec::new();
    let secret = startup::load_override_key(&config)?;
    let override_health = std::sync::Arc::new(crate::override_http::listener::Health::default());
    tasks.extend(startup::start_override_endpoint(
        &config,
        secret.as_ref(),
        override_socket,
        override_health.clone(),
        answers_tx.clone(),
    ));
    let (chat, notify_stats) = startup::start_chat(
        &config,
        secret,
        switch.notices,
        answers_tx.clone(),
        sensors.lost.clone(),
    );
    tasks.extend(chat);
    // "Ready" means decisions and blocks are back in force; resumed decisions are announced.
    switch.switch.resume(&enrich.trust, Now::read())?;

    let (shared, unblocks_rx, reloads_rx) = startup::share_state(
        &config,
        &sensors,
        seeded.tree.len(),
        startup::HealthReports {
            notify: notify_stats,
            store: store.stats,
            enforce: switch.health,
            override_: override_health,
        },
        answers_tx.clone(),
    );
    let (fleet_task, fleet_rx) = startup::start_fleet(&config, &shared, answers_tx);
    tasks.extend(fleet_task);
    tasks.push(startup::open_control_socket(agent, &shared)?);
    let (reader, batches) = startup::start_readers(&mut sensors, &shared);
    tasks.extend(reader);

    let detectors = startup::build_detectors(
        &config,
        enrich,
        behaviour.behaviour,
        behaviour.intel,
        shared.floods.clone(),
    );
    let mut core = startup::build_pipeline(
        &config,
        seeded,
        store.tx,
        shared.clone(),
        sensors.cpu_samples.take(),
        detectors,
        switch.switch,
    )?;
    let mut timers = Timers::start(agent.cpu_interval)?;
    // Live SSH sessions are re-read on their own thread, when sshd's processes change: /proc
    // and sock_diag must never hold up draining the ring buffers.
    let (ssh_peers, ssh_nudge) = ssh_watch::spawn(core.detect.trust.ssh().clone());
    core.ssh_nudge = ssh_nudge;
    tasks.extend(startup::start_metrics(&config, &shared).await?);
    startup::drop_privileges();

    let mut inbox = Inbox {
        batches,
        answers: answers_rx,
        reports: switch.reports,
        infra: switch.infra,
        unblocks: unblocks_rx,
        work: behaviour.work,
        fleet: fleet_rx,
        ssh_peers,
        sigterm: signal(SignalKind::terminate())?,
        sigint: signal(SignalKind::interrupt())?,
        sighup: signal(SignalKind::hangup())?,
        reloads: reloads_rx,
        source,
    };
    crate::alloc::return_freed_memory();
    match crate::resident::drop_file_pages() {
        Ok(bytes) => info!(
            kib = bytes / 1024,
            "start-up's code pages handed back (read again from the page cache when used)"
        ),
        Err(e) => warn!("could not hand back start-up's code pages: {e}"),
    }
    startup::announce_ready(agent, sensors.attached, core.tree.len());
    event_loop(&mut core, &mut inbox, &mut timers).await;
    stop(
        core,
        sensors,
        tasks,
        switch.worker,
        store.writer,
        &agent.socket,
    )
    .await
}

/// How often the tree is checked against `/proc` for exits the agent missed.
const GC_EVERY: Duration = Duration::from_secs(30);
/// The loop's housekeeping clock: the kernel's lost counters read for `blind`, and the
/// switch's tick (blocks whose time ended, the budget, the counts; pending deadlines are
/// woken for at their own time besides). One timer, started with the others on the kernel's
/// timers ([`timer`](crate::timer)), so an idle agent wakes once a second.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// Sleep until `at`; forever without one.
async fn until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// When the switch's earliest pending deadline is due; `None` with nothing pending (no
/// timer then: the housekeeping tick still runs the switch every second), or when it lies
/// past what an `Instant` can say (a decision waiting for a human is due in 100 years).
fn switch_due(core: &Pipeline) -> Option<std::time::Instant> {
    core.switch
        .next_due(Now::read())
        .and_then(|d| std::time::Instant::now().checked_add(d))
}

/// What the event loop waits on besides its timers.
struct Inbox {
    /// Kernel records, in batches from the ring-buffer reader.
    batches: mpsc::Receiver<Vec<KernelEvent>>,
    answers: mpsc::Receiver<Answer>,
    /// What the switch's worker did.
    reports: mpsc::UnboundedReceiver<Report>,
    infra: watch::Receiver<Infrastructure>,
    unblocks: mpsc::Receiver<Unblock>,
    /// The behaviour detectors' background work.
    work: mpsc::UnboundedReceiver<detect::Work>,
    fleet: mpsc::Receiver<fleet::Command>,
    ssh_peers: watch::Receiver<HashSet<IpAddr>>,
    sigterm: Signal,
    sigint: Signal,
    /// SIGHUP and `sentinel reload`: re-read the config file and the country database.
    sighup: Signal,
    reloads: mpsc::Receiver<reload::Request>,
    source: reload::Source,
}

/// The loop's periodic work, on the kernel's timers ([`timer`](crate::timer)).
struct Timers {
    cpu: Every,
    gc: Every,
    housekeeping: Every,
    /// systemd's watchdog: pinged from the loop, so a stalled loop gets the agent restarted.
    watchdog: Option<Every>,
}

impl Timers {
    /// Every timer starts at the same instant, so ticks due in the same second (CPU samples
    /// every 2 s, housekeeping every second) are one wake-up of the loop, not several.
    fn start(cpu_interval: Duration) -> anyhow::Result<Self> {
        let start = Start::now().context("reading the monotonic clock")?;
        let every = |period| {
            Every::from(start, period).with_context(|| {
                format!(
                    "creating the loop's {} timer",
                    humantime::format_duration(period)
                )
            })
        };
        Ok(Self {
            cpu: every(cpu_interval)?,
            gc: every(GC_EVERY)?,
            housekeeping: every(HOUSEKEEPING_EVERY)?,
            watchdog: service::watchdog_interval().map(every).transpose()?,
        })
    }
}

/// Tick an optional timer; never completes when there is none.
async fn tick(timer: &mut Option<Every>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A drained batch through the pipeline, in ring order.
#[cfg(not(feature = "sensors-only"))]
fn handle_batch(core: &mut Pipeline, batch: Vec<KernelEvent>) {
    let newest = batch.last().map_or(0, KernelEvent::ts_ns);
    batch.into_iter().for_each(|e| core.handle(e));
    core.records_handled(newest);
    core.reap();
    core.flush();
}

/// The `sensors-only` benchmark build: the batch was read and decoded, and goes no further;
/// its records count as written, so that a bench waiting for the store sees them arrive.
#[cfg(feature = "sensors-only")]
fn handle_batch(core: &mut Pipeline, batch: Vec<KernelEvent>) {
    core.store_tx.count_as_written(batch.len());
}

/// Feed the pipeline until SIGTERM or SIGINT, or until every sensor reader stopped.
async fn event_loop(core: &mut Pipeline, inbox: &mut Inbox, timers: &mut Timers) {
    loop {
        tokio::select! {
            batch = inbox.batches.recv() => match batch {
                Some(batch) => handle_batch(core, batch),
                None => {
                    error!("every sensor reader stopped");
                    break;
                }
            },
            _ = timers.cpu.tick() => {
                core.sample_cpu();
                core.reap();
            }
            _ = timers.gc.tick() => core.gc(),
            _ = timers.housekeeping.tick() => {
                core.check_blind();
                core.tick();
            }
            Ok(()) = inbox.ssh_peers.changed() => {
                let peers = inbox.ssh_peers.borrow_and_update().clone();
                info!(?peers, "authenticated SSH peers (trusted) changed");
                core.detect.trust.set_ssh_peers(peers);
            }
            _ = until(switch_due(core)) => core.tick(),
            _ = until(core.detect.persistence.due()) => core.attribute_writes(),
            _ = tick(&mut timers.watchdog) => service::notify_watchdog(),
            Some(answer) = inbox.answers.recv() => core.answer(answer),
            Some(report) = inbox.reports.recv() => core.report(report),
            Ok(()) = inbox.infra.changed() => {
                core.switch.gate.infra = inbox.infra.borrow_and_update().clone();
            }
            Some(request) = inbox.unblocks.recv() => core.unblock(request),
            Some(work) = inbox.work.recv() => core.work(work),
            Some(command) = inbox.fleet.recv() => core.fleet_command(command),
            _ = inbox.sighup.recv() => {
                info!("SIGHUP: reloading");
                reload::log(&reload::reload(core, &mut inbox.source));
            }
            Some(request) = inbox.reloads.recv() => {
                let outcome = reload::reload(core, &mut inbox.source);
                reload::log(&outcome);
                let _ = request.reply.send(outcome);
            }
            _ = inbox.sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = inbox.sigint.recv() => { info!("SIGINT: stopping"); break; }
        }
        core.flush_alert_repeats();
    }
    core.flush_alert_repeats();
}

/// Stop cleanly: programs detached, every event committed, the enforcement table left in
/// force.
async fn stop(
    mut core: Pipeline,
    sensors: Sensors,
    tasks: Vec<JoinHandle<()>>,
    worker: std::thread::JoinHandle<()>,
    writer: std::thread::JoinHandle<()>,
    socket: &Path,
) -> anyhow::Result<()> {
    service::notify_stopping();
    // Detach first, then let the writer commit what it holds.
    for task in &tasks {
        task.abort();
    }
    drop(sensors);
    core.save_intel();
    // The worker finishes what is queued (commits, blocks) once the switch is gone.
    drop(core);
    tokio::task::spawn_blocking(move || worker.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the switch worker panicked"))?;
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    let _ = std::fs::remove_file(socket);
    info!("stopped");
    Ok(())
}
