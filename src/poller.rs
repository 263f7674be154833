//! The poller: one task per Redis node, one persistent connection, one pipelined round trip per
//! poll, a deadline on the whole poll, and a whole snapshot swapped in at the end.
//!
//! Rhythm: a poll starts every `poll_interval`; a poll that overran delays the next one rather
//! than bursting to catch up. While the node is unreachable the poller also retries the
//! connection between polls with capped exponential backoff and jitter, and polls as soon as a
//! retry succeeds, so a restarted Redis shows `redis_up 1` without waiting for the next tick.

use crate::alerts::eval::Observation;
use crate::collector::{standard_set, Collector, Outcome, Refresh};
use crate::config::Target;
use crate::error::{Failure, PollError};
use crate::metrics::{FamilySet, Histogram, Interner, Kind};
use crate::snapshot::{Snapshot, SnapshotStore, Ticket};
use rand::RngExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisResult, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, timeout};

/// The client name redis-lookout's connections carry in `CLIENT LIST`.
pub const CLIENT_NAME: &str = "redis-lookout";
pub(crate) const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Bucket bounds (seconds) of `redis_lookout_poll_duration_seconds`.
const POLL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The collector whose failure fails the whole poll.
const INFO: &str = "info";

/// What every poller of the process shares: where snapshots go, and the
/// limits that keep 1000 targets from opening 1000 connections or polls at the same instant.
#[derive(Clone)]
pub struct PollContext {
    pub store: Arc<SnapshotStore>,
    pub refresh: Refresh,
    pub interner: Arc<Interner>,
    /// Where each poll's facts go for the alert evaluator (None: alerting is off).
    pub observations: Option<mpsc::Sender<Observation>>,
    pub connects: Arc<Semaphore>,
    /// Slots for the first connect of a poller a scrape is waiting on (a woken on-scrape node,
    /// a new on-demand one). Unreachable nodes retrying their connects can keep every shared
    /// slot busy, and the queue behind them held such scrapes past their deadline.
    pub scrape_connects: Arc<Semaphore>,
    pub polls: Arc<Semaphore>,
    /// The nodes of `polling: on_scrape` targets, for `/scrape` to wake.
    pub wanted: Arc<crate::scrape::Wanted>,
}

/// Connections being opened at once, process-wide.
pub const MAX_CONCURRENT_CONNECTS: usize = 64;
/// Polls in flight at once, process-wide.
pub const MAX_CONCURRENT_POLLS: usize = 256;

impl PollContext {
    pub fn new(store: Arc<SnapshotStore>, refresh: Refresh) -> Self {
        Self {
            store,
            refresh,
            interner: Arc::new(Interner::default()),
            observations: None,
            connects: Arc::new(Semaphore::new(MAX_CONCURRENT_CONNECTS)),
            scrape_connects: Arc::new(Semaphore::new(MAX_CONCURRENT_CONNECTS)),
            polls: Arc::new(Semaphore::new(MAX_CONCURRENT_POLLS)),
            wanted: Arc::default(),
        }
    }
}

/// `redis_lookout_collector_refused{collector} 1`, published only while it is so.
fn refused_gauge(set: &mut FamilySet, collector: &str) {
    set.add(
        "redis_lookout_collector_refused",
        "1 while the server refuses the collector's command (renamed away, disabled, or not allowed to the ACL user); asked again at every config_refresh",
        Kind::Gauge,
        vec![("collector", collector.to_owned())],
        1.0,
    );
}

/// Polls one node until shutdown.
pub struct NodePoller {
    target: Arc<Target>,
    node: Option<String>,

