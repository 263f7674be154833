//! The keyspace sampler: where the memory goes by key prefix, and which keys will never expire,
//! without ever blocking Redis.
//!
//! One task per target, on its own connection, walks each database with `SCAN` and inspects the
//! keys it returns with pipelined `TYPE`, `PTTL` and `MEMORY USAGE … SAMPLES n`.
//!
//! - **Estimates while a pass runs.** SCAN visits hash-table buckets, and keys land in buckets by
//!   the hash of their name, so the keys seen so far in a pass are close to a uniform random
//!   sample of the database. A group's total is estimated as `dbsize × (its share of the keys
//!   seen)`, and its standard error as `dbsize × sqrt(p(1-p)/n × (1-n/N))` (a proportion
//!   sampled without replacement). Memory is scaled the same way.
//! - **A census when a pass completes.** The counts of a finished pass are exact for keys that
//!   did not change during it; they are published, with their age, until the next pass
//!   completes.
//! - **A budget, in Redis' own accounting.** Every few seconds the sampler reads `INFO
//!   commandstats` and takes the time Redis spent in the commands it uses (SCAN, SELECT, TYPE,
//!   PTTL, MEMORY USAGE) per key it inspected; each batch is charged its keys at that rate, and
//!   the sampler rests so that the charged time stays under `budget` (default 1%) of wall time.
//!   Other clients' use of those commands is charged to the sampler too, which only slows it.
//!   Until the first reading (or where commandstats is unavailable) round trips are charged in
//!   full.
//! - **Backing off.** The same reading takes `INFO cpu` and `INFO persistence`. While Redis'
//!   main thread used over 80% of a core since the last reading (not counting its time in the
//!   kinds of command the sampler sends), the sampler rests ten times longer (a tenth of its
//!   budget). So it does while most of its SCANs since the last reading took over 5 ms longer
//!   to come back than its fastest on this connection (the operators' latency warning level; a
//!   SCAN costs Redis about 50 µs, and the fastest round trip is the network's share): Redis is
//!   slow to answer without being busy on a CPU (others' long commands, a stalled or swapping
//!   server). While Redis is loading it sends nothing but its readings
//!   (`redis_keyspace_sampler_backing_off{reason="busy"|"slow"|"loading"}`).
//! - **Short commands.** `SCAN COUNT` follows the cost of a SCAN toward 50 µs of Redis time
//!   (about 25 keys on a 1M-key database), a twentieth of the 1 ms limit. The cost is Redis'
//!   own time per SCAN from commandstats when every SCAN since the last reading was the
//!   sampler's; when other clients scan too, their average says nothing about ours, so COUNT
//!   follows the sampler's SCAN round trips toward 200 µs (an upper bound of Redis' time, as the
//!   key watcher does) instead.

pub mod generate;
pub mod grouping;
pub mod watched;

use crate::config::Target;
use crate::metrics::{FamilySet, Kind};
use crate::poller::open_connection;
use grouping::{longest_prefix, must_expire, Grouper};
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The sampler's settings for one target (`keyspace:` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyspaceConfig {
    pub prefixes: Vec<String>,
    pub must_expire: Vec<String>,
    /// The longest remaining TTL allowed under each prefix, in seconds (`max_ttl`; longest
    /// prefix wins). Its prefixes are in `must_expire` too.
    pub max_ttl: Vec<(String, f64)>,
    pub auto: bool,
    pub delimiter: char,
    pub max_groups: usize,
    /// Share of wall time the sampler may keep Redis busy (0.01 = 1%).
    pub budget: f64,
    /// Publish the names of the largest keys (they can carry personal data).
    pub export_key_names: bool,
    pub top_keys: usize,
    /// `MEMORY USAGE … SAMPLES n` for aggregates.
    pub memory_samples: u32,
    /// Sample on replicas instead of primaries (each node checks its role at every pass, so
    /// the sampling follows failovers).
    pub on_replicas: bool,
}

impl Default for KeyspaceConfig {
    fn default() -> Self {
        Self {
            prefixes: Vec::new(),
            must_expire: Vec::new(),
            max_ttl: Vec::new(),
            auto: true,
            delimiter: ':',
            max_groups: 100,
            budget: 0.01,
            export_key_names: false,
            top_keys: 10,
            memory_samples: 5,
            on_replicas: false,
        }
    }
}

/// TTL histogram bounds (seconds): a minute, ten, an hour, six, a day, a week.
pub const TTL_BUCKETS: &[f64] = &[60.0, 600.0, 3600.0, 21600.0, 86400.0, 604800.0];

/// What one key is, as inspected.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFacts {
    pub name: Vec<u8>,
    pub kind: String,
    /// Remaining TTL; None when the key never expires.
    pub ttl_seconds: Option<f64>,
    pub memory: u64,
    /// `OBJECT FREQ`: the LFU access counter (only under an LFU maxmemory-policy).
    pub freq: Option<u8>,
}

/// Reads the replies to `[TYPE, PTTL, MEMORY USAGE]` for one key. None when the key vanished
/// between SCAN and the inspection (expired or deleted), which must not count.
pub fn key_facts(name: Vec<u8>, replies: &[RedisResult<Value>]) -> Option<KeyFacts> {
    let text = |v: &Value| crate::collector::value_text(v);
    let kind = match replies.first()? {
        Ok(v) => text(v)?,
        Err(_) => return None,
    };
    if kind == "none" {
        return None;
    }
    let ttl = match replies.get(1)? {
        Ok(v) => crate::collector::value_int(v)?,
        Err(_) => return None,
    };
    let ttl_seconds = match ttl {
        -2 => return None,
        t if t < 0 => None,
        t => Some(t as f64 / 1000.0),
    };
    let memory = match replies.get(2) {
        Some(Ok(v)) => crate::collector::value_int(v).unwrap_or(0).max(0) as u64,
        _ => 0,
    };
    let freq = match replies.get(3) {
        Some(Ok(v)) => crate::collector::value_int(v).map(|f| f.clamp(0, 255) as u8),
        _ => None,
    };
    Some(KeyFacts {
        name,
        kind,
        ttl_seconds,
        memory,
        freq,
    })
}

/// The LFU counter a new key starts with (Redis' LFU_INIT_VAL).
const LFU_INIT_VAL: u8 = 5;

/// LFU counter from which a key's share of accesses is published: a few thousand recent
/// accesses at the default log factor, so an idle database does not name a "hot" key.
pub const HOT_KEY_MIN_FREQ: u8 = 32;

/// LFU counter bounds of the per-group frequency histogram.
pub const FREQ_BUCKETS: &[f64] = &[5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 255.0];

/// Accesses that take an LFU counter from its start to `counter`, in expectation: Redis bumps
/// a counter `c` with probability 1 / ((c - 5) × lfu-log-factor + 1), so going up one step
/// from `c` takes (c - 5) × factor + 1 accesses. Decay (one step per `lfu-decay-time` minutes
/// idle) makes this an estimate of recent accesses.
pub fn lfu_accesses(counter: u8, log_factor: f64) -> f64 {
    let n = f64::from(counter.saturating_sub(LFU_INIT_VAL));
    n + log_factor * n * (n - 1.0).max(0.0) / 2.0
}

#[derive(Debug, Clone, Default)]
struct GroupStats {
    keys: u64,
    memory: u64,
    without_ttl: u64,
    ttl_counts: [u64; 6],
    ttl_sum: f64,
    with_ttl: u64,
    by_type: BTreeMap<String, u64>,
    /// Cumulative counts of LFU counters at or under each FREQ_BUCKETS bound.
    freq_counts: [u64; 7],
    freq_keys: u64,
    freq_sum: f64,
    /// Estimated accesses of the group's inspected keys, and its hottest key's.
    accesses: f64,
    hottest: Option<(u8, Vec<u8>)>,
}

/// One walk over one database: counts so far, and how far it got.
#[derive(Debug, Clone)]
pub struct Pass {
    pub db: u32,
    /// Keys in the database when the pass started (INFO keyspace).
    pub dbsize: u64,
    pub visited: u64,
    pub started: Instant,
    groups: HashMap<String, GroupStats>,
    must_expire: BTreeMap<String, u64>,
    /// Per `max_ttl` prefix: keys seen with a TTL over the limit, and the longest TTL seen.
    ttl_limits: BTreeMap<String, (u64, f64)>,
    largest: TopKeys,
    /// `lfu-log-factor` when the node runs an LFU policy (then keys carry OBJECT FREQ).
    pub lfu_log_factor: Option<f64>,
    hottest: TopKeys,
}

/// The k keys with the highest value seen in a pass (memory, LFU counter), with their group.
/// Kept to at most 4k between trims, so a pass over millions of keys holds a few hundred.
#[derive(Debug, Clone, Default)]
struct TopKeys(Vec<(u64, Vec<u8>, String)>);

impl TopKeys {
    fn push(&mut self, value: u64, name: &[u8], group: &str, k: usize) {
        if k == 0 {
            return;
        }
        self.0.push((value, name.to_vec(), group.to_owned()));
        if self.0.len() > k * 4 {
            self.trim(k);
        }
    }

