//! `cargo xtask bench-switch`: how fast a decision becomes a block in the kernel. It runs the
//! real agent against a test host in a network namespace (the shared test-host harness,
//! `tests/common/netns.rs`, which refuses to shadow the machine's own network; its own GeoIP
//! database puts the addresses in a high-risk country), opens many decisions, and measures (1) from
//! `sentinel block ID` to the command returning with the element applied, (2) from a
//! decision's deadline to its element being in the nftables set. Medians are printed. A
//! measurement, not a test.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure};

use crate::{
    bench::{build_agent, default_binary, workspace_root},
    harness::{mmdb, netns},
    scene::Scene,
};

#[derive(clap::Args)]
pub struct Args {
    /// Decisions measured per kind.
    #[arg(long, default_value_t = 15)]
    runs: u32,
    /// Skip `cargo build --release` and use the existing binary.
    #[arg(long)]
    no_build: bool,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn in_set(table: &str, addr: &str) -> bool {
    Command::new("nft")
        .args(["list", "set", "inet", table, "block4"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(addr))
}

/// Send a SYN to `addr` (nothing answers; the sensor only needs the attempt).
fn knock(addr: &str) {
    let ip: IpAddr = addr.parse().expect("address");
    let _ = TcpStream::connect_timeout(&SocketAddr::new(ip, 443), Duration::from_millis(50));
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench-switch needs root (eBPF, nftables, netns)"
    );
    let root = workspace_root();
    if !args.no_build {
        build_agent(&root)?;
    }
    let bin = default_binary(&root);
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("sentinel-bench-switch-{id}"));
    std::fs::create_dir_all(&dir)?;
    ensure!(
        args.runs <= 50,
        "--runs is at most 50 (each run uses its own test-host address)"
    );
    eprintln!("==> test host in a network namespace");
    // Host-side addresses: .10.. for `block ID`, .70.. for deadlines (RU /25 of the harness).
    let extra: Vec<String> = (0..args.runs)
        .flat_map(|i| {
            [
                format!("198.51.100.{}", 10 + i),
                format!("198.51.100.{}", 70 + i),
            ]
        })
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let net = netns::TestNet::try_new("B", &extra).map_err(|e| anyhow::anyhow!(e))?;
    let mut scene = Scene {
        dir: dir.clone(),
        table: format!("snt_bench_{id}"),
        agent: None,
        _net: net,
    };

    let geo = dir.join("country.mmdb");
    mmdb::write_country_db(&geo, mmdb::Layout::Flat, &[("198.51.100.0/25", "RU")])?;
    let config = dir.join("sentinel.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndb = \"{d}/s.db\"\nsocket = \"{d}/s.sock\"\n[geo]\ndatabase = \"{g}\"\n\
             [switch]\ncountdown = \"1s\"\n[enforce]\ntable = \"{t}\"\n",
            d = dir.display(),
            g = geo.display(),
            t = scene.table
        ),
    )?;
    let cli = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
    };
    eprintln!("==> starting the agent");
    let log = std::fs::File::create(dir.join("agent.log"))?;
    scene.agent = Some(
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()?,
    );
    let ready = Instant::now();
    while !cli(&["status"])?.status.success() {
        ensure!(
            ready.elapsed() < Duration::from_secs(20),
            "agent not ready: see {}",
            dir.join("agent.log").display()
        );
        thread::sleep(Duration::from_millis(100));
    }

    // Each decision targets its own address (the same one would fold into one alert).
    let pending_for = |addr: &str| -> anyhow::Result<(String, SystemTime)> {
        let start = Instant::now();
        loop {
            let out = cli(&["pending", "--json"])?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                if v["target_ip"] == addr {
                    let deadline = humantime::parse_rfc3339(v["deadline"].as_str().unwrap_or(""))?;
                    return Ok((v["id"].as_str().unwrap_or("").to_string(), deadline));
                }
            }
            ensure!(
                start.elapsed() < Duration::from_secs(5),
                "no decision opened for {addr}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    };

    eprintln!("==> {} × `sentinel block ID`", args.runs);
    let mut by_hand = Vec::new();
    for i in 0..args.runs {
        let addr = format!("198.51.100.{}", 10 + i);
        knock(&addr);
        let (id, _) = pending_for(&addr)?;
        let t0 = Instant::now();
        let out = cli(&["block", &id])?;
        let took = t0.elapsed();
        ensure!(
            out.status.success(),
            "block {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            in_set(&scene.table, &addr),
            "{addr} not in the set after `block` returned"
        );
        by_hand.push(took);
    }

    eprintln!("==> {} × deadline expiry (countdown 1s)", args.runs);
    let mut by_timer = Vec::new();
    for i in 0..args.runs {
        let addr = format!("198.51.100.{}", 70 + i);
        knock(&addr);
        let (_, deadline) = pending_for(&addr)?;
        loop {
            if in_set(&scene.table, &addr) {
                by_timer.push(
                    SystemTime::now()
                        .duration_since(deadline)
                        .unwrap_or_default(),
                );
                break;
            }
            if SystemTime::now() > deadline + Duration::from_secs(5) {
                bail!("{addr} still not blocked 5 s after its deadline");
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
    let (h, t) = (median(&mut by_hand), median(&mut by_timer));
    println!(
        "block ID → element in the kernel (CLI round trip, incl. process start): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
        ms(h),
        ms(by_hand[0]),
        ms(*by_hand.last().unwrap()),
        by_hand.len()
    );
    println!(
        "deadline → element in the kernel (observed by polling nft): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
        ms(t),
        ms(by_timer[0]),
        ms(*by_timer.last().unwrap()),
        by_timer.len()
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
