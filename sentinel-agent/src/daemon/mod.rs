//! `sentinel run`: start-up and the event loop. It loads the sensors, opens the store and the
//! ledger, resumes the dead man's switch, then feeds the [`Pipeline`] with kernel records,
//! timer ticks and human answers until SIGTERM, and stops cleanly: programs detached, every
//! event committed, the enforcement table left in force.

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
    enforce::{Enforcer, guard::ConnectGuard, kill::Killer},
    enrich::geo::Geo,
    enrich::tree::ProcessTree,
    enrich::trust::{TrustSet, read_ssh_peers},
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
    let geoip = if config.geo.enabled {
        let geo = Geo::open(&config.geo.database).with_context(|| {
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
    let proc_net = Path::new("/proc/net");
    trust.refresh_ssh_peers(proc_net);
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
        exec_ring,
        connect_ring,
        cpu_samples,
    } = sensors;

    // Seed after attaching: a process started in between is then in both, never in neither.
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let proc_root = PathBuf::from("/proc");
    let tree = ProcessTree::seed(&proc_root, ticks).context("reading /proc")?;

    let store = Store::open(&agent.db)?;
    let (store_tx, store_rx) = std_mpsc::channel();
    let writer = store::spawn_writer(store, store_rx, agent.retention);

    // The switch resumes before the socket answers: "ready" means decisions and blocks are
    // back in force.
    let mut enforcer = Enforcer::from_config(&config);
    if config.enforce.connect_guard && !enforcer.is_dry_run() {
        match ConnectGuard::attach(&mut ebpf) {
            Ok(guard) => {
                info!(cgroup = %guard.root().display(), "connect guard attached");
                enforcer.set_guard(guard);
            }
            Err(e) => warn!("connect guard not attached (nftables still enforces blocks): {e}"),
        }
    }
    let mut switch = Switch::new(
        Ledger::open(&agent.db)?,
        enforcer,
        Timings {
            countdown: config.switch.countdown,
            safe_ttl: config.switch.safe_ttl,
            block_ttl: config.enforce.block_ttl,
        },
        config.host_id(),
    );
    let (answers_tx, mut answers_rx) = mpsc::channel::<Answer>(64);
    let (unblock_tx, mut unblock_rx) = mpsc::channel::<Unblock>(16);
    let mut tasks = Vec::new();

    // Chat: announced decisions go out through every configured channel; answers (signed
    // links, Slack clicks, Telegram presses) come back on the same channel as the CLI's.
    let (notices_tx, notices_rx) = mpsc::unbounded_channel();
    switch.set_notices(notices_tx);
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
        let serve = override_http::serve(listener, &config, secret.clone(), answers_tx.clone());
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
    switch.resume(&trust_for_resume, SystemTime::now())?;

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
            geo: detect::geo::Geo::new(&config.geo.high_risk_countries),
            resource: detect::resource::Resource::new(config.resource.clone()),
            alerts: Alerts::new(config.alerts.dedup_window),
        },
        switch,
        awaiting: HashMap::new(),
        last_connect: HashMap::new(),
        exits: Default::default(),
        killer: config.enforce.kill.then(|| {
            Killer::new(
                config.enforce.kill_grace,
                config.enforce.protect.clone(),
                agent_tgid,
                Path::new("/proc"),
            )
        }),
        dry_run: config.enforce.mode == EnforceMode::DryRun,
        fleet: if config.fleet.enabled() {
            Some(crate::fleet::Recorder::open(&agent.db)?)
        } else {
            None
        },
    };
    if let Ok(n) = core.switch.ledger().kill_count() {
        core.shared
            .kills
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
    core.refresh_counts();
    let mut cpu_tick = tokio::time::interval(agent.cpu_interval);
    let mut gc_tick = tokio::time::interval(GC_EVERY);
    // Live SSH sessions are re-read on their own thread: /proc/net/tcp lists every socket on
    // the host, and reading it must never hold up draining the ring buffers.
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
            _ = tokio::time::sleep(until_deadline(&core)) => core.tick(),
            _ = watchdog_tick.tick(), if watchdog.is_some() => service::notify_watchdog(),
            Some(answer) = answers_rx.recv() => core.answer(answer),
            Some(request) = unblock_rx.recv() => core.unblock(request),
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
    drop(core);
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    let _ = std::fs::remove_file(&agent.socket);
    info!("stopped");
    Ok(())
}
