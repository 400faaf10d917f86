//! Cheap clocks for the call path, whose whole budget is a few hundred ns
//! per call, where `Instant::now()` costs ~20-25 ns in a virtual machine.
//!
//! * [`now`]: the CPU's time-stamp counter (a few ns), for timing every
//!   handler call (the `modpython_*_seconds` self metrics). Its rate is
//!   learnt against `Instant` over the life of the process, so no
//!   calibration pause is needed at start.
//! * [`coarse_ns`]: the kernel's monotonic clock as of its last tick, for
//!   what needs wall time but not precision (when a batch began, for the
//!   inline watchdog; once a second checks). [`monotonic_ns`] is the same
//!   clock read precisely, for the watchdog, which runs off the call path.

use std::sync::OnceLock;
use std::time::Instant;

static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();

/// The counter now; only differences mean anything.
#[inline]
pub fn now() -> u64 {
    raw()
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn raw() -> u64 {
    // SAFETY: rdtsc has no preconditions; every x86_64 CPU has it. Linux
    // leaves it usable from user space (and Debian's kernels keep the TSC
    // constant-rate and synchronised across CPUs where it is the clocksource).
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn raw() -> u64 {
    let anchor = ANCHOR.get_or_init(|| (Instant::now(), 0));
    anchor.0.elapsed().as_nanos() as u64
}

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

/// Starts learning the counter's rate; call once at init.
pub fn start() {
    ANCHOR.get_or_init(|| (Instant::now(), raw()));
}

/// Converts a number of counter ticks to seconds.
pub fn seconds(ticks: u64) -> f64 {
    let Some((instant, counter)) = ANCHOR.get() else {
        return 0.0;
    };
    let elapsed_ticks = raw().saturating_sub(*counter);
    let elapsed_ns = instant.elapsed().as_nanos() as f64;
    if elapsed_ticks == 0 {
        return 0.0;
    }
    ticks as f64 * elapsed_ns / elapsed_ticks as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_to_plausible_seconds() {
        start();
        let t0 = now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let measured = seconds(now() - t0);
        assert!((0.03..0.5).contains(&measured), "{measured}");
    }

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
