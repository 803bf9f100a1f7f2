//! `resource`: CPU abuse, the crypto-miner signature. A process above `resource.cpu_percent`
//! for `resource.sustain`, or the whole host more than `resource.baseline_deviation` points
//! above its learned baseline for as long; the alert names the top CPU process. High, T1496.

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

use crate::config::ResourceConfig;

use super::{Anomaly, Culprit, Finding};

/// How long the host's CPU must be watched before its baseline is trusted.
const WARMUP: Duration = Duration::from_secs(60);
/// Time constant of the baseline's moving average: it follows the host over ~10 minutes.
const BASELINE_TAU: Duration = Duration::from_secs(600);

/// A process found abusing the CPU, before the daemon attaches its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub pid: u32,
    pub cpu_pct: f64,
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
                    pid,
                    cpu_pct: pct,
                    detail: format!(
                        "{pct:.0}% CPU for {}, above resource.cpu_percent = {limit}",
                        humantime::format_duration(round_secs(held))
                    ),
                });
            }
        }

        let top = procs.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
        match self.baseline() {
            Some(base) if host_pct - base > self.config.baseline_deviation => {
                let since = *self.host_over_since.get_or_insert(now);
                let held = now.duration_since(since);
                if let Some((pid, pct)) = top
                    && held >= self.config.sustain
                    && !hits.iter().any(|h| h.pid == pid)
                {
                    hits.push(Hit {
                        pid,
                        cpu_pct: pct,
                        detail: format!(
                            "host CPU {host_pct:.0}% for {}, {:.0} points above its baseline of {base:.0}%; top process at {pct:.0}%",
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

    pub fn finding(culprit: Culprit, hit: Hit) -> Finding {
        Finding {
            anomaly: Anomaly::Resource,
            subject: culprit.pid,
            detail: format!("{} (pid {}): {}", culprit.comm, culprit.pid, hit.detail),
            culprit,
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
        assert_eq!(hits[0].pid, 7);
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

    #[test]
    fn deviation_from_the_learned_baseline_names_the_top_process() {
        // Per-process threshold out of reach: only the host deviation can fire.
        let mut r = resource(1000.0, 10, 40.0);
        let t0 = Instant::now();
        let mut t = 0;
        while t <= 70 {
            assert!(
                r.observe(t0 + Duration::from_secs(t), &[(3, 20.0)], 10.0)
                    .is_empty()
            );
            t += 2;
        }
        assert!((r.baseline().unwrap() - 10.0).abs() < 0.01);
        // Host jumps to 70%: 60 points above; two processes share it.
        let busy = [(3, 20.0), (4, 120.0)];
        assert!(
            r.observe(t0 + Duration::from_secs(72), &busy, 70.0)
                .is_empty()
        );
        let hits = r.observe(t0 + Duration::from_secs(82), &busy, 70.0);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].pid, 4);
        assert!(
            hits[0].detail.contains("baseline of 10%"),
            "{}",
            hits[0].detail
        );
        // The abuse did not move the baseline.
        assert!((r.baseline().unwrap() - 10.0).abs() < 0.01);
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
