//! Topology: which nodes make up a target, and one poller per node.
//!
//! - A plain target is one node, polled as configured (no `node` label).
//! - `follow_replicas: true`: the configured master's poller reports the replicas its INFO lists;
//!   each gets a poller of its own (`node="ip:port"`), started and stopped as the list changes.
//! - `cluster: true`: a cluster view asks one reachable node for `CLUSTER NODES` every poll
//!   interval (the last node that answered, then known nodes, then the seeds), keeps one poller
//!   per node, drops nodes that left, and publishes the cluster roll-up: masters online, node
//!   states, slots per node, and `redis_cluster_failovers_total`.
//! - `sentinel:`: the master and replicas Sentinel names, and the Sentinels themselves (see
//!   [`crate::sentinel`]).
//!
//! A `polling: on_scrape` target is discovered the same way, but each node's poller runs only
//! while `/scrape` asks for the node (see [`crate::scrape`]); between, the node is listed at
//! `/discovery` and not polled. The roll-ups are kept up all the time (they cost one command
//! per interval), and a master's replicas are found with `INFO replication` of its own.

use crate::collector::cluster::{parse_cluster_nodes, use_asked_address, ClusterNode};
use crate::collector::value_text;
use crate::config::Target;
use crate::error::{Failure, PollError};
use crate::metrics::{FamilySet, Kind};
use crate::poller::{open_connection, report_replicas, NodePoller, PollContext};
use crate::scrape::Registration;
use crate::snapshot::{EntryKind, NodeKey, Snapshot, Ticket};
use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout};

/// Runs a target until shutdown: its node(s) and their discovery.
///
/// The Sentinel, cluster and replica branches are boxed: an async fn's state is as large as its
/// largest branch (a cluster view's is kilobytes), and a thousand plain targets would each hold
/// that much while they only wait on their node's task.
pub async fn run_target(target: Arc<Target>, ctx: PollContext, shutdown: watch::Receiver<bool>) {
    if target.sentinel.is_some() {
        Box::pin(crate::sentinel::SentinelView::new(target, ctx).run(shutdown)).await;
    } else if target.cluster {
        Box::pin(ClusterView::new(target, ctx).run(shutdown)).await;
    } else if target.follow_replicas {
        Box::pin(run_with_replicas(target, ctx, shutdown)).await;
    } else {
        let (task, _) = spawn_node(target, None, &ctx, shutdown);
        let _ = task.await;
    }
}

/// Starts a node's task: its poller (with the target's keyspace tasks), or for a `polling:
/// on_scrape` target, a task that runs the poller only while `/scrape` asks for the node.
/// Returns the task and the ticket of the node's entry in the store.
fn spawn_node(
    target: Arc<Target>,
    node: Option<String>,
    ctx: &PollContext,
    stop: watch::Receiver<bool>,
) -> (JoinHandle<()>, Ticket) {
    if !target.on_scrape {
        let poller = NodePoller::new(target.clone(), node, ctx);
        let ticket = poller.ticket();
        let poller = with_sampler(poller, &target, &stop);
        return (tokio::spawn(poller.run(stop)), ticket);
    }
    let key = (target.name.clone(), node.clone());
    let address = target.url.address();
    let kind = EntryKind {
        on_scrape: true,
        ..Default::default()
    };
    let ticket = ctx.store.declare(key.clone(), address.clone(), kind);
    let (wanted, registration) = ctx.wanted.register(key, &address, ticket);
    let dormant = Dormant {
        target,
        node,
        ctx: ctx.clone(),
        ticket,
        wanted,
        _registration: registration,
    };
    (tokio::spawn(dormant.run(stop)), ticket)
}

/// A node of an on-scrape target: polled from the first scrape that asks for it until `idle`
/// passes without one, then dormant (no connection, no snapshot) until the next.
struct Dormant {
    target: Arc<Target>,
    node: Option<String>,
    ctx: PollContext,
    ticket: Ticket,
    /// When a scrape last asked for the node.
    wanted: watch::Receiver<Instant>,
    _registration: Registration,
}

