//! What bench-cost's agent talks to besides the kernel, so that it is measured as a host
//! configured for production runs: a real PostgreSQL fleet store (the test harness's
//! `tests/common/pg.rs`, set up as an operator does: `fleet init`, `fleet add-host`), a Slack
//! webhook served by a tiny HTTP server in a thread (counting the posts: a storm of
//! `/bin/true` and loopback connects must raise none), the override endpoint Slack's buttons
//! need, and the metrics endpoint. [`check_everything_on`] proves from `status --json` and
//! `/metrics` that the agent runs with all of it.

use std::{
    io::Write as _,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::atomic::AtomicU64,
};

use super::*;
use crate::harness::pg;

/// The fleet role (and `agent.id`) the measured agent ships under.
const FLEET_HOST: &str = "bench-cost";
/// The Slack app's signing secret in the bench config (no click ever comes).
const SLACK_SECRET: &str = "bench-cost-slack-signing-secret";
/// Sensors the agent must have attached.
const SENSORS: [&str; 4] = ["exec", "connect", "cpu", "dns"];

/// The servers of one bench-cost run, stopped when dropped.
pub(super) struct Services {
    pub(super) chat: ChatServer,
    pub(super) metrics: SocketAddr,
    /// None with `--no-fleet`.
    fleet: Option<Fleet>,
}

/// The PostgreSQL server and the operator who set it up (whose temp dir holds the agent's
/// password file). The operator goes first when dropped, then the server stops.
struct Fleet {
    _operator: pg::Operator,
    _server: pg::Postgres,
}

impl Services {
    /// Start everything in `dir` (the bench's work dir) and say how the agent is configured
    /// for it.
    pub(super) fn start(
        dir: &Path,
        binary: &Path,
        with_fleet: bool,
    ) -> anyhow::Result<(Extras, Self)> {
        let (fleet, fleet_keys) = if with_fleet {
            let (fleet, keys) = start_fleet(binary)?;
            (Some(fleet), Some(keys))
        } else {
            eprintln!("--no-fleet: the agent runs without a fleet store");
            (None, None)
        };
        let chat = ChatServer::start()?;
        let key_file = dir.join("override.key");
        write_private(&key_file, &format!("{}\n", random_hex(32)?))?;
        let metrics = free_loopback()?;
        let extras = Extras {
            id: Some(FLEET_HOST.into()),
            fleet: fleet_keys,
            chat: Some(ChatKeys {
                webhook_url: format!("http://{}/services/bench", chat.addr),
                signing_secret: SLACK_SECRET.into(),
                override_listen: free_loopback()?,
                override_key_file: key_file,
            }),
            metrics: Some(metrics),
        };
        Ok((
            extras,
            Self {
                chat,
                metrics,
                fleet,
            },
        ))
    }

    fn has_fleet(&self) -> bool {
        self.fleet.is_some()
    }
}

/// A PostgreSQL server in a temp dir, set up by an operator with `sentinel fleet init` and
/// the agent's role added with `sentinel fleet add-host`.
fn start_fleet(binary: &Path) -> anyhow::Result<(Fleet, FleetKeys)> {
    let installed = Path::new("/usr/lib/postgresql").is_dir()
        && nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .is_some();
    ensure!(
        installed,
        "the fleet store needs Debian's postgresql package (scripts/setup.sh installs it) and \
         its postgres user; or pass --no-fleet to measure without a fleet store"
    );
    eprintln!("fleet: starting PostgreSQL in a temp dir");
    // The harness panics on failure (it is test code): its message is kept and said here.
    let started = catch_unwind(AssertUnwindSafe(|| {
        let server = pg::Postgres::start();
        let operator = server.operator(binary);
        operator.init();
        let (password_file, _) = operator.add_host(FLEET_HOST);
        let keys = FleetKeys {
            postgres_url: server.url_as(FLEET_HOST),
            password_file,
            operator_key: operator.public_key.clone(),
        };
        (
            Fleet {
                _operator: operator,
                _server: server,
            },
            keys,
        )
    }));
    started.map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        anyhow::anyhow!(
            "could not start the fleet store (PostgreSQL in a temp dir, `sentinel fleet \
             init`, `add-host`): {why}; pass --no-fleet to measure without it"
        )
    })
}

