//! Watched keys: the queues, streams and counted patterns an operator names in `watch:`, with
//! their lengths, stream consumer groups and lag, under redis_exporter's names.
//!
//! One task per node, on its own connection, out of the poll path, at its own `interval`:
//!
//! - Globs are expanded with `SCAN … MATCH` (never `KEYS`), at most `max_matches` keys per
//!   entry; `redis_watch_match_cap_reached` says when the cap cut a list short. `count:`
//!   patterns count every match of a whole SCAN (no series per key, so no cap).
//! - Each round trip is charged to the budget in full (the round trip bounds Redis' time from
//!   above) and the task rests so that its share of wall time stays under `budget`; SCAN COUNT
//!   follows the SCAN round trip toward 200 µs, so no command runs long.
//! - Keys are inspected with pipelined `TYPE`, then the length command of each type (LLEN,
//!   SCARD, ZCARD, HLEN, XLEN, STRLEN; PFCOUNT for HyperLogLogs), streams with `XINFO STREAM`,
//!   `XINFO GROUPS` and `XINFO CONSUMERS`. Every round rebuilds the figures, so a key that is
//!   gone loses its series (Redis deletes a list when its last element is popped: an empty
//!   queue has no series).
//! - Like the sampler, only primaries report (a replica holds the same keys), checked each round.

use crate::collector::{value_int, value_items, value_text};
use crate::config::Target;
use crate::metrics::{FamilySet, Kind};
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One `watch:` entry: a key name or a Redis glob, in a database (`db3=queue:*`, as
/// redis_exporter's `--check-keys` spells it; db0 without the prefix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WatchEntry {
    pub db: u32,
    pub pattern: String,
}

impl WatchEntry {
    pub fn parse(raw: &str) -> WatchEntry {
        if let Some((db, rest)) = raw.split_once('=') {
            if let Some(Ok(db)) = db.strip_prefix("db").map(str::parse::<u32>) {
                return WatchEntry {
                    db,
                    pattern: rest.to_owned(),
                };
            }
        }
        WatchEntry {
            db: 0,
            pattern: raw.to_owned(),
        }
    }

    /// True when the entry needs a SCAN (it has `*`, `?` or `[`).
    pub fn is_glob(&self) -> bool {
        is_glob(&self.pattern)
    }
}

/// Redis' glob characters (a backslash escapes them, which still needs SCAN to unescape).
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '\\'])
}

/// The watcher's settings for one target (`watch:` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    pub keys: Vec<WatchEntry>,
    pub streams: Vec<WatchEntry>,
    pub count: Vec<WatchEntry>,
    /// Publish `redis_key_value` for numeric strings (values can hold personal data).
    pub values: bool,
    /// Publish per-consumer series of stream groups (they can be many).
    pub consumers: bool,
    /// At most this many keys per glob of `keys` or `streams`.
    pub max_matches: usize,
    pub interval: Duration,
    /// Share of wall time the watcher may keep Redis busy.
    pub budget: f64,
    /// Read on replicas instead of primaries (each node checks its role every round, so the
    /// reading follows failovers).
    pub on_replicas: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            streams: Vec::new(),
            count: Vec::new(),
            values: false,
            consumers: false,
            max_matches: 1000,
            interval: Duration::from_secs(5),
            budget: 0.01,
            on_replicas: false,
        }
    }
}

/// A stream entry id `ms-seq` as a pair; `0-0` when it does not parse.
pub fn stream_id(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A reply's field/value pairs (RESP2 flat array or RESP3 map).
fn pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Map(entries) => entries
            .iter()
            .filter_map(|(k, v)| Some((value_text(k)?, v)))
            .collect(),
        other => value_items(other)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((value_text(k)?, v)),
                _ => None,
            })
            .collect(),
    }
}

