//! TLS to Redis: `rediss://` targets against a real `redis-server --tls-port` with certificates
//! made by the test. The right CA and client certificate poll; a wrong CA or a missing client
//! certificate is a poll error of kind `tls`, promptly (never a timeout); followed replicas and
//! cluster nodes inherit the target's TLS settings; redis_exporter's `--tls-*` flags work on
//! the binary.

use crate::support::*;
use std::time::Duration;

fn tls_block(pki: &Pki, ca: &str, client_cert: bool, extra: &str) -> String {
    let mut block = format!("    tls:\n      ca_file: {}\n", pki.path(ca));
    if client_cert {
        block.push_str(&format!(
            "      cert_file: {}\n      key_file: {}\n",
            pki.path("client.crt"),
            pki.path("client.key")
        ));
    }
    block.push_str(extra);
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_ca_and_client_certificate_poll_and_a_wrong_ca_or_no_certificate_is_a_tls_error()
{
    let pki = Pki::generate();
    let redis = RedisServer::start_tls(&pki, true, &[]);
    let url = redis.url();
    let yaml = format!(
        "poll_interval: 1s\npoll_timeout: 1s\ntargets:\n\
         - name: good\n    url: {url}\n{}\
         - name: by-name\n    url: {url}\n{}\
         - name: skip-verify\n    url: {url}\n{}\
         - name: wrong-ca\n    url: {url}\n{}\
         - name: no-client-cert\n    url: {url}\n{}",
        tls_block(&pki, "ca.crt", true, ""),
        tls_block(&pki, "ca.crt", true, "      server_name: localhost\n"),
        tls_block(
            &pki,
            "other-ca.crt",
            true,
            "      insecure_skip_verify: true\n"
        ),
        tls_block(&pki, "other-ca.crt", true, ""),
        tls_block(&pki, "ca.crt", false, ""),
    )
    .replace("\n- name", "\n  - name")
    .replace("targets:\n- name", "targets:\n  - name");
    let daemon = Daemon::start(&yaml).await;
    let m = daemon
        .metrics_when(
            "good targets up and refused ones failing with kind tls three times",
            Duration::from_secs(30),
            |m| {
                ["good", "by-name", "skip-verify"]
                    .iter()
                    .all(|t| m.value("redis_up", &[("target", t)]) == Some(1.0))
                    && m.poll_errors("wrong-ca", Some("tls")) >= 3.0
                    && m.poll_errors("no-client-cert", Some("tls")) >= 3.0
            },
        )
        .await;
    for bad in ["wrong-ca", "no-client-cert"] {
        assert_eq!(m.value("redis_up", &[("target", bad)]), Some(0.0), "{bad}");
        assert_eq!(
            m.value(
                "redis_exporter_last_scrape_error",
                &[("target", bad), ("err", "tls")]
            ),
            Some(1.0),
            "{bad} reports its last error as tls"
        );
        for other in ["timeout", "connection", "connection_refused", "protocol"] {
            assert_eq!(
                m.poll_errors(bad, Some(other)),
                0.0,
                "{bad} failed as {other}, not tls"
            );
        }
    }
    // The one persistent connection, not one per poll (a timed-out poll reconnects by design).
    assert_eq!(
        m.connections_opened("good"),
        Some(1.0 + m.poll_errors("good", Some("timeout")))
    );
    assert!(
        m.value("redis_connected_clients", &[("target", "good")])
            .is_some_and(|v| v >= 3.0),
        "INFO read over TLS"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_replicas_are_reached_with_the_targets_tls_settings() {
    let pki = Pki::generate();
    let master = RedisServer::start_tls(&pki, true, &[]);
    let master_port = master.port.to_string();
    let replica = RedisServer::start_tls(
        &pki,
        true,
        &[
            "--tls-replication",
            "yes",
            "--replicaof",
            "127.0.0.1",
            &master_port,
        ],
    );
    wait_for("replica in sync", Duration::from_secs(20), || async {
        replica
            .tls_cli(&pki, &["INFO", "replication"])
            .contains("master_link_status:up")
            .then_some(())
    })
    .await;
    let yaml = format!(
        "poll_interval: 300ms\npoll_timeout: 300ms\ntargets:\n  - name: main\n    url: {}\n    follow_replicas: true\n{}",
        master.url(),
        tls_block(&pki, "ca.crt", true, "")
    );
    let daemon = Daemon::start(&yaml).await;
    let node = format!("127.0.0.1:{}", replica.port);
    let m = daemon
        .metrics_when(
            "the replica polled over TLS",
            Duration::from_secs(30),
            |m| m.value("redis_up", &[("target", "main"), ("node", &node)]) == Some(1.0),
        )
        .await;
    assert_eq!(
        m.value(
            "redis_lookout_poll_errors_total",
            &[("target", "main"), ("node", &node), ("kind", "tls")]
        ),
        Some(0.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_are_discovered_and_polled_with_the_targets_tls_settings() {
    tls_cluster_is_polled(false).await;
}

/// Nodes that announce a host name (`cluster-announce-hostname`) and hold a certificate for
/// that name only, no IP: each discovered node, reached at the IP CLUSTER NODES gives, must be
/// checked for the name it announces (the target sets no `server_name`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_are_checked_for_the_host_name_they_announce() {
    tls_cluster_is_polled(true).await;
}

/// A 3-master TLS cluster, polled from its first node: every node up over TLS. `named`: the
/// nodes' certificates name `localhost` only, and the nodes announce it.
async fn tls_cluster_is_polled(named: bool) {
    let pki = Pki::generate();
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| match named {
            false => RedisServer::cluster_node_tls(&pki),
            true => RedisServer::cluster_node_tls_with(
                &pki,
                "named",
                &["--cluster-announce-hostname", "localhost"],
            ),
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = std::process::Command::new("redis-cli")
        .args(pki.cli_args())
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_for("cluster state ok", Duration::from_secs(30), || async {
        nodes
            .iter()
            .all(|n| {
                let info = n.tls_cli(&pki, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            })
            .then_some(())
    })
    .await;
    let seed = match named {
        false => nodes[0].url(),
        true => format!("rediss://localhost:{}", nodes[0].port),
    };
    let yaml = format!(
        "poll_interval: 300ms\npoll_timeout: 300ms\ntargets:\n  - name: tls-cluster\n    url: {seed}\n    cluster: true\n{}",
        tls_block(&pki, "ca.crt", true, "")
    );
    let daemon = Daemon::start(&yaml).await;
    let wanted = &addrs;
    let m = daemon
        .metrics_when(
            "every node discovered and up over TLS",
            Duration::from_secs(30),
            |m| {
                wanted.iter().all(|a| {
                    m.value("redis_up", &[("target", "tls-cluster"), ("node", a)]) == Some(1.0)
                })
            },
        )
        .await;
    assert_eq!(
        m.value("redis_cluster_masters_online", &[("target", "tls-cluster")]),
        Some(3.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_exporters_tls_flags_configure_the_single_target() {
    let pki = Pki::generate();
    let redis = RedisServer::start_tls(&pki, true, &[]);
    let url = redis.url();
    let p = Running::start(
        &[
            ["--redis.addr", url.as_str(), "--poll-interval", "300ms"].as_slice(),
            &tls_flags(&pki),
        ]
        .concat(),
    );
    let m = wait_for("up through the flags", Duration::from_secs(20), || async {
        p.metrics().await.filter(|m| any_up(m) == Some(1.0))
    })
    .await;
    assert_eq!(any_up(&m), Some(1.0));

    // A key file that is not a key stops the start with exit code 2, naming the file.
    let out = std::process::Command::new(binary())
        .args(["--redis.addr", &url, "--check-config"])
        .args(["--tls-client-cert-file", pki.path("client.crt")])
        .args(["--tls-client-key-file", pki.path("client.crt")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("client.crt"), "{stderr}");
}

/// redis_exporter's TLS flags for the test's CA and client certificate.
fn tls_flags(pki: &Pki) -> [&str; 6] {
    [
        "--tls-ca-cert-file",
        pki.path("ca.crt"),
        "--tls-client-cert-file",
        pki.path("client.crt"),
        "--tls-client-key-file",
        pki.path("client.key"),
    ]
}

fn any_up(m: &Exposition) -> Option<f64> {
    m.lines
        .iter()
        .find(|l| l.name == "redis_up")
        .map(|l| l.value)
}

/// The `--tls-*` flags reach `/scrape` targets too (an allow-list entry with `tls: true`), as
/// they do in redis_exporter: a private CA and a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_targets_over_tls_use_the_tls_flags() {
    let pki = Pki::generate();
    let redis = RedisServer::start_tls(&pki, true, &[]);
    let p = Running::with_config(
        &format!(
            "scrape_allow:\n  - hosts: [\"127.0.0.1\"]\n    ports: {}\n    tls: true\n",
            redis.port
        ),
        &tls_flags(&pki),
    );
    let target = format!("127.0.0.1:{}", redis.port);
    let m = wait_for("scraped over TLS", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(p.addr).await.ok()?;
        let (status, body) = http_get(p.addr, &format!("/scrape?target={target}")).await;
        let m = Exposition::parse(&body);
        (status == 200 && m.value("redis_up", &[("target", &target)]) == Some(1.0)).then_some(m)
    })
    .await;
    assert_eq!(
        m.value(
            "redis_exporter_last_scrape_error",
            &[("target", &target), ("err", "tls")]
        ),
        None
    );
}
