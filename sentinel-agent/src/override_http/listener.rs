//! Where the override endpoint's socket comes from, and why it never keeps the agent from
//! running. Its port (`override.listen`, 127.0.0.1:8787 by default) is unprivileged: any local
//! user can take it first — an `@reboot` cron job — to keep an agent that fails on a busy port
//! from ever starting, and to receive the reverse proxy's signed requests. So:
//! - under systemd the socket is `sentinel.socket`'s (socket activation: systemd binds it at
//!   boot, before any user's job runs, and hands it over as `LISTEN_FDS`);
//! - run by hand, the agent binds it as one of its first steps;
//! - when neither works the agent runs without it, says so in the log and in `status`
//!   (`override`), and tries again every [`RETRY`]. The switch, chat and the CLI never wait.

use std::{
    net::TcpListener,
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

/// How often a failed bind is tried again.
pub const RETRY: Duration = Duration::from_secs(10);

/// The endpoint's state, for `status`.
#[derive(Debug, Default)]
pub struct Health {
    enabled: AtomicBool,
    listening: AtomicBool,
    from_systemd: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// `status.override` in `status --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideStatus {
    /// Whether the endpoint is configured (`override.public_url` set).
    pub enabled: bool,
    /// Whether it accepts connections now.
    pub listening: bool,
    /// `systemd` (socket activation) or `agent` (bound by the agent); null while not listening.
    pub socket: Option<String>,
    /// Why it is not listening, while it is not.
    pub last_error: Option<String>,
}

impl Health {
    pub fn status(&self) -> OverrideStatus {
        let listening = self.listening.load(Ordering::Relaxed);
        let socket = listening.then(|| {
            if self.from_systemd.load(Ordering::Relaxed) {
                "systemd".to_string()
            } else {
                "agent".to_string()
            }
        });
        OverrideStatus {
            enabled: self.enabled.load(Ordering::Relaxed),
            listening,
            socket,
            last_error: self.last_error.lock().expect("override health").clone(),
        }
    }

    fn failed(&self, why: String) {
        self.listening.store(false, Ordering::Relaxed);
        *self.last_error.lock().expect("override health") = Some(why);
    }

    fn listens(&self, from_systemd: bool) {
        self.from_systemd.store(from_systemd, Ordering::Relaxed);
        self.listening.store(true, Ordering::Relaxed);
        *self.last_error.lock().expect("override health") = None;
    }
}

/// Why a socket handed over by systemd is not used.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("reading LISTEN_FDS: {0}")]
    Env(std::io::Error),
    #[error("the socket systemd passed (fd {fd}) is not a listening TCP socket: {why}")]
    NotTcpListener { fd: i32, why: String },
}

/// The listening socket systemd passed (`sentinel.socket`), if it passed one. Call once, early:
/// it consumes `LISTEN_PID`/`LISTEN_FDS`.
pub fn from_systemd() -> Result<Option<TcpListener>, HandoverError> {
    let Some(fd) = sd_notify::listen_fds().map_err(HandoverError::Env)?.next() else {
        return Ok(None);
    };
    // SAFETY: systemd handed this descriptor to this process (LISTEN_PID is ours) and nothing
    // else owns it; it is closed on drop if it turns out unusable.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let not = |why: String| HandoverError::NotTcpListener { fd, why };
    let listening = nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| not(e.to_string()))?;
    if !listening {
        return Err(not("it does not listen".into()));
    }
    let listener = TcpListener::from(owned);
    let addr = listener.local_addr().map_err(|e| not(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| not(e.to_string()))?;
    info!(%addr, "override endpoint: using the socket systemd bound (sentinel.socket)");
    Ok(Some(listener))
}

/// Bind `addr` now, ready for tokio.
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The socket the endpoint serves on, as it stood at start-up.
#[derive(Debug)]
pub enum Early {
    /// systemd's socket.
    Systemd(TcpListener),
    /// Bound by the agent.
    Bound(TcpListener),
    /// Not there yet: why.
    Failed(String),
}

/// The endpoint's socket at start-up: systemd's when it passed one, else `addr` bound now.
pub fn early(addr: &str) -> Early {
    match from_systemd() {
        Ok(Some(l)) => {
            if let Ok(bound) = l.local_addr()
                && addr.parse().ok() != Some(bound)
            {
                warn!(
                    %bound, addr,
                    "sentinel.socket listens elsewhere than override.listen: serving on the \
                     socket's address (`cargo xtask install` rewrites the socket unit)"
                );
            }
            return Early::Systemd(l);
        }
        Ok(None) => {}
        Err(e) => warn!("{e}; binding {addr} instead"),
    }
    match bind(addr) {
        Ok(l) => Early::Bound(l),
        Err(e) => Early::Failed(bind_error(addr, &e)),
    }
}

fn bind_error(addr: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "override.listen {addr} is taken by another process (`ss -ltnp 'sport = :{}'` \
             names it); the agent runs without the override endpoint and retries every {}s",
            addr.rsplit(':').next().unwrap_or(addr),
            RETRY.as_secs()
        )
    } else {
        format!(
            "binding override.listen {addr}: {e}; the agent runs without the override \
             endpoint and retries every {}s",
            RETRY.as_secs()
        )
    }
}

/// The listener to serve on: `early`'s, or — after it failed — `addr` bound as soon as it
/// can be, trying every [`RETRY`]. `health` says which, and why not meanwhile.
pub async fn listener(early: Early, addr: &str, health: &Health) -> tokio::net::TcpListener {
    health.enabled.store(true, Ordering::Relaxed);
    let (std_listener, from_systemd) = match early {
        Early::Systemd(l) => (l, true),
        Early::Bound(l) => (l, false),
        Early::Failed(mut why) => loop {
            error!("{why}");
            health.failed(why);
            tokio::time::sleep(RETRY).await;
            match bind(addr) {
                Ok(l) => {
                    info!(addr, "override endpoint: bound at last");
                    break (l, false);
                }
                Err(e) => why = bind_error(addr, &e),
            }
        },
    };
    match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => {
            health.listens(from_systemd);
            l
        }
        Err(e) => {
            // Registering a valid listening socket with the runtime does not fail in practice;
            // if it ever does, fall back to binding afresh.
            let why = format!("registering the override socket: {e}");
            Box::pin(listener(Early::Failed(why), addr, health)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_taken_port_is_retried_and_said_in_status_until_it_is_free() {
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = squatter.local_addr().unwrap().to_string();
        let health = std::sync::Arc::new(Health::default());
        let early = early(&addr);
        assert!(
            matches!(early, Early::Failed(ref why) if why.contains("taken")),
            "{early:?}"
        );
        let task = {
            let (health, addr) = (health.clone(), addr.clone());
            tokio::spawn(async move { listener(early, &addr, &health).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let st = health.status();
        assert!(st.enabled && !st.listening, "{st:?}");
        assert!(st.last_error.unwrap().contains("taken by another process"));
        // Still taken after one retry.
        tokio::time::sleep(RETRY).await;
        assert!(!health.status().listening);
        drop(squatter);
        let l = tokio::time::timeout(RETRY * 2, task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.local_addr().unwrap().to_string(), addr);
        let st = health.status();
        assert_eq!(
            (st.listening, st.socket.as_deref(), st.last_error),
            (true, Some("agent"), None)
        );
    }
}
