//! The alert pack end to end: promtool on the rule file, a real Alertmanager receiving the
//! in-process alerts, and the `check` command's report and exit codes.

use crate::support::*;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_rule_file_passes_promtool_check_and_its_unit_tests() {
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("alerts/redis.rules.yml"))
        .output()
        .expect("promtool (apt-get install prometheus)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "redis.rules.test.yml"])
        .current_dir(repo("alerts/tests"))
        .output()
        .expect("promtool");
    let out =
        String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The in-process evaluator writes each alert's description as Prometheus writes it from
/// `alerts/redis.rules.yml`: every rule's description, over values that take every branch of
/// `humanize`, `humanizePercentage`, `humanizeDuration` and Go's `%v`, with and without a
/// `node` label, rendered by `template::render` and given to `promtool test rules` as what
/// Prometheus must produce.
#[test]
fn in_process_alert_descriptions_read_exactly_as_prometheus_renders_them() {
    use redis_lookout::alerts::template;
    use serde_json::json;
    let values = [
        0.0, 0.5, 0.875, 3.0, 15.0, 61.5, 899.99, 1234.5, 5000.0, 1e6, 1234567.0, 0.00012, -2.5,
    ];
    let (mut rules, mut cases) = (Vec::new(), Vec::new());
    for rule in redis_lookout::alerts::pack() {
        let mut names: Vec<&str> = rule
            .description
            .split("$labels.")
            .skip(1)
            .map(|rest| {
                rest.split(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
                    .next()
                    .unwrap()
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        for with_node in [true, false] {
            let mut labels = std::collections::BTreeMap::new();
            for name in &names {
                let value = match *name {
                    "target" => "cache-a".to_owned(),
                    "node" if !with_node => continue,
                    "node" => "10.0.1.11:6379".to_owned(),
                    other => format!("{other}'s \"value\""),
                };
                labels.insert(name.to_string(), value);
            }
            for value in values {
                let alert = format!("A{}", rules.len());
                let expr = labels
                    .iter()
                    .fold(format!("vector({value:?})"), |e, (k, v)| {
                        format!("label_replace({e}, {k:?}, {}, \"\", \"\")", json!(v))
                    });
                rules.push(json!({
                    "alert": alert,
                    "expr": expr,
                    "annotations": {"description": rule.description},
                }));
                cases.push(json!({
                    "eval_time": "0m",
                    "alertname": alert,
                    "exp_alerts": [{
                        "exp_labels": labels,
                        "exp_annotations": {
                            "description": template::render(rule.description, &labels, value),
                        },
                    }],
                }));
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let groups = json!({"groups": [{"name": "descriptions", "rules": rules}]});
    std::fs::write(dir.path().join("rules.yml"), groups.to_string()).unwrap();
    let tests = json!({
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [], "alert_rule_test": cases}],
    });
    std::fs::write(dir.path().join("tests.yml"), tests.to_string()).unwrap();
    let run = Command::new("promtool")
        .args(["test", "rules", "tests.yml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool (apt-get install prometheus)");
    let out =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && out.contains("SUCCESS"),
        "{}",
        &out[..out.len().min(20_000)]
    );
    assert!(cases.len() > 500, "{} cases", cases.len());
}

#[test]
fn the_rule_tests_cover_every_alert_firing_and_not_firing() {
    let rules = redis_lookout::alerts::pack();
    let tests =
        std::fs::read_to_string(repo("alerts/tests/redis.rules.test.yml")).expect("rule tests");
    for rule in rules {
        let fired = format!("alertname: {}", rule.name);
        assert!(
            tests.contains(&fired),
            "{} has a case in which it fires",
            rule.name
        );
    }
    assert!(
        tests.contains("exp_alerts: []"),
        "cases in which alerts must not fire"
    );
}

struct Alertmanager {
    server: LoopbackServer,
}

impl Alertmanager {
    async fn start() -> Alertmanager {
        Self::start_with("route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n").await
    }

    async fn start_with(config_text: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("am.yml");
        std::fs::write(&config, config_text).unwrap();
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.path().display()),
            // No gossip: a test Alertmanager listens on loopback only.
            "--cluster.listen-address=".to_owned(),
        ];
        Alertmanager {
            server: LoopbackServer::start("prometheus-alertmanager", &args, dir).await,
        }
    }

    /// Alerts Alertmanager holds, as (alertname, target, still active).
    async fn alerts(&self) -> Vec<(String, String, bool)> {
        let (status, body) = http_get(self.server.addr, "/api/v2/alerts").await;
        assert_eq!(status, 200, "{body}");
        let alerts: serde_json::Value = serde_json::from_str(&body).expect("Alertmanager JSON");
        alerts
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let label = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_owned();
                (
                    label("alertname"),
                    label("target"),
                    a["status"]["state"] == "active",
                )
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_reaches_alertmanager_and_its_recovery_resolves_it() {
    let am = Alertmanager::start().await;
    let mut redis = RedisServer::start(&["--maxmemory", "100mb"]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: sessions\n    url: {}\nalerting:\n  alertmanager: http://127.0.0.1:{}\n  resend_interval: 1s\n  thresholds:\n    RedisDown: {{for: 2s}}\n",
        redis.url(),
        am.server.addr.port()
    ))
    .await;
    d.wait_up("sessions").await;

    redis.kill();
    let firing = ("RedisDown".to_owned(), "sessions".to_owned(), true);
    wait_for("RedisDown active in Alertmanager", WAIT, || async {
        am.alerts().await.contains(&firing).then_some(())
    })
    .await;
    let (status, body) = http_get(d.addr, "/alerts").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"alertname\":\"RedisDown\"") && body.contains("\"state\":\"firing\""),
        "{body}"
    );
    let m = d.metrics().await;
    assert_eq!(
        m.value(
            "redis_lookout_alerts",
            &[("alertname", "RedisDown"), ("state", "firing")]
        ),
        Some(1.0)
    );

    redis.restart();
    wait_for("RedisDown resolved in Alertmanager", WAIT, || async {
        let alerts = am.alerts().await;
        (!alerts.contains(&firing)).then_some(())
    })
    .await;
    let (_, body) = http_get(d.addr, "/alerts").await;
    assert!(!body.contains("RedisDown"), "{body}");
    // Its gauge series goes with it (the gauge is updated in place, not reset and refilled).
    d.metrics_when("the resolved alert's gauge series removed", WAIT, |m| {
        m.value(
            "redis_lookout_alerts",
            &[("alertname", "RedisDown"), ("state", "firing")],
        )
        .is_none()
    })
    .await;

    // The watchdog fires while the process runs, and ends (a dead man's switch tells) once
    // it has stopped: its endsAt, four resend intervals ahead, passes.
    let watchdog = |active| ("RedisLookoutWatchdog".to_owned(), String::new(), active);
    assert!(am.alerts().await.contains(&watchdog(true)));
    d.stop().await;
    wait_for("the watchdog ended after the stop", WAIT, || async {
        (!am.alerts().await.contains(&watchdog(true))).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_takes_new_thresholds_and_alertmanagers() {
    let am = Alertmanager::start().await;
    let redis = RedisServer::start(&["--maxmemory", "100mb"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lookout.yaml");
    let config = |threshold: &str, alertmanager: &str| {
        format!(
            "poll_interval: 200ms\ntargets:\n  - name: sessions\n    url: {}\nalerting:\n{alertmanager}  resend_interval: 1s\n  thresholds:\n    RedisMemoryWarning: {{warning: {threshold}, for: 0s}}\n",
            redis.url()
        )
    };
    let with_am = format!(
        "  alertmanager: http://127.0.0.1:{}\n",
        am.server.addr.port()
    );
    // Evaluate only, with a threshold a fresh Redis is far from (it uses ~1% of 100 MB).
    std::fs::write(&file, config("0.99", "")).unwrap();
    let d = Daemon::start_reloadable(&file).await;
    let up = d.wait_up("sessions").await;
    d.metrics_when("a few polls judged", WAIT, |m| {
        m.polls("sessions") >= up.polls("sessions") + 3.0
    })
    .await;
    let (_, body) = http_get(d.addr, "/alerts").await;
    assert!(!body.contains("RedisMemoryWarning"), "{body}");

    // A threshold it is above, and an Alertmanager to tell.
    std::fs::write(&file, config("0.000001", &with_am)).unwrap();
    let (status, text) = http_request(d.addr, "POST", "/-/reload").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("alerting: thresholds and Alertmanagers applied"),
        "{text}"
    );
    let firing = ("RedisMemoryWarning".to_owned(), "sessions".to_owned(), true);
    wait_for(
        "RedisMemoryWarning active in Alertmanager",
        WAIT,
        || async { am.alerts().await.contains(&firing).then_some(()) },
    )
    .await;

    // Back to a threshold it is under: the alert resolves there.
    std::fs::write(&file, config("0.99", &with_am)).unwrap();
    assert_eq!(http_request(d.addr, "POST", "/-/reload").await.0, 200);
    wait_for(
        "RedisMemoryWarning resolved in Alertmanager",
        WAIT,
        || async { (!am.alerts().await.contains(&firing)).then_some(()) },
    )
    .await;
    let (_, body) = http_get(d.addr, "/alerts").await;
    assert!(!body.contains("RedisMemoryWarning"), "{body}");
    d.stop().await;
}

pub(crate) fn run_check(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .arg("check")
        .args(args)
        .env_remove("REDIS_ADDR")
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Thresholds that keep `check` deterministic on a busy test machine (latency is measured).
pub(crate) const CALM: &str =
    "alerting:\n  thresholds:\n    RedisLatencyHigh: {warning: 5, critical: 10}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_is_wrong_and_exits_by_the_worst_finding() {
    let healthy = RedisServer::start(&["--maxmemory", "100mb"]);
    let sick = RedisServer::start(&[]);
    // Sessions that must expire but never will.
    for i in 0..3 {
        let _: () = sick.cmd(&["SET", &format!("session:auth:{i}"), "token"]);
    }
    // Memory at ~95% of maxmemory, and a client blocked on an empty list.
    let used: f64 = sick.info_field("memory", "used_memory").parse().unwrap();
    let _: () = sick.cmd(&[
        "CONFIG",
        "SET",
        "maxmemory",
        &((used / 0.95) as u64).to_string(),
    ]);
    let blocker = sick.client();
    let blocked = std::thread::spawn(move || {
        let mut c = blocker.get_connection().unwrap();
        let _: redis::RedisResult<redis::Value> =
            // Blocked until the test unblocks it (or its server goes): three `check` runs
            // on a loaded machine may take longer than any fixed timeout here.
            redis::cmd("BLPOP").arg("queue:empty").arg(0).query(&mut c);
    });
    wait_for("the client is blocked", WAIT, || async {
        (sick.info_field("clients", "blocked_clients") == "1").then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, url: String| {
        let path = dir.path().join(name);
        let keyspace = "    keyspace:\n      must_expire: [\"session:\"]\n      budget: 0.2\n";
        std::fs::write(
            &path,
            format!("targets:\n  - name: {name}\n    url: {url}\n{keyspace}{CALM}"),
        )
        .unwrap();
        path.display().to_string()
    };
    let (code, report) = run_check(&["--config", &write("ok", healthy.url())]);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.starts_with("OK: "), "{report}");

    let (code, report) = run_check(&["--config", &write("sick", sick.url())]);
    assert_eq!(code, Some(2), "{report}");
    assert!(report.contains("CRIT sick RedisMemoryHigh"), "{report}");
    assert!(report.contains("WARN sick RedisBlockedClients"), "{report}");
    assert!(
        report.contains("WARN sick RedisKeysWithoutTtl {db=db0,prefix=session:}"),
        "{report}"
    );
    assert!(
        report.contains("runbook: docs/runbooks/RedisMemoryHigh.md"),
        "{report}"
    );

    let (code, json) = run_check(&["--config", &write("sick", sick.url()), "--format", "json"]);
    assert_eq!(code, Some(2));
    let findings: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    let memory = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["alert"] == "RedisMemoryHigh")
        .expect("memory finding");
    assert_eq!(memory["status"], "CRIT");
    assert!(memory["value"].as_f64().unwrap() > 0.85);

    let closed = free_port();
    let (code, report) = run_check(&["--redis.addr", &format!("redis://127.0.0.1:{closed}")]);
    assert_eq!(code, Some(2), "{report}");
    assert!(
        report.contains("CRIT") && report.contains("RedisDown"),
        "{report}"
    );

    let _: () = sick.cmd(&["CLIENT", "UNBLOCK", &sick.blocked_client_id()]);
    blocked.join().unwrap();
}

/// Every example in `docs/prometheus/`, whatever its name, so a new one cannot skip the check.
#[test]
fn the_documented_prometheus_configs_pass_promtool() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo("docs/prometheus")).expect("docs/prometheus") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            assert_promtool_accepts_config(&path);
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} configs in docs/prometheus");
}

/// RedisExporterDown watches the documented scrape jobs with its default regex (`.*redis.*`):
/// every job of every example in `docs/prometheus/` has "redis" in its name.
#[test]
fn the_exporter_down_alert_watches_every_documented_job_by_default() {
    assert_eq!(redis_lookout::alerts::DEFAULT_EXPORTER_JOBS, ".*redis.*");
    let mut jobs = Vec::new();
    for entry in std::fs::read_dir(repo("docs/prometheus")).expect("docs/prometheus") {
        let path = entry.expect("dir entry").path();
        if !path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            continue;
        }
        let config: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for job in config["scrape_configs"]
            .as_sequence()
            .expect("scrape_configs")
        {
            let name = job["job_name"].as_str().expect("job_name").to_owned();
            assert!(name.contains("redis"), "{}: job {name}", path.display());
            jobs.push(name);
        }
    }
    assert!(jobs.len() >= 3, "{jobs:?}");
}

#[test]
fn the_readme_lists_every_alert() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    for rule in redis_lookout::alerts::pack() {
        assert!(
            readme.contains(&format!("`{}`", rule.name)),
            "README lists {}",
            rule.name
        );
    }
}

/// A poll that fails right after good ones (Redis paused past the poll timeout) is judged for
/// RedisDown, and leaves the node's other alerts firing: one timed-out poll used to resolve
/// them all (a RESOLVED to Alertmanager, then a new `for`). The exposition is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_poll_neither_resolves_nor_restarts_the_nodes_alerts() {
    let redis = RedisServer::start(&["--maxmemory", "100mb"]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\npoll_timeout: 150ms\ntargets:\n  - name: sessions\n    url: {}\nalerting:\n  thresholds:\n    RedisMemoryWarning: {{warning: 0.0001, for: 0s}}\n",
        redis.url()
    ))
    .await;
    d.wait_up("sessions").await;
    let firing = ("RedisMemoryWarning".to_owned(), "firing".to_owned());
    wait_for("RedisMemoryWarning firing", WAIT, || async {
        d.alerts().await.contains(&firing).then_some(())
    })
    .await;

    let paused: String = redis.cmd(&["CLIENT", "PAUSE", "3000", "ALL"]);
    assert_eq!(paused, "OK");
    // RedisDown pending: the evaluator has judged a failed poll.
    let states = wait_for("RedisDown judged", WAIT, || async {
        let states = d.alerts().await;
        states
            .iter()
            .any(|(name, _)| name == "RedisDown")
            .then_some(states)
    })
    .await;
    assert!(states.contains(&firing), "{states:?}");
    let m = d.metrics().await;
    assert_eq!(m.value("redis_up", &[("target", "sessions")]), Some(0.0));
    assert!(
        m.value("redis_memory_used_bytes", &[("target", "sessions")])
            .is_none(),
        "no old Redis values served while down"
    );
    d.stop().await;
}

