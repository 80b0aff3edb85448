//! Reconnect delays: exponential backoff with full jitter.
//!
//! rumqttc's event loop returns an error on every failed connect and tries again at once
//! when polled, so without a delay a fleet whose broker restarts would hammer it in step.
//! Full jitter (a uniform draw in `[0, ceiling]`) spreads the fleet's reconnects over the
//! whole window, which is what lets a restarted broker take them.

use std::time::Duration;

use rand::Rng;

/// `min(max, base * 2^attempt)`, without overflow.
pub fn ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    // 2^31 times any useful base is already past any useful max
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(max, |d| d.min(max))
}

/// A uniform draw in `[0, ceiling(attempt, base, max)]`.
pub fn full_jitter(attempt: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let cap = ceiling(attempt, base, max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

/// The attempt counter around [`full_jitter`]: one step per failed attempt, back to the
/// start after a successful connect.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; each call widens the window until it reaches max.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = full_jitter(self.attempt, self.base, self.max, rng);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After a ConnAck: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_then_caps() {
        let (base, max) = (100 * MS, 1000 * MS);
        let c: Vec<_> = (0..6).map(|n| ceiling(n, base, max)).collect();
        assert_eq!(c, [100 * MS, 200 * MS, 400 * MS, 800 * MS, max, max]);
        // huge attempts neither overflow nor panic
        assert_eq!(ceiling(u32::MAX, base, max), max);
        assert_eq!(ceiling(40, Duration::from_secs(u64::MAX / 2), max), max);
    }

    #[test]
    fn delays_within_window_and_reach_cap() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (base, max) = (100 * MS, 1000 * MS);
        let mut b = Backoff::new(base, max);
        let mut largest_at_cap = Duration::ZERO;
        for n in 0..200u32 {
            let d = b.next_delay(&mut rng);
            let cap = ceiling(n, base, max);
            assert!(d <= cap, "attempt {n}: {d:?} > {cap:?}");
            if cap == max {
                largest_at_cap = largest_at_cap.max(d);
            }
        }
        // full jitter over [0, 1 s]: 196 draws at the cap come close to it
        assert!(largest_at_cap > 900 * MS, "{largest_at_cap:?}");
        assert_eq!(b.attempt(), 200);
        b.reset();
        assert_eq!(b.attempt(), 0);
        for _ in 0..50 {
            let mut fresh = b.clone();
            assert!(fresh.next_delay(&mut rng) <= base);
        }
    }

    #[test]
    fn jitter_is_spread_not_constant() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let draws: Vec<_> = (0..100)
            .map(|_| full_jitter(3, 100 * MS, 1000 * MS, &mut rng))
            .collect();
        let low = draws.iter().filter(|d| **d < 400 * MS).count();
        // uniform over [0, 800 ms]: about half below 400 ms
        assert!((25..=75).contains(&low), "{low} of 100 below the middle");
    }

    #[test]
    fn max_below_base_is_lifted() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut b = Backoff::new(500 * MS, 100 * MS);
        assert!(b.next_delay(&mut rng) <= 500 * MS);
    }
}
