//! `sentinel run`: start-up and the event loop. [`run`] is a list of named start-up steps,
//! each building one part (GeoIP, trust, sensors, process tree, store, switch, override
//! endpoint, chat, CLI socket, ring-buffer readers, pipeline, metrics); then it feeds the
//! [`Pipeline`] with kernel records, timer ticks and human answers until SIGTERM, and stops
//! cleanly: programs detached, every event committed, the enforcement table left in force.
//!
//! In: the config. Out: a running agent. The order of the steps matters and is explained
//! where it does: sensors attach before the tree is seeded from `/proc`, the switch resumes
//! before the socket answers, capabilities drop only once everything is bound.

pub mod control;
pub mod ipc;
pub mod metrics;
pub mod pipeline;
pub mod service;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64, mpsc as std_mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::Ebpf;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use self::{
    control::{Shared, Unblock},
    ipc::Hub,
    pipeline::{Detectors, Pipeline},
};
use crate::{
    config::{Config, EnforceMode},
    detect::{self, Alerts},
    enforce::{Enforcer, guard::ConnectGuard, kill::Killer},
    enrich::geo::CountryDb,
    enrich::tree::ProcessTree,
    enrich::trust::{TrustSet, read_ssh_peers},
    event::BootClock,
    notify::{
        self, NotifyStats,
        summary::{Summary, SummarySource},
    },
    override_http::{self, Secret},
    sensors::btf,
    sensors::{self, KernelEvent, LoadOptions, LostMaps, SENSORS, cpu::CpuTracker},
    store::{self, Store},
    switch::decision::Answer,
    switch::ledger::Ledger,
    switch::{Switch, Timings},
};

/// How often the tree is checked against `/proc` for exits the agent missed.
const GC_EVERY: Duration = Duration::from_secs(30);
/// How often the live SSH sessions (trusted peers) are re-read.
const SSH_REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Re-read the trusted SSH peers every [`SSH_REFRESH_EVERY`] on a thread of its own; the
/// receiver sees a change only when the set changed. Nothing runs when SSH trust is off.
fn spawn_ssh_watch(ports: Vec<u16>) -> watch::Receiver<HashSet<IpAddr>> {
    let (tx, rx) = watch::channel(HashSet::new());
    if ports.is_empty() {
        return rx;
    }
    std::thread::Builder::new()
        .name("ssh-peers".into())
        .spawn(move || {
            loop {
                let peers = read_ssh_peers(Path::new("/proc/net"), &ports);
                tx.send_if_modified(|current| {
                    let changed = *current != peers;
                    if changed {
                        *current = peers;
                    }
                    changed
                });
                if tx.is_closed() {
                    return;
                }
                std::thread::sleep(SSH_REFRESH_EVERY);
            }
        })
        .expect("spawn the ssh-peers thread");
    rx
}

/// Longest the loop sleeps without re-checking pending deadlines (a safety net: it wakes at
/// the earliest deadline anyway).
const SWITCH_TICK: Duration = Duration::from_secs(1);

