//! Snapshots: the latest facts of every polled node, swapped in whole by its poller.
//!
//! Readers (`/metrics`, `/`, `/-/ready`) take the map's read lock only long enough to clone the
//! `Arc`s, so a scrape never waits on a poll and a poll never waits on a scrape.

use crate::error::PollError;
use crate::metrics::{merge_exposition, HasFamilies, Rendered};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Everything one poll of one node produced.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub target: String,
    /// `host:port` for nodes found by discovery; None for the configured node itself.
    pub node: Option<String>,
    pub families: Rendered,
    pub up: bool,
    pub error: Option<PollError>,
    pub polled_at: SystemTime,
    pub duration: Duration,
    pub role: Option<String>,
    pub version: Option<String>,
}

/// Identifies a polled node: (target name, node address if discovered).
pub type NodeKey = (String, Option<String>);

/// What the store knows of one node.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// `host:port` (or socket path) the node is polled at.
    pub address: String,
    /// False for a cluster node flagged `fail`: still polled, not offered to `/discovery`
    /// (unless `on_scrape`: nothing else would poll it).
    pub live: bool,
    pub snapshot: Option<Arc<Snapshot>>,
    /// A node of a `polling: on_scrape` target (polled only while `/scrape` asks for it), or
    /// such a target's roll-up: offered to `/discovery` whether polled or not, and not waited
    /// for by readiness while dormant.
    pub on_scrape: bool,
    /// A target's roll-up (cluster, Sentinel): facts about the whole target, not one node.
    pub roll_up: bool,
    /// Polled because `/scrape` asked for an address the allow-list admits: not part of the
    /// configuration, so never waited for by readiness (a caller asking for unreachable
    /// addresses must not make `/-/ready` fail).
    pub on_demand: bool,
    /// The ticket of the task that reports for this node now.
    owner: Ticket,
}

impl NodeEntry {
    /// A node polled only while scraped, and not polled now.
    pub fn dormant(&self) -> bool {
        self.on_scrape && !self.roll_up && self.snapshot.is_none()
    }
}

/// What kind of entry [`SnapshotStore::declare`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryKind {
    pub on_scrape: bool,
    pub roll_up: bool,
    pub on_demand: bool,
}

/// What a task got when it declared a node with [`SnapshotStore::expect`]: only the holder of
/// the latest ticket for a node may publish its snapshots or forget it. A task told to stop
/// can take up to a poll timeout to notice; if its node is declared again meanwhile (it came
/// back to a cluster, a scrape asked for it again), the old task's last publish and its
/// `forget` on the way out must not touch the new task's entry.
/// Tickets are given in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// The shared map of latest snapshots, and the set of nodes expected to report.
#[derive(Debug, Default)]
pub struct SnapshotStore {
    inner: RwLock<BTreeMap<NodeKey, NodeEntry>>,
    tickets: AtomicU64,
    /// Told of every publish, for whoever waits for a node's first poll.
    published: tokio::sync::Notify,
}

