//! The binary as operators run it: bad configs, no Redis, outage logging, signals.

use crate::support::*;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn run_with_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    // A config that is (wrongly) accepted starts the daemon: no exit code by the deadline,
    // and the process is killed when `p` is dropped.
    let mut p = Running::start(&["--config", path.to_str().unwrap()]);
    let code = p.wait_exit(WAIT).and_then(|status| status.code());
    (code, path.display().to_string(), p.log_text())
}

#[test]
fn check_config_warns_of_unreadable_password_files_and_unread_redis_exporter_variables_are_refused()
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let missing = dir.path().join("no-such-secret");
    std::fs::write(
        &path,
        format!(
            "targets:
  - name: a
    url: redis://127.0.0.1:1
    password_file: {}
",
            missing.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["--config", path.to_str().unwrap(), "--check-config"])
        .env_remove("REDIS_ADDR")
        .output()
        .unwrap();
    // A warning (configs are checked where their secrets are not), naming target and file.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: target \"a\"") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );

    // redis_exporter's basic auth, set by the environment, is not read here: refused by name,
    // never echoed, rather than serving /metrics without the protection it asks for.
    let out = std::process::Command::new(binary())
        .args(["--redis.addr", "redis://127.0.0.1:1", "--check-config"])
        .env("REDIS_EXPORTER_BASIC_AUTH_PASSWORD", "hunter2-value")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("REDIS_EXPORTER_BASIC_AUTH_PASSWORD")
            && stderr.contains("--web.config.file"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2-value"), "{stderr}");

    // Variables redis_exporter reads, set to nothing by a deployment template: unset, as there.
    let mut empty = std::process::Command::new(binary());
    empty.args(["--redis.addr", "redis://127.0.0.1:1", "--check-config"]);
    for name in [
        "REDIS_EXPORTER_LOG_FORMAT",
        "REDIS_EXPORTER_LOG_LEVEL",
        "REDIS_EXPORTER_WEB_LISTEN_ADDRESS",
        "REDIS_EXPORTER_WEB_TELEMETRY_PATH",
        "REDIS_EXPORTER_SKIP_TLS_VERIFICATION",
        "REDIS_EXPORTER_TLS_CA_CERT_FILE",
        "REDIS_EXPORTER_TLS_CLIENT_CERT_FILE",
        "REDIS_EXPORTER_TLS_CLIENT_KEY_FILE",
        "REDIS_EXPORTER_TLS_SERVER_NAME",
        "REDIS_PASSWORD",
    ] {
        empty.env(name, "");
    }
    let out = empty.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listen [::]:9121"),
        "defaults kept"
    );

    // A deployment's redis_exporter settings that mean nothing different here start as they are
    // (seen in the wild: ping-on-connect, system metrics, namespace redis, connection timeout).
    let mut kept = std::process::Command::new(binary());
    kept.args(["--redis.addr", "redis://127.0.0.1:1", "--check-config"]);
    for (name, value) in [
        ("REDIS_EXPORTER_CONNECTION_TIMEOUT", "15s"),
        ("REDIS_EXPORTER_REDIS_ONLY_METRICS", "false"),
        ("REDIS_EXPORTER_PING_ON_CONNECT", "true"),
        ("REDIS_EXPORTER_INCL_SYSTEM_METRICS", "true"),
        ("REDIS_EXPORTER_NAMESPACE", "redis"),
        ("REDIS_EXPORTER_DEBUG", "false"),
        ("REDIS_EXPORTER_SET_CLIENT_NAME", "true"),
        ("REDIS_EXPORTER_EXCLUDE_LATENCY_HISTOGRAM_METRICS", "true"),
        ("REDIS_EXPORTER_IS_CLUSTER", "false"),
    ] {
        kept.env(name, value);
    }
    let out = kept.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // One that would change every name is refused, saying why.
    let out = std::process::Command::new(binary())
        .args(["--redis.addr", "redis://127.0.0.1:1", "--check-config"])
        .env("REDIS_EXPORTER_NAMESPACE", "myapp")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("only the default namespace"), "{stderr}");
}

