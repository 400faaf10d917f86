//! The monotonic clock deadlines are kept by, read two ways:
//!
//! * [`monotonic_ns`]: precise, for deadlines and the time a module's
//!   calls took (one read per batch of calls, not per call);
//! * [`coarse_ns`]: as of the kernel's last tick, read from memory the
//!   kernel shares (no hardware clock), for what happens once per call on
//!   the hot path and needs wall time but not precision: when a call began,
//!   for its deadline; once-a-second checks. It lags the precise clock by up
//!   to [`coarse_lag_ns`].

use std::sync::OnceLock;

/// `CLOCK_MONOTONIC` in ns: the clock `Instant` reads on Linux.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the same clock as [`monotonic_ns`] as of
/// the kernel's last tick, read from memory the kernel shares (no hardware
/// clock, no system call). It lags the precise clock by up to
/// [`coarse_lag_ns`].
#[inline]
pub fn coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// How far [`coarse_ns`] can be behind [`monotonic_ns`]: one tick (its
/// resolution) plus one more for a tick handled late.
pub fn coarse_lag_ns() -> u64 {
    static LAG: OnceLock<u64> = OnceLock::new();
    *LAG.get_or_init(|| {
        let mut res = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `res` is a valid, writable timespec for the call's duration.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
        let tick = if rc == 0 {
            timespec_ns(&res)
        } else {
            // No coarse clock: assume the slowest tick Linux uses (100 Hz).
            10_000_000
        };
        2 * tick.max(1_000_000)
    })
}

#[inline]
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration;
    // both clock ids exist on every kernel Debian 12 runs (>= 2.6.32). On
    // failure `ts` stays zero, which callers read as "long ago".
    unsafe { libc::clock_gettime(clock, &mut ts) };
    timespec_ns(&ts)
}

fn timespec_ns(ts: &libc::timespec) -> u64 {
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_is_the_monotonic_clock_within_its_lag() {
        for _ in 0..1000 {
            let before = monotonic_ns();
            let coarse = coarse_ns();
            let after = monotonic_ns();
            assert!(coarse <= after, "{coarse} > {after}");
            assert!(coarse + coarse_lag_ns() > before, "{before} - {coarse}");
        }
    }
}
