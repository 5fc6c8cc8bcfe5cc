//! Wall-clock time as walq stores it: milliseconds since the Unix epoch.

/// Milliseconds since the Unix epoch (0 if the clock is set before it). Read once per append call, straight from
/// `clock_gettime` in u64 arithmetic: `SystemTime::duration_since` and `Duration::as_millis`'s u128 division
/// showed in profiles of single appends.
pub(crate) fn now_ms() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let (Ok(seconds), Ok(nanoseconds)) = (u64::try_from(now.tv_sec), u64::try_from(now.tv_nsec)) else { return 0 };
    seconds.saturating_mul(1000).saturating_add(nanoseconds / 1_000_000)
}

/// Lets a warning about a lasting condition (a full disk under a write buffer retried every few milliseconds)
/// through at most once per [`WARNING_INTERVAL_MS`].
#[derive(Debug, Default)]
pub(crate) struct WarningThrottle {
    last_ms: std::sync::atomic::AtomicU64,
}

/// The shortest time between two warnings about the same lasting condition.
pub(crate) const WARNING_INTERVAL_MS: u64 = 10_000;

impl WarningThrottle {
    /// Whether to warn now (and if so, the next warning waits an interval).
    pub(crate) fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= WARNING_INTERVAL_MS
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_ms_is_the_system_time_in_milliseconds() {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let now = super::now_ms();
        let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!((before..=after).contains(&now), "{before} <= {now} <= {after}");
    }
}
