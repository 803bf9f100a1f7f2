//! `resource`: CPU abuse, the crypto-miner signature. High, T1496.
//!
//! A process above `resource.cpu_percent` for `resource.sustain` is the culprit of its alert
//! (and what `enforce.kill` may terminate). The whole host more than
//! `resource.baseline_deviation` points above its learned baseline for as long, while no
//! process is above `cpu_percent`, raises an alert that names **no process** (pid 0, like
//! `blind`): the busiest process of a loaded host is most often the service doing its job (a
//! client loading postgres or php-fpm), and blaming it would get it killed. The alert is kept
//! because it is the only trace of a miner that stays under the per-process limit (throttled,
//! or spread over many processes); a human reads the `cpu` events to find who. With no process
//! named, no kill and no decision can follow ([`super::kills`] refuses pid 0).

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

use crate::config::ResourceConfig;

use super::{Anomaly, Culprit, Finding};

/// How long the host's CPU must be watched before its baseline is trusted.
const WARMUP: Duration = Duration::from_secs(60);
/// Time constant of the baseline's moving average: it follows the host over ~10 minutes.
const BASELINE_TAU: Duration = Duration::from_secs(600);

/// CPU abuse found, before the daemon attaches the process's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The process above `resource.cpu_percent`; `None`: the host above its baseline, no
    /// process to blame.
    pub pid: Option<u32>,
    pub detail: String,
}

pub struct Resource {
    config: ResourceConfig,
    over_since: FxHashMap<u32, Instant>,
    baseline: Option<f64>,
    watched: Duration,
    host_over_since: Option<Instant>,
    last: Option<Instant>,
}

impl Resource {
    pub fn new(config: ResourceConfig) -> Self {
        Self {
            config,
            over_since: FxHashMap::default(),
            baseline: None,
            watched: Duration::ZERO,
            host_over_since: None,
            last: None,
        }
    }

    /// The learned host baseline (% of all CPUs), once warmed up.
    pub fn baseline(&self) -> Option<f64> {
        self.baseline.filter(|_| self.watched >= WARMUP)
    }

    /// One CPU interval: `procs` is (pid, % of one CPU) for every process that ran, `host_pct`
    /// the host's use of all its CPUs (0–100).
    pub fn observe(&mut self, now: Instant, procs: &[(u32, f64)], host_pct: f64) -> Vec<Hit> {
        let dt = self.last.map_or(Duration::ZERO, |l| now.duration_since(l));
        self.last = Some(now);
        let mut hits = Vec::new();

        let limit = self.config.cpu_percent;
        self.over_since
            .retain(|pid, _| procs.iter().any(|(p, pct)| p == pid && *pct >= limit));
        for &(pid, pct) in procs.iter().filter(|(_, pct)| *pct >= limit) {
            let since = *self.over_since.entry(pid).or_insert(now);
            let held = now.duration_since(since);
            if held >= self.config.sustain {
                hits.push(Hit {
                    pid: Some(pid),
                    detail: format!(
                        "{pct:.0}% CPU for {}, above resource.cpu_percent = {limit}",
                        humantime::format_duration(round_secs(held))
                    ),
                });
            }
        }

        match self.baseline() {
            Some(base) if host_pct - base > self.config.baseline_deviation => {
                let since = *self.host_over_since.get_or_insert(now);
                let held = now.duration_since(since);
                // A process over the limit has (or soon gets) an alert of its own.
                if held >= self.config.sustain && self.over_since.is_empty() {
                    hits.push(Hit {
                        pid: None,
                        detail: format!(
                            "host CPU {host_pct:.0}% for {}, {:.0} points above its baseline of \
                             {base:.0}%, with no process above resource.cpu_percent = {limit} \
                             (see the cpu events)",
                            humantime::format_duration(round_secs(held)),
                            host_pct - base
                        ),
                    });
                }
            }
            _ => {
                // Learn only from normal times, so an abuse does not become the baseline.
                self.host_over_since = None;
                self.watched += dt;
                let alpha = 1.0 - (-dt.as_secs_f64() / BASELINE_TAU.as_secs_f64()).exp();
                self.baseline = Some(match self.baseline {
                    None => host_pct,
                    Some(b) => b + alpha * (host_pct - b),
                });
            }
        }
        hits
    }

    /// The finding of a process hit, on `culprit` (the process `hit.pid`).
    pub fn finding(culprit: Culprit, hit: Hit) -> Finding {
        Finding {
            domain: None,
            anomaly: Anomaly::Resource,
            subject: culprit.pid,
            detail: format!("{} (pid {}): {}", culprit.comm, culprit.pid, hit.detail),
            culprit,
            target: None,
            country: None,
        }
    }

