//! Sentinel-defined targets: the master and replicas that Sentinel names, followed through
//! failovers, and the Sentinels themselves.
//!
//! Every poll interval the view asks one Sentinel (the one that answered last, else each
//! configured address in turn, so any one Sentinel down does not matter), in one pipeline:
//! `SENTINEL GET-MASTER-ADDR-BY-NAME`, `SENTINEL REPLICAS` and `SENTINEL MASTER`. The nodes of
//! the target are the master plus every replica Sentinel lists, each polled by its own
//! [`crate::poller::NodePoller`] (`node="ip:port"`). A replica Sentinel flags down (the old
//! master after a failover, while it is down) is still polled: its `redis_up 0` is what pages
//! (RedisDown), where dropping it left the new master without a replica and nothing firing. A
//! node Sentinel stops listing (after `SENTINEL RESET`) stops being polled. Each configured
//! Sentinel is polled too, as a node with the Sentinels' credentials, which is where the
//! `redis_sentinel_*` families come from.
//!
//! Between polls a subscription to `+switch-master` on one Sentinel wakes the view at once, so a
//! failover is followed as soon as Sentinel announces it; polling remains the fallback.
//!
//! `redis_sentinel_failovers_total{target}` counts failovers seen: a rise of the master's config
//! epoch, or, where the epoch is not known, a change of its address. The first view is the
//! baseline, and a stale view from a lagging Sentinel (lower epoch) never counts.

use crate::collector::sentinel::{address, flagged_down, parse_details, parse_details_list};
use crate::collector::value_text;
use crate::config::{RedisUrl, Target};
use crate::metrics::{FamilySet, Kind};
use crate::poller::{open_connection, PollContext};
use crate::snapshot::{NodeKey, Ticket};
use crate::topology::{expect_roll_up, publish_roll_up, Children};
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, timeout};

/// Silence on the `+switch-master` subscription after which it is made again.
const QUIET_RESUBSCRIBE: std::time::Duration = std::time::Duration::from_secs(300);

/// What one Sentinel said about the master.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterView {
    /// `ip:port` of the current master.
    pub master: String,
    /// Every replica Sentinel lists, `ip:port`, down or not.
    pub replicas: Vec<String>,
    /// How many of them Sentinel does not flag down.
    pub replicas_up: usize,
    pub config_epoch: Option<u64>,
    /// Which configured Sentinel answered.
    pub sentinel: String,
}

impl MasterView {
    /// Whether this view, from a second Sentinel asked, says the same as `first`: the same
    /// master at the same epoch, from another Sentinel (or the only one configured).
    pub fn confirms(&self, first: &MasterView, sentinels: usize) -> bool {
        (first.sentinel != self.sentinel || sentinels == 1)
            && (&first.master, first.config_epoch) == (&self.master, self.config_epoch)
    }
}

/// Failovers counted across views (see the module doc).
#[derive(Debug, Default)]
pub struct FailoverCounter {
    epoch: Option<u64>,
    master: Option<String>,
    pub failovers: u64,
}

impl FailoverCounter {
    /// True for a view older than one already seen: a lower config epoch comes from a
    /// Sentinel cut off from the others since (it still names the old master).
    pub fn is_stale(&self, epoch: Option<u64>) -> bool {
        matches!((self.epoch, epoch), (Some(before), Some(now)) if now < before)
    }

    /// Counts a failover if this view shows one; false when the view is stale (and ignored).
    pub fn observe(&mut self, master: &str, epoch: Option<u64>) -> bool {
        let failover = match (self.epoch, epoch) {
            (Some(before), Some(now)) => now > before,
            // Without epochs, an address change is the only sign.
            _ => self.master.as_deref().is_some_and(|m| m != master),
        };
        let stale = self.is_stale(epoch);
        if failover {
            self.failovers += 1;
        }
        if !stale {
            self.master = Some(master.to_owned());
        }
        self.epoch = self.epoch.max(epoch);
        !stale
    }

