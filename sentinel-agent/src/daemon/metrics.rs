//! The optional Prometheus endpoint (`[metrics] listen`): `GET /metrics` answers with the
//! agent's counters in the Prometheus text exposition format (version 0.0.4). The agent
//! hands [`serve`] a closure that takes a [`Snapshot`] of plain numbers and [`render`]s it,
//! so this module knows nothing about the daemon's internals and is tested on plain data.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tracing::{info, warn};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one sensor reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SensorMetrics {
    /// `exec`, `connect` or `cpu`.
    pub name: String,
    pub attached: bool,
    /// Records received from the kernel (CPU samples for `cpu`).
    pub seen: u64,
    /// Records the kernel could not deliver (ring buffer full).
    pub lost: u64,
    /// Bytes waiting in the sensor's ring buffer, when known.
    pub ring_fill_bytes: Option<u64>,
    /// The ring buffer's size, when the sensor has one.
    pub ring_size_bytes: Option<u64>,
}

/// The numbers behind one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub sensors: Vec<SensorMetrics>,
    /// Alerts raised since start, by anomaly (`lineage`, `geo`, `resource`, …).
    pub alerts_by_anomaly: BTreeMap<String, u64>,
    /// Open pending decisions.
    pub pending: u64,
    /// Addresses blocked now.
    pub blocks: u64,
    /// Processes killed since start (`enforce.kill`).
    pub kills: u64,
    /// Chat messages that failed after every attempt, by channel (`slack`, `teams`, …).
    pub notify_failures: BTreeMap<String, u64>,
    /// Processes in the agent's process tree.
    pub processes: u64,
    /// The event store's queue, size and what it dropped or evicted.
    pub store: crate::daemon::ipc::StoreStatus,
    /// Whether blocks land in nftables.
    pub enforce_healthy: bool,
    /// The fleet shipper, when `fleet.postgres_url` is set.
    pub fleet: Option<crate::fleet::FleetStatus>,
}

/// One metric family being written: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\\', r"\\"));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

/// A label value as the exposition format wants it: `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The snapshot as Prometheus text: every family with its HELP and TYPE, names prefixed
/// `sentinel_`, counters suffixed `_total`.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let o = &mut out;

    let mut f = family(
        o,
        "sentinel_build_info",
        "gauge",
        "The running agent's version (always 1).",
    );
    f.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);

    let mut f = family(
        o,
        "sentinel_sensor_attached",
        "gauge",
        "1 when the sensor's kernel programs are attached.",
    );
    for x in &s.sensors {
        f.sample(&[("sensor", &x.name)], u8::from(x.attached));
    }
    let mut f = family(
        o,
        "sentinel_events_seen_total",
        "counter",
        "Records received from the kernel, per sensor (CPU samples for cpu).",
    );
    for x in &s.sensors {
        f.sample(&[("sensor", &x.name)], x.seen);
    }
    let mut f = family(
        o,
        "sentinel_events_lost_total",
        "counter",
        "Records the kernel could not deliver because the sensor's ring buffer was full.",
    );
    for x in &s.sensors {
        f.sample(&[("sensor", &x.name)], x.lost);
    }
    let mut f = family(
        o,
        "sentinel_ring_buffer_fill_ratio",
        "gauge",
        "Share of the sensor's ring buffer waiting to be read (0 to 1).",
    );
    for x in &s.sensors {
        if let (Some(fill), Some(size)) = (x.ring_fill_bytes, x.ring_size_bytes)
            && size > 0
        {
            f.sample(&[("sensor", &x.name)], (fill as f64 / size as f64).min(1.0));
        }
    }

    let mut f = family(
        o,
        "sentinel_alerts_total",
        "counter",
        "Alerts raised since the agent started, by anomaly.",
    );
    for (anomaly, n) in &s.alerts_by_anomaly {
        f.sample(&[("anomaly", anomaly)], n);
    }
    family(
        o,
        "sentinel_pending_decisions",
        "gauge",
        "Open dead man's switch decisions waiting for a human or their deadline.",
    )
    .sample(&[], s.pending);
    family(o, "sentinel_blocks", "gauge", "Addresses blocked now.").sample(&[], s.blocks);
    family(
        o,
        "sentinel_kills_total",
        "counter",
        "Processes killed by enforcement since the agent started.",
    )
    .sample(&[], s.kills);
    let mut f = family(
        o,
        "sentinel_notify_failures_total",
        "counter",
        "Chat notifications that failed after every attempt, by channel.",
    );
    for (channel, n) in &s.notify_failures {
        f.sample(&[("channel", channel)], n);
    }
    family(
        o,
        "sentinel_processes",
        "gauge",
        "Processes in the agent's process tree.",
    )
    .sample(&[], s.processes);
    store_families(o, &s.store);
    family(
        o,
        "sentinel_enforce_healthy",
        "gauge",
        "1 while blocks land in nftables, 0 while one is block-failed and being retried.",
    )
    .sample(&[], u8::from(s.enforce_healthy));
    if let Some(f) = &s.fleet {
        fleet(o, f);
    }
    out
}

