//! A cheap clock for timing every handler call (the `modpython_*_seconds`
//! self metrics). `Instant::now()` costs ~20 ns here, twice per call, on a
//! call path whose whole budget is a few hundred; the CPU's time-stamp
//! counter costs a few. Its rate is learnt against `Instant` over the life
//! of the process, so no calibration pause is needed at start.

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
}
