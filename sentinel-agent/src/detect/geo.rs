//! `geo`: an outbound connection to an address in a high-risk country (`geo.high_risk_countries`)
//! — a C2 beacon or exfiltration in a hostile jurisdiction. Critical, T1071.001. Trusted
//! addresses (loopback, `trust.ips`, live SSH peers) never raise it.
//!
//! One connection, one finding: a rootless container's connection leaves through its network
//! relay (`slirp4netns`), which connects to the same address and port from the host a few
//! milliseconds after the container's own `connect()` (the kernel reports the container's
//! first: the relay hears of it only when the SYN reaches it). The relay's connection is
//! folded into the container's — no second alert — when a process of the same container
//! (same id, not the relay) connected to the same address and port within [`FOLD_WINDOW`]
//! before and was judged here. A relay's connection with no such container connection
//! (its process was not tied to the container, or the agent missed it) raises its own alert,
//! naming the container through its relay.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::enrich::trust::TrustSet;

use super::{Anomaly, Culprit, Finding};

/// How long after a container's own connection its relay's connection to the same address
/// and port is folded into it.
const FOLD_WINDOW: Duration = Duration::from_secs(10);
/// Container connections remembered at most for folding.
const MAX_RECENT: usize = 4096;

pub struct Geo {
    high_risk: HashSet<String>,
    /// When a container (id) last connected to a high-risk (address, port) itself.
    recent: HashMap<(String, IpAddr, u16), Instant>,
}

impl Geo {
    pub fn new(high_risk_countries: &[String]) -> Self {
        Self {
            high_risk: high_risk_countries.iter().cloned().collect(),
            recent: HashMap::new(),
        }
    }

    /// Whether `culprit`'s connection to `daddr:dport` at `now` is its container's network
    /// relay carrying a connection the container itself made (judged already); remembers a
    /// container's own connections for that.
    fn folds(&mut self, culprit: &Culprit, daddr: IpAddr, dport: u16, now: Instant) -> bool {
        let Some(c) = &culprit.container else {
            return false;
        };
        let key = (c.id.clone(), daddr, dport);
        if c.network_relay.is_some() {
            return self
                .recent
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) <= FOLD_WINDOW);
        }
        if self.recent.len() >= MAX_RECENT {
            self.recent
                .retain(|_, at| now.duration_since(*at) <= FOLD_WINDOW);
            if self.recent.len() >= MAX_RECENT {
                self.recent.clear();
            }
        }
        self.recent.insert(key, now);
        false
    }

    /// Whether `country` is one of `geo.high_risk_countries`.
    pub fn is_high_risk(&self, country: Option<&str>) -> bool {
        country.is_some_and(|c| self.high_risk.contains(c))
    }

    /// `culprit` connected to `daddr:dport`, which GeoIP puts in `country`.
    pub fn on_connect(
        &mut self,
        culprit: &Culprit,
        daddr: IpAddr,
        dport: u16,
        country: Option<&str>,
        domain: Option<&str>,
        trust: &TrustSet,
    ) -> Option<Finding> {
        let country = country.filter(|c| self.is_high_risk(Some(c)))?;
        // Trust first: a trusted address cannot become a target (there is no ActionableAddr).
        let target = trust.check(daddr).ok()?;
        if self.folds(culprit, daddr, dport, Instant::now()) {
            return None;
        }
        Some(Finding {
            domain: None,
            anomaly: Anomaly::Geo,
            culprit: culprit.clone(),
            target: Some(target),
            country: Some(country.to_string()),
            detail: format!(
                "{} (pid {}) connected to {} port {dport} in high-risk country {country}",
                culprit.comm,
                culprit.pid,
                named(domain, target)
            ),
            subject: culprit.pid,
        })
    }
}

