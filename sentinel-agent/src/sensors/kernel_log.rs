//! What the kernel programs say about their rare failures (sentinel-ebpf's `rare`: a record
//! dropped, a kernel read that failed, a socket of an unknown family), read from aya-log's
//! ring buffer into the agent's own `tracing` log under the target `sentinel::kernel`. The kernel side
//! logs a repeating failure only at each doubling of its count, so this costs nothing while
//! all is well and little when it is not.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, error, info, trace, warn};

/// Forwards aya-log records (the `log` crate's) to `tracing`, at their own level.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => error!(target: "sentinel::kernel", "{message}"),
            log::Level::Warn => warn!(target: "sentinel::kernel", "{message}"),
            log::Level::Info => info!(target: "sentinel::kernel", "{message}"),
            log::Level::Debug => debug!(target: "sentinel::kernel", "{message}"),
            log::Level::Trace => trace!(target: "sentinel::kernel", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The kernel programs' log, once taken from the loaded object.
pub type KernelLog = EbpfLogger<ToTracing>;

/// Take the kernel programs' log out of `ebpf`; `None` (with a warning) when the object has
/// none, which costs the agent only these messages.
pub fn take(ebpf: &mut Ebpf) -> Option<KernelLog> {
    EbpfLogger::init_with_logger(ebpf, ToTracing)
        .map_err(|e| warn!("the kernel programs' log is not available: {e}"))
        .ok()
}

/// Relay the kernel's log records until the agent stops. It sleeps until the kernel writes a
/// record (aya-log wakes the reader), so it costs nothing while nothing fails.
pub async fn relay(log: KernelLog) {
    // SAFETY: the AsyncFd owns the logger, hence its ring buffer's fd, and deregisters before
    // dropping it.
    let mut fd = match unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the kernel programs' log: {e}");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!("polling the kernel programs' log failed: {e}");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use log::Log as _;

    use super::*;

    /// Records reach `tracing` at their own level under the target `kernel`.
    #[test]
    fn records_keep_their_level_and_text() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            ToTracing.log(
                &log::Record::builder()
                    .level(log::Level::Warn)
                    .args(format_args!("exec sensor: buffer full, record dropped (1)"))
                    .build(),
            );
            ToTracing.log(
                &log::Record::builder()
                    .level(log::Level::Debug)
                    .args(format_args!(
                        "connect sensor: skipped a socket of address family 1"
                    ))
                    .build(),
            );
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("WARN sentinel::kernel: exec sensor: buffer full, record dropped (1)"),
            "{text}"
        );
        assert!(
            text.contains(
                "DEBUG sentinel::kernel: connect sensor: skipped a socket of address family 1"
            ),
            "{text}"
        );
    }
}
