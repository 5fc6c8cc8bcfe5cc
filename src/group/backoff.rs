//! [`RetryBackoff`]: how long a failed delivery waits before it is delivered again.
//!
//! Without a policy a failed message comes back at once, and a handler that fails fast (a panic, a dependency that
//! refuses at once) burns every attempt within microseconds. The policy spaces the attempts out exponentially,
//! with jitter so that the many messages one outage failed at the same moment do not all come back together.
//! The jitter is a hash of the offset and the attempt: the same failure always waits the same time, and a test
//! can know it.

use std::time::Duration;

use crate::error::{Error, Result};

/// The largest multiplier: past it the delay reaches any sane maximum within a few attempts anyway.
pub const RETRY_MULTIPLIER_MAX: u32 = 16;

/// The longest wait a backoff may reach (and the longest delay a nack may ask for: longer ones are cut to it).
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Exponential backoff for failed deliveries (a nack through [`Delivery::retry`](crate::Delivery::retry), a
/// dropped delivery, an expired lease): attempt `n` failed waits `initial × multiplier^(n-1)`, at most `max`,
/// less up to `jitter_percent` of it (chosen per message, attempt and group). Set with
/// [`QueueBuilder::retry_backoff`](crate::QueueBuilder::retry_backoff); the wait is journaled like a nack's delay,
/// so a restart does not deliver the message before its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    initial: Duration,
    max: Duration,
    multiplier: u32,
    jitter_percent: u8,
}

impl RetryBackoff {
    /// Starts at `initial`, doubles with each failed attempt, stops growing at `max`; 20 % jitter.
    pub fn exponential(initial: Duration, max: Duration) -> RetryBackoff {
        RetryBackoff { initial, max, multiplier: 2, jitter_percent: 20 }
    }

    /// The factor between two consecutive waits (1 keeps them all at `initial`); at most
    /// [`RETRY_MULTIPLIER_MAX`].
    pub fn multiplier(mut self, multiplier: u32) -> RetryBackoff {
        self.multiplier = multiplier;
        self
    }

    /// Each wait is shortened by a share of it chosen per message and attempt, up to this percentage (0: none).
    pub fn jitter_percent(mut self, percent: u8) -> RetryBackoff {
        self.jitter_percent = percent;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidOption { option: "retry_backoff", reason });
        if self.initial.is_zero() || self.initial > self.max {
            return invalid(format!("initial {:?} must be above zero and at most max {:?}", self.initial, self.max));
        }
        if self.max > RETRY_DELAY_MAX {
            return invalid(format!("max {:?} is above {RETRY_DELAY_MAX:?}", self.max));
        }
        if !(1..=RETRY_MULTIPLIER_MAX).contains(&self.multiplier) {
            return invalid(format!("multiplier {} is outside 1..={RETRY_MULTIPLIER_MAX}", self.multiplier));
        }
        if self.jitter_percent > 100 {
            return invalid(format!("jitter {} % is above 100 %", self.jitter_percent));
        }
        Ok(())
    }

    /// The wait after the `attempts`-th delivery of the message at `offset` failed, in the group whose
    /// [`jitter_seed`] is `seed` (so that the groups do not all retry one message at the same moment).
    pub(crate) fn delay(&self, seed: u64, offset: u64, attempts: u32) -> Duration {
        debug_assert!(self.validate().is_ok(), "validated when the queue was opened");
        let mut delay = self.initial;
        for _ in 1..attempts {
            if delay >= self.max || self.multiplier == 1 {
                break; // at most log2(max / initial) rounds: never one per attempt
            }
            delay = delay.saturating_mul(self.multiplier);
        }
        let delay = delay.min(self.max);
        let share = mix(offset ^ seed, attempts) % 1_000_000 * u64::from(self.jitter_percent); // millionths of a %
        let cut_nanos = delay.as_nanos() * u128::from(share) / 100_000_000;
        delay.saturating_sub(Duration::from_nanos(cut_nanos.min(u128::from(u64::MAX)) as u64))
    }
}

/// A group's jitter seed: a hash of its name (FNV-1a).
pub(crate) fn jitter_seed(group_name: &str) -> u64 {
    group_name.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3))
}

/// A well-spread hash of two numbers (SplitMix64's finaliser).
fn mix(offset: u64, attempts: u32) -> u64 {
    let mut z = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(attempts).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_grow_by_the_multiplier_up_to_the_maximum() {
        let backoff = RetryBackoff::exponential(100 * MS, 1000 * MS).jitter_percent(0);
        let waits: Vec<Duration> = (1..=6).map(|attempt| backoff.delay(0, 7, attempt)).collect();
        assert_eq!(waits, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(backoff.delay(0, 7, u32::MAX), 1000 * MS, "no overflow, however many attempts");
        let flat = RetryBackoff::exponential(100 * MS, 1000 * MS).multiplier(1).jitter_percent(0);
        assert_eq!(flat.delay(0, 7, u32::MAX), 100 * MS);
        let longest = RetryBackoff::exponential(RETRY_DELAY_MAX, RETRY_DELAY_MAX).jitter_percent(0);
        assert_eq!(longest.delay(0, 7, u32::MAX), RETRY_DELAY_MAX);
    }

    #[test]
    fn jitter_shortens_within_its_share_and_spreads_messages() {
        let backoff = RetryBackoff::exponential(1000 * MS, 1000 * MS).jitter_percent(20);
        let waits: Vec<Duration> = (0..1000).map(|offset| backoff.delay(0, offset, 1)).collect();
        assert!(waits.iter().all(|&w| w > 800 * MS && w <= 1000 * MS), "{:?}", waits.iter().min());
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 900, "the same failure moment spreads out: {} distinct waits", distinct.len());
        assert_eq!(backoff.delay(0, 5, 1), backoff.delay(0, 5, 1), "deterministic");
        let (a, b) = (jitter_seed("billing"), jitter_seed("audit"));
        assert_ne!(backoff.delay(a, 5, 1), backoff.delay(b, 5, 1), "groups retry one message at different times");
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(RetryBackoff::exponential(Duration::ZERO, MS).validate().is_err());
        assert!(RetryBackoff::exponential(2 * MS, MS).validate().is_err());
        assert!(RetryBackoff::exponential(MS, MS).multiplier(0).validate().is_err());
        assert!(RetryBackoff::exponential(MS, MS).multiplier(17).validate().is_err());
        assert!(RetryBackoff::exponential(MS, MS).jitter_percent(101).validate().is_err());
        assert!(RetryBackoff::exponential(MS, Duration::MAX).validate().is_err());
        assert!(RetryBackoff::exponential(MS, MS).multiplier(1).jitter_percent(100).validate().is_ok());
    }
}