/// `expect:` on a real Redis: settings as expected read 1, a `CONFIG SET` that changes one is
/// seen at the next CONFIG refresh (what runs and what was expected in its labels) and fires
/// RedisConfigDrift in process; reverting it resolves the alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_changed_by_hand_is_drift_until_reverted() {
    let redis = RedisServer::start(&["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\nconfig_refresh: 1s\ntargets:\n  - name: cache\n    url: {}\n    expect:\n      maxmemory-policy: allkeys-lru\n      maxmemory: 256mb\n      appendonly: \"no\"\n      no-such-setting: x\nalerting:\n  thresholds:\n    RedisConfigDrift: {{warning: 1, for: 0s}}\n",
        redis.url()
    ))
    .await;
    let met = |m: &Exposition, setting: &str| {
        m.all_with("redis_config_expectation_met", &[("setting", setting)])
            .iter()
            .map(|l| (l.labels["actual"].clone(), l.value))
            .collect::<Vec<_>>()
    };
    let m = d
        .metrics_when("the expectations judged", WAIT, |m| {
            !met(m, "maxmemory-policy").is_empty()
        })
        .await;
    assert_eq!(met(&m, "maxmemory-policy"), [("allkeys-lru".into(), 1.0)]);
    assert_eq!(met(&m, "maxmemory"), [("268435456".into(), 1.0)]);
    assert_eq!(met(&m, "appendonly"), [("no".into(), 1.0)]);
    assert_eq!(met(&m, "no-such-setting"), [(String::new(), 0.0)]);

    let _: () = redis.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let m = d
        .metrics_when("the change seen at the next CONFIG refresh", WAIT, |m| {
            met(m, "maxmemory-policy") == [("noeviction".to_owned(), 0.0)]
        })
        .await;
    assert_eq!(
        m.all_with(
            "redis_config_expectation_met",
            &[("setting", "maxmemory-policy")]
        )[0]
        .labels["expected"],
        "allkeys-lru"
    );
    wait_for("RedisConfigDrift firing", WAIT, || async {
        d.alert_firing("RedisConfigDrift").await.then_some(())
    })
    .await;

    // The unknown setting keeps its own alert; reverting the policy leaves only that one.
    let _: () = redis.cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    d.metrics_when("the revert seen", WAIT, |m| {
        met(m, "maxmemory-policy") == [("allkeys-lru".to_owned(), 1.0)]
    })
    .await;
    let drifting = || async {
        d.alerts_json()
            .await
            .iter()
            .filter(|a| a["labels"]["alertname"] == "RedisConfigDrift")
            .filter_map(|a| a["labels"]["setting"].as_str().map(str::to_owned))
            .collect::<Vec<String>>()
    };
    wait_for("only the unknown setting still drifting", WAIT, || async {
        (drifting().await == ["no-such-setting"]).then_some(())
    })
    .await;
    d.stop().await;
}