/// How long until the switch's next deadline (at most [`SWITCH_TICK`]).
fn until_deadline(core: &Pipeline) -> Duration {
    core.switch
        .next_deadline()
        .map_or(SWITCH_TICK, |d| {
            d.duration_since(SystemTime::now()).unwrap_or_default()
        })
        .min(SWITCH_TICK)
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let agent = &config.agent;
    let agent_tgid = std::process::id();
    control::ensure_not_running(&agent.socket)?;
    let geoip = open_geoip(&config)?;
    let trust = load_trust(&config);
    let sensors = load_sensors(&config, agent_tgid)?;
    let sensors::Sensors {
        mut ebpf,
        attached,
        lost,
        exec_ring,
        connect_ring,
        cpu_samples,
    } = sensors;
    // Seed after attaching: a process started in between is then in both, never in neither.
    let (tree, proc_root) = seed_tree()?;
    let (store_tx, writer) = start_store(&config)?;
    let (answers_tx, answers_rx) = mpsc::channel::<Answer>(64);
    let (unblock_tx, unblock_rx) = mpsc::channel::<Unblock>(16);
    let mut tasks = Vec::new();
    // The switch resumes before the socket answers: "ready" means decisions and blocks are
    // back in force.
    let mut switch = open_switch(&config, &mut ebpf)?;
    // Chat: announced decisions go out through every configured channel; answers (signed
    // links, Slack clicks, Telegram presses) come back on the same channel as the CLI's.
    let (notices_tx, notices_rx) = mpsc::unbounded_channel();
    switch.set_notices(notices_tx);
    let notify_stats = Arc::new(NotifyStats::default());
    let secret = load_override_key(&config)?;
    tasks.extend(start_override_endpoint(&config, secret.as_ref(), &answers_tx).await?);
    tasks.extend(notify::spawn(
        &config,
        secret,
        notices_rx,
        answers_tx.clone(),
        notify_stats.clone(),
        Some(summary_source(&config, lost.clone())),
    ));
    // Resumed decisions are announced too.
    switch.resume(&trust, SystemTime::now())?;
    let shared = Arc::new(Shared {
        host: config.host_id(),
        started: Instant::now(),
        attached,
        counters: Default::default(),
        lost,
        processes: AtomicU64::new(tree.len() as u64),
        pending: AtomicU64::new(0),
        blocks: AtomicU64::new(0),
        kills: AtomicU64::new(0),
        alerts: Default::default(),
        notify: notify_stats,
        hub: Hub::default(),
        answers: answers_tx,
        unblocks: unblock_tx,
    });
    let listener = control::bind_socket(&agent.socket)?;
    tasks.push(tokio::spawn(control::serve(listener, shared.clone())));
    let (batches, readers) = start_readers(exec_ring, connect_ring, &shared);
    tasks.extend(readers);
    let mut core = build_pipeline(
        &config,
        Parts {
            tree,
            proc_root,
            store_tx,
            shared: shared.clone(),
            cpu_map: cpu_samples,
            detect: build_detectors(&config, geoip, trust),
            switch,
            agent_tgid,
        },
    );
    tasks.extend(start_metrics(&config, &shared).await?);
    drop_capabilities();
    let inbox = Inbox {
        batches,
        answers: answers_rx,
        unblocks: unblock_rx,
    };
    event_loop(&config, &mut core, attached, inbox).await?;
    stop(&config, tasks, ebpf, core, writer).await
}

/// The GeoIP country database, unless `geo.enabled` is off.
fn open_geoip(config: &Config) -> anyhow::Result<Option<CountryDb>> {
    if !config.geo.enabled {
        warn!("geo.enabled = false: connections get no country and geo alerts are off");
        return Ok(None);
    }
    let geo = CountryDb::open(&config.geo.database).with_context(|| {
        "the GeoIP database is needed for geo alerts (scripts/geoip.sh installs one; \
         or set geo.enabled = false)"
    })?;
    info!("GeoIP: {}", geo.describe());
    Ok(Some(geo))
}

/// The trusted addresses, with the SSH sessions live right now.
fn load_trust(config: &Config) -> TrustSet {
    let mut trust = TrustSet::new(
        &config.trust.ips,
        if config.trust.ssh_peers {
            &config.trust.ssh_ports
        } else {
            &[]
        },
    );
    trust.refresh_ssh_peers(Path::new("/proc/net"));
    trust
}

/// Mount tracefs if needed, read the kernel's struct offsets, load and attach the programs.
fn load_sensors(config: &Config, agent_tgid: u32) -> anyhow::Result<sensors::Sensors> {
    sensors::ensure_tracefs()?;
    let mut offsets = match btf::kernel_offsets() {
        Ok(o) => o,
        Err(e) => {
            warn!(
                "kernel BTF unreadable ({e}): exec events will lack ppid, start time and argv, and forks are not seen"
            );
            sentinel_common::KernelOffsets::UNKNOWN
        }
    };
    offsets.tp_exit_group_dead = sensors::exec::exit_group_dead_offset();
    let agent = &config.agent;
    Ok(sensors::load(&LoadOptions {
        agent_tgid,
        offsets,
        ring_buffer_bytes: agent.ring_buffer_kib * 1024,
        cpu_sample_hz: agent.cpu_sample_hz,
    })?)
}

/// The process tree, seeded from `/proc`.
fn seed_tree() -> anyhow::Result<(ProcessTree, PathBuf)> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let proc_root = PathBuf::from("/proc");
    let tree = ProcessTree::seed(&proc_root, ticks).context("reading /proc")?;
    Ok((tree, proc_root))
}

/// The event store and its writer thread.
fn start_store(
    config: &Config,
) -> anyhow::Result<(std_mpsc::Sender<store::Write>, std::thread::JoinHandle<()>)> {
    let store = Store::open(&config.agent.db)?;
    let (store_tx, store_rx) = std_mpsc::channel();
    let writer = store::spawn_writer(store, store_rx, config.agent.retention);
    Ok((store_tx, writer))
}