fn field<'a>(fields: &'a [(String, &Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

fn field_int(fields: &[(String, &Value)], name: &str) -> Option<i64> {
    field(fields, name).and_then(value_int)
}

fn field_text(fields: &[(String, &Value)], name: &str) -> Option<String> {
    field(fields, name).and_then(value_text)
}

/// What `XINFO STREAM` says about a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamInfo {
    pub length: i64,
    pub radix_tree_keys: i64,
    pub radix_tree_nodes: i64,
    pub groups: i64,
    pub last_generated_id: (u64, u64),
    pub max_deleted_entry_id: Option<(u64, u64)>,
    pub entries_added: Option<i64>,
    /// None for an empty stream.
    pub first_entry_id: Option<(u64, u64)>,
    pub last_entry_id: Option<(u64, u64)>,
}

/// Parses `XINFO STREAM` (Redis 5 to 7.2 fields; the newer ones are optional).
pub fn parse_stream_info(value: &Value) -> Option<StreamInfo> {
    let f = pairs(value);
    let entry_id = |name: &str| {
        field(&f, name)
            .and_then(value_items)
            .and_then(|entry| entry.first())
            .and_then(value_text)
            .map(|id| stream_id(&id))
    };
    Some(StreamInfo {
        length: field_int(&f, "length")?,
        radix_tree_keys: field_int(&f, "radix-tree-keys").unwrap_or(0),
        radix_tree_nodes: field_int(&f, "radix-tree-nodes").unwrap_or(0),
        groups: field_int(&f, "groups").unwrap_or(0),
        last_generated_id: stream_id(&field_text(&f, "last-generated-id").unwrap_or_default()),
        max_deleted_entry_id: field_text(&f, "max-deleted-entry-id").map(|t| stream_id(&t)),
        entries_added: field_int(&f, "entries-added"),
        first_entry_id: entry_id("first-entry"),
        last_entry_id: entry_id("last-entry"),
    })
}

/// One consumer group from `XINFO GROUPS`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupInfo {
    pub name: String,
    pub consumers: i64,
    pub pending: i64,
    pub last_delivered_id: (u64, u64),
    pub entries_read: Option<i64>,
    /// Redis 7's own count of entries not yet delivered (nil when it cannot tell).
    pub lag: Option<i64>,
}

pub fn parse_groups(value: &Value) -> Vec<GroupInfo> {
    value_items(value)
        .unwrap_or_default()
        .iter()
        .filter_map(|g| {
            let f = pairs(g);
            Some(GroupInfo {
                name: field_text(&f, "name")?,
                consumers: field_int(&f, "consumers").unwrap_or(0),
                pending: field_int(&f, "pending").unwrap_or(0),
                last_delivered_id: stream_id(
                    &field_text(&f, "last-delivered-id").unwrap_or_default(),
                ),
                entries_read: field_int(&f, "entries-read"),
                lag: field_int(&f, "lag"),
            })
        })
        .collect()
}

/// One consumer from `XINFO CONSUMERS`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: i64,
    /// Milliseconds since the consumer's last attempted read.
    pub idle_ms: i64,
    /// Milliseconds since its last successful read (Redis 7.2+).
    pub inactive_ms: Option<i64>,
}

pub fn parse_consumers(value: &Value) -> Vec<ConsumerInfo> {
    value_items(value)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            let f = pairs(c);
            Some(ConsumerInfo {
                name: field_text(&f, "name")?,
                pending: field_int(&f, "pending").unwrap_or(0),
                idle_ms: field_int(&f, "idle").unwrap_or(0),
                inactive_ms: field_int(&f, "inactive").filter(|v| *v >= 0),
            })
        })
        .collect()
}

/// Entries of the stream the group has not been delivered yet: Redis 7's `lag` where it gives
/// one; else 0 when the group has read up to the last id, the whole length when it has read
/// nothing still in the stream, and unknown in between (Redis 6 cannot count a range cheaply).
pub fn group_lag(stream: &StreamInfo, group: &GroupInfo) -> Option<i64> {
    if let Some(lag) = group.lag {
        return Some(lag);
    }
    if group.last_delivered_id >= stream.last_generated_id {
        return Some(0);
    }
    match stream.first_entry_id {
        None => Some(0),
        Some(first) if group.last_delivered_id < first => Some(stream.length),
        Some(_) => None,
    }
}

