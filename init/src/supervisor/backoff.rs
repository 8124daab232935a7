//! How long a service waits before it is restarted: capped exponential backoff.
//!
//! The first restart waits [`FIRST_DELAY`]; each further one twice as long, up to [`MAX_DELAY`]. A run that
//! lasted [`STABLE_UPTIME`] or longer counts as healthy: the next restart waits [`FIRST_DELAY`] again. So a
//! service that crashes at once is retried at 0.1, 0.2, 0.4 … 25.6, 30, 30 … seconds, while one that
//! crashes once a day restarts almost immediately every time.

use std::time::Duration;

/// Delay before the first restart.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between restarts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run at least this long resets the delay to [`FIRST_DELAY`].
pub const STABLE_UPTIME: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_DELAY }
    }
}

impl Backoff {
    /// The delay before restarting a process that ran for `uptime`; advances the backoff.
    pub fn delay_after(&mut self, uptime: Duration) -> Duration {
        if uptime >= STABLE_UPTIME {
            self.next = FIRST_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_and_caps_at_30s() {
        let mut b = Backoff::default();
        let delays: Vec<u128> = (0..12)
            .map(|_| b.delay_after(Duration::ZERO).as_millis())
            .collect();
        assert_eq!(
            delays,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
    }

    #[test]
    fn a_stable_run_resets_the_delay() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.delay_after(Duration::from_secs(1));
        }
        assert_eq!(
            b.delay_after(Duration::from_secs(59)),
            Duration::from_millis(3200)
        );
        assert_eq!(b.delay_after(STABLE_UPTIME), FIRST_DELAY);
        assert_eq!(b.delay_after(Duration::ZERO), Duration::from_millis(200));
    }
}
