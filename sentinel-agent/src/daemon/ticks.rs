//! The pipeline's work that the agent's timers drive rather than a kernel record: reading the
//! CPU samples (`cpu` events and the `resource` detector), the blind check on the sensors' lost
//! counters, and pruning processes whose exit the agent missed.

use std::{
    sync::atomic::Ordering,
    time::{Instant, SystemTime},
};

use tracing::debug;

use super::pipeline::Pipeline;
use crate::{
    detect,
    enrich::tree::{exists, is_alive},
    event::{Body, CpuBody},
    sensors::{
        SENSORS,
        cpu::{Samples, cpu_percent},
    },
};

/// How often [`Pipeline::gc`] reads every tracked process's start time at the least.
const FULL_GC_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

impl Pipeline {
    /// Read the kernel's lost counters: a sensor that lost events raises `blind`.
    pub fn check_blind(&mut self) {
        let counts: Vec<(&'static str, u64)> = {
            let lost = self.shared.lost.lock().expect("lost lock");
            SENSORS.iter().map(|s| (*s, lost.lost(s))).collect()
        };
        for finding in self.detect.blind.observe(&counts) {
            // Lost records may have been an sshd's: the SSH sessions are read again; or an
            // exit: the next gc checks every process in full.
            self.ssh_nudge.send();
            self.gc_full_at = None;
            self.raise(finding, None);
        }
    }

    /// Read the sample counts and emit a `cpu` event for every busy process.
    pub fn sample_cpu(&mut self) {
        let Some(samples) = &mut self.cpu_map else {
            return;
        };
        let elapsed = self.cpu_last.elapsed();
        self.cpu_last = Instant::now();
        let deltas = match samples.totals_if_sampled() {
            Some(totals) => self.cpu.deltas(totals),
            None => Vec::new(),
        };
        let samples: u64 = deltas.iter().map(|(_, d)| d).sum();
        self.shared.counters[2]
            .seen
            .fetch_add(samples, Ordering::Relaxed);
        let now = SystemTime::now();
        let procs: Vec<(u32, f64)> = deltas
            .iter()
            .filter(|(tgid, _)| !self.is_agent(*tgid))
            .map(|&(tgid, delta)| (tgid, cpu_percent(delta, self.cpu_hz, elapsed)))
            .collect();
        let host_pct = (procs.iter().map(|(_, p)| p).sum::<f64>() / self.ncpus as f64).min(100.0);
        for hit in self
            .detect
            .resource
            .observe(Instant::now(), &procs, host_pct)
        {
            let finding = match hit.pid {
                Some(pid) => {
                    let Some(comm) = self.comm_of(pid) else {
                        continue;
                    };
                    let culprit = self.culprit(pid, comm, None);
                    detect::resource::Resource::finding(culprit, hit)
                }
                None => detect::resource::Resource::host_finding(hit),
            };
            self.raise(finding, None);
        }
        self.behaviour_cpu(&procs);
        for (tgid, pct) in procs {
            if pct < self.cpu_report_percent {
                continue;
            }
            let Some(comm) = self.comm_of(tgid) else {
                continue; // already gone
            };
            let container = self.container_of(tgid);
            self.emit(
                now,
                Body::Cpu(CpuBody {
                    pid: tgid,
                    comm,
                    cpu_pct: (pct * 10.0).round() / 10.0,
                    container,
                }),
            );
        }
    }

    /// Drop tree entries (and sample-map entries) for processes that are gone but whose exit
    /// the agent missed. Exits are missed only when records are lost, so most rounds only
    /// check that each process's `/proc` entry exists (one `stat`); every [`FULL_GC_EVERY`],
    /// and after lost records, each start time is read too (a reused pid), which for the
    /// ~500 processes of a small host was most of the idle agent's CPU time.
    pub fn gc(&mut self) {
        let root = self.proc_root.clone();
        let full = self.gc_full_at.is_none_or(|t| t.elapsed() >= FULL_GC_EVERY);
        let dropped = if full {
            self.gc_full_at = Some(Instant::now());
            self.tree
                .retain_alive(|tgid, start| is_alive(&root, tgid, start))
        } else {
            self.tree.retain_alive(|tgid, _| exists(&root, tgid))
        };
        self.behaviour_gc();
        if dropped > 0 {
            debug!(dropped, "pruned processes whose exit was missed");
        }
        if let Some(Samples { map, .. }) = &mut self.cpu_map {
            let stale: Vec<u32> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|tgid| self.tree.get(*tgid).is_none())
                .collect();
            for tgid in stale {
                let _ = map.remove(&tgid);
            }
        }
        self.shared
            .processes
            .store(self.tree.len() as u64, Ordering::Relaxed);
    }
}
