//! LATENCY LATEST: the latest and the all-time maximum spike per event, in seconds.
//!
//! Only servers with `latency-monitor-threshold` set record events; an empty reply is no data.

use super::{is_unavailable, refusal, value_int, value_items, value_text, Collector, Outcome};
use crate::metrics::{FamilySet, Kind};
use redis::{Cmd, RedisResult, Value};
use std::time::Instant;

/// One event row of `LATENCY LATEST`.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyEvent {
    pub event: String,
    pub timestamp: i64,
    pub latest_seconds: f64,
    pub max_seconds: f64,
}

/// Parses `LATENCY LATEST` (`[[event, unix time, latest ms, max ms], …]`).
pub fn parse_latency_latest(value: &Value) -> Vec<LatencyEvent> {
    value_items(value)
        .unwrap_or_default()
        .iter()
        .filter_map(|row| {
            let row = value_items(row)?;
            Some(LatencyEvent {
                event: value_text(row.first()?)?,
                timestamp: value_int(row.get(1)?)?,
                latest_seconds: value_int(row.get(2)?)? as f64 / 1000.0,
                max_seconds: value_int(row.get(3)?)? as f64 / 1000.0,
            })
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct LatencyCollector {
    unavailable: bool,
}

impl Collector for LatencyCollector {
    fn name(&self) -> &'static str {
        "latency"
    }

    fn commands(&mut self, _now: Instant) -> Vec<Cmd> {
        if self.unavailable {
            return Vec::new();
        }
        vec![redis::cmd("LATENCY").arg("LATEST").clone()]
    }

    fn collect(&mut self, replies: Vec<RedisResult<Value>>, out: &mut FamilySet) -> Outcome {
        let Some(reply) = replies.into_iter().next() else {
            return Outcome::NoData;
        };
        let events = match reply {
            Ok(value) => parse_latency_latest(&value),
            Err(err) if is_unavailable(&err) => {
                self.unavailable = true;
                return refusal(&err);
            }
            Err(_) => return Outcome::Failed("LATENCY LATEST failed".into()),
        };
        if events.is_empty() {
            return Outcome::NoData;
        }
        for e in events {
            let labels = || vec![("event_name", e.event.clone())];
            out.add(
                "redis_latency_spike_last",
                "When the latency spike last occurred",
                Kind::Gauge,
                labels(),
                e.timestamp as f64,
            );
            out.add(
                "redis_latency_spike_duration_seconds",
                "Length of the last latency spike in seconds",
                Kind::Gauge,
                labels(),
                e.latest_seconds,
            );
            out.add(
                "redis_latency_spike_max_seconds",
                "Longest latency spike recorded for this event since the server started or LATENCY RESET, in seconds",
                Kind::Gauge,
                labels(),
                e.max_seconds,
            );
        }
        Outcome::Collected
    }

    fn reset(&mut self) {
        self.unavailable = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_rows_become_seconds() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"command".to_vec()),
            Value::Int(1_700_000_000),
            Value::Int(250),
            Value::Int(1200),
        ])]);
        let events = parse_latency_latest(&reply);
        assert_eq!(
            events,
            vec![LatencyEvent {
                event: "command".into(),
                timestamp: 1_700_000_000,
                latest_seconds: 0.25,
                max_seconds: 1.2
            }]
        );
        assert!(parse_latency_latest(&Value::Int(3)).is_empty());
    }
}
