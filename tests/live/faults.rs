//! Real faults: a Redis killed and restarted, a Redis frozen with SIGSTOP, commands renamed away.

use crate::support::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_is_down_within_one_poll_and_up_within_one_poll_of_restart() {
    let mut redis = RedisServer::start(&[]);
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\npoll_timeout: 250ms\ntargets:\n  - name: r\n    url: {}\n",
        redis.url()
    ))
    .await;
    d.wait_up("r").await;

    redis.kill();
    let at_kill = d.metrics().await.polls("r");
    let down = d
        .metrics_when("redis_up 0", WAIT, |m| {
            m.value("redis_up", &[("target", "r")]) == Some(0.0)
        })
        .await;
    // The poll in flight at the kill may still have succeeded; the next one must fail.
    let polls_to_down = down.polls("r") - at_kill;
    assert!(polls_to_down <= 2.0, "down after {polls_to_down} polls");
    assert!(
        down.value("redis_memory_used_bytes", &[("target", "r")])
            .is_none(),
        "no stale Redis values while down"
    );
    assert_eq!(
        down.value("redis_exporter_last_scrape_error", &[("target", "r")]),
        Some(1.0)
    );
    let kind = down.all("redis_exporter_last_scrape_error")[0].labels["err"].clone();
    assert!(
        kind == "connection_refused" || kind == "connection",
        "error kind is a fixed word, got {kind}"
    );

    redis.restart();
    let at_restart = d.metrics().await.polls("r");
    let back = d.wait_up("r").await;
    let polls_to_up = back.polls("r") - at_restart;
    assert!(polls_to_up <= 2.0, "up after {polls_to_up} polls");
    assert!(
        back.value("redis_memory_used_bytes", &[("target", "r")])
            .unwrap()
            > 0.0
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_times_out_while_other_targets_keep_their_rhythm() {
    let frozen = RedisServer::start(&[]);
    let healthy = RedisServer::start(&[]);
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\npoll_timeout: 200ms\ntargets:\n  - name: frozen\n    url: {}\n  - name: healthy\n    url: {}\n    poll_interval: 1s\n    poll_timeout: 1s\n",
        frozen.url(),
        healthy.url()
    ))
    .await;
    // The healthy target's own deadline is a second: a frozen neighbour must not cost it a
    // single poll, while a 200 ms one could be missed under the loaded parallel suite alone.
    d.wait_up("frozen").await;
    d.wait_up("healthy").await;

    frozen.signal("STOP");
    let timed_out = [("target", "frozen"), ("err", "timeout")];
    let m = d
        .metrics_when("timeout reported for the frozen target", WAIT, |m| {
            m.value("redis_exporter_last_scrape_error", &timed_out) == Some(1.0)
        })
        .await;
    assert_eq!(m.value("redis_up", &[("target", "frozen")]), Some(0.0));
    // The poll was cut at the deadline, not before it.
    let took = m
        .value(
            "redis_exporter_last_scrape_duration_seconds",
            &[("target", "frozen")],
        )
        .unwrap();
    assert!(
        took >= 0.2,
        "a timed-out poll lasted {took} s, less than poll_timeout"
    );

    // Scrapes are answered from snapshots, many at once, while Redis is frozen.
    let scrapes = (0..16).map(|_| http_get(d.addr, "/metrics"));
    for (status, body) in futures_join_all(scrapes).await {
        assert_eq!(status, 200);
        assert!(body.contains("redis_up{target=\"frozen\"} 0"));
    }

    let healthy_errors = |m: &Exposition| m.poll_errors("healthy", None);
    let (before, errors_before) = (m.polls("healthy"), healthy_errors(&m));
    let m = d
        .metrics_when("healthy target keeps polling", WAIT, |m| {
            m.polls("healthy") >= before + 5.0
                && m.value("redis_up", &[("target", "healthy")]) == Some(1.0)
        })
        .await;
    assert_eq!(
        healthy_errors(&m),
        errors_before,
        "the healthy target had no failed poll"
    );
    let frozen_timeouts = m.poll_errors("frozen", Some("timeout"));
    assert!(
        frozen_timeouts >= 2.0,
        "timed-out polls kept coming: {frozen_timeouts}"
    );

    frozen.signal("CONT");
    d.wait_up("frozen").await;
    d.stop().await;
}