    store: Arc<SnapshotStore>,
    /// This poller's claim on its node's entry in the store.
    ticket: Ticket,
    interner: Arc<Interner>,
    observations: Option<mpsc::Sender<Observation>>,
    connects: Arc<Semaphore>,
    /// Where the next connect takes its slot: `connects`, or for the first connect of a poller
    /// a scrape waits on, the context's `scrape_connects`.
    next_connects: Arc<Semaphore>,
    /// A connect slot taken before a deadline started (see `reserve_connect`).
    connect_slot: Option<OwnedSemaphorePermit>,
    polls: Arc<Semaphore>,
    collectors: Vec<Box<dyn Collector>>,
    /// Per collector: refused by the server, not asked again before this time.
    refused_until: Vec<Option<Instant>>,
    /// How long a refused collector waits before asking again (`config_refresh`).
    refusal_recheck: Duration,
    /// Per collector: a refusal was logged and the command has not worked since.
    refusal_said: Vec<bool>,
    conn: Option<MultiplexedConnection>,
    failures: u32,
    was_up: Option<bool>,
    /// The kind of failure last logged while down.
    down_kind: Option<PollError>,
    last_connect_seconds: f64,
    /// Counters kept across polls and published in every snapshot, so a scrape never encodes
    /// per-node series itself.
    polls_total: u64,
    errors_total: [u64; PollError::ALL.len()],
    connections_total: u64,
    durations: Histogram,
    /// Where the replicas this node lists are reported (set when the target follows replicas).
    replicas_out: Option<watch::Sender<Vec<String>>>,
    /// Figures another task keeps for this node (the keyspace sampler), merged into each
    /// successful poll's snapshot.
    extra_facts: Vec<crate::keyspace::SharedFacts>,
    /// When the last successful poll ended.
    last_success: Option<Instant>,
    /// Whether stopping removes the node's entry from the store.
    forget_on_exit: bool,
}

/// The least time after a node's last successful poll during which the in-process evaluator
/// holds that node's alerts through failed polls.
pub const HOLD_MIN: Duration = Duration::from_secs(30);

/// How long after a node's last successful poll failed polls leave its alerts as they stand
/// (see [`Observation::held_over`]): three intervals, at least [`HOLD_MIN`]. Without it one
/// timed-out poll resolved every alert of the node (memory, lag, keys without TTL) and
/// restarted its `for`. The exposition is not held: a failed poll serves `redis_up 0` and the
/// exporter's own metrics only, never old Redis values as if fresh.
pub fn hold_for(poll_interval: Duration) -> Duration {
    poll_interval.saturating_mul(3).max(HOLD_MIN)
}

impl NodePoller {
    pub fn new(target: Arc<Target>, node: Option<String>, ctx: &PollContext) -> Self {
        let ticket = ctx
            .store
            .expect((target.name.clone(), node.clone()), target.url.address());
        Self::declared(target, node, ctx, ticket).forget_on_exit()
    }

    /// A poller for a node its caller declared in the store (and holds `ticket` for). It
    /// leaves the node's entry in place when it stops (one made by `new` removes it).
    pub fn declared(
        target: Arc<Target>,
        node: Option<String>,
        ctx: &PollContext,
        ticket: Ticket,
    ) -> Self {
        let collectors = standard_set(ctx.refresh, target.expect.clone());
        let count = collectors.len();
        Self {
            target,
            node,
            ticket,

            store: ctx.store.clone(),
            interner: ctx.interner.clone(),
            observations: ctx.observations.clone(),

            connects: ctx.connects.clone(),
            next_connects: ctx.connects.clone(),
            connect_slot: None,
            polls: ctx.polls.clone(),
            collectors,
            refused_until: vec![None; count],
            refusal_recheck: ctx.refresh.config,
            refusal_said: vec![false; count],
            conn: None,
            failures: 0,
            was_up: None,
            down_kind: None,
            last_connect_seconds: 0.0,
            polls_total: 0,
            errors_total: [0; PollError::ALL.len()],
            connections_total: 0,
            durations: Histogram::new(POLL_BUCKETS),
            replicas_out: None,
            extra_facts: Vec::new(),
            last_success: None,
            forget_on_exit: false,
        }
    }

    /// A scrape waits for this poller's first poll: its first connect takes a slot apart from
    /// the other pollers' (see [`PollContext::scrape_connects`]).
    pub fn scrape_waiting(mut self, ctx: &PollContext) -> Self {
        self.next_connects = ctx.scrape_connects.clone();
        self
    }

    /// Refusals already logged, by collector (see [`NodePoller::with_refusals_said`]).
    pub fn refusals_said(&self) -> Vec<bool> {
        self.refusal_said.clone()
    }

    /// Takes over which refusals a previous poller of the node logged, so that a command the
    /// server still refuses is not warned of again (a woken on-scrape node).
    pub fn with_refusals_said(mut self, said: Vec<bool>) -> Self {
        if said.len() == self.refusal_said.len() {
            self.refusal_said = said;
        }
        self
    }

