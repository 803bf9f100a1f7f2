//! `cargo xtask bench-flood`: the dead man's switch under a flood of decisions. One process
//! connects to `--targets` distinct IPv6 addresses (a documentation /48 that a test host in a
//! network namespace answers in full through a `local` route; the benchmark's own GeoIP
//! database puts it in a high-risk country), with the real agent enforcing through its own
//! nftables table and a loopback Slack webhook counting chat posts. Prints: the time until
//! every target is in a pending decision, the time from the deadline until every address is
//! in the kernel set, `sentinel status` latency (worst and p99) during the flood and at the
//! deadline, chat posts, and the agent's peak RSS. A measurement, not a test.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    bench::{build_agent, default_binary, workspace_root},
    harness::{mmdb, netns},
    scene::Scene,
};

/// The flood's destinations: every address of it answers (a `local` route in the test host).
const PREFIX: &str = "2001:db8:5::/48";

#[derive(clap::Args)]
pub struct Args {
    /// Distinct destinations the flooding process connects to.
    #[arg(long, default_value_t = 10_000)]
    targets: u32,
    /// The switch's countdown for the flood's decision.
    #[arg(long, default_value = "20s")]
    countdown: String,
    /// Skip `cargo build --release` and use the existing binary.
    #[arg(long)]
    no_build: bool,
    /// The agent binary to measure (default: target/release/sentinel), e.g. an older build.
    #[arg(long)]
    bin: Option<PathBuf>,
}

/// A loopback "Slack webhook" that counts the posts it receives.
fn chat_counter() -> anyhow::Result<(u16, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let posts = Arc::new(AtomicU64::new(0));
    let counted = posts.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = counted.clone();
            thread::spawn(move || serve_post(stream, &counted));
        }
    });
    Ok((port, posts))
}

fn serve_post(mut stream: TcpStream, posts: &AtomicU64) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if line.starts_with("POST") {
            posts.fetch_add(1, Ordering::Relaxed);
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
}

/// Latencies of `sentinel status --json`, collected by a thread until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Duration>>>,
    handle: thread::JoinHandle<()>,
}

impl Prober {
    fn start(bin: &Path, config: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out, bin, config) = (
            stop.clone(),
            samples.clone(),
            bin.to_path_buf(),
            config.to_path_buf(),
        );
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let _ = Command::new(&bin)
                    .args(["status", "--json", "--config"])
                    .arg(&config)
                    .output();
                out.lock().unwrap().push(t0.elapsed());
                thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            samples,
            handle,
        }
    }

    /// (worst, p99, samples).
    fn finish(self) -> (Duration, Duration, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        let mut v = self.samples.lock().unwrap().clone();
        v.sort();
        if v.is_empty() {
            return (Duration::ZERO, Duration::ZERO, 0);
        }
        let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
        (*v.last().unwrap(), p99, v.len())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Every destination in a pending decision (`target_ip` and `targets` of each).
fn pending_targets(bin: &Path, config: &Path) -> anyhow::Result<usize> {
    let out = Command::new(bin)
        .args(["pending", "--json", "--config"])
        .arg(config)
        .output()?;
    let mut all = std::collections::HashSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let Some(t) = v["target_ip"].as_str() {
            all.insert(t.to_string());
        }
        for t in v["targets"].as_array().into_iter().flatten() {
            if let Some(t) = t.as_str() {
                all.insert(t.to_string());
            }
        }
    }
    Ok(all.len())
}

