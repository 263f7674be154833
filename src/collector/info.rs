//! INFO: the bulk of what Redis tells about itself, in one command per poll.
//!
//! We ask for the sections we publish by name (`INFO server clients … latencystats`), one round
//! trip; servers older than 7.0 accept a single section only, so on their first refusal we fall
//! back to `INFO ALL` for the life of the connection. Unknown fields are ignored, never a panic.

use super::info_fields::{Conversion, FIELDS};
use super::{value_text, Collector, Outcome};
use crate::metrics::{sanitize_name, FamilySet, Kind};
use redis::{Cmd, RedisResult, Value};
use std::collections::HashMap;
use std::time::Instant;

/// The sections asked for on every poll (one call; modules and keysizes are never asked).
pub const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "keyspace",
    "errorstats",
    "cluster",
    // Only a Sentinel has this section; other servers ignore the name.
    "sentinel",
];

/// Sections added every `command_stats` refresh: per-command counters and latency
/// percentiles cost Redis more than all the rest of INFO together.
pub const COMMAND_SECTIONS: &[&str] = &["commandstats", "latencystats"];

/// The INFO fields of [`COMMAND_SECTIONS`]: kept as text between refreshes and turned into
/// families again at every poll. The text is a tenth of the size of the families it makes, and
/// a thousand targets hold one copy each.
const COMMAND_FIELDS: &[&str] = &["cmdstat_", "latency_percentiles_usec_"];

/// The lines of `text` that [`COMMAND_FIELDS`] name.
fn command_lines(text: &str) -> String {
    let mut lines = String::new();
    for line in text.lines() {
        if COMMAND_FIELDS.iter().any(|prefix| line.starts_with(prefix)) {
            lines.push_str(line.trim_end_matches('\r'));
            lines.push('\n');
        }
    }
    lines.shrink_to_fit();
    lines
}

/// INFO parsed into fields, in the order Redis wrote them. One copy of the text and the
/// positions of each key and value in it: a poll parses a few hundred lines, and one allocation
/// per line was most of its cost.
#[derive(Debug, Default, Clone)]
pub struct Info {
    text: String,
    /// (key, value) byte ranges in `text`.
    fields: Vec<(Span, Span)>,
}

type Span = (u32, u32);

/// Equal when the fields are, whatever else the text held (headers, line ends).
impl PartialEq for Info {
    fn eq(&self, other: &Self) -> bool {
        self.fields().eq(other.fields())
    }
}

impl Info {
    fn at(&self, (start, end): Span) -> &str {
        self.text
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// The raw text of a field (the first, should Redis write one twice). A scan: a poll asks
    /// for a couple of dozen fields, and comparing a few hundred lengths is cheaper than
    /// building an index.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// A field read as a number.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(parse_number)
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|&(k, v)| (self.at(k), self.at(v)))
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Parses INFO text (CRLF or LF, with or without section headers). Lines without a colon and
/// comment lines are skipped; the first colon splits key from value (IPv6 values keep theirs).
pub fn parse_info(text: &str) -> Info {
    let mut fields = Vec::new();
    let mut at = 0;
    for line in text.split('\n') {
        let start = at;
        at += line.len() + 1;
        // INFO is a few kilobytes; lines past 4 GiB are dropped rather than mis-indexed.
        if at > u32::MAX as usize {
            break;
        }
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(colon) = line.bytes().position(|b| b == b':') else {
            continue;
        };
        if colon == 0 {
            continue;
        }
        let span = |from: usize, to: usize| ((start + from) as u32, (start + to) as u32);
        fields.push((span(0, colon), span(colon + 1, line.len())));
    }
    Info {
        text: text.to_owned(),
        fields,
    }
}

/// Parses `a=1,b=x` (keyspace, commandstats, slave lines) into pairs.
pub fn parse_pairs(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value.split(',').filter_map(|part| part.split_once('='))
}

fn parse_number(value: &str) -> Option<f64> {
    let v: f64 = value.trim().parse().ok()?;
    v.is_finite().then_some(v)
}

/// What a [`FIELDS`] entry publishes, with its name and help text built once.
struct TableMetric {
    name: String,
    help: String,
    kind: Kind,
    conversion: Conversion,
}

/// The [`FIELDS`] entry of an INFO field. Every INFO line is looked up, so by hash, and the
/// metric's name and help come ready rather than formatted at every poll.
fn table_metric(field: &str) -> Option<&'static TableMetric> {
    type Table = HashMap<&'static str, TableMetric, foldhash::fast::RandomState>;
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            FIELDS
                .iter()
                .map(|&(field, name, kind, conversion)| {
                    let metric = TableMetric {
                        name: format!("redis_{name}"),
                        help: format!("INFO field {field}"),
                        kind,
                        conversion,
                    };
                    (field, metric)
                })
                .collect()
        })
        .get(field)
}

/// Every family redis_exporter builds from INFO (same names, types, labels), plus the replica lag
/// in bytes. `databases` pads `redis_db_keys` with zeros for empty databases as redis_exporter does.
pub fn info_families(info: &Info, databases: Option<u32>, out: &mut FamilySet) {
    table_fields(info, out);
    instance_info(info, out);
    keyspace(info, databases, out);
    commandstats(info, out);
    replication(info, out);
    super::sentinel::info_masters(info, out);
}