/// One KEYS on a real Redis is seen by the in-process evaluator (the counter reads 0 before,
/// so the first call counts), and names the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_command_fires_the_dangerous_commands_alert() {
    let redis = RedisServer::start(&[]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ncommand_stats_refresh: 200ms\ntargets:\n  - name: cache\n    url: {}\nalerting: {{}}\n",
        redis.url()
    ))
    .await;
    let m = d
        .metrics_when("command stats read", WAIT, |m| {
            m.value("redis_commands_total", &[("cmd", "info")])
                .is_some()
        })
        .await;
    assert_eq!(
        m.value("redis_commands_total", &[("cmd", "keys")]),
        Some(0.0)
    );
    assert!(!d.alert_firing("RedisDangerousCommandsUsed").await);
    let _: Vec<String> = redis.cmd(&["KEYS", "*"]);
    d.metrics_when("the KEYS counted", WAIT, |m| {
        m.value("redis_commands_total", &[("cmd", "keys")]) == Some(1.0)
    })
    .await;
    wait_for("RedisDangerousCommandsUsed firing", WAIT, || async {
        d.alert_firing("RedisDangerousCommandsUsed")
            .await
            .then_some(())
    })
    .await;
    d.stop().await;
}

/// A target's `labels:` (team, env) are on every series of it, its discovered replica's
/// included, and on its alerts, where Alertmanager routes by them; another target has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_labels_reach_every_series_and_alert_of_the_target() {
    let master = RedisServer::start(&[]);
    let replica = RedisServer::replica_of(&master);
    let closed = free_port();
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: sessions\n    url: {}\n    follow_replicas: true\n    labels:\n      team: payments\n      env: prod\n  - name: gone\n    url: redis://127.0.0.1:{closed}\n    labels:\n      team: search\n  - name: plain\n    url: {}\nalerting:\n  thresholds:\n    RedisDown: {{critical: 1, for: 0s}}\n",
        master.url(),
        master.url()
    ))
    .await;
    let replica_node = format!("127.0.0.1:{}", replica.port);
    let m = d
        .metrics_when("master and replica polled", WAIT, |m| {
            m.value("redis_up", &[("node", &replica_node)]) == Some(1.0)
                && m.value("redis_up", &[("target", "plain")]) == Some(1.0)
        })
        .await;
    let of = |target: &str| {
        m.lines
            .iter()
            .filter(|l| l.labels.get("target").map(String::as_str) == Some(target))
            .collect::<Vec<_>>()
    };
    let sessions = of("sessions");
    assert!(sessions.len() > 200, "{}", sessions.len());
    for line in &sessions {
        assert_eq!(
            (line.labels.get("team"), line.labels.get("env")),
            (Some(&"payments".to_owned()), Some(&"prod".to_owned())),
            "{line:?}"
        );
    }
    assert!(sessions
        .iter()
        .any(|l| l.labels.get("node") == Some(&replica_node)));
    // A family's own label wins over nothing: db stays the database.
    assert!(sessions
        .iter()
        .any(|l| l.name == "redis_db_keys" && l.labels["db"] == "db0"));
    assert!(of("plain").iter().all(|l| !l.labels.contains_key("team")));

    wait_for("RedisDown for gone, with its team", WAIT, || async {
        d.firing_alerts("RedisDown").await.first().map(|a| {
            assert_eq!(a["labels"]["target"], "gone");
            assert_eq!(a["labels"]["team"], "search");
        })
    })
    .await;
    d.stop().await;
}