/// Adds a sample; shorthand for the many gauges here.
fn gauge(out: &mut FamilySet, name: &str, help: &str, labels: Vec<(&'static str, String)>, v: f64) {
    out.add(name, help, Kind::Gauge, labels, v);
}

/// Publishes one stream, its groups and (with `consumers`) their consumers. `stalled_since`
/// remembers when a group with entries waiting was first seen without any consumer.
pub fn publish_stream(
    out: &mut FamilySet,
    db: u32,
    name: &str,
    stream: &StreamInfo,
    groups: &[(GroupInfo, Option<Vec<ConsumerInfo>>)],
    per_consumer: bool,
    stalled_for: &mut dyn FnMut(&str, bool) -> f64,
) {
    let base = || vec![("db", format!("db{db}")), ("stream", name.to_owned())];
    let id_ms = |id: (u64, u64)| id.0 as f64;
    gauge(
        out,
        "redis_stream_length",
        "Entries in the stream (XLEN)",
        base(),
        stream.length as f64,
    );
    gauge(
        out,
        "redis_stream_radix_tree_keys",
        "Radix tree keys of the stream",
        base(),
        stream.radix_tree_keys as f64,
    );
    gauge(
        out,
        "redis_stream_radix_tree_nodes",
        "Radix tree nodes of the stream",
        base(),
        stream.radix_tree_nodes as f64,
    );
    gauge(
        out,
        "redis_stream_groups",
        "Consumer groups of the stream",
        base(),
        stream.groups as f64,
    );
    gauge(
        out,
        "redis_stream_last_generated_id",
        "Millisecond part of the stream's last generated id (ms since the epoch, redis_exporter's unit)",
        base(),
        id_ms(stream.last_generated_id),
    );
    if let Some(id) = stream.max_deleted_entry_id {
        gauge(
            out,
            "redis_stream_max_deleted_entry_id",
            "Millisecond part of the highest id deleted from the stream",
            base(),
            id_ms(id),
        );
    }
    if let Some(added) = stream.entries_added {
        out.add(
            "redis_stream_entries_added_total",
            "Entries ever added to the stream",
            Kind::Counter,
            base(),
            added as f64,
        );
    }
    if let Some(id) = stream.first_entry_id {
        gauge(
            out,
            "redis_stream_first_entry_id",
            "Millisecond part of the id of the stream's first entry (ms since the epoch: the oldest entry's time)",
            base(),
            id_ms(id),
        );
    }
    if let Some(id) = stream.last_entry_id {
        gauge(
            out,
            "redis_stream_last_entry_id",
            "Millisecond part of the id of the stream's last entry (ms since the epoch: the newest entry's time)",
            base(),
            id_ms(id),
        );
    }
    for (group, consumers) in groups {
        let labels = || {
            let mut l = base();
            l.push(("group", group.name.clone()));
            l
        };
        gauge(
            out,
            "redis_stream_group_consumers",
            "Consumers of the group",
            labels(),
            group.consumers as f64,
        );
        gauge(
            out,
            "redis_stream_group_messages_pending",
            "Entries delivered to the group and not yet acknowledged (its PEL)",
            labels(),
            group.pending as f64,
        );
        gauge(
            out,
            "redis_stream_group_last_delivered_id",
            "Millisecond part of the last id delivered to the group",
            labels(),
            id_ms(group.last_delivered_id),
        );
        if let Some(read) = group.entries_read {
            gauge(
                out,
                "redis_stream_group_entries_read",
                "Entries the group has read (Redis 7)",
                labels(),
                read as f64,
            );
        }
        if let Some(lag) = group_lag(stream, group) {
            gauge(
                out,
                "redis_stream_group_lag",
                "Entries of the stream not yet delivered to the group",
                labels(),
                lag as f64,
            );
        }
        // Not listed (too many consumers to ask about): neither stall nor consumer series.
        let Some(consumers) = consumers else {
            stalled_for(&group.name, false);
            continue;
        };
        // Entries wait when the group has not been delivered the last id yet.
        let waiting = group.last_delivered_id < stream.last_generated_id && stream.length > 0;
        let stalled = if !waiting {
            0.0
        } else if consumers.is_empty() {
            stalled_for(&group.name, true)
        } else {
            consumers
                .iter()
                .map(|c| c.inactive_ms.unwrap_or(c.idle_ms).max(0))
                .min()
                .unwrap_or(0) as f64
                / 1000.0
        };
        // A consumer to ask about, or nothing waiting: no stall of the group's own.
        if !consumers.is_empty() || !waiting {
            stalled_for(&group.name, false);
        }
        gauge(
            out,
            "redis_stream_group_stalled_seconds",
            "How long entries have waited for the group while none of its consumers read (0 when nothing waits or a consumer is reading)",
            labels(),
            stalled,
        );
        if per_consumer {
            for c in consumers {
                let labels = || {
                    let mut l = labels();
                    l.push(("consumer", c.name.clone()));
                    l
                };
                gauge(
                    out,
                    "redis_stream_group_consumer_messages_pending",
                    "Entries delivered to the consumer and not yet acknowledged",
                    labels(),
                    c.pending as f64,
                );
                gauge(
                    out,
                    "redis_stream_group_consumer_idle_seconds",
                    "Seconds since the consumer last tried to read",
                    labels(),
                    c.idle_ms as f64 / 1000.0,
                );
            }
        }
    }
}

/// The command that gives the length of a key of this TYPE.
fn length_command(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "list" => "LLEN",
        "set" => "SCARD",
        "zset" => "ZCARD",
        "hash" => "HLEN",
        "stream" => "XLEN",
        "string" => "STRLEN",
        _ => return None,
    })
}

