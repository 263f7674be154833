//! Redis Sentinel: its own view of the masters it monitors, under redis_exporter's
//! `redis_sentinel_*` names.
//!
//! Two sources, as in redis_exporter: the `# Sentinel` section of INFO (masters, tilt, scripts,
//! and one `masterN:` line per master, parsed by [`info_masters`]) and, once INFO has shown
//! `redis_mode:sentinel`, `SENTINEL MASTERS` plus `SENTINEL CKQUORUM`, `SENTINELS` and
//! `REPLICAS` per master, all in the poll's one pipeline (the master names come from the
//! previous poll; a new name costs one follow-up round trip).
//!
//! Deliberate difference: redis_exporter puts CKQUORUM's whole reply in the `message` label
//! ("OK 3 usable Sentinels. Quorum and …"), so the series changes whenever a Sentinel comes or
//! goes. We keep the label but give it the reply's first word (`OK`, `NOQUORUM`, …): bounded,
//! and still what a query on `message` needs.

use super::info::{parse_pairs, Info};
use super::{is_unavailable, refusal, value_text, Collector, Outcome};
use crate::metrics::{FamilySet, Kind};
use redis::{Cmd, RedisResult, Value};
use std::collections::HashMap;
use std::time::Instant;

/// One entry of `SENTINEL MASTERS` / `SENTINELS` / `REPLICAS`: field → value.
pub type Details = HashMap<String, String>;

/// Reads a reply that is a list of flat field/value arrays (RESP2) or maps (RESP3).
pub fn parse_details_list(value: &Value) -> Option<Vec<Details>> {
    let Value::Array(items) = value else {
        return None;
    };
    Some(items.iter().filter_map(parse_details).collect())
}