fn table_fields(info: &Info, out: &mut FamilySet) {
    for (key, value) in info.fields() {
        if let Some(metric) = table_metric(key) {
            let number = match metric.conversion {
                Conversion::OkIsOne => Some(if value == "ok" { 1.0 } else { 0.0 }),
                Conversion::Plain => parse_number(value),
                Conversion::MicrosToSeconds => parse_number(value).map(|v| v / 1e6),
            };
            if let Some(v) = number {
                out.add(&metric.name, &metric.help, metric.kind, Vec::new(), v);
            }
        } else if key.starts_with("cluster_") {
            // redis_exporter passes every numeric cluster_* field through as a gauge.
            if let Some(v) = parse_number(value) {
                let help = format!("INFO field {key}");
                out.gauge(&format!("redis_{}", sanitize_name(key)), &help, v);
            }
        }
    }
    if let (Some(now_us), Some(uptime)) = (
        info.number("server_time_usec"),
        info.number("uptime_in_seconds"),
    ) {
        out.gauge(
            "redis_start_time_seconds",
            "Start time of the Redis instance since unix epoch in seconds.",
            (now_us / 1e6 - uptime).floor(),
        );
    }
}

fn instance_info(info: &Info, out: &mut FamilySet) {
    if info.get("redis_version").is_none() && info.get("role").is_none() {
        return;
    }
    let label = |key: &str| info.get(key).unwrap_or("").to_owned();
    out.add(
        "redis_instance_info",
        "Information about the Redis instance",
        Kind::Gauge,
        vec![
            ("maxmemory_policy", label("maxmemory_policy")),
            ("os", label("os")),
            ("process_id", label("process_id")),
            ("redis_build_id", label("redis_build_id")),
            ("redis_mode", label("redis_mode")),
            ("redis_version", label("redis_version")),
            ("role", label("role")),
            ("run_id", label("run_id")),
            ("tcp_port", label("tcp_port")),
        ],
        1.0,
    );
}

fn keyspace(info: &Info, databases: Option<u32>, out: &mut FamilySet) {
    let mut seen = Vec::new();
    for (key, value) in info.fields() {
        let Some(index) = key.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        seen.push(index);
        let db = || vec![("db", key.to_owned())];
        for (name, v) in parse_pairs(value) {
            let Some(v) = parse_number(v) else { continue };
            match name {
                "keys" => out.add(
                    "redis_db_keys",
                    "Total number of keys by DB",
                    Kind::Gauge,
                    db(),
                    v,
                ),
                "expires" => out.add(
                    "redis_db_keys_expiring",
                    "Total number of expiring keys by DB",
                    Kind::Gauge,
                    db(),
                    v,
                ),
                "avg_ttl" => out.add(
                    "redis_db_avg_ttl_seconds",
                    "Avg TTL in seconds",
                    Kind::Gauge,
                    db(),
                    v / 1000.0,
                ),
                "cached_keys" => out.add(
                    "redis_db_keys_cached",
                    "Total number of cached keys by DB",
                    Kind::Gauge,
                    db(),
                    v,
                ),
                _ => {}
            }
        }
    }
    // Dashboards expect a series per configured database even when it is empty; without
    // CONFIG (managed services) at least db0, so an emptied server reads 0 rather than nothing.
    for index in 0..databases.unwrap_or(1).min(1024) {
        if seen.contains(&index) {
            continue;
        }
        let db = || vec![("db", format!("db{index}"))];
        out.add(
            "redis_db_keys",
            "Total number of keys by DB",
            Kind::Gauge,
            db(),
            0.0,
        );
        out.add(
            "redis_db_keys_expiring",
            "Total number of expiring keys by DB",
            Kind::Gauge,
            db(),
            0.0,
        );
    }
}

/// The error kinds the alert pack reads with `increase()`: published as 0 until Redis first
/// counts one, so that a burst shows in Prometheus' `increase()`, which takes a new series'
/// first sample as its baseline (eight WRONGPASS in a new series read as none).
pub const ALERTED_ERRORS: &[&str] = &["OOM", "MISCONF", "WRONGPASS", "NOAUTH"];

/// Commands an alert counts (RedisDangerousCommandsUsed): `redis_commands_total` reads 0 for
/// them until Redis lists them, for the same reason as [`ALERTED_ERRORS`].
pub const ALERTED_COMMANDS: &[&str] = &["keys", "flushall", "flushdb"];

/// `redis_commands_total` and `redis_errors_total`: name and help, for the counters Redis lists
/// and for the zeros of [`zero_until_counted`] alike.
const CALLS: (&str, &str) = ("redis_commands_total", "Total number of calls per command");
const ERRORS: (&str, &str) = (
    "redis_errors_total",
    "Total number of errors per error type",
);

/// A 0 for each of `values` (of `label`) that Redis does not list yet, so an alert's
/// `increase()` sees the first one counted.
fn zero_until_counted(
    out: &mut FamilySet,
    (name, help): (&str, &str),
    label: &'static str,
    values: &[&str],
    seen: impl Fn(&str) -> bool,
) {
    for value in values.iter().filter(|v| !seen(v)) {
        out.add(
            name,
            help,
            Kind::Counter,
            vec![(label, (*value).to_owned())],
            0.0,
        );
    }
}

