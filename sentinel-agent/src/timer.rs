//! Periodic timers on the kernel's own timers (`timerfd`) instead of tokio's: the event
//! loop's and the fleet task's.
//!
//! tokio's timer wheel parks until the start of the coarse slot that holds a timer (64 ms
//! slots for a timer a second or more away), then parks again until the timer itself: an
//! idle agent whose loop ticks once a second woke about 2.4 times a second (strace:
//! `epoll_wait(…, 962)`, then `epoll_wait(…, 35)` before each tick). A timerfd is readable at
//! its expiry and not before, so an idle loop wakes once per tick. Every timer of the loop
//! starts at the same instant ([`Start`]), so ticks due in the same second (CPU samples every
//! 2 s, housekeeping every second) expire together: one wake-up.
//!
//! A tick that was due while the loop was busy is taken once, late, not as a burst of missed
//! ticks; the next ones keep their schedule. Waiting for a tick is cancellation safe (the
//! expiry stays in the timerfd until read), so it can sit in a `select!`. A timer must be
//! polled whenever it can expire: an unread expiry of a periodic timerfd wakes the runtime
//! again at every period (tokio's `Interval` is the one to use behind a disabled branch).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
    time::Duration,
};

use nix::{
    sys::{
        time::TimeSpec,
        timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
    },
    time::{ClockId as Clock, clock_gettime},
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

/// The instant a set of timers starts from (`CLOCK_MONOTONIC`, tokio's clock too): their
/// first tick is at once, the next ones at multiples of their periods from it.
#[derive(Clone, Copy, Debug)]
pub struct Start(TimeSpec);

impl Start {
    pub fn now() -> io::Result<Self> {
        Ok(Self(clock_gettime(Clock::CLOCK_MONOTONIC)?))
    }
}

/// A timer that ticks every `period` from a [`Start`].
#[derive(Debug)]
pub struct Every {
    fd: AsyncFd<Timer>,
    period: Duration,
}

/// A timerfd, as tokio's `AsyncFd` takes it.
#[derive(Debug)]
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Every {
    pub fn from(start: Start, period: Duration) -> io::Result<Self> {
        if period.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a timer's period must not be zero",
            ));
        }
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // An absolute first expiry already past (the start) expires at once.
        timer.set(
            Expiration::IntervalDelayed(start.0, TimeSpec::from_duration(period)),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        // SAFETY: the AsyncFd owns the timerfd, hence its fd, and deregisters before dropping it.
        let fd = unsafe { AsyncFd::register_with_interest(Timer(timer), Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd, period })
    }

    /// Wait for the next tick; the number of periods that ended since the last tick (more
    /// than 1 when the loop was busy past a tick). Should the timerfd ever fail, the tick
    /// comes from a tokio sleep of one period instead (said in the log): the loop keeps its
    /// housekeeping.
    pub async fn tick(&mut self) -> u64 {
        match self.expirations().await {
            Ok(n) => n,
            Err(e) => {
                warn!(
                    period = ?self.period,
                    "the loop's timer failed ({e}): ticking on tokio's timer instead"
                );
                tokio::time::sleep(self.period).await;
                1
            }
        }
    }

    async fn expirations(&mut self) -> io::Result<u64> {
        loop {
            let mut ready = self.fd.readable_mut().await?;
            match ready.try_io(|fd| read_count(fd.get_ref())) {
                Ok(result) => {
                    // The read took every expiry: the timerfd is not readable until the next,
                    // which the kernel signals anew. Said here, the next wait does not make a
                    // read only to learn it (tokio ignores a clear older than the readiness).
                    if result.is_ok() {
                        ready.clear_ready();
                    }
                    return result;
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// Read a timerfd's expiration count (`EAGAIN`, as `WouldBlock`, when it has none).
fn read_count(timer: &Timer) -> io::Result<u64> {
    let mut count = [0u8; 8];
    let n = nix::unistd::read(timer.0.as_fd(), &mut count)?;
    if n != count.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a timerfd read returned {n} bytes"),
        ));
    }
    Ok(u64::from_ne_bytes(count))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn the_first_tick_is_at_once_and_the_next_a_period_later() {
        let period = Duration::from_millis(500);
        let mut every = Every::from(Start::now().unwrap(), period).unwrap();
        let begun = Instant::now();
        assert_eq!(every.tick().await, 1);
        assert!(begun.elapsed() < period, "{:?}", begun.elapsed());
        every.tick().await;
        assert!(begun.elapsed() >= period, "{:?}", begun.elapsed());
    }

    #[tokio::test]
    async fn a_busy_loop_takes_missed_ticks_once() {
        let period = Duration::from_millis(20);
        let mut every = Every::from(Start::now().unwrap(), period).unwrap();
        every.tick().await;
        // The loop is busy for five periods and more: one tick, counting them.
        std::thread::sleep(period * 5 + period / 2);
        let missed = every.tick().await;
        assert!(missed >= 5, "{missed}");
    }

    #[tokio::test]
    async fn timers_from_one_start_expire_together() {
        let start = Start::now().unwrap();
        let mut fast = Every::from(start, Duration::from_millis(50)).unwrap();
        let mut slow = Every::from(start, Duration::from_millis(100)).unwrap();
        fast.tick().await;
        slow.tick().await;
        fast.tick().await;
        fast.tick().await;
        // The slow timer's second tick is due when the fast one's third was: waiting for it
        // takes no time.
        let begun = Instant::now();
        slow.tick().await;
        assert!(
            begun.elapsed() < Duration::from_millis(25),
            "{:?}",
            begun.elapsed()
        );
    }

    #[tokio::test]
    async fn a_wait_given_up_in_a_select_leaves_the_timer_running() {
        let mut every = Every::from(Start::now().unwrap(), Duration::from_millis(30)).unwrap();
        every.tick().await;
        tokio::select! {
            _ = every.tick() => panic!("the tick came before the sleep"),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        // The timer still runs: the next wait ends with the next expiry.
        let next = tokio::time::timeout(Duration::from_secs(2), every.tick()).await;
        assert!(next.is_ok(), "no tick after a wait given up");
    }

    #[test]
    fn a_zero_period_is_refused() {
        let err = Every::from(Start::now().unwrap(), Duration::ZERO).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
