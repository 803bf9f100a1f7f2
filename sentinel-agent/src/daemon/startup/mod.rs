//! The start-up steps of `sentinel run`, in the order [`super::run`] calls them. Each step
//! builds one part of the agent from the configuration and the parts built before it, and
//! hands it back; none reaches into an earlier part again. The order matters where a part
//! must be in force before the next: the sensors attach before the process tree is seeded
//! from `/proc` (a process started in between is then in both, never in neither), the switch
//! resumes its decisions and blocks before the CLI socket answers, and systemd hears READY=1
//! only once everything is up.

use rustc_hash::FxHashMap;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64, mpsc as std_mpsc},
    thread::JoinHandle as ThreadHandle,
    time::Instant,
};

use anyhow::Context as _;
use tokio::{
    sync::{
        mpsc::{self, UnboundedReceiver},
        watch,
    },
    task::JoinHandle,
};
use tracing::{error, info, warn};

use super::{
    behaviour::Behaviour,
    control::{self, Shared, Unblock},
    ipc::Hub,
    metrics,
    pipeline::{Detectors, Pipeline},
    service,
};
use crate::{
    config::{AgentConfig, Config, EnforceMode},
    detect::{
        self, Alerts,
        budget::{Budget, FloodStats},
        intel::Intel,
    },
    enforce::{BlockGuard, Enforcer, guard::ConnectGuard, infra, kill::Killer},
    enrich::{
        geo::CountryDb, listeners::listening_pids, shells::Shells, ssh::Sources, tree::ProcessTree,
        trust::TrustSet,
    },
    event::BootClock,
    fleet,
    notify::NotifyStats,
    override_http,
    sensors::{self, KernelEvent, LoadOptions, SENSORS, btf, cpu::CpuTracker},
    store::{self, Store, StoreStats, StoreTx},
    switch::{
        Limits, Switch, Timings,
        decision::{Answer, Notice},
        ledger::Ledger,
        worker::{Health, Report, Worker},
    },
};

mod answers;
pub use answers::{load_override_key, start_chat, start_override_endpoint, take_override_socket};

/// `PATH` for finding `lineage.shells` when the agent has none (systemd gives one).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What turns an address into context: the GeoIP reader and the trust set.
pub struct Enrichment {
    pub geoip: Option<CountryDb>,
    pub trust: TrustSet,
}

/// Open the GeoIP database (when `geo.enabled`) and build the trust set with the SSH peers
/// logged in now.
pub fn open_enrichment(config: &Config) -> anyhow::Result<Enrichment> {
    let geoip = if config.geo.enabled {
        let geo = CountryDb::open_mapped(&config.geo.database).with_context(|| {
            "the GeoIP database is needed for geo alerts (scripts/geoip.sh installs one; \
             or set geo.enabled = false)"
        })?;
        info!(mapped = geo.is_mapped(), "GeoIP: {}", geo.describe());
        Some(geo)
    } else {
        warn!("geo.enabled = false: connections get no country and geo alerts are off");
        None
    };
    let ssh_ports: &[u16] = if config.trust.ssh_peers {
        &config.trust.ssh_ports
    } else {
        &[]
    };
    let mut trust =
        TrustSet::new(&config.trust.ips, ssh_ports).with_ssh_users(&config.trust.ssh_users);
    trust.refresh_ssh_peers(&Sources::default());
    Ok(Enrichment { geoip, trust })
}

/// Load and attach the kernel programs, with the struct offsets this kernel's BTF gives.
pub fn load_sensors(agent: &AgentConfig, agent_tgid: u32) -> anyhow::Result<sensors::Sensors> {
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
    Ok(sensors::load(&LoadOptions {
        agent_tgid,
        offsets,
        ring_buffer_bytes: agent.ring_buffer_kib * 1024,
        cpu_sample_hz: agent.cpu_sample_hz,
    })?)
}

/// The process tree as `/proc` shows it now, and where it was read.
pub struct Seeded {
    pub tree: ProcessTree,
    pub proc_root: PathBuf,
}

/// Seed the process tree from `/proc` (call it after the sensors attach), marking the servers
/// that were listening before the agent started: they never call listen() again.
pub fn seed_tree() -> anyhow::Result<Seeded> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let proc_root = PathBuf::from("/proc");
    let mut tree = ProcessTree::seed(&proc_root, ticks).context("reading /proc")?;
    for pid in listening_pids(&proc_root) {
        tree.on_listen(pid, &proc_root);
    }
    Ok(Seeded { tree, proc_root })
}