/// `n` random bytes from the kernel, in hex.
fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Wait until `status --json` shows every sensor attached, the fleet store connected (when
/// configured), the Slack channel started and the override endpoint listening, and
/// `/metrics` answers; fail saying what is missing.
pub(super) fn check_everything_on(agent: &mut Agent, services: &Services) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        agent.check_alive()?;
        let json = agent.status_json()?;
        let status: serde_json::Value =
            serde_json::from_str(&json).context("`status --json` is not JSON")?;
        let mut missing = missing_parts(&status, services.has_fleet());
        if missing.is_empty() {
            match http_get(services.metrics, "/metrics") {
                Ok((200, body)) if body.contains("sentinel_") => return Ok(()),
                Ok((code, _)) => missing.push(format!("/metrics answered {code}")),
                Err(e) => missing.push(format!("/metrics: {e:#}")),
            }
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "the agent does not run with everything on after {} s: {}\nstatus: {json}{}",
                READY_TIMEOUT.as_secs(),
                missing.join("; "),
                agent.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// What `status --json` says is not on yet.
fn missing_parts(status: &serde_json::Value, fleet: bool) -> Vec<String> {
    let mut missing = Vec::new();
    let sensors = status["sensors"].as_object();
    for name in SENSORS {
        if sensors.and_then(|s| s.get(name)).is_none() {
            missing.push(format!("no {name} sensor"));
        }
    }
    for (name, sensor) in sensors.into_iter().flatten() {
        if sensor["attached"] != true {
            missing.push(format!("the {name} sensor is not attached"));
        }
    }
    if fleet && status["fleet"]["connected"] != true {
        missing.push(format!(
            "the fleet store is not connected ({})",
            status["fleet"]["last_error"]
        ));
    }
    if status["notify"].get("slack").is_none() {
        missing.push("no slack channel".into());
    }
    if status["override"]["listening"] != true {
        missing.push(format!(
            "the override endpoint is not listening ({})",
            status["override"]["last_error"]
        ));
    }
    missing
}

/// The status code and body of `GET path` (HTTP/1.0) from `addr`.
pub(super) fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let code = status_code(&text).with_context(|| format!("not an HTTP answer from {addr}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_owned()))
}

/// The code of an HTTP status line (`HTTP/1.1 200 OK`).
fn status_code(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut words = line.split_whitespace();
    words.next()?.strip_prefix("HTTP/")?;
    words.next()?.parse().ok()
}

/// A Slack incoming webhook on loopback: answers every request `200 ok` and counts POSTs.
pub(super) struct ChatServer {
    addr: SocketAddr,
    posts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ChatServer {
    pub(super) fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the chat server")?;
        let addr = listener.local_addr()?;
        let posts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopped) = (Arc::clone(&posts), Arc::clone(&stop));
        let thread = thread::Builder::new()
            .name("bench-chat".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        let _ = answer(stream, &counted);
                    }
                }
            })
            .context("starting the chat server")?;
        Ok(Self {
            addr,
            posts,
            stop,
            thread: Some(thread),
        })
    }

    /// POSTs received so far.
    pub(super) fn posts(&self) -> u64 {
        self.posts.load(Ordering::Relaxed)
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Read one request (head and `Content-Length` body), count it in `posts` if it is a POST
/// (before answering: whoever sees the answer sees the count), answer `200 ok`.
fn answer(mut stream: TcpStream, posts: &AtomicU64) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf)?;
        ensure!(
            n > 0 && request.len() < 1 << 20,
            "a cut or oversized request"
        );
        request.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let mut body = request.len() - head_end;
    while body < content_length(&head).min(1 << 20) {
        let n = stream.read(&mut buf)?;
        ensure!(n > 0, "a cut request body");
        body += n;
    }
    if head.starts_with("POST ") {
        posts.fetch_add(1, Ordering::Relaxed);
    }
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
          Connection: close\r\n\r\nok",
    )?;
    Ok(())
}

/// The `Content-Length` of a request head (0 without one).
fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_length_and_status_codes() {
        assert_eq!(
            content_length("POST / HTTP/1.1\r\ncontent-length:  12\r\n\r\n"),
            12
        );
        assert_eq!(content_length("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n\r\nok"), Some(200));
        assert_eq!(status_code("HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn the_chat_server_counts_posts() {
        let chat = ChatServer::start().unwrap();
        let (code, body) = http_get(chat.addr, "/").unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"));
        assert_eq!(chat.posts(), 0, "a GET is not a post");
        let mut stream = TcpStream::connect(chat.addr).unwrap();
        let payload = r#"{"text":"alert"}"#;
        write!(
            stream,
            "POST /services/bench HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert_eq!(status_code(&answer), Some(200), "{answer}");
        assert_eq!(chat.posts(), 1);
    }

    #[test]
    fn status_without_fleet_or_sensors_is_reported() {
        let status: serde_json::Value = serde_json::json!({
            "sensors": {"exec": {"attached": true}, "connect": {"attached": false},
                        "cpu": {"attached": true}},
            "fleet": {"connected": false, "last_error": "refused"},
            "notify": {},
            "override": {"listening": true}
        });
        assert_eq!(
            missing_parts(&status, true),
            vec![
                "no dns sensor".to_string(),
                "the connect sensor is not attached".into(),
                "the fleet store is not connected (\"refused\")".into(),
                "no slack channel".into(),
            ]
        );
        let on = serde_json::json!({
            "sensors": {"exec": {"attached": true}, "connect": {"attached": true},
                        "cpu": {"attached": true}, "dns": {"attached": true},
                        "persistence": {"attached": true}},
            "fleet": null, "notify": {"slack": {}}, "override": {"listening": true}
        });
        assert!(missing_parts(&on, false).is_empty());
    }
}
