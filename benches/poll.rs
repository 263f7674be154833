//! The CPU a poll spends on the process' side, without Redis: the INFO of a real Redis 7.0
//! master (`tests/fixtures/info_master_7.0.txt`) parsed, turned into families and rendered to
//! exposition text with a target label, as every poll of every node does. At a thousand targets
//! polled every 5 s this runs 200 times a second, beside the scrapes.
//!
//! `cargo bench --bench poll` prints the time per poll. Under `cargo test` (no `--bench`
//! argument) it runs once, as a smoke check.

use std::hint::black_box;
use std::time::Duration;

mod support;

use redis_lookout::metrics::Interner;

// The daemon's allocator (src/main.rs), since allocation is a large share of a poll's work.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn poll(text: &str, interner: &Interner) -> usize {
    let base = [("target", "t0042".to_owned())];
    support::render_info(text, &base, interner, |_| {})
        .text
        .len()
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let text = support::INFO;
    let interner = Interner::default();
    let bytes = poll(text, &interner);
    assert!(bytes > text.len() / 2, "rendered only {bytes} bytes");
    if !benching {
        return;
    }
    let times = support::time_runs(20_000, Duration::from_secs(10), || {
        black_box(poll(black_box(text), &interner));
    });
    let pct = |p: f64| support::quantile(&times, p) * 1e6;
    println!(
        "poll of one node ({} bytes of INFO, {bytes} bytes rendered): p50 {:.1} µs, p99 {:.1} µs, min {:.1} µs over {} runs",
        text.len(),
        pct(0.5),
        pct(0.99),
        pct(0.0),
        times.len(),
    );
}
