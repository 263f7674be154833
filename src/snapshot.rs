//! Snapshots: the latest facts of every polled node, swapped in whole by its poller.
//!
//! Readers (`/metrics`, `/`, `/-/ready`) take the map's read lock only long enough to clone the
//! `Arc`s, so a scrape never waits on a poll and a poll never waits on a scrape.

use crate::error::PollError;
use crate::metrics::{merge_exposition, HasFamilies, Rendered};
use std::collections::BTreeMap;
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
    /// False for a cluster node flagged `fail`: still polled, not offered to `/discovery`.
    pub live: bool,
    pub snapshot: Option<Arc<Snapshot>>,
}

/// The shared map of latest snapshots, and the set of nodes expected to report.
#[derive(Debug, Default)]
pub struct SnapshotStore {
    inner: RwLock<BTreeMap<NodeKey, NodeEntry>>,
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

    /// Declares a node that will report; it counts as not ready until its first poll ends.
    pub fn expect(&self, key: NodeKey, address: String) {
        self.write().entry(key).or_insert(NodeEntry {
            address,
            live: true,
            snapshot: None,
        });
    }

    /// Marks a node live or not for discovery (its series stay).
    pub fn set_live(&self, key: &NodeKey, live: bool) {
        if let Some(entry) = self.write().get_mut(key) {
            entry.live = live;
        }
    }

    /// Removes a node and its series (a node that left, a target removed on reload).
    pub fn forget(&self, key: &NodeKey) {
        self.write().remove(key);
    }

    /// Swaps in a node's newest snapshot. A node already forgotten stays forgotten, so a poll
    /// that was in flight when its node left cannot bring back its series.
    pub fn publish(&self, snapshot: Snapshot) {
        let key = (snapshot.target.clone(), snapshot.node.clone());
        if let Some(entry) = self.write().get_mut(&key) {
            entry.snapshot = Some(Arc::new(snapshot));
        }
    }

    /// Every node with what is known of it.
    pub fn all(&self) -> Vec<(NodeKey, NodeEntry)> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// True when every expected node has finished at least one poll, successful or not.
    pub fn ready(&self) -> bool {
        self.read().values().all(|e| e.snapshot.is_some())
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
