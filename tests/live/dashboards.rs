//! The Grafana dashboards, the alert pack and the community dashboards' queries, proven against a
//! real Prometheus that scrapes redis-lookout on loopback while it polls a master with a replica,
//! a Redis Cluster and a populated keyspace. Also the structure of the dashboard JSON and the
//! systemd unit in `docs/deploy/`.

use crate::support::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Every `dashboards/*.json`, as (file name, parsed JSON), sorted by name.
fn dashboards() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("dashboards"))
        .expect("dashboards/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "dashboards found: {files:?}");
    files
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(path).expect("read dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, json)
        })
        .collect()
}

/// Panels of a dashboard, rows' nested (collapsed) panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// One query of a dashboard: where it is, and its PromQL.
#[derive(Debug, Clone)]
struct Query {
    panel: String,
    ref_id: String,
    expr: String,
}

/// Every PromQL expression of a dashboard: panel targets and annotations.
fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(Query {
                    panel: p["title"].as_str().unwrap_or_default().to_owned(),
                    ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            out.push(Query {
                panel: format!("annotation {}", a["name"].as_str().unwrap_or_default()),
                ref_id: String::new(),
                expr: expr.to_owned(),
            });
        }
    }
    out
}

fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

/// The query text of a template variable (`label_values(...)`), in either JSON shape Grafana uses.
fn variable_query(var: &Value) -> String {
    var["query"]["query"]
        .as_str()
        .or_else(|| var["query"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The variable reference at the start of `text` (just after a `$`): its name and how many
/// characters `name`, `{name}` or `{name:format}` take.
fn variable_at(text: &str) -> (String, usize) {
    let braced = text.starts_with('{');
    let body = if braced { &text[1..] } else { text };
    let name: String = body
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let len = match body.find('}') {
        Some(close) if braced => close + 2,
        _ => name.len(),
    };
    (name, len)
}

/// Names of the variables a text refers to as `$name` or `${name}` (or `${name:format}`).
fn referenced_variables(text: &str) -> BTreeSet<String> {
    text.split('$')
        .skip(1)
        .map(|rest| variable_at(rest).0)
        .filter(|name| !name.is_empty())
        .collect()
}

/// Replaces `$name` and `${name}` by their values; an unknown variable is a test failure.
fn substitute(expr: &str, values: &BTreeMap<&str, String>) -> String {
    let mut parts = expr.split('$');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for rest in parts {
        let (name, len) = variable_at(rest);
        let value = values
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no value for ${name} in {expr}"));
        out.push_str(value);
        out.push_str(&rest[len..]);
    }
    out
}

/// Metric names a PromQL expression selects: label matchers, durations, strings, function names
/// and the label lists of by/without/on/ignoring/group_left/group_right are left out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(close) = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' => Some('"'),
            _ => None,
        } {
            i += 1;
            while i < chars.len() && chars[i] != close {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            // Numbers, including 1e7 and durations after offset.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = skip_space(i);
        let call = chars.get(next) == Some(&'(');
        if GROUPING.contains(&word.as_str()) {
            if call {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
            }
            continue;
        }
        if !call && (word.starts_with("redis_") || word == "ALERTS") {
            names.insert(word);
        }
    }
    names
}

// ---------------------------------------------------------------------------------------------
// Structure of the JSON (no servers needed).

#[test]
fn every_dashboard_is_well_formed_and_uses_its_variables() {
    let mut uids = BTreeSet::new();
    for (file, d) in dashboards() {
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(!uid.is_empty(), "{file}: uid");
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} used twice");
        assert!(d["id"].is_null(), "{file}: id must be null to import");

        let vars = variables(&d);
        let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
            "{file}: a `datasource` variable"
        );
        for want in ["instance", "target", "node"] {
            assert!(names.contains(&want), "{file}: a `{want}` variable");
        }
        // Pods of a sidecar fleet share `target` and `node`; only `instance` tells them apart.
        // So a selector on the target also selects the instance, and a grouping that keeps
        // targets apart keeps instances apart.
        for q in queries(&d).iter().map(|q| q.expr.as_str()).chain(
            variables(&d)
                .iter()
                .map(|v| variable_query(v))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        ) {
            for selector in q.split('{').skip(1).filter_map(|s| s.split('}').next()) {
                if selector.contains("$target") {
                    assert!(
                        selector.contains("instance=~\"$instance\""),
                        "{file}: {{{selector}}} in {q}"
                    );
                }
            }
            for keyword in ["by (", "on ("] {
                for list in q.split(keyword).skip(1).filter_map(|s| s.split(')').next()) {
                    let labels: Vec<&str> = list.split(',').map(str::trim).collect();
                    if labels.contains(&"target") {
                        assert!(
                            labels.contains(&"instance"),
                            "{file}: {keyword}{list}) in {q}"
                        );
                    }
                }
            }
        }

        let all = panels(&d);
        let mut ids = BTreeSet::new();
        for p in &all {
            let title = p["title"].as_str().unwrap_or_default();
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: {title} id"));
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{file}: {title} uses the datasource variable"
            );
            let targets = p["targets"].as_array();
            assert!(
                targets.is_some_and(|t| !t.is_empty()),
                "{file}: {title} has queries"
            );
            for t in targets.into_iter().flatten() {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{file}: {title} {} uses the datasource variable",
                    t["refId"]
                );
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{file}: {title} {} has an expr",
                    t["refId"]
                );
            }
        }
        for a in d["annotations"]["list"].as_array().into_iter().flatten() {
            if a["builtIn"] != 1 {
                assert_eq!(
                    a["datasource"]["uid"], "${datasource}",
                    "{file}: annotation"
                );
            }
        }
        for v in &vars {
            if v["type"] == "query" {
                assert_eq!(
                    v["datasource"]["uid"], "${datasource}",
                    "{file}: {}",
                    v["name"]
                );
            }
        }

        // No two panels share a cell of the 24-column grid.
        let rects: Vec<(&str, u64, u64, u64, u64)> = all
            .iter()
            .map(|p| {
                let g = &p["gridPos"];
                let n = |k: &str| {
                    g[k].as_u64()
                        .unwrap_or_else(|| panic!("{file}: gridPos.{k}"))
                };
                (
                    p["title"].as_str().unwrap_or_default(),
                    n("x"),
                    n("y"),
                    n("w"),
                    n("h"),
                )
            })
            .collect();
        for (i, a) in rects.iter().enumerate() {
            assert!(a.1 + a.3 <= 24, "{file}: {} is wider than the grid", a.0);
            for b in &rects[i + 1..] {
                let overlap =
                    a.1 < b.1 + b.3 && b.1 < a.1 + a.3 && a.2 < b.2 + b.4 && b.2 < a.2 + a.4;
                assert!(!overlap, "{file}: {} overlaps {}", a.0, b.0);
            }
        }

        // Every variable is used (queries, annotations, other variables, links), and every
        // variable a query uses exists (or is one of Grafana's own).
        let mut texts: Vec<String> = queries(&d).into_iter().map(|q| q.expr).collect();
        let mut link_texts = Vec::new();
        for p in &all {
            for l in p["links"].as_array().into_iter().flatten() {
                link_texts.push(l["url"].as_str().unwrap_or_default().to_owned());
            }
        }
        for name in &names {
            let used_elsewhere = vars
                .iter()
                .filter(|v| v["name"] != *name)
                .map(|v| variable_query(v))
                .chain(texts.iter().cloned())
                .chain(link_texts.iter().cloned())
                .any(|t| referenced_variables(&t).contains(*name));
            let is_datasource = *name == "datasource";
            assert!(
                used_elsewhere || is_datasource,
                "{file}: variable {name} is never used"
            );
        }
        texts.extend(vars.iter().map(|v| variable_query(v)));
        for t in &texts {
            for used in referenced_variables(t) {
                assert!(
                    names.contains(&used.as_str()) || used.starts_with("__"),
                    "{file}: {t} uses undefined ${used}"
                );
            }
        }
    }
}