    /// Removes the node's entry (its series) when the poller stops.
    pub fn forget_on_exit(mut self) -> Self {
        self.forget_on_exit = true;
        self
    }

    /// Merges `facts` (kept up to date elsewhere) into every successful poll's snapshot.
    pub fn with_extra_facts(mut self, facts: crate::keyspace::SharedFacts) -> Self {
        self.extra_facts.push(facts);
        self
    }

    /// Reports the replicas listed in each successful poll's INFO to `tx`.
    pub fn report_replicas(mut self, tx: watch::Sender<Vec<String>>) -> Self {
        self.replicas_out = Some(tx);
        self
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        self.poll_until(shutdown).await;
        if self.forget_on_exit {
            self.store
                .forget(&(self.target.name.clone(), self.node.clone()), self.ticket);
        }
    }

    /// Polls (the first time at once) until `shutdown` turns true.
    pub async fn poll_until(&mut self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.target.poll_interval;
        let mut next_poll = tokio::time::Instant::now();
        let mut next_retry: Option<tokio::time::Instant> = None;
        let mut first = true;
        loop {
            let wake = match next_retry {
                Some(retry) if retry < next_poll => retry,
                _ => next_poll,
            };
            tokio::select! {
                _ = sleep_until(wake) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            let now = tokio::time::Instant::now();
            if now < next_poll {
                // A reconnect attempt between polls; on success, poll at once.
                let deadline = self.target.poll_timeout;
                self.reserve_connect().await;
                // Boxed here and below: a thousand idle pollers then hold only the small state
                // of this loop, and the big one of a poll exists while a poll runs.
                match timeout(deadline, Box::pin(self.connect())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => {
                        // Each failed attempt lengthens the next wait (up to the interval),
                        // counted from its end: an address that drops packets would otherwise
                        // hold a connect slot most of the time (a 3 s attempt, then a wait of
                        // 2.5-5 s counted from its start), and with many such targets the
                        // healthy ones' reconnects queue behind them.
                        self.conn = None;
                        self.failures = self.failures.saturating_add(1);
                        next_retry = Some(tokio::time::Instant::now() + self.retry_delay());
                        continue;
                    }
                }
            }
            Box::pin(self.poll_and_publish()).await;
            let after = tokio::time::Instant::now();
            next_poll = if std::mem::take(&mut first) {
                // Every node polls at once at start-up (so `redis_up` is known quickly); the
                // second poll is shifted by a per-node phase so that many nodes spread over the
                // interval instead of polling in one burst forever after.
                now + interval + interval.mul_f64(self.phase())
            } else if now >= next_poll {
                let scheduled = next_poll + interval;
                if scheduled <= after {
                    after + interval
                } else {
                    scheduled
                }
            } else {
                after + interval
            };
            next_retry = if self.conn.is_none() {
                Some(after + self.retry_delay())
            } else {
                None
            };
        }
    }

    /// The claim on this node's store entry (what a controller that stops this poller needs to
    /// forget the node's series at once).
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }

