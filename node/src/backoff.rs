//! Waits between attempts of a boot step. A rack that lost its server comes back in a
//! staggered way: the delay doubles up to a ceiling and each wait is jittered from a seed (the
//! MAC), so machines do not retry in lockstep.
use std::time::Duration;

use stampede_proto::dhcp::splitmix64;

#[derive(Debug, Clone)]
pub struct StepBackoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl StepBackoff {
    /// 2 s, 4 s, 8 s ... capped at 60 s: quick enough that a server restart is noticed within a
    /// minute, slow enough that a thousand failing machines are not a load on it.
    pub fn new(seed: u64) -> Self {
        Self::with(Duration::from_secs(2), Duration::from_secs(60), seed)
    }

    pub fn with(initial: Duration, max: Duration, seed: u64) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
            rng: seed,
        }
    }

    /// The next wait: the doubled base, minus up to a quarter of it.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .initial
            .checked_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let quarter = base.as_millis() as u64 / 4;
        let jitter = if quarter == 0 {
            0
        } else {
            splitmix64(&mut self.rng) % (quarter + 1)
        };
        base.saturating_sub(Duration::from_millis(jitter))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_ceiling_with_bounded_jitter() {
        let mut b = StepBackoff::new(42);
        let secs: Vec<f64> = (0..8).map(|_| b.next_delay().as_secs_f64()).collect();
        let bases = [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0];
        for (got, base) in secs.iter().zip(bases) {
            assert!(*got <= base && *got >= base * 0.75, "{secs:?}");
        }
        assert_eq!(b.attempt, 8);
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(2));
    }

    #[test]
    fn different_seeds_spread_out() {
        let a = StepBackoff::new(1).next_delay();
        let b = StepBackoff::new(2).next_delay();
        let c = StepBackoff::new(3).next_delay();
        assert!(a != b || b != c, "{a:?} {b:?} {c:?}");
    }
}
