//! Real faults: a Redis killed and restarted, a Redis frozen with SIGSTOP.

use crate::support::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn polls(m: &Exposition, target: &str) -> f64 {
    m.value("redis_lookout_polls_total", &[("target", target)])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_is_down_within_one_poll_and_up_within_one_poll_of_restart() {
    let mut redis = RedisServer::start(&[]);
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\npoll_timeout: 250ms\ntargets:\n  - name: r\n    url: {}\n",
        redis.url()
    ))
    .await;
    wait_for("up", WAIT, || async {
        let m = d.metrics().await;
        (m.value("redis_up", &[("target", "r")]) == Some(1.0)).then_some(())
    })
    .await;

    redis.kill();
    let at_kill = polls(&d.metrics().await, "r");
    let down = wait_for("redis_up 0", WAIT, || async {
        let m = d.metrics().await;
        (m.value("redis_up", &[("target", "r")]) == Some(0.0)).then_some(m)
    })
    .await;
    // The poll in flight at the kill may still have succeeded; the next one must fail.
    assert!(
        polls(&down, "r") - at_kill <= 2.0,
        "down after {} polls",
        polls(&down, "r") - at_kill
    );
    assert!(
        down.value("redis_memory_used_bytes", &[("target", "r")])
            .is_none(),
        "no stale Redis values while down"
    );
    assert_eq!(
        down.value("redis_exporter_last_scrape_error", &[("target", "r")]),
        Some(1.0)
    );
    let kind = down
        .all("redis_exporter_last_scrape_error")
        .first()
        .map(|l| l.labels["err"].clone())
        .unwrap();
    assert!(
        kind == "connection_refused" || kind == "connection",
        "error kind is a fixed word, got {kind}"
    );

    redis.restart();
    let at_restart = polls(&d.metrics().await, "r");
    let back = wait_for("redis_up 1 again", WAIT, || async {
        let m = d.metrics().await;
        (m.value("redis_up", &[("target", "r")]) == Some(1.0)).then_some(m)
    })
    .await;
    assert!(
        polls(&back, "r") - at_restart <= 2.0,
        "up after {} polls",
        polls(&back, "r") - at_restart
    );
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
        "poll_interval: 300ms\npoll_timeout: 200ms\ntargets:\n  - name: frozen\n    url: {}\n  - name: healthy\n    url: {}\n",
        frozen.url(),
        healthy.url()
    ))
    .await;
    for t in ["frozen", "healthy"] {
        wait_for("both up", WAIT, || async {
            let m = d.metrics().await;
            (m.value("redis_up", &[("target", t)]) == Some(1.0)).then_some(())
        })
        .await;
    }

    frozen.signal("STOP");
    let m = wait_for("timeout reported for the frozen target", WAIT, || async {
        let m = d.metrics().await;
        (m.value(
            "redis_exporter_last_scrape_error",
            &[("target", "frozen"), ("err", "timeout")],
        ) == Some(1.0))
        .then_some(m)
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

    let before = polls(&m, "healthy");
    let errors_before = m
        .all("redis_lookout_poll_errors_total")
        .iter()
        .filter(|l| l.labels["target"] == "healthy")
        .map(|l| l.value)
        .sum::<f64>();
    let m = wait_for("healthy target keeps polling", WAIT, || async {
        let m = d.metrics().await;
        (polls(&m, "healthy") >= before + 5.0).then_some(m)
    })
    .await;
    assert_eq!(m.value("redis_up", &[("target", "healthy")]), Some(1.0));
    let errors_after = m
        .all("redis_lookout_poll_errors_total")
        .iter()
        .filter(|l| l.labels["target"] == "healthy")
        .map(|l| l.value)
        .sum::<f64>();
    assert_eq!(
        errors_after, errors_before,
        "the healthy target had no failed poll"
    );
    // Timed-out polls on the frozen one kept coming too (no poller stuck forever).
    let frozen_timeouts = |m: &Exposition| {
        m.value(
            "redis_lookout_poll_errors_total",
            &[("target", "frozen"), ("kind", "timeout")],
        )
        .unwrap_or(0.0)
    };
    assert!(
        frozen_timeouts(&m) >= 2.0,
        "frozen target timed out {} times",
        frozen_timeouts(&m)
    );

    frozen.signal("CONT");
    wait_for("frozen target back", WAIT, || async {
        let m = d.metrics().await;
        (m.value("redis_up", &[("target", "frozen")]) == Some(1.0)).then_some(())
    })
    .await;
    d.stop().await;
}
