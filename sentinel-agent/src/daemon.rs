//! `sentinel run`: the agent's event loop. It loads the sensors, keeps the process tree,
//! turns kernel records into [`Record`]s, and hands each to the store writer and to live
//! followers; it also answers the CLI on the unix socket. Data flows
//! `sensors → enrich (tree) → store / hub`; detectors and the dead man's switch plug in here.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc},
};
use tracing::{debug, error, info, warn};

use crate::{
    btf,
    config::Config,
    detect::{self, Alerts, Culprit, Finding, Outcome},
    event::{Body, BootClock, ConnectBody, CpuBody, ExecBody, Record},
    geo::Geo,
    ipc::{Hub, Notice, Request, SensorStatus, Status, wanted},
    sensors::{
        self, Counters, KernelEvent, LoadOptions, LostMaps, SENSORS,
        cpu::{CpuTracker, SampleMap, cpu_percent, read_totals},
    },
    store::{self, Store, Write},
    tree::{ProcessTree, read_stat},
    trust::TrustSet,
};

/// How often the tree is checked against `/proc` for exits the agent missed.
const GC_EVERY: Duration = Duration::from_secs(30);
/// How often the live SSH sessions (trusted peers) are re-read.
const SSH_REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Longest request line the socket accepts.
const MAX_REQUEST: u64 = 64 * 1024;

/// State the socket handlers read while the event loop runs.
struct Shared {
    host: String,
    started: Instant,
    attached: [bool; 3],
    counters: [Arc<Counters>; 3],
    lost: Arc<Mutex<LostMaps>>,
    processes: AtomicU64,
    hub: Hub,
}

impl Shared {
    fn status(&self) -> Status {
        let lost = self.lost.lock().expect("lost lock");
        let sensors: BTreeMap<String, SensorStatus> = SENSORS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let status = SensorStatus {
                    attached: self.attached[i],
                    seen: self.counters[i].seen.load(Ordering::Relaxed),
                    lost: lost.lost(name),
                };
                (name.to_string(), status)
            })
            .collect();
        Status {
            sensors,
            pending: 0,
            blocks: 0,
            uptime_s: self.started.elapsed().as_secs(),
            host: self.host.clone(),
            pid: std::process::id(),
            processes: self.processes.load(Ordering::Relaxed),
            malformed: self
                .counters
                .iter()
                .map(|c| c.malformed.load(Ordering::Relaxed))
                .sum(),
        }
    }
}

/// The detectors and what they need beside the tree.
struct Detectors {
    geoip: Option<Geo>,
    trust: TrustSet,
    lineage: detect::lineage::Lineage,
    geo: detect::geo::Geo,
    resource: detect::resource::Resource,
    alerts: Alerts,
}

/// Turns kernel records into events and alerts; owns the process tree.
struct Core {
    tree: ProcessTree,
    clock: BootClock,
    agent_tgid: u32,
    proc_root: PathBuf,
    store_tx: std_mpsc::Sender<Write>,
    shared: Arc<Shared>,
    cpu: CpuTracker,
    cpu_map: Option<SampleMap>,
    cpu_hz: u64,
    cpu_report_percent: f64,
    cpu_last: Instant,
    ncpus: usize,
    detect: Detectors,
}

impl Core {
    fn store(&self, write: Write) {
        if self.store_tx.send(write).is_err() {
            error!("the store writer has stopped; event not stored");
        }
    }

    fn emit(&self, at: SystemTime, body: Body) {
        let record = Arc::new(Record::new(at, &self.shared.host, body));
        self.store(Write::Insert(record.clone()));
        self.shared.hub.publish(record);
    }

    /// Score, de-duplicate and emit what a detector found; `origin_ns` is the kernel time
    /// (CLOCK_BOOTTIME) of the event that triggered it, for the latency in the log.
    fn raise(&mut self, finding: Finding, origin_ns: Option<u64>) {
        match self.detect.alerts.raise(finding, Instant::now()) {
            Outcome::New(alert) => {
                let latency_us = origin_ns.map(|t| boot_ns().saturating_sub(t) / 1000);
                warn!(
                    id = %alert.id,
                    anomaly = %alert.anomaly,
                    risk = alert.risk,
                    pid = alert.pid,
                    latency_us,
                    "alert: {}",
                    alert.detail
                );
                self.emit(SystemTime::now(), Body::Alert(Box::new(alert)));
            }
            Outcome::Repeat(alert, first) => {
                debug!(id = %alert.id, count = alert.count, "repeat of an open alert");
                let record = Record::new(first, &self.shared.host, Body::Alert(Box::new(alert)));
                self.store(Write::Update(Arc::new(record)));
            }
        }
    }