impl Dormant {
    fn poller(&self) -> NodePoller {
        NodePoller::declared(
            self.target.clone(),
            self.node.clone(),
            &self.ctx,
            self.ticket,
        )
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let key = (self.target.name.clone(), self.node.clone());
        // A fresh poller each time the node is woken: its counters and slowlog baseline start
        // over, as they would in another shard's process (one taking up from where it left off
        // could jump above what that process published in between). Refusals it logged are
        // carried over, so a command the server still refuses is not warned of at every wake.
        let mut said: Option<Vec<bool>> = None;
        loop {
            tokio::select! {
                changed = self.wanted.changed() => if changed.is_err() { break },
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            tracing::debug!(target_name = %self.target.name, address = %self.target.url.address(), "scraped: polling");
            let (halt, halted) = watch::channel(false);
            let mut awake = self.poller().scrape_waiting(&self.ctx);
            if let Some(said) = said.take() {
                awake = awake.with_refusals_said(said);
            }
            let mut awake = with_sampler(awake, &self.target, &halted);
            let task = tokio::spawn(async move {
                awake.poll_until(halted).await;
                awake
            });
            let stopping = loop {
                let last = *self.wanted.borrow_and_update();
                tokio::select! {
                    // scrape_idle as configured now (a reload may change it).
                    _ = tokio::time::sleep_until((last + self.ctx.wanted.idle()).into()) => break false,
                    changed = self.wanted.changed() => if changed.is_err() { break true },
                    _ = stop.changed() => break true,
                }
            };
            let _ = halt.send(true);
            said = join_or_abort(task, Duration::from_secs(2))
                .await
                .map(|back| back.refusals_said());
            if stopping {
                break;
            }
            self.ctx.store.clear_snapshot(&key, self.ticket);
            tracing::debug!(target_name = %self.target.name, address = %self.target.url.address(), "not scraped for scrape_idle: dormant");
        }
        self.ctx.store.forget(&key, self.ticket);
    }
}

/// Starts the keyspace sampler of a target that configures one, feeding the node's snapshots.
fn with_sampler(
    poller: NodePoller,
    target: &Arc<Target>,
    shutdown: &watch::Receiver<bool>,
) -> NodePoller {
    let poller = with_watch(poller, target, shutdown);
    let Some(config) = target.keyspace.clone() else {
        return poller;
    };
    let facts = Arc::new(std::sync::Mutex::new(FamilySet::new()));
    tokio::spawn(crate::keyspace::run_sampler(
        target.clone(),
        config,
        facts.clone(),
        shutdown.clone(),
    ));
    poller.with_extra_facts(facts)
}

/// Starts the key watcher of a target that configures `watch:`, feeding the node's snapshots.
fn with_watch(
    poller: NodePoller,
    target: &Arc<Target>,
    shutdown: &watch::Receiver<bool>,
) -> NodePoller {
    let Some(config) = target.watch.clone() else {
        return poller;
    };
    let facts = Arc::new(std::sync::Mutex::new(FamilySet::new()));
    tokio::spawn(crate::keyspace::watched::run_watcher(
        target.clone(),
        config,
        facts.clone(),
        shutdown.clone(),
    ));
    poller.with_extra_facts(facts)
}

/// The pollers of the nodes discovery found, by address.
pub(crate) struct Children {
    target: Arc<Target>,
    ctx: PollContext,
    running: BTreeMap<String, (JoinHandle<()>, watch::Sender<bool>, Ticket)>,
}

impl Children {
    pub(crate) fn new(target: Arc<Target>, ctx: PollContext) -> Self {
        Self {
            target,
            ctx,
            running: BTreeMap::new(),
        }
    }

    /// Starts pollers for new addresses, stops (and forgets the series of) those gone. Each
    /// node is reached like the target itself, at its own address.
    fn sync(&mut self, want: &[String]) {
        let want: Vec<(String, Result<Target, String>)> = want
            .iter()
            .map(|addr| (addr.clone(), self.target.for_node(addr)))
            .collect();
        self.sync_targets(want);
    }