    /// This node's place in the interval, in [0, 1): the same for a (target, node) pair in a
    /// given build, so a restart keeps the rhythm, and spread evenly over many pairs.
    fn phase(&self) -> f64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.target.name.hash(&mut hasher);
        self.node.hash(&mut hasher);
        (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Capped exponential backoff with jitter: 250 ms, 500 ms, 1 s, … never past the interval.
    fn retry_delay(&self) -> Duration {
        let exp = FIRST_RETRY.saturating_mul(1u32 << self.failures.min(16));
        let capped = exp.min(self.target.poll_interval);
        let jitter: f64 = rand::rng().random_range(0.5..=1.0);
        capped.mul_f64(jitter)
    }

    /// Polls once within the deadline, for a one-shot caller (`check`): the facts, or why not.
    pub async fn poll_facts(&mut self) -> Result<FamilySet, Failure> {
        match timeout(self.target.poll_timeout, self.poll_once()).await {
            Ok(result) => result.map(|(set, _)| set),
            Err(_) => Err(PollError::Timeout.into()),
        }
    }

    /// Polls once within the deadline and publishes the snapshot.
    pub async fn poll_and_publish(&mut self) {
        let started = Instant::now();
        self.polls_total += 1;
        // The connect slot first: a poller queued for one (behind connects to hosts that drop
        // packets, each holding its slot up to poll_timeout) must not sit on a poll permit
        // meanwhile, or enough unreachable nodes would starve the pollers of healthy ones,
        // which need no connect slot at all.
        self.reserve_connect().await;
        let polls = self.polls.clone();
        let _permit = polls.acquire().await;
        let result = match timeout(self.target.poll_timeout, self.poll_once()).await {
            Ok(result) => result,
            Err(_) => {
                // A reply may still arrive on this connection; a fresh one keeps polls in step.
                self.conn = None;
                Err(Failure::from(PollError::Timeout))
            }
        };
        let duration = started.elapsed();
        self.durations.observe(duration.as_secs_f64());
        let (mut set, ping, error) = match result {
            Ok((set, ping)) => {
                self.failures = 0;
                if let Some(tx) = &self.replicas_out {
                    report_replicas(tx, replica_addresses(&set));
                }
                self.log_transition(true, None);
                let mut set = set;
                for extra in &self.extra_facts {
                    set.merge(extra.lock().unwrap_or_else(|p| p.into_inner()).clone());
                }
                (set, Some(ping), None)
            }
            Err(failure) => {
                self.failures = self.failures.saturating_add(1);
                if let Some(i) = PollError::ALL.iter().position(|k| *k == failure.kind) {
                    self.errors_total[i] += 1;
                }
                self.log_transition(false, Some(&failure));
                (FamilySet::new(), None, Some(failure.kind))
            }
        };
        tracing::debug!(
            target_name = %self.target.name,
            node = self.node.as_deref().unwrap_or(""),
            took_ms = duration.as_secs_f64() * 1000.0,
            families = set.len(),
            error = error.as_ref().map_or("", |e| e.label()),
            "polled"
        );
        self.add_poll_facts(&mut set, duration, ping, error.as_ref());
        let snapshot = Snapshot {
            target: self.target.name.clone(),
            node: self.node.clone(),
            families: set.render(
                &self.target.base_labels(self.node.as_deref()),
                &self.interner,
            ),
            up: error.is_none(),
            role: set
                .label_of("redis_instance_info", "role")
                .map(str::to_owned),
            version: set
                .label_of("redis_instance_info", "redis_version")
                .map(str::to_owned),
            error,
            polled_at: SystemTime::now(),
            duration,
        };
        let up = snapshot.up;
        self.store.publish(self.ticket, snapshot);
        let now = Instant::now();
        let held_over = !up
            && self
                .last_success
                .is_some_and(|at| now.duration_since(at) <= hold_for(self.target.poll_interval));
        if up {
            self.last_success = Some(now);
        }
        if let Some(tx) = &self.observations {
            // Never wait on the evaluator: a full queue drops this poll's facts for alerting.
            let _ = tx.try_send(Observation {
                key: (self.target.name.clone(), self.node.clone()),
                at: now,
                facts: Arc::new(set),
                held_over,
                labels: self.target.labels.clone(),
            });
        }
    }

    /// Down and back up are logged once each, not on every poll; while down, again only when
    /// the kind of failure changes (refused, then timing out, then a wrong password). The line
    /// carries Redis' or the system's own words: `kind` alone sent operators to rotate a
    /// password that was fine when the user lacked a permission.
    fn log_transition(&mut self, up: bool, err: Option<&Failure>) {
        let kind = err.map(|e| e.kind.clone());
        if self.was_up == Some(up) && (up || self.down_kind == kind) {
            return;
        }
        let first = self.was_up.is_none();
        let still_down = self.was_up == Some(false);
        self.was_up = Some(up);
        self.down_kind = if up { None } else { kind };
        let target = &self.target.name;
        let address = self.target.url.address();
        let node = self.node.as_deref().unwrap_or("");
        match (up, err) {
            (true, _) if first => tracing::info!(target_name = %target, %address, node, "polling"),
            (true, _) => tracing::info!(target_name = %target, %address, node, "target is back up"),
            (false, Some(err)) if still_down => tracing::warn!(
                target_name = %target, %address, node, kind = err.label(), error = %err,
                "target is still down, now for another reason; will keep retrying"
            ),
            (false, Some(err)) => tracing::warn!(
                target_name = %target, %address, node, kind = err.label(), error = %err,
                "target is down; will keep retrying"
            ),
            (false, None) => {}
        }
    }

    /// The per-poll self facts redis_exporter users know (`redis_up`, last scrape duration, …)
    /// plus which collectors worked.
    fn add_poll_facts(
        &self,
        set: &mut FamilySet,
        duration: Duration,
        ping: Option<Duration>,
        err: Option<&PollError>,
    ) {
        set.gauge(
            "redis_up",
            "Information about the Redis instance",
            if err.is_none() { 1.0 } else { 0.0 },
        );
        set.gauge(
            "redis_exporter_last_scrape_duration_seconds",
            "The last poll duration (connect if needed, round trip, parsing)",
            duration.as_secs_f64(),
        );
        set.add(
            "redis_exporter_last_scrape_error",
            "The last poll error status: 1 with err set to a fixed kind when the last poll failed",
            Kind::Gauge,
            vec![("err", err.map_or("", |e| e.label()).to_owned())],
            if err.is_some() { 1.0 } else { 0.0 },
        );
        set.gauge(
            "redis_exporter_last_scrape_connect_time_seconds",
            "How long the last connection to Redis took to open (connections persist across polls)",
            self.last_connect_seconds,
        );
        if let Some(ping) = ping {
            set.gauge(
                "redis_exporter_last_scrape_ping_time_seconds",
                "Round-trip time of the poll's pipelined commands, as seen by the exporter",
                ping.as_secs_f64(),
            );
        }
        set.add(
            "redis_lookout_polls_total",
            "Polls attempted",
            Kind::Counter,
            Vec::new(),
            self.polls_total as f64,
        );
        for (kind, count) in PollError::ALL.iter().zip(self.errors_total) {
            set.add(
                "redis_lookout_poll_errors_total",
                "Polls that failed, by a fixed kind (timeout, connection_refused, connection, auth, tls, loading, server, protocol)",
                Kind::Counter,
                vec![("kind", kind.label().to_owned())],
                count as f64,
            );
        }
        set.add(
            "redis_lookout_connections_opened_total",
            "Connections opened to Redis; flat in steady state (one persistent connection per node)",
            Kind::Counter,
            Vec::new(),
            self.connections_total as f64,
        );
        self.durations.publish(
            set,
            "redis_lookout_poll_duration_seconds",
            "Wall time of whole polls (connect if needed, one pipelined round trip, parsing)",
        );
    }

    /// Waits for a connect slot if a connection will be needed, before the caller starts its
    /// deadline: time spent queued behind this process' other connects (a thousand targets at
    /// start-up) is not the target's slowness and must not turn into a poll timeout.
    async fn reserve_connect(&mut self) {
        if self.conn.is_none() && self.connect_slot.is_none() {
            self.connect_slot = self.next_connects.clone().acquire_owned().await.ok();
        }
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        if self.conn.is_some() {
            return Ok(());
        }
        let _permit = match self.connect_slot.take() {
            Some(slot) => Some(slot),
            None => self.next_connects.clone().acquire_owned().await.ok(),
        };
        // Only the first connect is one a scrape waits on.
        self.next_connects = self.connects.clone();
        let started = Instant::now();
        self.connections_total += 1;
        tracing::debug!(target_name = %self.target.name, url = %self.target.url, "connecting");
        let conn = open_connection(&self.target, &self.target.url).await?;
        self.last_connect_seconds = started.elapsed().as_secs_f64();
        // A new connection learns the server afresh, refused commands included.
        for collector in &mut self.collectors {
            collector.reset();
        }
        self.refused_until.fill(None);
        self.conn = Some(conn);
        Ok(())
    }

    /// Sends every collector's commands in one pipeline and lets each parse its replies.
    /// Returns the facts and the round-trip time of the pipeline.
    async fn poll_once(&mut self) -> Result<(FamilySet, Duration), Failure> {
        let had_connection = self.conn.is_some();
        self.connect().await?;
        let now = Instant::now();
        let (mut pipe, mut spans) = self.pipeline(now);
        let mut sent = Instant::now();
        let replies = match self.send(&pipe).await {
            Ok(replies) => replies,
            // The kept connection died (Redis restarted): one fresh try within this poll.
            Err(f)
                if had_connection
                    && matches!(f.kind, PollError::Connection | PollError::ConnectionRefused) =>
            {
                self.conn = None;
                self.connect().await?;
                // Asked afresh: what the collectors chose for the old connection (cached
                // command stats and CONFIG values not due yet) belongs to the process that
                // went away.
                (pipe, spans) = self.pipeline(now);
                sent = Instant::now();
                self.send(&pipe).await?
            }
            Err(err) => return Err(err),
        };
        let ping = sent.elapsed();
        if replies.len() != spans.iter().sum::<usize>() {
            return Err(PollError::Protocol.into());
        }
        let info_index = self.collectors.iter().position(|c| c.name() == INFO);
        let info_error = info_index
            .and_then(|i| replies.get(spans[..i].iter().sum::<usize>()))
            .and_then(|r| r.as_ref().err())
            .map(Failure::redis);

        let mut set = FamilySet::new();
        let mut replies = replies.into_iter();
        let mut outcomes = Vec::with_capacity(self.collectors.len());
        for (index, span) in spans.into_iter().enumerate() {
            let started = Instant::now();
            if self.refused_until[index].is_some() {
                // Not asked this poll (refused before): nothing to read, nothing learned.
                refused_gauge(&mut set, self.collectors[index].name());
                outcomes.push((
                    self.collectors[index].name(),
                    Outcome::NoData,
                    started.elapsed(),
                ));
                continue;
            }
            let mine: Vec<RedisResult<Value>> = replies.by_ref().take(span).collect();
            let mut outcome = self.collectors[index].collect(mine, &mut set);
            for _ in 0..2 {
                let Outcome::FollowUp(commands) = outcome else {
                    break;
                };
                let mut follow = redis::pipe();
                follow.ignore_errors();
                for command in commands {
                    follow.add_command(command);
                }
                let replies = self.send(&follow).await?;
                outcome = self.collectors[index].collect(replies, &mut set);
            }
            let name = self.collectors[index].name();
            match &outcome {
                Outcome::Refused(why) => {
                    refused_gauge(&mut set, name);
                    self.refused_until[index] = Some(now + self.refusal_recheck);
                    if !std::mem::replace(&mut self.refusal_said[index], true) {
                        tracing::warn!(
                            target_name = %self.target.name,
                            node = self.node.as_deref().unwrap_or(""),
                            collector = name,
                            reply = %why,
                            "Redis refused a collector's command; its figures are missing until it is allowed (asked again at every config_refresh)"
                        );
                    }
                }
                Outcome::Collected if std::mem::take(&mut self.refusal_said[index]) => {
                    tracing::info!(
                        target_name = %self.target.name,
                        node = self.node.as_deref().unwrap_or(""),
                        collector = name,
                        "a collector's command works again"
                    );
                }
                _ => {}
            }
            outcomes.push((name, outcome, started.elapsed()));
        }
        for (name, outcome, took) in &outcomes {
            if *outcome == Outcome::NotApplicable {
                continue;
            }
            let failed = matches!(outcome, Outcome::Failed(_) | Outcome::FollowUp(_));
            if let Outcome::Failed(why) = outcome {
                tracing::debug!(target_name = %self.target.name, collector = name, why = %why, "collector failed");
            }
            set.add(
                "redis_lookout_collector_success",
                "Whether the collector's replies were understood in the last poll (no data counts as success)",
                Kind::Gauge,
                vec![("collector", (*name).to_owned())],
                if failed { 0.0 } else { 1.0 },
            );
            set.add(
                "redis_lookout_collector_duration_seconds",
                "Time spent in the collector in the last poll: parsing, plus any follow-up round trip",
                Kind::Gauge,
                vec![("collector", (*name).to_owned())],
                took.as_secs_f64(),
            );
        }
        // INFO is the liveness signal: without it there is no meaningful snapshot.
        if outcomes
            .iter()
            .any(|(name, outcome, _)| *name == INFO && matches!(outcome, Outcome::Failed(_)))
        {
            return Err(info_error.unwrap_or_else(|| PollError::Protocol.into()));
        }
        Ok((set, ping))
    }

    /// Every collector's commands for this poll in one pipeline, and how many each sent.
    fn pipeline(&mut self, now: Instant) -> (redis::Pipeline, Vec<usize>) {
        let mut spans = Vec::with_capacity(self.collectors.len());
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (collector, refused) in self.collectors.iter_mut().zip(&mut self.refused_until) {
            match *refused {
                Some(until) if now < until => {
                    spans.push(0);
                    continue;
                }
                // Time to try the refused command again.
                Some(_) => {
                    *refused = None;
                    collector.reset();
                }
                None => {}
            }
            let commands = collector.commands(now);
            spans.push(commands.len());
            for command in commands {
                pipe.add_command(command);
            }
        }
        (pipe, spans)
    }

    async fn send(&mut self, pipe: &redis::Pipeline) -> Result<Vec<RedisResult<Value>>, Failure> {
        let conn = self.conn.as_mut().ok_or(PollError::Connection)?;
        match pipe.query_async::<Vec<RedisResult<Value>>>(conn).await {
            Ok(replies) => Ok(replies),
            Err(err) => {
                let failure = Failure::redis(&err);
                if matches!(
                    failure.kind,
                    PollError::Connection | PollError::ConnectionRefused | PollError::Timeout
                ) {
                    self.conn = None;
                }
                Err(failure)
            }
        }
    }
}

/// Opens a connection to `url` with the target's credentials and timeouts, named
/// `redis-lookout` in `CLIENT LIST`. Used by node pollers and the cluster view alike.
pub async fn open_connection(
    target: &Target,
    url: &crate::config::RedisUrl,
) -> Result<MultiplexedConnection, Failure> {
    let client = client_for(target, url)?;
    let limit = target.poll_timeout;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(limit));
    let mut conn = if url.is_tls() {
        let settings = client.get_connection_info().redis_settings();
        open_tls(target, url, settings, config).await?
    } else {
        match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(err) if err.kind() == redis::ErrorKind::AuthenticationFailed => {
                return Err(refusal_behind_auth(url, &config, &err).await)
            }
            Err(err) => return Err(Failure::redis(&err)),
        }
    };
    // The name shows operators which connection is ours; a server that refuses the command
    // (an ACL, a rename) still works. Any other error is the server turning the connection
    // down at once (maxclients reached, protected mode): said as such, with its words.
    let named: RedisResult<Value> = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(CLIENT_NAME)
        .query_async(&mut conn)
        .await;
    match named {
        Err(err) if !crate::collector::is_unavailable(&err) => Err(Failure::redis(&err)),
        _ => Ok(conn),
    }
}