    /// The process `tgid` as the detectors see it.
    fn culprit(&mut self, tgid: u32, comm: String, uid: Option<u32>) -> Culprit {
        let exe = self.tree.get(tgid).and_then(|p| p.filename.clone());
        let uid = uid.unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(self.proc_root.join(tgid.to_string())).map_or(u32::MAX, |m| m.uid())
        });
        Culprit {
            pid: tgid,
            comm,
            exe,
            uid,
            ancestry: self.tree.ancestry(tgid, &self.proc_root),
        }
    }

    /// The agent's own children (e.g. `nft` later) are its own activity: not reported.
    fn is_agent(&self, tgid: u32) -> bool {
        self.tree.descends_from(tgid, self.agent_tgid)
    }

    fn handle(&mut self, event: KernelEvent) {
        match event {
            KernelEvent::Fork(f) => self
                .tree
                .on_fork(f.parent, f.child, f.child_start_ns, &f.comm),
            KernelEvent::Exit(e) => {
                self.tree.on_exit(e.tgid, e.start_ns);
                self.detect.alerts.forget(e.tgid);
                if let Some(map) = &mut self.cpu_map {
                    let _ = map.remove(&e.tgid);
                }
            }
            KernelEvent::Exec(e) => {
                self.tree
                    .on_exec(e.tgid, e.ppid, e.start_ns, &e.comm, &e.filename);
                if self.is_agent(e.tgid) {
                    return;
                }
                let culprit = self.culprit(e.tgid, e.comm.clone(), Some(e.uid));
                let finding = self.detect.lineage.on_exec(&culprit, &e.argv);
                let ppid = self.tree.get(e.tgid).map_or(e.ppid, |p| p.ppid);
                self.emit(
                    self.clock.wall(e.ts_ns),
                    Body::Exec(ExecBody {
                        pid: e.tgid,
                        ppid,
                        uid: e.uid,
                        comm: e.comm,
                        filename: e.filename,
                        argv: e.argv,
                        ancestors: culprit.ancestry.into_iter().map(|(_, c)| c).collect(),
                    }),
                );
                if let Some(finding) = finding {
                    self.raise(finding, Some(e.ts_ns));
                }
            }
            KernelEvent::Connect(c) => {
                if self.is_agent(c.tgid) {
                    return;
                }
                let comm = self.tree.get(c.tgid).map_or(c.comm, |p| p.comm.clone());
                let country = self.detect.geoip.as_ref().and_then(|g| g.country(c.daddr));
                let culprit = self.culprit(c.tgid, comm.clone(), Some(c.uid));
                let finding = self.detect.geo.on_connect(
                    &culprit,
                    c.daddr,
                    c.dport,
                    country.as_deref(),
                    &self.detect.trust,
                );
                self.emit(
                    self.clock.wall(c.ts_ns),
                    Body::Connect(ConnectBody {
                        pid: c.tgid,
                        comm,
                        uid: c.uid,
                        family: c.family,
                        saddr: c.saddr,
                        daddr: c.daddr,
                        dport: c.dport,
                        country,
                    }),
                );
                if let Some(finding) = finding {
                    self.raise(finding, Some(c.ts_ns));
                }
            }
        }
        self.shared
            .processes
            .store(self.tree.len() as u64, Ordering::Relaxed);
    }

    /// Read the sample counts and emit a `cpu` event for every busy process.
    fn sample_cpu(&mut self) {
        let Some(map) = &self.cpu_map else { return };
        let elapsed = self.cpu_last.elapsed();
        self.cpu_last = Instant::now();
        let deltas = self.cpu.deltas(read_totals(map));
        let samples: u64 = deltas.iter().map(|(_, d)| d).sum();
        self.shared.counters[2]
            .seen
            .fetch_add(samples, Ordering::Relaxed);
        let now = SystemTime::now();
        let procs: Vec<(u32, f64)> = deltas
            .iter()
            .filter(|(tgid, _)| !self.is_agent(*tgid))
            .map(|&(tgid, delta)| (tgid, cpu_percent(delta, self.cpu_hz, elapsed)))
            .collect();
        let host_pct = (procs.iter().map(|(_, p)| p).sum::<f64>() / self.ncpus as f64).min(100.0);
        for hit in self
            .detect
            .resource
            .observe(Instant::now(), &procs, host_pct)
        {
            let Some(comm) = self.comm_of(hit.pid) else {
                continue;
            };
            let culprit = self.culprit(hit.pid, comm, None);
            self.raise(detect::resource::Resource::finding(culprit, hit), None);
        }
        for (tgid, pct) in procs {
            if pct < self.cpu_report_percent {
                continue;
            }
            let Some(comm) = self.comm_of(tgid) else {
                continue; // already gone
            };
            self.emit(
                now,
                Body::Cpu(CpuBody {
                    pid: tgid,
                    comm,
                    cpu_pct: (pct * 10.0).round() / 10.0,
                }),
            );
        }
    }

    fn comm_of(&self, tgid: u32) -> Option<String> {
        match self.tree.get(tgid) {
            Some(p) => Some(p.comm.clone()),
            None => read_stat(&self.proc_root, tgid).map(|s| s.comm),
        }
    }

    /// Drop tree entries (and sample-map entries) for processes that are gone but whose exit
    /// the agent missed.
    fn gc(&mut self) {
        let root = self.proc_root.clone();
        let dropped = self
            .tree
            .retain_alive(|tgid, start| read_stat(&root, tgid).is_some_and(|s| s.start == start));
        if dropped > 0 {
            debug!(dropped, "pruned processes whose exit was missed");
        }
        if let Some(map) = &mut self.cpu_map {
            let stale: Vec<u32> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|tgid| self.tree.get(*tgid).is_none())
                .collect();
            for tgid in stale {
                let _ = map.remove(&tgid);
            }
        }
        self.shared
            .processes
            .store(self.tree.len() as u64, Ordering::Relaxed);
    }
}

