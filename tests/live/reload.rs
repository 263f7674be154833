//! Reloading the configuration: `POST /-/reload` in-process, SIGHUP on the binary.

use crate::support::*;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn targets_yaml(targets: &[(&str, &RedisServer)], extra: &str) -> String {
    let mut text = format!("poll_interval: 200ms\n{extra}targets:\n");
    for (name, redis) in targets {
        text.push_str(&format!("  - name: {name}\n    url: {}\n", redis.url()));
    }
    text
}

fn port_of(m: &Exposition, target: &str) -> Option<String> {
    m.lines
        .iter()
        .find(|l| {
            l.name == "redis_instance_info"
                && l.labels.get("target").map(String::as_str) == Some(target)
        })
        .and_then(|l| l.labels.get("tcp_port").cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_target_changes_and_keeps_what_did_not_change() {
    let (a, b, c) = (
        RedisServer::start(&[]),
        RedisServer::start(&[]),
        RedisServer::start(&[]),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lookout.yaml");
    std::fs::write(
        &file,
        targets_yaml(&[("kept", &a), ("moved", &b), ("dropped", &c)], ""),
    )
    .unwrap();
    let d = Daemon::start_reloadable(&file).await;
    for t in ["kept", "moved", "dropped"] {
        d.wait_up(t).await;
    }
    assert_eq!(http_request(d.addr, "GET", "/-/reload").await.0, 405);
    assert_eq!(
        http_get(d.addr, "/scrape?target=x").await.0,
        404,
        "no allow-list yet"
    );
    let before = d.metrics().await;
    assert_eq!(port_of(&before, "moved"), Some(b.port.to_string()));
    let kept_connection = a.lookout_connections();
    assert_eq!(kept_connection.len(), 1, "{kept_connection:?}");

    // `moved` now points elsewhere, `dropped` goes, `added` comes, `kept` stays as it was; the
    // allow-list appears, and the listen address (a restart's business) changes.
    std::fs::write(
        &file,
        targets_yaml(
            &[("kept", &a), ("moved", &c), ("added", &b)],
            &format!(
                "listen: 127.0.0.1:1\nscrape_allow:\n  - hosts: [\"127.0.0.1\"]\n    ports: {}\n",
                a.port
            ),
        ),
    )
    .unwrap();
    let (status, text) = http_request(d.addr, "POST", "/-/reload").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("3 target(s): 1 added, 1 changed, 1 removed, 1 unchanged"),
        "{text}"
    );
    assert!(
        text.contains("not applied until a restart: listen"),
        "{text}"
    );
    // The changed target is served all along, from its old snapshot until the new task's
    // first poll (the added one, never polled yet, may hold readiness back until then).
    let right_after = d.metrics().await;
    assert!(right_after
        .value("redis_up", &[("target", "moved")])
        .is_some());
    let c_port = c.port.to_string();
    let m = d
        .metrics_when("the new target list in effect", WAIT, |m| {
            m.value("redis_up", &[("target", "added")]) == Some(1.0)
                && m.value("redis_up", &[("target", "dropped")]).is_none()
                && port_of(m, "moved").as_deref() == Some(c_port.as_str())
        })
        .await;
    // The unchanged target kept its task: the same connection, and its poll count went on.
    assert_eq!(a.lookout_connections(), kept_connection);
    assert_eq!(m.connections_opened("kept"), Some(1.0));
    assert!(m.polls("kept") >= before.polls("kept"));
    // The stopped tasks closed theirs: `dropped` polled c and `moved` polled b before.
    wait_for("old connections closed", WAIT, || async {
        (b.lookout_connections().len() == 1 && c.lookout_connections().len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        m.value("redis_lookout_config_last_reload_successful", &[]),
        Some(1.0)
    );
    let (status, _) = http_get(d.addr, &format!("/scrape?target=127.0.0.1:{}", a.port)).await;
    assert_eq!(status, 200, "the allow-list came with the reload");

    // An invalid file changes nothing and says where it is wrong.
    std::fs::write(
        &file,
        format!(
            "targets:\n  - name: kept\n    url: {}\n    bogus: 1\n",
            a.url()
        ),
    )
    .unwrap();
    let (status, text) = http_request(d.addr, "POST", "/-/reload").await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains(&format!("{}:4:5", file.display())), "{text}");
    let m = d.metrics().await;
    assert_eq!(
        m.value("redis_lookout_config_last_reload_successful", &[]),
        Some(0.0)
    );
    for t in ["kept", "moved", "added"] {
        assert!(
            m.value("redis_up", &[("target", t)]).is_some(),
            "{t} still polled"
        );
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binarys_config_file() {
    let (a, b) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lookout.yaml");
    std::fs::write(&file, targets_yaml(&[("first", &a)], "")).unwrap();
    let mut p = Running::start(&["--config", file.to_str().unwrap()]);
    wait_for("first up", WAIT, || async {
        let m = p.metrics().await?;
        (m.value("redis_up", &[("target", "first")]) == Some(1.0)).then_some(())
    })
    .await;

    std::fs::write(&file, targets_yaml(&[("first", &a), ("second", &b)], "")).unwrap();
    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    hup(p.child.id());
    wait_for("second up after SIGHUP", WAIT, || async {
        let m = p.metrics().await?;
        (m.value("redis_up", &[("target", "second")]) == Some(1.0)).then_some(())
    })
    .await;

    // A broken file: logged with its place, the process goes on with what it had.
    std::fs::write(&file, "targets: [\n").unwrap();
    hup(p.child.id());
    wait_for("the failed reload logged", WAIT, || async {
        p.log_text()
            .contains("configuration reload failed")
            .then_some(())
    })
    .await;
    assert!(p.alive(), "a bad reload does not stop the process");
    let log = p.log_text();
    assert!(log.contains(&format!("{}:", file.display())), "{log}");
    let m = p.metrics().await.expect("still serving");
    assert_eq!(m.value("redis_up", &[("target", "second")]), Some(1.0));
    assert_eq!(
        m.value("redis_lookout_config_last_reload_successful", &[]),
        Some(0.0)
    );
}
