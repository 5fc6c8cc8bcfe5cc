//! Wall-clock time as walq stores it: milliseconds since the Unix epoch.

/// Milliseconds since the Unix epoch (0 if the clock is set before it). Read once per append call: in u64
/// arithmetic, since `Duration::as_millis`'s u128 division showed in profiles of single appends.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().saturating_mul(1000).saturating_add(u64::from(d.subsec_millis())))
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
