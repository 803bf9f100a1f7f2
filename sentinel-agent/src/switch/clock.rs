//! The switch's two clocks. Countdowns run on CLOCK_BOOTTIME, which only moves forward (and
//! keeps counting through a suspend), so an NTP step or a VM resume that moves the wall clock
//! neither fires every pending decision at once nor delays them. The wall clock is kept only
//! to show deadlines to humans and to resume them after a restart.

use std::time::{Duration, SystemTime};

/// One reading of both clocks. Tests build their own to step either one alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall: SystemTime,
    /// Time since boot (CLOCK_BOOTTIME).
    pub boot: Duration,
}

impl Now {
    pub fn read() -> Self {
        Self {
            wall: SystemTime::now(),
            boot: boot_time(),
        }
    }

    /// The same instant `d` later on both clocks.
    #[cfg(test)]
    pub fn after(self, d: Duration) -> Self {
        Self {
            wall: self.wall + d,
            boot: self.boot + d,
        }
    }

    /// Where a wall-clock `deadline` falls on the boot clock, seen from now (a deadline
    /// already passed is due now).
    pub fn boot_deadline(self, deadline: SystemTime) -> Duration {
        self.boot + deadline.duration_since(self.wall).unwrap_or_default()
    }
}

/// CLOCK_BOOTTIME now.
pub fn boot_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(Duration::ZERO, |t| {
        Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_deadlines_follow_the_wall_clock_only_at_resume() {
        let now = Now {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            boot: Duration::from_secs(50),
        };
        assert_eq!(
            now.boot_deadline(now.wall + Duration::from_secs(30)),
            Duration::from_secs(80)
        );
        assert_eq!(
            now.boot_deadline(now.wall - Duration::from_secs(30)),
            Duration::from_secs(50)
        );
        assert!(boot_time() > Duration::ZERO);
    }
}
