//! Redis Cluster: `CLUSTER INFO` per node under redis_exporter's `redis_cluster_*` names, and the
//! `CLUSTER NODES` parser the topology view uses.
//!
//! `CLUSTER INFO` is asked only after INFO has shown `cluster_enabled:1`, so a standalone server
//! never sees a refused command (which would raise its `total_error_replies`).

use super::info::parse_info;
use super::{value_text, Collector, Outcome};
use crate::metrics::{sanitize_name, FamilySet};
use redis::{Cmd, RedisResult, Value};
use std::time::Instant;

/// Publishes `CLUSTER INFO` as redis_exporter does: every numeric field as a gauge named
/// `redis_<field>`, `cluster_state` as 1 for ok, and the message totals under its names.
pub fn cluster_info_families(text: &str, out: &mut FamilySet) {
    let info = parse_info(text);
    for (key, value) in info.fields() {
        let name = match key {
            "cluster_stats_messages_sent" => "redis_cluster_messages_sent_total".to_owned(),
            "cluster_stats_messages_received" => "redis_cluster_messages_received_total".to_owned(),
            other => format!("redis_{}", sanitize_name(other)),
        };
        let number = if key == "cluster_state" {
            Some(if value == "ok" { 1.0 } else { 0.0 })
        } else {
            value.trim().parse::<f64>().ok().filter(|v| v.is_finite())
        };
        if let Some(v) = number {
            out.gauge(&name, &format!("CLUSTER INFO field {key}"), v);
        }
    }
}

/// Asks `CLUSTER INFO` on nodes that have cluster mode enabled.
#[derive(Debug, Default)]
pub struct ClusterCollector {
    enabled: bool,
    asked: bool,
}

impl Collector for ClusterCollector {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn commands(&mut self, _now: Instant) -> Vec<Cmd> {
        self.asked = self.enabled;
        if self.enabled {
            vec![redis::cmd("CLUSTER").arg("INFO").clone()]
        } else {
            Vec::new()
        }
    }

    fn collect(&mut self, replies: Vec<RedisResult<Value>>, out: &mut FamilySet) -> Outcome {
        // INFO ran earlier in this poll; its cluster_enabled decides the next poll.
        let enabled_now = out.value_of("redis_cluster_enabled") == Some(1.0);
        let asked = std::mem::replace(&mut self.asked, false);
        let learned = enabled_now && !self.enabled;
        self.enabled = enabled_now;
        if learned && replies.is_empty() {
            // First sight of cluster mode: ask now rather than a poll later.
            self.asked = true;
            return Outcome::FollowUp(vec![redis::cmd("CLUSTER").arg("INFO").clone()]);
        }
        if !asked && replies.is_empty() {
            return if enabled_now {
                Outcome::NoData
            } else {
                Outcome::NotApplicable
            };
        }
        match replies.into_iter().next() {
            Some(Ok(value)) => match value_text(&value) {
                Some(text) => {
                    cluster_info_families(&text, out);
                    Outcome::Collected
                }
                None => Outcome::Failed("CLUSTER INFO reply is not text".into()),
            },
            Some(Err(err)) if super::is_unavailable(&err) => {
                self.enabled = false;
                super::refusal(&err)
            }
            Some(Err(_)) => Outcome::Failed("CLUSTER INFO failed".into()),
            None => Outcome::NoData,
        }
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterNode {
    pub id: String,
    /// `ip:port` clients use (the `@cport` and `,hostname` parts removed).
    pub addr: String,
    /// The name the node announces (`cluster-announce-hostname`, Redis 7), which its TLS
    /// certificate carries where clusters use it.
    pub hostname: Option<String>,
    pub myself: bool,
    pub master: bool,
    /// For a replica: the id of its master.
    pub master_id: Option<String>,
    pub fail: bool,
    pub pfail: bool,
    /// In handshake or without an address: not a node to poll yet.
    pub unusable: bool,
    pub config_epoch: u64,
    pub link_up: bool,
    pub slots: u32,
}

/// Slots in a Redis Cluster.
const CLUSTER_SLOTS: u32 = 16384;

/// Parses `CLUSTER NODES`. Lines that do not have the documented 8+ fields are skipped.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    let mut nodes = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            let has = |f: &str| flags.contains(&f);
            let addr = client_address(fields[1]);
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|range| {
                    // A slot is 0..=16383; anything else is not a slot (and must not overflow).
                    let slot = |s: &str| s.parse::<u32>().ok().filter(|n| *n < CLUSTER_SLOTS);
                    match range.split_once('-') {
                        Some((a, b)) => match (slot(a), slot(b)) {
                            (Some(a), Some(b)) if b >= a => b - a + 1,
                            _ => 0,
                        },
                        None => u32::from(slot(range).is_some()),
                    }
                })
                .fold(0u32, u32::saturating_add)
                .min(CLUSTER_SLOTS);
            Some(ClusterNode {
                id: fields[0].to_owned(),
                myself: has("myself"),
                master: has("master"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                fail: has("fail"),
                pfail: has("fail?"),
                unusable: has("handshake")
                    || has("noaddr")
                    || addr.starts_with(':')
                    || addr.is_empty(),
                config_epoch: fields[6].parse().unwrap_or(0),
                link_up: fields[7] == "connected",
                slots,
                addr,
                hostname: announced_hostname(fields[1]),
            })
        })
        .collect::<Vec<_>>();
    supersede_shared_addresses(&mut nodes);
    nodes
}

