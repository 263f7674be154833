//! SLOWLOG: the length and last entry as redis_exporter publishes them, and every slow entry
//! counted exactly once, by its id, per command, so `rate()` shows which commands are slow.
//!
//! Steady state asks `SLOWLOG GET` for a small window; when the whole window is new (a busy
//! slowlog) it asks again, in the same poll, for the server's whole log. Entries that rotated out
//! of the log before we saw them are counted in `redis_slowlog_entries_missed_total` (from the
//! gap in ids; not before the first entry seen when the log was empty at the first look, since
//! ids go on across SLOWLOG RESET and the gap then says nothing). Entries that
//! were already in the log when we started are not counted: after an exporter restart they would
//! otherwise show up as a burst in `increase()`. Arguments are never read beyond the command name.

use super::{is_unavailable, refusal, value_int, value_items, value_text, Collector, Outcome};
use crate::metrics::{FamilySet, Histogram, Kind};
use redis::{Cmd, RedisResult, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// Upper bounds (seconds) of the slow-entry duration histogram.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SMALL_WINDOW: usize = 8;
const FULL_WINDOW: usize = 1024;
/// Distinct command labels kept; anything beyond is counted as `other`.
const MAX_COMMANDS: usize = 200;

/// One slowlog entry, reduced to what we publish.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowEntry {
    pub id: i64,
    pub duration_seconds: f64,
    pub command: String,
}

/// Parses a `SLOWLOG GET` reply, newest first as Redis sends it. Malformed entries are skipped.
pub fn parse_slowlog(value: &Value) -> Vec<SlowEntry> {
    let Some(items) = value_items(value) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|entry| {
            let fields = value_items(entry)?;
            let id = value_int(fields.first()?)?;
            let micros = value_int(fields.get(2)?)?;
            let command = fields
                .get(3)
                .and_then(value_items)
                .and_then(|args| args.first())
                .and_then(value_text)
                .map(|name| command_label(&name))
                .unwrap_or_else(|| "other".to_owned());
            Some(SlowEntry {
                id,
                duration_seconds: micros.max(0) as f64 / 1e6,
                command,
            })
        })
        .collect()
}

/// A command name fit for a label: lower case, a known alphabet, bounded length.
pub fn command_label(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    let fits = !lower.is_empty()
        && lower.len() <= 32
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'|' || b == b'-' || b == b'.');
    if fits {
        lower
    } else {
        "other".to_owned()
    }
}

/// Counting state for one node's slowlog.
#[derive(Debug, Default)]
pub struct SlowlogCollector {
    unavailable: bool,
    /// Highest entry id already counted (None until the first look at the log).
    last_id: Option<i64>,
    /// The log was empty at the first look: where Redis' id counter stood is unknown (ids go
    /// on across SLOWLOG RESET), so the first entries seen say nothing of entries missed.
    counter_unknown: bool,
    window: usize,
    asked_full: bool,
    length: Option<i64>,
    per_command: BTreeMap<String, u64>,
    durations: Option<Histogram>,
    missed: u64,
    /// The server's `run_id` (from this poll's INFO): a new one is a restart, whose slowlog
    /// ids start again at 0 and may pass the old last id before the next poll.
    run_id: Option<String>,
    /// A restart seen and not yet taken into account by [`SlowlogCollector::absorb`].
    restarted: bool,
}

impl SlowlogCollector {
    fn get(window: usize) -> Cmd {
        let mut cmd = redis::cmd("SLOWLOG");
        cmd.arg("GET").arg(window);
        cmd
    }

    fn count(&mut self, entry: &SlowEntry) {
        let key = if self.per_command.contains_key(&entry.command)
            || self.per_command.len() < MAX_COMMANDS
        {
            entry.command.clone()
        } else {
            "other".to_owned()
        };
        *self.per_command.entry(key).or_default() += 1;
        self.durations
            .get_or_insert_with(|| Histogram::new(BUCKETS))
            .observe(entry.duration_seconds);
    }