    /// As [`Children::sync`], with how to reach each node given (a Sentinel's credentials
    /// differ from the data nodes').
    pub(crate) fn sync_targets(&mut self, want: Vec<(String, Result<Target, String>)>) {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|addr| !want.iter().any(|(a, _)| a == *addr))
            .cloned()
            .collect();
        for addr in gone {
            if let Some((_, stop, ticket)) = self.running.remove(&addr) {
                let _ = stop.send(true);
                self.ctx
                    .store
                    .forget(&(self.target.name.clone(), Some(addr.clone())), ticket);
            }
            tracing::info!(target_name = %self.target.name, node = %addr, "node left; no longer polled");
        }
        for (addr, node_target) in want {
            if self.running.contains_key(&addr) {
                continue;
            }
            let node_target = match node_target {
                Ok(t) => Arc::new(t),
                Err(why) => {
                    tracing::warn!(target_name = %self.target.name, problem = %why, "skipping a discovered node");
                    continue;
                }
            };
            if node_target.on_scrape {
                tracing::info!(target_name = %self.target.name, node = %addr, "node found; polled while scraped");
            } else {
                tracing::info!(target_name = %self.target.name, node = %addr, "node found; polling it");
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            let (task, ticket) = spawn_node(node_target, Some(addr.clone()), &self.ctx, stop_rx);
            self.running.insert(addr, (task, stop_tx, ticket));
        }
    }

    pub(crate) async fn stop_all(self) {
        for (_, (task, stop, _)) in self.running {
            let _ = stop.send(true);
            join_or_abort(task, Duration::from_secs(2)).await;
        }
    }
}

/// Waits up to `grace` for a task told to stop, then aborts it: a poll stuck past its own
/// deadline cannot hold up whoever stops it. What the task returned, when it ended in time.
pub(crate) async fn join_or_abort<T>(task: JoinHandle<T>, grace: Duration) -> Option<T> {
    let abort = task.abort_handle();
    match timeout(grace, task).await {
        Ok(joined) => joined.ok(),
        Err(_) => {
            abort.abort();
            None
        }
    }
}

async fn run_with_replicas(
    target: Arc<Target>,
    ctx: PollContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut replicas) = watch::channel(Vec::new());
    let master_task = if target.on_scrape {
        // The master is not polled while nobody scrapes it: its replicas are asked for apart.
        tokio::spawn(ask_replicas(target.clone(), tx, shutdown.clone()));
        spawn_node(target.clone(), None, &ctx, shutdown.clone()).0
    } else {
        let master = with_sampler(
            NodePoller::new(target.clone(), None, &ctx),
            &target,
            &shutdown,
        )
        .report_replicas(tx);
        tokio::spawn(master.run(shutdown.clone()))
    };
    let mut children = Children::new(target, ctx);
    loop {
        tokio::select! {
            changed = replicas.changed() => {
                if changed.is_err() { break; }
                let want = replicas.borrow_and_update().clone();
                children.sync(&want);
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
    }
    children.stop_all().await;
    let _ = master_task.await;
}

/// Sleeps until `next`: true then, false once `shutdown` turns true (or its sender is gone).
pub(crate) async fn tick(next: tokio::time::Instant, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            _ = sleep_until(next) => return true,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return false;
                }
            }
        }
    }
}

/// Reports the replicas the master lists in `INFO replication`, asked every poll interval over
/// a connection of its own, until shutdown. That it cannot ask is logged when it starts and
/// when it ends (the replicas known stay as they were meanwhile).
async fn ask_replicas(
    target: Arc<Target>,
    tx: watch::Sender<Vec<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = target.poll_timeout;
    let address = target.url.address();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut failing = false;
    let mut next = tokio::time::Instant::now();
    while tick(next, &mut shutdown).await {
        next = (next + target.poll_interval).max(tokio::time::Instant::now());
        let asked = async {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(open_connection(&target, &target.url).await?),
            };
            let reply: redis::Value = redis::cmd("INFO")
                .arg("replication")
                .query_async(c)
                .await
                .map_err(|e| Failure::redis(&e))?;
            value_text(&reply).ok_or_else(|| Failure::from(PollError::Protocol))
        };
        let asked = timeout(limit, asked)
            .await
            .unwrap_or_else(|_| Err(PollError::Timeout.into()));
        let text = match asked {
            Ok(text) => text,
            Err(failure) => {
                conn = None;
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(target_name = %target.name, %address, error = %failure, "cannot ask the master for its replicas; the ones known stay as they are");
                }
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!(target_name = %target.name, %address, "asking the master for its replicas again");
        }
        let info = crate::collector::info::parse_info(&text);
        let mut replicas: Vec<String> = crate::collector::info::replica_lines(&info)
            .iter()
            .map(|r| crate::collector::info::replica_address(&r.ip, &r.port))
            .collect();
        replicas.sort();
        report_replicas(&tx, replicas);
    }
}

