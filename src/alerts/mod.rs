//! The alert pack: one definition per alert, from which both the Prometheus rule file
//! (`redis-lookout rules`, `alerts/redis.rules.yml`) and the in-process evaluator are made.
//!
//! Each [`AlertRule`] carries its levels (severity, default threshold, `for`), the PromQL it
//! renders to (with the threshold put in), and the [`Signal`] the in-process evaluator and the
//! `check` command compute from snapshots. Thresholds can be overridden in the config
//! (`alerting.thresholds`); the committed rule file is the rendering of the defaults. One alert,
//! `RedisExporterDown`, is Prometheus' alone ([`Signal::PrometheusOnly`]): it reads Prometheus'
//! scrapes of the exporter, which no process can judge of itself.

pub mod alertmanager;
pub mod eval;
pub mod template;

use crate::collector::info::ALERTED_COMMANDS;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where `runbook_url` points by default: the runbooks' path in this repository. Set
/// `alerting.runbook_base_url` to where you host them (redis-lookout serves its copies under
/// `/runbooks/`, so `http://<exporter>:9121/runbooks` works too).
pub const DEFAULT_RUNBOOK_BASE: &str = "docs/runbooks";

/// The Prometheus jobs whose scrapes [`RedisExporterDown`](pack) watches by default: every job
/// with "redis" in its name (as in `docs/prometheus/`, and redis_exporter's jobs too).
/// `alerting.exporter_jobs` sets another regex.
pub const DEFAULT_EXPORTER_JOBS: &str = ".*redis.*";

/// The runbook texts, served under `/runbooks/<AlertName>.md`.
pub fn runbook_text(name: &str) -> Option<&'static str> {
    RUNBOOKS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

macro_rules! runbooks {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../docs/runbooks/", $name, ".md")))),*]
    };
}

const RUNBOOKS: &[(&str, &str)] = runbooks!(
    "RedisDown",
    "RedisRestarted",
    "RedisLoading",
    "RedisMemoryHigh",
    "RedisMemoryWarning",
    "RedisMemoryFillingUp",
    "RedisNoMaxmemory",
    "RedisEvictionSpike",
    "RedisOutOfMemoryErrors",
    "RedisReplicaLagHigh",
    "RedisReplicationBroken",
    "RedisReplicaLost",
    "RedisReplicaFullResyncs",
    "RedisClusterStateNotOk",
    "RedisClusterSlotsFailing",
    "RedisClusterMastersLow",
    "RedisClusterFailoverLoop",
    "RedisSentinelMasterDown",
    "RedisSentinelNoQuorum",
    "RedisSentinelTilt",
    "RedisSentinelFailoverLoop",
    "RedisRdbSaveFailing",
    "RedisWritesRefusedMisconf",
    "RedisAofWriteFailing",
    "RedisAofRewriteFailing",
    "RedisAofFsyncDelayed",
    "RedisDatabaseFlushed",
    "RedisDangerousCommandsUsed",
    "RedisUnauthorizedAccess",
    "RedisTooManyConnections",
    "RedisConnectionsNearMaxclients",
    "RedisRejectedConnections",
    "RedisBlockedClients",
    "RedisClientOutputBufferLarge",
    "RedisHitRatioLow",
    "RedisLatencyHigh",
    "RedisMainThreadSaturated",
    "RedisFragmentationHigh",
    "RedisSwapping",
    "RedisForkSlow",
    "RedisSlowlogGrowing",
    "RedisExporterCollectorFailing",
    "RedisExporterDown",
    "RedisConfigDrift",
    "RedisKeysWithoutTtl",
    "RedisKeysTtlOverLimit",
    "RedisQueueBacklogGrowing",
    "RedisStreamGroupLagHigh",
    "RedisStreamGroupLagGrowing",
    "RedisStreamGroupStalled",
    "RedisHotKey",
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Which side of the threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Above,
    Below,
}

impl Op {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Above => value > threshold,
            Op::Below => value < threshold,
        }
    }

    fn promql(self) -> &'static str {
        match self {
            Op::Above => ">",
            Op::Below => "<",
        }
    }
}

/// One severity of an alert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub severity: Severity,
    pub threshold: f64,
    pub for_: Duration,
}

