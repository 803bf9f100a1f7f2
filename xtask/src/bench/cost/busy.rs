//! bench-cost's busy server: Debian's nginx, started by the bench on a config of its own in a
//! temp dir (master and one worker per CPU, listening on loopback, serving a small static
//! file), driven by `wrk` at its maximum rate without and with the agent in every round, in
//! alternating order. What the agent costs a busy server: the requests per second it takes
//! away, and its own CPU (BPF programs + threads) as a share of the machine's.
//!
//! The requests lost are measured as the agent runs in production: `kernel.bpf_stats_enabled`
//! off. Counting each program's run time costs two clock reads and a counter update per run,
//! for every program on every packet and every sample: a busy server pays it on every request.
//! The agent's CPU share needs those counts, so it comes from a second "with" run of the same
//! length with them on (whose rate is printed too: what the counting itself takes).

use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use super::*;

const NGINX: &str = "/usr/sbin/nginx";
/// wrk's threads and connections: two clients' worth of keep-alive traffic on a small machine.
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 32;
/// The static file served: the size of nginx's own welcome page.
const PAGE_BYTES: usize = 615;
/// wrk's first run, not counted: nginx's workers and the page come into memory.
const WARM_UP_SECS: u64 = 2;
/// How long nginx may take to answer after it starts, and to stop.
const NGINX_TIMEOUT: Duration = Duration::from_secs(10);

/// One round of the busy server.
#[derive(Clone, Debug)]
pub(super) struct BusyRound {
    pub(super) without_rps: f64,
    /// With the agent, BPF run-time statistics off (as in production).
    pub(super) with_rps: f64,
    /// With the agent and the statistics on: the run [`Self::agent`] was measured over.
    pub(super) with_stats_rps: f64,
    /// The agent's CPU over the "with" run with statistics on.
    pub(super) agent: Charge,
    /// CPUs of the machine, whose time the agent's share is of.
    pub(super) cpus: u64,
    /// Chat posts the agent made meanwhile.
    pub(super) chat_posts: u64,
    /// CPU other processes (or the hypervisor) took during each half, in cores: the
    /// busy server's rate is only as good as the machine was quiet.
    pub(super) others: [f64; 2],
}

impl BusyRound {
    /// Requests per second the agent took away, in % of those without it (negative when
    /// the "with" half happened to be faster).
    pub(super) fn percent_lost(&self) -> f64 {
        percent_lost(self.without_rps, self.with_rps)
    }

    /// The agent's CPU time in % of the machine's (all CPUs) over the "with" half.
    pub(super) fn agent_percent(&self) -> f64 {
        let machine = self.agent.elapsed.as_nanos() as f64 * self.cpus as f64;
        if machine <= 0.0 {
            return 0.0;
        }
        self.agent.total_ns() as f64 / machine * 100.0
    }
}

pub(super) fn percent_lost(without: f64, with: f64) -> f64 {
    if without <= 0.0 {
        return 0.0;
    }
    (without - with) / without * 100.0
}

/// wrk against `nginx` without the agent and with it (started fresh, everything on), "with"
/// first on even rounds.
pub(super) fn measure_busy(
    bench: &Bench,
    services: &Services,
    nginx: &Nginx,
    secs: u64,
    r: u32,
    label: &str,
) -> anyhow::Result<BusyRound> {
    let with_first = r.is_multiple_of(2);
    let (mut without_rps, mut with) = (None, None);
    let mut others = [0.0; 2];
    for half_is_with in [with_first, !with_first] {
        if half_is_with {
            let mut agent = Agent::start(bench, "busy")?;
            agent.wait_ready()?;
            check_everything_on(&mut agent, services)?;
            thread::sleep(Duration::from_secs(2));
            let posts = services.chat.posts();
            let pid = agent.pid();
            let (rps, busy) = {
                let _off = BpfStats::set("0")?;
                nginx.wrk_among_others(secs, Some(pid), bench.hz)?
            };
            let mut stats_rps = 0.0;
            let charged = charge(pid, || {
                (stats_rps, _) = nginx.wrk_among_others(secs, Some(pid), bench.hz)?;
                Ok(())
            })?;
            let posts = services.chat.posts() - posts;
            agent.stop()?;
            eprintln!(
                "{label}: busy server with agent {rps:.0} requests/s (others {busy:.2} cores); \
                 with BPF statistics on {stats_rps:.0} requests/s, agent {}",
                describe(&charged, None)
            );
            with = Some((rps, stats_rps, charged, posts));
            others[1] = busy;
        } else {
            let (rps, busy) = nginx.wrk_among_others(secs, None, bench.hz)?;
            eprintln!(
                "{label}: busy server without agent {rps:.0} requests/s (others {busy:.2} cores)"
            );
            without_rps = Some(rps);
            others[0] = busy;
        }
    }
    let (with_rps, with_stats_rps, agent, chat_posts) = with.expect("ran the with half");
    Ok(BusyRound {
        without_rps: without_rps.expect("ran the without half"),
        with_rps,
        with_stats_rps,
        agent,
        cpus: thread::available_parallelism().map_or(1, |n| n.get() as u64),
        chat_posts,
        others,
    })
}

