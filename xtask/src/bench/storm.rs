//! The workloads the benchmark times: an exec storm (sequential fork+exec of /bin/true) and
//! a connect storm against a loopback listener tuned so that no SYN is dropped.

use super::*;

/// N sequential fork+exec+wait of /bin/true.
pub(super) fn exec_storm(n: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for _ in 0..n {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running /bin/true")?;
        ensure!(status.success(), "/bin/true failed: {status}");
    }
    Ok(start.elapsed())
}

/// N sequential TCP connects to the loopback listener, each closed at once.
/// A fresh listener each time: connections of earlier storms linger in TIME_WAIT for a
/// minute, and while those to the same address are younger than a second their local ports
/// cannot be reused, which turns the kernel's search for a free port into a slow scan.
pub(super) fn connect_storm(n: u64) -> anyhow::Result<Duration> {
    let listener = Listener::start()?;
    let addr = listener.addr;
    let start = Instant::now();
    for i in 0..n {
        let stream = TcpStream::connect(addr)
            .with_context(|| format!("connect {} of {n} to {addr}", i + 1))?;
        drop(stream);
    }
    Ok(start.elapsed())
}

/// Accept-queue length asked for the listener; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

unsafe extern "C" {
    /// listen(2), from the C library std already links (xtask has no libc crate).
    fn listen(fd: i32, backlog: i32) -> i32;
}

/// How long the listener waits for a client to close its end.
const LISTENER_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// A listener on 127.0.0.1 (never anything else) whose thread accepts every connection,
/// waits for the client to close it and closes its end, until the listener is dropped. Two
/// details keep SYNs from being dropped, each of which would cost a 1 s retransmit:
///
/// - std listens with a backlog of 128: a sequential storm fills that in about 1.5 ms
///   whenever the listener thread is not scheduled. Calling listen(2) again on the listening
///   socket raises the backlog (Linux allows that).
/// - Whichever side closes first keeps the connection in TIME_WAIT. On the listener's side
///   that keeps the client from reusing its port (the new SYN is answered as part of the old
///   connection). On the client's side the kernel reuses such ports cleanly
///   (net.ipv4.tcp_tw_reuse, on for loopback by default), so the listener closes last.
struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
        let addr = listener.local_addr()?;
        // SAFETY: listen(2) on a socket descriptor the listener owns; no memory is shared.
        if unsafe { listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(std::io::Error::last_os_error()).context("raising the listen backlog");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("bench-listener".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                for stream in listener.incoming().flatten() {
                    // Until end of file or the timeout: the bench's clients send nothing.
                    let _ = stream.set_read_timeout(Some(LISTENER_READ_TIMEOUT));
                    let _ = (&stream).read(&mut byte);
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                }
            })
            .context("starting the listener thread")?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    /// Raise the flag and wake the thread with one last connection; if that cannot connect,
    /// leave the thread blocked in accept rather than hang here.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if TcpStream::connect(self.addr).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}