/// What the in-process evaluator computes, per node (or per series of the family where the
/// signal keeps series apart), from the facts of successive polls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// The value of each series of a family.
    Series(&'static str),
    /// As `Series`, without one label: the highest value of the series that differ only in it
    /// (PromQL's `max without (label)`), so a label that changes during an incident (a status)
    /// does not restart the alert's `for`.
    SeriesWithout(&'static str, &'static str),
    /// `a / b` per node, only where `b > 0`.
    Ratio(&'static str, &'static str),
    /// Per-second rate of counters (summed per node, over every series of each family) over a
    /// window.
    Rate(&'static [&'static str], Duration),
    /// Increase of a counter over a window, summed per node over the series whose `label` is
    /// one of `values` (all series when `values` is empty).
    Increase(
        &'static str,
        Duration,
        &'static str,
        &'static [&'static str],
    ),
    /// keyspace hits / (hits + misses) over a window, where lookups/s are at least the value.
    HitRatio(Duration, f64),
    /// The highest value of a gauge over a window minus its value now (how many were lost).
    DropFromMax(&'static str, Duration),
    /// The summed gauge now divided by its sum a window ago, where that was above the value.
    ShareOfEarlier(&'static str, Duration, f64),
    /// Per series of a gauge, its value now minus its value a window ago (`x - x offset w`),
    /// for series that existed a window ago: a queue's backlog or a group's lag growing.
    SeriesChange(&'static str, Duration),
    /// PromQL's `predict_linear(a[window], horizon) / b`: where the gauge `a` will be after the
    /// horizon, from a least-squares line through its values over the window, as a share of
    /// `b` now (only where `b > 0`). The evaluator keeps a point every window/72 at most (so
    /// a 6 h window costs 72 points per node whatever the poll interval), adds the value of
    /// the current poll, and forecasts only after 20 polls of the node.
    Forecast {
        family: &'static str,
        limit: &'static str,
        window: Duration,
        horizon: Duration,
    },
    /// Judged by Prometheus only, from what it alone sees (its scrapes of the exporter): the
    /// evaluator never reads a value for it. In-process, the Alertmanager watchdog stands in.
    PrometheusOnly,
}

impl Signal {
    /// True when one poll is enough to judge it (the `check` command judges only these).
    pub fn instant(&self) -> bool {
        matches!(
            self,
            Signal::Series(_) | Signal::SeriesWithout(..) | Signal::Ratio(..)
        )
    }
}

/// One alert of the pack.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub name: &'static str,
    pub summary: &'static str,
    /// Prometheus template text, limited to what [`template::render`] renders as Prometheus
    /// does (`{{ $value }}` and its `humanize` functions, `{{ $labels.* }}`, `{{ if $labels.* }}`),
    /// so the in-process evaluator's alerts read the same.
    pub description: &'static str,
    /// PromQL the comparison with the threshold is appended to, or put at `{cmp}` where the
    /// expression goes on after it (a guard joined with `and`, which binds looser).
    pub expr: Cow<'static, str>,
    pub op: Op,
    pub signal: Signal,
    /// A node is judged only where the guard holds (AOF enabled, not loading, a master, …);
    /// the PromQL says the same with `and` or `unless`, matched on every label, so that nodes
    /// scraped from different exporters (`instance`, `job`) are never joined or summed together.
    pub guard: Option<Guard>,
    pub levels: Vec<Level>,
    /// How the value reads in reports: "ratio", "seconds", "per second", "count".
    pub unit: &'static str,
}

/// When a node is judged at all (see [`AlertRule::guard`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guard {
    /// The family's value compares so with the number.
    Value(&'static str, Op, f64),
    /// The node publishes no such family (`redis_master_link_up`: not a replica).
    Absent(&'static str),
    /// `a / b` compares so with the number, where `b > 0`.
    Ratio(&'static str, &'static str, Op, f64),
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn level(severity: Severity, threshold: f64, for_secs: u64) -> Level {
    Level {
        severity,
        threshold,
        for_: secs(for_secs),
    }
}

use Severity::{Critical, Warning};

/// The whole pack with default thresholds.
pub fn pack() -> Vec<AlertRule> {
    let rule =
        |name, summary, description, expr: &'static str, op, signal, levels, unit| AlertRule {
            name,
            summary,
            description,
            expr: expr.into(),
            op,
            signal,
            guard: None,
            levels,
            unit,
        };
    vec![
        rule(
            "RedisDown",
            "Redis is unreachable",
            "redis-lookout cannot poll {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }}: connection refused, timed out or authentication failed (see redis_exporter_last_scrape_error).",
            "redis_up",
            Op::Below,
            Signal::Series("redis_up"),
            vec![level(Critical, 1.0, 60)],
            "up",
        ),
        rule(
            "RedisRestarted",
            "Redis restarted",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} restarted in the last 15 minutes, {{ $value | humanizeDuration }} after its previous start: its clients were disconnected, and what it had not persisted is gone.",
            // A restart moves the start time forward by the previous run (and any downtime).
            // The start time is computed from INFO's own clock and uptime, so it does not
            // jitter; "> 1" still leaves a second of rounding aside.
            "redis_start_time_seconds - redis_start_time_seconds offset 15m",
            Op::Above,
            Signal::SeriesChange("redis_start_time_seconds", secs(900)),
            vec![level(Warning, 1.0, 0)],
            "seconds",
        ),
        rule(
            "RedisLoading",
            "Redis is loading its dataset: commands fail with LOADING",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} is loading its dataset (a restart, or a replica's full sync) and answers LOADING to every command its clients send: it counts as up, but serves nothing.",
            "redis_loading_dump_file",
            Op::Above,
            Signal::Series("redis_loading_dump_file"),
            vec![level(Warning, 0.0, 60), level(Critical, 0.0, 600)],
            "count",
        ),
        rule(
            "RedisMemoryHigh",
            "Redis memory above {t_pct} of maxmemory",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} uses {{ $value | humanizePercentage }} of maxmemory: evictions or OOM errors are next.",
            "redis_memory_used_bytes / (redis_memory_max_bytes > 0)",
            Op::Above,
            Signal::Ratio("redis_memory_used_bytes", "redis_memory_max_bytes"),
            vec![level(Critical, MEMORY_HIGH, 300)],
            "ratio",
        ),
        rule(
            "RedisMemoryWarning",
            "Redis memory above {t_pct} of maxmemory",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} uses {{ $value | humanizePercentage }} of maxmemory.",
            "redis_memory_used_bytes / (redis_memory_max_bytes > 0)",
            Op::Above,
            Signal::Ratio("redis_memory_used_bytes", "redis_memory_max_bytes"),
            vec![level(Warning, 0.70, 900)],
            "ratio",
        ),
        AlertRule {
            // Above RedisMemoryHigh's threshold that alert has paged; a full LRU cache sits at
            // maxmemory for good, and its forecast would read "full" forever. The PromQL's
            // guard and this one follow RedisMemoryHigh's threshold (see `pack_with`).
            guard: Some(memory_forecast_guard(MEMORY_HIGH)),
            expr: memory_forecast_expr(MEMORY_HIGH).into(),
            ..rule(
                "RedisMemoryFillingUp",
                "Redis will reach maxmemory within 4 hours",
                "At the trend of the last 6 hours, {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} will use {{ $value | humanizePercentage }} of maxmemory in 4 hours: evictions or OOM errors follow, before anyone is paged for memory.",
                "",
                Op::Above,
                Signal::Forecast {
                    family: "redis_memory_used_bytes",
                    limit: "redis_memory_max_bytes",
                    window: secs(6 * 3600),
                    horizon: secs(4 * 3600),
                },
                vec![level(Warning, 1.0, 1800)],
                "ratio",
            )
        },
        rule(
            "RedisNoMaxmemory",
            "Redis has no maxmemory limit",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} runs without maxmemory: it can grow until the host runs out of memory, and the memory alerts cannot fire.",
            "redis_memory_max_bytes",
            Op::Below,
            Signal::Series("redis_memory_max_bytes"),
            vec![level(Warning, 1.0, 3600)],
            "bytes",
        ),
        rule(
            "RedisEvictionSpike",
            "Redis is evicting keys",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} evicts {{ $value | humanize }} keys/s: it is at maxmemory and dropping data.",
            "rate(redis_evicted_keys_total[5m])",
            Op::Above,
            Signal::Rate(&["redis_evicted_keys_total"], secs(300)),
            vec![level(Critical, 10.0, 120)],
            "per second",
        ),
        rule(
            "RedisOutOfMemoryErrors",
            "Redis refuses writes with OOM",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} answered {{ $value | humanize }} commands with OOM in 5 minutes: writes are failing.",
            "sum without (err) (increase(redis_errors_total{err=\"OOM\"}[5m]))",
            Op::Above,
            Signal::Increase("redis_errors_total", secs(300), "err", &["OOM"]),
            vec![level(Critical, 0.0, 0)],
            "count",
        ),
        rule(
            "RedisReplicaLagHigh",
            "Replica more than {t} s behind its master",
            "Replica {{ $labels.slave_ip }}:{{ $labels.slave_port }} of {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} is {{ $value | humanizeDuration }} behind.",
            "redis_replica_lag_seconds",
            Op::Above,
            Signal::Series("redis_replica_lag_seconds"),
            // No `for`: the value is already a duration (how long the replica has been behind
            // by that much), so "above 30 s" pages at 30 s of lag, not 90.
            vec![level(Critical, 30.0, 0)],
            "seconds",
        ),
        rule(
            "RedisReplicationBroken",
            "Replica lost its link to the master",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} has no link to its master {{ $labels.master_host }}:{{ $labels.master_port }}: it serves stale data and cannot take over.",
            "redis_master_link_up",
            Op::Below,
            Signal::Series("redis_master_link_up"),
            vec![level(Critical, 1.0, 120)],
            "up",
        ),
        AlertRule {
            // A master demoted by a failover (now a replica) had replicas an hour ago; that is
            // the failover, paged elsewhere, not a lost replica.
            guard: Some(Guard::Absent("redis_master_link_up")),
            ..rule(
                "RedisReplicaLost",
                "A master has fewer replicas than an hour ago",
                "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} lost {{ $value }} replica(s) compared with its maximum over the last hour.",
                "max_over_time(redis_connected_slaves[1h]) - redis_connected_slaves {cmp} unless ignoring (master_host, master_port) redis_master_link_up",
                Op::Above,
                Signal::DropFromMax("redis_connected_slaves", secs(3600)),
                vec![level(Warning, 0.0, 300)],
                "count",
            )
        },
        rule(
            "RedisReplicaFullResyncs",
            "A master keeps sending full resyncs to its replicas",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} sent {{ $value }} full resyncs in the last hour: a replica keeps dropping off and cannot resume from the backlog (backlog too small, or the replica output buffer limit cuts it during the sync). Each one forks and sends the whole dataset.",
            "round(increase(redis_replica_resyncs_full[1h]))",
            Op::Above,
            Signal::Increase("redis_replica_resyncs_full", secs(3600), "", &[]),
            vec![level(Warning, 2.0, 0)],
            "count",
        ),
        rule(
            "RedisClusterStateNotOk",
            "Redis Cluster state is not ok",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} reports cluster_state fail: some slots are not served.",
            "redis_cluster_state",
            Op::Below,
            Signal::Series("redis_cluster_state"),
            vec![level(Critical, 1.0, 60)],
            "ok",
        ),
        rule(
            "RedisClusterSlotsFailing",
            "Redis Cluster has failing slots",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} sees {{ $value }} slots in fail state.",
            "redis_cluster_slots_fail",
            Op::Above,
            Signal::Series("redis_cluster_slots_fail"),
            vec![level(Critical, 0.0, 60)],
            "count",
        ),
        rule(
            "RedisClusterMastersLow",
            "Redis Cluster has fewer than {t} masters online",
            "{{ $labels.target }} has {{ $value }} master(s) serving slots: the cluster has lost its majority of masters and cannot fail over on its own.",
            "redis_cluster_masters_online",
            Op::Below,
            Signal::Series("redis_cluster_masters_online"),
            vec![level(Critical, 2.0, 60)],
            "count",
        ),
        rule(
            "RedisClusterFailoverLoop",
            "Redis Cluster keeps failing over",
            "{{ $labels.target }} had {{ $value }} failovers in the last hour (a rolling upgrade makes one per shard).",
            "round(increase(redis_cluster_failovers_total[1h]))",
            Op::Above,
            Signal::Increase("redis_cluster_failovers_total", secs(3600), "", &[]),
            vec![level(Critical, 3.0, 0)],
            "count",
        ),
        rule(
            "RedisSentinelMasterDown",
            "Sentinel sees the Redis master down",
            "Sentinel {{ $labels.node }} of {{ $labels.target }} has seen master {{ $labels.master_name }} ({{ $labels.master_address }}) down for over a minute and no failover has replaced it.",
            "max without (master_status) (redis_sentinel_master_status)",
            Op::Below,
            Signal::SeriesWithout("redis_sentinel_master_status", "master_status"),
            vec![level(Critical, 1.0, 60)],
            "ok",
        ),
        rule(
            "RedisSentinelNoQuorum",
            "Sentinels cannot authorize a failover",
            "Sentinel {{ $labels.node }} of {{ $labels.target }} answers {{ $labels.message }} to CKQUORUM for {{ $labels.master_name }}: if the master fails now, nobody fails over.",
            "redis_sentinel_master_ckquorum_status",
            Op::Below,
            Signal::Series("redis_sentinel_master_ckquorum_status"),
            vec![level(Critical, 1.0, 60)],
            "ok",
        ),
        rule(
            "RedisSentinelTilt",
            "Sentinel is in TILT mode",
            "Sentinel {{ $labels.node }} of {{ $labels.target }} has been in TILT mode for over a minute: it acts on nothing (no failover) while its clock or event loop misbehaves.",
            "redis_sentinel_tilt",
            Op::Above,
            Signal::Series("redis_sentinel_tilt"),
            vec![level(Warning, 0.0, 60)],
            "count",
        ),
        rule(
            "RedisSentinelFailoverLoop",
            "Sentinel keeps failing the master over",
            "{{ $labels.target }} had {{ $value }} failovers in the last hour through Sentinel.",
            "round(increase(redis_sentinel_failovers_total[1h]))",
            Op::Above,
            Signal::Increase("redis_sentinel_failovers_total", secs(3600), "", &[]),
            vec![level(Critical, 2.0, 0)],
            "count",
        ),
        rule(
            "RedisRdbSaveFailing",
            "Redis RDB snapshots are failing",
            "The last BGSAVE of {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} failed; with stop-writes-on-bgsave-error writes are refused (MISCONF).",
            "redis_rdb_last_bgsave_status",
            Op::Below,
            Signal::Series("redis_rdb_last_bgsave_status"),
            vec![level(Critical, 1.0, 300)],
            "ok",
        ),
        rule(
            "RedisWritesRefusedMisconf",
            "Redis refuses writes: MISCONF",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} answered {{ $value | humanize }} commands with MISCONF in 2 minutes: persistence failed and writes are refused.",
            "sum without (err) (increase(redis_errors_total{err=\"MISCONF\"}[2m]))",
            Op::Above,
            Signal::Increase("redis_errors_total", secs(120), "err", &["MISCONF"]),
            vec![level(Critical, 0.0, 0)],
            "count",
        ),
        AlertRule {
            guard: Some(Guard::Value("redis_aof_enabled", Op::Above, 0.5)),
            ..rule(
                "RedisAofWriteFailing",
                "Redis cannot write its AOF",
                "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} failed its last AOF write: writes are refused until the disk recovers.",
                "redis_aof_last_write_status {cmp} and redis_aof_enabled == 1",
                Op::Below,
                Signal::Series("redis_aof_last_write_status"),
                vec![level(Critical, 1.0, 60)],
                "ok",
            )
        },
        AlertRule {
            guard: Some(Guard::Value("redis_aof_enabled", Op::Above, 0.5)),
            ..rule(
                "RedisAofRewriteFailing",
                "Redis AOF rewrite failed",
                "The last AOF rewrite of {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} failed: the AOF keeps growing.",
                "redis_aof_last_bgrewrite_status {cmp} and redis_aof_enabled == 1",
                Op::Below,
                Signal::Series("redis_aof_last_bgrewrite_status"),
                vec![level(Warning, 1.0, 300)],
                "ok",
            )
        },
        rule(
            "RedisAofFsyncDelayed",
            "Redis' disk cannot keep up with its AOF fsyncs",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} wrote its AOF {{ $value }} times in 5 minutes while an fsync had been pending for over 2 s: the disk does not keep up, writes stall the main thread, and a crash can lose more than a second of writes.",
            // Redis publishes the counter only while AOF is on: no guard needed.
            "round(increase(redis_aof_delayed_fsync[5m]))",
            Op::Above,
            Signal::Increase("redis_aof_delayed_fsync", secs(300), "", &[]),
            vec![level(Warning, 0.0, 0)],
            "count",
        ),
        AlertRule {
            // While Redis loads its dump after a restart (or a replica loads a full sync), INFO
            // answers with the keys loaded so far: not a flush.
            guard: Some(Guard::Value("redis_loading_dump_file", Op::Below, 0.5)),
            ..rule(
                "RedisDatabaseFlushed",
                "Redis lost most of its keys",
                "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} holds {{ $value | humanizePercentage }} of the keys it held 10 minutes ago (FLUSHALL/FLUSHDB, mass deletion, or a restart without persistence).",
                "sum without (db) (redis_db_keys) / (sum without (db) (redis_db_keys offset 10m) > 100) {cmp} and redis_loading_dump_file == 0",
                Op::Below,
                Signal::ShareOfEarlier("redis_db_keys", secs(600), 100.0),
                vec![level(Critical, 0.5, 0)],
                "ratio",
            )
        },
        AlertRule {
            // The commands the collector keeps at 0 until Redis counts one, and no others.
            expr: format!(
                "round(sum without (cmd) (increase(redis_commands_total{{cmd=~\"{}\"}}[5m])))",
                ALERTED_COMMANDS.join("|")
            )
            .into(),
            ..rule(
                "RedisDangerousCommandsUsed",
                "KEYS or FLUSHALL/FLUSHDB ran on Redis",
                "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} ran {{ $value }} KEYS, FLUSHALL or FLUSHDB commands in 5 minutes: KEYS blocks Redis for the whole keyspace, a flush deletes data.",
                "",
                Op::Above,
                Signal::Increase("redis_commands_total", secs(300), "cmd", ALERTED_COMMANDS),
                vec![level(Warning, 0.0, 0)],
                "count",
            )
        },
        rule(
            "RedisUnauthorizedAccess",
            "Failed authentication attempts on Redis",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} refused {{ $value | humanize }} authentications (WRONGPASS/NOAUTH) in 5 minutes.",
            "round(sum without (err) (increase(redis_errors_total{err=~\"WRONGPASS|NOAUTH\"}[5m])))",
            Op::Above,
            Signal::Increase("redis_errors_total", secs(300), "err", &["WRONGPASS", "NOAUTH"]),
            vec![level(Warning, 5.0, 0)],
            "count",
        ),
        rule(
            "RedisTooManyConnections",
            "Redis has more than {t} clients",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} has {{ $value }} connected clients.",
            "redis_connected_clients",
            Op::Above,
            Signal::Series("redis_connected_clients"),
            vec![level(Warning, 100.0, 300), level(Critical, 500.0, 300)],
            "count",
        ),
        rule(
            "RedisConnectionsNearMaxclients",
            "Redis clients near maxclients",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} uses {{ $value | humanizePercentage }} of maxclients; new connections will be refused.",
            "redis_connected_clients / (redis_max_clients > 0)",
            Op::Above,
            Signal::Ratio("redis_connected_clients", "redis_max_clients"),
            vec![level(Warning, 0.9, 300)],
            "ratio",
        ),
        rule(
            "RedisRejectedConnections",
            "Redis rejects connections",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} rejected {{ $value | humanize }} connections in 5 minutes (maxclients reached).",
            "increase(redis_rejected_connections_total[5m])",
            Op::Above,
            Signal::Increase("redis_rejected_connections_total", secs(300), "", &[]),
            vec![level(Critical, 0.0, 0)],
            "count",
        ),
        rule(
            "RedisBlockedClients",
            "Redis has blocked clients",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} has {{ $value }} clients blocked (BLPOP/BRPOP/XREAD BLOCK/WAIT or CLIENT PAUSE); normal for idle queue consumers.",
            "redis_blocked_clients",
            Op::Above,
            Signal::Series("redis_blocked_clients"),
            vec![level(Warning, 0.0, 600), level(Critical, 10.0, 300)],
            "count",
        ),
        rule(
            "RedisClientOutputBufferLarge",
            "A Redis client does not read its replies",
            "A client of {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} has had {{ $value | humanize }}B of replies waiting in its output buffer (the largest of the last seconds) for 5 minutes: it reads slower than Redis answers, and the buffer takes memory from the dataset (CLIENT LIST, omem=).",
            "redis_client_recent_max_output_buffer_bytes",
            Op::Above,
            Signal::Series("redis_client_recent_max_output_buffer_bytes"),
            vec![level(Warning, 64.0 * 1024.0 * 1024.0, 300)],
            "bytes",
        ),
        rule(
            "RedisHitRatioLow",
            "Redis keyspace hit ratio below {t_pct}",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} finds {{ $value | humanizePercentage }} of looked-up keys (over 5 minutes, at 10 lookups/s or more).",
            "rate(redis_keyspace_hits_total[5m]) / ((rate(redis_keyspace_hits_total[5m]) + rate(redis_keyspace_misses_total[5m])) >= 10)",
            Op::Below,
            Signal::HitRatio(secs(300), 10.0),
            vec![level(Warning, 0.9, 900), level(Critical, 0.7, 900)],
            "ratio",
        ),
        rule(
            "RedisLatencyHigh",
            "Redis answers slowly",
            "The poll round trip to {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} takes {{ $value | humanizeDuration }} (measured by redis-lookout, network included).",
            "redis_exporter_last_scrape_ping_time_seconds",
            Op::Above,
            Signal::Series("redis_exporter_last_scrape_ping_time_seconds"),
            vec![level(Warning, 0.005, 300), level(Critical, 0.020, 300)],
            "seconds",
        ),
        rule(
            "RedisMainThreadSaturated",
            "Redis' main thread is near a full CPU core",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} keeps its main thread busy {{ $value | humanizePercentage }} of the time (5-minute average): commands queue behind each other and latency climbs.",
            "rate(redis_cpu_user_main_thread_seconds_total[5m]) + rate(redis_cpu_sys_main_thread_seconds_total[5m])",
            Op::Above,
            Signal::Rate(
                &[
                    "redis_cpu_user_main_thread_seconds_total",
                    "redis_cpu_sys_main_thread_seconds_total",
                ],
                secs(300),
            ),
            vec![level(Warning, 0.8, 600)],
            "ratio",
        ),
        AlertRule {
            guard: Some(Guard::Value("redis_mem_fragmentation_bytes", Op::Above, 100.0 * 1024.0 * 1024.0)),
            ..rule(
                "RedisFragmentationHigh",
                "Redis memory is fragmented",
                "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} has a fragmentation ratio of {{ $value }} with over 100 MiB wasted.",
                "redis_mem_fragmentation_ratio {cmp} and redis_mem_fragmentation_bytes > 104857600",
                Op::Above,
                Signal::Series("redis_mem_fragmentation_ratio"),
                vec![level(Warning, 1.5, 1800)],
                "ratio",
            )
        },
        AlertRule {
            // Under 100 MiB the ratio is noise (the allocator's and Redis' own fixed costs).
            guard: Some(Guard::Value("redis_memory_used_bytes", Op::Above, 100.0 * 1024.0 * 1024.0)),
            ..rule(
                "RedisSwapping",
                "Redis memory is swapped out",
                "Only {{ $value | humanizePercentage }} of the memory {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} holds is resident (mem_fragmentation_ratio): the OS swapped the rest out, and commands that touch it wait on the disk.",
                "redis_mem_fragmentation_ratio {cmp} and redis_memory_used_bytes > 104857600",
                Op::Below,
                Signal::Series("redis_mem_fragmentation_ratio"),
                vec![level(Critical, 0.9, 300)],
                "ratio",
            )
        },
        rule(
            "RedisForkSlow",
            "Redis forks stop it for over {t} s",
            "The last fork of {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} (BGSAVE, AOF rewrite or a replica's full sync) stopped Redis for {{ $value | humanizeDuration }}: every client waited that long, and will at the next fork.",
            "redis_latest_fork_seconds",
            Op::Above,
            Signal::Series("redis_latest_fork_seconds"),
            vec![level(Warning, 0.5, 0)],
            "seconds",
        ),
        rule(
            "RedisSlowlogGrowing",
            "Redis logs many slow commands",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} logged {{ $value | humanize }} slow commands in 5 minutes (see redis_slowlog_entries_total by cmd).",
            // The same entries, each counted once, but in one series that exists from the first
            // poll: increase() takes a new series' first sample as its baseline, so a burst by
            // a command not slow before (a new `cmd` series) read as none. The evaluator counts
            // new series from zero and reads the per-command counter.
            "round(increase(redis_slowlog_entry_duration_seconds_count[5m]))",
            Op::Above,
            Signal::Increase("redis_slowlog_entries_total", secs(300), "", &[]),
            vec![level(Warning, 10.0, 0)],
            "count",
        ),
                rule(
            "RedisKeysWithoutTtl",
            "Keys that must expire have no TTL",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} holds about {{ $value | humanize }} keys without a TTL under {{ $labels.prefix }} (db {{ $labels.db }}), a prefix that must expire: they will never leave memory.",
            "redis_keyspace_must_expire_keys_without_ttl",
            Op::Above,
            Signal::Series("redis_keyspace_must_expire_keys_without_ttl"),
            vec![level(Warning, 0.0, 1800)],
            "count",
        ),
        rule(
            "RedisKeysTtlOverLimit",
            "Keys live longer than their prefix allows",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} holds about {{ $value | humanize }} keys under {{ $labels.prefix }} (db {{ $labels.db }}) with a TTL longer than the prefix's max_ttl: they stay, locked or valid, longer than the policy allows.",
            "redis_keyspace_ttl_over_limit_keys",
            Op::Above,
            Signal::Series("redis_keyspace_ttl_over_limit_keys"),
            vec![level(Warning, 0.0, 1800)],
            "count",
        ),
        rule(
            "RedisConfigDrift",
            "A Redis setting differs from what the config expects",
            "{{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} runs {{ $labels.setting }} = {{ $labels.actual }} where the target's expect: asks for {{ $labels.expected }}.",
            "redis_config_expectation_met",
            Op::Below,
            Signal::Series("redis_config_expectation_met"),
            vec![level(Warning, 1.0, 300)],
            "ok",
        ),
        rule(
            "RedisExporterCollectorFailing",
            "redis-lookout cannot read part of Redis' answers",
            "The {{ $labels.collector }} collector failed on {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }}; its metrics are missing.",
            "redis_lookout_collector_success",
            Op::Below,
            Signal::Series("redis_lookout_collector_success"),
            vec![level(Warning, 1.0, 900)],
            "ok",
        ),
        AlertRule {
            // The jobs are a setting (`alerting.exporter_jobs`, see `pack_with`).
            expr: exporter_down_expr(DEFAULT_EXPORTER_JOBS).into(),
            ..rule(
                "RedisExporterDown",
                "Prometheus cannot scrape a Redis exporter",
                "Prometheus' scrape of {{ $labels.instance }} (job {{ $labels.job }}) fails: every Redis alert for the targets behind it is blind until it works again.",
                "",
                Op::Below,
                Signal::PrometheusOnly,
                vec![level(Critical, 1.0, 120)],
                "up",
            )
        },
        rule(
            "RedisQueueBacklogGrowing",
            "A watched queue keeps growing",
            "{{ $labels.key }} (db {{ $labels.db }}) on {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} holds {{ $value }} more entries than 10 minutes ago, and has kept growing for 30 minutes: its consumers do not keep up.",
            "redis_key_size - redis_key_size offset 10m",
            Op::Above,
            Signal::SeriesChange("redis_key_size", secs(600)),
            vec![level(Warning, 0.0, 1800)],
            "count",
        ),
        rule(
            "RedisStreamGroupLagHigh",
            "A stream consumer group is more than {t} entries behind",
            "Group {{ $labels.group }} of stream {{ $labels.stream }} on {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} has {{ $value }} entries not yet delivered.",
            "redis_stream_group_lag",
            Op::Above,
            Signal::Series("redis_stream_group_lag"),
            vec![level(Warning, 1000.0, 600)],
            "count",
        ),
        rule(
            "RedisStreamGroupLagGrowing",
            "A stream consumer group falls further behind",
            "Group {{ $labels.group }} of stream {{ $labels.stream }} on {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} is {{ $value }} entries further behind than 10 minutes ago, and has kept falling behind for 30 minutes.",
            "redis_stream_group_lag - redis_stream_group_lag offset 10m",
            Op::Above,
            Signal::SeriesChange("redis_stream_group_lag", secs(600)),
            vec![level(Warning, 0.0, 1800)],
            "count",
        ),
        rule(
            "RedisStreamGroupStalled",
            "A stream consumer group has no active consumer",
            "Entries wait for group {{ $labels.group }} of stream {{ $labels.stream }} on {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }}, and none of its consumers has read for {{ $value | humanizeDuration }} (or it has none).",
            "redis_stream_group_stalled_seconds",
            Op::Above,
            Signal::Series("redis_stream_group_stalled_seconds"),
            vec![level(Critical, 300.0, 60)],
            "seconds",
        ),
        rule(
            "RedisHotKey",
            "One key takes over {t_pct} of the accesses",
            "The hottest key under {{ $labels.prefix }} (db {{ $labels.db }}) on {{ $labels.target }}{{ if $labels.node }} {{ $labels.node }}{{ end }} takes about {{ $value | humanizePercentage }} of the accesses the sampler's LFU counters account for.",
            "redis_keyspace_hot_key_access_share",
            Op::Above,
            Signal::Series("redis_keyspace_hot_key_access_share"),
            vec![level(Warning, 0.3, 900)],
            "ratio",
        ),
    ]
}