/// The event store's bounds at work (`agent.max_db_mb`, the writer's queue).
fn store_families(o: &mut String, s: &crate::daemon::ipc::StoreStatus) {
    let families: [(&'static str, &str, &str, u64); 6] = [
        (
            "sentinel_store_written_total",
            "counter",
            "New events committed to the store.",
            s.written,
        ),
        (
            "sentinel_store_dropped_total",
            "counter",
            "Events dropped because the store's queue was full.",
            s.dropped,
        ),
        (
            "sentinel_store_evicted_total",
            "counter",
            "Exec, connect and cpu events deleted to keep the store under agent.max_db_mb.",
            s.evicted,
        ),
        (
            "sentinel_store_queued",
            "gauge",
            "Events waiting for the store writer.",
            s.queued,
        ),
        (
            "sentinel_store_bytes",
            "gauge",
            "The event store on disk (database and WAL), in bytes.",
            s.bytes,
        ),
        (
            "sentinel_store_max_bytes",
            "gauge",
            "agent.max_db_mb, in bytes.",
            s.max_bytes,
        ),
    ];
    for (name, kind, help, value) in families {
        family(o, name, kind, help).sample(&[], value);
    }
}

/// The `fleet` object of `status --json`, as metrics.
fn fleet(o: &mut String, f: &crate::fleet::FleetStatus) {
    family(
        o,
        "sentinel_fleet_connected",
        "gauge",
        "1 while the agent holds a working connection to the fleet store.",
    )
    .sample(&[], u8::from(f.connected));
    family(
        o,
        "sentinel_fleet_outbox_rows",
        "gauge",
        "Rows waiting in the outbox for the fleet store.",
    )
    .sample(&[], f.outbox);
    family(
        o,
        "sentinel_fleet_outbox_dropped_total",
        "counter",
        "Rows dropped because the fleet outbox was full.",
    )
    .sample(&[], f.outbox_dropped);
    family(
        o,
        "sentinel_fleet_shipped_total",
        "counter",
        "Rows shipped to the fleet store since the agent started.",
    )
    .sample(&[], f.shipped);
    let last = f
        .last_shipped
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    family(
        o,
        "sentinel_fleet_last_shipped_timestamp_seconds",
        "gauge",
        "When a batch last reached the fleet store (Unix time; 0: never).",
    )
    .sample(&[], last);
    family(
        o,
        "sentinel_fleet_error",
        "gauge",
        "1 while the last attempt to reach or write the fleet store failed (see status).",
    )
    .sample(&[], u8::from(f.last_error.is_some()));
}

/// The renderer [`serve`] calls on every scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The endpoint's routes: `GET /metrics` and 404 for anything else.
pub fn router(render: Render) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], render()) }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: try /metrics\n").into_response() })
}

