//! bench-cost's measure of what BPF run-time statistics add to every BPF figure it prints:
//! the time `kernel.bpf_stats_enabled` records for a program that does nothing (bpftrace's,
//! on a system call the bench makes [`CALLS`] times). The kernel reads its clock around each
//! run, and part of that read lands inside the time it records: every run of every program
//! carries it. Production runs with the statistics off and pays none of it, so the report
//! gives the figures net of it beside the measured ones (the targets are judged on the
//! measured ones).

use super::*;

/// An empty program on a system call nothing else on the machine makes often.
const EMPTY_PROGRAM: &str = "tracepoint:syscalls:sys_enter_getppid { }";
/// `getppid` calls per measure, and measures (their median is taken).
const CALLS: u64 = 100_000;
const MEASURES: usize = 3;

/// The run time the statistics record for an empty program, ns per run.
pub(super) fn stats_floor_ns(bpftrace: &Path, dir: &Path) -> anyhow::Result<f64> {
    let out = dir.join("empty-program.out");
    let mut child = start_bpftrace(bpftrace, &["-e".as_ref(), EMPTY_PROGRAM.as_ref()], &out)?;
    let result = (|| {
        wait_for(
            || Ok(count_lines(&out, "Attaching")? > 0),
            "bpftrace to attach the empty program",
        )?;
        let mut per_run = Vec::with_capacity(MEASURES);
        for _ in 0..MEASURES {
            let charged = charge(child.id(), || {
                for _ in 0..CALLS {
                    nix::unistd::getppid();
                }
                Ok(())
            })?;
            let (ns, runs) = charged
                .bpf
                .values()
                .fold((0, 0), |(ns, runs), (n, r)| (ns + n, runs + r));
            ensure!(
                runs >= CALLS,
                "the empty program ran {runs} times for {CALLS} getppid calls"
            );
            per_run.push(ns as f64 / runs as f64);
        }
        Ok(median(&per_run))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