/// nginx run by the bench: its master (this process's child) and workers in a process group
/// of their own, stopped (the group killed) when dropped.
pub(super) struct Nginx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Nginx {
    /// Start nginx on a free loopback port and wait until it serves the page.
    pub(super) fn start() -> anyhow::Result<Self> {
        ensure!(
            Path::new(NGINX).is_file(),
            "the busy-server phase needs Debian's nginx at {NGINX} (`scripts/setup.sh --bench` \
             installs it); or pass --busy-secs 0 to skip the phase"
        );
        let dir = tempfile::Builder::new()
            .prefix("sentinel-bench-nginx")
            .tempdir()
            .context("creating nginx's temp dir")?;
        // The workers run as nobody: they must reach the page.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let www = dir.path().join("www");
        fs::create_dir(&www)?;
        fs::write(www.join("index.html"), page())?;
        let addr = free_loopback()?;
        let conf = dir.path().join("nginx.conf");
        fs::write(&conf, nginx_config(dir.path(), addr))?;
        let mut command = Command::new(NGINX);
        // Should the bench die, the master stops (and stops its workers).
        die_with_parent(&mut command, Signal::SIGTERM);
        let child = command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("stderr.log"))?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {NGINX}"))?;
        let mut nginx = Self {
            child: Some(child),
            dir,
            addr,
        };
        nginx.wait_serving()?;
        eprintln!("busy server: nginx on {addr}; warming it up");
        wrk(&nginx, WARM_UP_SECS)?;
        Ok(nginx)
    }

    /// [`wrk`], and the CPU everything but this process, its children, nginx and the agent
    /// (`agent`) used meanwhile, in cores.
    fn wrk_among_others(
        &self,
        secs: u64,
        agent: Option<u32>,
        hz: u64,
    ) -> anyhow::Result<(f64, f64)> {
        let group = self.child.as_ref().map_or(0, Child::id);
        let snapshot = || {
            let mut at = CpuSnapshot::take(agent)?;
            at.ours += group_ticks(group);
            Some(at)
        };
        let before = snapshot();
        let rps = wrk(self, secs)?;
        let others = match (before, snapshot()) {
            (Some(before), Some(after)) => others_cores(&before, &after, hz),
            _ => 0.0,
        };
        Ok((rps, others))
    }

    fn url(&self) -> String {
        format!("http://{}/index.html", self.addr)
    }

    fn wait_serving(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("nginx exited ({status}){}", self.logs());
            }
            match http_get(self.addr, "/index.html") {
                Ok((200, body)) if body.len() == PAGE_BYTES => return Ok(()),
                Ok((code, _)) => bail!("nginx answered {code}{}", self.logs()),
                Err(_) if start.elapsed() < NGINX_TIMEOUT => {}
                Err(e) => bail!("nginx does not answer: {e:#}{}", self.logs()),
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| {
                let text = fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                format!("\n--- nginx {f} ---\n{}", text.trim_end())
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < NGINX_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Workers left behind, or a master that did not stop.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// CPU ticks (utime + stime) of the live processes of process group `group`.
fn group_ticks(group: u32) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat_sum(stat, 5..=5) == Some(u64::from(group)))
        .filter_map(|stat| stat_cpu_ticks(&stat))
        .sum()
}

