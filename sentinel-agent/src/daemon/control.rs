//! The CLI's way into the running agent: the unix socket (mode 0600, root only), and the
//! state its handlers read while the event loop runs. Status is answered here; answers and
//! unblocks are forwarded to the switch and its reply returned, reloads to the event loop.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::{
    daemon::ipc::{Hub, Request, SensorStatus, Status, StoreStatus, StreamNotice, wanted},
    sensors::{Counters, LostMaps, SENSORS},
    switch::decision::{Answer, AnswerError},
};

/// Longest request line the socket accepts.
const MAX_REQUEST: u64 = 64 * 1024;

/// State the socket handlers read while the event loop runs.
pub struct Shared {
    /// Shared with every record ([`crate::event::Record::host`]).
    pub host: Arc<str>,
    pub started: Instant,
    pub attached: [bool; 4],
    pub counters: [Arc<Counters>; 4],
    pub lost: Arc<Mutex<LostMaps>>,
    pub processes: AtomicU64,
    /// Containers seen since start (`enrich::container`).
    pub containers: AtomicU64,
    pub pending: AtomicU64,
    pub blocks: AtomicU64,
    pub kills: AtomicU64,
    /// Alerts raised since start, by anomaly.
    pub alerts: Mutex<BTreeMap<String, u64>>,
    /// Findings folded into flood alerts, and overflows of the bounded alert maps.
    pub floods: Arc<crate::detect::budget::FloodStats>,
    /// Chat delivery counters.
    pub notify: Arc<crate::notify::NotifyStats>,
    /// The event store's queue, size and evictions.
    pub store: Arc<crate::store::StoreStats>,
    /// Whether blocks land (written by the switch's worker).
    pub enforce: Arc<crate::switch::worker::Health>,
    /// Whether the override endpoint listens, and why not.
    pub override_: Arc<crate::override_http::listener::Health>,
    pub hub: Hub,
    /// Answers to pending decisions, to the switch.
    pub answers: mpsc::Sender<Answer>,
    /// Requests to lift a block, to the switch.
    pub unblocks: mpsc::Sender<Unblock>,
    /// `sentinel reload`, to the event loop.
    pub reloads: mpsc::Sender<crate::daemon::reload::Request>,
    /// The fleet shipper's state, when `fleet.postgres_url` is set.
    pub fleet: Option<Arc<crate::fleet::Stats>>,
}

/// `sentinel unblock ADDR` on its way to the switch.
#[derive(Debug)]
pub struct Unblock {
    pub addr: IpAddr,
    pub reply: oneshot::Sender<Result<bool, String>>,
}

impl Shared {
    /// The numbers behind a Prometheus scrape.
    pub fn metrics_snapshot(&self) -> crate::daemon::metrics::Snapshot {
        let status = self.status();
        crate::daemon::metrics::Snapshot {
            sensors: status
                .sensors
                .iter()
                .map(|(name, s)| crate::daemon::metrics::SensorMetrics {
                    name: name.clone(),
                    attached: s.attached,
                    seen: s.seen,
                    lost: s.lost,
                    // aya 0.14's RingBuf does not expose its producer/consumer positions.
                    ring_fill_bytes: None,
                    ring_size_bytes: None,
                })
                .collect(),
            alerts_by_anomaly: self.alerts.lock().expect("alerts lock").clone(),
            pending: status.pending,
            blocks: status.blocks,
            kills: status.kills,
            notify_failures: status
                .notify
                .iter()
                .map(|(channel, s)| (channel.clone(), s.failed))
                .collect(),
            processes: status.processes,
            store: status.store,
            enforce_healthy: status.enforce.healthy,
            fleet: status.fleet,
        }
    }

    pub fn status(&self) -> Status {
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
            pending: self.pending.load(Ordering::Relaxed),
            blocks: self.blocks.load(Ordering::Relaxed),
            kills: self.kills.load(Ordering::Relaxed),
            uptime_s: self.started.elapsed().as_secs(),
            host: self.host.to_string(),
            pid: std::process::id(),
            processes: self.processes.load(Ordering::Relaxed),
            containers: self.containers.load(Ordering::Relaxed),
            malformed: self
                .counters
                .iter()
                .map(|c| c.malformed.load(Ordering::Relaxed))
                .sum(),
            notify: self.notify.snapshot(),
            store: StoreStatus::of(&self.store),
            enforce: crate::daemon::ipc::EnforceStatus {
                healthy: self.enforce.healthy(),
                last_error: self.enforce.last_error(),
            },
            fleet: self.fleet.as_ref().map(|f| f.snapshot()),
            alerts: crate::daemon::ipc::AlertsStatus {
                folded: self.floods.folded.load(Ordering::Relaxed),
                overflow: self.floods.overflow.load(Ordering::Relaxed),
            },
            override_: self.override_.status(),
        }
    }
}

/// Refuse to start beside an agent already answering on `path` (checked before anything is
/// loaded or touched, and again when binding).
pub fn ensure_not_running(path: &Path) -> anyhow::Result<()> {
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another agent is already running on {} (stop it, or give this one another agent.socket)",
            path.display()
        );
    }
    Ok(())
}

/// Bind the CLI socket (mode 0600), refusing to steal it from a running agent.
pub fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        ensure_not_running(path)?;
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
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
            return write_json(&mut w, &StreamNotice::Error("no request within 5 s".into())).await;
        }
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            warn!("refusing a malformed CLI request: {e}");
            return write_json(
                &mut w,
                &StreamNotice::Error(format!("malformed request: {e}")),
            )
            .await;
        }
    };
    match request {
        Request::Status => write_json(&mut w, &shared.status()).await,
        Request::Answer { id, verdict } => {
            let (reply, rx) = oneshot::channel();
            let answer = Answer {
                id,
                verdict,
                via: "cli".into(),
                reply,
            };
            let outcome = match shared.answers.send(answer).await {
                Ok(()) => rx.await.unwrap_or(Err(AnswerError::Stopping)),
                Err(_) => Err(AnswerError::Stopping),
            };
            match outcome {
                Ok(decision) => write_json(&mut w, &decision).await,
                Err(e) => write_json(&mut w, &StreamNotice::Error(e.to_string())).await,
            }
        }
        Request::Unblock { addr } => {
            let (reply, rx) = oneshot::channel();
            let outcome = match shared.unblocks.send(Unblock { addr, reply }).await {
                Ok(()) => rx.await.unwrap_or(Err("the agent is stopping".into())),
                Err(_) => Err("the agent is stopping".into()),
            };
            match outcome {
                Ok(was) => {
                    write_json(&mut w, &serde_json::json!({"addr": addr, "unblocked": was})).await
                }
                Err(e) => write_json(&mut w, &StreamNotice::Error(e)).await,
            }
        }
        Request::Reload => {
            let (reply, rx) = oneshot::channel();
            let request = crate::daemon::reload::Request { reply };
            let outcome = match shared.reloads.send(request).await {
                Ok(()) => rx.await.unwrap_or(Err("the agent is stopping".into())),
                Err(_) => Err("the agent is stopping".into()),
            };
            match outcome {
                Ok(reloaded) => write_json(&mut w, &reloaded).await,
                Err(e) => write_json(&mut w, &StreamNotice::Error(e)).await,
            }
        }
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
                        write_json(&mut w, &StreamNotice::Lagged(n)).await?
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}