/// RedisMemoryHigh's default threshold (a share of maxmemory).
const MEMORY_HIGH: f64 = 0.85;

/// RedisMemoryFillingUp judges only nodes below RedisMemoryHigh's threshold.
fn memory_forecast_guard(memory_high: f64) -> Guard {
    Guard::Ratio(
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
        Op::Below,
        memory_high,
    )
}

fn memory_forecast_expr(memory_high: f64) -> String {
    format!(
        "predict_linear(redis_memory_used_bytes[6h], 4 * 3600) / (redis_memory_max_bytes > 0) {{cmp}} and redis_memory_used_bytes / redis_memory_max_bytes < {}",
        format_threshold(memory_high)
    )
}

/// The pack with thresholds from the config (`name` → value, or `name` → severity → value).
pub fn pack_with(
    thresholds: &BTreeMap<String, ThresholdOverride>,
    exporter_jobs: Option<&str>,
) -> Result<Vec<AlertRule>, String> {
    let mut rules = pack();
    if let Some(jobs) = exporter_jobs {
        if let Some(rule) = rules.iter_mut().find(|r| r.name == "RedisExporterDown") {
            rule.expr = exporter_down_expr(jobs).into();
        }
    }
    for (name, value) in thresholds {
        // The short names DESIGN.md's sketch uses.
        let name = match name.as_str() {
            "memory_ratio" => "RedisMemoryHigh",
            "replica_lag" => "RedisReplicaLagHigh",
            other => other,
        };
        let Some(rule) = rules.iter_mut().find(|r| r.name == name) else {
            let known: Vec<&str> = pack().iter().map(|r| r.name).collect::<Vec<_>>();
            return Err(format!(
                "alerting.thresholds: no alert named {name:?} (alerts: {})",
                known.join(", ")
            ));
        };
        match value {
            ThresholdOverride::One(v) => {
                if rule.levels.len() != 1 {
                    return Err(format!(
                        "alerting.thresholds.{name}: this alert has warning and critical levels; give {{warning: …, critical: …}}"
                    ));
                }
                rule.levels[0].threshold = *v;
            }
            ThresholdOverride::PerSeverity(map) => {
                for (key, v) in map {
                    if key == "for" {
                        // `for` (a duration) applies to every level of the alert.
                        let for_ = Duration::try_from_secs_f64(*v)
                            .ok()
                            .filter(|d| *d <= crate::config::MAX_DURATION)
                            .ok_or_else(|| {
                                format!("alerting.thresholds.{name}.for: {v} is not a duration of 0 to 366d")
                            })?;
                        for level in &mut rule.levels {
                            level.for_ = for_;
                        }
                        continue;
                    }
                    let Some(level) = rule.levels.iter_mut().find(|l| l.severity.as_str() == key)
                    else {
                        return Err(format!(
                            "alerting.thresholds.{name}: {key:?} is not one of its levels ({}) or for",
                            rule.levels.iter().map(|l| l.severity.as_str()).collect::<Vec<_>>().join(", ")
                        ));
                    };
                    level.threshold = *v;
                }
            }
        }
    }
    let memory_high = rules
        .iter()
        .find(|r| r.name == "RedisMemoryHigh")
        .and_then(|r| r.levels.first())
        .map(|l| l.threshold);
    if let (Some(high), Some(forecast)) = (
        memory_high,
        rules.iter_mut().find(|r| r.name == "RedisMemoryFillingUp"),
    ) {
        forecast.guard = Some(memory_forecast_guard(high));
        forecast.expr = memory_forecast_expr(high).into();
    }
    Ok(rules)
}