fn commandstats(info: &Info, out: &mut FamilySet) {
    let mut calls_by_cmd: HashMap<&str, (f64, f64)> = HashMap::new();
    let mut errors_seen: Vec<&str> = Vec::new();
    for (key, value) in info.fields() {
        if let Some(cmd) = key.strip_prefix("cmdstat_") {
            let mut calls = None;
            let mut usec = None;
            for (name, v) in parse_pairs(value) {
                let Some(v) = parse_number(v) else { continue };
                let labels = vec![("cmd", cmd.to_owned())];
                match name {
                    "calls" => {
                        calls = Some(v);
                        out.add(CALLS.0, CALLS.1, Kind::Counter, labels, v);
                    }
                    "usec" => {
                        usec = Some(v);
                        out.add(
                            "redis_commands_duration_seconds_total",
                            "Total amount of time in seconds spent per command",
                            Kind::Counter,
                            labels,
                            v / 1e6,
                        );
                    }
                    "rejected_calls" => out.add(
                        "redis_commands_rejected_calls_total",
                        "Total number of errors prior command execution per command",
                        Kind::Counter,
                        labels,
                        v,
                    ),
                    "failed_calls" => out.add(
                        "redis_commands_failed_calls_total",
                        "Total number of errors within command execution per command",
                        Kind::Counter,
                        labels,
                        v,
                    ),
                    _ => {}
                }
            }
            calls_by_cmd.insert(cmd, (calls.unwrap_or(0.0), usec.unwrap_or(0.0)));
        } else if let Some(err) = key.strip_prefix("errorstat_") {
            if let Some(count) = parse_pairs(value)
                .find(|(k, _)| *k == "count")
                .and_then(|(_, v)| parse_number(v))
            {
                errors_seen.push(err);
                out.add(
                    ERRORS.0,
                    ERRORS.1,
                    Kind::Counter,
                    vec![("err", err.to_owned())],
                    count,
                );
            }
        }
    }
    // With command stats at hand (INFO itself is always among them once asked).
    if !calls_by_cmd.is_empty() {
        let seen = |cmd: &str| calls_by_cmd.contains_key(cmd);
        zero_until_counted(out, CALLS, "cmd", ALERTED_COMMANDS, seen);
    }
    // Servers with errorstats (6.2+, which also count total_error_replies).
    if info.get("total_error_replies").is_some() {
        let seen = |err: &str| errors_seen.contains(&err);
        zero_until_counted(out, ERRORS, "err", ALERTED_ERRORS, seen);
    }
    // latencystats come after commandstats in INFO; pair them with the calls/usec seen above.
    for (key, value) in info.fields() {
        let Some(cmd) = key.strip_prefix("latency_percentiles_usec_") else {
            continue;
        };
        let help = "A summary of latency percentile distribution per command";
        for (p, v) in parse_pairs(value) {
            let (Some(q), Some(v)) = (p.strip_prefix('p'), parse_number(v)) else {
                continue;
            };
            // redis_exporter writes the quantile as Redis names it ("50", "99.9"); dashboards
            // built on it select those values, so we keep them.
            out.add_suffixed(
                "redis_latency_percentiles_usec",
                "",
                help,
                Kind::Summary,
                vec![("cmd", cmd.to_owned()), ("quantile", q.to_owned())],
                v,
            );
        }
        let (calls, usec) = calls_by_cmd.get(cmd).copied().unwrap_or((0.0, 0.0));
        let labels = || vec![("cmd", cmd.to_owned())];
        out.add_suffixed(
            "redis_latency_percentiles_usec",
            "_sum",
            help,
            Kind::Summary,
            labels(),
            usec,
        );
        out.add_suffixed(
            "redis_latency_percentiles_usec",
            "_count",
            help,
            Kind::Summary,
            labels(),
            calls,
        );
    }
}

/// One replica as its master lists it (`slaveN:ip=…,port=…,state=…,offset=…,lag=…`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLine {
    pub ip: String,
    pub port: String,
    pub state: String,
    pub offset: f64,
    pub lag: f64,
}

impl ReplicaLine {
    /// Whether the replica has a position in the stream to measure lag from. One still in its
    /// initial sync (wait_bgsave, send_bulk) reports offset 0, and so does one the master has
    /// just put online after sending it an RDB, until it has loaded the RDB and sent its first
    /// ACK (minutes for a large dataset): its lag is unknown then, not the whole stream.
    pub fn positioned(&self) -> bool {
        self.state == "online" && self.offset > 0.0
    }
}