fn set_size(table: &str) -> usize {
    Command::new("nft")
        .args(["-j", "list", "set", "inet", table, "block6"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .map_or(0, |v| {
            v["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["set"]["elem"].as_array().map_or(0, Vec::len))
                .sum()
        })
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn target(i: u32) -> Ipv6Addr {
    // 2001:db8:5::/48, host part from the index (never ::0).
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        5,
        0,
        0,
        0,
        (i >> 16) as u16,
        (i & 0xffff) as u16 + 1,
    )
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench-flood needs root (eBPF, nftables, netns)"
    );
    ensure!(
        (1..=60_000).contains(&args.targets),
        "--targets is between 1 and 60000"
    );
    let countdown = humantime::parse_duration(&args.countdown)
        .with_context(|| format!("--countdown {}", args.countdown))?;
    let root = workspace_root();
    if !args.no_build && args.bin.is_none() {
        build_agent(&root)?;
    }
    let bin = args.bin.clone().unwrap_or_else(|| default_binary(&root));
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("sentinel-bench-flood-{id}"));
    std::fs::create_dir_all(&dir)?;
    eprintln!("==> test host answering {PREFIX}");
    let net = netns::TestNet::try_new("F", &[]).map_err(|e| anyhow::anyhow!(e))?;
    net.answer_prefix_v6(PREFIX)
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut scene = Scene {
        dir: dir.clone(),
        table: format!("snt_flood_{id}"),
        agent: None,
        _net: net,
    };
    let geo = dir.join("country.mmdb");
    mmdb::write_country_db(&geo, mmdb::Layout::Flat, &[(PREFIX, "RU")])?;
    let (chat_port, posts) = chat_counter()?;
    // Slack buttons need the override endpoint: its key (mode 0600) and a free loopback port.
    let key = dir.join("override.key");
    std::fs::write(&key, "ab".repeat(32))?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let override_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("sentinel.toml");
    // The flood is one origin: `switch.max_auto_blocks` is lifted so the timer blocks every
    // address (this measures the batch, not the per-origin budget).
    write_private(
        &config,
        format!(
            "[agent]\ndb = \"{d}/s.db\"\nsocket = \"{d}/s.sock\"\n[geo]\ndatabase = \"{g}\"\n\
             [switch]\ncountdown = \"{c}\"\nmax_auto_blocks = 100000\n[enforce]\ntable = \"{t}\"\n\
             [override]\nlisten = \"127.0.0.1:{override_port}\"\n\
             public_url = \"http://127.0.0.1:{override_port}\"\nsecret_file = \"{k}\"\n\
             [notify.slack]\nwebhook_url = \"http://127.0.0.1:{chat_port}/hook\"\n\
             signing_secret = \"bench-flood\"\n",
            d = dir.display(),
            g = geo.display(),
            c = args.countdown,
            t = scene.table,
            k = key.display()
        ),
    )?;
    eprintln!("==> starting the agent ({})", bin.display());
    let log = std::fs::File::create(dir.join("agent.log"))?;
    scene.agent = Some(
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()?,
    );
    let agent_pid = scene.agent.as_ref().unwrap().id();
    let ready = Instant::now();
    while !Command::new(&bin)
        .args(["status", "--config"])
        .arg(&config)
        .output()?
        .status
        .success()
    {
        ensure!(
            ready.elapsed() < Duration::from_secs(20),
            "agent not ready: see {}",
            dir.join("agent.log").display()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let idle_rss = peak_rss_kib(agent_pid);

    eprintln!("==> flooding: {} distinct destinations", args.targets);
    let probe = Prober::start(&bin, &config);
    let t0 = Instant::now();
    for i in 0..args.targets {
        let a = SocketAddr::new(IpAddr::V6(target(i)), 443);
        let _ = TcpStream::connect_timeout(&a, Duration::from_millis(200));
    }
    let sent = t0.elapsed();
    let mut seen = 0;
    while seen < args.targets as usize {
        seen = pending_targets(&bin, &config)?;
        if t0.elapsed() > countdown {
            eprintln!("    only {seen} targets pending when the countdown ran out");
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let all_open = t0.elapsed();
    let (flood_worst, flood_p99, flood_n) = probe.finish();

    eprintln!("==> waiting for the deadline");
    let deadline_probe = Prober::start(&bin, &config);
    // The decision opened at the first connect: its deadline is t0 + countdown (± the
    // event's delivery, a few ms).
    let deadline = t0 + countdown;
    let mut in_set = 0;
    let all_blocked = loop {
        let now = Instant::now();
        if now > deadline {
            in_set = set_size(&scene.table);
            if in_set >= args.targets as usize {
                break Some(now - deadline);
            }
        }
        if now > deadline + Duration::from_secs(120) {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(500));
    let (dl_worst, dl_p99, dl_n) = deadline_probe.finish();
    thread::sleep(Duration::from_secs(2));
    let peak = peak_rss_kib(agent_pid);

    println!(
        "bench-flood: {} destinations from one process",
        args.targets
    );
    println!("  connects sent in                 {:.0} ms", ms(sent));
    println!(
        "  all targets in pending decisions {:.0} ms after the first connect ({seen} seen)",
        ms(all_open)
    );
    match all_blocked {
        Some(d) => println!("  deadline → all in the kernel set {:.0} ms", ms(d)),
        None => println!(
            "  deadline → all in the kernel set NOT within 120 s ({in_set} of {})",
            args.targets
        ),
    }
    println!(
        "  status latency during the flood  worst {:.0} ms, p99 {:.0} ms ({flood_n} calls, CLI process start included)",
        ms(flood_worst),
        ms(flood_p99)
    );
    println!(
        "  status latency at the deadline   worst {:.0} ms, p99 {:.0} ms ({dl_n} calls)",
        ms(dl_worst),
        ms(dl_p99)
    );
    println!(
        "  chat posts                       {}",
        posts.load(Ordering::Relaxed)
    );
    println!(
        "  agent RSS                        {:.1} MiB idle, {:.1} MiB peak",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    if all_blocked.is_none() {
        bail!("not every destination was blocked");
    }
    Ok(())
}

/// Write a file holding secrets (the config with the Slack signing secret) mode 0600, as the
/// agent requires.
fn write_private(path: &std::path::Path, text: String) -> std::io::Result<()> {
    use std::{
        io::Write as _,
        os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
