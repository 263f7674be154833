//! What `/metrics` shows: labels per target, one header per family, promtool, the golden shape,
//! the slowlog counting, and that steady-state polling opens no new connections.

use crate::support::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// Lint complaints promtool makes about names we keep because redis_exporter publishes them
/// under exactly these names (dashboards and alerts depend on them).
const LEGACY_NAMES: &[&str] = &[
    "redis_aof_current_rewrite_duration_sec",
    "redis_aof_last_rewrite_duration_sec",
    "redis_current_eviction_exceeded_time_ms",
    "redis_dump_payload_sanitizations",
    "redis_eviction_exceeded_time_ms_total",
    "redis_expire_cycle_cpu_time_ms_total",
    "redis_io_threaded_reads_processed",
    "redis_io_threaded_writes_processed",
    "redis_memory_used_vm_total",
    "redis_migrate_cached_sockets_total",
    "redis_rdb_current_bgsave_duration_sec",
    "redis_rdb_last_bgsave_duration_sec",
    "redis_rdb_saves_total",
    "redis_total_error_replies",
    "redis_total_reads_processed",
    "redis_total_writes_processed",
    "redis_unexpected_error_replies",
    "redis_cluster_messages_received_total",
    "redis_cluster_messages_sent_total",
    "redis_key_group_count",
];
const NAMING_LINTS: &[&str] = &[
    "metric names should not contain abbreviated units",
    "counter metrics should have \"_total\" suffix",
    "non-counter metrics should not have \"_total\" suffix",
    "non-histogram and non-summary metrics should not have \"_count\" suffix",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_carries_its_target_and_each_family_has_one_header() {
    let sessions = RedisServer::start(&[]);
    let cache = RedisServer::start(&[]);
    let _: () = sessions.cmd(&["SET", "session:1", "x"]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: sessions\n    url: {}\n  - name: cache\n    url: {}\n",
        sessions.url(),
        cache.url()
    ))
    .await;
    // Both up in one exposition: either one's 200 ms poll can time out once under load.
    let m = d
        .metrics_when("sessions and cache up", WAIT, |m| {
            ["sessions", "cache"]
                .iter()
                .all(|t| m.value("redis_up", &[("target", t)]) == Some(1.0))
        })
        .await;

    // One # TYPE per family across targets, each family's samples together.
    m.assert_well_formed();
    for line in &m.lines {
        // The process' own families carry no target.
        let process_wide = [
            "redis_lookout_build_info",
            "redis_lookout_http_requests_total",
            "redis_lookout_config_last_reload_successful",
            "redis_lookout_config_last_reload_success_timestamp_seconds",
        ];
        let from_redis =
            line.name.starts_with("redis_") && !process_wide.contains(&line.name.as_str());
        if from_redis {
            let target = line.labels.get("target").map(String::as_str);
            assert!(
                matches!(target, Some("sessions" | "cache")),
                "{} has target {target:?}",
                line.name
            );
        }
    }
    assert_eq!(
        m.value("redis_db_keys", &[("target", "sessions"), ("db", "db0")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("redis_db_keys", &[("target", "cache"), ("db", "db0")]),
        Some(0.0)
    );
    assert_eq!(
        m.all("redis_db_keys").len(),
        32,
        "16 databases padded per target"
    );
    let role = m
        .all("redis_instance_info")
        .iter()
        .map(|l| l.labels["role"].clone())
        .collect::<Vec<_>>();
    assert_eq!(role, vec!["master", "master"]);
    d.stop().await;
}

/// Runs `promtool check metrics` on an exposition and fails the test on any complaint other
/// than naming lints on redis_exporter's own legacy names (or when promtool is missing).
pub(crate) fn assert_promtool_clean(text: &str, what: &str) {
    let Some((_, complaints)) = promtool_check_metrics(text) else {
        panic!("promtool not found: apt-get install prometheus");
    };
    let unexpected: Vec<&String> = complaints
        .iter()
        .filter(|line| {
            let legacy = LEGACY_NAMES
                .iter()
                .any(|n| line.starts_with(&format!("{n} ")));
            let naming = NAMING_LINTS.iter().any(|l| line.ends_with(l));
            !(legacy && naming)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "{what}: promtool complaints: {unexpected:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_output_passes_promtool_check_metrics() {
    let redis = RedisServer::start(&["--latency-monitor-threshold", "1"]);
    let _: () = redis.cmd(&["DEBUG", "SLEEP", "0.01"]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - url: {}\n",
        redis.url()
    ))
    .await;
    let target = format!("127.0.0.1:{}", redis.port);
    d.wait_up(&target).await;
    let body = d
        .body_when("the latency collector's spike", WAIT, |b| {
            b.contains("redis_latency_spike_duration_seconds")
        })
        .await;
    assert_promtool_clean(&body, "/metrics");
    d.stop().await;
}

/// gzip for clients that ask (Prometheus does), plain text for the rest, and never when the
/// config turns it off; `/scrape` the same. Each decodes to a valid exposition of the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expositions_are_gzipped_for_clients_that_ask_and_only_for_them() {
    let redis = RedisServer::start(&[]);
    let allow = format!(
        "scrape_allow:\n  - hosts: [\"127.0.0.1\"]\n    ports: {}\n",
        redis.port
    );
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\n{allow}targets:\n  - url: {}\n",
        redis.url()
    ))
    .await;
    let target = format!("127.0.0.1:{}", redis.port);
    d.wait_up(&target).await;
    let gzip = [("Accept-Encoding", "gzip, deflate")];
    let scrape = format!("/scrape?target={target}");
    for path in ["/metrics", scrape.as_str()] {
        let r = http_exchange(d.addr, "GET", path, &gzip).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{path}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{path}");
        let text = r.text();
        assert!(
            r.body.len() * 3 < text.len(),
            "{path}: {} bytes gzipped for {} of text",
            r.body.len(),
            text.len()
        );
        let m = Exposition::parse(&text);
        assert_eq!(m.value("redis_up", &[("target", &target)]), Some(1.0));
        assert_promtool_clean(&text, path);

        // Refused on one line, or over two lines that read as one list.
        for refused in [
            &[][..],
            &[("Accept-Encoding", "gzip;q=0, identity")][..],
            &[("Accept-Encoding", "gzip;q=0"), ("Accept-Encoding", "*")][..],
        ] {
            let r = http_exchange(d.addr, "GET", path, refused).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.header("content-encoding"), None, "{path} {refused:?}");
            let m = Exposition::parse(&r.text());
            assert_eq!(m.value("redis_up", &[("target", &target)]), Some(1.0));
        }
    }
    d.stop().await;

    let off = Daemon::start(&format!(
        "gzip: false\npoll_interval: 200ms\n{allow}targets:\n  - url: {}\n",
        redis.url()
    ))
    .await;
    off.wait_up(&target).await;
    for path in ["/metrics", scrape.as_str()] {
        let r = http_exchange(off.addr, "GET", path, &gzip).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-encoding"), None, "gzip: false, {path}");
        let m = Exposition::parse(&r.text());
        assert_eq!(m.value("redis_up", &[("target", &target)]), Some(1.0));
    }
    off.stop().await;
}

