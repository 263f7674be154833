//! CONFIG: the few settings the alerts need, refreshed every minute, never `CONFIG GET *`.
//!
//! Values are cached and published on every poll between refreshes. Where CONFIG is renamed or
//! blocked (ElastiCache, Memorystore, ACL users without `+config|get`) the collector reports no
//! data and stops asking; `redis_memory_max_bytes` and `redis_max_clients` from INFO still hold
//! the limits there.

use super::{is_unavailable, refusal, value_items, value_text, Collector, Outcome};
use crate::metrics::{FamilySet, Kind};
use redis::{Cmd, RedisResult, Value};
use std::time::{Duration, Instant};

/// The settings asked for, one `CONFIG GET` each (multi-parameter GET needs Redis 7).
pub const PARAMETERS: &[&str] = &[
    "maxmemory",
    "maxclients",
    "io-threads",
    "repl-backlog-size",
    "client-output-buffer-limit",
    "databases",
];

/// The last values read, by parameter.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConfigValues {
    pub values: Vec<(String, String)>,
}

impl ConfigValues {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a `CONFIG GET` reply (RESP2 flat array or RESP3 map) into pairs.
pub fn parse_config_reply(value: &Value) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    match value {
        Value::Map(entries) => {
            for (k, v) in entries {
                if let (Some(k), Some(v)) = (value_text(k), value_text(v)) {
                    pairs.push((k, v));
                }
            }
        }
        other => {
            if let Some(items) = value_items(other) {
                for chunk in items.chunks_exact(2) {
                    if let (Some(k), Some(v)) = (value_text(&chunk[0]), value_text(&chunk[1])) {
                        pairs.push((k, v));
                    }
                }
            }
        }
    }
    pairs
}

/// Publishes the cached settings under redis_exporter's `redis_config_*` names.
pub fn config_families(values: &ConfigValues, out: &mut FamilySet) {
    let simple = [
        ("maxmemory", "redis_config_maxmemory", "maxmemory setting"),
        (
            "maxclients",
            "redis_config_maxclients",
            "maxclients setting",
        ),
        (
            "io-threads",
            "redis_config_io_threads",
            "io-threads setting",
        ),
        (
            "repl-backlog-size",
            "redis_config_repl_backlog_size",
            "repl-backlog-size setting",
        ),
        (
            "databases",
            "redis_config_databases",
            "databases setting: how many logical databases exist",
        ),
    ];
    for (key, name, help) in simple {
        if let Some(v) = values.get(key).and_then(|v| v.trim().parse::<f64>().ok()) {
            out.gauge(name, help, v);
        }
    }
    if let Some(limits) = values.get("client-output-buffer-limit") {
        // "normal 0 0 0 replica 268435456 67108864 60 pubsub 33554432 8388608 60"
        let words: Vec<&str> = limits.split_whitespace().collect();
        for group in words.chunks_exact(4) {
            let class = group[0].to_owned();
            let (Ok(hard), Ok(soft), Ok(secs)) = (
                group[1].parse::<f64>(),
                group[2].parse::<f64>(),
                group[3].parse::<f64>(),
            ) else {
                continue;
            };
            let help = "client-output-buffer-limit setting, bytes";
            for (limit, v) in [("hard", hard), ("soft", soft)] {
                out.add(
                    "redis_config_client_output_buffer_limit_bytes",
                    help,
                    Kind::Gauge,
                    vec![("class", class.clone()), ("limit", limit.to_owned())],
                    v,
                );
            }
            out.add(
                "redis_config_client_output_buffer_limit_overcome_seconds",
                "client-output-buffer-limit setting, seconds over the soft limit before disconnect",
                Kind::Gauge,
                vec![("class", class), ("limit", "soft".to_owned())],
                secs,
            );
        }
    }
}