/// The roll-up facts of one `CLUSTER NODES` view, with failovers counted across views.
#[derive(Debug, Default)]
pub struct ClusterFacts {
    /// Node id → (master in the previous view, highest config epoch seen while master).
    roles: HashMap<String, (bool, u64)>,
    pub failovers: u64,
}

impl ClusterFacts {
    /// Counts promotions and returns the roll-up. A promotion is a node seen as a replica, then
    /// as a master with a config epoch above any it had as master before: views from different
    /// nodes can disagree for a moment, and a stale one must not make one failover count twice.
    pub fn observe(&mut self, nodes: &[ClusterNode]) -> FamilySet {
        for node in nodes.iter().filter(|n| !n.unusable) {
            let entry = self
                .roles
                .entry(node.id.clone())
                .or_insert((node.master, 0));
            if node.master && !entry.0 && node.config_epoch > entry.1 {
                self.failovers += 1;
            }
            entry.0 = node.master;
            if node.master {
                entry.1 = entry.1.max(node.config_epoch);
            }
        }
        self.roles.retain(|id, _| nodes.iter().any(|n| &n.id == id));

        let mut set = FamilySet::new();
        let usable: Vec<&ClusterNode> = nodes.iter().filter(|n| !n.unusable).collect();
        let addr_of = |id: &str| usable.iter().find(|n| n.id == id).map(|n| n.addr.clone());
        set.gauge(
            "redis_cluster_masters_online",
            "Masters serving slots and not flagged fail or fail? (suspected), in the cluster's view of itself",
            masters_online(nodes) as f64,
        );
        for state in ["ok", "pfail", "fail"] {
            let count = usable
                .iter()
                .filter(|n| match state {
                    "fail" => n.fail,
                    "pfail" => n.pfail && !n.fail,
                    _ => !n.fail && !n.pfail,
                })
                .count();
            set.add(
                "redis_cluster_nodes",
                "Cluster nodes by state (fail, pfail: suspected by the answering node, ok)",
                Kind::Gauge,
                vec![("state", state.to_owned())],
                count as f64,
            );
        }
        for n in &usable {
            let node = || vec![("node", n.addr.clone())];
            let mut info = node();
            info.push(("node_id", n.id.clone()));
            info.push((
                "role",
                if n.master { "master" } else { "replica" }.to_owned(),
            ));
            info.push((
                "master_node",
                n.master_id.as_deref().and_then(addr_of).unwrap_or_default(),
            ));
            set.add(
                "redis_cluster_node_info",
                "A cluster node, its role and its master",
                Kind::Gauge,
                info,
                1.0,
            );
            set.add(
                "redis_cluster_node_slots",
                "Hash slots the node serves",
                Kind::Gauge,
                node(),
                n.slots as f64,
            );
            set.add(
                "redis_cluster_node_fail",
                "1 when the cluster agreed the node failed",
                Kind::Gauge,
                node(),
                f64::from(u8::from(n.fail)),
            );
            set.add(
                "redis_cluster_node_pfail",
                "1 when the answering node suspects the node failed",
                Kind::Gauge,
                node(),
                f64::from(u8::from(n.pfail)),
            );
            set.add(
                "redis_cluster_node_link_up",
                "1 when the answering node's cluster bus link to the node is connected",
                Kind::Gauge,
                node(),
                f64::from(u8::from(n.link_up || n.myself)),
            );
            set.add(
                "redis_cluster_node_config_epoch",
                "The node's config epoch",
                Kind::Gauge,
                node(),
                n.config_epoch as f64,
            );
        }
        set.add(
            "redis_cluster_failovers_total",
            "Failovers observed: a node seen as a replica, then as a master",
            Kind::Counter,
            Vec::new(),
            self.failovers as f64,
        );
        set
    }
}