/// Serve `/metrics` on `listener` until the task is dropped. Bind the listener before
/// dropping capabilities if the port is below 1024 (there is no CAP_NET_BIND_SERVICE after).
pub async fn serve(listener: tokio::net::TcpListener, render: Render) {
    if let Ok(addr) = listener.local_addr() {
        info!("Prometheus metrics on http://{addr}/metrics");
    }
    if let Err(e) = axum::serve(listener, router(render)).await {
        warn!("the metrics endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        io::{Read, Write},
    };

    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            sensors: vec![
                SensorMetrics {
                    name: "exec".into(),
                    attached: true,
                    seen: 1200,
                    lost: 3,
                    ring_fill_bytes: Some(65536),
                    ring_size_bytes: Some(262144),
                },
                SensorMetrics {
                    name: "cpu".into(),
                    attached: false,
                    seen: 0,
                    lost: 0,
                    ring_fill_bytes: None,
                    ring_size_bytes: None,
                },
            ],
            alerts_by_anomaly: [("geo".to_string(), 2), ("lineage".to_string(), 1)].into(),
            pending: 1,
            blocks: 4,
            kills: 0,
            notify_failures: [("slack".to_string(), 5), ("we\"ird\\\n".to_string(), 1)].into(),
            processes: 321,
            store: crate::daemon::ipc::StoreStatus {
                queued: 7,
                dropped: 1500,
                written: 123_456,
                evicted: 20_000,
                bytes: 900_000,
                max_bytes: 1_048_576,
            },
            enforce_healthy: true,
            fleet: Some(crate::fleet::FleetStatus {
                connected: false,
                outbox: 17,
                outbox_dropped: 3,
                last_shipped: Some("2027-01-15T08:00:00.000Z".into()),
                last_error: Some("connection refused".into()),
                shipped: 40,
            }),
        }
    }

    /// Parse exposition text back: every sample's family has a TYPE line before it, every
    /// TYPE is one Prometheus knows, names are unique families; returns sample → value.
    fn parse(text: &str) -> HashMap<String, f64> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(types.insert(name.into(), kind.into()).is_none(), "{line}");
            } else if line.starts_with("# HELP ") || line.is_empty() {
            } else {
                assert!(!line.starts_with('#'), "unknown comment {line}");
                let name_end = line.find(['{', ' ']).expect("sample name");
                let name = &line[..name_end];
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                    "{line}"
                );
                let kind = types
                    .get(name)
                    .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                let (series, value) = line.rsplit_once(' ').expect("sample value");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                samples.insert(series.to_string(), value);
            }
        }
        samples
    }

    #[test]
    fn render_is_valid_exposition_text() {
        let text = render(&snapshot());
        assert!(text.ends_with('\n'));
        let m = parse(&text);
        assert_eq!(m[r#"sentinel_events_seen_total{sensor="exec"}"#], 1200.0);
        assert_eq!(m[r#"sentinel_events_lost_total{sensor="exec"}"#], 3.0);
        assert_eq!(m[r#"sentinel_sensor_attached{sensor="cpu"}"#], 0.0);
        assert_eq!(m[r#"sentinel_ring_buffer_fill_ratio{sensor="exec"}"#], 0.25);
        assert!(!m.contains_key(r#"sentinel_ring_buffer_fill_ratio{sensor="cpu"}"#));
        assert_eq!(m[r#"sentinel_alerts_total{anomaly="geo"}"#], 2.0);
        assert_eq!(m["sentinel_pending_decisions"], 1.0);
        assert_eq!(m["sentinel_blocks"], 4.0);
        assert_eq!(m["sentinel_kills_total"], 0.0);
        assert_eq!(m[r#"sentinel_notify_failures_total{channel="slack"}"#], 5.0);
        assert_eq!(
            m[r#"sentinel_notify_failures_total{channel="we\"ird\\\n"}"#],
            1.0
        );
        assert_eq!(m["sentinel_processes"], 321.0);
        assert_eq!(m["sentinel_store_written_total"], 123_456.0);
        assert_eq!(m["sentinel_store_dropped_total"], 1500.0);
        assert_eq!(m["sentinel_store_evicted_total"], 20_000.0);
        assert_eq!(m["sentinel_store_queued"], 7.0);
        assert_eq!(m["sentinel_store_bytes"], 900_000.0);
        assert_eq!(m["sentinel_store_max_bytes"], 1_048_576.0);
        assert_eq!(m["sentinel_fleet_connected"], 0.0);
        assert_eq!(m["sentinel_fleet_outbox_rows"], 17.0);
        assert_eq!(m["sentinel_fleet_outbox_dropped_total"], 3.0);
        assert_eq!(m["sentinel_fleet_shipped_total"], 40.0);
        assert_eq!(
            m["sentinel_fleet_last_shipped_timestamp_seconds"],
            1_800_000_000.0
        );
        assert_eq!(m["sentinel_fleet_error"], 1.0);
        // Without a fleet store, no fleet families.
        assert!(!render(&Snapshot::default()).contains("sentinel_fleet_"));
    }

    #[test]
    fn an_empty_snapshot_still_renders_every_family() {
        let text = render(&Snapshot::default());
        parse(&text);
        for name in [
            "sentinel_events_seen_total",
            "sentinel_events_lost_total",
            "sentinel_alerts_total",
            "sentinel_pending_decisions",
            "sentinel_blocks",
            "sentinel_kills_total",
            "sentinel_notify_failures_total",
            "sentinel_processes",
            "sentinel_ring_buffer_fill_ratio",
            "sentinel_sensor_attached",
            "sentinel_store_written_total",
            "sentinel_store_dropped_total",
            "sentinel_store_evicted_total",
            "sentinel_store_bytes",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn server_answers_metrics_and_404() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = scrapes.clone();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(move || {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                render(&Snapshot {
                    processes: n,
                    ..snapshot()
                })
            }),
        ));
        let (ok, missing) =
            tokio::task::spawn_blocking(move || (get(addr, "/metrics"), get(addr, "/nope")))
                .await
                .unwrap();
        server.abort();

        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert_eq!(parse(body)["sentinel_processes"], 0.0);
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert_eq!(scrapes.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
