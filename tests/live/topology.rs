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

/// The configured seed is taken out of the cluster (`redis-cli --cluster del-node`, which resets
/// it to a cluster of itself) but keeps running: the view must not follow it into a cluster of
/// one, dropping every other node, but go on from a node that is still a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_removed_from_the_cluster_but_running_does_not_take_the_view_with_it() {
    let cluster = RedisCluster::start().await;
    let seed = RedisServer::cluster_node();
    let seed_addr = format!("127.0.0.1:{}", seed.port);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    cli(&["add-node", &seed_addr, &cluster.addr(0)]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\npoll_timeout: 150ms\ntargets:\n  - name: prod\n    url: redis://{seed_addr}\n    cluster: true\n"
    ))
    .await;
    let members: BTreeSet<String> = (0..6).map(|i| cluster.addr(i)).collect();
    let mut with_seed = members.clone();
    with_seed.insert(seed_addr.clone());
    wait_for("the seed and the 6 members discovered", WAIT, || async {
        (d.discovered().await == with_seed).then_some(())
    })
    .await;
    wait_for("every member knows the seed", WAIT, || async {
        cluster
            .nodes
            .iter()
            .all(|n| n.info_field_cluster("cluster_known_nodes") == "7")
            .then_some(())
    })
    .await;
    let id: String = seed.cmd(&["CLUSTER", "MYID"]);
    cli(&["del-node", &cluster.addr(0), &id]);
    let m = d
        .metrics_when("the 6 members polled, the seed gone", WAIT, |m| {
            m.nodes_up() == members
        })
        .await;
    assert_eq!(m.value("redis_cluster_masters_online", &[]), Some(3.0));
    assert_eq!(m.value("redis_lookout_cluster_view_up", &[]), Some(1.0));
    assert_eq!(
        d.discovered().await,
        members,
        "discovery lists the members only"
    );
    // Still so a few rounds later: the view did not go back to the seed's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(d.discovered().await, members);
    let nodes: String = seed.cmd(&["CLUSTER", "NODES"]);
    assert_eq!(
        nodes.lines().count(),
        1,
        "the seed is a cluster of itself: {nodes}"
    );
    d.stop().await;
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
            m.nodes_up() == all && m.value("redis_cluster_masters_online", &[]) == Some(3.0)
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
    let cluster_collector = m.all_with(
        "redis_lookout_collector_success",
        &[("collector", "cluster")],
    );
    assert_eq!(
        (
            cluster_collector.len(),
            cluster_collector.iter().all(|l| l.value == 1.0)
        ),
        (6, true),
        "CLUSTER INFO read on every node: {cluster_collector:?}"
    );
    assert!(
        m.all_with(
            "redis_lookout_collector_success",
            &[("collector", "sentinel")]
        )
        .is_empty(),
        "no Sentinel collector series on data nodes"
    );
    assert_eq!(d.discovered().await, all, "discovery lists every node");
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
        async move { (d.discovered().await == live).then_some(()) }
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
    // Other spellings of an admitted IPv4 address (the resolver reads 127.0.0.01 as 127.0.0.1)
    // are no second target: one address, one poller.
    for spelling in ["127.0.0.01", "0x7f.0.0.1", "2130706433"] {
        let (status, body) = http_get(
            d.addr,
            &format!("/scrape?target={spelling}:{}", secured.port),
        )
        .await;
        assert_eq!(status, 400, "{spelling}: {body}");
    }

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
    let p = Running::with_config(&yaml, &["--log-level", "error"]);
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
                // Merged in windows, each over the front of a reused buffer: nothing left over
                // from an earlier window, nothing split or doubled.
                m.assert_well_formed();
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
        m.assert_well_formed();
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
    // And a watched list per master, named outright (no pattern): asked of every primary, it
    // is answered by its own and MOVED by the others, which must not cost it its figure.
    let mut queues: Vec<(String, usize)> = Vec::new();
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
        let queue = format!("queue:{{{tag}}}");
        let length = 3 * (queues.len() + 1);
        for _ in 0..length {
            let _: usize = node.cmd(&["RPUSH", &queue, "job"]);
        }
        queues.push((queue, length));
    }
    let names: Vec<String> = queues.iter().map(|(q, _)| format!("\"{q}\"")).collect();
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: prod\n    url: redis://{}\n    cluster: true\n    keyspace:\n      prefixes: [\"cache:\"]\n      budget: 0.3\n    watch:\n      keys: [{}]\n",
        cluster.addr(0),
        names.join(", ")
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
        .all_with("redis_keyspace_prefix_keys", &[("prefix", "cache:")])
        .iter()
        .map(|l| (l.labels["node"].clone(), l.value))
        .collect();
    assert_eq!(per_node.len(), 3, "primaries only: {per_node:?}");
    assert_eq!(per_node.iter().map(|(_, v)| v).sum::<f64>(), written as f64);
    assert!(per_node.iter().all(|(n, _)| masters.contains(n)));
    let m = d
        .metrics_when("every watched queue's length", WAIT, |m| {
            queues
                .iter()
                .all(|(q, _)| !m.all_with("redis_key_size", &[("key", q)]).is_empty())
        })
        .await;
    for (queue, length) in &queues {
        let sizes = m.all_with("redis_key_size", &[("key", queue)]);
        assert_eq!(sizes.len(), 1, "{queue}: from its own primary only");
        assert_eq!(sizes[0].value, *length as f64, "{queue}");
    }
    d.stop().await;
}