/// `name (address)` when the address was resolved from a name, else the address.
pub fn named(domain: Option<&str>, addr: impl std::fmt::Display) -> String {
    match domain {
        Some(name) => format!("{name} ({addr})"),
        None => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::detect::tests::culprit;

    fn geo() -> Geo {
        Geo::new(&["RU".to_string(), "KP".to_string()])
    }

    #[test]
    fn high_risk_country_raises() {
        let c = culprit(9, "curl", &[(1, "bash")]);
        let f = geo()
            .on_connect(
                &c,
                "198.51.100.9".parse().unwrap(),
                443,
                Some("RU"),
                None,
                &TrustSet::default(),
            )
            .unwrap();
        assert_eq!(f.anomaly, Anomaly::Geo);
        assert_eq!(
            f.target.unwrap().ip(),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(f.country.as_deref(), Some("RU"));
    }

    #[test]
    fn low_risk_unknown_and_trusted_raise_nothing() {
        let c = culprit(9, "curl", &[]);
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let open = TrustSet::default();
        assert!(
            geo()
                .on_connect(&c, ip, 443, Some("DE"), None, &open)
                .is_none()
        );
        assert!(geo().on_connect(&c, ip, 443, None, None, &open).is_none());
        let trusted = TrustSet::new(&["198.51.100.0/24".parse().unwrap()], &[]);
        assert!(
            geo()
                .on_connect(&c, ip, 443, Some("RU"), None, &trusted)
                .is_none()
        );
        assert!(
            geo()
                .on_connect(
                    &c,
                    "127.0.0.1".parse().unwrap(),
                    80,
                    Some("RU"),
                    None,
                    &open
                )
                .is_none()
        );
    }

    fn in_container(mut c: Culprit, id: &str, relay: Option<&str>) -> Culprit {
        c.container = Some(std::sync::Arc::new(crate::enrich::container::Container {
            id: id.repeat(32),
            runtime: "podman".into(),
            name: Some("web".into()),
            image: None,
            network_relay: relay.map(str::to_string),
        }));
        c
    }

    #[test]
    fn a_relays_connection_folds_into_its_containers_own() {
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        let own = in_container(culprit(9, "bash", &[(8, "conmon")]), "ab", None);
        let relay = in_container(
            culprit(7, "slirp4netns", &[(1, "init")]),
            "ab",
            Some("slirp4netns"),
        );
        let t0 = Instant::now();
        let mut g = geo();
        // A relay's connection with no connection of its container before it is not folded.
        assert!(!g.folds(&relay, ip, 443, t0));
        // The container's own connection is judged (and remembered), the relay's that
        // follows to the same address and port is folded into it.
        assert!(!g.folds(&own, ip, 443, t0));
        assert!(g.folds(&relay, ip, 443, t0 + Duration::from_millis(5)));
        assert!(g.folds(&relay, ip, 443, t0 + FOLD_WINDOW));
        // Not another port, another address, another container's relay, or much later.
        assert!(!g.folds(&relay, ip, 80, t0 + Duration::from_millis(5)));
        assert!(!g.folds(&relay, other, 443, t0 + Duration::from_millis(5)));
        let their_relay = in_container(culprit(6, "slirp4netns", &[]), "cd", Some("slirp4netns"));
        assert!(!g.folds(&their_relay, ip, 443, t0 + Duration::from_millis(5)));
        assert!(!g.folds(&relay, ip, 443, t0 + FOLD_WINDOW + Duration::from_millis(1)));
        // Host processes are never folded; a container's own connections never are.
        let host = culprit(5, "curl", &[]);
        assert!(!g.folds(&host, ip, 443, t0));
        assert!(!g.folds(&own, ip, 443, t0 + Duration::from_millis(5)));
        // Through on_connect: the container's alert, then none for its relay.
        let mut g = geo();
        let open = TrustSet::default();
        assert!(
            g.on_connect(&own, ip, 443, Some("RU"), None, &open)
                .is_some()
        );
        assert!(
            g.on_connect(&relay, ip, 443, Some("RU"), None, &open)
                .is_none()
        );
        // A relay alone raises, naming the container through its relay.
        let f = geo()
            .on_connect(&relay, ip, 443, Some("RU"), None, &open)
            .unwrap();
        let c = f.culprit.container.unwrap();
        assert_eq!(c.network_relay.as_deref(), Some("slirp4netns"));
    }

    #[test]
    fn the_fold_memory_stays_bounded() {
        let mut g = geo();
        let t0 = Instant::now();
        for i in 0..(MAX_RECENT as u32 * 2) {
            let own = in_container(culprit(9, "bash", &[]), "ab", None);
            g.folds(&own, IpAddr::V4(i.into()), 443, t0);
        }
        assert!(g.recent.len() <= MAX_RECENT);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the country says, an address inside a trusted CIDR never raises `geo`.
        #[test]
        fn trusted_addresses_never_raise(prefix in 8u8..=32, base in any::<u32>(), host in any::<u32>()) {
            let net = ipnet::Ipv4Net::new(base.into(), prefix).unwrap().trunc();
            let trust = TrustSet::new(&[ipnet::IpNet::V4(net)], &[]);
            let mask = if prefix == 32 { 0 } else { u32::MAX >> prefix };
            let addr = IpAddr::V4((u32::from(net.network()) | (host & mask)).into());
            let c = culprit(9, "curl", &[]);
            prop_assert!(geo().on_connect(&c, addr, 443, Some("RU"), None, &trust).is_none());
        }
    }
}
