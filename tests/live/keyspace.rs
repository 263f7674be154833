//! The keyspace sampler against real keyspaces: estimates against the test's own full SCAN,
//! the census, the SLOWLOG budget, discovered patterns, and hostile key names.

use crate::support::*;
use redis_lookout::keyspace::generate::{fill, FAMILIES};
use std::collections::BTreeMap;
use std::time::Duration;

/// The truth per family: (keys, memory), by the test's own full SCAN + MEMORY USAGE.
async fn truth(redis: &RedisServer) -> Truth {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut out: BTreeMap<&'static str, (f64, f64)> = BTreeMap::new();
    let mut cursor = 0u64;
    for _ in 0..10_000_000 {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
            .unwrap();
        cursor = next;
        if keys.is_empty() {
            if cursor == 0 {
                break;
            }
            continue;
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(5);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await.unwrap();
        for (k, size) in keys.iter().zip(sizes) {
            let i = family_index(k);
            let entry = out.entry(FAMILIES[i].pattern).or_default();
            entry.0 += 1.0;
            entry.1 += size.unwrap_or(0) as f64;
        }
        if cursor == 0 {
            break;
        }
    }
    out
}

fn family_index(key: &str) -> usize {
    let mut g = redis_lookout::keyspace::grouping::Grouper::new(&[], true, ':', 100);
    let pattern = g.group(key.as_bytes());
    FAMILIES
        .iter()
        .position(|f| f.pattern == pattern)
        .unwrap_or_else(|| panic!("{key} -> {pattern}"))
}

async fn generate(redis: &RedisServer, n: u64) {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    fill(&mut conn, n, 2000).await.unwrap();
    let size: u64 = redis.cmd(&["DBSIZE"]);
    assert_eq!(size, n);
}

/// True once db0's figures are a completed census (not a mid-pass estimate).
fn census_done(m: &Exposition) -> bool {
    m.value("redis_keyspace_estimate", &[("db", "db0")]) == Some(0.0)
}

fn family_value(m: &Exposition, name: &str, pattern: &str) -> f64 {
    m.value(name, &[("prefix", pattern)]).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_million_keys_estimates_and_the_census_match_a_full_scan_and_no_sampler_command_is_slow(
) {
    let redis = RedisServer::start(&[
        "--slowlog-log-slower-than",
        "1000",
        "--slowlog-max-len",
        "1000000",
    ]);
    // Redis on a CPU of its own (as in production) for the whole test, when there are two.
    let pinned = PinnedApart::new(&redis);
    generate(&redis, 1_000_000).await;
    let truth = truth(&redis).await;
    // Only the sampler's own commands count from here on.
    let _: () = redis.cmd(&["SLOWLOG", "RESET"]);
    let _: () = redis.cmd(&["CONFIG", "RESETSTAT"]);
    let control = StallControl::start(&redis, false).await;
    let started = std::time::Instant::now();
    let d = Daemon::start(&format!(
        "poll_interval: 1s\ntargets:\n  - name: big\n    url: {}\n    keyspace:\n      must_expire: [\"session:\"]\n      budget: 0.05\n",
        redis.url()
    ))
    .await;
    // 60k keys seen: the smallest family (5%) then has a relative standard error under 2%.
    let m = d
        // About 11 s on a quiet machine; minutes where the host makes Redis itself slow (the
        // sampler then keeps to its budget by inspecting fewer keys a second).
        .metrics_when("6% of the keys inspected", Duration::from_secs(360), |m| {
            m.value("redis_keyspace_sampler_pass_progress", &[("db", "db0")])
                .unwrap_or(0.0)
                >= 0.06
        })
        .await;
    assert_eq!(
        m.value("redis_keyspace_estimate", &[("db", "db0")]),
        Some(1.0)
    );
    for family in FAMILIES {
        let (keys, memory) = truth[family.pattern];
        let est_keys = family_value(&m, "redis_keyspace_prefix_keys", family.pattern);
        let est_memory = family_value(&m, "redis_keyspace_prefix_memory_bytes", family.pattern);
        assert!(
            (est_keys - keys).abs() / keys <= 0.05,
            "{}: {est_keys} keys estimated, {keys} true",
            family.pattern
        );
        assert!(
            (est_memory - memory).abs() / memory <= 0.10,
            "{}: {est_memory} bytes estimated, {memory} true",
            family.pattern
        );
        let err = family_value(&m, "redis_keyspace_prefix_keys_error", family.pattern);
        assert!(
            err > 0.0 && err < keys * 0.03,
            "{}: stated error {err}",
            family.pattern
        );
    }
    // session:legacy:* never expires and sits under must_expire "session:".
    let legacy = truth["session:legacy:*"].0;
    let flagged = m
        .value(
            "redis_keyspace_must_expire_keys_without_ttl",
            &[("prefix", "session:")],
        )
        .unwrap();
    assert!(
        (flagged - legacy).abs() / legacy <= 0.05,
        "{flagged} vs {legacy}"
    );

    // SLOWLOG records wall time: what must hold is that our commands show up there no more
    // often than the stall control's RANDOMKEYs do (three times their rate, plus three per ten
    // thousand keys inspected), or only in the few seconds of a stall of the machine (see
    // `SlowlogVerdict::few_enough`), and that Redis' own time per command is far below 1 ms
    // (scaled by how much slower than usual the control finds Redis).
    let active = started.elapsed();
    let control = control.stop().await;
    let inspected = m
        .value("redis_keyspace_sampler_keys_inspected_total", &[])
        .unwrap();
    let slow = SlowlogVerdict::read(&redis, control, |_| true);
    eprintln!(
        "{} over {active:?} (Redis on its own CPU: {})",
        slow.summary(),
        pinned.is_some()
    );
    assert!(
        slow.few_enough((inspected * 3.0 / 10_000.0).max(2.0), active),
        "{} over {active:?} ({inspected} keys inspected): {:?}",
        slow.summary(),
        slow.ours
    );
    assert!(
        slow.our_scan_usec_at_most() < 500.0 * slow.slowdown(),
        "SCAN takes up to {} us on average; {}",
        slow.our_scan_usec_at_most(),
        slow.summary()
    );
    let memory_usage = cmdstat(&slow.stats, "memory|usage", "usec_per_call");
    assert!(
        memory_usage < 50.0 * slow.slowdown(),
        "MEMORY USAGE takes {memory_usage} us on average; {}",
        slow.summary()
    );
    let used = m
        .value("redis_keyspace_sampler_redis_seconds_total", &[])
        .unwrap();
    assert!(used > 0.0);
    d.stop().await;

    // A full pass over the same million keys is an exact census of the keys that did not
    // change. At the highest budget (0.5) a pass takes about 110 s here (240 s with the debug
    // build the tests run). The shortest TTL (lock:product:*, 300 s) can run out before it
    // ends on a slow machine: a family that lost keys meanwhile lies between the truth after
    // and the truth before; every other one is exact.
    let started = std::time::Instant::now();
    let d = Daemon::start(&format!(
        "poll_interval: 1s\ntargets:\n  - name: census\n    url: {}\n    keyspace:\n      must_expire: [\"session:\"]\n      budget: 0.5\n",
        redis.url()
    ))
    .await;
    let m = d
        .metrics_when(
            "a census of a million keys",
            Duration::from_secs(900),
            census_done,
        )
        .await;
    d.stop().await;
    let expired: u64 = redis.info_field("stats", "expired_keys").parse().unwrap();
    eprintln!(
        "census of 1M keys in {:?}; {expired} keys expired",
        started.elapsed()
    );
    let after = if expired == 0 {
        truth.clone()
    } else {
        self::truth(&redis).await
    };
    for family in FAMILIES {
        let (keys, memory) = truth[family.pattern];
        let (keys_after, memory_after) = after.get(family.pattern).copied().unwrap_or_default();
        let counted = family_value(&m, "redis_keyspace_prefix_keys", family.pattern);
        let bytes = family_value(&m, "redis_keyspace_prefix_memory_bytes", family.pattern);
        assert!(
            (keys_after..=keys).contains(&counted),
            "{}: census {counted} keys, truth {keys} before and {keys_after} after",
            family.pattern
        );
        assert!(
            (memory_after..=memory).contains(&bytes),
            "{}: census {bytes} bytes, truth {memory} before and {memory_after} after",
            family.pattern
        );
        assert_eq!(
            family_value(&m, "redis_keyspace_prefix_keys_error", family.pattern),
            0.0,
            "{}: a census states no error",
            family.pattern
        );
        let no_ttl = family_value(&m, "redis_keyspace_prefix_keys_without_ttl", family.pattern);
        let want = if family.ttl == 0 { keys } else { 0.0 };
        assert_eq!(no_ttl, want, "{}: keys without TTL", family.pattern);
    }
    assert_eq!(
        m.value(
            "redis_keyspace_must_expire_keys_without_ttl",
            &[("prefix", "session:")]
        ),
        Some(legacy)
    );
}

/// Per family: (keys, memory) as the test's own full SCAN found them.
pub(crate) type Truth = BTreeMap<&'static str, (f64, f64)>;

/// 20,000 generated keys on `redis`, and a daemon polling it every 300 ms with the sampler at
/// budget 0.3, until its census is complete and `also` holds. `keyspace_yaml` and `target_yaml`
/// are more lines under `keyspace:` and under the target, indented to match. Asserts that every
/// family's census count equals the test's own SCAN; returns the daemon, that exposition and the
/// truth.
pub(crate) async fn exact_census(
    redis: &RedisServer,
    keyspace_yaml: &str,
    target_yaml: &str,
    what: &str,
    also: impl Fn(&Exposition) -> bool,
) -> (Daemon, Exposition, Truth) {
    generate(redis, 20_000).await;
    let truth = truth(redis).await;
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: census\n    url: {}\n    keyspace:\n      budget: 0.3\n{keyspace_yaml}{target_yaml}",
        redis.url()
    ))
    .await;
    let m = d
        .metrics_when(what, Duration::from_secs(60), |m| census_done(m) && also(m))
        .await;
    for family in FAMILIES {
        assert_eq!(
            family_value(&m, "redis_keyspace_prefix_keys", family.pattern),
            truth[family.pattern].0,
            "{}",
            family.pattern
        );
    }
    (d, m, truth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_pass_is_an_exact_census_with_the_expected_patterns() {
    let redis = RedisServer::start(&[]);
    // max_ttl: every lock:product:* (TTL 300 s) is over 30 s, every cart:* (1 day) is within
    // a week, and saga:* keys, which never expire, are must_expire findings instead.
    let (d, m, truth) = exact_census(
        &redis,
        "      must_expire: [\"session:\", \"cache:\"]\n      max_ttl:\n        \"lock:\": 30s\n        \"cart:\": 7d\n        \"saga:\": 1h\n",
        "",
        "a completed census",
        |_| true,
    )
    .await;
    let limit = |family: &str, prefix: &str| m.value(family, &[("prefix", prefix)]);
    assert_eq!(
        limit("redis_keyspace_ttl_over_limit_keys", "lock:"),
        Some(truth["lock:product:*"].0)
    );
    let longest_lock = limit("redis_keyspace_ttl_longest_seconds", "lock:").unwrap();
    assert!(
        longest_lock > 30.0 && longest_lock <= 300.0,
        "{longest_lock}"
    );
    assert_eq!(
        limit("redis_keyspace_ttl_limit_seconds", "lock:"),
        Some(30.0)
    );
    assert_eq!(
        limit("redis_keyspace_ttl_over_limit_keys", "cart:"),
        Some(0.0)
    );
    let longest_cart = limit("redis_keyspace_ttl_longest_seconds", "cart:").unwrap();
    assert!(
        longest_cart > 86_000.0 && longest_cart <= 86_400.0,
        "{longest_cart}"
    );
    assert_eq!(
        limit("redis_keyspace_ttl_over_limit_keys", "saga:"),
        Some(0.0)
    );
    assert_eq!(
        limit("redis_keyspace_must_expire_keys_without_ttl", "saga:"),
        Some(truth["saga:*"].0),
        "a max_ttl prefix must expire"
    );
    let prefixes: std::collections::BTreeSet<String> = m
        .all("redis_keyspace_prefix_keys")
        .iter()
        .map(|l| l.labels["prefix"].clone())
        .collect();
    let expected: std::collections::BTreeSet<String> =
        FAMILIES.iter().map(|f| f.pattern.to_owned()).collect();
    assert_eq!(prefixes, expected);
    for family in FAMILIES {
        let no_ttl = family_value(&m, "redis_keyspace_prefix_keys_without_ttl", family.pattern);
        let want = if family.ttl == 0 {
            truth[family.pattern].0
        } else {
            0.0
        };
        assert_eq!(no_ttl, want, "{}", family.pattern);
    }
    assert_eq!(
        m.value(
            "redis_keyspace_must_expire_keys_without_ttl",
            &[("prefix", "cache:")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.value("redis_key_group_count", &[("key_group", "saga:*")]),
        Some(truth["saga:*"].0),
        "redis_exporter's key-group name"
    );
    assert!(m
        .value("redis_keyspace_largest_key_bytes", &[("rank", "1")])
        .is_some());
    assert!(
        !m.lines.iter().any(|l| l.labels.contains_key("key")),
        "no key names unless export_key_names"
    );
    d.stop().await;
}

/// Other clients' PTTLs (a rate limiter checking its windows) count in the same commandstats
/// as the sampler's own: the sampler must not take them for its own cost, or its rests grow
/// window after window until it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_goes_on_while_other_clients_send_the_same_commands() {
    let redis = RedisServer::start(&[]);
    generate(&redis, 10_000).await;
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let neighbour = tokio::spawn(async move {
        let mut sent = 0u64;
        // Bounded: 200 PTTLs a round trip, at most 20 million in all.
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && sent < 20_000_000 {
            let mut pipe = redis::pipe();
            for i in 0..200 {
                pipe.cmd("PTTL").arg(format!("rl:neighbour:{i}")).ignore();
            }
            let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            sent += 200;
        }
        sent
    });
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: shared\n    url: {}\n    keyspace:\n      budget: 0.02\n",
        redis.url()
    ))
    .await;
    // About 10 s on a quiet machine; without the bound the census never completes.
    let m = d
        .metrics_when(
            "a completed census beside the neighbour",
            Duration::from_secs(180),
            census_done,
        )
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = neighbour.await.unwrap();
    let stats: String = redis.cmd(&["INFO", "commandstats"]);
    let pttl_calls = cmdstat(&stats, "pttl", "calls");
    assert!(
        pttl_calls > 2.0 * 10_000.0,
        "the neighbour's PTTLs ({sent} sent) outnumbered the sampler's: {pttl_calls} calls"
    );
    assert_eq!(
        m.value("redis_keyspace_sampler_keys_inspected_total", &[]),
        Some(10_000.0)
    );
    d.stop().await;
}

/// A pass whose connection drops goes on from its cursor on the next one: every key is
/// inspected once, not the first part twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_resumes_from_its_cursor_after_its_connection_drops() {
    let redis = RedisServer::start(&[]);
    generate(&redis, 20_000).await;
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: resumed\n    url: {}\n    keyspace:\n      budget: 0.02\n",
        redis.url()
    ))
    .await;
    let progress = |m: &Exposition| {
        m.value("redis_keyspace_sampler_pass_progress", &[("db", "db0")])
            .unwrap_or(0.0)
    };
    let m = d
        .metrics_when("a fifth of the pass", Duration::from_secs(120), |m| {
            progress(m) >= 0.2
        })
        .await;
    assert_eq!(
        m.value("redis_keyspace_estimate", &[("db", "db0")]),
        Some(1.0),
        "still mid-pass"
    );
    let list: String = redis.cmd(&["CLIENT", "LIST"]);
    let ours: Vec<String> = list
        .lines()
        .filter(|l| l.contains("name=redis-lookout "))
        .filter_map(|l| l.split(' ').next()?.strip_prefix("id=").map(str::to_owned))
        .collect();
    assert!(!ours.is_empty());
    for id in &ours {
        let _: redis::Value = redis.cmd(&["CLIENT", "KILL", "ID", id]);
    }
    let m = d
        .metrics_when("the census", Duration::from_secs(180), census_done)
        .await;
    assert_eq!(
        m.value("redis_keyspace_sampler_keys_inspected_total", &[]),
        Some(20_000.0),
        "each key inspected once"
    );
    d.stop().await;
}