/// Family names, types and label names on a fresh Redis 7.0 standalone server, compared with
/// `tests/golden/families.txt`. Families whose presence depends on activity are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn families_match_the_golden_file() {
    let redis = RedisServer::start(&[]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - url: {}\n",
        redis.url()
    ))
    .await;
    let target = format!("127.0.0.1:{}", redis.port);
    // The HTTP counter appears after the first response, which may already find the target up.
    let m = d
        .metrics_when("up, and a response counted", WAIT, |m| {
            m.value("redis_up", &[("target", &target)]) == Some(1.0)
                && !m.all("redis_lookout_http_requests_total").is_empty()
        })
        .await;
    let volatile = |name: &str| {
        name.starts_with("process_")
            || name.starts_with("redis_errors_total")
            || name.starts_with("redis_latency_spike")
    };
    let mut got = String::new();
    for (family, (kind, labels)) in m.shapes() {
        if !volatile(&family) {
            got.push_str(&format!("{family} {kind} {}\n", labels.join(",")));
        }
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/families.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &got).expect("write golden");
    }
    let want = std::fs::read_to_string(path).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    let (got_lines, want_lines): (Vec<&str>, Vec<&str>) =
        (got.lines().collect(), want.lines().collect());
    let missing: Vec<&&str> = want_lines
        .iter()
        .filter(|l| !got_lines.contains(l))
        .collect();
    let extra: Vec<&&str> = got_lines
        .iter()
        .filter(|l| !want_lines.contains(l))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing: {missing:#?}\nextra: {extra:#?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_entries_are_counted_once_each_by_command() {
    let redis = RedisServer::start(&["--slowlog-log-slower-than", "10000"]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - url: {}\n",
        redis.url()
    ))
    .await;
    let target = format!("127.0.0.1:{}", redis.port);
    d.wait_up(&target).await;
    for _ in 0..5 {
        let _: () = redis.cmd(&["DEBUG", "SLEEP", "0.02"]);
    }
    let debug = [("cmd", "debug")];
    let m = d
        .metrics_when("5 slow debug entries", WAIT, |m| {
            m.value("redis_slowlog_entries_total", &debug) == Some(5.0)
        })
        .await;
    let seen_at = m.polls(&target);
    // Our five, plus any other command a loaded machine stretched past 10 ms: every entry is
    // counted once, under its own command.
    let length = m.value("redis_slowlog_length", &[]).unwrap();
    assert!(length >= 5.0, "slowlog length {length}");
    assert_eq!(m.sum("redis_slowlog_entries_total", &[]), length);
    assert!(
        m.value("redis_last_slow_execution_duration_seconds", &[])
            .unwrap()
            >= 0.01
    );
    assert_eq!(
        m.value("redis_slowlog_entry_duration_seconds_count", &[]),
        Some(length)
    );
    // Three more polls later the same entries have not been counted again.
    let m = d
        .metrics_when("3 more polls, the last one up", WAIT, |m| {
            m.polls(&target) >= seen_at + 3.0 && m.value("redis_up", &[]) == Some(1.0)
        })
        .await;
    assert_eq!(
        m.value("redis_slowlog_entries_total", &[("cmd", "debug")]),
        Some(5.0)
    );
    assert!(
        !m.lines.iter().any(|l| l
            .labels
            .values()
            .any(|v| v.to_ascii_lowercase().contains("sleep"))),
        "arguments (here the SLEEP subcommand) are never exported"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_polling_opens_no_new_connections() {
    let redis = RedisServer::start(&[]);
    let d = Daemon::start(&format!(
        "poll_interval: 100ms\ntargets:\n  - url: {}\n",
        redis.url()
    ))
    .await;
    let target = format!("127.0.0.1:{}", redis.port);
    let first = d.wait_up(&target).await;
    let received = |m: &Exposition| m.value("redis_connections_received_total", &[]).unwrap();
    let opened = |m: &Exposition| m.connections_opened(&target).unwrap();
    let later = d
        .metrics_when("10 more polls, the last one up", WAIT, |m| {
            m.polls(&target) >= first.polls(&target) + 10.0
                && m.value("redis_up", &[("target", &target)]) == Some(1.0)
        })
        .await;
    // A poll that times out (100 ms here, under a loaded parallel suite) drops its connection
    // by design, so a reply still in flight cannot answer the next poll. That is the only
    // reconnect allowed: one per timeout, and no other kind of error.
    let timeouts =
        later.poll_errors(&target, Some("timeout")) - first.poll_errors(&target, Some("timeout"));
    assert_eq!(
        later.poll_errors(&target, None) - first.poll_errors(&target, None),
        timeouts,
        "no poll error but timeouts"
    );
    assert_eq!(
        opened(&later) - opened(&first),
        timeouts,
        "a new connection only after a timed-out poll"
    );
    assert_eq!(
        received(&later) - received(&first),
        timeouts,
        "Redis saw no new connection from us but those"
    );
    let clients: String = redis.cmd(&["CLIENT", "LIST"]);
    assert_eq!(
        clients.matches("name=redis-lookout").count(),
        1,
        "{clients}"
    );
    d.stop().await;
}
