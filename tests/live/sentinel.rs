//! Sentinel-defined targets: a master, two replicas and three Sentinels, all real processes on
//! loopback. redis-lookout follows a failover without restart, counts it once, drops the old
//! master's series while it is down and polls it again as a replica once it is back; losing one
//! Sentinel changes nothing, losing two shows in the quorum metric.

use crate::support::*;
use std::time::Duration;

const MASTER: &str = "mymaster";
/// Sentinel needs down-after (1 s) plus an election and a promotion; generous for busy CI.
const FAILOVER: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    master: RedisServer,
    replicas: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

fn addr(server: &RedisServer) -> String {
    format!("127.0.0.1:{}", server.port)
}

/// Master + 2 replicas + 3 Sentinels (quorum 2), waiting until every Sentinel knows both
/// replicas and its two peers, so that a failover can be authorized.
async fn setup() -> Setup {
    let master = RedisServer::start(&[]);
    let replicas = vec![
        RedisServer::replica_of(&master),
        RedisServer::replica_of(&master),
    ];
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::sentinel(&master, MASTER, 2))
        .collect();
    for s in &sentinels {
        wait_for(
            "Sentinel knows the replicas and its peers",
            WAIT,
            || async {
                let replicas: Vec<redis::Value> = s.cmd(&["SENTINEL", "REPLICAS", MASTER]);
                let peers: Vec<redis::Value> = s.cmd(&["SENTINEL", "SENTINELS", MASTER]);
                (replicas.len() == 2 && peers.len() == 2).then_some(())
            },
        )
        .await;
    }
    Setup {
        master,
        replicas,
        sentinels,
    }
}

fn config(s: &Setup) -> String {
    let addrs: Vec<String> = s
        .sentinels
        .iter()
        .map(|x| format!("redis://{}", addr(x)))
        .collect();
    format!(
        "poll_interval: 500ms\ntargets:\n  - name: ha\n    sentinel:\n      master: {MASTER}\n      addrs: [{}]\n",
        addrs.join(", ")
    )
}

/// Who redis-lookout shows in which role, for a failing assertion's message.
fn roles(m: &Exposition) -> Vec<String> {
    m.all("redis_instance_info")
        .into_iter()
        .map(|l| {
            format!(
                "{} {}",
                l.labels.get("node").map(String::as_str).unwrap_or("-"),
                l.labels.get("role").map(String::as_str).unwrap_or("-")
            )
        })
        .collect()
}

/// The node redis-lookout shows with `role="master"` in redis_instance_info.
fn master_node(m: &Exposition) -> Option<String> {
    m.all("redis_instance_info")
        .into_iter()
        .filter(|l| l.labels.get("target").map(String::as_str) == Some("ha"))
        .find(|l| l.labels.get("role").map(String::as_str) == Some("master"))
        .and_then(|l| l.labels.get("node").cloned())
}