/// Reads a string as a number for `redis_key_value`: only plain decimal numbers qualify.
pub fn numeric_value(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.is_empty() || text.len() > 40 {
        return None;
    }
    let v: f64 = text.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Longest string `values: true` reads (a counter, not a blob).
const VALUE_MAX_BYTES: i64 = 40;

/// Keys per pipeline: a pipeline of O(1) commands this long keeps Redis well under 1 ms.
const PIPELINE_KEYS: usize = 200;

/// Runs the watcher for one node until shutdown.
pub async fn run_watcher(
    target: Arc<Target>,
    config: WatchConfig,
    facts: super::SharedFacts,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watcher = Watcher {
        target,
        config,
        conn: None,
        count: super::ScanCount::START,
        busy: Duration::ZERO,
        stalled: HashMap::new(),
        rounds: 0,
        redis_seconds: 0.0,
        refused_dbs: BTreeSet::new(),
    };
    let mut next = tokio::time::Instant::now();
    let mut failed_rounds = 0u32;
    loop {
        // (A sender gone, its owner aborted, is a stop too.)
        if !crate::topology::tick(next, &mut shutdown).await {
            break;
        }
        let round = tokio::select! {
            r = watcher.round() => r,
            _ = shutdown.changed() => break,
        };
        match round {
            Ok(set) => {
                failed_rounds = 0;
                *facts.lock().unwrap_or_else(|p| p.into_inner()) = set;
            }
            Err(why) => {
                tracing::debug!(target_name = %watcher.target.name, problem = why, "key watcher round failed");
                // A node whose turn it is not keeps its connection: no fault of the connection.
                let not_ours = why == NOT_OURS_REPLICA || why == NOT_OURS_PRIMARY;
                if !not_ours {
                    watcher.conn = None;
                }
                failed_rounds += 1;
                // One failed round keeps the last figures (a timeout should not make series
                // blink); more, and they would be served as if fresh while nothing is read.
                if not_ours || failed_rounds >= STALE_AFTER_FAILED_ROUNDS {
                    facts.lock().unwrap_or_else(|p| p.into_inner()).clear();
                }
            }
        }
        next = (next + watcher.config.interval).max(tokio::time::Instant::now());
    }
}

/// Groups with more consumers than this are not asked for their consumer list (see
/// `inspect_streams`): no `redis_stream_group_stalled_seconds` or per-consumer series for them.
pub const MAX_CONSUMERS_LISTED: i64 = 500;

/// Failed rounds in a row after which the watched series are withdrawn.
const STALE_AFTER_FAILED_ROUNDS: u32 = 3;

const NOT_OURS_REPLICA: &str = "a replica; primaries report watched keys";
const NOT_OURS_PRIMARY: &str = "a primary; replicas report watched keys (on_replicas)";

struct Watcher {
    target: Arc<Target>,
    config: WatchConfig,
    conn: Option<MultiplexedConnection>,
    /// SCAN COUNT for glob expansion.
    count: super::ScanCount,
    /// Round-trip time charged and not yet rested for.
    busy: Duration,
    /// (db, stream, group) → when it was first seen with entries waiting and no consumer.
    stalled: HashMap<(u32, String, String), Instant>,
    rounds: u64,
    redis_seconds: f64,
    /// Databases the server refused in the last round (warned about once).
    refused_dbs: BTreeSet<u32>,
}

/// A SCAN reply: the next cursor and the keys of this step.
type ScanReply = (u64, Vec<Vec<u8>>);

/// Glob expansion of one entry.
struct Expansion {
    keys: Vec<Vec<u8>>,
    capped: bool,
}

impl Watcher {
    async fn connection(&mut self) -> Result<MultiplexedConnection, &'static str> {
        super::kept_connection(&mut self.conn, &self.target)
            .await
            .cloned()
    }

    /// Sends a pipeline, charges its round trip, and rests so the budget holds.
    async fn send<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<(T, Duration), &'static str> {
        let mut conn = self.connection().await?;
        let t0 = Instant::now();
        let reply = tokio::time::timeout(self.target.poll_timeout, pipe.query_async(&mut conn))
            .await
            .map_err(|_| "timed out")?
            .map_err(|_| "command failed")?;
        let took = t0.elapsed();
        self.busy += took;
        self.redis_seconds += took.as_secs_f64();
        let rest = super::rest_for(self.busy, self.config.budget);
        if rest >= Duration::from_millis(10) {
            tokio::time::sleep(rest).await;
            self.busy = Duration::ZERO;
        }
        Ok((reply, took))
    }

    /// SCAN MATCH over one database: the matches (up to `cap`) and their number (all of them).
    async fn scan(
        &mut self,
        db: u32,
        pattern: &str,
        cap: Option<usize>,
    ) -> Result<(Expansion, u64), &'static str> {
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        let mut matched = 0u64;
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SELECT").arg(db).ignore();
            pipe.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(self.count.get());
            let (reply, took): (Vec<ScanReply>, Duration) = self.send(&pipe).await?;
            self.count.follow(took, super::SCAN_ROUND_TRIP);
            let (next, found) = reply.into_iter().next().ok_or("SCAN reply")?;
            matched += found.len() as u64;
            if let Some(cap) = cap {
                let room = cap.saturating_sub(keys.len());
                let over = found.len() > room;
                keys.extend(found.into_iter().take(room));
                if over || (keys.len() >= cap && next != 0) {
                    return Ok((Expansion { keys, capped: true }, matched));
                }
            }
            cursor = next;
            if cursor == 0 {
                // SCAN may return a key twice (the table was rehashed mid-walk).
                keys.sort();
                keys.dedup();
                return Ok((
                    Expansion {
                        keys,
                        capped: false,
                    },
                    matched,
                ));
            }
        }
    }

    async fn expand(
        &mut self,
        entry: &WatchEntry,
        kind: &'static str,
        out: &mut FamilySet,
    ) -> Result<Vec<Vec<u8>>, &'static str> {
        if !entry.is_glob() {
            return Ok(vec![entry.pattern.as_bytes().to_vec()]);
        }
        let (found, _) = self
            .scan(entry.db, &entry.pattern, Some(self.config.max_matches))
            .await?;
        let labels = || {
            vec![
                ("db", format!("db{}", entry.db)),
                ("pattern", entry.pattern.clone()),
                ("kind", kind.to_owned()),
            ]
        };
        gauge(
            out,
            "redis_watch_matches",
            "Keys a watched glob matched (at most max_matches)",
            labels(),
            found.keys.len() as f64,
        );
        gauge(
            out,
            "redis_watch_match_cap_reached",
            "1 when a watched glob matched more keys than max_matches and only the first were watched",
            labels(),
            f64::from(u8::from(found.capped)),
        );
        Ok(found.keys)
    }

    /// One round: every entry expanded and inspected; the figures to publish.
    async fn round(&mut self) -> Result<FamilySet, &'static str> {
        let started = Instant::now();
        let mut out = FamilySet::new();
        let mut config = self.config.clone();
        // The role, and whether the server takes each database the entries name (past
        // `databases`, or any but 0 on a cluster or some managed services, it refuses them),
        // in one round trip. Entries in a refused database are left out: every pipeline below
        // starts with a SELECT whose error would be ignored, and the commands after it would
        // read whatever database the connection was on.
        let dbs: BTreeSet<u32> = config
            .keys
            .iter()
            .chain(&config.count)
            .chain(&config.streams)
            .map(|e| e.db)
            .collect();
        let mut first = redis::pipe();
        first.ignore_errors();
        first.cmd("INFO").arg("replication");
        for db in &dbs {
            first.cmd("SELECT").arg(*db);
        }
        let (replies, _): (Vec<RedisResult<Value>>, _) = self.send(&first).await?;
        let info = replies
            .first()
            .and_then(|r| r.as_ref().ok())
            .and_then(value_text)
            .ok_or("INFO replication failed")?;
        let info = crate::collector::info::parse_info(&info);
        let replica = info.get("role") == Some("slave");
        if replica != config.on_replicas {
            return Err(if replica {
                NOT_OURS_REPLICA
            } else {
                NOT_OURS_PRIMARY
            });
        }
        let refused: BTreeSet<u32> = dbs
            .iter()
            .zip(replies.iter().skip(1))
            .filter(|(_, r)| r.is_err())
            .map(|(db, _)| *db)
            .collect();
        for db in refused.difference(&self.refused_dbs) {
            tracing::warn!(target_name = %self.target.name, db, "watch: the server refuses this database; its entries are skipped");
        }
        self.refused_dbs = refused;
        for list in [&mut config.keys, &mut config.count, &mut config.streams] {
            list.retain(|e| !self.refused_dbs.contains(&e.db));
        }
        // Keys, by database.
        let mut keys: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for entry in &config.keys {
            let found = self.expand(entry, "keys", &mut out).await?;
            keys.entry(entry.db).or_default().extend(found);
        }
        for (db, mut names) in keys {
            names.sort();
            names.dedup();
            for chunk in names.chunks(PIPELINE_KEYS) {
                self.inspect_keys(db, chunk, &mut out).await?;
            }
        }
        for entry in &config.count {
            let (_, matched) = self.scan(entry.db, &entry.pattern, None).await?;
            gauge(
                &mut out,
                "redis_keys_count",
                "Keys matching a counted pattern (redis_exporter's name)",
                vec![
                    ("db", format!("db{}", entry.db)),
                    ("key", entry.pattern.clone()),
                ],
                matched as f64,
            );
        }
        let mut streams: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for entry in &config.streams {
            let found = self.expand(entry, "streams", &mut out).await?;
            streams.entry(entry.db).or_default().extend(found);
        }
        let mut seen_groups = Vec::new();
        for (db, mut names) in streams {
            names.sort();
            names.dedup();
            for chunk in names.chunks(PIPELINE_KEYS / 2) {
                self.inspect_streams(db, chunk, &mut out, &mut seen_groups)
                    .await?;
            }
        }
        self.stalled.retain(|k, _| seen_groups.contains(k));
        self.rounds += 1;
        out.add(
            "redis_watch_rounds_total",
            "Completed rounds over the watched keys",
            Kind::Counter,
            Vec::new(),
            self.rounds as f64,
        );
        out.add(
            "redis_watch_redis_seconds_total",
            "Round-trip time of the watcher's commands: an upper bound of the Redis time it used",
            Kind::Counter,
            Vec::new(),
            self.redis_seconds,
        );
        out.gauge(
            "redis_watch_last_round_duration_seconds",
            "How long the last round over the watched keys took, rests for the budget included",
            started.elapsed().as_secs_f64(),
        );
        Ok(out)
    }

    async fn inspect_keys(
        &mut self,
        db: u32,
        names: &[Vec<u8>],
        out: &mut FamilySet,
    ) -> Result<(), &'static str> {
        let mut types = redis::pipe();
        // Each key answered on its own: on a cluster node, a key of a slot it does not serve is
        // a MOVED error (its own node reports it), which must not cost the others their figures.
        types.ignore_errors();
        types.cmd("SELECT").arg(db).ignore();
        for name in names {
            types.cmd("TYPE").arg(name);
        }
        let (kinds, _): (Vec<RedisResult<Value>>, _) = self.send(&types).await?;
        let kinds: Vec<String> = kinds
            .into_iter()
            .map(|k| k.ok().and_then(|v| value_text(&v)).unwrap_or_default())
            .collect();
        // Second round trip: the length by type, and a string's first bytes (HyperLogLogs start
        // with "HYLL"; numbers are read only with `values`).
        let mut lengths = redis::pipe();
        lengths.ignore_errors();
        lengths.cmd("SELECT").arg(db).ignore();
        let mut asked: Vec<(&[u8], &str)> = Vec::new();
        // Names that differ only in bytes that are not UTF-8 read the same as label values:
        // the first of them is published, a second would repeat its series.
        let mut labelled = std::collections::HashSet::new();
        for (name, kind) in names.iter().zip(&kinds) {
            let Some(command) = length_command(kind) else {
                continue;
            };
            if !labelled.insert(String::from_utf8_lossy(name)) {
                continue;
            }
            lengths.cmd(command).arg(name);
            let head = if self.config.values {
                VALUE_MAX_BYTES
            } else {
                4
            };
            if kind == "string" {
                lengths.cmd("GETRANGE").arg(name).arg(0).arg(head - 1);
            }
            asked.push((name, kind));
        }
        if asked.is_empty() {
            return Ok(());
        }
        let (replies, _): (Vec<RedisResult<Value>>, _) = self.send(&lengths).await?;
        let mut replies = replies.into_iter();
        let mut hll: Vec<&[u8]> = Vec::new();
        for (name, kind) in asked {
            let size = replies
                .next()
                .and_then(|r| r.ok())
                .and_then(|v| value_int(&v));
            let head = if kind == "string" {
                match replies.next() {
                    Some(Ok(Value::BulkString(b))) => Some(b),
                    _ => None,
                }
            } else {
                None
            };
            let labels = || {
                vec![
                    ("db", format!("db{db}")),
                    ("key", String::from_utf8_lossy(name).into_owned()),
                ]
            };
            if head.as_deref().is_some_and(|h| h.starts_with(b"HYLL")) {
                hll.push(name);
                continue;
            }
            // A key that vanished between TYPE and its length has no series.
            let Some(size) = size else { continue };
            gauge(
                out,
                "redis_key_size",
                "Length of a watched key: elements of a list, set, sorted set, hash or stream, bytes of a string, PFCOUNT of a HyperLogLog",
                labels(),
                size as f64,
            );
            if self.config.values && size <= VALUE_MAX_BYTES {
                if let Some(v) = head.as_deref().and_then(numeric_value) {
                    gauge(
                        out,
                        "redis_key_value",
                        "Value of a watched numeric string (only with watch.values)",
                        labels(),
                        v,
                    );
                }
            }
        }
        if !hll.is_empty() {
            let mut counts = redis::pipe();
            counts.ignore_errors();
            counts.cmd("SELECT").arg(db).ignore();
            for name in &hll {
                counts.cmd("PFCOUNT").arg(*name);
            }
            let (replies, _): (Vec<RedisResult<Value>>, _) = self.send(&counts).await?;
            for (name, reply) in hll.iter().zip(replies) {
                if let Some(n) = reply.ok().and_then(|v| value_int(&v)) {
                    gauge(
                        out,
                        "redis_key_size",
                        "Length of a watched key: elements of a list, set, sorted set, hash or stream, bytes of a string, PFCOUNT of a HyperLogLog",
                        vec![
                            ("db", format!("db{db}")),
                            ("key", String::from_utf8_lossy(name).into_owned()),
                        ],
                        n as f64,
                    );
                }
            }
        }
        Ok(())
    }

    async fn inspect_streams(
        &mut self,
        db: u32,
        names: &[Vec<u8>],
        out: &mut FamilySet,
        seen_groups: &mut Vec<(u32, String, String)>,
    ) -> Result<(), &'static str> {
        let mut info = redis::pipe();
        info.ignore_errors();
        info.cmd("SELECT").arg(db).ignore();
        for name in names {
            info.cmd("XINFO").arg("STREAM").arg(name);
            info.cmd("XINFO").arg("GROUPS").arg(name);
        }
        let (replies, _): (Vec<RedisResult<Value>>, _) = self.send(&info).await?;
        let mut found: Vec<(&[u8], StreamInfo, Vec<GroupInfo>)> = Vec::new();
        for (name, pair) in names.iter().zip(replies.chunks(2)) {
            // A missing key (or not a stream) answers with an error: no series.
            let (Some(Ok(stream)), Some(Ok(groups))) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let Some(stream) = parse_stream_info(stream) else {
                continue;
            };
            found.push((name, stream, parse_groups(groups)));
        }
        // XINFO CONSUMERS answers with every consumer of the group, and consumers are never
        // removed by Redis. Its Redis time, measured on 7.0.15 (commandstats, 5 calls each):
        // 0.20 ms at 500 consumers, 4.3 ms at 10,000, 42 ms at 100,000. Groups beyond the
        // limit are not listed.
        let listed = |g: &GroupInfo| g.consumers <= MAX_CONSUMERS_LISTED;
        let mut consumers = redis::pipe();
        consumers.ignore_errors();
        consumers.cmd("SELECT").arg(db).ignore();
        let mut asked = 0;
        for (name, _, groups) in &found {
            for g in groups.iter().filter(|g| listed(g)) {
                consumers
                    .cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(*name)
                    .arg(&g.name);
                asked += 1;
            }
        }
        let mut replies = if asked > 0 {
            let (r, _): (Vec<RedisResult<Value>>, _) = self.send(&consumers).await?;
            r.into_iter()
        } else {
            Vec::new().into_iter()
        };
        let now = Instant::now();
        for (name, stream, groups) in found {
            let name = String::from_utf8_lossy(name).into_owned();
            let groups: Vec<(GroupInfo, Option<Vec<ConsumerInfo>>)> = groups
                .into_iter()
                .map(|g| {
                    let list = if listed(&g) {
                        Some(match replies.next() {
                            Some(Ok(v)) => parse_consumers(&v),
                            _ => Vec::new(),
                        })
                    } else {
                        None
                    };
                    (g, list)
                })
                .collect();
            let stalled = &mut self.stalled;
            let mut stalled_for = |group: &str, stuck: bool| -> f64 {
                let key = (db, name.clone(), group.to_owned());
                if !stuck {
                    stalled.remove(&key);
                    return 0.0;
                }
                seen_groups.push(key.clone());
                now.duration_since(*stalled.entry(key).or_insert(now))
                    .as_secs_f64()
            };
            publish_stream(
                out,
                db,
                &name,
                &stream,
                &groups,
                self.config.consumers,
                &mut stalled_for,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn stream_reply() -> Value {
        Value::Array(vec![
            bulk("length"),
            Value::Int(3),
            bulk("radix-tree-keys"),
            Value::Int(1),
            bulk("radix-tree-nodes"),
            Value::Int(2),
            bulk("last-generated-id"),
            bulk("1700000000300-0"),
            bulk("max-deleted-entry-id"),
            bulk("0-0"),
            bulk("entries-added"),
            Value::Int(3),
            bulk("groups"),
            Value::Int(1),
            bulk("first-entry"),
            Value::Array(vec![
                bulk("1700000000100-0"),
                Value::Array(vec![bulk("f"), bulk("v")]),
            ]),
            bulk("last-entry"),
            Value::Array(vec![
                bulk("1700000000300-0"),
                Value::Array(vec![bulk("f"), bulk("v")]),
            ]),
        ])
    }

    #[test]
    fn db_prefixes_and_globs_are_read_as_redis_exporter_spells_them() {
        assert_eq!(
            WatchEntry::parse("db3=queue:*"),
            WatchEntry {
                db: 3,
                pattern: "queue:*".into()
            }
        );
        assert_eq!(WatchEntry::parse("a=b").pattern, "a=b");
        assert!(!WatchEntry::parse("jobs:pending").is_glob());
        assert!(WatchEntry::parse("jobs:[ab]").is_glob());
    }

    #[test]
    fn xinfo_stream_gives_length_and_entry_times() {
        let s = parse_stream_info(&stream_reply()).unwrap();
        assert_eq!(s.length, 3);
        assert_eq!(s.first_entry_id, Some((1700000000100, 0)));
        assert_eq!(s.last_entry_id, Some((1700000000300, 0)));
        assert_eq!(s.entries_added, Some(3));
        let empty = Value::Array(vec![
            bulk("length"),
            Value::Int(0),
            bulk("first-entry"),
            Value::Nil,
        ]);
        assert_eq!(parse_stream_info(&empty).unwrap().first_entry_id, None);
    }

    #[test]
    fn lag_comes_from_redis_or_from_the_ids_where_they_tell() {
        let s = parse_stream_info(&stream_reply()).unwrap();
        let group = |delivered: &str, lag: Option<i64>| GroupInfo {
            name: "g".into(),
            last_delivered_id: stream_id(delivered),
            lag,
            ..Default::default()
        };
        assert_eq!(group_lag(&s, &group("1-0", Some(7))), Some(7));
        assert_eq!(group_lag(&s, &group("1700000000300-0", None)), Some(0));
        assert_eq!(group_lag(&s, &group("0-0", None)), Some(3));
        assert_eq!(group_lag(&s, &group("1700000000200-0", None)), None);
    }

    #[test]
    fn a_group_with_entries_waiting_and_no_reader_is_stalled() {
        let s = parse_stream_info(&stream_reply()).unwrap();
        let g = GroupInfo {
            name: "workers".into(),
            last_delivered_id: (1700000000100, 0),
            lag: Some(2),
            ..Default::default()
        };
        let idle = |ms| ConsumerInfo {
            name: "c".into(),
            idle_ms: ms,
            ..Default::default()
        };
        // The watcher's clock, 10 s a round: a stall starts when first seen, ends when told.
        let (mut clock, mut since) = (0.0, None::<f64>);
        let mut stalled = |consumers: Vec<ConsumerInfo>| {
            clock += 10.0;
            let mut out = FamilySet::new();
            publish_stream(
                &mut out,
                0,
                "s",
                &s,
                &[(g.clone(), Some(consumers))],
                true,
                &mut |_, stuck| {
                    if stuck {
                        clock - *since.get_or_insert(clock)
                    } else {
                        since = None;
                        0.0
                    }
                },
            );
            out.get("redis_stream_group_stalled_seconds")
                .unwrap()
                .samples[0]
                .value
        };
        // No consumer at all: the stall grows round after round.
        assert_eq!(stalled(vec![]), 0.0);
        assert_eq!(stalled(vec![]), 10.0);
        assert_eq!(stalled(vec![]), 20.0);
        assert_eq!(stalled(vec![idle(90_000), idle(30_000)]), 30.0);
        assert_eq!(stalled(vec![]), 0.0, "a new stall starts afresh");
        let mut out = FamilySet::new();
        let caught_up = GroupInfo {
            last_delivered_id: (1700000000300, 0),
            ..g.clone()
        };
        publish_stream(
            &mut out,
            0,
            "s",
            &s,
            &[(caught_up, Some(vec![]))],
            false,
            &mut |_, _| 9.0,
        );
        assert_eq!(
            out.get("redis_stream_group_stalled_seconds")
                .unwrap()
                .samples[0]
                .value,
            0.0
        );
        assert!(out
            .get("redis_stream_group_consumer_idle_seconds")
            .is_none());
        // A group with too many consumers to list: no stall figure rather than a wrong one.
        let mut out = FamilySet::new();
        publish_stream(
            &mut out,
            0,
            "s",
            &s,
            &[(g.clone(), None)],
            true,
            &mut |_, _| 42.0,
        );
        assert!(out.get("redis_stream_group_stalled_seconds").is_none());
        assert!(out.get("redis_stream_group_consumers").is_some());
    }

    #[test]
    fn only_plain_numbers_are_values() {
        assert_eq!(numeric_value(b"42"), Some(42.0));
        assert_eq!(numeric_value(b"-1.5"), Some(-1.5));
        assert_eq!(numeric_value(b"alice@example.com"), None);
        assert_eq!(numeric_value(b"inf"), None);
        assert_eq!(numeric_value(b""), None);
    }
}