/// Discovers a cluster's nodes, keeps one poller per node, publishes the roll-up.
struct ClusterView {
    target: Arc<Target>,
    ctx: PollContext,
    key: NodeKey,
    ticket: Ticket,
    /// The connection to the node that answered last, and the address it was asked at.
    conn: Option<(MultiplexedConnection, String)>,
    /// The last view taken: its usable nodes are asked next (see [`ClusterView::known`]), and
    /// the next view is judged by it ([`LastView`]).
    last: Vec<ClusterNode>,
    facts: ClusterFacts,
}

/// The last view taken, as the next one is judged by it.
#[derive(Debug, Default)]
struct LastView<'a>(&'a [ClusterNode]);

impl<'a> LastView<'a> {
    fn of(nodes: &'a [ClusterNode]) -> Self {
        Self(nodes)
    }

    fn lists(&self, id: &str) -> bool {
        self.0.iter().any(|n| n.id == id)
    }

    /// Whether a view needs a second opinion before it is taken: it leaves out nodes the last
    /// one listed, or counts fewer masters online. One node's view is wrong for good when
    /// that node left the cluster but still answers (`redis-cli --cluster del-node` resets it
    /// to a cluster of itself), was restarted without its nodes.conf, or is an address now
    /// held by another cluster's node; and it is wrong for a while when the node is cut off
    /// from the cluster bus and suspects every other master.
    fn doubts(&self, nodes: &[ClusterNode]) -> bool {
        !self.0.is_empty()
            && (self
                .0
                .iter()
                .any(|last| !nodes.iter().any(|n| n.id == last.id))
                || masters_online(nodes) < masters_online(self.0))
    }

    /// How well a view agrees with this one: the nodes of this one it still lists, then its
    /// masters online. Of two views, the one that agrees better is taken.
    fn agreement(&self, nodes: &[ClusterNode]) -> (usize, usize) {
        let kept = nodes.iter().filter(|n| self.lists(&n.id)).count();
        (kept, masters_online(nodes))
    }
}

/// How a cluster node is reached: at its address, over TLS checked for the host name it
/// announces (see [`Target::for_named_node`]).
fn reach(target: &Target, node: &ClusterNode) -> Result<Target, String> {
    target.for_named_node(&node.addr, node.hostname.as_deref())
}

/// Masters serving slots and flagged neither `fail` nor `fail?`. A master that serves no slots
/// (a demoted one the answering node has not yet heard about, or an empty one being added)
/// serves nobody. One only suspected is not counted either: once most masters are gone, no
/// majority is left to turn a suspicion into `fail`, and the dead would stay "online" for good.
fn masters_online(nodes: &[ClusterNode]) -> usize {
    nodes
        .iter()
        .filter(|n| !n.unusable && n.master && !n.fail && !n.pfail && n.slots > 0)
        .count()
}

/// The kind of a target's own entry (`(name, None)`): its roll-up for a cluster or Sentinel
/// target, else its configured node.
pub(crate) fn root_kind(target: &Target) -> EntryKind {
    EntryKind {
        on_scrape: target.on_scrape,
        roll_up: target.cluster || target.sentinel.is_some(),
        ..Default::default()
    }
}

/// The target-level node of a discovered topology (cluster, Sentinel): expected in the store
/// but not offered to `/discovery` as a node (it is served with its seed's address), except
/// for an on-scrape target, where `/discovery` lists it under the target's name.
pub(crate) fn expect_roll_up(target: &Target, ctx: &PollContext) -> (NodeKey, Ticket) {
    let key = (target.name.clone(), None);
    let ticket = ctx
        .store
        .declare(key.clone(), target.url.address(), root_kind(target));
    ctx.store.set_live(&key, false);
    (key, ticket)
}

