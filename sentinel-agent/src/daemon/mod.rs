//! `sentinel run`: start-up and the event loop. It loads the sensors, opens the store and the
//! ledger, resumes the dead man's switch, then feeds the [`Pipeline`] with kernel records,
//! timer ticks and human answers until SIGTERM, and stops cleanly: programs detached, every
//! event committed, the enforcement table left in force.

pub mod behaviour;
pub mod control;
pub mod decisions;
pub mod ipc;
pub mod metrics;
pub mod pipeline;
pub mod service;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
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
    enforce::{self, BlockGuard, Enforcer, guard::ConnectGuard, kill::Killer},
    enrich::geo::CountryDb,
    enrich::tree::ProcessTree,
    enrich::{
        ssh::{Sources, authenticated_peers},
        trust::TrustSet,
    },
    event::BootClock,
    notify::{
        self, NotifyStats,
        summary::{Summary, SummarySource},
    },
    override_http::{self, Secret},
    sensors::btf,
    sensors::{self, KernelEvent, LoadOptions, SENSORS, cpu::CpuTracker},
    store::{self, Store},
    switch::decision::Answer,
    switch::ledger::Ledger,
    switch::{
        Limits, Switch, Timings,
        clock::Now,
        worker::{Health, Worker},
    },
};

/// How often the tree is checked against `/proc` for exits the agent missed.
/// `PATH` for finding `lineage.shells` when the agent has none (systemd gives one).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const GC_EVERY: Duration = Duration::from_secs(30);
/// How often the kernel's lost counters are read for `blind`.
const BLIND_EVERY: Duration = Duration::from_secs(1);
/// How often the live authenticated SSH sessions (trusted peers) are re-read.
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
                let peers = authenticated_peers(&Sources::default(), &ports);
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

