//! `/metrics` assembly at fleet scale, without HTTP: 1000 nodes' snapshots rendered from the
//! INFO of a real Redis 7.0 master (`tests/fixtures/info_master_7.0.txt`, about 200 families
//! each), then merged into one exposition, the way a scrape does.
//!
//! `cargo bench --bench merge` prints the time per merge and the throughput. Under `cargo test`
//! (no `--bench` argument) it runs once on a small fleet, as a smoke check.

use std::hint::black_box;
use std::time::Duration;

mod support;

use redis_lookout::metrics::{Interner, Merger, Rendered};

fn fleet(nodes: usize) -> Vec<Rendered> {
    let interner = Interner::default();
    (0..nodes)
        .map(|n| {
            let base = [
                ("target", format!("t{n:04}")),
                ("node", format!("127.0.0.1:{}", 7000 + n)),
            ];
            support::render_info(support::INFO, &base, &interner, |set| {
                // Every tenth node a replica-ish extra family, so not every layout is the same.
                if n % 10 == 0 {
                    set.gauge("redis_extra_family", "only on some nodes", 1.0);
                }
            })
        })
        .collect()
}

/// As a scrape's frames are made: each window written over the front of one reused buffer.
fn merge(lists: &[Rendered]) -> usize {
    let mut merger = Merger::new(lists.iter().collect::<Vec<_>>());
    let mut written = 0;
    let mut chunk = Vec::new();
    while let Some(end) = merger.write_window(&mut chunk, 0) {
        written += end;
        black_box(&chunk[..end]);
    }
    written
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let nodes = if benching { 1000 } else { 10 };
    let lists = fleet(nodes);
    let bytes = merge(&lists);
    let input: usize = lists.iter().map(|l| l.text.len()).sum();
    assert!(bytes > input, "headers and samples: {bytes} <= {input}");
    if !benching {
        return;
    }
    let times = support::time_runs(200, Duration::from_secs(10), || {
        black_box(merge(&lists));
    });
    let pct = |p: f64| support::quantile(&times, p) * 1e3;
    println!(
        "merge of {nodes} nodes, {bytes} bytes: p50 {:.3} ms, p99 {:.3} ms, min {:.3} ms over {} runs ({:.0} MB/s at p50)",
        pct(0.5),
        pct(0.99),
        pct(0.0),
        times.len(),
        bytes as f64 / pct(0.5) / 1e3,
    );
}