/// Reads one field/value array or map.
pub fn parse_details(value: &Value) -> Option<Details> {
    let pairs: Vec<(&Value, &Value)> = match value {
        Value::Array(flat) => flat.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
        Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    Some(
        pairs
            .into_iter()
            .filter_map(|(k, v)| Some((value_text(k)?, value_text(v)?)))
            .collect(),
    )
}

/// True when a Sentinel, replica or master entry is flagged down (subjectively or objectively).
pub fn flagged_down(details: &Details) -> bool {
    details
        .get("flags")
        .is_some_and(|f| f.split(',').any(|f| f == "s_down" || f == "o_down"))
}

/// `ip:port` of an entry, as its node is labelled and polled (`[ip]:port` for IPv6, like
/// replicas and cluster nodes).
pub fn address(details: &Details) -> Option<String> {
    Some(crate::collector::info::replica_address(
        details.get("ip")?,
        details.get("port")?,
    ))
}

/// The `masterN:name=…,status=…,address=…,slaves=…,sentinels=…` lines of INFO on a Sentinel.
pub fn info_masters(info: &Info, out: &mut FamilySet) {
    for (key, value) in info.fields() {
        let Some(n) = key.strip_prefix("master") else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let fields: HashMap<&str, &str> = parse_pairs(value).collect();
        let (Some(name), Some(status), Some(addr)) = (
            fields.get("name"),
            fields.get("status"),
            fields.get("address"),
        ) else {
            continue;
        };
        let number = |k: &str| fields.get(k).and_then(|v| v.parse::<f64>().ok());
        let (Some(slaves), Some(sentinels)) = (number("slaves"), number("sentinels")) else {
            continue;
        };
        let labels = || {
            vec![
                ("master_name", name.to_string()),
                ("master_address", addr.to_string()),
            ]
        };
        let mut with_status = labels();
        with_status.push(("master_status", status.to_string()));
        out.add(
            "redis_sentinel_master_status",
            "Master status as this Sentinel sees it: 1 when ok (status label: ok, sdown, odown)",
            Kind::Gauge,
            with_status,
            if *status == "ok" { 1.0 } else { 0.0 },
        );
        out.add(
            "redis_sentinel_master_slaves",
            "Replicas of the master known to this Sentinel",
            Kind::Gauge,
            labels(),
            slaves,
        );
        out.add(
            "redis_sentinel_master_sentinels",
            "Sentinels monitoring the master, this one included",
            Kind::Gauge,
            labels(),
            sentinels,
        );
    }
}

/// The facts of one master from `SENTINEL MASTERS` and its three per-master replies.
pub fn master_families(
    master: &Details,
    ckquorum: &RedisResult<Value>,
    sentinels: Option<&[Details]>,
    replicas: Option<&[Details]>,
    out: &mut FamilySet,
) {
    let (Some(name), Some(addr)) = (master.get("name"), address(master)) else {
        return;
    };
    let labels = || {
        vec![
            ("master_name", name.clone()),
            ("master_address", addr.clone()),
        ]
    };
    let (ok, message) = match ckquorum {
        Ok(reply) => (true, value_text(reply).unwrap_or_default()),
        Err(err) => (false, err.code().unwrap_or("ERR").to_owned()),
    };
    let word = message.split_whitespace().next().unwrap_or("").to_owned();
    out.add(
        "redis_sentinel_master_ckquorum_status",
        "1 when SENTINEL CKQUORUM says the Sentinels can authorize a failover of the master (message: the reply's first word)",
        Kind::Gauge,
        vec![("master_name", name.clone()), ("message", word)],
        if ok { 1.0 } else { 0.0 },
    );
    let number = |k: &str| master.get(k).and_then(|v| v.parse::<f64>().ok());
    let settings: [(&str, &str, &str, f64); 6] = [
        (
            "quorum",
            "redis_sentinel_master_setting_ckquorum",
            "Sentinels that must agree the master is down (quorum)",
            1.0,
        ),
        (
            "failover-timeout",
            "redis_sentinel_master_setting_failover_timeout",
            "failover-timeout of the master, in milliseconds",
            1.0,
        ),
        (
            "parallel-syncs",
            "redis_sentinel_master_setting_parallel_syncs",
            "Replicas reconfigured at once after a failover",
            1.0,
        ),
        (
            "down-after-milliseconds",
            "redis_sentinel_master_setting_down_after_milliseconds",
            "Milliseconds without a valid reply before the master is subjectively down",
            1.0,
        ),
        (
            "config-epoch",
            "redis_sentinel_master_config_epoch",
            "Configuration epoch of the master: rises with every completed failover",
            1.0,
        ),
        (
            "last-ok-ping-reply",
            "redis_sentinel_master_last_ok_ping_reply_seconds",
            "Seconds since the master last answered a PING validly",
            1e-3,
        ),
    ];
    for (field, family, help, scale) in settings {
        if let Some(v) = number(field) {
            out.add(family, help, Kind::Gauge, labels(), v * scale);
        }
    }
    if let Some(sentinels) = sentinels {
        // This Sentinel counts itself, as redis_exporter does.
        let ok = 1 + sentinels.iter().filter(|s| !flagged_down(s)).count();
        out.add(
            "redis_sentinel_master_ok_sentinels",
            "Sentinels monitoring the master that are not flagged down, this one included",
            Kind::Gauge,
            labels(),
            ok as f64,
        );
    }
    if let Some(replicas) = replicas {
        let ok = replicas.iter().filter(|r| !flagged_down(r)).count();
        out.add(
            "redis_sentinel_master_ok_slaves",
            "Replicas of the master that are not flagged down",
            Kind::Gauge,
            labels(),
            ok as f64,
        );
    }
}

/// Asks a Sentinel about every master it monitors.
#[derive(Debug, Default)]
pub struct SentinelCollector {
    enabled: bool,
    /// Master names the per-master commands of the current request were built for.
    asked: Option<Vec<String>>,
    /// Master names seen in the last `SENTINEL MASTERS`.
    known: Vec<String>,
}

fn requests(names: &[String]) -> Vec<Cmd> {
    let mut cmds = vec![redis::cmd("SENTINEL").arg("MASTERS").clone()];
    for name in names {
        for sub in ["CKQUORUM", "SENTINELS", "REPLICAS"] {
            cmds.push(redis::cmd("SENTINEL").arg(sub).arg(name).clone());
        }
    }
    cmds
}

impl Collector for SentinelCollector {
    fn name(&self) -> &'static str {
        "sentinel"
    }

    fn commands(&mut self, _now: Instant) -> Vec<Cmd> {
        if !self.enabled {
            self.asked = None;
            return Vec::new();
        }
        self.asked = Some(self.known.clone());
        requests(&self.known)
    }

    fn collect(&mut self, replies: Vec<RedisResult<Value>>, out: &mut FamilySet) -> Outcome {
        let sentinel_now = out.label_of("redis_instance_info", "redis_mode") == Some("sentinel");
        let learned = sentinel_now && !self.enabled;
        self.enabled = sentinel_now;
        let Some(asked) = self.asked.take() else {
            if learned {
                // First sight of a Sentinel: ask now rather than a poll later.
                self.asked = Some(self.known.clone());
                return Outcome::FollowUp(requests(&self.known));
            }
            return if sentinel_now {
                Outcome::NoData
            } else {
                Outcome::NotApplicable
            };
        };
        if !sentinel_now {
            return Outcome::NotApplicable;
        }
        let mut replies = replies.into_iter();
        let masters = match replies.next() {
            Some(Ok(value)) => match parse_details_list(&value) {
                Some(masters) => masters,
                None => return Outcome::Failed("SENTINEL MASTERS reply is not a list".into()),
            },
            Some(Err(err)) if is_unavailable(&err) => {
                self.enabled = false;
                return refusal(&err);
            }
            Some(Err(_)) => return Outcome::Failed("SENTINEL MASTERS failed".into()),
            None => return Outcome::NoData,
        };
        let names: Vec<String> = masters
            .iter()
            .filter_map(|m| m.get("name").cloned())
            .collect();
        self.known = names.clone();
        if names != asked {
            // A master added or removed since the last poll: one more round trip with its name.
            self.asked = Some(names.clone());
            return Outcome::FollowUp(requests(&names));
        }
        let rest: Vec<RedisResult<Value>> = replies.collect();
        for (master, per) in masters.iter().zip(rest.chunks(3)) {
            let [ckquorum, sentinels, replicas] = per else {
                continue;
            };
            let list = |r: &RedisResult<Value>| r.as_ref().ok().and_then(parse_details_list);
            master_families(
                master,
                ckquorum,
                list(sentinels).as_deref(),
                list(replicas).as_deref(),
                out,
            );
        }
        Outcome::Collected
    }

    fn reset(&mut self) {
        self.enabled = false;
        self.asked = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::info::parse_info;

    fn flat(pairs: &[(&str, &str)]) -> Value {
        Value::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| {
                    [
                        Value::BulkString(k.as_bytes().to_vec()),
                        Value::BulkString(v.as_bytes().to_vec()),
                    ]
                })
                .collect(),
        )
    }

    /// What INFO left in a poll's set for a node in `mode`.
    fn info_of_mode(mode: &str) -> FamilySet {
        let mut out = FamilySet::new();
        let labels = vec![("redis_mode", mode.to_owned())];
        out.add("redis_instance_info", "", Kind::Gauge, labels, 1.0);
        out
    }

    #[test]
    fn on_a_data_node_it_asks_nothing_and_does_not_apply() {
        let mut collector = SentinelCollector::default();
        let mut data_node = info_of_mode("standalone");
        for _ in 0..2 {
            assert!(collector.commands(Instant::now()).is_empty());
            let outcome = collector.collect(Vec::new(), &mut data_node);
            assert_eq!(outcome, Outcome::NotApplicable);
        }
        // The same node seen as a Sentinel: asked at once, and no longer "not applicable".
        let outcome = collector.collect(Vec::new(), &mut info_of_mode("sentinel"));
        assert!(matches!(outcome, Outcome::FollowUp(_)), "{outcome:?}");
    }

    #[test]
    fn info_master_lines_become_status_replicas_and_sentinels() {
        let info = parse_info(
            "# Sentinel\r\nsentinel_masters:2\r\nmaster0:name=a,status=ok,address=10.0.0.1:6379,slaves=2,sentinels=3\r\n\
             master1:name=b,status=odown,address=10.0.0.2:6380,slaves=1,sentinels=3\r\nmasterx:junk\r\n",
        );
        let mut out = FamilySet::new();
        info_masters(&info, &mut out);
        let status = &out.get("redis_sentinel_master_status").unwrap().samples;
        assert_eq!(status.len(), 2);
        assert_eq!(status[0].value, 1.0);
        assert_eq!(status[1].value, 0.0);
        assert!(status[1]
            .labels
            .contains(&("master_status", "odown".to_owned())));
        assert_eq!(
            out.get("redis_sentinel_master_slaves").unwrap().samples[0].value,
            2.0
        );
    }

    #[test]
    fn per_master_facts_count_only_peers_and_replicas_not_flagged_down() {
        let master = parse_details(&flat(&[
            ("name", "m"),
            ("ip", "127.0.0.1"),
            ("port", "7000"),
            ("quorum", "2"),
            ("config-epoch", "4"),
            ("last-ok-ping-reply", "250"),
        ]))
        .unwrap();
        let peers = vec![
            parse_details(&flat(&[("flags", "sentinel")])).unwrap(),
            parse_details(&flat(&[("flags", "s_down,sentinel")])).unwrap(),
        ];
        let replicas = vec![
            parse_details(&flat(&[("flags", "slave")])).unwrap(),
            parse_details(&flat(&[("flags", "s_down,slave,disconnected")])).unwrap(),
        ];
        let ok: RedisResult<Value> = Ok(Value::SimpleString(
            "OK 2 usable Sentinels. Quorum and failover authorization can be reached".into(),
        ));
        let mut out = FamilySet::new();
        master_families(&master, &ok, Some(&peers), Some(&replicas), &mut out);
        let one = |name: &str| out.get(name).unwrap().samples[0].value;
        assert_eq!(one("redis_sentinel_master_ok_sentinels"), 2.0);
        assert_eq!(one("redis_sentinel_master_ok_slaves"), 1.0);
        assert_eq!(one("redis_sentinel_master_config_epoch"), 4.0);
        assert_eq!(
            one("redis_sentinel_master_last_ok_ping_reply_seconds"),
            0.25
        );
        assert_eq!(one("redis_sentinel_master_setting_ckquorum"), 2.0);
        let ck = &out
            .get("redis_sentinel_master_ckquorum_status")
            .unwrap()
            .samples[0];
        assert_eq!(ck.value, 1.0);
        assert!(ck.labels.contains(&("message", "OK".to_owned())));
    }
}