/// A stream's MEMORY USAGE walks all its consumers whatever SAMPLES says: the sampler asks it
/// of a stream with few consumers and not of one with thousands (it reads their count with
/// XINFO GROUPS first). Every command is logged (slowlog threshold 0) to see which were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_thousands_of_consumers_is_not_asked_its_memory() {
    let redis = RedisServer::start(&[
        "--slowlog-log-slower-than",
        "0",
        "--slowlog-max-len",
        "100000",
    ]);
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg(format!("cache:{i}")).arg("v").ignore();
    }
    for (stream, consumers) in [("events:crowded", 1200), ("events:quiet", 2)] {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("f")
            .arg("v")
            .ignore();
        pipe.cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("g")
            .arg("0")
            .ignore();
        for c in 0..consumers {
            pipe.cmd("XGROUP")
                .arg("CREATECONSUMER")
                .arg(stream)
                .arg("g")
                .arg(format!("c{c}"))
                .ignore();
        }
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await
        .unwrap();
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: s\n    url: {}\n    keyspace:\n      prefixes: [\"events:\", \"cache:\"]\n      budget: 0.3\n",
        redis.url()
    ))
    .await;
    let m = d
        .metrics_when("a census", Duration::from_secs(60), census_done)
        .await;
    assert_eq!(
        family_value(&m, "redis_keyspace_prefix_keys", "events:"),
        2.0
    );
    assert_eq!(
        family_value(&m, "redis_keyspace_prefix_keys", "cache:"),
        200.0
    );
    let log: Vec<redis::Value> = redis.cmd(&["SLOWLOG", "GET", "100000"]);
    let sent: Vec<String> = log
        .iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(fields) => fields.get(3).cloned(),
            _ => None,
        })
        .filter_map(|args| match args {
            redis::Value::Array(words) => Some(
                words
                    .iter()
                    .filter_map(|w| match w {
                        redis::Value::BulkString(b) => {
                            Some(String::from_utf8_lossy(b).into_owned())
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        })
        .collect();
    let sent_any = |prefix: &str| sent.iter().any(|c| c.starts_with(prefix));
    assert!(sent_any("MEMORY USAGE cache:"), "the strings' memory");
    assert!(
        sent_any("MEMORY USAGE events:quiet"),
        "the quiet stream's memory"
    );
    assert!(
        sent_any("XINFO GROUPS events:crowded"),
        "the crowded stream's groups"
    );
    assert!(
        !sent_any("MEMORY USAGE events:crowded"),
        "the crowded stream's memory was asked"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_names_keep_the_exposition_valid() {
    let redis = RedisServer::start(&[]);
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let long = "k".repeat(10 * 1024);
    let names: Vec<Vec<u8>> = vec![
        b"line\nbreak:1".to_vec(),
        b"quote\"d:2".to_vec(),
        b"back\\slash:3".to_vec(),
        b"\xff\xfe\xfd:bytes".to_vec(),
        long.into_bytes(),
        b"".to_vec(),
        b"tab\there:{x}".to_vec(),
    ];
    for name in &names {
        let _: () = redis::cmd("SET")
            .arg(name)
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: odd\n    url: {}\n    keyspace:\n      export_key_names: true\n      budget: 0.3\n",
        redis.url()
    ))
    .await;
    // One exposition with the census done and the odd key in it (its text is what promtool
    // reads below): a separate later read could be a failed poll's, with no key series at all.
    let body = d
        .body_when(
            "a census of the odd keys, with the escaped newline in a key label",
            Duration::from_secs(60),
            |b| census_done(&Exposition::parse(b)) && b.contains("key=\"line\\nbreak:1\""),
        )
        .await;
    let (_, complaints) = promtool_check_metrics(&body).expect("promtool");
    let bad: Vec<&String> = complaints
        .iter()
        .filter(|l| {
            let legacy = l.starts_with("redis_key_group_count ") // redis_exporter's name
                || l.contains("abbreviated units")
                || l.contains("_total\" suffix")
                || l.contains("should not have \"_total\"");
            !legacy
        })
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    d.stop().await;
}

/// The sampler on 20,000 generated keys at a 5% budget must be at work with
/// `backing_off{reason}` at 0; while another client sends `hog` back to back (on its own
/// connection, for two minutes at most) that goes to 1; after it, back to 0.
async fn holds_back_while(reason: &str, hog: redis::Cmd) {
    let redis = RedisServer::start(&[]);
    generate(&redis, 20_000).await;
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: hogged\n    url: {}\n    keyspace:\n      budget: 0.05\n",
        redis.url()
    ))
    .await;
    let backing_off =
        |m: &Exposition, r: &str| m.value("redis_keyspace_sampler_backing_off", &[("reason", r)]);
    d.metrics_when(
        "the sampler at work, not holding back",
        Duration::from_secs(60),
        |m| {
            m.value("redis_keyspace_sampler_keys_inspected_total", &[])
                .is_some_and(|k| k > 0.0)
                && backing_off(m, reason) == Some(0.0)
        },
    )
    .await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogger = {
        let stop = stop.clone();
        let client = redis.client();
        std::thread::spawn(move || {
            let mut conn = client.get_connection().expect("hog connection");
            let started = std::time::Instant::now();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(120)
            {
                let _: redis::Value = hog.query(&mut conn).expect("hog command");
                sent += 1;
            }
            sent
        })
    };
    // The sampler holds back for one reason at a time (loading before busy before slow), so
    // `reason` at 1 also says the others did not take precedence.
    d.metrics_when(
        &format!("the sampler holding back ({reason})"),
        Duration::from_secs(60),
        |m| backing_off(m, reason) == Some(1.0),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(hogger.join().expect("hog thread") > 0);
    d.metrics_when(
        "the sampler back at its pace",
        Duration::from_secs(60),
        |m| backing_off(m, reason) == Some(0.0),
    )
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_holds_back_while_redis_is_busy() {
    // Short Lua loops (each a few ms, so our commands still get through between them) keep
    // Redis' main thread busy on a CPU.
    let mut lua = redis::cmd("EVAL");
    lua.arg("local i = 0 while i < 300000 do i = i + 1 end return i")
        .arg(0);
    holds_back_while("busy", lua).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_holds_back_while_redis_is_slow_to_answer_though_idle() {
    // 20 ms sleeps: Redis answers each SCAN of ours only when the current sleep ends (10 ms
    // later on average) while its main thread uses almost no CPU, so this is not "busy".
    let mut sleep = redis::cmd("DEBUG");
    sleep.arg("SLEEP").arg("0.02");
    holds_back_while("slow", sleep).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_sends_nothing_but_its_readings_while_redis_is_loading() {
    let mut redis = RedisServer::start(&[]);
    let keys = 100_000;
    let _: () = redis.cmd(&["DEBUG", "POPULATE", &keys.to_string(), "cache:item"]);
    let _: () = redis.cmd(&["SAVE"]);
    // Restarted on its dump: loading takes about 20 s (a 100 us sleep per key; 200k keys took
    // 40 s by hand), and between every kilobyte loaded Redis answers what it may answer while
    // loading (INFO does; SCAN, TYPE and the like are refused with -LOADING and counted as
    // rejected calls).
    redis.restart_with(&[
        "--key-load-delay",
        "100",
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    let loading_now = |redis: &RedisServer| redis.info_field("persistence", "loading") == "1";
    assert!(loading_now(&redis), "Redis is loading its dump");
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\ntargets:\n  - name: loading\n    url: {}\n    keyspace:\n      prefixes: [\"cache:\"]\n      budget: 0.3\n",
        redis.url()
    ))
    .await;
    let loading = |m: &Exposition| {
        m.value(
            "redis_keyspace_sampler_backing_off",
            &[("reason", "loading")],
        )
    };
    d.metrics_when(
        "the sampler paused for loading",
        Duration::from_secs(30),
        |m| loading(m) == Some(1.0),
    )
    .await;
    assert!(
        loading_now(&redis),
        "the pause was seen while Redis was still loading (make loading slower if not)"
    );
    let m = d
        .metrics_when(
            "loading over and a census of every key",
            Duration::from_secs(120),
            |m| loading(m) == Some(0.0) && census_done(m),
        )
        .await;
    assert_eq!(
        family_value(&m, "redis_keyspace_prefix_keys", "cache:"),
        keys as f64
    );
    // Not one sampler command reached Redis while it was loading: none was refused.
    let stats: String = redis.cmd(&["INFO", "commandstats"]);
    for command in [
        "scan",
        "select",
        "type",
        "pttl",
        "memory|usage",
        "object|freq",
    ] {
        let rejected = cmdstat(&stats, command, "rejected_calls");
        assert!(
            rejected.is_nan() || rejected == 0.0,
            "{command}: {rejected} calls refused while loading\n{stats}"
        );
    }
    assert!(
        cmdstat(&stats, "scan", "calls") > 0.0,
        "the census ran afterwards\n{stats}"
    );
    d.stop().await;
}
