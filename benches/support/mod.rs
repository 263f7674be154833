//! What the benches share: a node's INFO rendered the way a poll renders it, and a closure run
//! until a count or a time limit, then read as percentiles.

use std::time::{Duration, Instant};

use redis_lookout::collector::info::{info_families, parse_info};
use redis_lookout::metrics::{FamilySet, Interner, Rendered};

/// The INFO of a real Redis 7.0 master.
pub const INFO: &str = include_str!("../../tests/fixtures/info_master_7.0.txt");

/// What a poll makes of INFO `text`: parsed, turned into families (16 databases, as the
/// fixture's server has), `extra` added, rendered with the `base` labels.
pub fn render_info(
    text: &str,
    base: &[(&'static str, String)],
    interner: &Interner,
    extra: impl FnOnce(&mut FamilySet),
) -> Rendered {
    let info = parse_info(text);
    let mut set = FamilySet::new();
    info_families(&info, Some(16), &mut set);
    extra(&mut set);
    set.render(base, interner)
}

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