/// The event store: the queue the loop writes to, its counters, and the writer thread.
pub struct StoreParts {
    pub tx: StoreTx,
    pub stats: Arc<StoreStats>,
    pub writer: ThreadHandle<()>,
}

/// Open the event store and start its writer thread.
pub fn open_store(agent: &AgentConfig) -> anyhow::Result<StoreParts> {
    let max_bytes = agent.max_db_mb * 1024 * 1024;
    let store = Store::open(&agent.db, max_bytes)?;
    let stats = Arc::new(StoreStats::default());
    let (tx, rx) = store::queue::channel(store::QUEUE_MAX, stats.clone());
    let limits = store::Limits {
        retention: agent.retention,
        max_bytes,
    };
    let writer = store::spawn_writer(store, rx, limits);
    Ok(StoreParts { tx, stats, writer })
}

/// The behaviour detectors, their history, and the channel their background work (cron-file
/// watcher, npm scanner) comes back to the event loop on.
pub struct BehaviourParts {
    pub behaviour: Behaviour,
    pub intel: Intel,
    pub work: UnboundedReceiver<detect::Work>,
}

/// Start the cron-file and persistence watchers and the behaviour detectors.
pub fn start_behaviour(config: &Config) -> BehaviourParts {
    let (work_tx, work) = mpsc::unbounded_channel::<detect::Work>();
    if let Err(e) = sensors::cron::spawn(&config.cron.paths, &config.agent.db, work_tx.clone()) {
        warn!("cron files not watched: {e}");
    }
    if config.persistence.enabled {
        sensors::persistence::start(&config.cron.paths, work_tx.clone());
    }
    let (behaviour, intel) = Behaviour::start(config, &config.agent.db, work_tx);
    BehaviourParts {
        behaviour,
        intel,
        work,
    }
}

/// The enforcer of `enforce.mode`, with the cgroup connect guard when it attaches.
pub fn start_enforcer(config: &Config, ebpf: &mut aya::Ebpf) -> anyhow::Result<Enforcer> {
    let mut enforcer = Enforcer::from_config(config).context("enforce.mode = \"nftables\"")?;
    if config.enforce.connect_guard && !enforcer.is_dry_run() {
        match ConnectGuard::attach(ebpf) {
            Ok(guard) => {
                if crate::sensors::cgroup::is_machine_root(guard.root()) {
                    info!(cgroup = %guard.root().display(), "connect guard attached");
                } else {
                    // A container's cgroup namespace: programs on its root see only it.
                    warn!(
                        cgroup = %guard.root().display(),
                        "connect guard attached to a cgroup namespace's root: it refuses \
                         connects of the processes below it only (nftables enforces blocks \
                         for the whole network namespace)"
                    );
                }
                enforcer.set_guard(guard);
            }
            Err(e) => warn!("connect guard not attached (nftables still enforces blocks): {e}"),
        }
    }
    Ok(enforcer)
}

/// The dead man's switch: the state machine the loop drives, the worker thread that commits,
/// enforces and announces, and what comes back from them.
pub struct SwitchParts {
    pub switch: Switch,
    pub worker: ThreadHandle<()>,
    /// Whether blocks land (written by the worker).
    pub health: Arc<Health>,
    /// Decisions to announce in chat.
    pub notices: UnboundedReceiver<Notice>,
    /// What the worker did, back to the loop.
    pub reports: UnboundedReceiver<Report>,
    /// The host's infrastructure (addresses, gateways, resolvers, chat, NTP, package sources,
    /// fleet store, admin logins), as it changes.
    pub infra: watch::Receiver<infra::Infrastructure>,
}

