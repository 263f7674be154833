//! `/scrape?target=`: the Prometheus multi-target pattern, with an allow-list.
//!
//! A `target` is answered, in this order, as: a configured target's name (all its nodes); the
//! address of a node already polled (one node, as `/discovery` lists them); an address an
//! allow-list entry accepts, which gets an on-demand poller on first use (the first scrape waits
//! for its first poll, within the scrape's timeout) that stops after `scrape_idle` without a
//! scrape. Anything else is refused with 403 before any connection is attempted. The endpoint is
//! off while the allow-list is empty. Credentials always come from the matching allow-list entry,
//! never from the request or from another target.
//!
//! A `polling: on_scrape` target comes first: its nodes are known (from discovery) but polled only
//! while scraped. `/scrape?target=<node address>` wakes the node (its poller runs, with the
//! target's credentials and labels, until `scrape_idle` passes without a scrape) and answers it
//! alone; `/scrape?target=<name>` answers the target's roll-up (cluster, Sentinel) or its
//! configured node, never its other nodes, which other shards may answer. These need no
//! allow-list entry: nothing but configured targets is reached.

use crate::config::{AllowRule, RedisUrl, Target};
use crate::poller::{NodePoller, PollContext};
use crate::snapshot::{NodeKey, Ticket};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// At most this many on-demand pollers run at once; more are refused with 429 (each is a
/// connection to some Redis).
pub const MAX_ON_DEMAND: usize = 10_000;

/// The answer to a `/scrape` request, before it becomes HTTP.
#[derive(Debug, PartialEq)]
pub enum ScrapeAnswer {
    Metrics(String),
    Disabled,
    BadTarget(String),
    Forbidden,
    /// Not a node of any on-scrape target (any more, or yet), and no allow-list to ask.
    UnknownNode,
    TooMany,
    NotYetPolled,
}

struct Running {
    stop: watch::Sender<bool>,
    last_used: Instant,
    ticket: Ticket,
}

impl Running {
    /// Tells the poller of `address` to stop and removes its series now; a poller started for
    /// the address before this one has exited keeps its own entry (see `Ticket`).
    fn stop(self, store: &crate::snapshot::SnapshotStore, address: String) {
        let _ = self.stop.send(true);
        store.forget(&(address, None), self.ticket);
    }
}

/// The nodes of `polling: on_scrape` targets, each with the clock `/scrape` sets to wake it.
#[derive(Debug)]
pub struct Wanted {
    nodes: Mutex<BTreeMap<NodeKey, Waker>>,
    /// `scrape_idle`: how long a woken node is polled after the last scrape that asked for it.
    idle: std::sync::RwLock<Duration>,
}

impl Default for Wanted {
    fn default() -> Self {
        Self {
            nodes: Mutex::default(),
            idle: std::sync::RwLock::new(crate::config::DEFAULT_SCRAPE_IDLE),
        }
    }
}

#[derive(Debug)]
struct Waker {
    /// `host:port` (compared without regard to case) or a socket path.
    address: String,
    ticket: Ticket,
    last_scrape: watch::Sender<Instant>,
}

/// A node's place in [`Wanted`], removed when dropped (unless a newer task took the node).
#[derive(Debug)]
pub struct Registration {
    wanted: Arc<Wanted>,
    key: NodeKey,
    ticket: Ticket,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut nodes = self.wanted.nodes();
        if nodes
            .get(&self.key)
            .is_some_and(|w| w.ticket == self.ticket)
        {
            nodes.remove(&self.key);
        }
    }
}

impl Wanted {
    fn nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeKey, Waker>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the node that the holder of `ticket` runs: the receiver changes at each
    /// scrape that asks for it.
    pub fn register(
        self: &Arc<Self>,
        key: NodeKey,
        address: &str,
        ticket: Ticket,
    ) -> (watch::Receiver<Instant>, Registration) {
        let (last_scrape, rx) = watch::channel(Instant::now());
        self.nodes().insert(
            key.clone(),
            Waker {
                address: address.to_owned(),
                ticket,
                last_scrape,
            },
        );
        let registration = Registration {
            wanted: self.clone(),
            key,
            ticket,
        };
        (rx, registration)
    }

    /// `scrape_idle` as configured now.
    pub fn idle(&self) -> Duration {
        *self.idle.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set_idle(&self, idle: Duration) {
        *self.idle.write().unwrap_or_else(|e| e.into_inner()) = idle;
    }

    /// Wakes the node of `key`, if registered.
    pub fn wake(&self, key: &NodeKey) {
        if let Some(w) = self.nodes().get(key) {
            w.last_scrape.send_replace(Instant::now());
        }
    }

    /// Wakes every node registered at `address`; returns their keys.
    pub fn wake_at(&self, address: &str) -> Vec<NodeKey> {
        let nodes = self.nodes();
        let now = Instant::now();
        let path = address.contains('/');
        nodes
            .iter()
            .filter(|(_, w)| {
                if path {
                    w.address == address
                } else {
                    w.address.eq_ignore_ascii_case(address)
                }
            })
            .map(|(key, w)| {
                w.last_scrape.send_replace(now);
                key.clone()
            })
            .collect()
    }
}

/// What the configuration says of on-demand polling; replaced whole on a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct OnDemandSettings {
    /// Some target is `polling: on_scrape` (then `/scrape` is on without allow-list entries).
    pub on_scrape_targets: bool,
    pub rules: Vec<AllowRule>,
    /// An on-demand poller not scraped for this long is stopped.
    pub idle: Duration,
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
}