/// The documented sharded config (`docs/prometheus/sharded-discovery.yml`) for two processes at
/// `a` and `b`, with only their addresses, the intervals and the rule file's path changed.
fn sharded_prometheus_config(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    let text = std::fs::read_to_string(repo("docs/prometheus/sharded-discovery.yml")).unwrap();
    let text = text
        .replace("127.0.0.1:9121", &a.to_string())
        .replace("127.0.0.1:9122", &b.to_string());
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("documented config");
    let global = config["global"].as_mapping_mut().expect("global:");
    for key in ["scrape_interval", "evaluation_interval", "scrape_timeout"] {
        global.insert(key.into(), "1s".into());
    }
    let rules = config["rule_files"].as_sequence_mut().expect("rule_files:");
    rules[0] = repo("alerts/redis.rules.yml").display().to_string().into();
    let jobs = config["scrape_configs"].as_sequence_mut().expect("jobs");
    for sd in jobs[0]["http_sd_configs"]
        .as_sequence_mut()
        .expect("http_sd_configs")
    {
        sd["refresh_interval"] = "1s".into();
    }
    serde_yaml::to_string(&config).unwrap()
}

/// The nodes whose `redis_up` a process serves at /metrics (those it polls now).
async fn polled_nodes(d: &Daemon) -> BTreeSet<String> {
    d.metrics()
        .await
        .all("redis_up")
        .iter()
        .filter_map(|l| l.labels.get("node").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_sharded_over_two_processes_is_polled_once_per_node_under_one_set_of_labels() {
    let mut cluster = RedisCluster::start().await;
    // Unnamed, as a bare config has it: the target's name is the seed's address, so /discovery
    // lists the roll-up and the seed node under one address, and one scrape must answer both.
    let seed = cluster.addr(0);
    let yaml = format!(
        "poll_interval: 500ms\npoll_timeout: 400ms\nscrape_idle: 3s\npolling: on_scrape\ntargets:\n  - url: redis://{seed}\n    cluster: true\n"
    );
    let (a, b) = (Daemon::start(&yaml).await, Daemon::start(&yaml).await);
    let all: BTreeSet<String> = (0..6).map(|i| cluster.addr(i)).collect();
    for d in [&a, &b] {
        wait_for(
            "each process lists every node and the roll-up",
            WAIT,
            || {
                let all = all.clone();
                async move { (d.discovered().await == all).then_some(()) }
            },
        )
        .await;
        assert!(
            polled_nodes(d).await.is_empty(),
            "no node is polled before a scrape asks"
        );
    }
    let connections = |c: &RedisCluster| -> usize {
        c.nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.lookout_connections().len())
            .sum()
    };
    assert_eq!(
        connections(&cluster),
        2,
        "one CLUSTER NODES connection per process, nothing else"
    );

    let prometheus = Prometheus::start(&sharded_prometheus_config(a.addr, b.addr)).await;
    // Each node once, labelled with the target's name and the node whichever process answered.
    let ups = |series: &[serde_json::Value]| -> Vec<(String, String, String)> {
        let mut out: Vec<(String, String, String)> = series
            .iter()
            .map(|s| {
                let label = |k: &str| s["metric"][k].as_str().unwrap_or_default().to_owned();
                let value = s["value"][1].as_str().unwrap_or_default().to_owned();
                (label("node"), label("target"), value)
            })
            .collect();
        out.sort();
        out
    };
    let want: Vec<(String, String, String)> = all
        .iter()
        .map(|n| (n.clone(), seed.clone(), "1".to_owned()))
        .collect();
    let prom = &prometheus;
    wait_for(
        "Prometheus has redis_up 1 once per node",
        Duration::from_secs(60),
        || {
            let want = want.clone();
            async move {
                let series = prom.query("redis_up{job=\"redis-nodes\"}").await.ok()?;
                (ups(&series) == want).then_some(())
            }
        },
    )
    .await;
    let masters = prom
        .query_expecting_series("redis_cluster_masters_online{job=\"redis-nodes\"}")
        .await
        .unwrap();
    assert_eq!(masters.len(), 1, "one roll-up series: {masters:?}");
    assert_eq!(masters[0]["metric"]["target"], seed.as_str());
    assert_eq!(masters[0]["value"][1], "3");
    let instances = prom
        .query("count by (node) (redis_instance_info{job=\"redis-nodes\"})")
        .await
        .unwrap();
    assert_eq!(instances.len(), 6, "{instances:?}");
    assert!(
        instances.iter().all(|s| s["value"][1] == "1"),
        "no node answered by both processes: {instances:?}"
    );

    // Each process polls the nodes hashed to it, and only those.
    let (on_a, on_b) = (polled_nodes(&a).await, polled_nodes(&b).await);
    assert!(on_a.is_disjoint(&on_b), "{on_a:?} {on_b:?}");
    assert_eq!(on_a.union(&on_b).cloned().collect::<BTreeSet<_>>(), all);

    // A replica dies. Once the cluster flags it failed, it stays listed and scraped (nothing
    // else polls it): redis_up 0 while the flag has stood for a few scrapes.
    let victim = cluster
        .roles()
        .iter()
        .find(|(_, master)| !master)
        .map(|(i, _)| *i)
        .unwrap();
    let victim_addr = cluster.addr(victim);
    cluster.nodes[victim].kill();
    let still_down = format!(
        "redis_up{{node=\"{victim_addr}\"}} == 0 and on() (min_over_time(redis_cluster_node_fail{{node=\"{victim_addr}\"}}[5s]) == 1)"
    );
    wait_for(
        "the failed node still scraped, down",
        Duration::from_secs(60),
        || {
            let expr = still_down.clone();
            async move { (prom.query(&expr).await.ok()?.len() == 1).then_some(()) }
        },
    )
    .await;
    assert!(a.discovered().await.contains(&victim_addr));

    // Nobody scrapes any more: after scrape_idle every node is let go, its connection too.
    drop(prometheus);
    wait_for("every node dormant again", WAIT, || async {
        let idle = polled_nodes(&a).await.is_empty()
            && polled_nodes(&b).await.is_empty()
            && connections(&cluster) == 2;
        idle.then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_scrape_target_and_its_replica_are_polled_only_while_scraped() {
    let master = RedisServer::start(&[]);
    let replica = RedisServer::replica_of(&master);
    let (m_addr, r_addr) = (
        format!("127.0.0.1:{}", master.port),
        format!("127.0.0.1:{}", replica.port),
    );
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\npoll_timeout: 250ms\nscrape_idle: 2s\ntargets:\n  - name: cache\n    url: redis://{m_addr}\n    follow_replicas: true\n    polling: on_scrape\n"
    ))
    .await;
    // The replica is found by the master's INFO replication, asked apart from polling.
    let both: BTreeSet<String> = [m_addr.clone(), r_addr.clone()].into();
    wait_for("discovery lists the master and its replica", WAIT, || {
        let both = both.clone();
        let d = &d;
        async move { (d.discovered().await == both).then_some(()) }
    })
    .await;
    // Ready without a poll, both nodes known: nothing is to be polled before a scrape. (Asked
    // before the nodes were declared, readiness held for an empty store whatever it did with
    // dormant nodes.)
    let (status, _) = http_get(d.addr, "/-/ready").await;
    assert_eq!(status, 200);
    assert_eq!(
        master.lookout_connections().len(),
        1,
        "the replica finder's"
    );
    assert!(replica.lookout_connections().is_empty());
    assert!(!d.body().await.contains("redis_up"), "nothing polled yet");

    // The replica by its address: its series alone, under the target's name and its node.
    let (status, body) = http_get(d.addr, &format!("/scrape?target={r_addr}")).await;
    assert_eq!(status, 200, "{body}");
    let scraped = Exposition::parse(&body);
    assert_eq!(scraped.all("redis_up").len(), 1, "{body}");
    assert_eq!(
        scraped.value(
            "redis_up",
            &[("target", "cache"), ("node", r_addr.as_str())]
        ),
        Some(1.0)
    );
    assert_eq!(replica.lookout_connections().len(), 1);
    let m = d.metrics().await;
    let nodes = |state: &str| m.value("redis_lookout_on_scrape_nodes", &[("state", state)]);
    assert_eq!((nodes("polled"), nodes("dormant")), (Some(1.0), Some(1.0)));
    // The target by name: its configured node (the master) alone, without a node label.
    let (status, body) = http_get(d.addr, "/scrape?target=cache").await;
    assert_eq!(status, 200, "{body}");
    let scraped = Exposition::parse(&body);
    let ups = scraped.all("redis_up");
    assert_eq!(ups.len(), 1, "{body}");
    assert_eq!(
        ups[0].labels.get("target").map(String::as_str),
        Some("cache")
    );
    assert!(!ups[0].labels.contains_key("node"));
    assert_eq!(ups[0].value, 1.0);
    // Anything else is not polled: there is no allow-list, and 404 says it is no known node.
    let (status, body) = http_get(d.addr, "/scrape?target=127.0.0.1:1").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("not a node of any polling: on_scrape target"),
        "{body}"
    );

    // Scraped a while: the replica's poller counts its polls.
    let replica_polls = || {
        let d = &d;
        let r_addr = r_addr.clone();
        async move {
            let (_, body) = http_get(d.addr, &format!("/scrape?target={r_addr}")).await;
            Exposition::parse(&body)
                .value("redis_lookout_polls_total", &[("node", r_addr.as_str())])
        }
    };
    let before = wait_for("a few polls of the replica", WAIT, || async {
        replica_polls().await.filter(|n| *n >= 3.0)
    })
    .await;

    // Not scraped for scrape_idle: both let go, series and connections.
    wait_for("master and replica dormant again", WAIT, || async {
        let idle = !d.body().await.contains("redis_up")
            && replica.lookout_connections().is_empty()
            && master.lookout_connections().len() == 1;
        idle.then_some(())
    })
    .await;
    // Woken again, a fresh poller counts from the start, as another shard's would (one that
    // went on from where it stopped could jump above what another process published since).
    let after = replica_polls().await.expect("the replica polled again");
    assert!(after < before, "polls_total {before} then {after}");
    assert_eq!(replica.lookout_connections().len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_scrape_node_on_a_unix_socket_is_scraped_by_the_path_discovery_lists() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let socket = socket.to_str().unwrap();
    let _redis = RedisServer::start(&["--unixsocket", socket, "--unixsocketperm", "700"]);
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\npolling: on_scrape\ntargets:\n  - name: local\n    url: unix://{socket}\n"
    ))
    .await;
    let want = BTreeSet::from([socket.to_owned()]);
    wait_for("discovery lists the socket's path", WAIT, || async {
        (d.discovered().await == want).then_some(())
    })
    .await;
    let encoded: String = url::form_urlencoded::byte_serialize(socket.as_bytes()).collect();
    let (status, body) = http_get(d.addr, &format!("/scrape?target={encoded}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Exposition::parse(&body).value("redis_up", &[("target", "local")]),
        Some(1.0),
        "{body}"
    );
    d.stop().await;
}
