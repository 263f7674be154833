//! Collectors: what to ask Redis on each poll, and how to turn the replies into facts.
//!
//! Every collector states the commands it wants for this poll; the poller sends the commands of
//! all collectors in **one pipeline** (one round trip) and hands each collector its own replies.
//! The parsing half of each collector is a pure function tested on captured output; the I/O is
//! the poller's single pipeline. A reply of "unknown command" or "disabled" (managed services
//! rename or block CONFIG, SLOWLOG, LATENCY) means *no data* ([`Outcome::Refused`]): the poller
//! logs it once, stops asking and tries again every `config_refresh` (or at a reconnect), so
//! we never inflate the server's `total_error_replies` or its ACL log.

pub mod cluster;
pub mod config;
pub mod info;
pub mod info_fields;
pub mod latency;
pub mod sentinel;
pub mod slowlog;

use crate::metrics::FamilySet;
use redis::{Cmd, RedisResult, Value};
use std::time::Instant;

/// What a collector made of its replies.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Facts were added to the set.
    Collected,
    /// Nothing to report this poll (not due, or the command is unavailable on this server).
    NoData,
    /// The node is not of the kind this collector reads (cluster mode off for the cluster
    /// collector, a data node for the Sentinel one): no data, and no self-diagnostic series
    /// either, since a collector that did not run has neither a success nor a duration.
    NotApplicable,
    /// The collector wants one more round trip in this poll (a busy slowlog, for example).
    FollowUp(Vec<Cmd>),
    /// The replies could not be understood: a protocol problem, counted as a failed collector.
    Failed(String),
    /// The server refused the collector's command (renamed away, disabled, or not in the ACL
    /// user's rights), with Redis' words. No data, not a failure: the poller stops asking,
    /// says so once, and asks again at every `config_refresh` ([`Refresh::config`]).
    Refused(String),
}

/// Redis' reply to a refused command, for a log line: its first line, at most 200 characters.
pub fn refusal(err: &redis::RedisError) -> Outcome {
    Outcome::Refused(crate::error::one_line(&err.to_string()))
}

impl PartialEq for Outcome {
    /// Follow-ups compare by their packed commands (`Cmd` has no equality of its own).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Outcome::Collected, Outcome::Collected)
            | (Outcome::NoData, Outcome::NoData)
            | (Outcome::NotApplicable, Outcome::NotApplicable) => true,
            (Outcome::Failed(a), Outcome::Failed(b))
            | (Outcome::Refused(a), Outcome::Refused(b)) => a == b,
            (Outcome::FollowUp(a), Outcome::FollowUp(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.get_packed_command() == y.get_packed_command())
            }
            _ => false,
        }
    }
}

/// One source of facts about a Redis node.
pub trait Collector: Send {
    /// Short stable name used in the `collector` label.
    fn name(&self) -> &'static str;
    /// The commands to send in this poll (empty: skip this poll).
    fn commands(&mut self, now: Instant) -> Vec<Cmd>;
    /// Turns the replies to `commands` (or to a follow-up) into facts.
    fn collect(&mut self, replies: Vec<RedisResult<Value>>, out: &mut FamilySet) -> Outcome;
    /// The connection was re-established: forget what was learned about the server's commands.
    fn reset(&mut self) {}
}

/// True when a reply says the command does not exist or may not be used here, which on managed
/// services is the normal state of CONFIG, SLOWLOG, LATENCY and CLUSTER.
pub fn is_unavailable(err: &redis::RedisError) -> bool {
    let text = err.to_string().to_ascii_lowercase();
    text.contains("unknown command")
        || text.contains("unknown subcommand")
        || text.contains("not allowed")
        || text.contains("noperm")
        || text.contains("no permissions")
        || text.contains("disabled")
}

/// Reads a reply as UTF-8 text (lossy: INFO is ASCII, but a hostile server must not panic us).
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".to_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Reads a reply as an integer (Redis sometimes answers numbers as strings).
pub fn value_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::Double(d) => Some(*d as i64),
        other => value_text(other)?.trim().parse().ok(),
    }
}

/// Reads a reply as a list of items (RESP2 array or RESP3 set).
pub fn value_items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// How often the slower-moving facts are asked for; published from cache in between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refresh {
    /// The CONFIG GET settings.
    pub config: std::time::Duration,
    /// INFO `commandstats` and `latencystats`: per-command counters and percentiles, the most
    /// expensive part of INFO for Redis to produce.
    pub command_stats: std::time::Duration,
}

/// The standard set of collectors for one node, in pipeline order. CONFIG comes before INFO
/// because INFO pads empty databases up to CONFIG's `databases`.
/// `expect` is the target's `expect:` settings, judged with every CONFIG refresh.
pub fn standard_set(refresh: Refresh, expect: Vec<(String, String)>) -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(config::ConfigCollector::new(refresh.config, expect)),
        Box::new(info::InfoCollector::new(refresh.command_stats)),
        Box::new(cluster::ClusterCollector::default()),
        Box::new(sentinel::SentinelCollector::default()),
        Box::new(slowlog::SlowlogCollector::default()),
        Box::new(latency::LatencyCollector::default()),
    ]
}