/// A replica that keeps starting over (here `REPLICAOF NO ONE` and back, which Redis answers
/// with a full resync, as it does a replica cut by its output buffer limit): the master's
/// `sync_full` is the alert's counter. The first sync, before the daemon started, is not news;
/// two resyncs in the hour are at the threshold; the third fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_keeps_resyncing_fires_the_full_resyncs_alert() {
    let master = RedisServer::start(&[]);
    let replica = RedisServer::replica_of(&master);
    wait_for("the first full sync", WAIT, || async {
        (master.info_field("stats", "sync_full") == "1"
            && replica.info_field("replication", "master_link_status") == "up")
            .then_some(())
    })
    .await;
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: queue\n    url: {}\nalerting: {{}}\n",
        master.url()
    ))
    .await;
    d.metrics_when("the first sync seen", WAIT, |m| {
        m.value("redis_replica_resyncs_full", &[]) == Some(1.0)
    })
    .await;
    let port = master.port.to_string();
    for round in 1..=3 {
        let _: String = replica.cmd(&["REPLICAOF", "NO", "ONE"]);
        let _: String = replica.cmd(&["REPLICAOF", "127.0.0.1", &port]);
        let total = 1 + round;
        d.metrics_when(&format!("full resync {round} seen"), WAIT, |m| {
            m.value("redis_replica_resyncs_full", &[]) == Some(f64::from(total))
        })
        .await;
        assert_eq!(
            master.info_field("stats", "sync_partial_err"),
            round.to_string(),
            "each reconnect was refused a partial resync"
        );
        if round < 3 {
            assert!(
                !d.alert_firing("RedisReplicaFullResyncs").await,
                "{round} resyncs in the hour: at the threshold, not above"
            );
        }
    }
    wait_for("RedisReplicaFullResyncs firing", WAIT, || async {
        d.firing_alerts("RedisReplicaFullResyncs")
            .await
            .first()
            .map(|a| assert_eq!(a["labels"]["target"], "queue"))
    })
    .await;
    d.stop().await;
}