#[test]
fn bad_config_files_exit_2_naming_file_line_and_column() {
    let cases = [
        (
            "unknown key",
            "targets:\n  - name: a\n    url: redis://127.0.0.1:1\n    colour: red\n",
            ":4:5: ",
        ),
        ("bad duration", "poll_interval: fast\n", ":1:16: "),
        ("bad url", "targets:\n  - url: ftp://example\n", ":2:"),
        (
            "duplicate name",
            "targets:\n  - name: a\n    url: redis://h1\n  - name: a\n    url: redis://h2\n",
            ":4:5: ",
        ),
        ("yaml syntax", "targets: [\n  - url: redis://h\n", ":"),
        ("wrong type", "targets: 5\n", ":1:10: "),
        // The logging library would take "verbose" for a target and log nothing at all.
        (
            "bad log level",
            "log_format: json\nlog_level: verbose\n",
            ":2:12: ",
        ),
    ];
    for (what, text, location) in cases {
        let (code, path, stderr) = run_with_config(text);
        assert_eq!(code, Some(2), "{what}: exit code; stderr: {stderr}");
        assert!(
            stderr.contains(&format!("{path}{location}")),
            "{what}: expected {path}{location} in {stderr:?}"
        );
    }
    // Found after parsing, and still pointed at.
    let (code, path, stderr) = run_with_config("poll_interval: 1s\npoll_timeout: 5s\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{path}:2:1: ")), "{stderr}");
    assert!(stderr.contains("poll_timeout"), "{stderr}");
}