/// An AUTH that failed may not be about the password at all: a server at `maxclients`, or in
/// protected mode, greets every new connection with an error and closes it, and redis-rs reports
/// whatever answered its AUTH as "authentication failed" (an operator would rotate a password
/// that is fine). One connection without credentials tells: an error other than NOAUTH/NOPERM
/// to its first command is the server's real answer, and is what the failure says.
async fn refusal_behind_auth(
    url: &crate::config::RedisUrl,
    config: &AsyncConnectionConfig,
    auth_error: &redis::RedisError,
) -> Failure {
    let mut bare = url.url().clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    // No handshake command of redis-rs' own either: it would take the greeting and drop it.
    let Ok(mut info) = bare.as_str().into_connection_info() else {
        return Failure::redis(auth_error);
    };
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    info = info.set_redis_settings(settings);
    let Ok(client) = redis::Client::open(info) else {
        return Failure::redis(auth_error);
    };
    let answer = match client
        .get_multiplexed_async_connection_with_config(config)
        .await
    {
        Ok(mut conn) => redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(CLIENT_NAME)
            .query_async::<Value>(&mut conn)
            .await
            .err(),
        Err(err) => Some(err),
    };
    // NOAUTH, WRONGPASS, NOPERM (the server asks for other credentials) or a dropped
    // connection say nothing new.
    match answer.map(|err| Failure::redis(&err)) {
        Some(f)
            if !matches!(
                f.kind,
                PollError::Auth
                    | PollError::Connection
                    | PollError::ConnectionRefused
                    | PollError::Timeout
            ) =>
        {
            f
        }
        _ => Failure::redis(auth_error),
    }
}