/// A Redis filling up fast fires the memory forecast (its `for` set to 0 here); an idle one
/// polled as long, with its own limit far away, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_filling_up_fires_the_memory_forecast_and_an_idle_one_does_not() {
    let filling = RedisServer::start(&["--maxmemory", "256mb"]);
    // Its limit far away: while the daemon's connections open, an idle Redis' used_memory
    // moves by 1-15 KB between 200 ms polls (measured), which a line through a few seconds of
    // polls stretches over 4 hours.
    let idle = RedisServer::start(&["--maxmemory", "4gb"]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: filling\n    url: {}\n  - name: idle\n    url: {}\nalerting:\n  thresholds:\n    RedisMemoryFillingUp: {{warning: 1, for: 0s}}\n",
        filling.url(),
        idle.url()
    ))
    .await;
    d.wait_up("filling").await;
    d.wait_up("idle").await;
    let value = "v".repeat(256 * 1024);
    let mut conn = filling.client().get_connection().expect("connect");
    let mut fired = false;
    // 256 KiB every 50 ms, at most 40 MiB: far below the 85% where the forecast stops judging.
    for i in 0..160 {
        let _: () = redis::cmd("SET")
            .arg(format!("cache:blob:{i}"))
            .arg(&value)
            .query(&mut conn)
            .expect("SET");
        tokio::time::sleep(Duration::from_millis(50)).await;
        if i % 4 == 3 && d.alert_firing("RedisMemoryFillingUp").await {
            fired = true;
            break;
        }
    }
    assert!(
        fired,
        "a Redis growing 5 MiB/s toward 256 MiB is forecast full"
    );
    let alerts = d.alerts_json().await;
    let forecast: Vec<_> = alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == "RedisMemoryFillingUp")
        .collect();
    assert_eq!(forecast.len(), 1, "{alerts:?}");
    assert_eq!(forecast[0]["labels"]["target"], "filling");
    d.stop().await;
}