/// Publishes a roll-up's facts as the target-level snapshot (labels: `target` only).
pub(crate) fn publish_roll_up(
    ctx: &PollContext,
    ticket: Ticket,
    target: &Target,
    set: &FamilySet,
    up: bool,
    started: Instant,
    role: &str,
) {
    ctx.store.publish(
        ticket,
        Snapshot {
            target: target.name.clone(),
            node: None,
            families: set.render(&target.base_labels(None), &ctx.interner),
            up,
            error: None,
            polled_at: SystemTime::now(),
            duration: started.elapsed(),
            role: Some(role.to_owned()),
            version: None,
        },
    );
    // The roll-up's facts (masters online, failovers counted) are judged by the in-process
    // evaluator like a node's: RedisClusterMastersLow and the failover-loop alerts read them.
    if let Some(tx) = &ctx.observations {
        let _ = tx.try_send(crate::alerts::eval::Observation {
            key: (target.name.clone(), None),
            at: Instant::now(),
            facts: Arc::new(set.clone()),
            held_over: false,
            labels: target.labels.clone(),
        });
    }
}

impl ClusterView {
    fn new(target: Arc<Target>, ctx: PollContext) -> Self {
        let (key, ticket) = expect_roll_up(&target, &ctx);
        Self {
            target,
            ctx,
            key,
            ticket,
            conn: None,
            last: Vec::new(),
            facts: ClusterFacts::default(),
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut children = Children::new(self.target.clone(), self.ctx.clone());
        let interval = self.target.poll_interval;
        let mut next = tokio::time::Instant::now();
        while tick(next, &mut shutdown).await {
            let started = Instant::now();
            let nodes = self.fetch_nodes().await;
            let mut set = match &nodes {
                Some(nodes) => {
                    let usable: Vec<(String, Result<Target, String>)> = nodes
                        .iter()
                        .filter(|n| !n.unusable)
                        .map(|n| (n.addr.clone(), reach(&self.target, n)))
                        .collect();
                    children.sync_targets(usable);
                    for n in nodes.iter().filter(|n| !n.unusable) {
                        let key = (self.target.name.clone(), Some(n.addr.clone()));
                        self.ctx.store.set_live(&key, !n.fail);
                    }
                    self.facts.observe(nodes)
                }
                None => FamilySet::new(),
            };
            set.gauge(
                "redis_lookout_cluster_view_up",
                "1 when a cluster node answered CLUSTER NODES in the last discovery round",
                f64::from(u8::from(nodes.is_some())),
            );
            publish_roll_up(
                &self.ctx,
                self.ticket,
                &self.target,
                &set,
                nodes.is_some(),
                started,
                "cluster",
            );
            let after = tokio::time::Instant::now();
            next = (next + interval).max(after);
        }
        children.stop_all().await;
        self.ctx.store.forget(&self.key, self.ticket);
    }

    /// CLUSTER NODES from the node that answered last time, else from the known nodes (those
    /// whose pollers last found them up first), the configured URL and the seeds; checked
    /// against a second node when it disagrees with the last view (see [`LastView::doubts`]).
    /// All of it within one poll interval: when nodes die, trying them one after another must
    /// not hold back the roll-up (masters online, nodes by state) for many intervals.
    async fn fetch_nodes(&mut self) -> Option<Vec<ClusterNode>> {
        let until = tokio::time::Instant::now() + self.target.poll_interval;
        let mut nodes = self.first_answer(until).await?;
        let last = LastView::of(&self.last);
        if last.doubts(&nodes) {
            let asked = self
                .conn
                .as_ref()
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            // Nodes both views list first, then those the new one left out.
            let mut others: Vec<&ClusterNode> = self
                .known()
                .into_iter()
                .filter(|n| n.addr != asked)
                .collect();
            others.sort_by_key(|o| !nodes.iter().any(|n| n.addr == o.addr));
            let others: Vec<Target> = others
                .into_iter()
                .filter_map(|n| reach(&self.target, n).ok())
                .take(2)
                .collect();
            if let Some((conn, asked2, second)) = self.ask_first_of(others, until).await {
                if last.agreement(&second) > last.agreement(&nodes) {
                    tracing::info!(
                        target_name = %self.target.name,
                        dropped = %asked,
                        taken = %asked2,
                        "a cluster node's view disagrees with the last one and with another node's: following the other node"
                    );
                    self.conn = Some((conn, asked2));
                    nodes = second;
                }
            }
        }
        self.last = nodes.clone();
        Some(nodes)
    }

    /// The first answer to CLUSTER NODES, from the node that answered last time or the first
    /// candidate that answers; its connection kept for next time.
    async fn first_answer(&mut self, until: tokio::time::Instant) -> Option<Vec<ClusterNode>> {
        if let Some((conn, asked)) = self.conn.as_mut() {
            if let Some(mut nodes) = ask_nodes(conn, self.target.poll_timeout).await {
                use_asked_address(&mut nodes, asked);
                return Some(nodes);
            }
            self.conn = None;
        }
        let up: Vec<String> = self
            .ctx
            .store
            .snapshots(|(target, node), _| *target == self.target.name && node.is_some())
            .iter()
            .filter(|s| s.up)
            .filter_map(|s| s.node.clone())
            .collect();
        let mut known = self.known();
        known.sort_by_key(|n| !up.contains(&n.addr));
        let mut candidates: Vec<Target> = known
            .into_iter()
            .filter_map(|n| reach(&self.target, n).ok())
            .collect();
        candidates.push((*self.target).clone());
        candidates.extend(self.target.seeds.iter().map(|seed| Target {
            url: seed.clone(),
            ..(*self.target).clone()
        }));
        let Some((conn, asked, nodes)) = self.ask_first_of(candidates, until).await else {
            tracing::debug!(target_name = %self.target.name, "no cluster node answered CLUSTER NODES");
            return None;
        };
        self.conn = Some((conn, asked));
        Some(nodes)
    }

    /// The usable nodes of the last view, healthy masters first: asked in that order.
    fn known(&self) -> Vec<&ClusterNode> {
        let mut order: Vec<&ClusterNode> = self.last.iter().filter(|n| !n.unusable).collect();
        order.sort_by_key(|n| (n.fail || n.pfail, !n.master));
        order
    }

    /// CLUSTER NODES from the first of `nodes` (each reached at its URL) that answers before
    /// `until`: its connection, the address it was asked at, and its nodes.
    async fn ask_first_of(
        &self,
        nodes: Vec<Target>,
        until: tokio::time::Instant,
    ) -> Option<(MultiplexedConnection, String, Vec<ClusterNode>)> {
        let limit = self.target.poll_timeout;
        for node in nodes {
            let left = || until.saturating_duration_since(tokio::time::Instant::now());
            if left().is_zero() {
                break;
            }
            let opened = timeout(limit.min(left()), open_connection(&node, &node.url)).await;
            let Ok(Ok(mut conn)) = opened else { continue };
            if let Some(mut nodes) = ask_nodes(&mut conn, limit.min(left())).await {
                let asked = node.url.address();
                use_asked_address(&mut nodes, &asked);
                return Some((conn, asked, nodes));
            }
        }
        None
    }
}

async fn ask_nodes(conn: &mut MultiplexedConnection, limit: Duration) -> Option<Vec<ClusterNode>> {
    let reply: redis::Value = timeout(limit, redis::cmd("CLUSTER").arg("NODES").query_async(conn))
        .await
        .ok()?
        .ok()?;
    let nodes = parse_cluster_nodes(&value_text(&reply)?);
    (!nodes.is_empty()).then_some(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, port: u16, master: bool, master_id: Option<&str>) -> ClusterNode {
        ClusterNode {
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            hostname: None,
            myself: false,
            master,
            master_id: master_id.map(str::to_owned),
            fail: false,
            pfail: false,
            unusable: false,
            config_epoch: 1,
            link_up: true,
            slots: if master { 100 } else { 0 },
        }
    }

    #[test]
    fn a_view_that_drops_nodes_or_masters_is_checked_and_the_better_agreeing_one_taken() {
        let cluster = vec![
            node("a", 1, true, None),
            node("b", 2, true, None),
            node("c", 3, true, None),
            node("d", 4, false, Some("a")),
        ];
        let last = LastView::of(&cluster);
        assert_eq!(masters_online(last.0), 3);
        assert!(
            !LastView::default().doubts(&cluster),
            "a first view is taken as it is"
        );
        assert!(!last.doubts(&cluster));
        let mut grown = cluster.clone();
        grown.push(node("e", 5, false, Some("b")));
        assert!(!last.doubts(&grown), "a new node is no reason to doubt");
        // A node reset out of the cluster: a cluster of itself, with no slots.
        let mut alone = vec![node("a", 1, true, None)];
        alone[0].slots = 0;
        assert!(last.doubts(&alone));
        assert!(last.agreement(&cluster[1..]) > last.agreement(&alone));
        // Another cluster's node at a known address: nothing in common.
        let foreign = vec![node("x", 1, true, None), node("y", 2, true, None)];
        assert!(last.doubts(&foreign));
        assert!(last.agreement(&cluster) > last.agreement(&foreign));
        // A node cut off from the bus suspects the other masters; a member's view is taken.
        let mut cut_off = cluster.clone();
        cut_off[1].pfail = true;
        cut_off[2].pfail = true;
        assert!(last.doubts(&cut_off));
        assert!(last.agreement(&cluster) > last.agreement(&cut_off));
        // A node really gone: doubted once, and another member's view (the same) is no better,
        // so the first is taken; the view after it has nothing more to doubt.
        let without_c = vec![cluster[0].clone(), cluster[1].clone(), cluster[3].clone()];
        assert!(last.doubts(&without_c));
        let mut from_b = without_c.clone();
        from_b[1].myself = true;
        assert!(last.agreement(&from_b) <= last.agreement(&without_c));
        assert!(!LastView::of(&without_c).doubts(&from_b));
    }

    #[test]
    fn masters_only_suspected_are_not_online() {
        // Two of three masters dead: the survivor suspects them (fail?) but, without a
        // majority, can never mark them fail.
        let mut nodes = vec![
            node("a", 1, true, None),
            node("b", 2, true, None),
            node("c", 3, true, None),
        ];
        nodes[1].pfail = true;
        nodes[2].pfail = true;
        let set = ClusterFacts::default().observe(&nodes);
        assert_eq!(
            set.get("redis_cluster_masters_online").unwrap().samples[0].value,
            1.0
        );
    }

    #[test]
    fn a_promotion_counts_one_failover_and_masters_online_follow_fail_flags() {
        let mut facts = ClusterFacts::default();
        let before = vec![node("a", 1, true, None), node("b", 2, false, Some("a"))];
        let set = facts.observe(&before);
        assert_eq!(
            set.get("redis_cluster_masters_online").unwrap().samples[0].value,
            1.0
        );
        assert_eq!(facts.failovers, 0);

        let mut after = vec![node("a", 1, true, None), node("b", 2, true, None)];
        after[0].fail = true;
        after[1].config_epoch = 7;
        let set = facts.observe(&after);
        assert_eq!(facts.failovers, 1);
        assert_eq!(
            set.get("redis_cluster_masters_online").unwrap().samples[0].value,
            1.0
        );
        let failed = set.get("redis_cluster_nodes").unwrap();
        assert_eq!(failed.samples[2].labels[0].1, "fail");
        assert_eq!(failed.samples[2].value, 1.0);
        // Seeing the same roles again is not another failover.
        facts.observe(&after);
        assert_eq!(facts.failovers, 1);
        // A stale view from another node shows b as a replica again, then a fresh one as
        // master with the same epoch: still one failover.
        facts.observe(&before);
        facts.observe(&after);
        assert_eq!(facts.failovers, 1);
        // A real second failover gives b a new epoch.
        facts.observe(&before);
        after[1].config_epoch = 9;
        facts.observe(&after);
        assert_eq!(facts.failovers, 2);
    }

    #[test]
    fn replicas_name_their_master_by_address() {
        let mut facts = ClusterFacts::default();
        let set = facts.observe(&[node("a", 1, true, None), node("b", 2, false, Some("a"))]);
        let info = set.get("redis_cluster_node_info").unwrap();
        let replica = &info.samples[1].labels;
        assert!(replica.contains(&("master_node", "127.0.0.1:1".to_owned())));
        assert!(replica.contains(&("role", "replica".to_owned())));
    }
}
