//! Replication and cluster awareness, discovery, `/scrape` and many targets from one process.

use crate::support::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn lag(m: &Exposition, replica: &RedisServer) -> Option<f64> {
    m.value(
        "redis_replica_lag_seconds",
        &[("target", "m"), ("slave_port", &replica.port.to_string())],
    )
}

fn node_value(m: &Exposition, name: &str, node: &str) -> Option<f64> {
    m.value(name, &[("node", node)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_lags_by_the_seconds_it_has_been_frozen_and_recovers() {
    let master = RedisServer::start(&[]);
    let frozen = RedisServer::replica_of(&master);
    let other = RedisServer::replica_of(&master);
    let interval = 0.5;
    let d = Daemon::start(&format!(
        "poll_interval: 500ms\npoll_timeout: 400ms\ntargets:\n  - name: m\n    url: {}\n    follow_replicas: true\n",
        master.url()
    ))
    .await;
    let frozen_node = format!("127.0.0.1:{}", frozen.port);
    let other_node = format!("127.0.0.1:{}", other.port);
    d.metrics_when("both replicas linked and followed", WAIT, |m| {
        [&frozen_node, &other_node].iter().all(|n| {
            node_value(m, "redis_master_link_up", n) == Some(1.0)
                && node_value(m, "redis_up", n) == Some(1.0)
        }) && lag(m, &frozen) == Some(0.0)
    })
    .await;

    frozen.signal("STOP");
    let stopped_at = Instant::now();
    let mut conn = master.client().get_connection().unwrap();
    // Write for 4 s (bounded: 80 writes, 50 ms apart).
    for i in 0..80 {
        let _: () = redis::cmd("SET").arg("k").arg(i).query(&mut conn).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A poll of the master that began after the writes ended, so a poll that came late or
    // timed out under the loaded suite cannot leave the test reading an older lag.
    // The configured node's series carry no node label; followed replicas' do.
    let of_master = |m: &Exposition, name: &str| {
        m.all(name)
            .iter()
            .find(|l| !l.labels.contains_key("node"))
            .map(|l| l.value)
    };
    let master_polls = |m: &Exposition| of_master(m, "redis_lookout_polls_total");
    let frozen_at_end = stopped_at.elapsed().as_secs_f64();
    let polls_at_end = master_polls(&d.metrics().await).unwrap_or(0.0);
    let m = d
        .metrics_when(
            "a master poll after the writes, with both lags",
            WAIT,
            |m| {
                master_polls(m).unwrap_or(0.0) >= polls_at_end + 2.0
                    && of_master(m, "redis_up") == Some(1.0)
                    && lag(m, &frozen).is_some()
                    && lag(m, &other).is_some()
            },
        )
        .await;
    let frozen_at_read = stopped_at.elapsed().as_secs_f64();
    let frozen_lag = lag(&m, &frozen).unwrap();
    // Resolution is one poll: the lag is at most how long the replica has been frozen, and
    // at least that at the poll (after frozen_at_end) less two polls of history.
    assert!(
        frozen_lag <= frozen_at_read + 0.05 && frozen_lag >= frozen_at_end - 2.0 * interval,
        "frozen {frozen_at_end:.2}-{frozen_at_read:.2} s, lag says {frozen_lag:.2} s"
    );
    let other_lag = lag(&m, &other).unwrap();
    // Replicas acknowledge once a second, so a healthy one can trail by that much.
    assert!(
        other_lag <= 1.0 + 2.0 * interval,
        "healthy replica lag {other_lag}"
    );
    let bytes = m
        .value(
            "redis_replica_lag_bytes",
            &[("target", "m"), ("slave_port", &frozen.port.to_string())],
        )
        .unwrap();
    assert!(bytes > 0.0);

    frozen.signal("CONT");
    d.metrics_when("both replicas caught up", WAIT, |m| {
        lag(m, &frozen) == Some(0.0) && lag(m, &other) == Some(0.0)
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_leaves_no_stale_series_and_comes_back_when_restarted() {
    let master = RedisServer::start(&[]);
    let mut replica = RedisServer::replica_of(&master);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: m\n    url: {}\n    follow_replicas: true\n",
        master.url()
    ))
    .await;
    let node = format!("127.0.0.1:{}", replica.port);
    let port = replica.port.to_string();
    d.metrics_when("replica followed", WAIT, |m| {
        node_value(m, "redis_master_link_up", &node) == Some(1.0)
    })
    .await;

    replica.kill();
    let m = d
        .metrics_when("replica gone from the master's list", WAIT, |m| {
            m.value("redis_connected_slaves", &[("target", "m")]) == Some(0.0)
                && !m.lines.iter().any(|l| l.labels.get("node") == Some(&node))
        })
        .await;
    assert!(
        !m.lines
            .iter()
            .any(|l| l.labels.get("slave_port") == Some(&port)),
        "no series for the gone replica"
    );

    replica.restart();
    d.metrics_when("restarted replica linked again", WAIT, |m| {
        node_value(m, "redis_master_link_up", &node) == Some(1.0)
            && m.value(
                "redis_connected_slave_lag_seconds",
                &[("slave_port", &port)],
            )
            .is_some()
    })
    .await;
    d.stop().await;
}

fn roles_by_node(m: &Exposition) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = m
        .all("redis_cluster_node_info")
        .iter()
        .map(|l| (l.labels["node"].clone(), l.labels["role"].clone()))
        .collect();
    out.sort();
    out
}

async fn discovered(d: &Daemon) -> BTreeSet<String> {
    let (status, body) = http_get(d.addr, "/discovery").await;
    assert_eq!(status, 200);
    let groups: serde_json::Value = serde_json::from_str(&body).expect("discovery JSON");
    groups
        .as_array()
        .expect("a list of groups")
        .iter()
        .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_polled_from_one_seed_and_failovers_are_counted() {
    let mut cluster = RedisCluster::start().await;
    // The in-process evaluator judges the roll-up too: thresholds this test reaches.
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\npoll_timeout: 150ms\nscrape_allow:\n  - hosts: [\"192.0.2.1\"]\n    ports: \"6379\"\ntargets:\n  - name: prod\n    url: redis://{}\n    cluster: true\nalerting:\n  thresholds:\n    RedisClusterMastersLow: {{critical: 3, for: 0s}}\n    RedisClusterFailoverLoop: 0\n",
        cluster.addr(0)
    ))
    .await;
    let all: BTreeSet<String> = (0..6).map(|i| cluster.addr(i)).collect();
    let m = d
        .metrics_when("all 6 nodes polled", WAIT, |m| {
            let up: BTreeSet<String> = m
                .all("redis_up")
                .iter()
                .filter(|l| l.value == 1.0)
                .filter_map(|l| l.labels.get("node").cloned())
                .collect();
            up == all && m.value("redis_cluster_masters_online", &[]) == Some(3.0)
        })
        .await;
    assert_eq!(
        m.value("redis_cluster_failovers_total", &[("target", "prod")]),
        Some(0.0)
    );
    assert_eq!(
        m.all("redis_cluster_state")
            .iter()
            .filter(|l| l.value == 1.0)
            .count(),
        6
    );
    assert_eq!(m.sum("redis_cluster_node_slots", &[]), 16384.0);
    assert_eq!(discovered(&d).await, all, "discovery lists every node");
    // /scrape of the seed's address (as a per-node scrape of /discovery's list asks): the
    // node's own series, and the cluster's roll-up polled at that address beside them.
    let seed = cluster.addr(0);
    let (status, body) = http_get(d.addr, &format!("/scrape?target={seed}")).await;
    assert_eq!(status, 200, "{body}");
    let scraped = Exposition::parse(&body);
    assert_eq!(
        scraped.value("redis_up", &[("node", seed.as_str())]),
        Some(1.0),
        "the seed node's own series"
    );
    assert_eq!(
        scraped.value("redis_cluster_masters_online", &[]),
        Some(3.0)
    );
    assert_eq!(
        scraped.all("redis_up").len(),
        1,
        "only the node at that address"
    );
    assert!(!d.alert_firing("RedisClusterMastersLow").await);
    assert!(!d.alert_firing("RedisClusterFailoverLoop").await);

    // A manual failover: a replica takes over its master.
    let roles = cluster.roles();
    let replica = roles
        .iter()
        .find(|(_, master)| !master)
        .map(|(i, _)| *i)
        .unwrap();
    let replica_addr = cluster.addr(replica);
    // Only once the replica reports itself master is redis-lookout judged.
    cluster.fail_over_to(replica, WAIT).await;
    // The roll-up (CLUSTER NODES) and the node's own INFO come from separate polls, each at
    // its own phase of the interval: wait for both.
    let info_role = |m: &Exposition| {
        m.all("redis_instance_info")
            .iter()
            .find(|l| l.labels.get("node") == Some(&replica_addr))
            .map(|l| l.labels["role"].clone())
    };
    let m = d
        .metrics_when("failover counted and roles updated", WAIT, |m| {
            m.value("redis_cluster_failovers_total", &[]) == Some(1.0)
                && roles_by_node(m).contains(&(replica_addr.clone(), "master".into()))
                && info_role(m).as_deref() == Some("master")
        })
        .await;
    assert_eq!(m.value("redis_cluster_masters_online", &[]), Some(3.0));
    assert_eq!(
        m.value("redis_cluster_failovers_total", &[]),
        Some(1.0),
        "counted once"
    );
    wait_for(
        "RedisClusterFailoverLoop firing in-process",
        WAIT,
        || async {
            d.alert_firing("RedisClusterFailoverLoop")
                .await
                .then_some(())
        },
    )
    .await;

    // Kill a master while its replica is frozen, so nothing can take over yet. Not the shard
    // that just failed over: Redis refuses to promote a node demoted moments ago.
    let roles = cluster.roles();
    let victim = roles
        .iter()
        .find(|(i, master)| *master && *i != replica)
        .map(|(i, _)| *i)
        .unwrap();
    let victim_port = cluster.nodes[victim].port;
    let heir = (0..6)
        .find(|i| *i != victim && cluster.nodes[*i].master_port() == Some(victim_port))
        .expect("the master has a replica");
    let victim_addr = cluster.addr(victim);
    cluster.nodes[heir].signal("STOP");
    cluster.nodes[victim].kill();
    let m = d
        .metrics_when("masters online drops to 2", WAIT, |m| {
            m.value("redis_cluster_masters_online", &[]) == Some(2.0)
        })
        .await;
    assert_eq!(node_value(&m, "redis_up", &victim_addr), Some(0.0));
    wait_for("RedisClusterMastersLow firing in-process", WAIT, || async {
        d.alert_firing("RedisClusterMastersLow").await.then_some(())
    })
    .await;

    cluster.nodes[heir].signal("CONT");
    let heir_addr = cluster.addr(heir);
    let m = d
        .metrics_when("the replica is promoted", WAIT, |m| {
            m.value("redis_cluster_masters_online", &[]) == Some(3.0)
                && roles_by_node(m).contains(&(heir_addr.clone(), "master".into()))
        })
        .await;
    assert_eq!(m.value("redis_cluster_failovers_total", &[]), Some(2.0));
    let live: BTreeSet<String> = all.iter().filter(|a| **a != victim_addr).cloned().collect();
    wait_for("discovery lists exactly the live nodes", WAIT, || {
        let live = live.clone();
        let d = &d;
        async move { (discovered(d).await == live).then_some(()) }
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_polls_allowed_targets_with_their_own_credentials_and_refuses_the_rest() {
    let secured = RedisServer::start(&["--requirepass", "fleet-secret"]);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("fleet");
    std::fs::write(&pw, "fleet-secret\n").unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.3:0").expect("bind 127.0.0.3");
    refused.set_nonblocking(true).unwrap();
    let refused_addr = refused.local_addr().unwrap();
    // A configured target named like an address an entry admits: /scrape must answer it as
    // that target, not start a second poller (writing into its entry, and taking its series
    // away when that poller expires).
    let elsewhere = RedisServer::start(&[]);
    let named = format!("localhost:{}", secured.port);
    let d = Daemon::start(&format!(
        "poll_interval: 1s\nscrape_idle: 1s\ntargets:\n  - name: \"{named}\"\n    url: {}\nscrape_allow:\n  - hosts: [\"127.0.0.1\", \"localhost\"]\n    ports: {}\n    password_file: {}\n  - hosts: [\"localhost-*\"]\n    ports: {}\n",
        elsewhere.url(),
        secured.port,
        pw.display(),
        refused_addr.port()
    ))
    .await;
    d.wait_up(&named).await;
    let (status, body) = http_get(
        d.addr,
        &format!("/scrape?target=redis://LOCALHOST:{}", secured.port),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Exposition::parse(&body).value("redis_up", &[("target", &named)]),
        Some(1.0)
    );

    let target = format!("127.0.0.1:{}", secured.port);
    let (status, body) = http_get(d.addr, &format!("/scrape?target={target}")).await;
    assert_eq!(status, 200, "{body}");
    let m = Exposition::parse(&body);
    assert_eq!(
        m.value("redis_up", &[("target", &target)]),
        Some(1.0),
        "authenticated with the entry's password"
    );
    assert!(!body.contains("fleet-secret"));

    for bad in [
        refused_addr.to_string(),
        format!("redis://:fleet-secret@{refused_addr}"),
        format!("127.0.0.1:{}", secured.port + 1),
        "unix:///tmp/redis.sock".to_owned(),
        // `*` stays within one label: a name under the caller's own domain gets no password.
        format!("localhost-1.attacker.example:{}", refused_addr.port()),
    ] {
        let (status, _) = http_get(d.addr, &format!("/scrape?target={bad}")).await;
        assert_eq!(status, 403, "{bad} must be refused");
    }
    // The refusal came before any connection: nothing is waiting at the refused listener.
    assert!(matches!(refused.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
    assert_eq!(http_get(d.addr, "/scrape").await.0, 400);

    // Not scraped for scrape_idle: the poller and its series go away, and so does its connection.
    let m = d
        .metrics_when("idle on-demand poller expired", WAIT, |m| {
            m.value("redis_up", &[("target", &target)]).is_none()
        })
        .await;
    assert_eq!(
        m.value("redis_up", &[("target", &named)]),
        Some(1.0),
        "the configured target stays"
    );
    wait_for("its connection closed", WAIT, || async {
        let mut c = redis::Client::open(format!("redis://:fleet-secret@{target}"))
            .unwrap()
            .get_connection()
            .ok()?;
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).ok()?;
        (!list.contains("name=redis-lookout")).then_some(())
    })
    .await;
    d.stop().await;

    let plain = Daemon::start("targets:\n  - url: redis://127.0.0.1:1\n").await;
    assert_eq!(
        http_get(plain.addr, "/scrape?target=127.0.0.1:1").await.0,
        404,
        "off without an allow-list"
    );
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_targets_with_a_third_down_are_all_polled_from_one_process() {
    let servers: Vec<RedisServer> = (0..4).map(|_| RedisServer::start(&[])).collect();
    let closed = free_port();
    let mut yaml = String::from("poll_interval: 2s\npoll_timeout: 1s\ntargets:\n");
    let mut expect_down = BTreeSet::new();
    for i in 0..1000 {
        let url = if i % 3 == 2 {
            expect_down.insert(format!("t{i}"));
            format!("redis://127.0.0.1:{closed}")
        } else {
            servers[i % 4].url()
        };
        yaml.push_str(&format!("  - name: t{i}\n    url: {url}\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(&path, yaml).unwrap();
    let p = Running::start(&["--config", path.to_str().unwrap(), "--log-level", "error"]);
    let addr = p.addr;
    // One exposition in which all 1000 are present and exactly the closed-port third is down
    // (waited for: under the parallel suite a healthy target's poll can still miss 1 s once).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no exposition yet");
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (status, body) = http_get(addr, "/metrics").await;
            let m = Exposition::parse(&body);
            let ups = m.all("redis_up");
            let down: BTreeSet<String> = ups
                .iter()
                .filter(|l| l.value != 1.0)
                .map(|l| l.labels["target"].clone())
                .collect();
            if status == 200 && ups.len() == 1000 && down == expect_down {
                break;
            }
            let wrongly_down: Vec<_> = down.difference(&expect_down).take(5).collect();
            let wrongly_up: Vec<_> = expect_down.difference(&down).take(5).collect();
            last = format!(
                "status {status}, {} redis_up series, {} down; down but reachable (first 5): \
                 {wrongly_down:?}; up but closed (first 5): {wrongly_up:?}",
                ups.len(),
                down.len()
            );
        }
        assert!(Instant::now() < deadline, "after 60 s: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(addr, "/-/ready").await.0, 200);
    // gzip at this size: windows merged and compressed ahead one at a time, framed as one
    // gzip member that decodes to the same fleet (waited for like the plain one above).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http_exchange(addr, "GET", "/metrics", &[("Accept-Encoding", "gzip")]).await;
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        let text = r.text();
        assert!(
            text.len() > 4 << 20,
            "{} bytes: too small to be merged ahead in several windows",
            text.len()
        );
        let m = Exposition::parse(&text);
        let ups = m.all("redis_up");
        assert_eq!(ups.len(), 1000);
        let down: BTreeSet<String> = ups
            .iter()
            .filter(|l| l.value != 1.0)
            .map(|l| l.labels["target"].clone())
            .collect();
        if down == expect_down {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gzipped: {} down, expected {}",
            down.len(),
            expect_down.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss_kb < 100.0 * 1024.0, "RSS {rss_kb} kB at 1000 targets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyspace_sampler_runs_on_each_primary_of_a_cluster() {
    let cluster = RedisCluster::start().await;
    // A hash tag per master, so each master gets keys of its own.
    let roles = cluster.roles();
    let mut written = 0u64;
    for (i, _) in roles.iter().filter(|(_, master)| *master) {
        let node = &cluster.nodes[*i];
        let ranges: String = node.cmd(&["CLUSTER", "NODES"]);
        let mine = ranges
            .lines()
            .find(|l| l.contains("myself"))
            .unwrap()
            .to_owned();
        let (lo, hi): (u32, u32) = mine
            .split_whitespace()
            .skip(8)
            .find_map(|r| {
                r.split_once('-')
                    .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
            })
            .unwrap();
        let tag = (0..100_000)
            .map(|n| format!("t{n}"))
            .find(|t| {
                let slot: u32 = node.cmd(&["CLUSTER", "KEYSLOT", t]);
                slot >= lo && slot <= hi
            })
            .unwrap();
        for k in 0..500 {
            let _: () = node.cmd(&["SET", &format!("cache:{{{tag}}}:{k}"), "v"]);
        }
        written += 500;
    }
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: prod\n    url: redis://{}\n    cluster: true\n    keyspace:\n      prefixes: [\"cache:\"]\n      budget: 0.3\n",
        cluster.addr(0)
    ))
    .await;
    let masters: Vec<String> = roles
        .iter()
        .filter(|(_, m)| *m)
        .map(|(i, _)| cluster.addr(*i))
        .collect();
    let m = d
        .metrics_when("a census on every primary", WAIT, |m| {
            masters
                .iter()
                .all(|n| m.value("redis_keyspace_estimate", &[("node", n.as_str())]) == Some(0.0))
        })
        .await;
    let per_node: Vec<(String, f64)> = m
        .all("redis_keyspace_prefix_keys")
        .iter()
        .map(|l| (l.labels["node"].clone(), l.value))
        .collect();
    assert_eq!(per_node.len(), 3, "primaries only: {per_node:?}");
    assert_eq!(per_node.iter().map(|(_, v)| v).sum::<f64>(), written as f64);
    assert!(per_node.iter().all(|(n, _)| masters.contains(n)));
    d.stop().await;
}