/// A client for `url` with the target's credentials (read now, so a rotated password file is
/// picked up on the next connection).
pub fn client_for(
    target: &Target,
    url: &crate::config::RedisUrl,
) -> Result<redis::Client, PollError> {
    let password = crate::config::read_password_at(target, url).map_err(|msg| {
        tracing::warn!(target_name = %target.name, problem = %msg, "cannot read password");
        PollError::Auth
    })?;
    let mut info = url
        .url()
        .as_str()
        .into_connection_info()
        .map_err(|_| PollError::Protocol)?;
    let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
    if let Some(user) = &target.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &password {
        settings = settings.set_password(password.expose());
    }
    info = info.set_redis_settings(settings);
    redis::Client::open(info).map_err(|e| PollError::from_redis(&e))
}

/// A `rediss://` connection: TCP, then our own TLS handshake with the target's settings, then
/// redis-rs on the encrypted stream (AUTH, SELECT). Any failure of the handshake, or of the
/// session right after it, is `PollError::Tls`: with TLS 1.3 a server that refuses our client
/// certificate says so only once the handshake has finished on our side.
async fn open_tls(
    target: &Target,
    url: &crate::config::RedisUrl,
    settings: &redis::RedisConnectionInfo,
    config: AsyncConnectionConfig,
) -> Result<MultiplexedConnection, PollError> {
    let tls_problem = |what: &str, problem: &dyn std::fmt::Display| {
        tracing::warn!(target_name = %target.name, address = %url.address(), %problem, "{what}");
        PollError::Tls
    };
    let host = url.url().host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.url().port().unwrap_or(6379);
    let client_config = target
        .tls
        .client_config()
        .map_err(|e| tls_problem("TLS settings unusable", &e))?;
    let server_name = target
        .tls
        .server_name_for(host)
        .map_err(|e| tls_problem("TLS server name unusable", &e))?;
    let limit = target.poll_timeout;
    let tcp = match timeout(limit, tokio::net::TcpStream::connect((host, port))).await {
        Err(_) => return Err(PollError::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(PollError::ConnectionRefused)
        }
        Ok(Err(_)) => return Err(PollError::Connection),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let stream = match timeout(limit, connector.connect(server_name, tcp)).await {
        Err(_) => return Err(PollError::Timeout),
        Ok(Err(e)) => return Err(tls_problem("TLS handshake failed", &e)),
        Ok(Ok(stream)) => stream,
    };
    let opened = timeout(
        limit,
        MultiplexedConnection::new_with_config(settings, stream, config),
    )
    .await
    .map_err(|_| PollError::Timeout)?;
    let (mut conn, driver) = opened.map_err(|e| tls_session_error(target, url, Some(&e)))?;
    tokio::spawn(driver);
    // One round trip now, so a session the server ends at once (a refused client certificate)
    // fails here, as a TLS error, and not later as a dropped connection.
    // A reply of any kind, even an error (PING refused by an ACL), proves the session works.
    let probe: RedisResult<Value> = redis::cmd("PING").query_async(&mut conn).await;
    match probe.as_ref().map_err(PollError::from_redis) {
        Ok(_) | Err(PollError::Server | PollError::Auth | PollError::Loading) => Ok(conn),
        Err(PollError::Timeout) => Err(PollError::Timeout),
        Err(_) => Err(tls_session_error(target, url, probe.err().as_ref())),
    }
}

/// Classifies an error on a fresh TLS session: connection-level failures are the TLS layer's.
fn tls_session_error(
    target: &Target,
    url: &crate::config::RedisUrl,
    err: Option<&redis::RedisError>,
) -> PollError {
    let Some(err) = err else {
        return PollError::Tls;
    };
    match PollError::from_redis(err) {
        PollError::Connection | PollError::ConnectionRefused | PollError::Tls => {
            tracing::warn!(
                target_name = %target.name, address = %url.address(), problem = %err,
                "TLS session ended by the server right after the handshake (client certificate refused?)"
            );
            PollError::Tls
        }
        other => other,
    }
}

/// Tells `tx` the replicas a master lists now (sorted), waking its reader only on a change.
pub(crate) fn report_replicas(tx: &watch::Sender<Vec<String>>, replicas: Vec<String>) {
    tx.send_if_modified(|known| {
        let changed = *known != replicas;
        *known = replicas;
        changed
    });
}

/// The `ip:port` of each replica a master lists (from the facts of one poll).
fn replica_addresses(set: &FamilySet) -> Vec<String> {
    let Some(family) = set.get("redis_connected_slave_offset_bytes") else {
        return Vec::new();
    };
    let mut out: Vec<String> = family
        .samples
        .iter()
        .filter_map(|s| {
            let get = |k: &str| {
                s.labels
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.as_str())
            };
            let (ip, port) = (get("slave_ip")?, get("slave_port")?);
            Some(crate::collector::info::replica_address(ip, port))
        })
        .collect();
    out.sort();
    out
}