    /// The finding of a host hit: it names no process (pid 0), so nothing is killed.
    pub fn host_finding(hit: Hit) -> Finding {
        Finding {
            domain: None,
            anomaly: Anomaly::Resource,
            subject: 0,
            detail: hit.detail,
            culprit: Culprit {
                pid: 0,
                start: 0,
                comm: "host".into(),
                exe: None,
                uid: u32::MAX,
                ancestry: Vec::new(),
                container: None,
            },
            target: None,
            country: None,
        }
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Alerts, Outcome, kills};

    fn resource(cpu_percent: f64, sustain_s: u64, deviation: f64) -> Resource {
        Resource::new(ResourceConfig {
            cpu_percent,
            sustain: Duration::from_secs(sustain_s),
            baseline_deviation: deviation,
        })
    }

    #[test]
    fn sustained_high_cpu_raises_after_sustain() {
        let mut r = resource(90.0, 10, 40.0);
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        assert!(r.observe(s(0), &[(7, 99.0)], 50.0).is_empty());
        assert!(r.observe(s(5), &[(7, 99.0)], 50.0).is_empty());
        let hits = r.observe(s(10), &[(7, 99.0), (8, 20.0)], 60.0);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].pid, Some(7));
        assert!(hits[0].detail.contains("10s"), "{}", hits[0].detail);
    }

    #[test]
    fn a_dip_restarts_the_clock() {
        let mut r = resource(90.0, 10, 40.0);
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        r.observe(s(0), &[(7, 99.0)], 50.0);
        r.observe(s(6), &[(7, 30.0)], 15.0);
        assert!(r.observe(s(12), &[(7, 99.0)], 50.0).is_empty());
        assert!(r.observe(s(20), &[(7, 99.0)], 50.0).is_empty());
        assert_eq!(r.observe(s(22), &[(7, 99.0)], 50.0).len(), 1);
    }

    /// Watch a steady host (10%, one process at 20%) past the warm-up: baseline 10%.
    fn warmed_up(r: &mut Resource, t0: Instant) {
        let mut t = 0;
        while t <= 70 {
            assert!(
                r.observe(t0 + Duration::from_secs(t), &[(3, 20.0)], 10.0)
                    .is_empty()
            );
            t += 2;
        }
        assert!((r.baseline().unwrap() - 10.0).abs() < 0.01);
    }

    #[test]
    fn a_host_above_its_baseline_blames_no_process_under_the_limit() {
        let mut r = resource(150.0, 10, 40.0);
        let t0 = Instant::now();
        warmed_up(&mut r, t0);
        // A client loads the database: host 70%, 60 points above; postgres at 120% of one
        // CPU, under the per-process limit.
        let busy = [(3, 20.0), (4, 120.0)];
        assert!(
            r.observe(t0 + Duration::from_secs(72), &busy, 70.0)
                .is_empty()
        );
        let hits = r.observe(t0 + Duration::from_secs(82), &busy, 70.0);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].pid, None, "{hits:?}");
        assert!(
            hits[0].detail.contains("baseline of 10%"),
            "{}",
            hits[0].detail
        );
        // Its alert names no process, and the kill engine has nothing to act on.
        let f = Resource::host_finding(hits[0].clone());
        assert_eq!((f.culprit.pid, f.subject), (0, 0));
        let mut alerts = Alerts::new(Duration::from_secs(600));
        let Outcome::New(alert) = alerts.raise(f, Instant::now()) else {
            panic!("a first alert")
        };
        assert_eq!((alert.anomaly.as_str(), alert.pid), ("resource", 0));
        assert!(!kills(&alert));
        // The abuse did not move the baseline.
        assert!((r.baseline().unwrap() - 10.0).abs() < 0.01);
    }

    #[test]
    fn a_process_over_the_limit_is_blamed_alone_when_the_host_is_also_over() {
        let mut r = resource(150.0, 10, 40.0);
        let t0 = Instant::now();
        warmed_up(&mut r, t0);
        let busy = [(3, 20.0), (4, 120.0), (5, 160.0)];
        r.observe(t0 + Duration::from_secs(72), &busy, 90.0);
        let hits = r.observe(t0 + Duration::from_secs(82), &busy, 90.0);
        assert_eq!(
            hits.iter().map(|h| h.pid).collect::<Vec<_>>(),
            [Some(5)],
            "{hits:?}"
        );
    }

    #[test]
    fn no_baseline_alert_before_warmup() {
        let mut r = resource(1000.0, 1, 10.0);
        let t0 = Instant::now();
        r.observe(t0, &[(3, 5.0)], 5.0);
        for t in 1..30 {
            assert!(
                r.observe(t0 + Duration::from_secs(t), &[(4, 190.0)], 95.0)
                    .is_empty()
            );
        }
    }
}