/// `ip:port` as a client reaches it, from `CLUSTER NODES`' `ip:port@cport[,hostname]`. Redis
/// writes IPv6 addresses without brackets (`::1:7000@17000`); they get them here. A node that
/// does not know its own IP yet (`:7000@17000`) keeps the empty host (see
/// [`use_asked_address`]).
fn client_address(field: &str) -> String {
    let addr = field.split(['@', ',']).next().unwrap_or("");
    match addr.rsplit_once(':') {
        Some((ip, port)) if ip.contains(':') && !ip.starts_with('[') => format!("[{ip}]:{port}"),
        _ => addr.to_owned(),
    }
}

/// The hostname of `ip:port@cport,hostname` (later fields, `name=value`, are not one).
fn announced_hostname(field: &str) -> Option<String> {
    let name = field.split(',').nth(1)?;
    (!name.is_empty() && !name.contains('=')).then(|| name.to_owned())
}

/// Two entries at one address: a node replaced at the same `ip:port` leaves its old id in
/// the table, flagged `fail`, until someone runs `CLUSTER FORGET`. Only the better entry (not
/// failing, then the answering node itself, a connected link, the higher config epoch) is
/// polled and gets per-node series; the other would duplicate them and could hide the live
/// node from `/discovery`.
fn supersede_shared_addresses(nodes: &mut [ClusterNode]) {
    use std::cmp::Reverse;
    // Ties go to the entry listed first.
    let rank = |n: &ClusterNode, at: usize| {
        (
            !n.fail,
            !n.pfail,
            n.myself,
            n.link_up,
            n.config_epoch,
            Reverse(at),
        )
    };
    // The best entry seen so far at each address (one pass: clusters run to 1000 nodes).
    let mut best: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for i in 0..nodes.len() {
        if nodes[i].unusable {
            continue;
        }
        match best.get(&nodes[i].addr).copied() {
            None => {
                best.insert(nodes[i].addr.clone(), i);
            }
            Some(j) if rank(&nodes[i], i) > rank(&nodes[j], j) => {
                nodes[j].unusable = true;
                best.insert(nodes[i].addr.clone(), i);
            }
            Some(_) => nodes[i].unusable = true,
        }
    }
}

