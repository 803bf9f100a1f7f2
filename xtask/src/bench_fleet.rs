//! `cargo xtask bench-fleet`: how fast one agent ships to the fleet store. It starts a real
//! PostgreSQL server in a temp dir (the test harness, `tests/common/pg.rs`), fills an agent's
//! outbox with alerts, decisions, blocks and kills as an outage would leave it, then starts
//! the real release agent and measures how fast the outbox drains, for several batch sizes
//! (`fleet.batch = 1` is shipping without batching). Rows/s are printed. A measurement, not a
//! test; the numbers go into `docs/fleet.md`.
//!
//! It writes the outbox table directly (`fleet_outbox`: seq, kind, key, body — the layout in
//! `sentinel-agent/src/fleet/outbox.rs`), so the two must change together.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};

use crate::harness::pg;

#[derive(clap::Args)]
pub struct Args {
    /// Rows queued in the outbox for each batched run.
    #[arg(long, default_value_t = 20_000)]
    rows: usize,
    /// Batch sizes to measure (1 = one transaction per row).
    #[arg(long, value_delimiter = ',', default_value = "1,100,500,2000")]
    batches: Vec<usize>,
    /// Skip `cargo build --release` and use the existing binary.
    #[arg(long)]
    no_build: bool,
}

/// The agent of one run, stopped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// A realistic outbox row of each kind, `i` making it unique.
fn row(i: usize) -> (&'static str, String, serde_json::Value) {
    let ts = "2026-11-30T06:00:00.000Z";
    let id = format!("b{i:07}");
    let addr = format!("198.51.{}.{}", 100 + (i / 250) % 100, i % 250 + 1);
    match i % 10 {
        0..=4 => (
            "alert",
            id.clone(),
            serde_json::json!({"ts": ts, "host": "bench", "kind": "alert", "id": id,
                "anomaly": "geo", "severity": "critical", "risk": 75,
                "mitre": {"technique": "T1071.001", "tactic": "Command and Control", "name": "Web Protocols"},
                "pid": 4242, "comm": "curl", "exe": "/usr/bin/curl", "target_ip": addr,
                "country": "RU", "state": "pending", "deadline": ts, "count": 1,
                "detail": "curl (pid 4242) connected to a high-risk country"}),
        ),
        5..=7 => (
            "decision",
            id.clone(),
            serde_json::json!({"id": id, "anomaly": "geo", "severity": "critical", "risk": 75,
                "mitre": {"technique": "T1071.001", "tactic": "Command and Control", "name": "Web Protocols"},
                "host": "bench", "pid": 4242, "comm": "curl", "exe": "/usr/bin/curl",
                "ancestors": ["bash", "sshd"], "target_ip": addr, "country": "RU",
                "detail": "curl connected", "created": ts, "deadline": ts,
                "state": "auto-blocked", "decided_by": "timer", "reason": null, "ended": ts}),
        ),
        8 => (
            "block",
            addr.clone(),
            serde_json::json!({"addr": addr, "expires": ts, "decision_id": id, "lifted": false}),
        ),
        _ => (
            "kill",
            id.clone(),
            serde_json::json!({"pid": 4242, "exe": "/tmp/xmrig", "reason": "resource alert",
                "confidence": 80, "at": ts}),
        ),
    }
}