/// Now on the kernel's event clock (CLOCK_BOOTTIME), in ns.
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// Bind the CLI socket (mode 0600), refusing to steal it from a running agent.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is already running on {} (stop it, or give this one another agent.socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    Ok(listener)
}

async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_client(stream, &shared).await {
                        debug!("CLI connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("accepting a CLI connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write_json<T: serde::Serialize>(
    w: &mut (impl AsyncWriteExt + Unpin),
    value: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).expect("serialisable");
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle_client(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let request = match read {
        Ok(Ok(_)) => serde_json::from_str::<Request>(line.trim_end()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return write_json(&mut w, &Notice::Error("no request within 5 s".into())).await;
        }
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            warn!("refusing a malformed CLI request: {e}");
            return write_json(&mut w, &Notice::Error(format!("malformed request: {e}"))).await;
        }
    };
    match request {
        Request::Status => write_json(&mut w, &shared.status()).await,
        Request::Follow { kinds, backlog } => {
            let (past, mut rx) = shared.hub.subscribe(&kinds, backlog);
            for record in past {
                write_json(&mut w, record.as_ref()).await?;
            }
            loop {
                match rx.recv().await {
                    Ok(record) if wanted(&kinds, &record) => {
                        write_json(&mut w, record.as_ref()).await?
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        write_json(&mut w, &Notice::Lagged(n)).await?
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let agent = &config.agent;
    let agent_tgid = std::process::id();
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
        ebpf,
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

    let shared = Arc::new(Shared {
        host: config.host_id(),
        started: Instant::now(),
        attached,
        counters: Default::default(),
        lost,
        processes: AtomicU64::new(tree.len() as u64),
        hub: Hub::default(),
    });
    let listener = bind_socket(&agent.socket)?;

    let (tx, mut rx) = mpsc::channel::<Vec<KernelEvent>>(1024);
    let mut tasks = vec![tokio::spawn(serve(listener, shared.clone()))];
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

    let mut core = Core {
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
    };
    let mut cpu_tick = tokio::time::interval(agent.cpu_interval);
    let mut gc_tick = tokio::time::interval(GC_EVERY);
    let mut ssh_tick = tokio::time::interval(SSH_REFRESH_EVERY);
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

    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => batch.into_iter().for_each(|e| core.handle(e)),
                None => {
                    error!("every sensor reader stopped");
                    break;
                }
            },
            _ = cpu_tick.tick() => core.sample_cpu(),
            _ = gc_tick.tick() => core.gc(),
            _ = ssh_tick.tick() => {
                core.detect.trust.refresh_ssh_peers(proc_net);
            }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
        }
    }

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
