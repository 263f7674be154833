//! Snapshots: the latest facts of every polled node, swapped in whole by its poller.
//!
//! Readers (`/metrics`, `/`, `/-/ready`) take the map's read lock only long enough to clone the
//! `Arc`s, so a scrape never waits on a poll and a poll never waits on a scrape.

use crate::error::PollError;
use crate::metrics::{merge_exposition, RenderedFamily};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Everything one poll of one node produced.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub target: String,
    /// `host:port` for nodes found by discovery; None for the configured node itself.
    pub node: Option<String>,
    pub families: Vec<RenderedFamily>,
    pub up: bool,
    pub error: Option<PollError>,
    pub polled_at: SystemTime,
    pub duration: Duration,
    pub role: Option<String>,
    pub version: Option<String>,
}

/// Identifies a polled node: (target name, node address if discovered).
pub type NodeKey = (String, Option<String>);

/// The shared map of latest snapshots, and the set of nodes expected to report.
#[derive(Debug, Default)]
pub struct SnapshotStore {
    inner: RwLock<BTreeMap<NodeKey, Option<Arc<Snapshot>>>>,
}

impl SnapshotStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a node that will report; it counts as not ready until its first poll ends.
    pub fn expect(&self, key: NodeKey) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_insert(None);
    }

    /// Removes a node and its series (a node that left, a target removed on reload).
    pub fn forget(&self, key: &NodeKey) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }

    /// Swaps in a node's newest snapshot.
    pub fn publish(&self, snapshot: Snapshot) {
        let key = (snapshot.target.clone(), snapshot.node.clone());
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.insert(key, Some(Arc::new(snapshot)));
    }

    /// Every node with its latest snapshot (None before its first poll).
    pub fn all(&self) -> Vec<(NodeKey, Option<Arc<Snapshot>>)> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// True when every expected node has finished at least one poll, successful or not.
    pub fn ready(&self) -> bool {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.values().all(Option::is_some)
    }

    /// Appends the merged exposition of every snapshot (optionally one target only).
    pub fn render_into(&self, out: &mut String, only_target: Option<&str>) {
        let snapshots: Vec<Arc<Snapshot>> = {
            let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|((target, _), _)| only_target.is_none_or(|t| t == target))
                .filter_map(|(_, s)| s.clone())
                .collect()
        };
        merge_exposition(out, snapshots.iter().map(|s| s.families.as_slice()));
    }
}