    /// Counts the entries newer than the last counted id. Returns false when the window may have
    /// cut off new entries and a bigger look is needed first.
    fn absorb(&mut self, entries: &[SlowEntry], window: usize) -> bool {
        let newest = entries.iter().map(|e| e.id).max();
        let Some(last) = self.last_id else {
            self.last_id = Some(newest.unwrap_or(-1));
            self.counter_unknown = newest.is_none();
            return true;
        };
        let last = match newest {
            // Ids restart at 0 when Redis restarts: everything in the log is new. The run_id
            // tells even when the new ids have already passed the old last one.
            Some(newest) if newest < last || self.restarted => {
                self.counter_unknown = false;
                -1
            }
            _ => last,
        };
        let fresh: Vec<&SlowEntry> = entries.iter().filter(|e| e.id > last).collect();
        let oldest_fresh = fresh.iter().map(|e| e.id).min();
        let cut_off = entries.len() >= window && oldest_fresh.is_some_and(|id| id > last + 1);
        if cut_off && window < FULL_WINDOW && !self.asked_full {
            return false;
        }
        if let Some(oldest) = oldest_fresh {
            if !std::mem::take(&mut self.counter_unknown) {
                self.missed += (oldest - last - 1).max(0) as u64;
            }
        }
        let fresh: Vec<SlowEntry> = fresh.into_iter().cloned().collect();
        for entry in &fresh {
            self.count(entry);
        }
        if let Some(newest) = newest {
            self.last_id = Some(newest.max(last));
        }
        self.window = if fresh.len() * 2 >= self.window {
            (self.window * 2).min(FULL_WINDOW)
        } else {
            (self.window / 2).max(SMALL_WINDOW)
        };
        true
    }

    fn publish(&self, newest: Option<&SlowEntry>, out: &mut FamilySet) {
        if let Some(len) = self.length {
            out.gauge("redis_slowlog_length", "Total slowlog", len as f64);
        }
        out.gauge(
            "redis_slowlog_last_id",
            "Last id of slowlog",
            newest.map_or(0.0, |e| e.id as f64),
        );
        out.gauge(
            "redis_last_slow_execution_duration_seconds",
            "The amount of time needed for last slow execution, in seconds",
            newest.map_or(0.0, |e| e.duration_seconds),
        );
        for (cmd, count) in &self.per_command {
            out.add(
                "redis_slowlog_entries_total",
                "Slowlog entries seen, each counted once by its id, per command",
                Kind::Counter,
                vec![("cmd", cmd.clone())],
                *count as f64,
            );
        }
        out.add(
            "redis_slowlog_entries_missed_total",
            "Slowlog entries not counted by command: rotated out of the log before the exporter could read them, or past the 1024 it reads in one poll",
            Kind::Counter,
            Vec::new(),
            self.missed as f64,
        );
        let (name, help) = (
            "redis_slowlog_entry_duration_seconds",
            "Execution time of slowlog entries, counted once each",
        );
        match &self.durations {
            Some(h) => h.publish(out, name, help),
            None => Histogram::new(BUCKETS).publish(out, name, help),
        }
    }
}