#[test]
fn the_provisioning_and_docs_list_every_dashboard() {
    let provisioning =
        std::fs::read_to_string(repo("dashboards/provisioning/dashboards.yml")).unwrap();
    let docs = std::fs::read_to_string(repo("docs/dashboards.md")).unwrap();
    for (file, d) in dashboards() {
        assert!(provisioning.contains(&file), "provisioning names {file}");
        assert!(
            docs.contains(&format!("`{file}`")),
            "docs/dashboards.md lists {file}"
        );
        let uid = d["uid"].as_str().unwrap();
        assert!(
            docs.contains(&format!("`{uid}`")),
            "docs/dashboards.md lists {uid}"
        );
    }
}

#[test]
fn promql_helpers_find_variables_and_metric_names() {
    let expr = r#"sum by (target, node) (rate(redis_errors_total{err="OOM", target=~"$target"}[$__rate_interval])) / on (target) group_left (role) redis_instance_info{node=~"${node}|"}"#;
    assert_eq!(
        referenced_variables(expr),
        ["__rate_interval", "node", "target"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        metric_names(expr),
        ["redis_errors_total", "redis_instance_info"]
            .map(String::from)
            .into()
    );
    let values = BTreeMap::from([
        ("target", ".*".to_owned()),
        ("node", "a".to_owned()),
        ("__rate_interval", "10s".to_owned()),
    ]);
    assert_eq!(
        substitute(
            r#"x{t=~"$target", n=~"${node}|"}[$__rate_interval]"#,
            &values
        ),
        r#"x{t=~".*", n=~"a|"}[10s]"#
    );
}

/// The documented single-process config (`docs/prometheus/single-target.yml`), with only the
/// scrape address, the intervals and the rule file's path changed for the test.
fn prometheus_config(exporter: std::net::SocketAddr) -> String {
    let text = std::fs::read_to_string(repo("docs/prometheus/single-target.yml")).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("documented config");
    let global = config["global"].as_mapping_mut().expect("global:");
    for key in ["scrape_interval", "evaluation_interval", "scrape_timeout"] {
        global.insert(key.into(), "1s".into());
    }
    let rules = config["rule_files"].as_sequence_mut().expect("rule_files:");
    assert_eq!(rules.len(), 1, "one rule file");
    assert_eq!(rules[0].as_str(), Some("../../alerts/redis.rules.yml"));
    rules[0] = repo("alerts/redis.rules.yml").display().to_string().into();
    let jobs = config["scrape_configs"].as_sequence_mut().expect("jobs");
    assert_eq!(jobs.len(), 1, "one scrape job");
    let targets = jobs[0]["static_configs"][0]["targets"]
        .as_sequence_mut()
        .expect("static targets");
    assert_eq!(targets.len(), 1);
    targets[0] = exporter.to_string().into();
    serde_yaml::to_string(&config).unwrap()
}

/// Fills the master with the operators' kind of keys: cached profiles with a TTL, sessions
/// without one (a must_expire finding), rate-limit counters and a few keys meant to live forever.
fn populate(master: &RedisServer) {
    let mut conn = master.client().get_connection().unwrap();
    let mut pipe = redis::pipe();
    // A queue, a stream with a consumer group that has read part of it, and one hot key (about
    // 5000 reads lift its LFU counter past the point where a share is published).
    for n in 0..10 {
        pipe.cmd("RPUSH")
            .arg("queue:notification:email")
            .arg(n)
            .ignore();
    }
    stream_with_group(&mut pipe, "events:orders", "workers", 20);
    pipe.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("c1")
        .arg("COUNT")
        .arg(5)
        .arg("STREAMS")
        .arg("events:orders")
        .arg(">")
        .ignore();
    pipe.cmd("SET").arg("cache:config:flags").arg("on").ignore();
    for _ in 0..5000 {
        pipe.cmd("GET").arg("cache:config:flags").ignore();
    }
    for id in 0..2000 {
        let key = format!("cache:user:{id}:profile");
        pipe.cmd("HSET")
            .arg(&key)
            .arg("name")
            .arg(format!("user {id}"))
            .arg("plan")
            .arg("pro")
            .ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(600 + id * 3).ignore();
    }
    for id in 0..800 {
        pipe.cmd("SET")
            .arg(format!("session:{id:08x}"))
            .arg("token")
            .ignore();
    }
    for n in 0..400 {
        pipe.cmd("SET")
            .arg(format!(
                "rl:10.0.{}.{}:{}",
                n / 200,
                n % 200,
                29_000_000 + n % 3
            ))
            .arg(n)
            .arg("EX")
            .arg(120)
            .ignore();
    }
    for name in ["config:features", "config:limits", "schema:version"] {
        pipe.cmd("SET").arg(name).arg("1").ignore();
    }
    pipe.cmd("RPUSH")
        .arg("queue:notification:email")
        .arg("a")
        .arg("b")
        .ignore();
    let _: () = pipe.query(&mut conn).unwrap();
}

/// Steady traffic on the master while Prometheus scrapes: hits and misses, a slow command (slow
/// log, slow-entry histogram, RedisSlowlogGrowing firing) and a WRONGTYPE error (errorstats).
fn traffic(master: &RedisServer) -> tokio::task::JoinHandle<()> {
    let client = master.client();
    tokio::spawn(async move {
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL").arg("cache:user:7:profile").ignore();
            pipe.cmd("GET").arg("cache:user:missing").ignore();
            pipe.cmd("DEBUG").arg("SLEEP").arg("0.012").ignore();
            // Keeps the hot key hot: LFU counters decay by one a minute, and on a slow CI
            // machine the sampler may reach the key minutes after populate() read it.
            for _ in 0..100 {
                pipe.cmd("GET").arg("cache:config:flags").ignore();
            }
            let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            let _: redis::RedisResult<i64> = redis::cmd("LPUSH")
                .arg("config:features")
                .arg("x")
                .query_async(&mut conn)
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Panels that may be empty in this setup, with why. Their queries must still evaluate, and every
/// metric they select must have series (unless listed in `METRICS_ABSENT_HERE`): only the value
/// filter may leave them empty.
const PANELS_EMPTY_HERE: &[(&str, &str, &str)] = &[
    (
        "redis-replication-cluster.json",
        "Seconds since master link went down",
        "shown only while a replica's master link is down (Redis reports -1 while it is up)",
    ),
    (
        "redis-alerts.json",
        "Collectors failing now",
        "lists collectors whose replies cannot be parsed; every collector works here",
    ),
    (
        "redis-alerts.json",
        "Settings not as expected",
        "lists settings that differ from expect:; the one expected here matches",
    ),
];

/// Metric names that dashboards or alerts read and that this setup never produces, with why.
const METRICS_ABSENT_HERE: &[(&str, &str)] = &[(
    "redis_master_link_down_since_seconds",
    "Redis 7.0 reports master_link_down_since_seconds only while a replica's link is down",
)];

fn absent_here(metric: &str) -> bool {
    METRICS_ABSENT_HERE.iter().any(|(m, _)| *m == metric)
}

/// Community dashboard queries that cannot return data on redis-lookout, with why.
const COMMUNITY_EMPTY: &[(&str, &str)] = &[
    (
        "redis_memory_fragmentation_ratio",
        "no exporter has this name: redis_exporter (and redis-lookout) publish \
         redis_mem_fragmentation_ratio; the panel is empty on redis_exporter too",
    ),
    (
        r#"kubernetes_pod_name=~"$instance""#,
        "filters on a label Prometheus' Kubernetes discovery adds, with a variable the dashboard \
         does not define; empty on redis_exporter too",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_alert_and_community_query_returns_data_in_prometheus() {
    // AOF on and a maxmemory, so the persistence and memory-limit panels have something to show.
    // LFU, so the hot-key panels and RedisHotKey read real series.
    let master = RedisServer::start(&[
        "--appendonly",
        "yes",
        "--maxmemory",
        "256mb",
        "--maxmemory-policy",
        "allkeys-lfu",
    ]);
    let replica = RedisServer::replica_of(&master);
    let cluster = RedisCluster::start().await;
    wait_for("replica in sync", Duration::from_secs(20), || async {
        (replica.info_field("replication", "master_link_status") == "up").then_some(())
    })
    .await;
    populate(&master);
    let load = traffic(&master);
    let gone = free_port();
    // A Sentinel watching the same master, so the Sentinel alerts read real series.
    let sentinel = RedisServer::sentinel(&master, "sessions", 1);

    let daemon = Daemon::start(&format!(
        r#"poll_interval: 1s
poll_timeout: 1s
command_stats_refresh: 1s
targets:
  - name: sessions
    url: {master}
    follow_replicas: true
    expect:
      appendonly: "no"
    keyspace:
      prefixes: ["session:"]
      must_expire: ["session:", "cache:", "rl:"]
      # Profiles carry TTLs from 10 minutes to about 110: those over an hour are findings.
      max_ttl: {{"cache:user:": 1h}}
      budget: 0.2
      top_keys: 5
    watch:
      keys: ["queue:*"]
      streams: ["events:*"]
      # The test's DEBUG SLEEPs make round trips look slow; a roomy budget keeps rounds short.
      budget: 0.2
  - name: orders
    url: {cluster}
    cluster: true
  - name: gone
    url: redis://127.0.0.1:{gone}
  - name: sessions-ha
    sentinel:
      master: sessions
      addrs: ["{sentinel}"]
alerting:
  resend_interval: 1m
"#,
        master = master.url(),
        cluster = cluster.nodes[0].url(),
        sentinel = sentinel.url(),
    ))
    .await;
    daemon.wait_up("sessions").await;

    let prometheus = Prometheus::start(&prometheus_config(daemon.addr)).await;
    // Enough scrapes for 10 s rate windows, a completed keyspace census, the whole cluster, the
    // replica's lag on the master, and slow entries recent enough to fill the histogram.
    let ready = [
        r#"count_over_time(redis_up{target="sessions", node=""}[1m]) >= 15"#,
        r#"redis_keyspace_census_age_seconds{target="sessions"}"#,
        r#"redis_cluster_masters_online{target="orders"} == 3"#,
        r#"count(redis_up{target="orders"} == 1) == 6"#,
        r#"redis_replica_lag_seconds{target="sessions"}"#,
        r#"redis_master_link_up{target="sessions"} == 1"#,
        r#"redis_slowlog_entries_total{target="sessions"}"#,
        r#"ALERTS{alertname="RedisSlowlogGrowing", alertstate="firing"}"#,
        r#"redis_sentinel_master_ckquorum_status{target="sessions-ha"}"#,
        r#"redis_sentinel_failovers_total{target="sessions-ha"}"#,
        r#"redis_key_size{target="sessions", key="queue:notification:email"} >= 10"#,
        r#"redis_stream_group_lag{target="sessions", group="workers"} == 15"#,
        r#"redis_keyspace_hot_key_access_share{target="sessions"}"#,
    ];
    let prom = &prometheus;
    // The first query still empty, so a timeout names what never came. The deadline is roomy:
    // CI runs the whole suite at once on 2 cores, and a census plus a stream round can crawl.
    let missing = std::sync::Mutex::new(String::new());
    let missing = &missing;
    let ready_in_time = tokio::time::timeout(
        Duration::from_secs(240),
        wait_for(
            "Prometheus holds every family the dashboards need",
            Duration::from_secs(245),
            || async move {
                for expr in ready {
                    if !prom.has_series(expr).await {
                        *missing.lock().unwrap() = expr.to_owned();
                        return None;
                    }
                }
                Some(())
            },
        ),
    )
    .await;
    if ready_in_time.is_err() {
        let (_, body) = http_get(daemon.addr, "/metrics").await;
        let watch: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("redis_watch") || l.starts_with("redis_key_size"))
            .collect();
        panic!(
            "Prometheus never had series for {}; the exporter's watch lines:\n{}",
            missing.lock().unwrap(),
            watch.join("\n")
        );
    }
    wait_for(
        "every rule group loaded and evaluated",
        Duration::from_secs(30),
        || async move {
            let data = prom.api("/api/v1/rules").await.ok()?;
            let groups = data["groups"].as_array()?;
            let healthy = !groups.is_empty()
                && groups.iter().all(|g| {
                    g["rules"].as_array().is_some_and(|rules| {
                        !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")
                    })
                });
            healthy.then_some(())
        },
    )
    .await;

    // $instance is the exporter as Prometheus labels it, so every query proves it filters on
    // a label the series carry (".*" would match series without it too).
    let grafana = BTreeMap::from([
        ("instance", daemon.addr.to_string().replace('.', "\\\\.")),
        ("target", ".*".to_owned()),
        ("node", ".*".to_owned()),
        ("prefix", ".*".to_owned()),
        // Grafana's $__rate_interval is at least four scrape intervals; 1 s scrapes here.
        ("__rate_interval", "10s".to_owned()),
        ("__interval", "5s".to_owned()),
        ("__range", "1m".to_owned()),
    ]);
    let mut failures = Vec::new();

    // Every panel and annotation of every dashboard, and every variable's label_values().
    let mut allowed_seen = BTreeSet::new();
    let mut evaluated = 0;
    for (file, d) in dashboards() {
        for q in queries(&d) {
            let expr = substitute(&q.expr, &grafana);
            evaluated += 1;
            let allowed = PANELS_EMPTY_HERE
                .iter()
                .any(|(f, title, _)| *f == file && *title == q.panel);
            let result = if allowed {
                prometheus.query(&expr).await
            } else {
                prometheus.query_expecting_series(&expr).await
            };
            match result {
                Err(e) => {
                    failures.push(format!("{file} / {} {}: {e}\n  {expr}", q.panel, q.ref_id))
                }
                Ok(series) if series.is_empty() && !allowed => failures.push(format!(
                    "{file} / {} {}: no series\n  {expr}",
                    q.panel, q.ref_id
                )),
                Ok(_) => {}
            }
            if allowed {
                allowed_seen.insert((file.clone(), q.panel.clone()));
                for name in metric_names(&expr) {
                    if !absent_here(&name)
                        && !prometheus.has_series(&format!("count({name})")).await
                    {
                        failures.push(format!("{file} / {}: {name} has no series", q.panel));
                    }
                }
            }
        }
        for v in variables(&d) {
            let query = variable_query(v);
            let Some(args) = query
                .strip_prefix("label_values(")
                .and_then(|a| a.strip_suffix(')'))
            else {
                continue;
            };
            let (selector, label) = args
                .rsplit_once(',')
                .expect("label_values(selector, label)");
            let selector = substitute(selector.trim(), &grafana);
            let values = prometheus.label_values(label.trim(), &selector).await;
            if values.is_empty() {
                failures.push(format!(
                    "{file}: variable {} lists nothing: {query}",
                    v["name"]
                ));
            }
        }
    }
    for (file, title, _) in PANELS_EMPTY_HERE {
        assert!(
            allowed_seen.contains(&(file.to_string(), title.to_string())),
            "allow-listed panel {file} / {title} no longer exists"
        );
    }

    // Every alert expression evaluates, and every metric it reads exists (catches typos).
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("alerts/redis.rules.yml")).unwrap())
            .unwrap();
    let mut alert_exprs = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().unwrap_or_default();
            let expr = rule["expr"].as_str().expect("expr");
            alert_exprs += 1;
            if let Err(e) = prometheus.query(expr).await {
                failures.push(format!("alert {name}: {e}\n  {expr}"));
            }
            for metric in metric_names(expr) {
                if !absent_here(&metric)
                    && !prometheus.has_series(&format!("count({metric})")).await
                {
                    failures.push(format!("alert {name}: {metric} has no series"));
                }
            }
        }
    }

    // The community dashboards for redis_exporter, with their variables as Grafana would fill
    // them: `instance` is Prometheus' target label, here redis-lookout's own address.
    let instances = prometheus.label_values("instance", "redis_up").await;
    assert_eq!(instances, vec![daemon.addr.to_string()]);
    let community_vars = BTreeMap::from([
        ("instance", instances[0].clone()),
        // The Kubernetes variant's pod variable, set to All.
        ("kubernetes_pod_name", ".*".to_owned()),
        ("__rate_interval", "10s".to_owned()),
        ("__interval", "5s".to_owned()),
    ]);
    let fixture =
        std::fs::read_to_string(repo("tests/fixtures/community-dashboard-queries.txt")).unwrap();
    let mut community = 0;
    let mut community_empty_seen = BTreeSet::new();
    for line in fixture.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        community += 1;
        let expr = substitute(line, &community_vars);
        let known_empty = COMMUNITY_EMPTY.iter().find(|(m, _)| line.contains(m));
        let result = if known_empty.is_some() {
            prometheus.query(&expr).await
        } else {
            prometheus.query_expecting_series(&expr).await
        };
        match result {
            Err(e) => failures.push(format!("community: {e}\n  {expr}")),
            Ok(series) if series.is_empty() && known_empty.is_none() => {
                failures.push(format!("community: no series\n  {expr}"))
            }
            Ok(series) => {
                if let Some((marker, _)) = known_empty {
                    community_empty_seen.insert(*marker);
                    assert!(series.is_empty(), "known-empty query returns data: {expr}");
                }
            }
        }
    }
    for (marker, _) in COMMUNITY_EMPTY {
        assert!(
            community_empty_seen.contains(marker),
            "no community query matches the known-empty marker {marker}"
        );
    }

    load.abort();
    assert!(
        failures.is_empty(),
        "{} of {evaluated} dashboard queries, {alert_exprs} alert expressions and {community} \
         community queries failed:\n{}\nPrometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        prometheus.server.log_tail(20)
    );
    assert!(evaluated > 100 && alert_exprs >= 29 && community >= 30);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Deployment examples.

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !installed("systemd-analyze") {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    // verify insists that ExecStart's binary exists: point the unit at the one cargo built.
    let unit = std::fs::read_to_string(repo("docs/deploy/redis-lookout.service")).unwrap();
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/redis-lookout --config /etc/redis-lookout/config.yaml"
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis-lookout.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/redis-lookout",
            &binary().display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // Unknown keys and bad values are only warnings: none may appear.
    assert!(
        !text.contains("redis-lookout.service"),
        "systemd-analyze complains:\n{text}"
    );
}