/// Publishes, for each `expect:` entry (lowercase setting, expected value), whether the node's
/// setting has that value: `redis_config_expectation_met{setting,expected,actual}` (`actual`
/// empty when Redis does not know the setting: a typo, or an older version).
pub fn expectation_families(
    values: &ConfigValues,
    expect: &[(String, String)],
    out: &mut FamilySet,
) {
    for (setting, expected) in expect {
        let actual = values.get(setting);
        let met = actual.is_some_and(|actual| same_setting(actual, expected));
        let actual = actual.unwrap_or("");
        out.add(
            "redis_config_expectation_met",
            "1 while the setting has the value the target's expect: asks for (actual as CONFIG GET reads it; empty for an empty value or a setting Redis does not know, which never matches)",
            Kind::Gauge,
            vec![
                ("setting", setting.clone()),
                ("expected", expected.clone()),
                ("actual", actual.to_owned()),
            ],
            if met { 1.0 } else { 0.0 },
        );
    }
}

/// Whether a setting as CONFIG GET prints it equals the value a config file asks for: case and
/// runs of spaces aside, and memory sizes by their bytes (`256mb` is `268435456`, with Redis'
/// units: k = 1000, kb = 1024, and so on).
pub fn same_setting(actual: &str, expected: &str) -> bool {
    let words = |v: &str| {
        v.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase()
    };
    let (a, e) = (words(actual), words(expected));
    match (memory_bytes(&a), memory_bytes(&e)) {
        (Some(a), Some(e)) => a == e,
        _ => a == e,
    }
}