impl SnapshotStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeKey, NodeEntry>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeKey, NodeEntry>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares a node that will report, and makes the caller its reporter: a new node counts
    /// as not ready until its first poll ends; one declared again keeps its last snapshot
    /// until the new reporter publishes.
    pub fn expect(&self, key: NodeKey, address: String) -> Ticket {
        self.declare(key, address, EntryKind::default())
    }

    /// [`SnapshotStore::expect`], for an entry of the given kind.
    pub fn declare(&self, key: NodeKey, address: String, kind: EntryKind) -> Ticket {
        let ticket = Ticket(self.tickets.fetch_add(1, Ordering::Relaxed));
        match self.write().entry(key) {
            Entry::Occupied(mut e) => {
                let e = e.get_mut();
                e.address = address;
                e.owner = ticket;
                e.on_scrape = kind.on_scrape;
                e.roll_up = kind.roll_up;
                e.on_demand = kind.on_demand;
                // An on-scrape node starts dormant: a snapshot left by the task it replaces
                // (a reload) would otherwise be served, unchanging, until its next scrape.
                if kind.on_scrape && !kind.roll_up {
                    e.snapshot = None;
                }
            }
            Entry::Vacant(e) => {
                e.insert(NodeEntry {
                    address,
                    live: true,
                    snapshot: None,
                    on_scrape: kind.on_scrape,
                    roll_up: kind.roll_up,
                    on_demand: kind.on_demand,
                    owner: ticket,
                });
            }
        }
        ticket
    }

    /// Drops a node's snapshot, keeping the node (an on-scrape node that went dormant: its
    /// next scrape waits for a fresh poll instead of being served old figures).
    pub fn clear_snapshot(&self, key: &NodeKey, ticket: Ticket) {
        if let Some(entry) = self.write().get_mut(key) {
            if entry.owner == ticket {
                entry.snapshot = None;
            }
        }
    }

    /// Marks a node live or not for discovery (its series stay).
    pub fn set_live(&self, key: &NodeKey, live: bool) {
        if let Some(entry) = self.write().get_mut(key) {
            entry.live = live;
        }
    }

    /// Removes a node and its series (a node that left, a target removed on reload), unless
    /// another reporter has declared it since `ticket` was given.
    pub fn forget(&self, key: &NodeKey, ticket: Ticket) {
        let mut map = self.write();
        if map.get(key).is_some_and(|e| e.owner == ticket) {
            map.remove(key);
        }
    }

    /// Every ticket given from now on is at least this one.
    pub fn next_ticket(&self) -> Ticket {
        Ticket(self.tickets.load(Ordering::Relaxed))
    }

    /// Removes every node of `target` whose reporter was declared before `floor`: what a
    /// target's stopped tasks left behind (a task aborted past its deadline never forgets its
    /// nodes), while whatever a later task of the same name declared stays.
    pub fn forget_target_before(&self, target: &str, floor: Ticket) {
        self.write()
            .retain(|(name, _), e| name != target || e.owner >= floor);
    }

    /// Swaps in a node's newest snapshot. A node already forgotten stays forgotten, so a poll
    /// that was in flight when its node left cannot bring back its series; a node declared
    /// again since `ticket` was given takes snapshots from its new reporter only.
    pub fn publish(&self, ticket: Ticket, snapshot: Snapshot) {
        let key = (snapshot.target.clone(), snapshot.node.clone());
        if let Some(entry) = self.write().get_mut(&key) {
            if entry.owner == ticket {
                entry.snapshot = Some(Arc::new(snapshot));
            }
        }
        self.published.notify_waiters();
    }

    /// Waits until every node of `keys` has a snapshot, or until `until`; true when they do.
    pub async fn wait_for_snapshots(&self, keys: &[NodeKey], until: tokio::time::Instant) -> bool {
        loop {
            // Registered before looking, so a publish between the look and the wait counts.
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            if keys.iter().all(|k| self.has_snapshot(k)) {
                return true;
            }
            if tokio::time::timeout_at(until, published).await.is_err() {
                return false;
            }
        }
    }

    /// Whether the node has finished a poll since it was first declared.
    pub fn has_snapshot(&self, key: &NodeKey) -> bool {
        self.read().get(key).is_some_and(|e| e.snapshot.is_some())
    }

    /// Every node with what is known of it.
    pub fn all(&self) -> Vec<(NodeKey, NodeEntry)> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether some node matches, looked at in place (a `/scrape` asks several such questions;
    /// copying every entry for each cost O(nodes) allocations per scrape).
    pub fn any(&self, matches: impl Fn(&NodeKey, &NodeEntry) -> bool) -> bool {
        self.read().iter().any(|(k, e)| matches(k, e))
    }

    /// Nodes of on-scrape targets: `(polled now, dormant)`.
    pub fn on_scrape_counts(&self) -> (usize, usize) {
        let map = self.read();
        let nodes = map.values().filter(|e| e.on_scrape && !e.roll_up);
        nodes.fold((0, 0), |(polled, dormant), e| {
            if e.snapshot.is_some() {
                (polled + 1, dormant)
            } else {
                (polled, dormant + 1)
            }
        })
    }

    /// True when every expected node has finished at least one poll, successful or not
    /// (dormant on-scrape nodes and on-demand pollers are not expected to).
    pub fn ready(&self) -> bool {
        self.read()
            .values()
            .all(|e| e.on_demand || e.snapshot.is_some() || e.dormant())
    }

    /// The latest snapshots of the chosen nodes.
    pub fn snapshots(&self, select: impl Fn(&NodeKey, &NodeEntry) -> bool) -> Vec<Arc<Snapshot>> {
        self.read()
            .iter()
            .filter(|(k, e)| select(k, e))
            .filter_map(|(_, e)| e.snapshot.clone())
            .collect()
    }

    /// Appends the merged exposition of the chosen snapshots.
    pub fn render_into(&self, out: &mut String, select: impl Fn(&NodeKey, &NodeEntry) -> bool) {
        merge_exposition(out, self.snapshots(select));
    }
}