    /// Starts over from a configuration older than one seen: every Sentinel asked names it, so
    /// the master was monitored anew (`SENTINEL REMOVE` and `MONITOR`, a new Sentinel fleet)
    /// and its epochs count from there. No failover is counted.
    pub fn restart(&mut self, master: &str, epoch: Option<u64>) {
        self.epoch = epoch;
        self.master = Some(master.to_owned());
    }
}

/// The view of one Sentinel-defined target.
pub struct SentinelView {
    target: Arc<Target>,
    ctx: PollContext,
    key: NodeKey,
    ticket: Ticket,
    /// The Sentinel that answered last (index into the configured addresses) and its connection.
    conn: Option<(usize, MultiplexedConnection)>,
    /// Where the next search for a Sentinel starts when there is no connection.
    start_at: usize,
    counter: FailoverCounter,
    /// The data nodes of the last successful view, kept while no Sentinel answers.
    nodes: Vec<String>,
    wake: Arc<Notify>,
    /// `+switch-master` messages for this master received by the subscription.
    announced: Arc<AtomicU64>,
    /// The Sentinel (index into the configured addresses) the subscription listens to.
    announcer: Arc<AtomicUsize>,
}

impl SentinelView {
    pub fn new(target: Arc<Target>, ctx: PollContext) -> Self {
        let (key, ticket) = expect_roll_up(&target, &ctx);
        Self {
            target,
            ctx,
            key,
            ticket,
            conn: None,
            start_at: 0,
            counter: FailoverCounter::default(),
            nodes: Vec::new(),
            wake: Arc::new(Notify::new()),
            announced: Arc::new(AtomicU64::new(0)),
            announcer: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn sentinels(&self) -> &[RedisUrl] {
        self.target
            .sentinel
            .as_ref()
            .map(|s| s.addrs.as_slice())
            .unwrap_or_default()
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut children = Children::new(self.target.clone(), self.ctx.clone());
        let subscriber = tokio::spawn(crate::sentinel::watch_switches(
            self.target.clone(),
            self.wake.clone(),
            self.announced.clone(),
            self.announcer.clone(),
            shutdown.clone(),
        ));
        let interval = self.target.poll_interval;
        let mut next = tokio::time::Instant::now();
        loop {
            let woken = tokio::select! {
                _ = sleep_until(next) => false,
                _ = self.wake.notified() => {
                    tracing::info!(target_name = %self.target.name, "Sentinel announced a new master");
                    // Ask the Sentinel that announced it: the others may not have the new
                    // configuration yet (it spreads in hello messages, every 2 s).
                    let announcer = self.announcer.load(Ordering::Relaxed);
                    if self.conn.as_ref().is_some_and(|(i, _)| *i != announcer) {
                        self.conn = None;
                    }
                    self.start_at = announcer;
                    true
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                    continue;
                }
            };
            let started = Instant::now();
            let mut view = self.ask().await;
            // A Sentinel that answers with an older configuration than one already seen was
            // cut off from the others: ask the next one, once, and keep the nodes as they were
            // if it says no better.
            if view
                .as_ref()
                .is_some_and(|v| self.counter.is_stale(v.config_epoch))
            {
                if let Some((index, _)) = self.conn.take() {
                    self.start_at = index + 1;
                }
                tracing::info!(target_name = %self.target.name, "a Sentinel answered with an older configuration; asking another");
                let first = view.take();
                view = self.ask().await;
                // Another Sentinel (or the only one) says the same: that configuration is the
                // one in force now, however its epoch compares with what was seen before.
                if let (Some(first), Some(second)) = (&first, &view) {
                    if self.counter.is_stale(second.config_epoch)
                        && second.confirms(first, self.sentinels().len())
                    {
                        tracing::info!(target_name = %self.target.name, "the Sentinels agree on an older configuration: the master was monitored anew");
                        self.counter.restart(&second.master, second.config_epoch);
                    }
                }
            }
            if let Some(view) = &view {
                if self.counter.observe(&view.master, view.config_epoch) {
                    let mut nodes = vec![view.master.clone()];
                    nodes.extend(view.replicas.iter().filter(|r| **r != view.master).cloned());
                    self.nodes = nodes;
                }
            }
            let mut want: Vec<(String, Result<Target, String>)> = self
                .nodes
                .iter()
                .map(|addr| (addr.clone(), self.target.for_node(addr)))
                .collect();
            for url in self.sentinels() {
                let addr = url.address();
                if !want.iter().any(|(a, _)| *a == addr) {
                    let node = self
                        .target
                        .for_sentinel(url)
                        .ok_or_else(|| "not a sentinel target".to_owned());
                    want.push((addr, node));
                }
            }
            children.sync_targets(want);
            self.publish(view.as_ref(), started);
            // A round a +switch-master woke early leaves the regular one where it was.
            if !woken {
                next = (next + interval).max(tokio::time::Instant::now());
            }
        }
        subscriber.abort();
        children.stop_all().await;
        self.ctx.store.forget(&self.key, self.ticket);
    }

    fn publish(&self, view: Option<&MasterView>, started: Instant) {
        let mut set = FamilySet::new();
        set.add(
            "redis_sentinel_failovers_total",
            "Failovers of the target's master seen through Sentinel (config epoch rose, or the master address changed)",
            Kind::Counter,
            Vec::new(),
            self.counter.failovers as f64,
        );
        set.add(
            "redis_lookout_sentinel_switch_announcements_total",
            "+switch-master messages for the target's master received from Sentinel (each wakes discovery at once)",
            Kind::Counter,
            Vec::new(),
            self.announced.load(Ordering::Relaxed) as f64,
        );
        set.gauge(
            "redis_lookout_sentinel_view_up",
            "1 when a Sentinel named the target's master in the last discovery round",
            f64::from(u8::from(view.is_some())),
        );
        if let Some(view) = view {
            let master_name = self
                .target
                .sentinel
                .as_ref()
                .map(|s| s.master.clone())
                .unwrap_or_default();
            set.add(
                "redis_lookout_sentinel_master_info",
                "The master Sentinel names for the target, and which Sentinel said so",
                Kind::Gauge,
                vec![
                    ("master_name", master_name),
                    ("master_address", view.master.clone()),
                    ("sentinel", view.sentinel.clone()),
                ],
                1.0,
            );
            set.gauge(
                "redis_lookout_sentinel_replicas",
                "Replicas of the master that Sentinel does not flag down",
                view.replicas_up as f64,
            );
        }
        publish_roll_up(
            &self.ctx,
            self.ticket,
            &self.target,
            &set,
            view.is_some(),
            started,
            "sentinel-view",
        );
    }

    /// The master and replicas from the Sentinel that answered last, else from each in turn.
    pub async fn ask(&mut self) -> Option<MasterView> {
        let master = self.target.sentinel.as_ref()?.master.clone();
        let limit = self.target.poll_timeout;
        let sentinels = self.sentinels().to_vec();
        let mut start = self.start_at;
        if let Some((index, mut conn)) = self.conn.take() {
            if let Some(view) = ask_one(&mut conn, &master, limit, &sentinels[index]).await {
                self.conn = Some((index, conn));
                return Some(view);
            }
            // Start with the next one: this one just failed.
            start = index + 1;
        }
        for step in 0..sentinels.len() {
            let index = (start + step) % sentinels.len();
            let url = &sentinels[index];
            let Some(node) = self.target.for_sentinel(url) else {
                continue;
            };
            let Ok(Ok(mut conn)) = timeout(limit, open_connection(&node, url)).await else {
                tracing::debug!(target_name = %self.target.name, sentinel = %url.address(), "Sentinel not reachable");
                continue;
            };
            if let Some(view) = ask_one(&mut conn, &master, limit, url).await {
                self.conn = Some((index, conn));
                return Some(view);
            }
        }
        tracing::warn!(target_name = %self.target.name, "no Sentinel named the master");
        None
    }
}

/// One Sentinel's answer, or None when it does not know the master or does not answer.
async fn ask_one(
    conn: &mut MultiplexedConnection,
    master: &str,
    limit: std::time::Duration,
    url: &RedisUrl,
) -> Option<MasterView> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master);
    pipe.cmd("SENTINEL").arg("REPLICAS").arg(master);
    pipe.cmd("SENTINEL").arg("MASTER").arg(master);
    let replies: Vec<RedisResult<Value>> =
        timeout(limit, pipe.query_async(conn)).await.ok()?.ok()?;
    parse_view(&replies, url.address())
}