fn up(m: &Exposition, node: &str) -> Option<f64> {
    m.value("redis_up", &[("target", "ha"), ("node", node)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_target_follows_a_failover_and_survives_losing_sentinels() {
    let mut s = setup().await;
    let d = Daemon::start(&config(&s)).await;
    let old_master = addr(&s.master);
    let sentinel0 = addr(&s.sentinels[0]);

    // Every data node and every Sentinel is polled as a node of the target.
    let m = d
        .metrics_when("master, replicas and Sentinels polled", WAIT, |m| {
            let data = std::iter::once(&s.master)
                .chain(&s.replicas)
                .all(|x| up(m, &addr(x)) == Some(1.0));
            let sentinels = s.sentinels.iter().all(|x| up(m, &addr(x)) == Some(1.0));
            let sentinel_view =
                m.value("redis_sentinel_master_ok_slaves", &[("node", &sentinel0)]) == Some(2.0);
            data && sentinels && sentinel_view
        })
        .await;
    assert_eq!(master_node(&m).as_deref(), Some(old_master.as_str()));
    // The Sentinel collector speaks for the Sentinels only: a series on each of them, none on
    // the data nodes.
    let mut sentinel_collector: Vec<(String, f64)> = m
        .all_with(
            "redis_lookout_collector_success",
            &[("collector", "sentinel")],
        )
        .iter()
        .map(|l| (l.labels["node"].clone(), l.value))
        .collect();
    sentinel_collector.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(String, f64)> = s.sentinels.iter().map(|x| (addr(x), 1.0)).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(sentinel_collector, want);
    assert_eq!(
        m.value("redis_sentinel_failovers_total", &[("target", "ha")]),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            "redis_sentinel_master_ckquorum_status",
            &[("node", &sentinel0), ("message", "OK")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "redis_sentinel_master_ok_sentinels",
            &[("node", &sentinel0)]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.value(
            "redis_sentinel_master_status",
            &[("node", &sentinel0), ("master_status", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value("redis_sentinel_masters", &[("node", &sentinel0)]),
        Some(1.0)
    );
    // The data nodes are offered to Prometheus; the roll-up is not.
    let (_, discovery) = http_get(d.addr, "/discovery").await;
    for x in std::iter::once(&s.master)
        .chain(&s.replicas)
        .chain(&s.sentinels)
    {
        assert!(
            discovery.contains(&addr(x)),
            "{} in /discovery: {discovery}",
            addr(x)
        );
    }

    // Kill the master: Sentinel promotes a replica, and redis-lookout follows without restart.
    s.master.kill();
    let m = d
        .metrics_when("the promoted replica reported as master", FAILOVER, |m| {
            let new = master_node(m);
            let counted =
                m.value("redis_sentinel_failovers_total", &[("target", "ha")]) == Some(1.0);
            // Still polled (Sentinel lists it as a replica flagged down): RedisDown pages it.
            let down = up(m, &old_master) == Some(0.0);
            counted && down && new.is_some_and(|n| n != old_master)
        })
        .await;
    let new_master = master_node(&m).unwrap();
    // The subscription heard Sentinel announce it (polling alone would also have found it).
    let announced = d
        .metrics_when("the +switch-master announcement counted", WAIT, |m| {
            m.value(
                "redis_lookout_sentinel_switch_announcements_total",
                &[("target", "ha")],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(
        announced.value("redis_sentinel_failovers_total", &[("target", "ha")]),
        Some(1.0)
    );
    assert!(
        s.replicas.iter().any(|r| addr(r) == new_master),
        "the new master {new_master} is one of the replicas"
    );
    assert_eq!(
        m.value(
            "redis_lookout_sentinel_master_info",
            &[("target", "ha"), ("master_address", &new_master)]
        ),
        Some(1.0)
    );
    assert!(
        m.all("redis_instance_info")
            .iter()
            .all(|l| l.labels.get("node") != Some(&old_master)),
        "no Redis values of the old master while it is down"
    );

    // The old master comes back: Sentinel makes it a replica of the new master.
    s.master.restart();
    d.metrics_when("the old master polled again, as a replica", FAILOVER, |m| {
        m.all("redis_instance_info").iter().any(|l| {
            l.labels.get("node") == Some(&old_master)
                && l.labels.get("role").map(String::as_str) == Some("slave")
        }) && up(m, &old_master) == Some(1.0)
    })
    .await;

    // One Sentinel down: the target does not notice. (Compared with what the remaining
    // Sentinels say, and the count taken just before: a starved CI machine can make Sentinel
    // fail over again for real, which is then no fault of ours.)
    let failovers_before = d
        .metrics()
        .await
        .value("redis_sentinel_failovers_total", &[("target", "ha")]);
    // The one lost is the first listed: the one the view asked first and the +switch-master
    // subscription listens on, so both must move to another Sentinel.
    let observer = addr(&s.sentinels[1]);
    let lost = addr(&s.sentinels[0]);
    s.sentinels[0].kill();
    let m = d
        .metrics_when("one Sentinel down, still quorum", WAIT, |m| {
            up(m, &lost) == Some(0.0)
                && m.value("redis_sentinel_master_ok_sentinels", &[("node", &observer)])
                    == Some(2.0)
        })
        .await;
    let said: Vec<String> = s.sentinels[1].cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]);
    let current = said.join(":");
    if current == new_master {
        assert_eq!(
            m.value("redis_sentinel_failovers_total", &[("target", "ha")]),
            failovers_before,
            "roles {:?}",
            roles(&m)
        );
    }
    let m = d
        .metrics_when("the master Sentinel names", WAIT, |m| {
            master_node(m).as_deref() == Some(current.as_str())
        })
        .await;
    assert_eq!(
        m.value(
            "redis_sentinel_master_ckquorum_status",
            &[("node", &observer), ("message", "OK")]
        ),
        Some(1.0),
        "two Sentinels of three still make the quorum of 2"
    );
    assert_eq!(
        m.value("redis_lookout_sentinel_view_up", &[("target", "ha")]),
        Some(1.0)
    );
    // Two down: the surviving Sentinel cannot authorize a failover, and says so.
    s.sentinels[2].kill();
    let m = d
        .metrics_when("quorum lost", WAIT, |m| {
            m.value(
                "redis_sentinel_master_ckquorum_status",
                &[("node", &observer)],
            ) == Some(0.0)
        })
        .await;
    assert_eq!(
        m.value(
            "redis_sentinel_master_ckquorum_status",
            &[("node", &observer), ("message", "NOQUORUM")]
        ),
        Some(0.0)
    );
    // The data nodes are still followed through the last Sentinel.
    assert_eq!(master_node(&m).as_deref(), Some(current.as_str()));
    assert_eq!(up(&m, &current), Some(1.0));
    d.stop().await;
}

/// After a failover (config epoch 1), every Sentinel is told to monitor the master name anew,
/// at another server (`SENTINEL REMOVE`, `SENTINEL MONITOR`: epoch 0 again, as some operators'
/// scripts and charts do on restart). The Sentinels agree on the older epoch, so the view must
/// follow them rather than judge every answer stale for good; no failover is counted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_monitored_anew_is_followed_though_its_epoch_starts_over() {
    let s = setup().await;
    let d = Daemon::start(&config(&s)).await;
    let old_master = addr(&s.master);
    d.metrics_when("the master polled", WAIT, |m| {
        master_node(m).as_deref() == Some(old_master.as_str())
    })
    .await;
    let _: String = s.sentinels[0].cmd(&["SENTINEL", "FAILOVER", MASTER]);
    d.metrics_when("the forced failover followed", FAILOVER, |m| {
        m.value("redis_sentinel_failovers_total", &[("target", "ha")]) == Some(1.0)
            && master_node(m).is_some_and(|n| n != old_master)
    })
    .await;
    let fresh = RedisServer::start(&[]);
    let port = fresh.port.to_string();
    for sentinel in &s.sentinels {
        let _: String = sentinel.cmd(&["SENTINEL", "REMOVE", MASTER]);
        let _: String = sentinel.cmd(&["SENTINEL", "MONITOR", MASTER, "127.0.0.1", &port, "2"]);
    }
    let m = d
        .metrics_when("the master monitored anew followed", WAIT, |m| {
            master_node(m).as_deref() == Some(addr(&fresh).as_str())
        })
        .await;
    assert_eq!(
        m.value("redis_sentinel_failovers_total", &[("target", "ha")]),
        Some(1.0),
        "monitoring anew is no failover"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_families_match_redis_exporter_for_the_same_sentinel() {
    if !installed("prometheus-redis-exporter") {
        eprintln!("SKIPPED: prometheus-redis-exporter is not installed");
        return;
    }
    let s = setup().await;
    let d = Daemon::start(&config(&s)).await;
    let sentinel0 = addr(&s.sentinels[0]);
    let ours = d
        .metrics_when("Sentinel polled", WAIT, |m| {
            m.value("redis_sentinel_master_ok_slaves", &[("node", &sentinel0)]) == Some(2.0)
        })
        .await;
    let theirs = crate::compat::redis_exporter_output(&format!("redis://{sentinel0}"))
        .await
        .expect("redis_exporter runs");
    let sentinel_families = theirs
        .shapes()
        .keys()
        .filter(|f| f.starts_with("redis_sentinel_"))
        .count();
    assert!(
        sentinel_families >= 8,
        "redis_exporter published its Sentinel families ({sentinel_families})"
    );
    let problems = crate::compat::compare(&theirs, &ours, "ha");
    assert!(
        problems.is_empty(),
        "incompatibilities:\n{}",
        problems.join("\n")
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_judges_the_master_sentinel_names_and_says_when_none_does() {
    use crate::alerting::{run_check, CALM};
    let master = RedisServer::start(&["--maxmemory", "100mb"]);
    let sentinel = RedisServer::sentinel(&master, MASTER, 1);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, master_name: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "targets:\n  - name: {name}\n    sentinel:\n      master: {master_name}\n      addrs: [\"{}\"]\n{CALM}",
                sentinel.url()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let (code, report) = run_check(&["--config", &write("ha", MASTER)]);
    assert_eq!(code, Some(0), "a healthy master behind Sentinel: {report}");
    // A typo in the master name must not pass by polling the Sentinel itself.
    let (code, report) = run_check(&["--config", &write("typo", "no-such-master")]);
    assert_eq!(code, Some(2), "{report}");
    assert!(report.contains("no Sentinel"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_data_nodes_get_their_own_passwords_and_neither_leaks() {
    const DATA: &str = "data-pw-7Qx9";
    const SENTINEL: &str = "sentinel-pw-3Kd2";
    let master = RedisServer::start(&["--requirepass", DATA]);
    let sentinel = RedisServer::sentinel_with(
        &master,
        MASTER,
        1,
        &format!("sentinel auth-pass {MASTER} {DATA}\nrequirepass {SENTINEL}\n"),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_file = dir.path().join("data");
    let sentinel_file = dir.path().join("sentinel");
    std::fs::write(&data_file, format!("{DATA}\n")).unwrap();
    std::fs::write(&sentinel_file, format!("{SENTINEL}\n")).unwrap();
    let d = Daemon::start(&format!(
        "poll_interval: 500ms\ntargets:\n  - name: ha\n    password_file: {}\n    sentinel:\n      master: {MASTER}\n      addrs: [\"{}\"]\n      password_file: {}\n",
        data_file.display(),
        sentinel.url(),
        sentinel_file.display(),
    ))
    .await;
    let m = d
        .metrics_when(
            "master and Sentinel polled with their own passwords",
            WAIT,
            |m| up(m, &addr(&master)) == Some(1.0) && up(m, &addr(&sentinel)) == Some(1.0),
        )
        .await;
    assert_eq!(
        m.value(
            "redis_sentinel_master_ckquorum_status",
            &[("node", &addr(&sentinel))]
        ),
        Some(1.0)
    );
    for path in ["/metrics", "/discovery", "/"] {
        let (_, body) = http_get(d.addr, path).await;
        assert!(
            !body.contains(DATA) && !body.contains(SENTINEL),
            "a password in {path}"
        );
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_scrape_sentinel_target_lists_every_node_and_polls_only_what_is_scraped() {
    let s = setup().await;
    let d = Daemon::start(&format!(
        "scrape_idle: 2s\npolling: on_scrape\n{}",
        config(&s)
    ))
    .await;
    let mut want: std::collections::BTreeSet<String> = s
        .replicas
        .iter()
        .chain(&s.sentinels)
        .chain([&s.master])
        .map(addr)
        .collect();
    want.insert("ha".into());
    wait_for(
        "discovery lists the master, replicas, Sentinels and the roll-up",
        WAIT,
        || {
            let want = want.clone();
            let d = &d;
            async move { (d.discovered().await == want).then_some(()) }
        },
    )
    .await;
    assert!(!d.body().await.contains("redis_up"), "nothing polled yet");
    assert!(s.master.lookout_connections().is_empty());

    // The roll-up by the target's name; the master and a Sentinel by their addresses.
    let scrape = |target: String| {
        let d = &d;
        async move {
            let (status, body) = http_get(d.addr, &format!("/scrape?target={target}")).await;
            assert_eq!(status, 200, "{target}: {body}");
            Exposition::parse(&body)
        }
    };
    let roll_up = scrape("ha".into()).await;
    assert_eq!(
        roll_up.value("redis_lookout_sentinel_view_up", &[("target", "ha")]),
        Some(1.0)
    );
    assert!(roll_up.all("redis_up").is_empty(), "the roll-up alone");
    let master = addr(&s.master);
    let node = scrape(master.clone()).await;
    assert_eq!(
        node.value("redis_up", &[("target", "ha"), ("node", master.as_str())]),
        Some(1.0)
    );
    assert_eq!(node.all("redis_up").len(), 1);
    assert_eq!(s.master.lookout_connections().len(), 1);
    let sentinel = addr(&s.sentinels[0]);
    let node = scrape(sentinel.clone()).await;
    assert_eq!(
        node.value("redis_sentinel_masters", &[("node", sentinel.as_str())]),
        Some(1.0)
    );
    wait_for("the master let go after scrape_idle", WAIT, || async {
        s.master.lookout_connections().is_empty().then_some(())
    })
    .await;
    d.stop().await;
}