/// `ip:port` of a replica its master lists, as the replica is polled (`[ip]:port` for IPv6).
pub fn replica_address(ip: &str, port: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The replicas a master lists in INFO replication.
pub fn replica_lines(info: &Info) -> Vec<ReplicaLine> {
    info.fields()
        .filter(|(key, _)| {
            key.strip_prefix("slave")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|(_, value)| {
            let mut line = ReplicaLine {
                ip: String::new(),
                port: String::new(),
                state: String::new(),
                offset: 0.0,
                lag: 0.0,
            };
            for (k, v) in parse_pairs(value) {
                match k {
                    "ip" => line.ip = v.to_owned(),
                    "port" => line.port = v.to_owned(),
                    "state" => line.state = v.to_owned(),
                    "offset" => line.offset = parse_number(v).unwrap_or(0.0),
                    "lag" => line.lag = parse_number(v).unwrap_or(0.0),
                    _ => {}
                }
            }
            (!line.ip.is_empty()).then_some(line)
        })
        .collect()
}

fn replication(info: &Info, out: &mut FamilySet) {
    let master_offset = info.number("master_repl_offset");
    for replica in replica_lines(info) {
        let labels = || {
            vec![
                ("slave_ip", replica.ip.clone()),
                ("slave_port", replica.port.clone()),
                ("slave_state", replica.state.clone()),
            ]
        };
        out.add(
            "redis_connected_slave_lag_seconds",
            "Lag of connected slave",
            Kind::Gauge,
            labels(),
            replica.lag,
        );
        out.add(
            "redis_connected_slave_offset_bytes",
            "Offset of connected slave",
            Kind::Gauge,
            labels(),
            replica.offset,
        );
        // No lag while the replica syncs (it shows on the replica as
        // redis_master_sync_in_progress and a link that is down, or loading).
        if let (Some(master_offset), true) = (master_offset, replica.positioned()) {
            out.add(
                "redis_replica_lag_bytes",
                "Replication bytes an online replica has not yet acknowledged: master_repl_offset minus the replica's offset.",
                Kind::Gauge,
                vec![("slave_ip", replica.ip.clone()), ("slave_port", replica.port.clone())],
                (master_offset - replica.offset).max(0.0),
            );
        }
    }

    let (Some(host), Some(port)) = (info.get("master_host"), info.get("master_port")) else {
        return;
    };
    let labels = || {
        vec![
            ("master_host", host.to_owned()),
            ("master_port", port.to_owned()),
        ]
    };
    if let Some(status) = info.get("master_link_status") {
        let up = if status == "up" { 1.0 } else { 0.0 };
        out.add(
            "redis_master_link_up",
            "Master link status on Redis slave",
            Kind::Gauge,
            labels(),
            up,
        );
    }
    let labelled = [
        (
            "master_last_io_seconds_ago",
            "redis_master_last_io_seconds_ago",
            "Master last io seconds ago",
        ),
        (
            "master_sync_in_progress",
            "redis_master_sync_in_progress",
            "Master sync in progress",
        ),
        (
            "slave_repl_offset",
            "redis_slave_repl_offset",
            "Slave replication offset",
        ),
        (
            "master_link_down_since_seconds",
            "redis_master_link_down_since_seconds",
            "Seconds since the link to the master went down (-1 while it is up)",
        ),
    ];
    for (field, name, help) in labelled {
        if let Some(v) = info.number(field) {
            out.add(name, help, Kind::Gauge, labels(), v);
        }
    }
    let mut info_labels = labels();
    info_labels.push((
        "read_only",
        info.get("slave_read_only").unwrap_or("").to_owned(),
    ));
    out.add(
        "redis_slave_info",
        "Information about the Redis slave",
        Kind::Gauge,
        info_labels,
        1.0,
    );
}

/// How long ago the master's offset was where the replica's offset is now.
///
/// `history` holds (time, master_repl_offset) per poll, oldest first. The answer is measured
/// from the first poll that saw the master past the replica's offset, so its resolution is one
/// poll interval and it never overstates the lag by more than that. A replica behind every
/// recorded offset gets the age of the oldest record (a lower bound).
pub fn replica_lag_seconds(history: &[(f64, f64)], now: f64, replica_offset: f64) -> f64 {
    match history.last() {
        None => 0.0,
        Some((_, current)) if replica_offset >= *current => 0.0,
        Some(_) => history
            .iter()
            .find(|(_, offset)| *offset > replica_offset)
            .map_or(0.0, |(t, _)| (now - t).max(0.0)),
    }
}

/// Offset changes kept for lag in seconds: with a write every poll at 5 s, 85 minutes; a
/// replica further behind reads as the age of the oldest record (a lower bound).
const OFFSET_HISTORY: usize = 1024;

/// How long a master that listed replicas keeps recording its offset while it lists none: a
/// replica that drops out and comes back (a restart, a flapping link, a partial resync) is
/// then measured against the offsets of its absence, not from a history that starts anew
/// and reads 0 however far behind it is.
const HISTORY_WITHOUT_REPLICAS: f64 = 600.0;

/// The INFO collector: one command per poll.
#[derive(Debug)]
pub struct InfoCollector {
    /// Set after a pre-7.0 server refused the multi-section form.
    all_fallback: bool,
    command_refresh: std::time::Duration,
    command_due: Option<Instant>,
    command_asked: bool,
    /// The command lines of the last refresh (see [`COMMAND_FIELDS`]).
    command_cache: String,
    /// (seconds since `epoch`, master_repl_offset) at each poll while this node is a master.
    offsets: std::collections::VecDeque<(f64, f64)>,
    replid: String,
    /// When (seconds since `epoch`) the last poll that listed a replica ran.
    replicas_seen: Option<f64>,
    epoch: Instant,
}

impl InfoCollector {
    pub fn new(command_refresh: std::time::Duration) -> Self {
        Self {
            all_fallback: false,
            command_refresh,
            command_due: None,
            command_asked: false,
            command_cache: String::new(),
            offsets: std::collections::VecDeque::new(),
            replid: String::new(),
            replicas_seen: None,
            epoch: Instant::now(),
        }
    }
}

impl InfoCollector {
    fn command(&self) -> Cmd {
        let mut cmd = redis::cmd("INFO");
        if self.all_fallback {
            cmd.arg("ALL");
        } else {
            for section in SECTIONS {
                cmd.arg(*section);
            }
            if self.command_asked {
                for section in COMMAND_SECTIONS {
                    cmd.arg(*section);
                }
            }
        }
        cmd
    }
}

impl InfoCollector {
    /// Records the master's offset and publishes each replica's lag in seconds.
    fn replica_lag(&mut self, info: &Info, out: &mut FamilySet) {
        let (Some("master"), Some(offset)) = (info.get("role"), info.number("master_repl_offset"))
        else {
            self.offsets.clear();
            self.replicas_seen = None;
            return;
        };
        let replid = info.get("master_replid").unwrap_or("");
        // A new replication id (failover, restart) or a lower offset starts a new history.
        if replid != self.replid || self.offsets.back().is_some_and(|(_, last)| offset < *last) {
            self.offsets.clear();
            self.replid = replid.to_owned();
        }
        let replicas = replica_lines(info);
        let now = self.epoch.elapsed().as_secs_f64();
        if replicas.is_empty() {
            if self
                .replicas_seen
                .is_none_or(|seen| now - seen > HISTORY_WITHOUT_REPLICAS)
            {
                // Nothing to measure: keep no history on the many masters without replicas.
                self.offsets.clear();
                self.replicas_seen = None;
                return;
            }
        } else {
            self.replicas_seen = Some(now);
        }
        // Only the first poll at each offset matters to the answer; repeats add nothing.
        if self.offsets.back().is_none_or(|(_, last)| offset > *last) {
            self.offsets.push_back((now, offset));
            if self.offsets.len() > OFFSET_HISTORY {
                self.offsets.pop_front();
            }
        }
        let history = self.offsets.make_contiguous();
        for replica in replicas.iter().filter(|r| r.positioned()) {
            out.add(
                "redis_replica_lag_seconds",
                "Seconds since the master's replication offset was where an online replica's is now (0 when caught up; resolution one poll)",
                Kind::Gauge,
                vec![("slave_ip", replica.ip.clone()), ("slave_port", replica.port.clone())],
                replica_lag_seconds(history, now, replica.offset),
            );
        }
    }
}

impl Collector for InfoCollector {
    fn name(&self) -> &'static str {
        "info"
    }

    fn commands(&mut self, now: Instant) -> Vec<Cmd> {
        self.command_asked = self.all_fallback || self.command_due.is_none_or(|due| now >= due);
        if self.command_asked {
            self.command_due = Some(now + self.command_refresh);
        }
        vec![self.command()]
    }

    fn collect(&mut self, replies: Vec<RedisResult<Value>>, out: &mut FamilySet) -> Outcome {
        let reply = replies.into_iter().next();
        let text = match reply {
            Some(Ok(value)) => match value_text(&value) {
                Some(text) => text,
                None => return Outcome::Failed("INFO reply is not text".into()),
            },
            Some(Err(err)) if !self.all_fallback && err.to_string().contains("syntax") => {
                self.all_fallback = true;
                return Outcome::FollowUp(vec![self.command()]);
            }
            Some(Err(err)) => {
                return Outcome::Failed(format!(
                    "INFO failed: {}",
                    crate::error::PollError::from_redis(&err).label()
                ))
            }
            None => return Outcome::Failed("no INFO reply".into()),
        };
        let info = parse_info(&text);
        if info.is_empty() {
            return Outcome::Failed("INFO reply had no fields".into());
        }
        let databases = out.value_of("redis_config_databases").map(|v| v as u32);
        info_families(&info, databases, out);
        if self.command_asked {
            self.command_cache = command_lines(&text);
        } else if !self.command_cache.is_empty() {
            commandstats(&parse_info(&self.command_cache), out);
        }
        self.replica_lag(&info, out);
        Outcome::Collected
    }

    fn reset(&mut self) {
        self.all_fallback = false;
        self.command_due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_table_is_sorted_with_each_field_once() {
        for pair in FIELDS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn parses_lf_and_crlf_alike_and_skips_headers() {
        let lf = parse_info("# Server\nredis_version:7.0.15\nuptime_in_seconds:5\n");
        let crlf = parse_info("# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:5\r\n");
        assert_eq!(lf, crlf);
        assert_eq!(lf.get("redis_version"), Some("7.0.15"));
        assert_eq!(lf.number("uptime_in_seconds"), Some(5.0));
    }

    #[test]
    fn table_fields_use_redis_exporter_names_and_units() {
        let info = parse_info(
            "used_memory:1024\nlatest_fork_usec:2500\nrdb_last_bgsave_status:err\n\
             aof_last_write_status:ok\nevicted_keys:7\nsome_future_field:3\n",
        );
        let mut out = FamilySet::new();
        info_families(&info, None, &mut out);
        let value = |n: &str| out.get(n).map(|f| f.samples[0].value);
        assert_eq!(value("redis_memory_used_bytes"), Some(1024.0));
        assert_eq!(value("redis_latest_fork_seconds"), Some(0.0025));
        assert_eq!(value("redis_rdb_last_bgsave_status"), Some(0.0));
        assert_eq!(value("redis_aof_last_write_status"), Some(1.0));
        assert_eq!(
            out.get("redis_evicted_keys_total").map(|f| f.kind),
            Some(Kind::Counter)
        );
        assert!(out.iter().all(|(name, _)| !name.contains("future")));
    }

    #[test]
    fn keyspace_lines_become_per_db_series_and_empty_dbs_are_padded() {
        let info =
            parse_info("db0:keys=2,expires=1,avg_ttl=99490\ndb3:keys=1,expires=0,avg_ttl=0\n");
        let mut out = FamilySet::new();
        info_families(&info, Some(4), &mut out);
        let keys = out.get("redis_db_keys").expect("db_keys");
        let by_db: Vec<(String, f64)> = keys
            .samples
            .iter()
            .map(|s| (s.labels[0].1.clone(), s.value))
            .collect();
        assert_eq!(
            by_db,
            vec![
                ("db0".into(), 2.0),
                ("db3".into(), 1.0),
                ("db1".into(), 0.0),
                ("db2".into(), 0.0)
            ]
        );
        let ttl = out.get("redis_db_avg_ttl_seconds").expect("avg ttl");
        assert_eq!(ttl.samples[0].value, 99.49);
    }

    #[test]
    fn the_alerted_commands_read_zero_until_redis_counts_one() {
        let mut out = FamilySet::new();
        info_families(
            &parse_info("cmdstat_info:calls=9,usec=90\ncmdstat_keys:calls=2,usec=5000\n"),
            None,
            &mut out,
        );
        let mut got: Vec<(String, f64)> = out
            .get("redis_commands_total")
            .unwrap()
            .samples
            .iter()
            .map(|s| (s.labels[0].1.clone(), s.value))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want = [
            ("flushall", 0.0),
            ("flushdb", 0.0),
            ("info", 9.0),
            ("keys", 2.0),
        ];
        assert_eq!(got, want.map(|(c, v)| (c.to_owned(), v)));
        // No command stats asked yet: nothing made up.
        let mut none = FamilySet::new();
        info_families(&parse_info("connected_clients:1\n"), None, &mut none);
        assert!(none.get("redis_commands_total").is_none());
    }

    #[test]
    fn the_alerted_error_kinds_read_zero_until_redis_counts_one() {
        let errors = |text: &str| {
            let mut out = FamilySet::new();
            info_families(&parse_info(text), None, &mut out);
            let mut got: Vec<(String, f64)> = out
                .get("redis_errors_total")
                .map(|f| {
                    f.samples
                        .iter()
                        .map(|s| (s.labels[0].1.clone(), s.value))
                        .collect()
                })
                .unwrap_or_default();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            got
        };
        assert_eq!(
            errors("total_error_replies:3\nerrorstat_WRONGPASS:count=3\n"),
            vec![
                ("MISCONF".into(), 0.0),
                ("NOAUTH".into(), 0.0),
                ("OOM".into(), 0.0),
                ("WRONGPASS".into(), 3.0)
            ]
        );
        // Before 6.2 there are no errorstats at all: nothing made up.
        assert!(errors("connected_clients:1\n").is_empty());
    }

    #[test]
    fn commandstats_errorstats_and_latency_summary() {
        let info = parse_info(
            "cmdstat_get:calls=4,usec=10,usec_per_call=2.50,rejected_calls=1,failed_calls=2\n\
             errorstat_WRONGTYPE:count=3\n\
             latency_percentiles_usec_get:p50=1.003,p99=2.007,p99.9=3.001\n",
        );
        let mut out = FamilySet::new();
        info_families(&info, None, &mut out);
        assert_eq!(
            out.get("redis_commands_total").unwrap().samples[0].value,
            4.0
        );
        assert_eq!(
            out.get("redis_commands_duration_seconds_total")
                .unwrap()
                .samples[0]
                .value,
            10.0 / 1e6
        );
        assert_eq!(
            out.get("redis_commands_rejected_calls_total")
                .unwrap()
                .samples[0]
                .value,
            1.0
        );
        assert_eq!(
            out.get("redis_commands_failed_calls_total")
                .unwrap()
                .samples[0]
                .value,
            2.0
        );
        let errors = out.get("redis_errors_total").unwrap();
        assert_eq!(
            errors.samples[0].labels,
            vec![("err", "WRONGTYPE".to_owned())]
        );
        let summary = out.get("redis_latency_percentiles_usec").unwrap();
        assert_eq!(summary.kind, Kind::Summary);
        let quantiles: Vec<&str> = summary
            .samples
            .iter()
            .filter(|s| s.suffix.is_empty())
            .map(|s| s.labels[1].1.as_str())
            .collect();
        assert_eq!(quantiles, vec!["50", "99", "99.9"]);
        let count = summary
            .samples
            .iter()
            .find(|s| s.suffix == "_count")
            .unwrap();
        assert_eq!(count.value, 4.0);
    }

    #[test]
    fn a_replica_that_drops_out_for_a_poll_is_measured_against_the_offsets_of_its_absence() {
        let master = |offset: u32, replica: Option<u32>| {
            let line = replica.map_or(String::new(), |r| {
                format!("slave0:ip=10.0.0.2,port=6379,state=online,offset={r},lag=0\n")
            });
            parse_info(&format!(
                "role:master\nmaster_replid:abc\nmaster_repl_offset:{offset}\n{line}"
            ))
        };
        let mut collector = InfoCollector::new(std::time::Duration::from_secs(30));
        let mut out = FamilySet::new();
        collector.replica_lag(&master(100, Some(100)), &mut out);
        collector.replica_lag(&master(200, None), &mut out);
        collector.replica_lag(&master(300, Some(100)), &mut out);
        let kept: Vec<f64> = collector.offsets.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            kept,
            [100.0, 200.0, 300.0],
            "the poll without replicas is recorded"
        );
        // A master that never lists a replica keeps nothing.
        let mut lone = InfoCollector::new(std::time::Duration::from_secs(30));
        lone.replica_lag(&master(100, None), &mut out);
        lone.replica_lag(&master(200, None), &mut out);
        assert!(lone.offsets.is_empty());
    }

    #[test]
    fn replica_lines_on_a_master_and_link_fields_on_a_replica() {
        let master = parse_info(
            "role:master\nmaster_repl_offset:500\n\
             slave0:ip=127.0.0.1,port=6380,state=online,offset=400,lag=1\n\
             slave1:ip=::1,port=6381,state=wait_bgsave,offset=0,lag=0\n\
             slave2:ip=127.0.0.1,port=6382,state=online,offset=0,lag=3\n",
        );
        let mut out = FamilySet::new();
        info_families(&master, None, &mut out);
        let lag = out.get("redis_connected_slave_lag_seconds").unwrap();
        assert_eq!(lag.samples.len(), 3);
        assert_eq!(lag.samples[1].labels[0], ("slave_ip", "::1".to_owned()));
        let bytes = out.get("redis_replica_lag_bytes").unwrap();
        assert_eq!(bytes.samples[0].value, 100.0);
        // The replicas still in their initial sync (offset 0: one sent its RDB, one online
        // but still loading it) have no lag series, in bytes or seconds, rather than the
        // whole stream or the age of the oldest offset recorded.
        assert_eq!(bytes.samples.len(), 1);
        let mut collector = InfoCollector::new(std::time::Duration::from_secs(30));
        let mut out = FamilySet::new();
        collector.replica_lag(&master, &mut out);
        let seconds = out.get("redis_replica_lag_seconds").unwrap();
        assert_eq!(seconds.samples.len(), 1);
        assert_eq!(
            seconds.samples[0].labels[1],
            ("slave_port", "6380".to_owned())
        );

        let replica = parse_info(
            "role:slave\nmaster_host:10.0.0.1\nmaster_port:6379\nmaster_link_status:down\n\
             master_last_io_seconds_ago:-1\nmaster_sync_in_progress:0\nslave_repl_offset:42\n\
             slave_read_only:1\nmaster_link_down_since_seconds:12\n",
        );
        let mut out = FamilySet::new();
        info_families(&replica, None, &mut out);
        assert_eq!(
            out.get("redis_master_link_up").unwrap().samples[0].value,
            0.0
        );
        assert_eq!(
            out.get("redis_slave_repl_offset").unwrap().samples[0].value,
            42.0
        );
        assert_eq!(
            out.get("redis_master_link_down_since_seconds")
                .unwrap()
                .samples[0]
                .value,
            12.0
        );
        let info = out.get("redis_slave_info").unwrap();
        assert_eq!(info.samples[0].labels[2], ("read_only", "1".to_owned()));
    }

    #[test]
    fn replica_lag_counts_seconds_since_master_reached_offset() {
        // Polls every 5 s; the master moves 100 bytes per poll.
        let history: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 5.0, i as f64 * 100.0))
            .collect();
        let now = 45.0;
        assert_eq!(replica_lag_seconds(&history, now, 900.0), 0.0, "caught up");
        assert_eq!(
            replica_lag_seconds(&history, now, 950.0),
            0.0,
            "ahead of our last look"
        );
        // At offset 400 the replica stopped; the master was past it from t=25 on.
        assert_eq!(replica_lag_seconds(&history, now, 400.0), 20.0);
        assert_eq!(replica_lag_seconds(&history, now, 450.0), 20.0);
        // Behind everything recorded: the age of the oldest record.
        assert_eq!(replica_lag_seconds(&history, now, -1.0), 45.0);
        assert_eq!(replica_lag_seconds(&[], now, 5.0), 0.0);
    }

    #[test]
    fn servers_before_7_get_info_all_after_refusing_sections() {
        let mut c = InfoCollector::new(std::time::Duration::from_secs(30));
        let packed =
            |cmds: Vec<Cmd>| String::from_utf8_lossy(&cmds[0].get_packed_command()).into_owned();
        assert!(packed(c.commands(Instant::now())).contains("latencystats"));
        let refusal = redis::RedisError::from((redis::ErrorKind::Client, "ERR syntax error"));
        let mut out = FamilySet::new();
        let Outcome::FollowUp(retry) = c.collect(vec![Err(refusal)], &mut out) else {
            panic!("expected a follow-up");
        };
        assert!(packed(retry).contains("ALL"));
        let reply = Value::BulkString(b"# Server\r\nredis_version:6.2.0\r\n".to_vec());
        assert_eq!(c.collect(vec![Ok(reply)], &mut out), Outcome::Collected);
        assert!(
            packed(c.commands(Instant::now())).contains("ALL"),
            "remembered"
        );
        c.reset();
        assert!(
            packed(c.commands(Instant::now())).contains("latencystats"),
            "forgotten on reconnect"
        );
    }

    #[test]
    fn command_stats_are_asked_on_schedule_and_republished_between() {
        let mut c = InfoCollector::new(std::time::Duration::from_secs(30));
        let t0 = Instant::now();
        let packed =
            |cmds: Vec<Cmd>| String::from_utf8_lossy(&cmds[0].get_packed_command()).into_owned();
        let reply = |text: &str| vec![Ok(Value::BulkString(text.as_bytes().to_vec()))];
        assert!(packed(c.commands(t0)).contains("commandstats"));
        let mut out = FamilySet::new();
        c.collect(
            reply(
                "used_memory:1\r\ncmdstat_get:calls=7,usec=70,rejected_calls=1,failed_calls=2\r\n\
                 errorstat_ERR:count=3\r\nlatency_percentiles_usec_get:p50=1.003,p99=2.007\r\n",
            ),
            &mut out,
        );
        assert_eq!(
            out.get("redis_commands_total").unwrap().samples[0].value,
            7.0
        );
        let refreshed = out.clone();

        let later = t0 + std::time::Duration::from_secs(5);
        assert!(
            !packed(c.commands(later)).contains("commandstats"),
            "not due yet"
        );
        let mut out = FamilySet::new();
        c.collect(reply("used_memory:2\n"), &mut out);
        assert_eq!(
            out.get("redis_memory_used_bytes").unwrap().samples[0].value,
            2.0
        );
        assert_eq!(
            out.get("redis_commands_total").unwrap().samples[0].value,
            7.0,
            "from cache"
        );
        for name in [
            "redis_commands_total",
            "redis_commands_duration_seconds_total",
            "redis_commands_rejected_calls_total",
            "redis_commands_failed_calls_total",
            "redis_latency_percentiles_usec",
        ] {
            assert_eq!(out.get(name), refreshed.get(name), "{name} from cache");
        }
        assert!(
            out.get("redis_errors_total").is_none(),
            "error counts come from each poll's own errorstats, never from the cache"
        );

        assert!(
            packed(c.commands(t0 + std::time::Duration::from_secs(31))).contains("latencystats")
        );
    }

    #[test]
    fn a_reply_with_only_some_sections_publishes_what_it_has() {
        let info = parse_info("# Memory\nused_memory:10\nmaxmemory:0\n");
        let mut out = FamilySet::new();
        info_families(&info, None, &mut out);
        assert_eq!(
            out.get("redis_memory_used_bytes").unwrap().samples[0].value,
            10.0
        );
        assert!(out.get("redis_instance_info").is_none());
        // No keyspace lines and no known `databases`: db0 still reads 0, so an emptied server
        // shows 0 keys rather than no series (RedisDatabaseFlushed needs the 0).
        let keys = out.get("redis_db_keys").unwrap();
        assert_eq!((keys.samples.len(), keys.samples[0].value), (1, 0.0));
    }

    #[test]
    fn captured_master_and_replica_info_parse_completely() {
        for (file, role) in [
            ("info_master_7.0.txt", "master"),
            ("info_replica_7.0.txt", "slave"),
        ] {
            let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("fixture");
            let info = parse_info(&text);
            assert_eq!(info.get("role"), Some(role));
            let mut out = FamilySet::new();
            info_families(&info, Some(16), &mut out);
            assert!(out.len() > 120, "{file}: only {} families", out.len());
            assert_eq!(out.get("redis_db_keys").unwrap().samples.len(), 16);
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in "\\PC*") {
            let info = parse_info(&text);
            let mut out = FamilySet::new();
            info_families(&info, Some(16), &mut out);
        }

        #[test]
        fn info_shaped_lines_with_odd_values_never_panic(
            lines in proptest::collection::vec(
                ("(db[0-9]{1,3}|cmdstat_[a-z|]{1,8}|errorstat_[A-Z]{1,6}|latency_percentiles_usec_[a-z]{1,5}|slave[0-9]|used_memory|role|master_host|master_port|master_link_status|[a-z_]{1,12})",
                 "[ -~]{0,40}"),
                0..40),
            crlf in any::<bool>(),
        ) {
            let sep = if crlf { "\r\n" } else { "\n" };
            let text: String = lines.iter().map(|(k, v)| format!("{k}:{v}{sep}")).collect();
            let info = parse_info(&text);
            let mut out = FamilySet::new();
            info_families(&info, None, &mut out);
            for (name, _) in out.iter() {
                prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{}", name);
            }
        }
    }
}
