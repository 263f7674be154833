//! Drop-in compatibility: redis_exporter (Debian's `prometheus-redis-exporter`) and redis-lookout
//! read the same master and the same replica; every family redis_exporter publishes must be
//! published by redis-lookout with the same type and label names, except the deliberate
//! differences listed here with their reasons.

use crate::support::*;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Families redis_exporter has and we deliberately do not, and why.
const NOT_PUBLISHED: &[(&str, &str)] = &[
    ("go_", "Go runtime metrics of a Go process"),
    (
        "process_virtual_memory_max_bytes",
        "not offered by the Rust process collector; the limit is in /proc/PID/limits",
    ),
    (
        "redis_exporter_build_info",
        "ours is redis_lookout_build_info{version}",
    ),
    (
        "redis_exporter_scrape_duration_seconds",
        "a scrape never touches Redis here; see redis_lookout_poll_duration_seconds",
    ),
    (
        "redis_exporter_scrapes_total",
        "see redis_lookout_polls_total{target}",
    ),
    (
        "redis_target_scrape_request_errors_total",
        "see redis_lookout_poll_errors_total{target,kind}",
    ),
    (
        "redis_last_key_groups_scrape_duration_milliseconds",
        "key groups come with the keyspace sampler (its own issue)",
    ),
];

/// Families whose type we publish differently, and why.
const TYPE_DIFFERENCES: &[(&str, &str, &str)] = &[(
    "redis_expired_time_cap_reached_total",
    "counter",
    "monotonic in Redis; redis_exporter itself types it a counter since 1.45",
)];

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn redis_exporter_output(redis_url: &str) -> Option<Exposition> {
    let port = free_port();
    let child = Command::new("prometheus-redis-exporter")
        .args([
            "-redis.addr",
            redis_url,
            "-web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let _guard = Exporter(child);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let m = wait_for("redis_exporter serving", WAIT, || async move {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        let (status, body) = http_get(addr, "/metrics").await;
        let m = Exposition::parse(&body);
        (status == 200 && m.value("redis_up", &[]) == Some(1.0)).then_some(m)
    })
    .await;
    Some(m)
}

pub(crate) fn compare(theirs: &Exposition, ours: &Exposition, ours_target: &str) -> Vec<String> {
    let ours_shapes: BTreeMap<String, (String, Vec<String>)> = {
        let only: Vec<Line> = ours
            .lines
            .iter()
            .filter(|l| l.labels.get("target").is_none_or(|t| t == ours_target))
            .cloned()
            .collect();
        Exposition {
            types: ours.types.clone(),
            type_lines: 0,
            lines: only,
        }
        .shapes()
    };
    let mut problems = Vec::new();
    for (family, (kind, labels)) in theirs.shapes() {
        if NOT_PUBLISHED.iter().any(|(p, _)| family.starts_with(p)) {
            continue;
        }
        let Some((our_kind, our_labels)) = ours_shapes.get(&family) else {
            problems.push(format!("missing family {family} ({kind})"));
            continue;
        };
        let allowed = TYPE_DIFFERENCES
            .iter()
            .any(|(n, k, _)| *n == family && k == our_kind);
        if our_kind != &kind && !allowed {
            problems.push(format!(
                "{family}: type {our_kind}, redis_exporter has {kind}"
            ));
        }
        if our_labels != &labels {
            problems.push(format!(
                "{family}: labels {our_labels:?}, redis_exporter has {labels:?}"
            ));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_exporter_family_is_published_with_the_same_type_and_labels() {
    if !installed("prometheus-redis-exporter") {
        // CI installs it (.ci/run); a developer machine without it cannot run this comparison.
        eprintln!("SKIPPED: prometheus-redis-exporter is not installed");
        return;
    }
    let master = RedisServer::start(&["--latency-monitor-threshold", "1"]);
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let _: () = master.cmd(&["SET", "k", "v"]);
    let _: () = master.cmd(&["DEBUG", "SLEEP", "0.01"]);
    // An error reply, so errorstats has a line for both exporters to publish.
    let mut conn = master.client().get_connection().unwrap();
    let refused: redis::RedisResult<redis::Value> = redis::cmd("NOSUCHCOMMAND").query(&mut conn);
    assert!(refused.is_err());
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: master\n    url: {}\n  - name: replica\n    url: {}\n",
        master.url(),
        replica.url()
    ))
    .await;
    let ours = wait_for("replica linked and both polled", WAIT, || async {
        let m = d.metrics().await;
        let linked = m.value("redis_master_link_up", &[("target", "replica")]) == Some(1.0);
        let master_sees = m
            .value("redis_connected_slave_lag_seconds", &[("target", "master")])
            .is_some();
        (linked && master_sees).then_some(m)
    })
    .await;

    let theirs_master = redis_exporter_output(&master.url())
        .await
        .expect("redis_exporter runs");
    let theirs_replica = redis_exporter_output(&replica.url())
        .await
        .expect("redis_exporter runs");
    // Ours again, so both saw the same server state (errorstats, latency events).
    let ours = {
        let fresh = d.metrics().await;
        if fresh.lines.len() >= ours.lines.len() {
            fresh
        } else {
            ours
        }
    };
    let mut problems = compare(&theirs_master, &ours, "master");
    problems.extend(
        compare(&theirs_replica, &ours, "replica")
            .into_iter()
            .map(|p| format!("replica: {p}")),
    );
    assert!(
        problems.is_empty(),
        "incompatibilities:\n{}",
        problems.join("\n")
    );
    assert!(
        theirs_master.shapes().len() > 100,
        "redis_exporter output was read"
    );
    d.stop().await;
}
