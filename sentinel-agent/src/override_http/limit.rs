//! Request limiting: what keeps the endpoint answering the admin while it is flooded.
//!
//! - Only refusals cost: every request is handled (bodies are bounded and a signature check
//!   is one HMAC), and a refused one is charged to its source and to an overall budget
//!   ([`governor`] GCRA limiters). Past its budget a source's refusals become quiet 429s, so a
//!   flood can neither fill the log nor make a correctly signed answer wait or fail.
//! - The source is the connection's address, or behind a proxy listed in
//!   `override.trusted_proxies` the last `X-Forwarded-For` address that is not a proxy.
//! - Connections are capped ([`Limits::max_connections`]; more wait in the listen backlog),
//!   must send their headers within [`Limits::header_timeout`], and live at most
//!   [`Limits::connection_timeout`] (one request each: no idle keep-alive), so slow clients
//!   free their slot quickly.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{Router, extract::ConnectInfo, http::HeaderMap};
use governor::{
    Quota, RateLimiter,
    clock::DefaultClock,
    state::{InMemoryState, NotKeyed, keyed::DefaultKeyedStateStore},
};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tower_service::Service as _;

/// Sources whose refusal budget is tracked before idle ones are forgotten.
const MAX_SOURCES: usize = 4096;
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The endpoint's budgets and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Refusals a source may get in a burst, and then per second.
    pub source_burst: u32,
    pub source_per_sec: u32,
    /// Refusals all sources together may get in a burst, and then per second.
    pub overall_burst: u32,
    pub overall_per_sec: u32,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a connection has to send its request headers.
    pub header_timeout: Duration,
    /// Longest a connection lives (request, body, answer from the switch, response).
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            source_burst: 30,
            source_per_sec: 1,
            overall_burst: 120,
            overall_per_sec: 10,
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

fn quota(burst: u32, per_sec: u32) -> Quota {
    let nonzero = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    Quota::per_second(nonzero(per_sec)).allow_burst(nonzero(burst))
}

/// HttpRefusal budgets per source and overall.
pub struct RefusalLimiter {
    per_source: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>,
    overall: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    trusted_proxies: Vec<IpNet>,
}

impl RefusalLimiter {
    pub fn new(limits: &Limits, trusted_proxies: Vec<IpNet>) -> RefusalLimiter {
        RefusalLimiter {
            per_source: RateLimiter::keyed(quota(limits.source_burst, limits.source_per_sec)),
            overall: RateLimiter::direct(quota(limits.overall_burst, limits.overall_per_sec)),
            trusted_proxies,
        }
    }

    /// Who sent a request that reached us from `peer`: `peer` itself, unless it is a trusted
    /// proxy; then the last `X-Forwarded-For` address that is not one (a client can prepend
    /// anything to the header, only what the proxies appended is believed).
    pub fn source(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_proxy(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if self.is_proxy(ip) => continue,
                Ok(ip) => return ip,
                // Garbage where a proxy should have written an address: count it on the proxy.
                Err(_) => return peer,
            }
        }
        peer
    }

    fn is_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Charge one refusal to `source`; false when its budget or the overall one is spent.
    pub fn charge(&self, source: IpAddr) -> bool {
        if self.per_source.len() >= MAX_SOURCES {
            self.per_source.retain_recent();
            if self.per_source.len() >= MAX_SOURCES {
                return false;
            }
        }
        self.per_source.check_key(&source).is_ok() && self.overall.check().is_ok()
    }
}

/// Accept connections on `listener` and serve `app` on each, within `limits`, until dropped.
pub(super) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: Limits,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(stream, peer, app.clone(), limits, slot));
            }
            Err(e) => {
                tracing::debug!("override endpoint: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One HTTP/1.1 request on one connection, within the header and connection timeouts; the
/// connection's slot is freed when this returns.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { Ok::<_, Infallible>(app.call(request).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, "override connection: {e}"),
        Err(_) => tracing::debug!(%peer, "override connection closed: too slow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn refusals_are_limited_per_source_and_overall() {
        let limits = Limits {
            source_burst: 2,
            source_per_sec: 1,
            overall_burst: 3,
            overall_per_sec: 1,
            ..Limits::default()
        };
        let limiter = RefusalLimiter::new(&limits, Vec::new());
        let (a, b, c) = (ip("198.51.100.1"), ip("198.51.100.2"), ip("198.51.100.3"));
        assert!(limiter.charge(a) && limiter.charge(a));
        assert!(!limiter.charge(a), "source budget spent");
        assert!(limiter.charge(b), "another source has its own budget");
        assert!(!limiter.charge(c), "overall budget spent");
    }

    #[test]
    fn the_source_behind_a_trusted_proxy_is_the_last_forwarded_address() {
        let proxies = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let limiter = RefusalLimiter::new(&Limits::default(), proxies);
        let mut headers = HeaderMap::new();
        let proxy = ip("127.0.0.1");
        assert_eq!(
            limiter.source(proxy, &headers),
            proxy,
            "no header: the proxy"
        );
        headers.insert(
            "x-forwarded-for",
            "198.51.100.66, 198.51.100.7, 10.1.2.3".parse().unwrap(),
        );
        assert_eq!(
            limiter.source(proxy, &headers),
            ip("198.51.100.7"),
            "what the client prepended is not believed, proxies are skipped"
        );
        let stranger = ip("198.51.100.9");
        assert_eq!(
            limiter.source(stranger, &headers),
            stranger,
            "a header from a stranger is ignored"
        );
        headers.insert("x-forwarded-for", "not-an-address".parse().unwrap());
        assert_eq!(limiter.source(proxy, &headers), proxy);
        let mapped = ip("::ffff:127.0.0.1");
        headers.insert("x-forwarded-for", "2001:db8::5".parse().unwrap());
        assert_eq!(limiter.source(mapped, &headers), ip("2001:db8::5"));
    }
}