impl HasFamilies for Snapshot {
    fn rendered(&self) -> &Rendered {
        &self.families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(node: &str, version: &str) -> Snapshot {
        Snapshot {
            target: "t".into(),
            node: Some(node.into()),
            families: crate::metrics::FamilySet::new()
                .render(&[], &crate::metrics::Interner::default()),
            up: true,
            error: None,
            polled_at: SystemTime::now(),
            duration: Duration::ZERO,
            role: None,
            version: Some(version.into()),
        }
    }

    fn version(store: &SnapshotStore, key: &NodeKey) -> Option<String> {
        let all = store.all();
        let (_, entry) = all.iter().find(|(k, _)| k == key)?;
        entry
            .snapshot
            .as_ref()
            .map(|s| s.version.clone().unwrap_or_default())
    }

    #[test]
    fn only_the_latest_reporter_of_a_node_publishes_or_forgets_it() {
        let store = SnapshotStore::new();
        let key: NodeKey = ("t".into(), Some("n:1".into()));
        let old = store.expect(key.clone(), "n:1".into());
        store.publish(old, snapshot("n:1", "old"));
        assert_eq!(version(&store, &key).as_deref(), Some("old"));

        // The node left: its controller forgets it with the old poller's ticket...
        store.forget(&key, old);
        assert!(store.all().is_empty());
        // ...and it comes back before the old poller, still inside a poll, has exited.
        let new = store.expect(key.clone(), "n:1".into());
        assert!(
            !store.has_snapshot(&key),
            "a node declared afresh is not ready"
        );
        // The old poller's last publish and its forget on the way out change nothing.
        store.publish(old, snapshot("n:1", "stale"));
        store.forget(&key, old);
        assert!(!store.has_snapshot(&key));
        assert_eq!(store.all().len(), 1);
        store.publish(new, snapshot("n:1", "new"));
        assert_eq!(version(&store, &key).as_deref(), Some("new"));

        // Declared again while its reporter still runs (a changed target): the last snapshot
        // stays until the new reporter publishes, and only the new one may forget it.
        let newer = store.expect(key.clone(), "n:1".into());
        assert_eq!(version(&store, &key).as_deref(), Some("new"));
        store.publish(new, snapshot("n:1", "from the replaced poller"));
        assert_eq!(version(&store, &key).as_deref(), Some("new"));
        store.forget(&key, new);
        assert!(store.has_snapshot(&key));
        store.forget(&key, newer);
        assert!(store.all().is_empty());
    }

    #[test]
    fn dormant_on_scrape_nodes_do_not_hold_back_readiness_and_lose_their_snapshot_when_let_go() {
        let store = SnapshotStore::new();
        let key: NodeKey = ("t".into(), Some("n:1".into()));
        let on_scrape = EntryKind {
            on_scrape: true,
            ..Default::default()
        };
        let ticket = store.declare(key.clone(), "n:1".into(), on_scrape);
        assert!(store.ready(), "a dormant node is not waited for");
        let asked = EntryKind {
            on_demand: true,
            ..Default::default()
        };
        let on_demand = store.declare(
            ("10.0.0.9:6379".into(), None),
            "10.0.0.9:6379".into(),
            asked,
        );
        assert!(store.ready(), "nor is an address /scrape asked for");
        store.forget(&("10.0.0.9:6379".into(), None), on_demand);
        let roll_up = store.declare(
            ("t".into(), None),
            "n:1".into(),
            EntryKind {
                on_scrape: true,
                roll_up: true,
                ..Default::default()
            },
        );
        assert!(
            !store.ready(),
            "an on-scrape target's roll-up is polled all the time"
        );
        store.publish(
            roll_up,
            Snapshot {
                node: None,
                ..snapshot("n:1", "rollup")
            },
        );
        assert!(store.ready());
        store.publish(ticket, snapshot("n:1", "woken"));
        assert!(store.has_snapshot(&key));
        // Only the node's current reporter lets it go; the entry stays for /discovery.
        store.clear_snapshot(&key, Ticket(ticket.0 + 100));
        assert!(store.has_snapshot(&key));
        store.clear_snapshot(&key, ticket);
        assert!(!store.has_snapshot(&key));
        assert_eq!(store.all().len(), 2);
        assert!(store.ready());

        // Declared again as on-scrape over a node that was polled all the time (a reload):
        // the old snapshot goes, or it would be served unchanging until the next scrape.
        let continuous = store.expect(key.clone(), "n:1".into());
        store.publish(continuous, snapshot("n:1", "polled"));
        store.declare(key.clone(), "n:1".into(), on_scrape);
        assert!(!store.has_snapshot(&key));
    }

    #[tokio::test]
    async fn a_wait_for_a_first_poll_ends_at_the_publish_or_at_its_deadline() {
        let store = Arc::new(SnapshotStore::new());
        let key: NodeKey = ("t".into(), Some("n:1".into()));
        let ticket = store.expect(key.clone(), "n:1".into());
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(
            !store
                .wait_for_snapshots(std::slice::from_ref(&key), soon)
                .await
        );
        let publisher = store.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            publisher.publish(ticket, snapshot("n:1", "first"));
        });
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        assert!(
            store
                .wait_for_snapshots(std::slice::from_ref(&key), far)
                .await
        );
        assert!(store.has_snapshot(&key));
    }

    #[test]
    fn a_stopped_targets_leftovers_go_and_its_successors_nodes_stay() {
        let store = SnapshotStore::new();
        let node = |t: &str, n: &str| -> NodeKey { (t.into(), Some(n.into())) };
        store.expect(node("t", "a:1"), "a:1".into());
        store.expect(node("t", "b:1"), "b:1".into());
        store.expect(node("other", "a:1"), "a:1".into());
        // The target is replaced: its old tasks are told to stop, the new one starts.
        let floor = store.next_ticket();
        store.expect(node("t", "b:1"), "b:1".into());
        store.expect(node("t", "c:1"), "c:1".into());
        // The old tasks ended (or were aborted) without forgetting their nodes.
        store.forget_target_before("t", floor);
        let keys: Vec<NodeKey> = store.all().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [node("other", "a:1"), node("t", "b:1"), node("t", "c:1")]
        );
    }
}