    fn trim(&mut self, k: usize) {
        self.0.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        self.0.truncate(k);
    }

    /// Publishes the top `k` by rank (`key` label only with `export_key_names`).
    fn publish(
        &mut self,
        out: &mut FamilySet,
        family: &str,
        help: &str,
        db: &str,
        config: &KeyspaceConfig,
    ) {
        self.trim(config.top_keys);
        for (rank, (value, name, group)) in self.0.iter().enumerate() {
            let mut labels = vec![
                ("db", db.to_owned()),
                ("prefix", group.clone()),
                ("rank", (rank + 1).to_string()),
            ];
            if config.export_key_names {
                labels.push(("key", String::from_utf8_lossy(name).into_owned()));
            }
            out.add(family, help, Kind::Gauge, labels, *value as f64);
        }
    }
}

impl Pass {
    pub fn new(db: u32, dbsize: u64, now: Instant) -> Self {
        Self {
            db,
            dbsize,
            visited: 0,
            started: now,
            groups: HashMap::new(),
            must_expire: BTreeMap::new(),
            ttl_limits: BTreeMap::new(),
            largest: TopKeys::default(),
            lfu_log_factor: None,
            hottest: TopKeys::default(),
        }
    }

    /// Counts one inspected key.
    pub fn absorb(&mut self, key: &KeyFacts, grouper: &mut Grouper, config: &KeyspaceConfig) {
        self.visited += 1;
        let group = grouper.group(&key.name);
        let stats = self.groups.entry(group.clone()).or_default();
        stats.keys += 1;
        stats.memory += key.memory;
        *stats.by_type.entry(key.kind.clone()).or_default() += 1;
        match key.ttl_seconds {
            None => {
                stats.without_ttl += 1;
                if let Some(prefix) = must_expire(&key.name, &config.must_expire) {
                    *self.must_expire.entry(prefix.to_owned()).or_default() += 1;
                }
            }
            Some(ttl) => {
                if let Some((prefix, limit)) =
                    longest_prefix(&key.name, &config.max_ttl, |(p, _)| p.as_str())
                {
                    let over = u64::from(ttl > *limit);
                    match self.ttl_limits.get_mut(prefix) {
                        Some((count, longest)) => {
                            *count += over;
                            *longest = longest.max(ttl);
                        }
                        None => {
                            self.ttl_limits.insert(prefix.clone(), (over, ttl));
                        }
                    }
                }
                stats.with_ttl += 1;
                stats.ttl_sum += ttl;
                for (bound, count) in TTL_BUCKETS.iter().zip(stats.ttl_counts.iter_mut()) {
                    if ttl <= *bound {
                        *count += 1;
                    }
                }
            }
        }
        if let (Some(freq), Some(factor)) = (key.freq, self.lfu_log_factor) {
            let stats = self.groups.entry(group.clone()).or_default();
            for (bound, count) in FREQ_BUCKETS.iter().zip(stats.freq_counts.iter_mut()) {
                if f64::from(freq) <= *bound {
                    *count += 1;
                }
            }
            stats.freq_keys += 1;
            stats.freq_sum += f64::from(freq);
            stats.accesses += lfu_accesses(freq, factor);
            if stats.hottest.as_ref().is_none_or(|(f, _)| freq > *f) {
                stats.hottest = Some((freq, key.name.clone()));
            }
            self.hottest
                .push(u64::from(freq), &key.name, &group, config.top_keys);
        }
        self.largest
            .push(key.memory, &key.name, &group, config.top_keys);
    }

    /// The factor from counts seen to the database's total (1 for a finished pass).
    fn scale(&self, exact: bool) -> f64 {
        if exact || self.visited == 0 {
            1.0
        } else {
            self.dbsize.max(self.visited) as f64 / self.visited as f64
        }
    }

    /// Standard error of a group's estimated key count (0 for a census).
    pub fn key_count_error(&self, keys_seen: u64, exact: bool) -> f64 {
        if exact || self.visited == 0 {
            return 0.0;
        }
        let (n, total) = (self.visited as f64, self.dbsize.max(self.visited) as f64);
        let p = keys_seen as f64 / n;
        total * (p * (1.0 - p) / n * (1.0 - n / total)).max(0.0).sqrt()
    }

    /// Publishes this pass's groups (estimates unless `exact`).
    pub fn publish(&mut self, out: &mut FamilySet, config: &KeyspaceConfig, exact: bool) {
        let scale = self.scale(exact);
        let db = format!("db{}", self.db);
        let mut groups: Vec<(&String, &GroupStats)> = self.groups.iter().collect();
        groups.sort_by(|a, b| a.0.cmp(b.0));
        for (prefix, s) in &groups {
            let labels = || vec![("db", db.clone()), ("prefix", (*prefix).clone())];
            let add = |out: &mut FamilySet, name: &str, help: &str, v: f64| {
                out.add(name, help, Kind::Gauge, labels(), v);
            };
            add(
                out,
                "redis_keyspace_prefix_keys",
                "Keys in the group (estimated until a pass completes; see redis_keyspace_estimate)",
                s.keys as f64 * scale,
            );
            add(
                out,
                "redis_keyspace_prefix_keys_error",
                "Standard error of redis_keyspace_prefix_keys (0 for a completed census)",
                self.key_count_error(s.keys, exact),
            );
            add(
                out,
                "redis_keyspace_prefix_memory_bytes",
                "Memory of the group's keys per MEMORY USAGE (estimated until a pass completes)",
                s.memory as f64 * scale,
            );
            add(
                out,
                "redis_keyspace_prefix_keys_without_ttl",
                "Keys of the group that never expire",
                s.without_ttl as f64 * scale,
            );
            for (kind, count) in &s.by_type {
                let mut l = labels();
                l.push(("type", kind.clone()));
                out.add(
                    "redis_keyspace_prefix_keys_by_type",
                    "Keys of the group by type",
                    Kind::Gauge,
                    l,
                    *count as f64 * scale,
                );
            }
            let help = "Remaining TTL of the group's keys that expire";
            for (bound, count) in TTL_BUCKETS.iter().zip(s.ttl_counts) {
                let mut l = labels();
                l.push(("le", bound.to_string()));
                out.add_suffixed(
                    "redis_keyspace_prefix_ttl_seconds",
                    "_bucket",
                    help,
                    Kind::Histogram,
                    l,
                    count as f64 * scale,
                );
            }
            let mut l = labels();
            l.push(("le", "+Inf".into()));
            out.add_suffixed(
                "redis_keyspace_prefix_ttl_seconds",
                "_bucket",
                help,
                Kind::Histogram,
                l,
                s.with_ttl as f64 * scale,
            );
            out.add_suffixed(
                "redis_keyspace_prefix_ttl_seconds",
                "_sum",
                help,
                Kind::Histogram,
                labels(),
                s.ttl_sum * scale,
            );
            out.add_suffixed(
                "redis_keyspace_prefix_ttl_seconds",
                "_count",
                help,
                Kind::Histogram,
                labels(),
                s.with_ttl as f64 * scale,
            );
            if let Some(factor) = self.lfu_log_factor.filter(|_| s.freq_keys > 0) {
                let help =
                    "LFU access counters (OBJECT FREQ, 0-255, logarithmic) of the group's keys";
                for (bound, count) in FREQ_BUCKETS.iter().zip(s.freq_counts) {
                    let mut l = labels();
                    l.push(("le", bound.to_string()));
                    let v = count as f64 * scale;
                    out.add_suffixed(
                        "redis_keyspace_prefix_lfu_freq",
                        "_bucket",
                        help,
                        Kind::Histogram,
                        l,
                        v,
                    );
                }
                let mut l = labels();
                l.push(("le", "+Inf".into()));
                let keys = s.freq_keys as f64 * scale;
                out.add_suffixed(
                    "redis_keyspace_prefix_lfu_freq",
                    "_bucket",
                    help,
                    Kind::Histogram,
                    l,
                    keys,
                );
                out.add_suffixed(
                    "redis_keyspace_prefix_lfu_freq",
                    "_sum",
                    help,
                    Kind::Histogram,
                    labels(),
                    s.freq_sum * scale,
                );
                out.add_suffixed(
                    "redis_keyspace_prefix_lfu_freq",
                    "_count",
                    help,
                    Kind::Histogram,
                    labels(),
                    keys,
                );
                add(
                    out,
                    "redis_keyspace_prefix_accesses_estimate",
                    "Recent accesses to the group's keys estimated from their LFU counters (see lfu-log-factor, lfu-decay-time)",
                    s.accesses * scale,
                );
                if let Some((freq, _)) = s.hottest.as_ref().filter(|(f, _)| *f >= HOT_KEY_MIN_FREQ)
                {
                    if s.accesses > 0.0 {
                        add(
                            out,
                            "redis_keyspace_hot_key_access_share",
                            "Share of the group's estimated accesses that go to its hottest key (only where that key's LFU counter is at least 32)",
                            lfu_accesses(*freq, factor) / (s.accesses * scale),
                        );
                    }
                }
            }
            // redis_exporter's key-group names, for its users' dashboards.
            let compat = || vec![("db", db.clone()), ("key_group", (*prefix).clone())];
            out.add(
                "redis_key_group_count",
                "Keys per key group (redis_exporter's name)",
                Kind::Gauge,
                compat(),
                s.keys as f64 * scale,
            );
            out.add(
                "redis_key_group_memory_usage_bytes",
                "Memory per key group (redis_exporter's name)",
                Kind::Gauge,
                compat(),
                s.memory as f64 * scale,
            );
        }
        for prefix in &config.must_expire {
            let seen = self.must_expire.get(prefix).copied().unwrap_or(0);
            out.add(
                "redis_keyspace_must_expire_keys_without_ttl",
                "Keys without a TTL under a prefix the config says must expire",
                Kind::Gauge,
                vec![("db", db.clone()), ("prefix", prefix.clone())],
                seen as f64 * scale,
            );
        }
        for (prefix, limit) in &config.max_ttl {
            let (over, longest) = self.ttl_limits.get(prefix).copied().unwrap_or_default();
            let labels = || vec![("db", db.clone()), ("prefix", prefix.clone())];
            out.add(
                "redis_keyspace_ttl_over_limit_keys",
                "Keys under a max_ttl prefix whose remaining TTL is longer than the limit (estimated until a pass completes)",
                Kind::Gauge,
                labels(),
                over as f64 * scale,
            );
            out.add(
                "redis_keyspace_ttl_longest_seconds",
                "The longest remaining TTL seen under a max_ttl prefix in the pass (0: no key with a TTL seen)",
                Kind::Gauge,
                labels(),
                longest,
            );
            out.add(
                "redis_keyspace_ttl_limit_seconds",
                "The configured max_ttl of the prefix",
                Kind::Gauge,
                labels(),
                *limit,
            );
        }
        self.largest.publish(
            out,
            "redis_keyspace_largest_key_bytes",
            "The largest keys seen in the pass, by MEMORY USAGE (names only with export_key_names)",
            &db,
            config,
        );
        self.hottest.publish(
            out,
            "redis_keyspace_hottest_key_lfu_freq",
            "LFU counters (OBJECT FREQ) of the most accessed keys seen in the pass (names only with export_key_names)",
            &db,
            config,
        );
        out.add(
            "redis_keyspace_estimate",
            "1 while the figures are estimates from a running pass, 0 once they come from a completed census",
            Kind::Gauge,
            vec![("db", db.clone())],
            if exact { 0.0 } else { 1.0 },
        );
    }
}

