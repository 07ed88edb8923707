//! Retry delays, one rule for every sender (agent pushes, remote_write,
//! notifications): the step doubles from `first` up to `max` after each
//! failure and returns to `first` after a success; the wait is jittered to
//! between half and all of the step, so many senders cut off together do
//! not come back together.

use std::time::Duration;

use rand::Rng;

/// The retry state of one sender.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `first`; never waits longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max: max.max(first), step: first }
    }

    /// How long to wait before the next attempt; the step doubles.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.step.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        self.failed_without_waiting();
        wait
    }

    /// Doubles the step when the wait came from elsewhere (`Retry-After`).
    pub fn failed_without_waiting(&mut self) {
        self.step = (self.step * 2).min(self.max);
    }

    /// A success: the next failure starts from `first` again.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

/// The step before attempt `attempts + 1` without jitter: for retries
/// scheduled in a database rather than slept through (the outbox).
pub fn nth(first: Duration, max: Duration, attempts: u32) -> Duration {
    first.saturating_mul(1u32 << attempts.min(30)).min(max.max(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_jittered_and_resets() {
        let (first, max) = (Duration::from_millis(500), Duration::from_secs(15));
        let mut b = Backoff::new(first, max);
        let mut step = first;
        for _ in 0..10 {
            let w = b.next_wait();
            assert!(w >= step / 2 && w <= step, "{w:?} within half to all of {step:?}");
            step = (step * 2).min(max);
        }
        assert_eq!(step, max);
        b.reset();
        assert!(b.next_wait() <= first);
        assert_eq!(nth(Duration::from_secs(1), Duration::from_secs(300), 0), Duration::from_secs(1));
        assert_eq!(nth(Duration::from_secs(1), Duration::from_secs(300), 3), Duration::from_secs(8));
        assert_eq!(nth(Duration::from_secs(1), Duration::from_secs(300), 40), Duration::from_secs(300));
    }
}