/// The allow-list and the pollers it started.
pub struct OnDemand {
    ctx: PollContext,
    settings: std::sync::RwLock<Arc<OnDemandSettings>>,
    shutdown: watch::Receiver<bool>,
    running: Mutex<HashMap<String, Running>>,
}

impl OnDemand {
    pub fn new(
        ctx: PollContext,
        settings: OnDemandSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        ctx.wanted.set_idle(settings.idle);
        Arc::new(Self {
            ctx,
            settings: std::sync::RwLock::new(Arc::new(settings)),
            shutdown,
            running: Mutex::new(HashMap::new()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settings(&self) -> Arc<OnDemandSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes new settings (a configuration reload). When they differ, every on-demand poller
    /// stops (an entry's credentials or its hosts may have changed); the next scrape of an
    /// address still admitted starts it again. Returns how many stopped.
    pub fn reconfigure(&self, settings: OnDemandSettings) -> usize {
        {
            let mut current = self.settings.write().unwrap_or_else(|e| e.into_inner());
            if **current == settings {
                return 0;
            }
            self.ctx.wanted.set_idle(settings.idle);
            *current = Arc::new(settings);
        }
        let mut running = self.running();
        let stopped = running.len();
        for (address, r) in running.drain() {
            r.stop(&self.ctx.store, address);
        }
        stopped
    }

    /// Answers `/scrape?target=<requested>` within `deadline`.
    pub async fn scrape(&self, requested: &str, deadline: Duration) -> ScrapeAnswer {
        let settings = self.settings();
        if settings.rules.is_empty() && !settings.on_scrape_targets {
            return ScrapeAnswer::Disabled;
        }
        let store = &self.ctx.store;
        // An on-scrape target by name: its roll-up, or its configured node (woken), alone;
        // and where the name is an address (an unnamed target's), the nodes polled there too,
        // which /discovery lists under the same address.
        if store.any(|(target, _), e| target == requested && e.on_scrape) {
            let key = (requested.to_owned(), None);
            self.ctx.wanted.wake(&key);
            let mut at = self.wake_address(requested);
            at.retain(|k| *k != key);
            at.insert(0, key);
            return self.answer(at, deadline).await;
        }
        // A configured target's name (an on-demand poller's name, its address, is answered
        // below, once it has polled).
        if !self.running().contains_key(requested)
            && store.any(|(target, _), _| target == requested)
        {
            return self.render(|(target, _), _| target == requested);
        }
        // Nodes of on-scrape targets at that address: woken, and answered alone.
        let woken = self.wake_address(requested);
        if !woken.is_empty() {
            return self.answer(woken, deadline).await;
        }
        let Ok(url) = RedisUrl::parse(requested) else {
            return ScrapeAnswer::BadTarget("target must be a configured name or host:port".into());
        };
        // Sockets and other schemes are never polled on demand (a caller must not be able to
        // point us at a local socket).
        if !matches!(url.url().scheme(), "redis" | "rediss") {
            return ScrapeAnswer::Forbidden;
        }
        let (Some(host), Some(port)) = (url.url().host_str(), url.url().port().or(Some(6379)))
        else {
            return ScrapeAnswer::BadTarget("target must be host:port".into());
        };
        let Some(host) = crate::config::canonical_host(host) else {
            return ScrapeAnswer::BadTarget(
                "an IPv4 target must be written a.b.c.d in decimal, without leading zeros".into(),
            );
        };
        // Host names are case-insensitive: one poller per address however it is written.
        let address = url.address().to_ascii_lowercase();
        // An on-demand poller of this address answers below, once it has polled; anything else
        // already polled here is answered as it is: a configured target named like the address
        // (all its nodes), or the node polled at that address. Neither gets a second poller
        // (which would write into its entry with the allow-list's credentials).
        if !self.running().contains_key(&address) {
            if store.any(|(target, _), _| *target == address) {
                return self.render(|(target, _), _| *target == address);
            }
            // Every entry polled at that address: the node, and where the address is a
            // cluster's or replica set's configured one, the target's roll-up beside it (the
            // roll-up alone, first in the store's order, lost the node's own series). An
            // on-scrape target's roll-up is answered by its name only.
            let at_address = |e: &crate::snapshot::NodeEntry| {
                !e.on_scrape && e.address.eq_ignore_ascii_case(&address)
            };
            if store.any(|_, e| at_address(e)) {
                return self.render(|_, e| at_address(e));
            }
        }
        if let Some(refused) = self.start(&address, &host, port) {
            return refused;
        }
        self.answer(vec![(address, None)], deadline).await
    }

    /// Starts a poller for an allowed address unless one runs; the answer instead when the
    /// limit is reached or the address is not allowed.
    ///
    /// The allow-list is read here, once, under the lock of the running pollers: a reload
    /// swaps the settings and then, under that lock, stops every poller, so a poller started
    /// from the settings read here is either stopped by that reload or made from the new
    /// settings, never left running with an entry's old credentials.
    fn start(&self, address: &str, host: &str, port: u16) -> Option<ScrapeAnswer> {
        let mut running = self.running();
        if let Some(r) = running.get_mut(address) {
            r.last_used = Instant::now();
            return None;
        }
        let settings = self.settings();
        let Some(rule) = settings.rules.iter().find(|r| r.allows(host, port)) else {
            // Without an allow-list only on-scrape targets are answered: say what is missing.
            return Some(if settings.rules.is_empty() {
                ScrapeAnswer::UnknownNode
            } else {
                ScrapeAnswer::Forbidden
            });
        };
        if running.len() >= MAX_ON_DEMAND {
            return Some(ScrapeAnswer::TooMany);
        }
        let scheme = if rule.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        // Built from the address alone: nothing of the request but host and port is used.
        let Ok(url) = RedisUrl::parse(&format!("{scheme}://{address}")) else {
            return Some(ScrapeAnswer::BadTarget("target must be host:port".into()));
        };
        let target = Arc::new(Target {
            // The --tls-* flags (CA, client certificate, server name), as configured targets get.
            tls: rule.tls.clone().unwrap_or_default(),
            ..Target::plain(
                address.to_owned(),
                url,
                rule.username.clone(),
                rule.password.clone(),
                settings.poll_interval,
                settings.poll_timeout,
            )
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut global = self.shutdown.clone();
        let kind = crate::snapshot::EntryKind {
            on_demand: true,
            ..Default::default()
        };
        let ticket = self
            .ctx
            .store
            .declare((address.to_owned(), None), address.to_owned(), kind);
        let poller = NodePoller::declared(target, None, &self.ctx, ticket)
            .forget_on_exit()
            .scrape_waiting(&self.ctx);
        tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(poller.run(rx));
            tokio::select! {
                _ = stop_rx.changed() => {}
                _ = global.changed() => {}
            }
            let _ = tx.send(true);
            let _ = task.await;
        });
        tracing::info!(address, "on-demand poller started by /scrape");
        running.insert(
            address.to_owned(),
            Running {
                stop,
                last_used: Instant::now(),
                ticket,
            },
        );
        None
    }

    /// Answers the nodes of `keys` once each has a snapshot (a node just woken or started
    /// waits for its first poll), or at `deadline` those that have one.
    async fn answer(&self, keys: Vec<NodeKey>, deadline: Duration) -> ScrapeAnswer {
        let store = &self.ctx.store;
        let until = tokio::time::Instant::now() + deadline;
        store.wait_for_snapshots(&keys, until).await;
        if !keys.iter().any(|k| store.has_snapshot(k)) {
            return ScrapeAnswer::NotYetPolled;
        }
        self.render(|k, _| keys.contains(k))
    }

    /// The chosen nodes' latest snapshots, as the answer.
    fn render(
        &self,
        select: impl Fn(&NodeKey, &crate::snapshot::NodeEntry) -> bool,
    ) -> ScrapeAnswer {
        let mut out = String::new();
        self.ctx.store.render_into(&mut out, select);
        ScrapeAnswer::Metrics(out)
    }

    /// Wakes the on-scrape nodes at the address `requested` names, as `/discovery` lists it
    /// (`host:port` in any spelling a URL allows, or a socket's path); returns their keys.
    fn wake_address(&self, requested: &str) -> Vec<NodeKey> {
        match RedisUrl::parse(requested) {
            Ok(url) => self.ctx.wanted.wake_at(&url.address()),
            Err(_) => self.ctx.wanted.wake_at(requested),
        }
    }

    /// Stops on-demand pollers nobody scraped for `idle`; returns how many it stopped.
    pub fn expire_idle(&self) -> usize {
        let limit = self.settings().idle;
        let mut running = self.running();
        let idle: Vec<String> = running
            .iter()
            .filter(|(_, r)| r.last_used.elapsed() >= limit)
            .map(|(a, _)| a.clone())
            .collect();
        for address in &idle {
            if let Some(r) = running.remove(address) {
                r.stop(&self.ctx.store, address.clone());
            }
            tracing::info!(address = %address, "on-demand poller stopped: not scraped recently");
        }
        idle.len()
    }

    /// Runs `expire_idle` periodically until shutdown.
    pub async fn expire_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let every = (self.settings().idle / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(every) => { self.expire_idle(); }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
            }
        }
    }
}