/// The kept connection of a budgeted task (sampler, key watcher), opened within the poll
/// timeout when there is none; errors are short labels for the debug log.
pub(crate) async fn kept_connection<'a>(
    conn: &'a mut Option<MultiplexedConnection>,
    target: &Target,
) -> Result<&'a mut MultiplexedConnection, &'static str> {
    if conn.is_none() {
        let opened =
            tokio::time::timeout(target.poll_timeout, open_connection(target, &target.url))
                .await
                .map_err(|_| "connect timed out")?
                .map_err(|e| e.label())?;
        *conn = Some(opened);
    }
    conn.as_mut().ok_or("no connection")
}

/// The rest after `busy` that keeps busy / (busy + rest) at `budget` (a share of wall time):
/// the pacing of the sampler and of the key watcher.
pub fn rest_for(busy: Duration, budget: f64) -> Duration {
    let budget = budget.clamp(0.0001, 0.5);
    busy.mul_f64((1.0 - budget) / budget)
}

/// Redis' own time per SCAN the sampler aims at (from commandstats). A SCAN costs Redis about
/// 1.7–1.9 µs per key on a 1M-key database (measured: COUNT 50 took 97 µs, COUNT 1000 1.7 ms),
/// so this is COUNT ≈ 25 there: a twentieth of the 1 ms limit, which leaves room for a Redis that
/// the machine stalls mid-command.
pub(crate) const SCAN_TIME: Duration = Duration::from_micros(50);

/// The SCAN round trip aimed at where only round trips are known (the key watcher; the sampler
/// while other clients scan): an upper bound of Redis' time, network and client included.
pub(crate) const SCAN_ROUND_TRIP: Duration = Duration::from_micros(200);

/// SCAN COUNT for a budgeted task (sampler, key watcher), within 10..=1000.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScanCount(u64);

impl ScanCount {
    pub(crate) const START: ScanCount = ScanCount(100);

    pub(crate) fn get(self) -> u64 {
        self.0
    }

    /// Moves COUNT toward the one at which a SCAN takes `aim`, taking the time as proportional
    /// to COUNT: down by up to half at once, up by at most half again, so one slow reading
    /// acts at once and growth needs several fast ones.
    pub(crate) fn follow(&mut self, took: Duration, aim: Duration) {
        let ratio = if took.is_zero() {
            1.5
        } else {
            (aim.as_secs_f64() / took.as_secs_f64()).clamp(0.5, 1.5)
        };
        self.0 = ((self.0 as f64 * ratio).round() as u64).clamp(10, 1000);
    }
}

/// The sampler's own counters, published with its figures.
#[derive(Debug, Default, Clone)]
struct SamplerStats {
    keys_inspected: u64,
    redis_seconds: f64,
    passes: u64,
}

/// What the poller merges into each snapshot: the latest keyspace figures.
pub type SharedFacts = Arc<Mutex<FamilySet>>;

/// Samples for about `duration` within the budget and returns the figures (for `check`).
pub async fn sample_for(
    target: Arc<Target>,
    config: KeyspaceConfig,
    duration: Duration,
) -> FamilySet {
    let facts = Arc::new(Mutex::new(FamilySet::new()));
    let (_stop, stop_rx) = watch::channel(false);
    let _ = tokio::time::timeout(
        duration,
        run_sampler(target, config, facts.clone(), stop_rx),
    )
    .await;
    let out = facts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    out
}

/// (db, keys) of every database INFO keyspace lists (those with keys), in db order.
fn keyspace_sizes(info: &crate::collector::info::Info) -> Vec<(u32, u64)> {
    let mut dbs: Vec<(u32, u64)> = info
        .fields()
        .filter_map(|(k, v)| {
            let db = k.strip_prefix("db")?.parse().ok()?;
            let keys = crate::collector::info::parse_pairs(v)
                .find(|(k, _)| *k == "keys")?
                .1
                .parse()
                .ok()?;
            Some((db, keys))
        })
        .collect();
    dbs.sort();
    dbs
}

/// Whether a pass that reached cursor 0 is a census. SCAN returns every key present from the
/// start of a pass to its end; a pass that saw far fewer keys than the database held at both
/// ends walked a table that was replaced under it (FLUSHDB and new writes, SWAPDB, a replica's
/// full resync), and its counts would be published as exact. The sizes (INFO keyspace) count
/// keys expired but not yet removed, which SCAN does not return: Redis' active expiry lets
/// them reach about 10% of the keys with a TTL, so the bar is 80%, not 90% (where a database
/// of keys nearly all with a TTL could have every pass refused).
pub fn census_complete(visited: u64, size_at_start: u64, size_at_end: Option<u64>) -> bool {
    let size = size_at_end.map_or(size_at_start, |end| end.min(size_at_start));
    visited as f64 >= 0.8 * size as f64
}

/// Runs the sampler for one target until shutdown.
pub async fn run_sampler(
    target: Arc<Target>,
    config: KeyspaceConfig,
    facts: SharedFacts,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sampler = Sampler {
        target,
        grouper: Grouper::new(
            &config.prefixes,
            config.auto,
            config.delimiter,
            config.max_groups,
        ),
        config,
        conn: None,
        count: ScanCount::START,
        scans_sent: 0,
        scan_trips: ScanTrips::default(),
        scan_floor: None,
        slow_evidence: ScanTrips::default(),
        stats: SamplerStats::default(),
        census: BTreeMap::new(),
        running: None,
        last_publish: Instant::now(),
        facts,
        cost_per_key: None,
        last_reading: None,
        calibrated_at: None,
        backoff: Backoff::No,
        lfu_log_factor: None,
        resumes: 0,
    };
    loop {
        let pause = sampler.step().await;
        // (A sender gone, its owner aborted, is a stop too.)
        if !crate::topology::tick(tokio::time::Instant::now() + pause, &mut shutdown).await {
            break;
        }
    }
}

/// A stream's `MEMORY USAGE` walks every consumer of every group whatever `SAMPLES` says
/// (Redis never removes consumers: workers named at random leave thousands). It is asked only
/// of streams with at most this many consumers in all; the others count no memory.
pub const STREAM_MEMORY_MAX_CONSUMERS: i64 = 1000;