/// Open the ledger, prepare the enforcement table, and start the switch's worker. The switch
/// is not resumed yet: chat must be listening first, since resumed decisions are announced.
pub fn open_ledger_and_switch(config: &Config, enforcer: Enforcer) -> anyhow::Result<SwitchParts> {
    let db = &config.agent.db;
    let dry_run = enforcer.is_dry_run();
    let health = Arc::new(Health::default());
    let mut worker = Worker::new(Ledger::open(db)?, enforcer, health.clone());
    worker.prepare();
    let (jobs_tx, jobs_rx) = std_mpsc::channel();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    worker.set_reports(reports_tx);
    let mut infra = infra::watch(config);
    let gate = BlockGuard::from_config(config, infra.borrow_and_update().clone());
    let switch = Switch::new(
        Ledger::open_existing(db, false)?,
        jobs_tx,
        Timings {
            countdown: config.switch.countdown,
            safe_ttl: config.switch.safe_ttl,
            block_ttl: config.enforce.block_ttl,
        },
        Limits {
            max_targets: config.switch.max_targets,
            max_pending: config.switch.max_pending,
            max_auto_blocks: config.switch.max_auto_blocks,
        },
        config.host_id(),
        dry_run,
        gate,
    );
    let (notices_tx, notices) = mpsc::unbounded_channel();
    worker.set_notices(notices_tx);
    let worker = worker.spawn(jobs_rx);
    Ok(SwitchParts {
        switch,
        worker,
        health,
        notices,
        reports,
        infra,
    })
}

/// Gather what the CLI socket, metrics and the fleet shipper read of the running agent, with
/// the receiving ends of `sentinel unblock` and `sentinel reload`.
pub fn share_state(
    config: &Config,
    sensors: &sensors::Sensors,
    processes: usize,
    health: HealthReports,
    answers: mpsc::Sender<Answer>,
) -> (
    Arc<Shared>,
    mpsc::Receiver<Unblock>,
    mpsc::Receiver<super::reload::Request>,
) {
    let HealthReports {
        notify,
        store,
        enforce,
        override_,
    } = health;
    let (unblock_tx, unblocks) = mpsc::channel::<Unblock>(16);
    let (reload_tx, reloads) = mpsc::channel::<super::reload::Request>(4);
    let shared = Arc::new(Shared {
        host: config.host_id().into(),
        started: Instant::now(),
        attached: sensors.attached,
        counters: Default::default(),
        lost: sensors.lost.clone(),
        processes: AtomicU64::new(processes as u64),
        containers: AtomicU64::new(0),
        pending: AtomicU64::new(0),
        blocks: AtomicU64::new(0),
        kills: AtomicU64::new(0),
        alerts: Default::default(),
        floods: Default::default(),
        notify,
        store,
        enforce,
        override_,
        hub: Hub::default(),
        answers,
        unblocks: unblock_tx,
        reloads: reload_tx,
        fleet: config.fleet.enabled().then(Default::default),
    });
    (shared, unblocks, reloads)
}

/// What the parts started before the shared state report about themselves, for `status`.
pub struct HealthReports {
    pub notify: Arc<NotifyStats>,
    pub store: Arc<StoreStats>,
    pub enforce: Arc<Health>,
    pub override_: Arc<override_http::listener::Health>,
}

/// Ship to the fleet store when `[fleet]` is on; its commands come back to the loop.
pub fn start_fleet(
    config: &Config,
    shared: &Arc<Shared>,
    answers: mpsc::Sender<Answer>,
) -> (Option<JoinHandle<()>>, mpsc::Receiver<fleet::Command>) {
    let (commands, rx) = mpsc::channel::<fleet::Command>(256);
    let task = shared.fleet.as_ref().map(|stats| {
        tokio::spawn(fleet::ship::run(fleet::ship::Context {
            config: config.fleet.clone(),
            host: config.host_id(),
            db: config.agent.db.clone(),
            shared: shared.clone(),
            stats: stats.clone(),
            answers,
            commands,
        }))
    });
    (task, rx)
}

/// Bind the CLI socket and answer on it.
pub fn open_control_socket(
    agent: &AgentConfig,
    shared: &Arc<Shared>,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = control::bind_socket(&agent.socket)?;
    Ok(tokio::spawn(control::serve(listener, shared.clone())))
}

/// Drain the kernel's ring buffer into batches for the loop (the channel closes when every
/// reader has stopped), and relay the kernel programs' log into the agent's.
pub fn start_readers(
    sensors: &mut sensors::Sensors,
    shared: &Shared,
) -> (Option<JoinHandle<()>>, mpsc::Receiver<Vec<KernelEvent>>) {
    let (tx, rx) = mpsc::channel::<Vec<KernelEvent>>(1024);
    if let Some(log) = sensors.kernel_log.take() {
        // Ends with the runtime: nothing to flush at stop.
        tokio::spawn(sensors::kernel_log::relay(log));
    }
    let task = sensors.ring.take().map(|ring| {
        let counters = shared.counters.to_vec();
        tokio::spawn(sensors::drain(ring, tx, counters))
    });
    (task, rx)
}