/// The static page: `PAGE_BYTES` of HTML.
fn page() -> String {
    let head = "<!DOCTYPE html>\n<html><head><title>bench</title></head><body>\n";
    let tail = "\n</body></html>\n";
    let fill = PAGE_BYTES - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(fill))
}

/// nginx's config: everything it writes stays in `dir`.
fn nginx_config(dir: &Path, addr: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes auto;\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{\n    worker_connections 1024;\n}}\n\
         http {{\n    access_log off;\n    default_type text/html;\n\
         \x20   client_body_temp_path {dir}/client_body;\n    proxy_temp_path {dir}/proxy;\n\
         \x20   fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n\
         \x20   scgi_temp_path {dir}/scgi;\n\
         \x20   server {{\n        listen {addr};\n        root {dir}/www;\n    }}\n}}\n"
    )
}

/// Requests per second wrk got from `nginx` over `secs` seconds at its maximum rate. Fails
/// if any answer was not a success.
fn wrk(nginx: &Nginx, secs: u64) -> anyhow::Result<f64> {
    let out_path = nginx.dir.path().join("wrk.out");
    let mut child = Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{secs}s"))
        .arg(nginx.url())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).context("creating wrk's output file")?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting wrk (`scripts/setup.sh --bench` installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(secs) + NGINX_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk did not finish within {secs} s + 10 s");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let output = fs::read_to_string(&out_path).context("reading wrk's output")?;
    ensure!(status.success(), "wrk failed ({status}): {output}");
    let failed = wrk_count(&output, "Non-2xx or 3xx responses:");
    ensure!(
        failed == 0,
        "nginx answered {failed} requests with an error: {output}"
    );
    requests_per_sec(&output).with_context(|| format!("no Requests/sec in wrk's output: {output}"))
}

/// `Requests/sec:  12345.67` of wrk's summary.
fn requests_per_sec(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The number after `label` in wrk's output (0 without the line).
fn wrk_count(output: &str, label: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 5s test @ http://127.0.0.1:40123/index.html\n\
        \x20 2 threads and 32 connections\n\
        \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
        \x20   Latency     1.23ms  456.00us  12.34ms   89.00%\n\
        \x20   Req/Sec    12.34k     1.23k   15.00k    70.00%\n\
        \x20 123456 requests in 5.00s, 98.76MB read\n\
        \x20 Non-2xx or 3xx responses: 7\n\
        Requests/sec:  24691.20\n\
        Transfer/sec:     19.75MB\n";

    #[test]
    fn reads_wrk_summary() {
        assert_eq!(requests_per_sec(WRK_OUTPUT), Some(24691.2));
        assert_eq!(wrk_count(WRK_OUTPUT, "Non-2xx or 3xx responses:"), 7);
        let clean = WRK_OUTPUT.replace("  Non-2xx or 3xx responses: 7\n", "");
        assert_eq!(wrk_count(&clean, "Non-2xx or 3xx responses:"), 0);
        assert_eq!(requests_per_sec("garbage"), None);
    }

    #[test]
    fn percent_lost_and_agent_share() {
        assert!((percent_lost(20_000.0, 19_800.0) - 1.0).abs() < 1e-9);
        assert!((percent_lost(20_000.0, 20_200.0) + 1.0).abs() < 1e-9);
        assert_eq!(percent_lost(0.0, 5.0), 0.0);
        let round = BusyRound {
            without_rps: 10_000.0,
            with_rps: 9_950.0,
            with_stats_rps: 9_900.0,
            agent: Charge {
                user: 30_000_000,
                elapsed: Duration::from_secs(1),
                ..Charge::default()
            },
            cpus: 2,
            chat_posts: 0,
            others: [0.0; 2],
        };
        assert!((round.percent_lost() - 0.5).abs() < 1e-9);
        assert!((round.agent_percent() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn page_and_config() {
        assert_eq!(page().len(), PAGE_BYTES);
        let conf = nginx_config(Path::new("/tmp/n"), "127.0.0.1:8080".parse().unwrap());
        for line in [
            "daemon off;",
            "master_process on;",
            "worker_processes auto;",
            "pid /tmp/n/nginx.pid;",
            "    access_log off;",
            "        listen 127.0.0.1:8080;",
            "        root /tmp/n/www;",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line:?} in\n{conf}");
        }
    }
}