/// The facts of `keys`, per key in [`key_facts`]' layout: TYPE, PTTL, MEMORY USAGE and (`lfu`)
/// OBJECT FREQ. Types first, so that a stream's memory is asked for only when its consumer
/// groups (`XINFO GROUPS`, one entry per group) make it cheap: one round trip more per batch,
/// and a third for the streams that qualify.
async fn inspect_keys(
    conn: &mut MultiplexedConnection,
    keys: &[Vec<u8>],
    samples: u32,
    lfu: bool,
    limit: Duration,
) -> Result<Vec<RedisResult<Value>>, &'static str> {
    async fn send(
        conn: &mut MultiplexedConnection,
        pipe: &redis::Pipeline,
        limit: Duration,
    ) -> Result<Vec<RedisResult<Value>>, &'static str> {
        tokio::time::timeout(limit, pipe.query_async(conn))
            .await
            .map_err(|_| "inspection timed out")?
            .map_err(|_| "inspection failed")
    }
    let memory = |pipe: &mut redis::Pipeline, key: &[u8]| {
        pipe.cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(samples);
    };
    let mut head = redis::pipe();
    head.ignore_errors();
    for key in keys {
        head.cmd("TYPE").arg(key);
        head.cmd("PTTL").arg(key);
        // OBJECT FREQ is an error unless the policy is LFU: only asked then.
        if lfu {
            head.cmd("OBJECT").arg("FREQ").arg(key);
        }
    }
    let mut heads = send(conn, &head, limit).await?.into_iter();
    let per_key = if lfu { 3 } else { 2 };
    let heads: Vec<Vec<RedisResult<Value>>> = (0..keys.len())
        .map(|_| heads.by_ref().take(per_key).collect())
        .collect();
    let is_stream = |h: &[RedisResult<Value>]| matches!(h.first(), Some(Ok(v)) if crate::collector::value_text(v).as_deref() == Some("stream"));
    let mut sizes = redis::pipe();
    sizes.ignore_errors();
    for (key, h) in keys.iter().zip(&heads) {
        if is_stream(h) {
            sizes.cmd("XINFO").arg("GROUPS").arg(key);
        } else {
            memory(&mut sizes, key);
        }
    }
    let mut sizes = send(conn, &sizes, limit).await?;
    if sizes.len() != keys.len() {
        return Err("inspection reply");
    }
    let cheap: Vec<usize> = (0..keys.len())
        .filter(|&i| is_stream(&heads[i]))
        .filter(|&i| {
            let groups = match sizes.get(i) {
                Some(Ok(v)) => watched::parse_groups(v),
                _ => return false,
            };
            groups.iter().map(|g| g.consumers.max(0)).sum::<i64>() <= STREAM_MEMORY_MAX_CONSUMERS
        })
        .collect();
    for i in (0..keys.len()).filter(|&i| is_stream(&heads[i])) {
        sizes[i] = Ok(Value::Nil);
    }
    if !cheap.is_empty() {
        let mut streams = redis::pipe();
        streams.ignore_errors();
        for &i in &cheap {
            memory(&mut streams, &keys[i]);
        }
        for (i, reply) in cheap.iter().zip(send(conn, &streams, limit).await?) {
            sizes[*i] = reply;
        }
    }
    let mut replies = Vec::with_capacity(keys.len() * (per_key + 1));
    for (h, size) in heads.into_iter().zip(sizes) {
        let mut h = h.into_iter();
        replies.extend(h.by_ref().take(2));
        replies.push(size);
        replies.extend(h);
    }
    Ok(replies)
}

/// One SCAN step and the inspection of the keys it returned.
struct Step {
    /// The cursor to go on from (0: the pass is complete).
    next: u64,
    keys: Vec<Vec<u8>>,
    /// TYPE, PTTL, MEMORY USAGE (and OBJECT FREQ under LFU) per key, in order.
    replies: Vec<RedisResult<Value>>,
    /// The SCAN's round trip alone, and both round trips.
    scan_took: Duration,
    round_trips: Duration,
}

/// Failed batches in a row after which a pass starts afresh instead of resuming.
const MAX_RESUMES: u32 = 10;

struct Sampler {
    /// Failed batches in a row that the running pass resumed after.
    resumes: u32,
    target: Arc<Target>,
    config: KeyspaceConfig,
    grouper: Grouper,
    conn: Option<MultiplexedConnection>,
    /// SCAN COUNT, adapted so that each SCAN stays short.
    count: ScanCount,
    /// SCANs this sampler has sent.
    scans_sent: u64,
    /// The SCAN round trips since the last calibration.
    scan_trips: ScanTrips,
    /// The fastest SCAN round trip on this connection: the network's share of every other.
    scan_floor: Option<Duration>,
    /// The SCAN round trips not yet enough to say whether Redis is slow (kept across
    /// calibrations until there are [`SLOW_EVIDENCE`] of them).
    slow_evidence: ScanTrips,
    stats: SamplerStats,
    /// Last completed pass per database, with when it finished.
    census: BTreeMap<u32, (Pass, Instant)>,
    /// The running pass and its SCAN cursor.
    running: Option<(Pass, u64)>,
    last_publish: Instant,
    facts: SharedFacts,
    /// Redis' own time for the sampler's commands, per inspected key (from commandstats).
    cost_per_key: Option<Duration>,
    /// The last commandstats reading.
    last_reading: Option<Reading>,
    /// When the sampler last calibrated (whether or not commandstats could be read).
    calibrated_at: Option<Instant>,
    /// Whether the last reading found Redis busy or loading.
    backoff: Backoff,
    /// `lfu-log-factor` while maxmemory-policy is an LFU policy (read at each pass start).
    lfu_log_factor: Option<f64>,
}

/// One reading of INFO commandstats, cpu and persistence, with the sampler's own counters at
/// that moment.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    /// CPU seconds of Redis' main thread (of the whole process before Redis 6.2).
    cpu: Option<f64>,
    /// Redis is loading its data set (at start, or a replica's full sync).
    loading: bool,
    keys_inspected: u64,
    scans_sent: u64,
    /// Redis' usec in the commands the sampler sends (everyone's calls).
    usec: f64,
    /// SCAN calls and usec (everyone's).
    scans: f64,
    scan_usec: f64,
}

/// Why the sampler holds back, from its last reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backoff {
    No,
    /// Redis' main thread was over [`BUSY_CPU`] of a core since the last reading: the sampler
    /// rests [`BUSY_SLOWDOWN`] times longer (a tenth of its budget).
    Busy,
    /// Redis is loading: the sampler sends nothing but its readings until it is done.
    Loading,
    /// Most of the sampler's SCANs since the last reading took over [`SLOW_ROUND_TRIP`] longer
    /// to come back than its fastest: Redis is slow to answer (other clients' long commands, a
    /// stalled or swapping server) without being busy on a CPU. It rests as when busy.
    Slow,
}

/// How much longer than the fastest SCAN round trip on the connection (the network's share) a
/// SCAN may take before Redis counts as slow to answer: the operators' latency warning level. A
/// SELECT and SCAN cost Redis about 50 µs, so the rest is waiting. Measured from the fastest, a
/// Redis in another region is not "slow" for its distance.
const SLOW_ROUND_TRIP: Duration = Duration::from_millis(5);

/// SCANs a window needs before their round trips say whether Redis is slow.
const SLOW_EVIDENCE: u32 = 5;

/// The sampler's SCAN round trips in one calibration window.
#[derive(Debug, Default, Clone, Copy)]
struct ScanTrips {
    sum: Duration,
    n: u32,
    /// How many took over [`SLOW_ROUND_TRIP`] longer than the fastest.
    slow: u32,
}

impl ScanTrips {
    /// One SCAN's round trip, `floor` being the fastest on the connection.
    fn add(&mut self, took: Duration, floor: Duration) {
        self.sum += took;
        self.n += 1;
        if took > floor + SLOW_ROUND_TRIP {
            self.slow += 1;
        }
    }

    fn mean(&self) -> Option<Duration> {
        (self.n > 0).then(|| self.sum / self.n)
    }

    fn merge(&mut self, other: ScanTrips) {
        self.sum += other.sum;
        self.n += other.n;
        self.slow += other.slow;
    }

    /// Whether most of the window's SCANs (its median) waited [`SLOW_ROUND_TRIP`] longer than
    /// the fastest; None with fewer than [`SLOW_EVIDENCE`] of them.
    fn slow(&self) -> Option<bool> {
        (self.n >= SLOW_EVIDENCE).then_some(self.slow * 2 > self.n)
    }
}

/// The sampler's pace after a calibration: `read` is what INFO said (None when it could not be
/// read), `slow` what its own SCAN round trips said (None: too few to tell).
fn next_backoff(prev: Backoff, read: Option<Backoff>, slow: Option<bool>) -> Backoff {
    match (read, slow) {
        (Some(b @ (Backoff::Loading | Backoff::Busy)), _) => b,
        (_, Some(true)) => Backoff::Slow,
        // Resting, the sampler has sent too few SCANs to tell yet: a slow Redis stays slow until
        // shown otherwise.
        (Some(_), None) if prev == Backoff::Slow => Backoff::Slow,
        (Some(b), _) => b,
        (None, Some(false)) if prev == Backoff::Slow => Backoff::No,
        (None, _) => prev,
    }
}

/// Share of one core above which Redis' main thread counts as busy.
const BUSY_CPU: f64 = 0.8;

