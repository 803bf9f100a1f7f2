//! `geo`: an outbound connection to an address in a high-risk country (`geo.high_risk_countries`)
//! — a C2 beacon or exfiltration in a hostile jurisdiction. Critical, T1071.001. Trusted
//! addresses (loopback, `trust.ips`, live SSH peers) never raise it.

use std::{collections::HashSet, net::IpAddr};

use crate::enrich::trust::TrustSet;

use super::{Anomaly, Culprit, Finding};

pub struct Geo {
    high_risk: HashSet<String>,
}

impl Geo {
    pub fn new(high_risk_countries: &[String]) -> Self {
        Self {
            high_risk: high_risk_countries.iter().cloned().collect(),
        }
    }

    /// Whether `country` is one of `geo.high_risk_countries`.
    pub fn is_high_risk(&self, country: Option<&str>) -> bool {
        country.is_some_and(|c| self.high_risk.contains(c))
    }

    /// `culprit` connected to `daddr:dport`, which GeoIP puts in `country`.
    pub fn on_connect(
        &self,
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