/// A Redis loading its dataset answers LOADING to its clients but INFO to the poller: it is
/// up for redis_up, and RedisLoading is what pages. Loading is slowed by Redis' own test knob
/// (`key-load-delay`, µs per key) and made to answer between keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_loading_its_dataset_is_up_but_fires_redis_loading_until_loaded() {
    let mut redis = RedisServer::start(&[]);
    let _: String = redis.cmd(&["DEBUG", "POPULATE", "20000"]);
    let _: String = redis.cmd(&["SAVE"]);
    // 20,000 keys at 0.5 ms each: about 10 s of loading.
    redis.restart_with(&[
        "--key-load-delay",
        "500",
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: sessions\n    url: {}\nalerting:\n  thresholds:\n    RedisLoading: {{for: 0s}}\n",
        redis.url()
    ))
    .await;
    let m = d
        .metrics_when("loading seen", WAIT, |m| {
            m.value("redis_loading_dump_file", &[]) == Some(1.0)
        })
        .await;
    assert_eq!(
        m.value("redis_up", &[]),
        Some(1.0),
        "INFO answers while loading"
    );
    let ping: redis::RedisResult<String> =
        redis::cmd("PING").query(&mut redis.client().get_connection().expect("connect"));
    assert!(
        ping.as_ref()
            .is_err_and(|e| e.to_string().to_ascii_lowercase().contains("loading")),
        "the apps get LOADING: {ping:?}"
    );
    // `for: 0s` applies to both levels: warning and critical fire at once.
    wait_for("RedisLoading firing at both levels", WAIT, || async {
        let mut severities: Vec<String> = d
            .firing_alerts("RedisLoading")
            .await
            .iter()
            .filter_map(|a| a["labels"]["severity"].as_str().map(str::to_owned))
            .collect();
        severities.sort();
        (severities == ["critical", "warning"]).then_some(())
    })
    .await;
    assert!(!d.alert_firing("RedisDown").await);
    d.metrics_when("loaded", Duration::from_secs(60), |m| {
        m.value("redis_loading_dump_file", &[]) == Some(0.0)
            && m.value("redis_db_keys", &[("db", "db0")]) == Some(20000.0)
    })
    .await;
    wait_for("RedisLoading resolved", WAIT, || async {
        (!d.alerts()
            .await
            .iter()
            .any(|(name, _)| name == "RedisLoading"))
        .then_some(())
    })
    .await;
    d.stop().await;
}