/// How many times longer the sampler rests while Redis is busy.
const BUSY_SLOWDOWN: u32 = 10;

impl Reading {
    /// Parses the replies of `INFO commandstats`, `INFO cpu` and `INFO persistence` (one section
    /// each, which every Redis version accepts), joined.
    fn parse(info: &str, at: Instant, keys_inspected: u64, scans_sent: u64) -> Reading {
        let fields = crate::collector::info::parse_info(info);
        let (usec, scans, scan_usec) = sampler_command_usage(&fields);
        let cpu = |a: &str, b: &str| Some(fields.number(a)? + fields.number(b)?);
        Reading {
            at,
            cpu: cpu("used_cpu_sys_main_thread", "used_cpu_user_main_thread")
                .or_else(|| cpu("used_cpu_sys", "used_cpu_user")),
            loading: fields.get("loading") == Some("1") || fields.get("async_loading") == Some("1"),
            keys_inspected,
            scans_sent,
            usec,
            scans,
            scan_usec,
        }
    }

    /// Whether the sampler holds back after this reading, `then` being the one before. The
    /// time Redis spent in the sampler's kind of commands is not counted as busy, so a large
    /// `budget` does not make the sampler hold itself back.
    fn backoff(&self, then: Option<&Reading>) -> Backoff {
        if self.loading {
            return Backoff::Loading;
        }
        let busy = then.and_then(|then| {
            let wall = self.at.checked_duration_since(then.at)?.as_secs_f64();
            let ours = (self.usec - then.usec).max(0.0) / 1e6;
            let cpu = self.cpu? - then.cpu? - ours;
            (wall > 0.0).then_some(cpu / wall)
        });
        if busy.is_some_and(|share| share > BUSY_CPU) {
            Backoff::Busy
        } else {
            Backoff::No
        }
    }

    /// Redis' time per SCAN of the sampler's between this reading and `now`, when every SCAN
    /// Redis served in between was the sampler's (None when others scanned too, when the
    /// sampler sent none, or when the counters were reset).
    fn own_scan_time(&self, now: &Reading) -> Option<Duration> {
        let ours = now.scans_sent.checked_sub(self.scans_sent)?;
        let usec = now.scan_usec - self.scan_usec;
        (ours > 0 && now.scans - self.scans == ours as f64 && usec >= 0.0)
            .then(|| Duration::from_secs_f64(usec / ours as f64 / 1e6))
    }
}

/// Why a node has nothing to sample now: states, not failures.
const NOT_OURS_REPLICA: &str = "a replica; primaries sample";
const NOT_OURS_PRIMARY: &str = "a primary; replicas sample";
const NO_KEYS: &str = "no keys to sample";

/// How often the sampler reads commandstats to calibrate its cost.
const CALIBRATE_EVERY: Duration = Duration::from_secs(5);

/// The commandstats lines of the commands the sampler sends.
/// Redis 6 and older count subcommands under their command (`cmdstat_memory`, with any other
/// client's MEMORY calls: the charge errs high, never low); 7 splits them out.
const SAMPLER_COMMANDS: &[&str] = &[
    "cmdstat_scan",
    "cmdstat_select",
    "cmdstat_type",
    "cmdstat_pttl",
    "cmdstat_memory|usage",
    "cmdstat_object|freq",
    "cmdstat_xinfo|groups",
    "cmdstat_memory",
    "cmdstat_object",
];

/// From parsed INFO commandstats: (usec in the sampler's commands, SCAN calls, SCAN usec).
pub fn sampler_command_usage(info: &crate::collector::info::Info) -> (f64, f64, f64) {
    let field = |line: &str, name: &str| -> f64 {
        info.get(line)
            .and_then(|v| {
                crate::collector::info::parse_pairs(v)
                    .find(|(k, _)| *k == name)
                    .and_then(|(_, v)| v.parse().ok())
            })
            .unwrap_or(0.0)
    };
    let total = SAMPLER_COMMANDS.iter().map(|c| field(c, "usec")).sum();
    (
        total,
        field("cmdstat_scan", "calls"),
        field("cmdstat_scan", "usec"),
    )
}

impl Sampler {
    /// One batch of work; returns how long to rest before the next (the budget).
    async fn step(&mut self) -> Duration {
        if self
            .calibrated_at
            .is_none_or(|at| at.elapsed() >= CALIBRATE_EVERY)
        {
            self.calibrate().await;
        }
        if self.backoff == Backoff::Loading {
            self.publish();
            return CALIBRATE_EVERY;
        }
        match self.batch().await {
            Ok((round_trips, inspected)) => {
                // Redis' time per inspected key, from commandstats, includes other clients'
                // SCAN/SELECT/TYPE/PTTL/MEMORY calls (a rate limiter's PTTLs, another tool);
                // our own commands cannot have taken longer than their round trips, so that
                // bounds the charge (unbounded, the rest grew with others' share every
                // window until the sampler all but stopped). A batch whose SCAN found no key
                // (a sparse table) is charged its round trip: it cost Redis a SCAN.
                let busy = match self.cost_per_key {
                    Some(per_key) if inspected > 0 => (per_key * inspected as u32).min(round_trips),
                    _ => round_trips,
                };
                self.stats.redis_seconds += busy.as_secs_f64();
                if self.last_publish.elapsed() >= Duration::from_secs(1) {
                    self.publish();
                }
                let rest = rest_for(busy, self.config.budget);
                let rest = if matches!(self.backoff, Backoff::Busy | Backoff::Slow) {
                    rest * BUSY_SLOWDOWN
                } else {
                    rest
                };
                rest.max(Duration::from_millis(1))
            }
            Err(why) => {
                tracing::debug!(target_name = %self.target.name, problem = why, "keyspace sampler paused");
                // Nothing to do on this node for now (a replica, an empty Redis) is no fault of
                // the connection: it is kept, or every 5 s would open a new one, for good.
                if ![NOT_OURS_REPLICA, NOT_OURS_PRIMARY, NO_KEYS].contains(&why) {
                    self.conn = None;
                    // The next connection may take another path.
                    self.scan_floor = None;
                }
                Duration::from_secs(5)
            }
        }
    }

