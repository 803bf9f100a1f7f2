//! Request limiting: what keeps the endpoint answering the admin while it is flooded.
//!
//! - Only refusals cost: every request is handled (bodies are bounded and a signature check
//!   is one HMAC), and a refused one is charged to its source and to an overall budget
//!   ([`governor`] GCRA limiters). Past its budget a source's refusals become quiet 429s, so a
//!   flood can neither fill the log nor make a correctly signed answer wait or fail.
//! - The source is the connection's address, or behind a proxy listed in
//!   `override.trusted_proxies` the last `X-Forwarded-For` address that is not a proxy.
//! - Connections are capped ([`Limits::max_connections`]; more wait in the listen backlog),
//!   must send their headers within [`Limits::header_timeout`] and their body within
//!   [`Limits::body_timeout`] (5 s each), and live at most [`Limits::connection_timeout`]
//!   (one request each: no idle keep-alive; the rest of that time is the switch's to answer),
//!   so slow clients free their slot quickly.
//! - One address holds at most [`Limits::per_address`] of those connections at once (an IPv6
//!   /64 counts as one address: it is what one host gets); the next ones from it are closed at
//!   once. So slow clients on one address cannot queue the admin's click from another. A
//!   trusted proxy carries everyone's requests, its own clients' included, so it gets the
//!   larger [`Limits::per_proxy`]: enough for busy traffic, and still leaving the other slots
//!   to direct clients. Behind a proxy, bounding slow clients is the proxy's job (nginx, for
//!   one, buffers a request before it forwards it).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
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

use super::{EndpointState, HttpRefusal};

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
    /// Connections one address (an IPv6 /64) may hold at once.
    pub per_address: usize,
    /// Connections a trusted proxy may hold at once.
    pub per_proxy: usize,
    /// Time a connection has to send its request headers.
    pub header_timeout: Duration,
    /// Time a request has to send its body, once its headers are in.
    pub body_timeout: Duration,
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
            per_address: 8,
            per_proxy: 128,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

/// Largest body read by [`body_in_time`]; each route's own, smaller limit applies after.
pub(super) const MAX_BODY: usize = 64 * 1024;

/// Whether `ip` is one of the trusted proxies.
fn is_proxy(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|net| net.contains(&ip))
}

/// Connections open per address, each within its cap.
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
    per_address: usize,
    per_proxy: usize,
    trusted_proxies: Vec<IpNet>,
}

/// One open connection counted on its address; uncounted when dropped.
struct AddressSlot {
    counts: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    fn new(limits: &Limits, trusted_proxies: Vec<IpNet>) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            open: Mutex::default(),
            per_address: limits.per_address.max(1),
            per_proxy: limits.per_proxy.max(1),
            trusted_proxies,
        })
    }

    /// What connections are counted on: the address, or for IPv6 its /64.
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        }
    }

    /// Count a connection from `peer`; `None` when its address already holds its cap.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<AddressSlot> {
        let cap = if is_proxy(&self.trusted_proxies, peer) {
            self.per_proxy
        } else {
            self.per_address
        };
        let key = Self::key(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Read the whole request body within [`Limits::body_timeout`] (and [`MAX_BODY`]) before the
/// handler runs, so a client trickling its body frees its connection in seconds.
pub(super) async fn body_in_time(
    State(shared): State<Arc<EndpointState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(shared.body_timeout, axum::body::to_bytes(body, MAX_BODY));
    match read.await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => {
            HttpRefusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response()
        }
        Err(_) => HttpRefusal::new(StatusCode::REQUEST_TIMEOUT, "body too slow").into_response(),
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
        is_proxy(&self.trusted_proxies, ip)
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
/// A connection past its address's cap is closed at once.
pub(super) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    trusted_proxies: Vec<IpNet>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = PerAddress::new(&limits, trusted_proxies);
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(counted) = per_address.admit(peer.ip()) else {
                    tracing::debug!(%peer, "override connection closed: too many from its address");
                    continue;
                };
                let slots = (slot, counted);
                tokio::spawn(serve_connection(stream, peer, app.clone(), limits, slots));
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
    _slots: (OwnedSemaphorePermit, AddressSlot),
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
    fn connections_are_capped_per_address_and_higher_for_proxies() {
        let limits = Limits {
            per_address: 2,
            per_proxy: 3,
            ..Limits::default()
        };
        let counts = PerAddress::new(&limits, vec!["10.0.0.0/8".parse().unwrap()]);
        let a = ip("198.51.100.1");
        let first: Vec<_> = (0..2)
            .map(|_| counts.admit(a).expect("within cap"))
            .collect();
        assert!(counts.admit(a).is_none(), "third from one address");
        assert!(
            counts.admit(ip("198.51.100.2")).is_some(),
            "another address"
        );
        assert!(
            counts.admit(ip("::ffff:198.51.100.1")).is_none(),
            "the v4-mapped form is the same address"
        );
        drop(first);
        assert!(
            counts.admit(a).is_some(),
            "closed connections free their count"
        );
        // One IPv6 /64 is one host.
        let _v6: Vec<_> = ["2001:db8::1", "2001:db8::2"]
            .iter()
            .map(|x| counts.admit(ip(x)).unwrap())
            .collect();
        assert!(counts.admit(ip("2001:db8::ffff:3")).is_none());
        assert!(counts.admit(ip("2001:db8:0:1::1")).is_some(), "another /64");
        let proxy = ip("10.1.2.3");
        let _p: Vec<_> = (0..3).map(|_| counts.admit(proxy).unwrap()).collect();
        assert!(counts.admit(proxy).is_none(), "a proxy's cap is its own");
        assert!(counts.open.lock().unwrap().len() <= 6);
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