/// The detectors, with the enrichment and behaviour state they start from; the alert budget
/// counts its floods into `floods` (for `status`).
pub fn build_detectors(
    config: &Config,
    enrich: Enrichment,
    behaviour: Behaviour,
    intel: Intel,
    floods: Arc<FloodStats>,
) -> Detectors {
    let mut alerts = Alerts::new(config.alerts.dedup_window);
    alerts.signals.intel = intel;
    alerts.budget = Budget::new(config.alerts.per_origin_per_minute, floods);
    Detectors {
        geoip: enrich.geoip,
        trust: enrich.trust,
        lineage: detect::lineage::Lineage::new(config.lineage.clone()),
        persistence: super::persistence::Persistence::new(config.persistence.clone()),
        shells: Shells::load(
            &config.lineage.shells,
            Path::new("/etc/shells"),
            &std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
        ),
        reverse_shell: detect::reverse_shell::ReverseShell::default(),
        geo: detect::geo::Geo::new(&config.geo.high_risk_countries),
        resource: detect::resource::Resource::new(config.resource.clone()),
        blind: detect::blind::Blind::new(),
        behaviour,
        alerts,
    }
}

/// The event loop's state: the tree, the detectors and the switch, with the counters it
/// publishes filled in from what the ledger already holds.
pub fn build_pipeline(
    config: &Config,
    seeded: Seeded,
    store: StoreTx,
    shared: Arc<Shared>,
    cpu_map: Option<sensors::cpu::Samples>,
    detect: Detectors,
    switch: Switch,
) -> anyhow::Result<Pipeline> {
    let agent = &config.agent;
    let agent_tgid = std::process::id();
    let fleet = match &shared.fleet {
        Some(stats) => Some(fleet::Recorder::open(
            &agent.db,
            config.fleet.outbox_max_rows,
            stats.clone(),
        )?),
        None => None,
    };
    let core = Pipeline {
        tree: seeded.tree,
        clock: BootClock::now(),
        agent_tgid,
        agent_exe: std::fs::metadata("/proc/self/exe").map_or_else(
            |_| sentinel_common::events::exec::ExeId::default(),
            |m| crate::enrich::shells::exe_id(&m),
        ),
        proc_root: seeded.proc_root,
        store_tx: store,
        shared,
        cpu: CpuTracker::default(),
        cpu_map,
        cpu_hz: agent.cpu_sample_hz,
        cpu_report_percent: agent.cpu_report_percent,
        cpu_last: Instant::now(),
        gc_full_at: None,
        ncpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        detect,
        switch,
        tracked: FxHashMap::default(),
        groups: HashMap::new(),
        last_connect: FxHashMap::default(),
        outbound: Default::default(),
        names: Default::default(),
        followed: Default::default(),
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
        fleet,
        containers: crate::enrich::container::Containers::new(
            config.containers.clone(),
            crate::sensors::cgroup::root(),
            PathBuf::from("/proc"),
        ),
        ssh_nudge: Default::default(),
        alert_repeats: Default::default(),
    };
    if let Ok(n) = core.switch.reader().kill_count() {
        core.shared
            .kills
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
    core.refresh_counts();
    Ok(core)
}

/// Serve Prometheus metrics on `metrics.listen`, when set.
pub async fn start_metrics(
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
    let render = Arc::new(move || metrics::render(&s.metrics_snapshot()));
    Ok(Some(tokio::spawn(metrics::serve(listener, render))))
}

/// Everything is loaded, attached and bound: keep only the capabilities running needs.
pub fn drop_privileges() {
    match service::drop_capabilities(service::RUNTIME_CAPS) {
        Ok(dropped) => info!("least privilege: {dropped}"),
        Err(e) => error!("could not drop capabilities (still defending): {e}"),
    }
}

/// Say so in the log and to systemd (READY=1): the agent is up.
pub fn announce_ready(agent: &AgentConfig, attached: [bool; 4], processes: usize) {
    let attached_names: Vec<&str> = SENSORS
        .iter()
        .zip(attached)
        .filter_map(|(n, a)| a.then_some(*n))
        .collect();
    info!(
        sensors = ?attached_names,
        processes,
        db = %agent.db.display(),
        socket = %agent.socket.display(),
        "sentinel ready"
    );
    #[cfg(feature = "sensors-only")]
    tracing::warn!(
        "built with the sensors-only feature (a benchmark build): every record is read and \
         discarded; this agent detects, stores and blocks nothing"
    );
    service::notify_ready();
}