    async fn connection(&mut self) -> Result<&mut MultiplexedConnection, &'static str> {
        kept_connection(&mut self.conn, &self.target).await
    }

    /// Reads commandstats: Redis' time per inspected key, and per SCAN (which sets COUNT); and
    /// cpu and persistence: whether Redis is busy or loading (see [`Backoff`]).
    ///
    /// Redis' SCAN time is only the sampler's when every SCAN since the last reading was its
    /// own; when other clients scanned too (their average says nothing about ours), or
    /// commandstats cannot be read, COUNT follows the sampler's own SCAN round trips instead,
    /// which bound its SCANs' Redis time from above.
    async fn calibrate(&mut self) {
        let limit = self.target.poll_timeout;
        let trips = std::mem::take(&mut self.scan_trips);
        self.calibrated_at = Some(Instant::now());
        let Ok(conn) = self.connection().await else {
            return;
        };
        let mut sections = redis::pipe();
        for section in ["commandstats", "cpu", "persistence"] {
            sections.cmd("INFO").arg(section);
        }
        let reply = tokio::time::timeout(limit, sections.query_async::<Vec<String>>(conn)).await;
        let reading = match reply {
            Ok(Ok(texts)) => Some(Reading::parse(
                &texts.join("\n"),
                Instant::now(),
                self.stats.keys_inspected,
                self.scans_sent,
            )),
            _ => None,
        };
        let read = reading
            .as_ref()
            .map(|now| now.backoff(self.last_reading.as_ref()));
        // Evidence gathers across windows: resting ten times longer with a slow Redis, a
        // sampler charged its full round trips may send fewer than five SCANs in one.
        self.slow_evidence.merge(trips);
        let slow = self.slow_evidence.slow();
        if slow.is_some() {
            self.slow_evidence = ScanTrips::default();
        }
        let backoff = next_backoff(self.backoff, read, slow);
        if backoff != self.backoff {
            tracing::info!(target_name = %self.target.name, ?backoff, "keyspace sampler pace");
        }
        self.backoff = backoff;
        let mut own_scan_time = None;
        if let (Some(now), Some(then)) = (reading, self.last_reading) {
            let keys = now.keys_inspected.saturating_sub(then.keys_inspected);
            if keys > 0 && now.usec >= then.usec {
                self.cost_per_key = Some(Duration::from_secs_f64(
                    (now.usec - then.usec) / keys as f64 / 1e6,
                ));
            }
            own_scan_time = then.own_scan_time(&now);
        }
        match own_scan_time {
            Some(per_scan) => self.count.follow(per_scan, SCAN_TIME),
            None => {
                if let Some(mean) = trips.mean() {
                    self.count.follow(mean, SCAN_ROUND_TRIP);
                }
            }
        }
        // A failed reading keeps the last good one, so the next delta spans both windows.
        if let Some(reading) = reading {
            self.last_reading = Some(reading);
        }
    }

    /// One SCAN step of `db` from `cursor` and the inspection of the keys it returned.
    async fn scan_and_inspect(&mut self, db: u32, cursor: u64) -> Result<Step, &'static str> {
        let limit = self.target.poll_timeout;
        let count = self.count.get();
        let samples = self.config.memory_samples;
        let lfu = self.lfu_log_factor.is_some();
        let conn = self.connection().await?;
        let t0 = Instant::now();
        let mut select = redis::pipe();
        select.cmd("SELECT").arg(db).ignore();
        select.cmd("SCAN").arg(cursor).arg("COUNT").arg(count);
        let scanned: Vec<(u64, Vec<Vec<u8>>)> =
            tokio::time::timeout(limit, select.query_async(conn))
                .await
                .map_err(|_| "SCAN timed out")?
                .map_err(|_| "SCAN failed")?;
        let scan_took = t0.elapsed();
        let (next, keys) = scanned.into_iter().next().ok_or("SCAN reply")?;
        let replies = if keys.is_empty() {
            Vec::new()
        } else {
            inspect_keys(conn, &keys, samples, lfu, limit).await?
        };
        Ok(Step {
            next,
            keys,
            replies,
            scan_took,
            round_trips: t0.elapsed(),
        })
    }

    /// Scans and inspects one batch; returns the round-trip time and the keys inspected.
    async fn batch(&mut self) -> Result<(Duration, u64), &'static str> {
        if self.running.is_none() {
            self.start_pass().await?;
        }
        let Some((pass, cursor)) = self.running.take() else {
            return Ok((Duration::ZERO, 0));
        };
        let Step {
            next,
            keys,
            replies,
            scan_took,
            round_trips,
        } = match self.scan_and_inspect(pass.db, cursor).await {
            Ok(step) => {
                self.resumes = 0;
                step
            }
            Err(why) => {
                // SCAN cursors belong to the database, not the connection: the pass goes
                // on from this cursor once a connection is back, so one timeout does not
                // throw away hours of a pass over a big keyspace. A pass that keeps
                // failing starts afresh.
                if self.resumes < MAX_RESUMES {
                    self.resumes += 1;
                    self.running = Some((pass, cursor));
                } else {
                    self.resumes = 0;
                }
                return Err(why);
            }
        };
        let limit = self.target.poll_timeout;
        let per_key = if self.lfu_log_factor.is_some() { 4 } else { 3 };
        self.scans_sent += 1;
        let floor = self.scan_floor.map_or(scan_took, |f| f.min(scan_took));
        self.scan_floor = Some(floor);
        self.scan_trips.add(scan_took, floor);
        let inspected_before = self.stats.keys_inspected;
        let mut pass = pass;
        for (key, replies) in keys.into_iter().zip(replies.chunks(per_key)) {
            if let Some(facts) = key_facts(key, replies) {
                pass.absorb(&facts, &mut self.grouper, &self.config);
                self.stats.keys_inspected += 1;
            }
        }
        if next == 0 {
            // From INFO keyspace (DBSIZE is not in the README's ACL line; INFO is). Unknown
            // (no connection, no answer): judged against the size at the start.
            let end_text = match self.connection().await {
                Ok(conn) => tokio::time::timeout(
                    limit,
                    redis::cmd("INFO")
                        .arg("keyspace")
                        .query_async::<String>(conn),
                )
                .await
                .ok()
                .and_then(Result::ok),
                Err(_) => None,
            };
            let end_size: Option<u64> = end_text.map(|text| {
                keyspace_sizes(&crate::collector::info::parse_info(&text))
                    .into_iter()
                    .find(|(db, _)| *db == pass.db)
                    .map_or(0, |(_, keys)| keys)
            });
            if census_complete(pass.visited, pass.dbsize, end_size) {
                self.stats.passes += 1;
                self.census.insert(pass.db, (pass, Instant::now()));
                self.publish();
            } else {
                tracing::info!(
                    target_name = %self.target.name,
                    db = pass.db,
                    visited = pass.visited,
                    at_start = pass.dbsize,
                    at_end = end_size,
                    "keyspace pass not published: the database changed under it (flushed, swapped or resynced)"
                );
            }
        } else {
            self.running = Some((pass, next));
        }
        Ok((round_trips, self.stats.keys_inspected - inspected_before))
    }

    /// Picks the next database with keys (round robin) and starts a pass over it.
    async fn start_pass(&mut self) -> Result<(), &'static str> {
        let limit = self.target.poll_timeout;
        let conn = self.connection().await?;
        // One section per INFO: Redis before 7 refuses several in one.
        let mut sections = redis::pipe();
        sections.cmd("INFO").arg("replication");
        sections.cmd("INFO").arg("keyspace");
        let texts: Vec<String> = tokio::time::timeout(limit, sections.query_async(conn))
            .await
            .map_err(|_| "INFO timed out")?
            .map_err(|_| "INFO failed")?;
        let text = texts.join("\n");
        let info = crate::collector::info::parse_info(&text);
        let replica = info.get("role") == Some("slave");
        if replica != self.config.on_replicas {
            // Not this node's turn (a primary when replicas sample, or the reverse): publish
            // nothing, so a demoted node carries no stale figures.
            self.census.clear();
            self.facts.lock().unwrap_or_else(|p| p.into_inner()).clear();
            return Err(if replica {
                NOT_OURS_REPLICA
            } else {
                NOT_OURS_PRIMARY
            });
        }
        let dbs = keyspace_sizes(&info);
        // A database emptied since its census (FLUSHDB, FLUSHALL) no longer has one.
        self.census
            .retain(|db, _| dbs.iter().any(|(with_keys, _)| with_keys == db));
        // The database after the one finished longest ago comes next.
        let next = dbs
            .iter()
            .min_by_key(|(db, _)| self.census.get(db).map(|(_, at)| *at))
            .copied();
        let Some((db, keys)) = next else {
            return Err(NO_KEYS);
        };
        if self.census.is_empty() || self.census.len() == dbs.len() {
            self.grouper.reset_discovery();
        }
        self.lfu_log_factor = self.lfu_policy().await;
        let mut pass = Pass::new(db, keys, Instant::now());
        pass.lfu_log_factor = self.lfu_log_factor;
        self.running = Some((pass, 0));
        Ok(())
    }

    /// `lfu-log-factor` when maxmemory-policy is an LFU policy; None otherwise, or where
    /// CONFIG is not available (a managed service): then hot keys cannot be tracked.
    async fn lfu_policy(&mut self) -> Option<f64> {
        let limit = self.target.poll_timeout;
        let conn = self.connection().await.ok()?;
        let mut pipe = redis::pipe();
        pipe.cmd("CONFIG").arg("GET").arg("maxmemory-policy");
        pipe.cmd("CONFIG").arg("GET").arg("lfu-log-factor");
        let replies: Vec<Vec<String>> = tokio::time::timeout(limit, pipe.query_async(conn))
            .await
            .ok()?
            .ok()?;
        let policy = replies.first()?.get(1)?;
        if !policy.ends_with("-lfu") {
            return None;
        }
        Some(replies.get(1)?.get(1)?.parse().unwrap_or(10.0))
    }

    fn publish(&mut self) {
        self.last_publish = Instant::now();
        let mut out = FamilySet::new();
        out.gauge(
            "redis_keyspace_hotkeys_enabled",
            "1 when the sampler records OBJECT FREQ (maxmemory-policy is allkeys-lfu or volatile-lfu), else 0",
            f64::from(u8::from(self.lfu_log_factor.is_some())),
        );
        let now = Instant::now();
        let mut running_db = None;
        // A database's completed census wins; a running pass stands in until there is one.
        if let Some((pass, _)) = &mut self.running {
            running_db = Some(pass.db);
            out.add(
                "redis_keyspace_sampler_pass_progress",
                "Share of the database's keys the running pass has inspected",
                Kind::Gauge,
                vec![("db", format!("db{}", pass.db))],
                (pass.visited as f64 / pass.dbsize.max(1) as f64).min(1.0),
            );
            if !self.census.contains_key(&pass.db) {
                pass.publish(&mut out, &self.config, false);
            }
        }
        for (db, (pass, finished)) in &mut self.census {
            pass.publish(&mut out, &self.config, true);
            let labels = || vec![("db", format!("db{db}"))];
            out.add(
                "redis_keyspace_census_age_seconds",
                "Seconds since the database's last completed pass",
                Kind::Gauge,
                labels(),
                now.duration_since(*finished).as_secs_f64(),
            );
            out.add(
                "redis_keyspace_sampler_last_pass_duration_seconds",
                "How long the database's last completed pass took",
                Kind::Gauge,
                labels(),
                finished.duration_since(pass.started).as_secs_f64(),
            );
            if running_db != Some(*db) {
                out.add(
                    "redis_keyspace_sampler_pass_progress",
                    "Share of the database's keys the running pass has inspected",
                    Kind::Gauge,
                    labels(),
                    1.0,
                );
            }
        }
        out.add(
            "redis_keyspace_sampler_keys_inspected_total",
            "Keys the sampler inspected",
            Kind::Counter,
            Vec::new(),
            self.stats.keys_inspected as f64,
        );
        out.add(
            "redis_keyspace_sampler_redis_seconds_total",
            "Redis time charged to the sampler: its commands' time per key from INFO commandstats (round trips until the first reading)",
            Kind::Counter,
            Vec::new(),
            self.stats.redis_seconds,
        );
        out.add(
            "redis_keyspace_sampler_passes_total",
            "Completed passes over a database",
            Kind::Counter,
            Vec::new(),
            self.stats.passes as f64,
        );
        for (reason, state) in [
            ("busy", Backoff::Busy),
            ("loading", Backoff::Loading),
            ("slow", Backoff::Slow),
        ] {
            out.add(
                "redis_keyspace_sampler_backing_off",
                "1 while the sampler holds back: busy (Redis' main thread over 80% of a core) or slow (most SCANs answered over 5 ms later than the fastest): a tenth of the budget; loading: paused",
                Kind::Gauge,
                vec![("reason", reason.to_owned())],
                f64::from(u8::from(self.backoff == state)),
            );
        }
        out.gauge(
            "redis_keyspace_sampler_scan_batch",
            "SCAN COUNT in use (adapted so each SCAN stays short)",
            self.count.get() as f64,
        );
        *self.facts.lock().unwrap_or_else(|p| p.into_inner()) = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_that_saw_far_less_than_the_database_held_is_no_census() {
        // Keys came and went, nothing drastic: a census.
        assert!(census_complete(950_000, 1_000_000, Some(1_020_000)));
        // Every key has a TTL and 11% of them have expired but are not removed yet: INFO
        // counts them, SCAN does not return them.
        assert!(census_complete(890_000, 1_000_000, Some(1_000_000)));
        // Half the keys expired during a long pass: those present throughout were all seen.
        assert!(census_complete(700_000, 1_000_000, Some(500_000)));
        // FLUSHDB mid-pass, then new writes: the cursor walked a new, partly filled table.
        assert!(!census_complete(100_000, 1_000_000, Some(300_000)));
        // The size at the end unknown (INFO unanswered): judged against the start.
        assert!(!census_complete(100_000, 1_000_000, None));
        assert!(census_complete(0, 0, Some(0)));
    }

    fn key(name: &str, ttl: Option<f64>, memory: u64) -> KeyFacts {
        KeyFacts {
            name: name.as_bytes().to_vec(),
            kind: "string".into(),
            ttl_seconds: ttl,
            memory,
            freq: None,
        }
    }

    #[test]
    fn commandstats_give_the_samplers_own_redis_time() {
        let text = "cmdstat_scan:calls=10,usec=300,usec_per_call=30.00\r\ncmdstat_type:calls=100,usec=90\r\n\
                    cmdstat_memory|usage:calls=100,usec=200\r\ncmdstat_get:calls=5,usec=5000\r\n";
        let info = crate::collector::info::parse_info(text);
        assert_eq!(sampler_command_usage(&info), (590.0, 10.0, 300.0));
    }

    #[test]
    fn scan_count_moves_toward_the_aim_fast_down_slowly_up_within_bounds() {
        let aim = Duration::from_micros(50);
        let mut c = ScanCount::START;
        c.follow(Duration::from_micros(80), aim);
        assert_eq!(c.get(), 63, "100 × 50/80");
        c.follow(Duration::from_micros(1000), aim);
        assert_eq!(c.get(), 32, "at most halved at once");
        c.follow(Duration::from_micros(50), aim);
        assert_eq!(c.get(), 32, "on the aim: unchanged");
        c.follow(Duration::from_micros(1), aim);
        assert_eq!(c.get(), 48, "at most half again at once");
        for _ in 0..30 {
            c.follow(Duration::ZERO, aim);
        }
        assert_eq!(c.get(), 1000);
        for _ in 0..30 {
            c.follow(Duration::from_secs(1), aim);
        }
        assert_eq!(c.get(), 10);
    }

    #[test]
    fn own_scan_time_only_when_every_scan_was_ours() {
        let then = Reading {
            at: Instant::now(),
            cpu: None,
            loading: false,
            keys_inspected: 0,
            scans_sent: 10,
            usec: 0.0,
            scans: 1000.0,
            scan_usec: 50_000.0,
        };
        let mut now = Reading {
            scans_sent: 20,
            scans: 1010.0,
            scan_usec: 51_000.0,
            ..then
        };
        assert_eq!(then.own_scan_time(&now), Some(Duration::from_micros(100)));
        // Another client's 10 cheap SCANs would make the average 50 µs: not ours, not used.
        now.scans = 1020.0;
        now.scan_usec = 51_100.0;
        assert_eq!(then.own_scan_time(&now), None);
        // CONFIG RESETSTAT between the readings.
        now.scans = 10.0;
        now.scan_usec = 1_000.0;
        assert_eq!(then.own_scan_time(&now), None);
        // No SCAN of ours in between.
        assert_eq!(then.own_scan_time(&then), None);
    }

    #[test]
    fn readings_say_when_redis_is_busy_or_loading() {
        let at = Instant::now();
        let info = |cpu: f64, loading: u8| {
            format!(
                "# Commandstats\r\ncmdstat_scan:calls=4,usec=200,usec_per_call=50.00\r\n\n\
                 # CPU\r\nused_cpu_sys:90.0\r\nused_cpu_user:90.0\r\n\
                 used_cpu_sys_main_thread:{cpu}\r\nused_cpu_user_main_thread:0.5\r\n\n\
                 # Persistence\r\nloading:{loading}\r\nasync_loading:0\r\n"
            )
        };
        let first = Reading::parse(&info(10.0, 0), at, 0, 0);
        assert_eq!(first.cpu, Some(10.5), "the main thread's, not the process'");
        assert_eq!((first.scans, first.scan_usec), (4.0, 200.0));
        assert_eq!(
            first.backoff(None),
            Backoff::No,
            "one reading cannot tell busy"
        );
        // 4.5 s of the main thread's CPU in 5 s: busy.
        let busy = Reading::parse(&info(14.5, 0), at + Duration::from_secs(5), 0, 0);
        assert_eq!(busy.backoff(Some(&first)), Backoff::Busy);
        // The same, but 1 s of it in the sampler's own kind of commands: 3.5 s in 5 s, not busy.
        let mut own = busy;
        own.usec = first.usec + 1e6;
        assert_eq!(own.backoff(Some(&first)), Backoff::No);
        // 1 s in 5 s: not.
        let calm = Reading::parse(&info(15.5, 0), at + Duration::from_secs(10), 0, 0);
        assert_eq!(calm.backoff(Some(&busy)), Backoff::No);
        let loading = Reading::parse(&info(15.5, 1), at + Duration::from_secs(15), 0, 0);
        assert_eq!(loading.backoff(Some(&calm)), Backoff::Loading);
        assert_eq!(loading.backoff(None), Backoff::Loading);
        // Before Redis 6.2 there is no main-thread figure: the process' stands in.
        let old = Reading::parse("used_cpu_sys:1.25\r\nused_cpu_user:2.5\r\n", at, 0, 0);
        assert_eq!(old.cpu, Some(3.75));
        assert!(!old.loading);
    }

    #[test]
    fn slow_scans_make_the_sampler_rest_until_shown_otherwise() {
        let ms = Duration::from_millis;
        let near = ms(0);
        let mut trips = ScanTrips::default();
        for t in [1, 7, 9, 2] {
            trips.add(ms(t), near);
        }
        assert_eq!(trips.slow(), None, "four SCANs are too few to tell");
        trips.add(ms(6), near);
        assert_eq!(trips.slow(), Some(true), "3 of 5 over 5 ms");
        trips.add(ms(1), near);
        assert_eq!(trips.slow(), Some(false), "3 of 6: not most");
        assert_eq!(trips.mean(), Some(ms(26) / 6));
        // A Redis 40 ms away is not slow for its distance, only for waiting beyond it.
        let mut far = ScanTrips::default();
        for t in [41, 43, 40, 44, 42] {
            far.add(ms(t), ms(40));
        }
        assert_eq!(far.slow(), Some(false));
        for t in [52, 58, 47] {
            far.add(ms(t), ms(40));
        }
        assert_eq!(far.slow(), Some(false), "3 of 8 over 45 ms");
        for t in [50, 61] {
            far.add(ms(t), ms(40));
        }
        assert_eq!(far.slow(), Some(false), "5 of 10: not most");
        far.add(ms(46), ms(40));
        assert_eq!(far.slow(), Some(true), "6 of 11");
        // Two windows of two SCANs each, then one more: evidence adds up.
        let mut evidence = ScanTrips::default();
        for window in [[9, 9], [1, 9]] {
            let mut w = ScanTrips::default();
            for t in window {
                w.add(ms(t), near);
            }
            evidence.merge(w);
        }
        assert_eq!(evidence.slow(), None);
        evidence.add(ms(1), near);
        assert_eq!(evidence.slow(), Some(true), "3 of 5 across windows");

        use Backoff::*;
        // INFO's verdicts come first; then the round trips; without evidence, Slow stays.
        assert_eq!(next_backoff(No, Some(Loading), Some(true)), Loading);
        assert_eq!(next_backoff(No, Some(Busy), Some(true)), Busy);
        assert_eq!(next_backoff(No, Some(No), Some(true)), Slow);
        assert_eq!(next_backoff(Slow, Some(No), None), Slow);
        assert_eq!(next_backoff(Slow, Some(No), Some(false)), No);
        assert_eq!(next_backoff(No, Some(No), None), No);
        assert_eq!(
            next_backoff(Busy, None, None),
            Busy,
            "no reading: as before"
        );
        assert_eq!(next_backoff(Slow, None, Some(false)), No);
        assert_eq!(next_backoff(No, None, Some(true)), Slow);
    }

    #[test]
    fn vanished_keys_do_not_count() {
        let gone = [
            Ok(Value::SimpleString("none".into())),
            Ok(Value::Int(-2)),
            Ok(Value::Nil),
        ];
        assert_eq!(key_facts(b"k".to_vec(), &gone), None);
        let live = [
            Ok(Value::SimpleString("hash".into())),
            Ok(Value::Int(-1)),
            Ok(Value::Int(120)),
        ];
        assert_eq!(
            key_facts(b"k".to_vec(), &live),
            Some(KeyFacts {
                name: b"k".to_vec(),
                kind: "hash".into(),
                ttl_seconds: None,
                memory: 120,
                freq: None,
            })
        );
    }

    #[test]
    fn a_partial_pass_scales_to_the_database_and_a_census_is_exact() {
        let config = KeyspaceConfig {
            must_expire: vec!["session:".into()],
            ..Default::default()
        };
        let mut grouper = Grouper::new(&[], true, ':', 100);
        let mut pass = Pass::new(0, 1000, Instant::now());
        for i in 0..100 {
            let (name, ttl) = if i % 4 == 0 {
                (format!("session:{i}"), None)
            } else {
                (format!("cache:user:{i}"), Some(30.0))
            };
            pass.absorb(&key(&name, ttl, 100), &mut grouper, &config);
        }
        let mut out = FamilySet::new();
        pass.publish(&mut out, &config, false);
        let value = |out: &FamilySet, name: &str, prefix: &str| {
            out.get(name)
                .unwrap()
                .samples
                .iter()
                .find(|s| s.labels[1].1 == prefix)
                .unwrap()
                .value
        };
        assert_eq!(
            value(&out, "redis_keyspace_prefix_keys", "session:*"),
            250.0
        );
        assert_eq!(
            value(&out, "redis_keyspace_prefix_memory_bytes", "cache:user:*"),
            75.0 * 100.0 * 10.0
        );
        assert_eq!(
            value(
                &out,
                "redis_keyspace_must_expire_keys_without_ttl",
                "session:"
            ),
            250.0
        );
        let err = value(&out, "redis_keyspace_prefix_keys_error", "session:*");
        // 1000 * sqrt(0.25*0.75/100 * 0.9) = 41.1
        assert!((err - 41.08).abs() < 0.1, "{err}");
        let mut exact = FamilySet::new();
        pass.publish(&mut exact, &config, true);
        assert_eq!(
            value(&exact, "redis_keyspace_prefix_keys", "session:*"),
            25.0
        );
        assert_eq!(
            value(&exact, "redis_keyspace_prefix_keys_error", "session:*"),
            0.0
        );
    }

    #[test]
    fn keys_over_their_prefix_max_ttl_are_counted_by_the_longest_prefix() {
        let config = KeyspaceConfig {
            must_expire: vec!["lock:".into(), "lock:long:".into()],
            max_ttl: vec![("lock:".into(), 30.0), ("lock:long:".into(), 3600.0)],
            ..Default::default()
        };
        let mut grouper = Grouper::new(&[], true, ':', 100);
        let mut pass = Pass::new(0, 200, Instant::now());
        let keys = [
            ("lock:a", Some(10.0)),
            ("lock:b", Some(30.0)), // at the limit: not over
            ("lock:c", Some(600.0)),
            ("lock:d", None), // no TTL: a must_expire finding, not "over"
            ("lock:long:e", Some(600.0)), // under its own, longer limit
            ("lock:long:f", Some(7200.0)),
            ("cache:g", Some(99999.0)), // no limit
        ];
        for (name, ttl) in keys {
            pass.absorb(&key(name, ttl, 10), &mut grouper, &config);
        }
        let mut out = FamilySet::new();
        pass.publish(&mut out, &config, true);
        let value = |name: &str, prefix: &str| {
            out.get(name)
                .unwrap()
                .samples
                .iter()
                .find(|s| s.labels[1].1 == prefix)
                .map(|s| s.value)
        };
        assert_eq!(
            value("redis_keyspace_ttl_over_limit_keys", "lock:"),
            Some(1.0)
        );
        assert_eq!(
            value("redis_keyspace_ttl_longest_seconds", "lock:"),
            Some(600.0)
        );
        assert_eq!(
            value("redis_keyspace_ttl_limit_seconds", "lock:"),
            Some(30.0)
        );
        assert_eq!(
            value("redis_keyspace_ttl_over_limit_keys", "lock:long:"),
            Some(1.0)
        );
        assert_eq!(
            value("redis_keyspace_ttl_longest_seconds", "lock:long:"),
            Some(7200.0)
        );
        assert_eq!(
            value("redis_keyspace_must_expire_keys_without_ttl", "lock:"),
            Some(1.0)
        );
        // A partial pass (7 of 200 keys seen) scales the count, not the longest TTL.
        let mut estimate = FamilySet::new();
        pass.publish(&mut estimate, &config, false);
        let over = estimate.get("redis_keyspace_ttl_over_limit_keys").unwrap();
        assert!(
            (over.samples[0].value - 200.0 / 7.0).abs() < 1e-9,
            "{:?}",
            over.samples
        );
        let longest = estimate.get("redis_keyspace_ttl_longest_seconds").unwrap();
        assert_eq!(longest.samples[0].value, 600.0);
    }

    #[test]
    fn lfu_counters_turn_back_into_accesses_and_name_the_hot_key() {
        assert_eq!(lfu_accesses(5, 10.0), 0.0);
        assert_eq!(lfu_accesses(6, 10.0), 1.0);
        // Steps from 5: 1 + 11 + 21 accesses.
        assert_eq!(lfu_accesses(8, 10.0), 33.0);
        let config = KeyspaceConfig {
            top_keys: 1,
            ..Default::default()
        };
        let mut grouper = Grouper::new(&["cache:".into()], false, ':', 100);
        let mut pass = Pass::new(0, 3, Instant::now());
        pass.lfu_log_factor = Some(10.0);
        for (name, freq) in [("cache:a", 6), ("cache:hot", 40), ("cache:b", 6)] {
            let mut k = key(name, None, 10);
            k.freq = Some(freq);
            pass.absorb(&k, &mut grouper, &config);
        }
        let mut out = FamilySet::new();
        pass.publish(&mut out, &config, true);
        let hot = lfu_accesses(40, 10.0);
        let share = out
            .get("redis_keyspace_hot_key_access_share")
            .unwrap()
            .samples[0]
            .value;
        assert_eq!(share, hot / (hot + 2.0));
        let top = &out
            .get("redis_keyspace_hottest_key_lfu_freq")
            .unwrap()
            .samples;
        assert_eq!((top.len(), top[0].value), (1, 40.0));
        // Below HOT_KEY_MIN_FREQ nothing is called hot.
        let mut idle = Pass::new(0, 1, Instant::now());
        idle.lfu_log_factor = Some(10.0);
        let mut k = key("cache:x", None, 10);
        k.freq = Some(9);
        idle.absorb(&k, &mut grouper, &config);
        let mut out = FamilySet::new();
        idle.publish(&mut out, &config, true);
        assert!(out.get("redis_keyspace_hot_key_access_share").is_none());
        assert!(out.get("redis_keyspace_prefix_lfu_freq").is_some());
    }

    #[test]
    fn largest_keys_are_ranked_and_named_only_when_allowed() {
        let mut config = KeyspaceConfig {
            top_keys: 2,
            ..Default::default()
        };
        let mut grouper = Grouper::new(&[], true, ':', 100);
        let mut pass = Pass::new(0, 3, Instant::now());
        for (name, mem) in [("a:1", 10), ("b:1", 300), ("c:1", 200)] {
            pass.absorb(&key(name, None, mem), &mut grouper, &config);
        }
        let mut out = FamilySet::new();
        pass.publish(&mut out, &config, true);
        let largest = out.get("redis_keyspace_largest_key_bytes").unwrap();
        assert_eq!(largest.samples.len(), 2);
        assert_eq!(largest.samples[0].value, 300.0);
        assert!(largest
            .samples
            .iter()
            .all(|s| s.labels.iter().all(|(k, _)| *k != "key")));
        config.export_key_names = true;
        let mut out = FamilySet::new();
        pass.publish(&mut out, &config, true);
        let first = &out.get("redis_keyspace_largest_key_bytes").unwrap().samples[0];
        assert!(first.labels.contains(&("key", "b:1".to_owned())));
    }
}