#[test]
fn the_example_config_checks_clean() {
    let out = Command::new(binary())
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"))
        .arg("--check-config")
        .env_remove("REDIS_ADDR")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_redis_it_still_serves_and_says_so() {
    let closed = free_port();
    let mut p = Running::start(&[
        "--redis.addr",
        &format!("redis://127.0.0.1:{closed}"),
        "--poll-interval",
        "200ms",
    ]);
    let m = wait_for("metrics served", WAIT, || async {
        let m = p.metrics().await?;
        m.value("redis_up", &[]).is_some().then_some(m)
    })
    .await;
    assert_eq!(m.value("redis_up", &[]), Some(0.0));
    let (status, _) = http_get(p.addr, "/-/healthy").await;
    assert_eq!(status, 200);
    let (status, page) = http_get(p.addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("down") && page.contains("connection_refused"),
        "{page}"
    );
    assert!(p.alive());
    assert!(p.log_text().contains("target is down"), "{}", p.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_once_and_the_recovery_once() {
    let mut redis = RedisServer::start(&[]);
    let mut p = Running::start(&[
        "--redis.addr",
        &redis.url(),
        // Half a second each: a timeout under the loaded parallel suite would log an outage
        // of its own.
        "--poll-interval",
        "500ms",
        "--poll-timeout",
        "500ms",
    ]);
    wait_for("up", WAIT, || async {
        (p.metrics().await?.value("redis_up", &[])? == 1.0).then_some(())
    })
    .await;
    redis.kill();
    wait_for("6 failed polls", WAIT, || async {
        let m = p.metrics().await?;
        let failed: f64 = m
            .all("redis_lookout_poll_errors_total")
            .iter()
            .map(|l| l.value)
            .sum();
        (failed >= 6.0).then_some(())
    })
    .await;
    assert!(p.alive(), "the daemon must not exit when Redis dies");
    redis.restart();
    wait_for("up again", WAIT, || async {
        (p.metrics().await?.value("redis_up", &[])? == 1.0).then_some(())
    })
    .await;
    let log = p.log_text();
    assert_eq!(log.matches("target is down").count(), 1, "{log}");
    assert_eq!(log.matches("target is back up").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_it_cleanly() {
    let redis = RedisServer::start(&[]);
    let mut p = Running::start(&["--redis.addr", &redis.url(), "--poll-interval", "200ms"]);
    wait_for("ready", WAIT, || async {
        tokio::net::TcpStream::connect(p.addr).await.ok()?;
        (http_get(p.addr, "/-/ready").await.0 == 200).then_some(())
    })
    .await;
    let pid = p.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("exited after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

/// A SIGHUP (a reload) sent while the process still reads its configuration must not end it:
/// a deploy tool may send one right after a start. The config file is a FIFO, so the process
/// is held in the middle of reading it while the signal arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_start_is_a_reload_not_an_exit() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.yaml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut p = Running::start(&["--config", fifo.to_str().unwrap()]);
    // Opening the FIFO for writing returns once the process has opened it for reading.
    let writer = {
        let fifo = fifo.clone();
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(fifo))
    };
    let mut writer = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the process opens its config file")
        .unwrap()
        .unwrap();
    let pid = p.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    // kill(2) has made the signal pending: it is acted on before the blocked read returns.
    use std::io::Write;
    writer
        .write_all(b"targets:\n  - url: redis://127.0.0.1:1\n")
        .unwrap();
    drop(writer);
    wait_for("serving", WAIT, || async {
        tokio::net::TcpStream::connect(p.addr).await.ok()?;
        (http_get(p.addr, "/-/healthy").await.0 == 200).then_some(())
    })
    .await;
    assert!(p.alive(), "{}", p.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx() {
    let redis = RedisServer::start(&[]);
    let p = Running::start(&["--redis.addr", &redis.url()]);
    wait_for("serving", WAIT, || async { p.metrics().await.map(|_| ()) }).await;
    assert_eq!(http_get(p.addr, "/nope").await.0, 404);
    assert_eq!(http_request(p.addr, "POST", "/metrics").await.0, 405);
    assert_eq!(http_request(p.addr, "DELETE", "/").await.0, 405);
}

/// Why a target is down is logged with Redis' own words, and said again when the reason
/// changes: a user without INFO (kind auth, but the words say NOPERM and which command), then a
/// server at maxclients (which used to pass as a connect, then fail as "connection dropped").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_a_target_is_down_is_logged_in_redis_words() {
    let redis = RedisServer::start(&[]);
    redis.acl_setuser(&["noinfo", "on", ">Why-Pa55-down", "~*", "+@all", "-info"]);
    let mut p = Running::start(&[
        "--redis.addr",
        &format!("redis://noinfo:Why-Pa55-down@127.0.0.1:{}", redis.port),
        "--poll-interval",
        "300ms",
    ]);
    wait_for("the refusal logged", WAIT, || async {
        p.log_text()
            .contains("no permissions to run the 'info' command")
            .then_some(())
    })
    .await;
    let log = p.log_text();
    assert!(log.contains("target is down"), "{log}");

    // INFO allowed: up. Then the server is full and our connection is cut: a new reason.
    redis.acl_setuser(&["noinfo", "+info"]);
    wait_for("up", WAIT, || async {
        (p.metrics().await?.value("redis_up", &[])? == 1.0).then_some(())
    })
    .await;
    let mut holder = redis
        .client()
        .get_connection()
        .expect("a connection of our own");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg("1")
        .query(&mut holder)
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("noinfo")
        .query(&mut holder)
        .unwrap();
    let full = std::time::Instant::now() + WAIT;
    while !p.log_text().contains("max number of clients reached") {
        assert!(
            std::time::Instant::now() < full,
            "the full server never logged: {}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = p.log_text();
    assert!(
        !log.contains("Why-Pa55-down"),
        "the password in a log line: {log}"
    );
    assert!(p.alive());
}

/// `:port` (the default's form) listens on IPv6 and IPv4 alike, as redis_exporter's `:9121`
/// does: a straight swap must stay reachable on IPv6-only networks. (On a host without IPv6
/// at all only the IPv4 half can be checked, and the daemon falls back to it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_only_listen_address_serves_ipv6_and_ipv4() {
    let port = free_port();
    let mut child = Command::new(binary())
        .args([
            "--web.listen-address",
            &format!(":{port}"),
            "--redis.addr",
            "redis://127.0.0.1:1",
        ])
        .env_remove("REDIS_ADDR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut addrs: Vec<std::net::SocketAddr> = vec![([127, 0, 0, 1], port).into()];
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        addrs.push(format!("[::1]:{port}").parse().unwrap());
    }
    for addr in addrs {
        wait_for(&format!("/-/healthy on {addr}"), WAIT, || async move {
            tokio::net::TcpStream::connect(addr).await.ok()?;
            (http_get(addr, "/-/healthy").await.0 == 200).then_some(())
        })
        .await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_scrape_node_warns_of_a_refused_command_once_across_wakes() {
    let redis = RedisServer::start(&[]);
    redis.acl_setuser(&[
        "noconfig",
        "on",
        ">No-c0nfig-here",
        "~*",
        "+@all",
        "-config",
    ]);
    let p = Running::with_config(
        &format!(
            "poll_interval: 300ms\nscrape_idle: 1s\npolling: on_scrape\ntargets:\n  - name: r\n    url: redis://noconfig:No-c0nfig-here@127.0.0.1:{}\n",
            redis.port
        ),
        &[],
    );
    for wake in 0..2 {
        wait_for(&format!("wake {wake}: CONFIG refused"), WAIT, || async {
            tokio::net::TcpStream::connect(p.addr).await.ok()?;
            let (_, body) = http_get(p.addr, "/scrape?target=r").await;
            let refused = Exposition::parse(&body).value(
                "redis_lookout_collector_refused",
                &[("collector", "config")],
            );
            (refused == Some(1.0)).then_some(())
        })
        .await;
        wait_for(&format!("wake {wake}: let go"), WAIT, || async {
            redis.lookout_connections().is_empty().then_some(())
        })
        .await;
    }
    let log = p.log_text();
    assert_eq!(
        log.matches("Redis refused a collector's command").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("No-c0nfig-here"));
}

/// A redis_exporter command line for a cluster, unchanged (Go's single dashes, bool flags
/// without values): every node polled from the seed, its liveness and discovery paths answer,
/// and `-redis-only-metrics` leaves out the process' own metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_exporter_cluster_command_line_runs_unchanged() {
    let cluster = RedisCluster::start().await;
    let seed = cluster.addr(0);
    let p = Running::start(&[
        "-redis.addr",
        &seed,
        "-is-cluster",
        "-redis-only-metrics",
        "-ping-on-connect",
        "-include-system-metrics",
        "-set-client-name=true",
        "-namespace=redis",
        "-connection-timeout=2s",
        "--poll-interval",
        "300ms",
    ]);
    let all: std::collections::BTreeSet<String> = (0..6).map(|i| cluster.addr(i)).collect();
    let m = wait_for("all 6 nodes polled from the seed", WAIT, || async {
        let m = p.metrics().await?;
        (m.nodes_up() == all).then_some(m)
    })
    .await;
    assert_eq!(m.value("redis_cluster_masters_online", &[]), Some(3.0));
    assert!(
        !m.lines.iter().any(|l| l.name.starts_with("process_")),
        "process_* metrics with -redis-only-metrics"
    );
    let (status, body) = http_get(p.addr, "/health").await;
    assert_eq!((status, body.trim()), (200, "OK"));
    let (status, ours) = http_get(p.addr, "/discovery").await;
    assert_eq!(status, 200);
    let (status, theirs) = http_get(p.addr, "/discover-cluster-nodes").await;
    assert_eq!((status, theirs), (200, ours.clone()));
    let listed: std::collections::BTreeSet<String> =
        serde_json::from_str::<serde_json::Value>(&ours)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_owned))
            .filter(|t| t.contains(':'))
            .collect();
    assert_eq!(listed, all);
}

/// redis_exporter's key checks on its command line (`-check-keys`, `-count-keys`,
/// `-check-single-streams`) are read as the target's `watch:`: the queue's length, the pattern's
/// count and the stream's group lag under redis_exporter's names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_exporter_key_checks_are_watched() {
    let redis = RedisServer::start(&[]);
    let _: i64 = redis.cmd(&["RPUSH", "queue:mail", "a", "b", "c"]);
    for n in 0..4 {
        let _: () = redis.cmd(&["SET", &format!("session:{n}"), "x"]);
    }
    let _: String = redis.cmd(&["XADD", "events:orders", "*", "k", "v"]);
    let p = Running::start(&[
        "-redis.addr",
        &redis.url(),
        "-check-keys=db0=queue:*",
        "-count-keys=session:*",
        "-check-single-streams=events:orders",
        "--poll-interval",
        "200ms",
    ]);
    let m = wait_for("the key checks published", WAIT, || async {
        let m = p.metrics().await?;
        (m.value("redis_key_size", &[("key", "queue:mail")]) == Some(3.0)
            && m.value("redis_keys_count", &[("key", "session:*")]) == Some(4.0))
        .then_some(m)
    })
    .await;
    assert_eq!(
        m.value("redis_stream_length", &[("stream", "events:orders")]),
        Some(1.0)
    );
}
