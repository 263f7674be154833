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

/// Asks for [`PARAMETERS`] every `refresh`, publishes the cached values on every poll.
#[derive(Debug)]
pub struct ConfigCollector {
    refresh: Duration,
    next_due: Option<Instant>,
    asked: bool,
    unavailable: bool,
    cached: ConfigValues,
}

impl ConfigCollector {
    pub fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            next_due: None,
            asked: false,
            unavailable: false,
            cached: ConfigValues::default(),
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
        PARAMETERS
            .iter()
            .map(|p| {
                let mut cmd = redis::cmd("CONFIG");
                cmd.arg("GET").arg(*p);
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
        let mut c = ConfigCollector::new(Duration::from_secs(60));
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