impl Collector for SlowlogCollector {
    fn name(&self) -> &'static str {
        "slowlog"
    }

    fn commands(&mut self, _now: Instant) -> Vec<Cmd> {
        if self.unavailable {
            return Vec::new();
        }
        if self.window == 0 {
            self.window = SMALL_WINDOW;
        }
        self.asked_full = false;
        vec![
            redis::cmd("SLOWLOG").arg("LEN").clone(),
            Self::get(self.window),
        ]
    }

    fn collect(&mut self, replies: Vec<RedisResult<Value>>, out: &mut FamilySet) -> Outcome {
        if self.unavailable {
            return Outcome::NoData;
        }
        // First call: [LEN, GET window]; a follow-up: [GET full].
        let follow_up = replies.len() == 1;
        let mut entries = None;
        for reply in replies {
            match reply {
                Err(err) if is_unavailable(&err) => {
                    self.unavailable = true;
                    return refusal(&err);
                }
                Err(_) => return Outcome::Failed("SLOWLOG failed".into()),
                Ok(Value::Int(len)) => self.length = Some(len),
                Ok(value) => entries = Some(parse_slowlog(&value)),
            }
        }
        let entries = entries.unwrap_or_default();
        // INFO ran earlier in this poll: a new run_id is a restart.
        if let Some(run_id) = out.label_of("redis_instance_info", "run_id") {
            if self.run_id.as_deref().is_some_and(|old| old != run_id) {
                self.restarted = true;
            }
            self.run_id = Some(run_id.to_owned());
        }
        let window = if follow_up { FULL_WINDOW } else { self.window };
        self.asked_full |= follow_up;
        if !self.absorb(&entries, window) {
            return Outcome::FollowUp(vec![Self::get(FULL_WINDOW)]);
        }
        self.restarted = false;
        self.publish(entries.iter().max_by_key(|e| e.id), out);
        Outcome::Collected
    }

    fn reset(&mut self) {
        self.unavailable = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64, micros: i64, cmd: &str) -> Value {
        Value::Array(vec![
            Value::Int(id),
            Value::Int(1_700_000_000),
            Value::Int(micros),
            Value::Array(vec![
                Value::BulkString(cmd.as_bytes().to_vec()),
                Value::BulkString(b"secret-argument".to_vec()),
            ]),
            Value::BulkString(b"127.0.0.1:5000".to_vec()),
            Value::BulkString(b"".to_vec()),
        ])
    }

    fn log(ids: impl Iterator<Item = i64>) -> Value {
        Value::Array(ids.map(|id| entry(id, 2000, "KEYS")).collect())
    }

    fn poll(c: &mut SlowlogCollector, len: i64, get: Value) -> (Outcome, FamilySet) {
        let _ = c.commands(Instant::now());
        let mut out = FamilySet::new();
        let outcome = c.collect(vec![Ok(Value::Int(len)), Ok(get)], &mut out);
        (outcome, out)
    }

    fn total(out: &FamilySet, cmd: &str) -> f64 {
        out.get("redis_slowlog_entries_total")
            .and_then(|f| f.samples.iter().find(|s| s.labels[0].1 == cmd))
            .map_or(0.0, |s| s.value)
    }

    #[test]
    fn arguments_are_dropped_and_names_normalised() {
        let entries = parse_slowlog(&Value::Array(vec![entry(5, 1500, "HGETALL")]));
        assert_eq!(
            entries,
            vec![SlowEntry {
                id: 5,
                duration_seconds: 0.0015,
                command: "hgetall".into()
            }]
        );
        assert_eq!(command_label("bad\nname"), "other");
    }

    #[test]
    fn history_at_start_is_a_baseline_and_new_entries_count_once() {
        let mut c = SlowlogCollector::default();
        let (_, out) = poll(&mut c, 3, log([3, 2, 1].into_iter()));
        assert_eq!(total(&out, "keys"), 0.0);
        assert_eq!(
            out.get("redis_slowlog_last_id").unwrap().samples[0].value,
            3.0
        );
        let (_, out) = poll(&mut c, 5, log([5, 4, 3, 2, 1].into_iter()));
        assert_eq!(total(&out, "keys"), 2.0);
        let (_, out) = poll(&mut c, 5, log([5, 4, 3, 2, 1].into_iter()));
        assert_eq!(
            total(&out, "keys"),
            2.0,
            "same entries again are not recounted"
        );
        let hist = out.get("redis_slowlog_entry_duration_seconds").unwrap();
        let count = hist.samples.iter().find(|s| s.suffix == "_count").unwrap();
        assert_eq!(count.value, 2.0);
    }

    #[test]
    fn a_restart_is_seen_by_its_run_id_even_when_new_ids_pass_the_old_last_one() {
        let mut c = SlowlogCollector::default();
        let poll_as = |c: &mut SlowlogCollector, run_id: &str, ids: Vec<i64>| {
            let _ = c.commands(Instant::now());
            let mut out = FamilySet::new();
            out.add(
                "redis_instance_info",
                "h",
                crate::metrics::Kind::Gauge,
                vec![("run_id", run_id.to_owned())],
                1.0,
            );
            let len = ids.len() as i64;
            c.collect(
                vec![Ok(Value::Int(len)), Ok(log(ids.into_iter()))],
                &mut out,
            );
            out
        };
        poll_as(&mut c, "a", vec![4, 3, 2, 1, 0]);
        // Restarted: 7 new entries, ids 0 to 6, past the old last id 4.
        let out = poll_as(&mut c, "b", (0..=6).rev().collect());
        assert_eq!(total(&out, "keys"), 7.0);
        let out = poll_as(&mut c, "b", (0..=6).rev().collect());
        assert_eq!(total(&out, "keys"), 7.0, "and only once");
    }

    #[test]
    fn a_full_window_of_new_entries_asks_for_the_whole_log() {
        let mut c = SlowlogCollector::default();
        poll(&mut c, 0, log(std::iter::empty()));
        // 21 new entries (ids start at 0), window of 8: all 8 are new and id 13 leaves a gap.
        let (outcome, _) = poll(&mut c, 21, log((13..=20).rev()));
        assert!(matches!(outcome, Outcome::FollowUp(_)));
        let mut out = FamilySet::new();
        let outcome = c.collect(vec![Ok(log((0..=20).rev()))], &mut out);
        assert_eq!(outcome, Outcome::Collected);
        assert_eq!(total(&out, "keys"), 21.0);
        let missed = out.get("redis_slowlog_entries_missed_total").unwrap();
        assert_eq!(missed.samples[0].value, 0.0);
    }

    #[test]
    fn entries_rotated_out_are_counted_as_missed_and_restart_resets_ids() {
        let missed = |out: &FamilySet| {
            out.get("redis_slowlog_entries_missed_total")
                .unwrap()
                .samples[0]
                .value
        };
        let mut c = SlowlogCollector::default();
        poll(&mut c, 1, log([0].into_iter()));
        let (outcome, _) = poll(&mut c, 8, log((93..=100).rev()));
        assert!(matches!(outcome, Outcome::FollowUp(_)));
        let mut out = FamilySet::new();
        c.collect(vec![Ok(log((73..=100).rev()))], &mut out);
        assert_eq!(total(&out, "keys"), 28.0);
        // Ids 1 to 72 rotated out unseen.
        assert_eq!(missed(&out), 72.0);
        // Redis restarted: ids begin again at 0.
        let (_, out) = poll(&mut c, 2, log([1, 0].into_iter()));
        assert_eq!(total(&out, "keys"), 30.0);

        // Empty at the first look (SLOWLOG RESET keeps the id counter going): the first entry
        // seen, id 5000, is new, and the ids before it are no evidence of anything missed.
        let mut c = SlowlogCollector::default();
        poll(&mut c, 0, log(std::iter::empty()));
        let (_, out) = poll(&mut c, 1, log([5000].into_iter()));
        assert_eq!(total(&out, "keys"), 1.0);
        assert_eq!(missed(&out), 0.0);
        // From then on the counter is known: a gap is a miss.
        let (_, out) = poll(&mut c, 2, log([5003, 5002].into_iter()));
        assert_eq!(missed(&out), 1.0);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            ".{0,12}".prop_map(|s| Value::BulkString(s.into_bytes())),
            Just(Value::Nil),
        ];
        leaf.prop_recursive(3, 40, 8, |inner| {
            proptest::collection::vec(inner, 0..8).prop_map(Value::Array)
        })
    }

    proptest! {
        #[test]
        fn any_reply_shape_is_parsed_or_skipped_without_panicking(reply in value()) {
            let _ = parse_slowlog(&reply);
            let _ = crate::collector::latency::parse_latency_latest(&reply);
            let _ = crate::collector::config::parse_config_reply(&reply);
            let mut c = SlowlogCollector::default();
            let mut out = FamilySet::new();
            let _ = c.commands(Instant::now());
            let _ = c.collect(vec![Ok(Value::Int(1)), Ok(reply.clone())], &mut out);
            let _ = c.commands(Instant::now());
            let _ = c.collect(vec![Ok(Value::Int(1)), Ok(reply)], &mut out);
        }
    }
}