/// Write `n` rows into the outbox of the agent database at `db`.
fn fill_outbox(db: &Path, n: usize) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS fleet_outbox (
             seq  INTEGER PRIMARY KEY AUTOINCREMENT,
             kind TEXT NOT NULL,
             key  TEXT NOT NULL,
             body TEXT NOT NULL,
             UNIQUE (kind, key)
         );",
    )?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx
            .prepare("INSERT OR REPLACE INTO fleet_outbox (kind, key, body) VALUES (?1, ?2, ?3)")?;
        for i in 0..n {
            let (kind, key, body) = row(i);
            stmt.execute(rusqlite::params![kind, key, body.to_string()])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn status(bin: &Path, config: &Path) -> Option<serde_json::Value> {
    let out = Command::new(bin)
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// One run: `rows` queued, shipped with `batch`; rows/s while draining.
fn drain(
    bin: &Path,
    dir: &Path,
    server: &pg::Postgres,
    operator: &pg::Operator,
    batch: usize,
    rows: usize,
) -> anyhow::Result<f64> {
    let run = dir.join(format!("batch{batch}"));
    std::fs::create_dir_all(&run)?;
    let db = run.join("s.db");
    fill_outbox(&db, rows)?;
    // The agent ships under its own role, which the operator adds (password file mode 0600).
    let host = format!("bench-b{batch}");
    let (pw, _) = operator.add_host(&host);
    let config = run.join("sentinel.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"bench-b{batch}\"\ndb = \"{}\"\nsocket = \"{}\"\n[geo]\nenabled = false\n\
             [enforce]\nmode = \"dry-run\"\n{}batch = {batch}\n",
            db.display(),
            run.join("s.sock").display(),
            server.fleet_section(&host, &pw, "")
        ),
    )?;
    let log = std::fs::File::create(run.join("agent.log"))?;
    let _agent = Running(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?,
    );
    // From the first shipped batch to the empty outbox, read from `status` every 10 ms.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        ensure!(
            Instant::now() < deadline,
            "the outbox did not drain in 10 minutes"
        );
        if let Some(s) = status(bin, &config) {
            let f = &s["fleet"];
            let shipped = f["shipped"].as_u64().unwrap_or(0);
            if shipped > 0 && first.is_none() {
                first = Some((Instant::now(), shipped));
            }
            if f["outbox"] == 0
                && shipped as usize >= rows
                && let Some((t0, s0)) = first
            {
                let secs = t0.elapsed().as_secs_f64().max(1e-3);
                let stored = server.sql(&format!(
                    "SELECT (SELECT count(*) FROM fleet_alerts WHERE host = 'bench-b{batch}')
                          + (SELECT count(*) FROM fleet_decisions WHERE host = 'bench-b{batch}')
                          + (SELECT count(*) FROM fleet_blocks WHERE host = 'bench-b{batch}')
                          + (SELECT count(*) FROM fleet_kills WHERE host = 'bench-b{batch}')"
                ));
                ensure!(
                    stored == [rows.to_string()],
                    "the store holds {stored:?} rows, {rows} were queued"
                );
                return Ok((shipped - s0) as f64 / secs);
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench-fleet needs root (the agent loads eBPF programs; PostgreSQL runs as postgres)"
    );
    ensure!(
        args.rows >= 1000,
        "--rows must be at least 1000 to measure anything"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    if !args.no_build {
        eprintln!("==> building the agent (release)");
        let ok = Command::new("cargo")
            .args(["build", "--release", "-q", "-p", "sentinel-agent"])
            .status()?
            .success();
        ensure!(ok, "cargo build failed");
    }
    let bin = root.join("target/release/sentinel");
    // Removed on drop, also when a run fails.
    let tmp = tempfile::Builder::new()
        .prefix("sentinel-bench-fleet")
        .tempdir()?;
    let dir: PathBuf = tmp.path().into();
    eprintln!("==> PostgreSQL in {}", dir.display());
    let server = pg::Postgres::start_durable();
    let operator = server.operator(&bin);
    operator.init();
    println!("outbox drain after an outage, one agent, PostgreSQL on loopback (fsync on):");
    for &batch in &args.batches {
        // One transaction per row is slow: measure it on fewer rows.
        let rows = if batch == 1 {
            args.rows.min(2000)
        } else {
            args.rows
        };
        let rate = drain(&bin, &dir, &server, &operator, batch, rows)?;
        println!("  fleet.batch = {batch:>5}: {rows:>6} rows in the outbox, {rate:>8.0} rows/s");
    }
    drop(server);
    drop(tmp);
    Ok(())
}
