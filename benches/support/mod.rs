//! What the benches share: run a closure until a count or a time limit, then read percentiles.

use std::time::{Duration, Instant};

/// Wall-clock times of up to `runs` calls of `f`, stopping at `limit`; sorted, shortest first.
pub fn time_runs(runs: usize, limit: Duration, mut f: impl FnMut()) -> Vec<Duration> {
    let mut times = Vec::with_capacity(runs);
    let deadline = Instant::now() + limit;
    while times.len() < runs && Instant::now() < deadline {
        let start = Instant::now();
        f();
        times.push(start.elapsed());
    }
    times.sort();
    times
}

/// The `p` quantile (0..=1) of sorted `times`, in seconds.
pub fn quantile(times: &[Duration], p: f64) -> f64 {
    times[((times.len() - 1) as f64 * p) as usize].as_secs_f64()
}