/// The enforcer (with the in-kernel connect guard when enabled) and the switch on its ledger.
fn open_switch(config: &Config, ebpf: &mut Ebpf) -> anyhow::Result<Switch> {
    let mut enforcer = Enforcer::from_config(config);
    if config.enforce.connect_guard && !enforcer.is_dry_run() {
        match ConnectGuard::attach(ebpf) {
            Ok(guard) => {
                info!(cgroup = %guard.root().display(), "connect guard attached");
                enforcer.set_guard(guard);
            }
            Err(e) => warn!("connect guard not attached (nftables still enforces blocks): {e}"),
        }
    }
    Ok(Switch::new(
        Ledger::open(&config.agent.db)?,
        enforcer,
        Timings {
            countdown: config.switch.countdown,
            safe_ttl: config.switch.safe_ttl,
            block_ttl: config.enforce.block_ttl,
        },
        config.host_id(),
    ))
}

/// The key signing override links; needed only when chat users can reach the endpoint.
fn load_override_key(config: &Config) -> anyhow::Result<Option<Arc<Secret>>> {
    if config.override_.public_url.is_empty() {
        return Ok(None);
    }
    let secret = Secret::load(&config.override_.secret_file).with_context(|| {
        "override.public_url is set: the override endpoint needs its key \
         (cargo xtask install creates it)"
    })?;
    Ok(Some(Arc::new(secret)))
}

/// The override endpoint (chat buttons), when there is a key.
async fn start_override_endpoint(
    config: &Config,
    secret: Option<&Arc<Secret>>,
    answers: &mpsc::Sender<Answer>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(secret) = secret else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(&config.override_.listen)
        .await
        .with_context(|| format!("binding override.listen {}", config.override_.listen))?;
    let serve = override_http::serve(
        listener,
        config,
        secret.clone(),
        answers.clone(),
        notify::slack::outcome_message,
    );
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = serve.await {
            error!("the override endpoint stopped: {e}");
        }
    })))
}

/// What the daily chat summary counts, read from the ledger when it is due.
fn summary_source(config: &Config, lost: Arc<std::sync::Mutex<LostMaps>>) -> SummarySource {
    let summary_db = config.agent.db.clone();
    Arc::new(move |since| {
        let counts = Ledger::open_existing(&summary_db, false)
            .and_then(|l| l.summary_since(since))
            .unwrap_or_else(|e| {
                warn!("daily summary: {e}");
                Default::default()
            });
        let lost = lost.lock().expect("lost lock");
        Summary {
            alerts_by_anomaly: counts.alerts_by_anomaly,
            decisions_by_outcome: counts.decisions_by_outcome,
            blocks: counts.blocks,
            kills: counts.kills,
            lost_events: SENSORS.iter().map(|s| lost.lost(s)).sum(),
            ..Default::default()
        }
    })
}

/// One task per ring buffer, sending batches of decoded records to the loop.
fn start_readers(
    exec_ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    connect_ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    shared: &Shared,
) -> (mpsc::Receiver<Vec<KernelEvent>>, Vec<JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel::<Vec<KernelEvent>>(1024);
    let mut tasks = Vec::new();
    for (name, ring, counters) in [
        ("exec", exec_ring, shared.counters[0].clone()),
        ("connect", connect_ring, shared.counters[1].clone()),
    ] {
        if let Some(ring) = ring {
            tasks.push(tokio::spawn(sensors::drain(
                name,
                ring,
                tx.clone(),
                counters,
            )));
        }
    }
    (rx, tasks)
}

/// The detectors, with the GeoIP reader and the trust set they consult.
fn build_detectors(config: &Config, geoip: Option<CountryDb>, trust: TrustSet) -> Detectors {
    Detectors {
        geoip,
        trust,
        lineage: detect::lineage::Lineage::new(config.lineage.clone()),
        geo: detect::geo::Geo::new(&config.geo.high_risk_countries),
        resource: detect::resource::Resource::new(config.resource.clone()),
        alerts: Alerts::new(config.alerts.dedup_window),
    }
}

/// What the pipeline is built from.
struct Parts {
    tree: ProcessTree,
    proc_root: PathBuf,
    store_tx: std_mpsc::Sender<store::Write>,
    shared: Arc<Shared>,
    cpu_map: Option<sensors::cpu::SampleMap>,
    detect: Detectors,
    switch: Switch,
    agent_tgid: u32,
}

