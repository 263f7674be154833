//! Least privilege: the README's `ACL SETUSER` line, read from README.md so the documentation
//! cannot drift, is enough for every feature, and redis-lookout sends nothing outside it.

use crate::support::*;
use std::collections::BTreeSet;
use std::time::Duration;

const PASSWORD: &str = "acl-test-Pa55";

/// The README's one-line `ACL SETUSER …` (inside a code block), split into arguments.
fn readme_acl_line() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let mut in_code = false;
    let mut found = Vec::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code && line.starts_with("ACL SETUSER ") {
            found.push(line.to_owned());
        }
    }
    assert_eq!(
        found.len(),
        1,
        "README.md has exactly one ACL SETUSER line in a code block"
    );
    found[0]
        .replace(">CHANGE-ME", &format!(">{PASSWORD}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `cmdstat_<name>` entries with calls > 0, and entries with rejected or failed calls.
fn command_stats(redis: &RedisServer) -> (BTreeSet<String>, Vec<String>) {
    let text: String = redis.cmd(&["INFO", "commandstats"]);
    let mut called = BTreeSet::new();
    let mut refused = Vec::new();
    for (name, fields) in crate::support::command_stats(&text) {
        let field = |k: &str| fields.get(k).copied().unwrap_or(0.0);
        if field("calls") > 0.0 {
            called.insert(name.clone());
        }
        if field("rejected_calls") > 0.0 || field("failed_calls") > 0.0 {
            refused.push(format!("{name}: {fields:?}"));
        }
    }
    (called, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_user_runs_every_feature_and_nothing_outside_it_is_sent() {
    // Every command is a slow entry, so SLOWLOG GET has entries to read.
    // LFU, so the sampler's hot-key reads (OBJECT FREQ, lfu-log-factor) run under the user too.
    let master = RedisServer::start(&[
        "--slowlog-log-slower-than",
        "0",
        "--maxmemory-policy",
        "allkeys-lfu",
    ]);
    let replica = RedisServer::replica_of(&master);
    let acl = readme_acl_line();
    let allowed: BTreeSet<String> = acl
        .iter()
        .filter_map(|a| a.strip_prefix('+'))
        .map(str::to_ascii_lowercase)
        .collect();
    for server in [&master, &replica] {
        let args: Vec<&str> = acl.iter().map(String::as_str).collect();
        let ok: String = server.cmd(&args);
        assert_eq!(ok, "OK");
    }

    // A small keyspace with long TTLs (nothing expires, so nothing is replicated meanwhile).
    let mut conn = master.client().get_connection().unwrap();
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET")
            .arg(format!("session:{i}"))
            .arg("x")
            .arg("EX")
            .arg(36_000)
            .ignore();
        pipe.cmd("HSET")
            .arg(format!("cache:user:{i}:profile"))
            .arg("name")
            .arg("n")
            .ignore();
        pipe.cmd("EXPIRE")
            .arg(format!("cache:user:{i}:profile"))
            .arg(36_000)
            .ignore();
        pipe.cmd("RPUSH")
            .arg(format!("queue:{i}"))
            .arg("job")
            .ignore();
    }
    pipe.cmd("SET").arg("lock:forgotten").arg("1").ignore();
    // One key of each kind the watcher measures, and a stream with a consumer group.
    pipe.cmd("SET").arg("watch:counter").arg("42").ignore();
    pipe.cmd("PFADD")
        .arg("watch:hll")
        .arg("a")
        .arg("b")
        .ignore();
    pipe.cmd("SADD").arg("watch:set").arg("a").ignore();
    pipe.cmd("ZADD").arg("watch:zset").arg(1).arg("a").ignore();
    stream_with_group(&mut pipe, "events:orders", "workers", 1);
    let _: () = pipe.query(&mut conn).unwrap();
    wait_for("replica in sync", Duration::from_secs(20), || async {
        (replica
            .info_field("keyspace", "db0")
            .starts_with("keys=606")
            && replica.info_field("replication", "master_link_status") == "up")
            .then_some(())
    })
    .await;
    for server in [&master, &replica] {
        let _: String = server.cmd(&["CONFIG", "RESETSTAT"]);
        let _: String = server.cmd(&["ACL", "LOG", "RESET"]);
    }

    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let yaml = format!(
        "poll_interval: 300ms\npoll_timeout: 300ms\nconfig_refresh: 1s\ncommand_stats_refresh: 1s\n\
         targets:\n  - name: main\n    url: {}\n    username: redis-lookout\n    password_file: {}\n\
         \x20   follow_replicas: true\n    keyspace:\n      prefixes: [\"session:\"]\n\
         \x20     must_expire: [\"session:\", \"lock:\"]\n      budget: 0.5\n\
         \x20   watch:\n      keys: [\"queue:1\", \"watch:*\"]\n      streams: [\"events:*\"]\n\
         \x20     count: [\"session:*\"]\n      values: true\n      consumers: true\n      budget: 0.5\n",
        master.url(),
        pw.display()
    );
    let daemon = Daemon::start(&yaml).await;
    let node = format!("127.0.0.1:{}", replica.port);
    let m = daemon
        .metrics_when(
            "both nodes up, a keyspace census and the slow log read",
            Duration::from_secs(60),
            |m| {
                m.value("redis_up", &[("target", "main"), ("node", &node)]) == Some(1.0)
                    && m.lines.iter().any(|l| {
                        l.name == "redis_up" && l.value == 1.0 && !l.labels.contains_key("node")
                    })
                    && m.value("redis_keyspace_prefix_keys", &[("prefix", "session:")])
                        == Some(200.0)
                    && m.value("redis_keyspace_estimate", &[]) == Some(0.0)
                    && m.value(
                        "redis_keyspace_must_expire_keys_without_ttl",
                        &[("prefix", "lock:")],
                    ) == Some(1.0)
                    && m.value("redis_slowlog_length", &[])
                        .is_some_and(|v| v > 0.0)
                    && m.value("redis_config_maxclients", &[]).is_some()
                    && m.value("redis_key_value", &[("key", "watch:counter")]) == Some(42.0)
                    && m.value("redis_key_size", &[("key", "watch:hll")]) == Some(2.0)
                    && m.value("redis_key_size", &[("key", "watch:zset")]) == Some(1.0)
                    && m.value("redis_stream_group_lag", &[("group", "workers")]) == Some(1.0)
                    && m.value("redis_keys_count", &[("key", "session:*")]) == Some(200.0)
                    && m.value("redis_keyspace_hotkeys_enabled", &[]) == Some(1.0)
            },
        )
        .await;
    for line in m
        .lines
        .iter()
        .filter(|l| l.name == "redis_lookout_collector_success")
    {
        assert_eq!(
            line.value, 1.0,
            "collector failed under the ACL user: {line:?}"
        );
    }
    daemon.stop().await;

    for (role, server) in [("master", &master), ("replica", &replica)] {
        let log: redis::Value = server.cmd(&["ACL", "LOG"]);
        assert!(
            matches!(&log, redis::Value::Array(entries) if entries.is_empty()),
            "{role}: Redis refused commands of redis-lookout: {log:?}"
        );
        let errors: String = server.cmd(&["INFO", "errorstats"]);
        assert!(!errors.contains("NOPERM"), "{role}: {errors}");
        let (called, refused) = command_stats(server);
        assert!(refused.is_empty(), "{role}: refused or failed: {refused:?}");
        // The test's own admin reads and the replication link are the only other clients;
        // AUTH needs no permission (it is how a connection becomes the user).
        let others = ["auth", "info", "acl|log", "config|resetstat", "replconf"];
        let outside: Vec<&String> = called
            .iter()
            .filter(|c| {
                !allowed.contains(c.as_str())
                    && !allowed.contains(c.split('|').next().unwrap_or(""))
                    && !others.contains(&c.as_str())
            })
            .collect();
        assert!(
            outside.is_empty(),
            "{role}: commands outside the README's ACL were run: {outside:?}"
        );
        // And the features really ran under the user.
        let mut wanted = vec!["info", "client|setname", "config|get", "slowlog|get"];
        wanted.extend(["latency|latest", "slowlog|len"]);
        if role == "master" {
            wanted.extend(["scan", "type", "pttl", "memory|usage"]);
        }
        for w in wanted {
            assert!(called.contains(w), "{role}: {w} was never sent: {called:?}");
        }
    }
}

/// `errorstat_NOPERM` of the server: how many commands it refused for lack of rights.
fn noperm_errors(redis: &RedisServer) -> u64 {
    let text: String = redis.cmd(&["INFO", "errorstats"]);
    text.lines()
        .find_map(|l| l.strip_prefix("errorstat_NOPERM:count="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A user without rights to CONFIG GET and CLUSTER INFO on a cluster node polled as a plain
/// target: the refusals are published, not asked again poll after poll (each one lands in the
/// server's error counts and ACL log), and asked again at `config_refresh`, so the figures come
/// back once the rights are granted, without a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_are_said_once_not_resent_and_rechecked() {
    let redis = RedisServer::cluster_node();
    redis.acl_setuser(&[
        "limited",
        "on",
        &format!(">{PASSWORD}"),
        "~*",
        "+@all",
        "-config",
        "-cluster|info",
    ]);
    let d = Daemon::start(&format!(
        "poll_interval: 200ms\nconfig_refresh: 4s\ntargets:\n  - name: r\n    url: redis://limited:{PASSWORD}@127.0.0.1:{}\n",
        redis.port
    ))
    .await;
    let refused = |m: &Exposition, c: &str| {
        m.value("redis_lookout_collector_refused", &[("collector", c)]) == Some(1.0)
    };
    let m = d
        .metrics_when("both refusals published", Duration::from_secs(20), |m| {
            refused(m, "cluster") && refused(m, "config")
        })
        .await;
    assert_eq!(m.value("redis_up", &[("target", "r")]), Some(1.0));
    // Not asked again within config_refresh: ten more polls, no more refusals.
    let (before, polls) = (noperm_errors(&redis), m.polls("r"));
    d.metrics_when("ten more polls", Duration::from_secs(20), |m| {
        m.polls("r") >= polls + 10.0
    })
    .await;
    let after = noperm_errors(&redis);
    assert!(
        after <= before + 2,
        "refused commands resent: NOPERM {before} -> {after} over ten polls"
    );

    // Rights granted: back within a config_refresh, on the same connection.
    redis.acl_setuser(&["limited", "+config", "+cluster|info"]);
    let m = d
        .metrics_when("figures back", Duration::from_secs(30), |m| {
            !refused(m, "cluster")
                && !refused(m, "config")
                && m.value("redis_cluster_enabled", &[("target", "r")]) == Some(1.0)
                && m.value("redis_config_maxclients", &[("target", "r")])
                    .is_some()
                && m.value("redis_cluster_known_nodes", &[("target", "r")])
                    .is_some()
        })
        .await;
    assert_eq!(m.connections_opened("r"), Some(1.0), "no reconnect needed");
    d.stop().await;
}