/// The node that answered `CLUSTER NODES` at `asked` lists itself without an IP when it has
/// not learnt one yet (a lone node before any `CLUSTER MEET`): it is reached where it was asked.
pub fn use_asked_address(nodes: &mut [ClusterNode], asked: &str) {
    for n in nodes
        .iter_mut()
        .filter(|n| n.myself && n.addr.starts_with(':'))
    {
        n.addr = asked.to_owned();
        n.unusable = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 disconnected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa :0@0 master,noaddr - 0 0 0 disconnected
";

    #[test]
    fn without_cluster_mode_it_asks_nothing_and_does_not_apply() {
        let mut collector = ClusterCollector::default();
        let mut off = FamilySet::new();
        off.gauge("redis_cluster_enabled", "", 0.0);
        for _ in 0..2 {
            assert!(collector.commands(Instant::now()).is_empty());
            assert_eq!(
                collector.collect(Vec::new(), &mut off),
                Outcome::NotApplicable
            );
        }
        // Cluster mode seen: CLUSTER INFO at once, then in every poll's pipeline.
        let mut on = FamilySet::new();
        on.gauge("redis_cluster_enabled", "", 1.0);
        assert!(matches!(
            collector.collect(Vec::new(), &mut on),
            Outcome::FollowUp(_)
        ));
        let info = Value::BulkString(b"cluster_state:ok\r\ncluster_known_nodes:6\r\n".to_vec());
        assert_eq!(
            collector.collect(vec![Ok(info)], &mut on),
            Outcome::Collected
        );
        assert_eq!(collector.commands(Instant::now()).len(), 1);
    }

    #[test]
    fn nodes_give_roles_slots_flags_and_addresses() {
        let nodes = parse_cluster_nodes(NODES);
        assert_eq!(nodes.len(), 5);
        assert_eq!(nodes[0].addr, "127.0.0.1:30004");
        assert!(!nodes[0].master);
        assert_eq!(
            nodes[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(nodes[1].slots, 5462);
        assert!(nodes[2].fail && !nodes[2].link_up);
        assert!(nodes[3].myself);
        assert_eq!(
            nodes[3].slots, 5461,
            "migrating-slot brackets are not owned slots"
        );
        assert!(nodes[4].unusable);
    }

    #[test]
    fn ipv6_addresses_get_brackets_and_a_lone_node_is_reached_where_asked() {
        let text = "\
b1 ::1:30001@40001 master - 0 0 1 connected 0-100
b2 2001:db8::7:30002@40002,host2 slave b1 0 0 1 connected
b3 :30003@40003 myself,master - 0 0 0 connected 101-16383
";
        let mut nodes = parse_cluster_nodes(text);
        assert_eq!(nodes[0].addr, "[::1]:30001");
        assert_eq!(nodes[1].addr, "[2001:db8::7]:30002");
        assert_eq!(nodes[1].hostname.as_deref(), Some("host2"));
        assert_eq!(
            (
                nodes[0].hostname.as_deref(),
                announced_hostname("a:1@2,,x=y")
            ),
            (None, None)
        );
        assert!(!nodes[0].unusable && !nodes[1].unusable);
        assert!(nodes[2].unusable, "no IP known yet");
        use_asked_address(&mut nodes, "10.0.0.3:30003");
        assert_eq!(nodes[2].addr, "10.0.0.3:30003");
        assert!(!nodes[2].unusable);
        assert!(!nodes[0].unusable, "only the answering node is placed");
    }

    #[test]
    fn a_node_replaced_at_the_same_address_is_polled_once() {
        // The old id stays in the table, failed, until CLUSTER FORGET; its replacement is live.
        let text = "\
old0 127.0.0.1:30002@40002 master,fail - 0 0 2 disconnected
new0 127.0.0.1:30002@40002 master - 0 0 7 connected 5461-10922
me00 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
twin 127.0.0.1:30001@40001 slave me00 0 0 1 connected
";
        let nodes = parse_cluster_nodes(text);
        let usable: Vec<&str> = nodes
            .iter()
            .filter(|n| !n.unusable)
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(usable, ["new0", "me00"]);
        // The roll-up then has one series per address.
        let set = crate::topology::ClusterFacts::default().observe(&nodes);
        let slots = &set.get("redis_cluster_node_slots").unwrap().samples;
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn cluster_info_uses_redis_exporter_names() {
        let mut out = FamilySet::new();
        cluster_info_families(
            "cluster_state:fail\r\ncluster_slots_ok:16384\r\ncluster_stats_messages_sent:10\r\ncluster_stats_messages_ping_sent:4\r\n",
            &mut out,
        );
        assert_eq!(
            out.get("redis_cluster_state").unwrap().samples[0].value,
            0.0
        );
        assert_eq!(
            out.get("redis_cluster_slots_ok").unwrap().samples[0].value,
            16384.0
        );
        assert_eq!(
            out.get("redis_cluster_messages_sent_total")
                .unwrap()
                .samples[0]
                .value,
            10.0
        );
        assert!(out.get("redis_cluster_stats_messages_ping_sent").is_some());
    }
}