/// How long until the switch's next deadline on the boot clock (at most [`SWITCH_TICK`]).
fn until_deadline(core: &Pipeline) -> Duration {
    core.switch
        .next_due(Now::read())
        .map_or(SWITCH_TICK, |d| d.min(SWITCH_TICK))
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let agent = &config.agent;
    let agent_tgid = std::process::id();
    control::ensure_not_running(&agent.socket)?;
    let geoip = if config.geo.enabled {
        let geo = CountryDb::open(&config.geo.database).with_context(|| {
            "the GeoIP database is needed for geo alerts (scripts/geoip.sh installs one; \
             or set geo.enabled = false)"
        })?;
        info!("GeoIP: {}", geo.describe());
        Some(geo)
    } else {
        warn!("geo.enabled = false: connections get no country and geo alerts are off");
        None
    };
    let mut trust = TrustSet::new(
        &config.trust.ips,
        if config.trust.ssh_peers {
            &config.trust.ssh_ports
        } else {
            &[]
        },
    );
    trust.refresh_ssh_peers(&Sources::default());
    let trust_for_resume = trust.clone();
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

    let sensors = sensors::load(&LoadOptions {
        agent_tgid,
        offsets,
        ring_buffer_bytes: agent.ring_buffer_kib * 1024,
        cpu_sample_hz: agent.cpu_sample_hz,
    })?;
    let sensors::Sensors {
        mut ebpf,
        attached,
        lost,
        ring,
        cpu_samples,
    } = sensors;

    // Seed after attaching: a process started in between is then in both, never in neither.
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let proc_root = PathBuf::from("/proc");
    let mut tree = ProcessTree::seed(&proc_root, ticks).context("reading /proc")?;
    // Servers started before the agent never call listen() again: find them now.
    for pid in crate::enrich::listeners::listening_pids(&proc_root) {
        tree.on_listen(pid, &proc_root);
    }

    let max_bytes = agent.max_db_mb * 1024 * 1024;
    let store = Store::open(&agent.db, max_bytes)?;
    let store_stats = Arc::new(store::StoreStats::default());
    let (store_tx, store_rx) = store::queue::channel(store::QUEUE_MAX, store_stats.clone());
    let limits = store::Limits {
        retention: agent.retention,
        max_bytes,
    };
    let writer = store::spawn_writer(store, store_rx, limits);
    // The behaviour detectors' background work (cron-file watcher, npm scanner) comes back
    // to the event loop on this channel.
    let (work_tx, mut work_rx) = mpsc::unbounded_channel::<detect::Work>();
    if let Err(e) = sensors::cron::spawn(&config.cron.paths, &agent.db, work_tx.clone()) {
        warn!("cron files not watched: {e}");
    }
    let (behaviour, intel) = behaviour::Behaviour::start(&config, &agent.db, work_tx);

    // The switch resumes before the socket answers: "ready" means decisions and blocks are
    // back in force.
    let mut enforcer = Enforcer::from_config(&config);
    let dry_run = enforcer.is_dry_run();
    if config.enforce.connect_guard && !dry_run {
        match ConnectGuard::attach(&mut ebpf) {
            Ok(guard) => {
                info!(cgroup = %guard.root().display(), "connect guard attached");
                enforcer.set_guard(guard);
            }
            Err(e) => warn!("connect guard not attached (nftables still enforces blocks): {e}"),
        }
    }
    // The switch decides on the loop; its worker thread commits, enforces and announces.
    let enforce_health = Arc::new(Health::default());
    let mut worker = Worker::new(Ledger::open(&agent.db)?, enforcer, enforce_health.clone());
    worker.prepare();
    let (jobs_tx, jobs_rx) = std_mpsc::channel();
    let (reports_tx, mut reports_rx) = mpsc::unbounded_channel();
    worker.set_reports(reports_tx);
    let mut infra = enforce::infra::watch(&config);
    let gate = BlockGuard::from_config(&config, infra.borrow_and_update().clone());
    let mut switch = Switch::new(
        Ledger::open_existing(&agent.db, false)?,
        jobs_tx,
        Timings {
            countdown: config.switch.countdown,
            safe_ttl: config.switch.safe_ttl,
            block_ttl: config.enforce.block_ttl,
        },
        Limits {
            max_targets: config.switch.max_targets,
            max_pending: config.switch.max_pending,
        },
        config.host_id(),
        dry_run,
        gate,
    );
    let (answers_tx, mut answers_rx) = mpsc::channel::<Answer>(64);
    let (unblock_tx, mut unblock_rx) = mpsc::channel::<Unblock>(16);
    let mut tasks = Vec::new();

    // Chat: announced decisions go out through every configured channel; answers (signed
    // links, Slack clicks, Telegram presses) come back on the same channel as the CLI's.
    let (notices_tx, notices_rx) = mpsc::unbounded_channel();
    worker.set_notices(notices_tx);
    let worker_thread = worker.spawn(jobs_rx);
    let notify_stats = Arc::new(NotifyStats::default());
    let secret = if config.override_.public_url.is_empty() {
        None
    } else {
        Some(Arc::new(
            Secret::load(&config.override_.secret_file).with_context(|| {
                "override.public_url is set: the override endpoint needs its key \
             (cargo xtask install creates it)"
            })?,
        ))
    };
    if let Some(secret) = &secret {
        let listener = tokio::net::TcpListener::bind(&config.override_.listen)
            .await
            .with_context(|| format!("binding override.listen {}", config.override_.listen))?;
        let serve = override_http::serve(
            listener,
            &config,
            secret.clone(),
            answers_tx.clone(),
            notify::slack::outcome_message,
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = serve.await {
                error!("the override endpoint stopped: {e}");
            }
        }));
    }
    let summary_db = agent.db.clone();
    let lost_for_summary = lost.clone();
    let summary: SummarySource = Arc::new(move |since| {
        let counts = Ledger::open_existing(&summary_db, false)
            .and_then(|l| l.summary_since(since))
            .unwrap_or_else(|e| {
                warn!("daily summary: {e}");
                Default::default()
            });
        let lost = lost_for_summary.lock().expect("lost lock");
        Summary {
            alerts_by_anomaly: counts.alerts_by_anomaly,
            decisions_by_outcome: counts.decisions_by_outcome,
            blocks: counts.blocks,
            kills: counts.kills,
            lost_events: SENSORS.iter().map(|s| lost.lost(s)).sum(),
            ..Default::default()
        }
    });
    tasks.extend(notify::spawn(
        &config,
        secret,
        notices_rx,
        answers_tx.clone(),
        notify_stats.clone(),
        Some(summary),
    ));
    // Resumed decisions are announced too.
    switch.resume(&trust_for_resume, Now::read())?;

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
        store: store_stats,
        enforce: enforce_health,
        hub: Hub::default(),
        answers: answers_tx.clone(),
        unblocks: unblock_tx,
        fleet: config.fleet.enabled().then(Default::default),
    });
    let (fleet_tx, mut fleet_rx) = mpsc::channel::<crate::fleet::Command>(256);
    if let Some(stats) = &shared.fleet {
        tasks.push(tokio::spawn(crate::fleet::ship::run(
            crate::fleet::ship::Context {
                config: config.fleet.clone(),
                host: config.host_id(),
                db: agent.db.clone(),
                shared: shared.clone(),
                stats: stats.clone(),
                answers: answers_tx,
                commands: fleet_tx,
            },
        )));
    }
    let listener = control::bind_socket(&agent.socket)?;

    let (tx, mut rx) = mpsc::channel::<Vec<KernelEvent>>(1024);
    tasks.push(tokio::spawn(control::serve(listener, shared.clone())));
    if let Some(ring) = ring {
        let counters = shared.counters.to_vec();
        tasks.push(tokio::spawn(sensors::drain(ring, tx.clone(), counters)));
    }
    drop(tx);

    let mut core = Pipeline {
        tree,
        clock: BootClock::now(),
        agent_tgid,
        proc_root,
        store_tx,
        shared: shared.clone(),
        cpu: CpuTracker::default(),
        cpu_map: cpu_samples,
        cpu_hz: agent.cpu_sample_hz,
        cpu_report_percent: agent.cpu_report_percent,
        cpu_last: Instant::now(),
        ncpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        detect: Detectors {
            geoip,
            trust,
            lineage: detect::lineage::Lineage::new(config.lineage.clone()),
            shells: crate::enrich::shells::Shells::load(
                &config.lineage.shells,
                Path::new("/etc/shells"),
                &std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
            ),
            reverse_shell: detect::reverse_shell::ReverseShell,
            geo: detect::geo::Geo::new(&config.geo.high_risk_countries),
            resource: detect::resource::Resource::new(config.resource.clone()),
            blind: detect::blind::Blind::new(),
            behaviour,
            alerts: Alerts::new(config.alerts.dedup_window),
        },
        switch,
        tracked: HashMap::new(),
        groups: HashMap::new(),
        last_connect: HashMap::new(),
        exits: Default::default(),
        killer: config.enforce.kill.then(|| {
            Killer::new(
                config.enforce.kill_grace,
                config.enforce.protect.clone(),
                agent_tgid,
                Path::new("/proc"),
            )
            .responding_to(config.enforce.kill_on.clone())
        }),
        dry_run: config.enforce.mode == EnforceMode::DryRun,
        fleet: if config.fleet.enabled() {
            Some(crate::fleet::Recorder::open(&agent.db)?)
        } else {
            None
        },
    };
    core.detect.alerts.signals.intel = intel;
    if let Ok(n) = core.switch.reader().kill_count() {
        core.shared
            .kills
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
    core.refresh_counts();
    let mut cpu_tick = tokio::time::interval(agent.cpu_interval);
    let mut gc_tick = tokio::time::interval(GC_EVERY);
    let mut blind_tick = tokio::time::interval(BLIND_EVERY);
    // Live SSH sessions are re-read on their own thread: login records and /proc are files,
    // and reading them (and /proc/net/tcp while someone is logged in) must never hold up
    // draining the ring buffers.
    let mut ssh_peers = spawn_ssh_watch(core.detect.trust.ssh_ports().to_vec());

    if !config.metrics.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.metrics.listen)
            .await
            .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        let s = shared.clone();
        let render = Arc::new(move || crate::daemon::metrics::render(&s.metrics_snapshot()));
        tasks.push(tokio::spawn(crate::daemon::metrics::serve(
            listener, render,
        )));
    }

    // Everything is loaded, attached and bound: keep only what running needs.
    match service::drop_capabilities(service::RUNTIME_CAPS) {
        Ok(dropped) => info!("least privilege: {dropped}"),
        Err(e) => error!("could not drop capabilities (still defending): {e}"),
    }
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
            batch = rx.recv() => match batch {
                Some(batch) => {
                    batch.into_iter().for_each(|e| core.handle(e));
                    core.reap();
                    core.flush();
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
            _ = blind_tick.tick() => core.check_blind(),
            Ok(()) = ssh_peers.changed() => {
                let peers = ssh_peers.borrow_and_update().clone();
                info!(?peers, "authenticated SSH peers (trusted) changed");
                core.detect.trust.set_ssh_peers(peers);
            }
            _ = tokio::time::sleep(until_deadline(&core)) => core.tick(),
            _ = watchdog_tick.tick(), if watchdog.is_some() => service::notify_watchdog(),
            Some(answer) = answers_rx.recv() => core.answer(answer),
            Some(report) = reports_rx.recv() => core.report(report),
            Ok(()) = infra.changed() => {
                core.switch.gate.infra = infra.borrow_and_update().clone();
            }
            Some(request) = unblock_rx.recv() => core.unblock(request),
            Some(work) = work_rx.recv() => core.work(work),
            Some(command) = fleet_rx.recv() => core.fleet_command(command),
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
        }
    }

    service::notify_stopping();
    // Detach first, then let the writer commit what it holds.
    for task in &tasks {
        task.abort();
    }
    drop(ebpf);
    core.save_intel();
    // The worker finishes what is queued (commits, blocks) once the switch is gone.
    drop(core);
    tokio::task::spawn_blocking(move || worker_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the switch worker panicked"))?;
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    let _ = std::fs::remove_file(&agent.socket);
    info!("stopped");
    Ok(())
}