/// The documented Alertmanager config (docs/alertmanager/alertmanager.yml) passes amtool, with
/// its example integrations too (uncommented), and inhibits what its comments say, in a real
/// Alertmanager: alerts posted as redis-lookout and Prometheus label them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_alertmanager_config_inhibits_what_it_says() {
    let path = repo("docs/alertmanager/alertmanager.yml");
    assert_checker_accepts("amtool", &["check-config"], &path);
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, receivers) = text
        .split_once("\nreceivers:\n")
        .expect("a receivers section");
    let uncommented: String = receivers
        .lines()
        .map(|l| match l.strip_prefix("    #   ") {
            Some(rest) => format!("      {rest}\n"),
            None => match l.strip_prefix("    # ") {
                Some(rest) => format!("    {rest}\n"),
                None => format!("{l}\n"),
            },
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("with-integrations.yml");
    std::fs::write(&full, format!("{head}\nreceivers:\n{uncommented}")).unwrap();
    assert!(
        !uncommented.lines().any(|l| l.trim_start().starts_with('#')),
        "every example integration uncommented: {uncommented}"
    );
    assert_checker_accepts("amtool", &["check-config"], &full);

    let am = Alertmanager::start_with(&text).await;
    // (alertname, severity, target, node, instance, inhibited?)
    let cases: &[(&str, &str, &str, &str, &str, bool)] = &[
        // Both levels of one alert on one node: the warning is hidden.
        (
            "RedisLoading",
            "critical",
            "sessions",
            "10.0.1.11:6379",
            "",
            false,
        ),
        (
            "RedisLoading",
            "warning",
            "sessions",
            "10.0.1.11:6379",
            "",
            true,
        ),
        // A node down hides its other alerts; not another node's.
        ("RedisDown", "critical", "cache", "", "", false),
        ("RedisMemoryHigh", "critical", "cache", "", "", true),
        ("RedisMemoryHigh", "critical", "cache-b", "", "", false),
        // Over 85% hides the 70% warning and the forecast of the same node.
        ("RedisMemoryWarning", "warning", "cache-b", "", "", true),
        ("RedisMemoryFillingUp", "warning", "cache-b", "", "", true),
        ("RedisMemoryFillingUp", "warning", "cache-c", "", "", false),
        // A replica loading its full sync: its broken link is that.
        (
            "RedisLoading",
            "warning",
            "queue",
            "10.0.3.12:6379",
            "",
            false,
        ),
        (
            "RedisReplicationBroken",
            "critical",
            "queue",
            "10.0.3.12:6379",
            "",
            true,
        ),
        // Masters low hides the cluster's state and slot alerts, on every node.
        (
            "RedisClusterMastersLow",
            "critical",
            "orders",
            "",
            "",
            false,
        ),
        (
            "RedisClusterStateNotOk",
            "critical",
            "orders",
            "10.0.4.11:6379",
            "",
            true,
        ),
        // Sidecars: same target and node, different pods; one pod down hides nothing of another.
        (
            "RedisDown",
            "critical",
            "localhost:6379",
            "",
            "pod-a:9121",
            false,
        ),
        (
            "RedisMemoryHigh",
            "critical",
            "localhost:6379",
            "",
            "pod-b:9121",
            false,
        ),
        (
            "RedisEvictionSpike",
            "critical",
            "localhost:6379",
            "",
            "pod-a:9121",
            true,
        ),
    ];
    let alerts: Vec<serde_json::Value> = cases
        .iter()
        .map(|(name, severity, target, node, instance, _)| {
            let mut labels = serde_json::json!({
                "alertname": name, "severity": severity, "target": target,
            });
            for (k, v) in [("node", node), ("instance", instance)] {
                if !v.is_empty() {
                    labels[k] = serde_json::json!(v);
                }
            }
            serde_json::json!({"labels": labels, "annotations": {"summary": "test"}})
        })
        .collect();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{}/api/v2/alerts", am.server.addr);
    let posted = client.post(&url).json(&alerts).send().await.unwrap();
    assert!(posted.status().is_success(), "{:?}", posted.text().await);

    let key = |a: &serde_json::Value| {
        let l = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_owned();
        (
            l("alertname"),
            l("severity"),
            l("target"),
            l("node"),
            l("instance"),
        )
    };
    // Each posted alert's key, with the verdict its case expects.
    let mut want: Vec<_> = alerts
        .iter()
        .zip(cases)
        .map(|(a, case)| (key(a), case.5))
        .collect();
    want.sort();
    // Alertmanager's inhibitor takes in new alerts asynchronously: wait for the verdicts. Each
    // new set of verdicts is printed, so a failure shows the last one beside `want`.
    let shown = std::sync::Mutex::new(Vec::new());
    wait_for(&format!("the inhibitions {want:#?}"), WAIT, || async {
        let got: Vec<serde_json::Value> =
            client.get(&url).send().await.unwrap().json().await.unwrap();
        let mut verdicts: Vec<_> = got
            .iter()
            .map(|a| {
                let inhibited = a["status"]["inhibitedBy"]
                    .as_array()
                    .is_some_and(|by| !by.is_empty());
                (key(a), inhibited)
            })
            .collect();
        verdicts.sort();
        let mut last = shown.lock().unwrap();
        if *last != verdicts {
            eprintln!("inhibitions now: {verdicts:#?}");
            *last = verdicts.clone();
        }
        (verdicts == want).then_some(())
    })
    .await;
}

/// A Pub/Sub subscriber that stops reading (a tiny receive window, nothing read) while 6 MB are
/// published to its channel: Redis holds the replies in its output buffer, INFO's
/// client_recent_max_output_buffer shows it, and the alert (threshold 1 MiB, `for` 0 here)
/// fires; once the client is gone and Redis' window of recent seconds has passed, it resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_fires_the_output_buffer_alert() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start(&[]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\ntargets:\n  - name: events\n    url: {}\nalerting:\n  thresholds:\n    RedisClientOutputBufferLarge: {{warning: 1048576, for: 0s}}\n",
        redis.url()
    ))
    .await;
    d.wait_up("events").await;
    assert!(!d.alert_firing("RedisClientOutputBufferLarge").await);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let mut subscriber = socket.connect(addr).await.unwrap();
    subscriber.write_all(b"SUBSCRIBE feed\r\n").await.unwrap();
    wait_for("the subscriber subscribed", WAIT, || async {
        let (_, subscribers): (String, i64) = redis.cmd(&["PUBSUB", "NUMSUB", "feed"]);
        (subscribers == 1).then_some(())
    })
    .await;
    // 6 x 1 MB: over the 1 MiB threshold, under Pub/Sub's own limits (32 MiB, or 8 MiB for 60 s).
    let message = "m".repeat(1_000_000);
    for _ in 0..6 {
        let _: i64 = redis.cmd(&["PUBLISH", "feed", &message]);
    }
    wait_for("RedisClientOutputBufferLarge firing", WAIT, || async {
        d.firing_alerts("RedisClientOutputBufferLarge")
            .await
            .first()
            .map(|a| {
                let value = a["value"].as_f64().unwrap_or_default();
                assert!(value > 1_048_576.0, "{a}");
            })
    })
    .await;
    drop(subscriber);
    wait_for("RedisClientOutputBufferLarge resolved", WAIT, || async {
        (!d.alerts()
            .await
            .iter()
            .any(|(name, _)| name == "RedisClientOutputBufferLarge"))
        .then_some(())
    })
    .await;
    d.stop().await;
}