/// `RedisExporterDown`'s expression for jobs matching `jobs`, written as a PromQL string
/// (quotes and backslashes escaped, so the value cannot end the string early).
fn exporter_down_expr(jobs: &str) -> String {
    let quoted = serde_json::to_string(jobs).unwrap_or_else(|_| "\"\"".to_owned());
    format!("up{{job=~{quoted}}}")
}

/// A threshold from the config: a number (durations like `30s` become seconds).
#[derive(Debug, Clone, PartialEq)]
pub enum ThresholdOverride {
    One(f64),
    PerSeverity(BTreeMap<String, f64>),
}

impl<'de> serde::Deserialize<'de> for ThresholdOverride {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
            Map(BTreeMap<String, Raw>),
        }
        fn number(raw: Raw) -> Result<f64, String> {
            match raw {
                Raw::Number(v) if v.is_finite() => Ok(v),
                Raw::Number(v) => Err(format!("threshold {v} is not a finite number")),
                Raw::Text(t) => crate::config::parse_duration(&t)
                    .map(|d| d.as_secs_f64())
                    .map_err(|_| {
                        format!(
                            "threshold {t:?} is neither a number nor a duration of at most 366d"
                        )
                    }),
                Raw::Map(_) => Err("a threshold is a number or a duration".into()),
            }
        }
        match Raw::deserialize(d)? {
            Raw::Map(map) => map
                .into_iter()
                .map(|(k, v)| number(v).map(|n| (k, n)))
                .collect::<Result<_, _>>()
                .map(ThresholdOverride::PerSeverity)
                .map_err(serde::de::Error::custom),
            other => number(other)
                .map(ThresholdOverride::One)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn format_threshold(v: f64) -> String {
    let mut out = String::new();
    crate::metrics::write_value(&mut out, v);
    out
}

impl AlertRule {
    /// The PromQL of one level: the expression compared with the level's threshold.
    pub fn promql(&self, level: &Level) -> String {
        let cmp = format!("{} {}", self.op.promql(), format_threshold(level.threshold));
        if self.expr.contains("{cmp}") {
            self.expr.replace("{cmp}", &cmp)
        } else {
            format!("{} {cmp}", self.expr)
        }
    }

    /// The summary with the threshold written in (`{t}`, `{t_pct}`).
    pub fn summary_for(&self, level: &Level) -> String {
        self.summary
            .replace(
                "{t_pct}",
                &format!("{}%", format_threshold(level.threshold * 100.0)),
            )
            .replace("{t}", &format_threshold(level.threshold))
    }

    pub fn runbook_url(&self, base: &str) -> String {
        format!("{}/{}.md", base.trim_end_matches('/'), self.name)
    }
}

#[derive(Serialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Serialize)]
struct RuleGroup {
    name: &'static str,
    rules: Vec<PromRule>,
}

#[derive(Serialize)]
struct PromRule {
    alert: &'static str,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    labels: BTreeMap<&'static str, &'static str>,
    annotations: BTreeMap<&'static str, String>,
}

/// The Prometheus rule file for `rules` (one rule per alert level).
pub fn render_rules(rules: &[AlertRule], runbook_base: &str) -> String {
    let file = RuleFile {
        groups: vec![RuleGroup {
            name: "redis-lookout",
            rules: rules
                .iter()
                .flat_map(|rule| {
                    rule.levels.iter().map(move |level| PromRule {
                        alert: rule.name,
                        expr: rule.promql(level),
                        for_: (!level.for_.is_zero())
                            .then(|| humantime::format_duration(level.for_).to_string()),
                        labels: BTreeMap::from([("severity", level.severity.as_str())]),
                        annotations: BTreeMap::from([
                            ("summary", rule.summary_for(level)),
                            ("description", rule.description.to_owned()),
                            ("runbook_url", rule.runbook_url(runbook_base)),
                        ]),
                    })
                })
                .collect(),
        }],
    };
    let body = serde_yaml::to_string(&file).unwrap_or_default();
    format!(
        "# Generated by `redis-lookout rules` from the alert definitions in src/alerts/mod.rs.\n\
         # Do not edit: change the definitions (or thresholds in the config) and render again.\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_in_the_pack_renders_in_process_as_in_prometheus() {
        for rule in pack() {
            for level in &rule.levels {
                for text in [rule.description, &rule.summary_for(level)] {
                    let unknown = template::unknown_actions(text);
                    assert!(unknown.is_empty(), "{}: {unknown:?} in {text:?}", rule.name);
                }
            }
        }
    }

    #[test]
    fn the_memory_forecast_guard_follows_memory_highs_threshold() {
        let forecast = |rules: &[AlertRule]| {
            rules
                .iter()
                .find(|r| r.name == "RedisMemoryFillingUp")
                .cloned()
                .unwrap()
        };
        let default = forecast(&pack());
        assert_eq!(default.guard, Some(memory_forecast_guard(0.85)));
        assert!(default
            .promql(&default.levels[0])
            .ends_with("> 1 and redis_memory_used_bytes / redis_memory_max_bytes < 0.85"));
        let thresholds =
            BTreeMap::from([("RedisMemoryHigh".to_owned(), ThresholdOverride::One(0.9))]);
        let moved = forecast(&pack_with(&thresholds, None).unwrap());
        assert_eq!(moved.guard, Some(memory_forecast_guard(0.9)));
        assert!(moved
            .promql(&moved.levels[0])
            .ends_with("redis_memory_max_bytes < 0.9"));
    }

    #[test]
    fn every_error_kind_an_alert_counts_is_published_from_zero() {
        for rule in pack() {
            if let Signal::Increase("redis_errors_total", _, "err", kinds) = rule.signal {
                for kind in kinds {
                    assert!(
                        crate::collector::info::ALERTED_ERRORS.contains(kind),
                        "{}: {kind} is not in ALERTED_ERRORS",
                        rule.name
                    );
                }
            }
        }
    }

    #[test]
    fn every_alert_has_a_unique_name_levels_and_a_runbook() {
        let rules = pack();
        let mut names: Vec<&str> = rules.iter().map(|r| r.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), rules.len());
        for rule in &rules {
            assert!(!rule.levels.is_empty(), "{}", rule.name);
            let text =
                runbook_text(rule.name).unwrap_or_else(|| panic!("runbook for {}", rule.name));
            assert!(
                text.starts_with(&format!("# {}", rule.name)),
                "{} runbook title",
                rule.name
            );
        }
    }

    #[test]
    fn the_committed_rule_file_is_the_rendering_of_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/alerts/redis.rules.yml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let rendered = render_rules(&pack(), DEFAULT_RUNBOOK_BASE);
        if std::env::var_os("UPDATE_RULES").is_some() {
            std::fs::write(path, &rendered).expect("write rules");
            return;
        }
        assert!(
            committed == rendered,
            "alerts/redis.rules.yml is stale: run `cargo run -- rules > alerts/redis.rules.yml`"
        );
    }

    #[test]
    fn exporter_jobs_from_config_go_into_the_exporter_down_rule_as_one_promql_string() {
        let expr = |jobs: Option<&str>| {
            let rules = pack_with(&BTreeMap::new(), jobs).unwrap();
            let rule = rules
                .iter()
                .find(|r| r.name == "RedisExporterDown")
                .unwrap();
            rule.promql(&rule.levels[0])
        };
        assert_eq!(expr(None), r#"up{job=~".*redis.*"} < 1"#);
        assert_eq!(expr(None), expr(Some(DEFAULT_EXPORTER_JOBS)));
        assert_eq!(
            expr(Some("cache-(a|b)|lookout")),
            r#"up{job=~"cache-(a|b)|lookout"} < 1"#
        );
        // A quote or backslash stays inside the string: `\d` reaches Prometheus' regex as `\d`.
        assert_eq!(
            expr(Some(r#"x"} or vector(1) #\d"#)),
            r#"up{job=~"x\"} or vector(1) #\\d"} < 1"#
        );
    }

    #[test]
    fn thresholds_from_config_replace_the_defaults() {
        let overrides = BTreeMap::from([
            ("RedisMemoryHigh".to_owned(), ThresholdOverride::One(0.9)),
            (
                "RedisTooManyConnections".to_owned(),
                ThresholdOverride::PerSeverity(BTreeMap::from([("critical".to_owned(), 900.0)])),
            ),
        ]);
        let rules = pack_with(&overrides, None).unwrap();
        let memory = rules.iter().find(|r| r.name == "RedisMemoryHigh").unwrap();
        assert_eq!(
            memory.promql(&memory.levels[0]),
            "redis_memory_used_bytes / (redis_memory_max_bytes > 0) > 0.9"
        );
        assert_eq!(
            memory.summary_for(&memory.levels[0]),
            "Redis memory above 90% of maxmemory"
        );
        let conns = rules
            .iter()
            .find(|r| r.name == "RedisTooManyConnections")
            .unwrap();
        assert_eq!(conns.levels[1].threshold, 900.0);
        let quick = BTreeMap::from([(
            "RedisDown".to_owned(),
            ThresholdOverride::PerSeverity(BTreeMap::from([("for".to_owned(), 2.0)])),
        )]);
        let down = pack_with(&quick, None)
            .unwrap()
            .into_iter()
            .find(|r| r.name == "RedisDown")
            .unwrap();
        assert_eq!(down.levels[0].for_, Duration::from_secs(2));
        assert!(pack_with(
            &BTreeMap::from([("Nope".to_owned(), ThresholdOverride::One(1.0))]),
            None
        )
        .is_err());
        let two_levels = BTreeMap::from([(
            "RedisTooManyConnections".to_owned(),
            ThresholdOverride::One(1.0),
        )]);
        assert!(pack_with(&two_levels, None).is_err());
    }
}
