//! No secret ever appears in a log line, a metric, a page or an error: every output of the
//! process is searched for a known password.

use crate::support::*;
use std::process::Command;
use std::time::Duration;

const PASSWORD: &str = "Kn0wn-Pa55word-xyzzy";

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "the password leaked into {what}:\n{text}"
    );
    // Also percent-encoded or in a URL's userinfo.
    assert!(
        !text.contains("Kn0wn-Pa55"),
        "part of the password leaked into {what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_appears_in_no_output_at_debug_level() {
    let redis = RedisServer::start(&["--requirepass", PASSWORD]);
    // TLS targets with the password in the URL: one polls, one fails its handshake (its
    // warnings must not carry the URL's password either).
    let pki = Pki::generate();
    let tls_redis = RedisServer::start_tls(&pki, true, &["--requirepass", PASSWORD]);
    let tls_url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", tls_redis.port);
    let tls = |ca: &str| {
        format!(
            "    tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\n",
            pki.path(ca),
            pki.path("client.crt"),
            pki.path("client.key")
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let config = dir.path().join("c.yaml");
    let closed = free_port();
    // An Alertmanager whose URL carries basic-auth credentials, and that is down: the
    // wrong-port target's RedisDown fires at once, and every failed push is logged.
    let alertmanager = format!("http://lookout:{PASSWORD}@127.0.0.1:{}", free_port());
    std::fs::write(
        &config,
        format!(
            "poll_interval: 200ms\ntargets:\n  - name: good\n    url: {}\n    password_file: {}\n  - name: wrong-port\n    url: redis://:{PASSWORD}@127.0.0.1:{closed}\n  - name: in-url\n    url: redis://:{PASSWORD}@127.0.0.1:{}\n  - name: tls-in-url\n    url: {tls_url}\n{}  - name: tls-wrong-ca\n    url: {tls_url}\n{}scrape_allow:\n  - hosts: [\"127.0.0.1\"]\n    ports: {}\n    password_file: {}\nalerting:\n  alertmanager: {alertmanager}\n  resend_interval: 1s\n  thresholds:\n    RedisDown: {{for: 0s}}\n",
            redis.url(),
            pw.display(),
            redis.port,
            tls("ca.crt"),
            tls("other-ca.crt"),
            redis.port,
            pw.display()
        ),
    )
    .unwrap();
    let p = Running::start(&["--config", config.to_str().unwrap(), "--log-level", "debug"]);
    let addr = p.addr;
    let m = wait_for(
        "both real targets up",
        Duration::from_secs(20),
        || async move {
            tokio::net::TcpStream::connect(addr).await.ok()?;
            let (_, body) = http_get(addr, "/metrics").await;
            let m = Exposition::parse(&body);
            let up = |t: &str| m.value("redis_up", &[("target", t)]) == Some(1.0);
            let tls_failed = m
                .value(
                    "redis_lookout_poll_errors_total",
                    &[("target", "tls-wrong-ca"), ("kind", "tls")],
                )
                .is_some_and(|n| n > 0.0);
            (up("good") && up("in-url") && up("tls-in-url") && tls_failed).then_some(body)
        },
    )
    .await;
    assert_clean("/metrics", &m);
    for path in [
        "/",
        "/alerts",
        "/discovery",
        "/-/ready",
        &format!("/scrape?target=127.0.0.1:{}", redis.port),
    ] {
        let (_, body) = http_get(addr, path).await;
        assert_clean(path, &body);
    }
    let (_, body) = http_get(
        addr,
        &format!("/scrape?target=redis://:{PASSWORD}@127.0.0.1:{closed}"),
    )
    .await;
    assert_clean("a refused /scrape", &body);

    let check = Command::new(binary())
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_clean("check output", &String::from_utf8_lossy(&check.stdout));
    assert_clean("check errors", &String::from_utf8_lossy(&check.stderr));
    let valid = Command::new(binary())
        .args(["--config", config.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_clean("--check-config", &String::from_utf8_lossy(&valid.stdout));

    let p = &p;
    let log = wait_for(
        "a failed Alertmanager push logged",
        Duration::from_secs(20),
        || async move {
            let log = p.log_text();
            log.contains("cannot push alerts").then_some(log)
        },
    )
    .await;
    assert!(log.contains("DEBUG"), "debug logging was on:\n{log}");
    assert!(
        log.contains("TLS handshake failed"),
        "the TLS failure was logged:\n{log}"
    );
    assert_clean("the log", &log);

    // A config refused for its Alertmanager URL shows that URL without its password.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("alerting:\n  alertmanager: ftp://lookout:{PASSWORD}@127.0.0.1:1\n"),
    )
    .unwrap();
    let refused = Command::new(binary())
        .args(["--config", bad.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must be http or https"), "{stderr}");
    assert_clean("a refused config", &stderr);
}