/// A memory size as Redis reads one (`100`, `1k`, `1kb`, `256mb`, `2gb`), in bytes.
fn memory_bytes(v: &str) -> Option<u128> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let number: u128 = v.get(..digits)?.parse().ok()?;
    let unit: u128 = match &v[digits..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// Asks for [`PARAMETERS`] (and the settings of `expect:`) every `refresh`, publishes the
/// cached values on every poll.
#[derive(Debug)]
pub struct ConfigCollector {
    refresh: Duration,
    next_due: Option<Instant>,
    asked: bool,
    unavailable: bool,
    cached: ConfigValues,
    expect: Vec<(String, String)>,
}

impl ConfigCollector {
    pub fn new(refresh: Duration, expect: Vec<(String, String)>) -> Self {
        Self {
            refresh,
            next_due: None,
            asked: false,
            unavailable: false,
            cached: ConfigValues::default(),
            expect,
        }
    }
}

impl Collector for ConfigCollector {
    fn name(&self) -> &'static str {
        "config"
    }

    fn commands(&mut self, now: Instant) -> Vec<Cmd> {
        self.asked = false;
        if self.unavailable || self.next_due.is_some_and(|due| now < due) {
            return Vec::new();
        }
        self.next_due = Some(now + self.refresh);
        self.asked = true;
        let extra = self
            .expect
            .iter()
            .map(|(setting, _)| setting.as_str())
            .filter(|setting| !PARAMETERS.contains(setting));
        PARAMETERS
            .iter()
            .copied()
            .chain(extra)
            .map(|p| {
                let mut cmd = redis::cmd("CONFIG");
                cmd.arg("GET").arg(p);
                cmd
            })
            .collect()
    }

    fn collect(&mut self, replies: Vec<RedisResult<Value>>, out: &mut FamilySet) -> Outcome {
        if self.asked {
            let mut fresh = ConfigValues::default();
            for reply in replies {
                match reply {
                    Ok(value) => fresh.values.extend(parse_config_reply(&value)),
                    Err(err) if is_unavailable(&err) => {
                        self.unavailable = true;
                        self.cached = ConfigValues::default();
                        return refusal(&err);
                    }
                    Err(_) => return Outcome::Failed("CONFIG GET failed".into()),
                }
            }
            self.cached = fresh;
        }
        if self.cached.values.is_empty() {
            return Outcome::NoData;
        }
        config_families(&self.cached, out);
        expectation_families(&self.cached, &self.expect, out);
        Outcome::Collected
    }

    fn reset(&mut self) {
        self.unavailable = false;
        self.next_due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_compare_as_redis_reads_settings() {
        assert!(same_setting("allkeys-lru", "ALLKEYS-LRU"));
        assert!(same_setting("268435456", "256mb"));
        assert!(same_setting("256000000", "256m"));
        assert!(!same_setting("268435456", "256m"));
        assert!(same_setting("3600 1 300 100", " 3600 1  300 100 "));
        assert!(same_setting("", ""), "save \"\": snapshots off");
        assert!(!same_setting("no", "yes"));
        // Past any size: compared as text, not multiplied into an overflow.
        let huge = format!("{}gb", "9".repeat(38));
        assert!(same_setting(&huge, &huge.to_uppercase()));
        let values = ConfigValues {
            values: vec![
                ("maxmemory-policy".into(), "noeviction".into()),
                ("appendonly".into(), "yes".into()),
            ],
        };
        let expect = [
            ("maxmemory-policy", "allkeys-lru"),
            ("appendonly", "yes"),
            ("no-such-setting", ""),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let mut out = FamilySet::new();
        expectation_families(&values, &expect, &mut out);
        let got: Vec<(String, String, f64)> = out
            .get("redis_config_expectation_met")
            .unwrap()
            .samples
            .iter()
            .map(|s| (s.labels[0].1.clone(), s.labels[2].1.clone(), s.value))
            .collect();
        assert_eq!(
            got,
            [
                ("maxmemory-policy".into(), "noeviction".into(), 0.0),
                ("appendonly".into(), "yes".into(), 1.0),
                // Unknown to Redis: never met, even against an empty expectation.
                ("no-such-setting".into(), String::new(), 0.0),
            ]
        );
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn resp2_and_resp3_replies_read_alike() {
        let resp2 = Value::Array(vec![bulk("maxmemory"), bulk("100")]);
        let resp3 = Value::Map(vec![(bulk("maxmemory"), bulk("100"))]);
        assert_eq!(parse_config_reply(&resp2), parse_config_reply(&resp3));
        assert_eq!(parse_config_reply(&Value::Array(vec![])), vec![]);
    }

    #[test]
    fn output_buffer_limits_get_class_and_limit_labels() {
        let values = ConfigValues {
            values: vec![
                ("maxmemory".into(), "1048576".into()),
                (
                    "client-output-buffer-limit".into(),
                    "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60".into(),
                ),
            ],
        };
        let mut out = FamilySet::new();
        config_families(&values, &mut out);
        assert_eq!(
            out.get("redis_config_maxmemory").unwrap().samples[0].value,
            1048576.0
        );
        let bytes = out
            .get("redis_config_client_output_buffer_limit_bytes")
            .unwrap();
        assert_eq!(bytes.samples.len(), 6);
        assert_eq!(
            bytes.samples[2].labels,
            vec![("class", "slave".to_owned()), ("limit", "hard".to_owned())]
        );
        assert_eq!(bytes.samples[2].value, 268435456.0);
        let secs = out
            .get("redis_config_client_output_buffer_limit_overcome_seconds")
            .unwrap();
        assert_eq!(secs.samples[1].value, 60.0);
    }

    #[test]
    fn refreshes_on_schedule_and_republishes_cache_between() {
        let mut c = ConfigCollector::new(Duration::from_secs(60), Vec::new());
        let t0 = Instant::now();
        assert_eq!(c.commands(t0).len(), PARAMETERS.len());
        let replies = PARAMETERS
            .iter()
            .map(|p| Ok(Value::Array(vec![bulk(p), bulk("5")])))
            .collect();
        let mut out = FamilySet::new();
        assert_eq!(c.collect(replies, &mut out), Outcome::Collected);
        assert!(c.commands(t0 + Duration::from_secs(5)).is_empty());
        let mut out = FamilySet::new();
        assert_eq!(c.collect(Vec::new(), &mut out), Outcome::Collected);
        assert_eq!(
            out.get("redis_config_databases").unwrap().samples[0].value,
            5.0
        );
        assert_eq!(
            c.commands(t0 + Duration::from_secs(61)).len(),
            PARAMETERS.len()
        );
    }
}