/// Reads the three replies of `ask_one`.
pub fn parse_view(replies: &[RedisResult<Value>], sentinel: String) -> Option<MasterView> {
    let [addr, replicas, details] = replies else {
        return None;
    };
    let Ok(Value::Array(parts)) = addr else {
        return None;
    };
    let [host, port] = parts.as_slice() else {
        return None;
    };
    let master = crate::collector::info::replica_address(&value_text(host)?, &value_text(port)?);
    let listed = replicas
        .as_ref()
        .ok()
        .and_then(parse_details_list)
        .unwrap_or_default();
    let is_up =
        |r: &_| !flagged_down(r) && !r.get("flags").is_some_and(|f| f.contains("disconnected"));
    let replicas_up = listed.iter().filter(|r| is_up(r)).count();
    let replicas = listed.iter().filter_map(address).collect();
    let config_epoch = details
        .as_ref()
        .ok()
        .and_then(parse_details)
        .and_then(|d| d.get("config-epoch")?.parse().ok());
    Some(MasterView {
        master,
        replicas,
        replicas_up,
        config_epoch,
        sentinel,
    })
}

/// Subscribes to `+switch-master` on one Sentinel at a time and wakes the view when the
/// target's master is switched. Reconnects to the next Sentinel when the one it listens to
/// goes away, with a growing pause (at most one poll interval) when none answers.
pub async fn watch_switches(
    target: Arc<Target>,
    wake: Arc<Notify>,
    announced: Arc<AtomicU64>,
    announcer: Arc<AtomicUsize>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(sentinel) = target.sentinel.clone() else {
        return;
    };
    let mut failures: u32 = 0;
    let mut index = 0usize;
    loop {
        let url = &sentinel.addrs[index % sentinel.addrs.len()];
        announcer.store(index % sentinel.addrs.len(), Ordering::Relaxed);
        index = index.wrapping_add(1);
        let listened = tokio::select! {
            listened = listen(&target, url, &sentinel.master, &wake, &announced) => listened,
            _ = shutdown.changed() => return,
        };
        if listened {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
        }
        // After a full round of Sentinels without success, pause before the next round.
        if failures as usize >= sentinel.addrs.len() {
            let pause = crate::poller::FIRST_RETRY
                .saturating_mul(1u32 << failures.min(8))
                .min(target.poll_interval);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Listens on one Sentinel until its connection ends. True when the subscription was made.
async fn listen(
    target: &Target,
    url: &RedisUrl,
    master: &str,
    wake: &Notify,
    announced: &AtomicU64,
) -> bool {
    use futures_util::StreamExt;
    let Some(node) = target.for_sentinel(url) else {
        return false;
    };
    let Ok(client) = crate::poller::client_for(&node, url) else {
        return false;
    };
    let limit = target.poll_timeout;
    let Ok(Ok(mut pubsub)) = timeout(limit, client.get_async_pubsub()).await else {
        return false;
    };
    if !matches!(
        timeout(limit, pubsub.subscribe("+switch-master")).await,
        Ok(Ok(()))
    ) {
        return false;
    }
    tracing::debug!(target_name = %target.name, sentinel = %url.address(), "listening for +switch-master");
    let mut messages = pubsub.on_message();
    // A Sentinel that stops answering without closing the connection (frozen, partitioned)
    // would hold us forever: start over after a quiet spell. Polling covers the gap.
    while let Ok(Some(msg)) = timeout(QUIET_RESUBSCRIBE, messages.next()).await {
        // "<master name> <old ip> <old port> <new ip> <new port>"
        let payload: String = msg.get_payload().unwrap_or_default();
        if payload.split_whitespace().next() == Some(master) {
            announced.fetch_add(1, Ordering::Relaxed);
            wake.notify_one();
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn flat(pairs: &[(&str, &str)]) -> Value {
        Value::Array(pairs.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect())
    }

    #[test]
    fn a_failover_counts_once_and_a_stale_view_never() {
        let mut c = FailoverCounter::default();
        c.observe("10.0.0.1:6379", Some(3));
        assert_eq!(c.failovers, 0, "the first view is the baseline");
        c.observe("10.0.0.1:6379", Some(3));
        assert_eq!(c.failovers, 0);
        c.observe("10.0.0.2:6379", Some(4));
        assert_eq!(c.failovers, 1);
        // A lagging Sentinel still names the old master with the old epoch: stale, so the
        // view asks another Sentinel and keeps its nodes.
        assert!(c.is_stale(Some(3)));
        assert!(!c.is_stale(Some(4)) && !c.is_stale(None));
        c.observe("10.0.0.1:6379", Some(3));
        c.observe("10.0.0.2:6379", Some(4));
        assert_eq!(c.failovers, 1);
        // Every Sentinel now says epoch 0 (the master was monitored anew): the view starts
        // over from there instead of judging every answer stale for good, and counts nothing.
        let fresh = |sentinel: &str| MasterView {
            master: "10.0.0.3:6379".into(),
            replicas: Vec::new(),
            replicas_up: 0,
            config_epoch: Some(0),
            sentinel: sentinel.into(),
        };
        assert!(c.is_stale(Some(0)));
        assert!(fresh("s2").confirms(&fresh("s1"), 3));
        assert!(
            !fresh("s1").confirms(&fresh("s1"), 3),
            "the same Sentinel again confirms nothing"
        );
        assert!(fresh("s1").confirms(&fresh("s1"), 1));
        let mut moved = fresh("s2");
        moved.master = "10.0.0.4:6379".into();
        assert!(!moved.confirms(&fresh("s1"), 3));
        c.restart("10.0.0.3:6379", Some(0));
        assert!(!c.is_stale(Some(0)));
        assert!(c.observe("10.0.0.3:6379", Some(0)));
        assert!(c.observe("10.0.0.4:6379", Some(1)));
        assert_eq!(c.failovers, 2, "one before the restart, one after");
        // Without epochs, the address decides.
        let mut c = FailoverCounter::default();
        c.observe("a:1", None);
        c.observe("b:1", None);
        assert_eq!(c.failovers, 1);
    }

    #[test]
    fn the_view_keeps_every_replica_and_counts_those_not_flagged_down() {
        let replies = vec![
            Ok(Value::Array(vec![bulk("127.0.0.1"), bulk("7001")])),
            Ok(Value::Array(vec![
                flat(&[("ip", "127.0.0.1"), ("port", "7002"), ("flags", "slave")]),
                flat(&[
                    ("ip", "127.0.0.1"),
                    ("port", "7000"),
                    ("flags", "s_down,slave,disconnected"),
                ]),
            ])),
            Ok(flat(&[("name", "m"), ("config-epoch", "2")])),
        ];
        let view = parse_view(&replies, "127.0.0.1:26379".into()).unwrap();
        assert_eq!(view.master, "127.0.0.1:7001");
        assert_eq!(
            view.replicas,
            vec!["127.0.0.1:7002".to_owned(), "127.0.0.1:7000".to_owned()]
        );
        assert_eq!(view.replicas_up, 1);
        assert_eq!(view.config_epoch, Some(2));
        // IPv6 addresses are bracketed, as replicas' and cluster nodes' are.
        let v6 = vec![
            Ok(Value::Array(vec![bulk("fd00::1"), bulk("6379")])),
            Ok(Value::Array(vec![flat(&[
                ("ip", "fd00::2"),
                ("port", "6380"),
                ("flags", "slave"),
            ])])),
            Ok(flat(&[("config-epoch", "1")])),
        ];
        let view = parse_view(&v6, String::new()).unwrap();
        assert_eq!(
            (view.master.as_str(), view.replicas[0].as_str()),
            ("[fd00::1]:6379", "[fd00::2]:6380")
        );
        let unknown = vec![Ok(Value::Nil), Ok(Value::Array(vec![])), Ok(Value::Nil)];
        assert!(parse_view(&unknown, String::new()).is_none());
    }
}