/// Managed services rename or block CONFIG, SLOWLOG and LATENCY. That is "no data", asked once
/// per connection, so the exporter does not inflate the server's error counters on every poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_commands_are_no_data_and_asked_once() {
    let redis = RedisServer::start(&[
        "--rename-command",
        "CONFIG",
        "",
        "--rename-command",
        "SLOWLOG",
        "",
        "--rename-command",
        "LATENCY",
        "",
        "--maxmemory",
        "12345678",
    ]);
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\npoll_timeout: 300ms\ntargets:\n  - name: m\n    url: {}\n",
        redis.url()
    ))
    .await;
    let first = d.wait_up("m").await;
    // INFO runs between CONFIG and SLOWLOG in the pipeline, so the refusals of the first poll
    // are all visible in the INFO of the second.
    let settled = d
        .metrics_when("2 more polls, the last one up", WAIT, |m| {
            m.polls("m") >= first.polls("m") + 2.0 && m.value("redis_up", &[]) == Some(1.0)
        })
        .await;
    let later = d
        .metrics_when("5 more polls, the last one up", WAIT, |m| {
            m.polls("m") >= settled.polls("m") + 5.0 && m.value("redis_up", &[]) == Some(1.0)
        })
        .await;
    later.assert_collectors_succeeded(
        &["config", "slowlog", "latency", "info"],
        "no data is not a failure",
    );
    for absent in ["cluster", "sentinel"] {
        assert!(
            later
                .all_with(
                    "redis_lookout_collector_duration_seconds",
                    &[("collector", absent)]
                )
                .is_empty()
                && later
                    .all_with("redis_lookout_collector_success", &[("collector", absent)])
                    .is_empty(),
            "the {absent} collector does not apply to a standalone node: no series for it"
        );
    }
    assert!(later.value("redis_config_maxmemory", &[]).is_none());
    assert!(later.value("redis_slowlog_length", &[]).is_none());
    assert_eq!(
        later.value("redis_memory_max_bytes", &[]),
        Some(12345678.0),
        "INFO still gives the limit"
    );
    let errors = |m: &Exposition| m.value("redis_total_error_replies", &[]).unwrap();
    assert!(
        errors(&settled) >= 3.0,
        "the first poll's refusals were counted by Redis"
    );
    // Asked once per connection: a poll that timed out under the loaded suite reconnects, and
    // the new connection asks (and is refused) once more.
    let opened = |m: &Exposition| m.connections_opened("m").unwrap();
    assert_eq!(
        errors(&later) - errors(&settled),
        3.0 * (opened(&later) - opened(&settled)),
        "no error replies after the first poll of a connection"
    );
    d.stop().await;
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// The first poll after Redis restarted between two polls (the kept connection found dead,
/// a new one made within the poll) asks afresh: it used to re-send what the collectors chose
/// for the old connection, and republish the old process' cached command stats beside the new
/// process' uptime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_poll_after_a_restart_publishes_nothing_of_the_old_process() {
    let mut redis = RedisServer::start(&[]);
    for _ in 0..50 {
        let _: Option<String> = redis.cmd(&["GET", "k"]);
    }
    // Command stats cached for an hour: only a fresh connection's first poll asks for them.
    let d = Daemon::start(&format!(
        "poll_interval: 2s\ncommand_stats_refresh: 1h\ntargets:\n  - name: r\n    url: {}\n",
        redis.url()
    ))
    .await;
    let run_id = |m: &Exposition| {
        m.all("redis_instance_info")
            .first()
            .map(|l| l.labels["run_id"].clone())
    };
    let gets = |m: &Exposition| m.value("redis_commands_total", &[("cmd", "get")]);
    let before = d
        .metrics_when("the GETs counted", WAIT, |m| gets(m) == Some(50.0))
        .await;
    let old = run_id(&before).unwrap();
    redis.restart();
    // Every snapshot of the new process, from the first: no GETs (the new one has had none).
    let after = d
        .metrics_when("a poll of the new process", WAIT, |m| {
            run_id(m).is_some_and(|id| id != old)
        })
        .await;
    assert_eq!(gets(&after), None, "the old process' GET count republished");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_poll_a_scrape_waits_on_does_not_queue_behind_unreachable_nodes() {
    use redis_lookout::collector::Refresh;
    use redis_lookout::config::{PasswordSource, RedisUrl, Target};
    use redis_lookout::poller::{NodePoller, PollContext, MAX_CONCURRENT_CONNECTS};
    use redis_lookout::snapshot::SnapshotStore;
    use std::sync::Arc;

    let redis = RedisServer::start(&[]);
    let store = Arc::new(SnapshotStore::new());
    let ctx = PollContext::new(
        store.clone(),
        Refresh {
            config: Duration::from_secs(60),
            command_stats: Duration::from_secs(30),
        },
    );
    // Every shared connect slot taken, as by unreachable nodes retrying their connects.
    let _held = ctx
        .connects
        .clone()
        .acquire_many_owned(MAX_CONCURRENT_CONNECTS as u32)
        .await
        .unwrap();
    let target = Arc::new(Target::plain(
        "r".into(),
        RedisUrl::parse(&redis.url()).unwrap(),
        None,
        PasswordSource::None,
        Duration::from_secs(1),
        Duration::from_secs(1),
    ));
    let mut queued = NodePoller::new(target.clone(), None, &ctx);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), queued.poll_and_publish())
            .await
            .is_err(),
        "a poll needing a connection waits for a shared slot"
    );
    let mut awaited = NodePoller::new(target, None, &ctx).scrape_waiting(&ctx);
    tokio::time::timeout(Duration::from_secs(30), awaited.poll_and_publish())
        .await
        .expect("the first poll of a node a scrape waits on connects at once");
    let up = store.snapshots(|(t, _), _| t == "r").first().map(|s| s.up);
    assert_eq!(up, Some(true));
}