/// The event loop's state, with the counters `status` shows brought up to date.
fn build_pipeline(config: &Config, parts: Parts) -> Pipeline {
    let agent = &config.agent;
    let core = Pipeline {
        tree: parts.tree,
        clock: BootClock::now(),
        agent_tgid: parts.agent_tgid,
        proc_root: parts.proc_root,
        store_tx: parts.store_tx,
        shared: parts.shared,
        cpu: CpuTracker::default(),
        cpu_map: parts.cpu_map,
        cpu_hz: agent.cpu_sample_hz,
        cpu_report_percent: agent.cpu_report_percent,
        cpu_last: Instant::now(),
        ncpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        detect: parts.detect,
        switch: parts.switch,
        awaiting: HashMap::new(),
        last_connect: HashMap::new(),
        exits: Default::default(),
        killer: config.enforce.kill.then(|| {
            Killer::new(
                config.enforce.kill_grace,
                config.enforce.protect.clone(),
                parts.agent_tgid,
                Path::new("/proc"),
            )
        }),
        dry_run: config.enforce.mode == EnforceMode::DryRun,
    };
    if let Ok(n) = core.switch.ledger().kill_count() {
        core.shared
            .kills
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
    core.refresh_counts();
    core
}

/// The Prometheus endpoint, when `metrics.listen` is set.
async fn start_metrics(
    config: &Config,
    shared: &Arc<Shared>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    if config.metrics.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&config.metrics.listen)
        .await
        .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
    let s = shared.clone();
    let render = Arc::new(move || crate::daemon::metrics::render(&s.metrics_snapshot()));
    Ok(Some(tokio::spawn(crate::daemon::metrics::serve(
        listener, render,
    ))))
}

/// Everything is loaded, attached and bound: keep only what running needs.
fn drop_capabilities() {
    match service::drop_capabilities(service::RUNTIME_CAPS) {
        Ok(dropped) => info!("least privilege: {dropped}"),
        Err(e) => error!("could not drop capabilities (still defending): {e}"),
    }
}

/// What the loop receives besides timers and signals.
struct Inbox {
    batches: mpsc::Receiver<Vec<KernelEvent>>,
    answers: mpsc::Receiver<Answer>,
    unblocks: mpsc::Receiver<Unblock>,
}

/// Tell systemd the agent is ready, then handle kernel batches, ticks, deadlines, answers and
/// the watchdog until SIGTERM or SIGINT (or every sensor reader stopped).
async fn event_loop(
    config: &Config,
    core: &mut Pipeline,
    attached: [bool; 3],
    mut inbox: Inbox,
) -> anyhow::Result<()> {
    let agent = &config.agent;
    let mut cpu_tick = tokio::time::interval(agent.cpu_interval);
    let mut gc_tick = tokio::time::interval(GC_EVERY);
    // Live SSH sessions are re-read on their own thread: /proc/net/tcp lists every socket on
    // the host, and reading it must never hold up draining the ring buffers.
    let mut ssh_peers = spawn_ssh_watch(core.detect.trust.ssh_ports().to_vec());
    // systemd's watchdog: pinged from this loop, so a stalled loop gets the agent restarted.
    let watchdog = service::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let attached_names: Vec<&str> = SENSORS
        .iter()
        .zip(attached)
        .filter_map(|(n, a)| a.then_some(*n))
        .collect();
    info!(
        sensors = ?attached_names,
        processes = core.tree.len(),
        db = %agent.db.display(),
        socket = %agent.socket.display(),
        "sentinel ready"
    );
    service::notify_ready();

    loop {
        tokio::select! {
            batch = inbox.batches.recv() => match batch {
                Some(batch) => {
                    batch.into_iter().for_each(|e| core.handle(e));
                    core.reap();
                }
                None => {
                    error!("every sensor reader stopped");
                    break;
                }
            },
            _ = cpu_tick.tick() => {
                core.sample_cpu();
                core.reap();
            }
            _ = gc_tick.tick() => core.gc(),
            Ok(()) = ssh_peers.changed() => {
                let peers = ssh_peers.borrow_and_update().clone();
                core.detect.trust.set_ssh_peers(peers);
            }
            _ = tokio::time::sleep(until_deadline(core)) => core.tick(),
            _ = watchdog_tick.tick(), if watchdog.is_some() => service::notify_watchdog(),
            Some(answer) = inbox.answers.recv() => core.answer(answer),
            Some(request) = inbox.unblocks.recv() => core.unblock(request),
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
        }
    }
    Ok(())
}

/// Stop: detach first, then let the writer commit what it holds, then remove the socket.
async fn stop(
    config: &Config,
    tasks: Vec<JoinHandle<()>>,
    ebpf: Ebpf,
    core: Pipeline,
    writer: std::thread::JoinHandle<()>,
) -> anyhow::Result<()> {
    service::notify_stopping();
    for task in &tasks {
        task.abort();
    }
    drop(ebpf);
    drop(core);
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    let _ = std::fs::remove_file(&config.agent.socket);
    info!("stopped");
    Ok(())
}
