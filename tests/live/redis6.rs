//! Redis 6.2, which Debian no longer ships but many still run: the poll, the keyspace census
//! and the key watcher against a real redis-server 6.2.14 (built by scripts/redis6 into
//! target/redis-6.2/, or the one `REDIS6_SERVER` names).

use crate::exposition::assert_promtool_clean;
use crate::keyspace::exact_census;
use crate::support::*;
use std::path::PathBuf;

fn redis6_server() -> Option<PathBuf> {
    let path = std::env::var_os("REDIS6_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/redis-6.2/redis-server")
        });
    path.is_file().then_some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_6_is_polled_sampled_and_watched() {
    let Some(program) = redis6_server() else {
        eprintln!("SKIPPED: no redis-server 6.2 (run scripts/redis6, or set REDIS6_SERVER)");
        return;
    };
    let redis = RedisServer::start_program(&program, &[]);
    let version = redis.info_field("server", "redis_version");
    assert!(version.starts_with("6."), "{version}");
    let (d, m, _) = exact_census(
        &redis,
        "",
        "    watch:\n      keys: [\"queue:notification:*\"]\n      max_matches: 5\n",
        "a census and a watch round on Redis 6",
        |m| m.value("redis_watch_rounds_total", &[]).unwrap_or(0.0) >= 1.0,
    )
    .await;
    assert_eq!(m.value("redis_up", &[]), Some(1.0));
    assert_eq!(
        m.all("redis_instance_info")
            .first()
            .map(|l| l.labels["redis_version"].clone()),
        Some(version)
    );
    m.assert_collectors_succeeded(&["info", "config", "slowlog", "latency"], "on Redis 6");
    assert!(
        m.value("redis_commands_total", &[("cmd", "set")])
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        m.all("redis_key_size").len(),
        5,
        "the watcher's capped matches"
    );
    let (_, body) = http_get(d.addr, "/metrics").await;
    assert_promtool_clean(&body, "Redis 6 /metrics");
    d.stop().await;
}
