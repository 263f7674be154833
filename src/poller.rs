//! The poller: one task per Redis node, one persistent connection, one pipelined round trip per
//! poll, a deadline on the whole poll, and a whole snapshot swapped in at the end.
//!
//! Rhythm: a poll starts every `poll_interval`; a poll that overran delays the next one rather
//! than bursting to catch up. While the node is unreachable the poller also retries the
//! connection between polls with capped exponential backoff and jitter, and polls as soon as a
//! retry succeeds, so a restarted Redis shows `redis_up 1` without waiting for the next tick.

use crate::collector::{standard_set, Collector, Outcome};
use crate::config::{read_password, Target};
use crate::error::PollError;
use crate::metrics::{FamilySet, Kind};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::telemetry::Telemetry;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisResult, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout};

/// The client name redis-lookout's connections carry in `CLIENT LIST`.
pub const CLIENT_NAME: &str = "redis-lookout";
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The collector whose failure fails the whole poll.
const INFO: &str = "info";

/// Polls one node until shutdown.
pub struct NodePoller {
    target: Arc<Target>,
    node: Option<String>,
    /// The `node` label value for self-metrics ("" for the configured node itself).
    node_label: String,
    store: Arc<SnapshotStore>,
    telemetry: Telemetry,
    collectors: Vec<Box<dyn Collector>>,
    conn: Option<MultiplexedConnection>,
    failures: u32,
    was_up: Option<bool>,
    last_connect_seconds: f64,
}

impl NodePoller {
    pub fn new(
        target: Arc<Target>,
        node: Option<String>,
        store: Arc<SnapshotStore>,
        telemetry: Telemetry,
        config_refresh: Duration,
    ) -> Self {
        let node_label = node.clone().unwrap_or_default();
        telemetry.register_node(&target.name, &node_label);
        store.expect((target.name.clone(), node.clone()));
        Self {
            target,
            node,
            node_label,
            store,
            telemetry,
            collectors: standard_set(config_refresh),
            conn: None,
            failures: 0,
            was_up: None,
            last_connect_seconds: 0.0,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.target.poll_interval;
        let mut next_poll = tokio::time::Instant::now();
        let mut next_retry: Option<tokio::time::Instant> = None;
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
                match timeout(deadline, self.connect()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => {
                        self.conn = None;
                        next_retry = Some(now + self.retry_delay());
                        continue;
                    }
                }
            }
            self.poll_and_publish().await;
            let after = tokio::time::Instant::now();
            next_poll = if now >= next_poll {
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
        self.store
            .forget(&(self.target.name.clone(), self.node.clone()));
    }

    /// Capped exponential backoff with jitter: 250 ms, 500 ms, 1 s, … never past the interval.
    fn retry_delay(&self) -> Duration {
        let exp = FIRST_RETRY.saturating_mul(1u32 << self.failures.min(16));
        let capped = exp.min(self.target.poll_interval);
        let jitter: f64 = rand::rng().random_range(0.5..=1.0);
        capped.mul_f64(jitter)
    }

    /// Polls once within the deadline and publishes the snapshot.
    pub async fn poll_and_publish(&mut self) {
        let started = Instant::now();
        let (target, node) = (self.target.name.clone(), self.node_label.clone());
        self.telemetry
            .polls
            .with_label_values(&[&target, &node])
            .inc();
        let result = match timeout(self.target.poll_timeout, self.poll_once()).await {
            Ok(result) => result,
            Err(_) => {
                // A reply may still arrive on this connection; a fresh one keeps polls in step.
                self.conn = None;
                Err(PollError::Timeout)
            }
        };
        let duration = started.elapsed();
        self.telemetry
            .poll_duration
            .with_label_values(&[&target, &node])
            .observe(duration.as_secs_f64());
        let snapshot = match result {
            Ok((mut set, ping)) => {
                self.failures = 0;
                self.log_transition(true, None);
                let role = label_of(&set, "redis_instance_info", "role");
                let version = label_of(&set, "redis_instance_info", "redis_version");
                self.add_poll_facts(&mut set, duration, Some(ping), None);
                Snapshot {
                    target: target.clone(),
                    node: self.node.clone(),
                    families: set.render(&self.base_labels()),
                    up: true,
                    error: None,
                    polled_at: SystemTime::now(),
                    duration,
                    role,
                    version,
                }
            }
            Err(err) => {
                self.failures = self.failures.saturating_add(1);
                self.telemetry
                    .poll_errors
                    .with_label_values(&[&target, &node, err.label()])
                    .inc();
                self.log_transition(false, Some(&err));
                let mut set = FamilySet::new();
                self.add_poll_facts(&mut set, duration, None, Some(&err));
                Snapshot {
                    target: target.clone(),
                    node: self.node.clone(),
                    families: set.render(&self.base_labels()),
                    up: false,
                    error: Some(err),
                    polled_at: SystemTime::now(),
                    duration,
                    role: None,
                    version: None,
                }
            }
        };
        self.store.publish(snapshot);
    }

    fn base_labels(&self) -> Vec<(&'static str, String)> {
        let mut labels = vec![("target", self.target.name.clone())];
        if let Some(node) = &self.node {
            labels.push(("node", node.clone()));
        }
        labels
    }

    /// Down and back up are logged once each, not on every poll.
    fn log_transition(&mut self, up: bool, err: Option<&PollError>) {
        if self.was_up == Some(up) {
            return;
        }
        let first = self.was_up.is_none();
        self.was_up = Some(up);
        let target = &self.target.name;
        let address = self.target.url.address();
        match (up, err) {
            (true, _) if first => tracing::info!(target_name = %target, %address, "polling"),
            (true, _) => tracing::info!(target_name = %target, %address, "target is back up"),
            (false, Some(err)) => tracing::warn!(
                target_name = %target, %address, kind = err.label(), error = %err,
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
    }

    async fn connect(&mut self) -> Result<(), PollError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let password = read_password(&self.target).map_err(|msg| {
            tracing::warn!(target_name = %self.target.name, problem = %msg, "cannot read password");
            PollError::Auth
        })?;
        let mut info = self
            .target
            .url
            .url()
            .as_str()
            .into_connection_info()
            .map_err(|_| PollError::Protocol)?;
        let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
        if let Some(user) = &self.target.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(|e| PollError::from_redis(&e))?;
        let limit = self.target.poll_timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(Some(limit));
        self.telemetry
            .connections_opened
            .with_label_values(&[&self.target.name, &self.node_label])
            .inc();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| PollError::from_redis(&e))?;
        // The name shows operators which connection is ours; a server that refuses it still works.
        let _: RedisResult<Value> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(CLIENT_NAME)
            .query_async(&mut conn)
            .await;
        self.last_connect_seconds = started.elapsed().as_secs_f64();
        for collector in &mut self.collectors {
            collector.reset();
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Sends every collector's commands in one pipeline and lets each parse its replies.
    /// Returns the facts and the round-trip time of the pipeline.
    async fn poll_once(&mut self) -> Result<(FamilySet, Duration), PollError> {
        let had_connection = self.conn.is_some();
        self.connect().await?;
        let now = Instant::now();
        let mut spans = Vec::with_capacity(self.collectors.len());
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for collector in &mut self.collectors {
            let commands = collector.commands(now);
            spans.push(commands.len());
            for command in commands {
                pipe.add_command(command);
            }
        }
        let sent = Instant::now();
        let replies = match self.send(&pipe).await {
            Ok(replies) => replies,
            // The kept connection died (Redis restarted): one fresh try within this poll.
            Err(PollError::Connection | PollError::ConnectionRefused) if had_connection => {
                self.conn = None;
                self.connect().await?;
                for collector in &mut self.collectors {
                    collector.reset();
                }
                self.send(&pipe).await?
            }
            Err(err) => return Err(err),
        };
        let ping = sent.elapsed();
        if replies.len() != spans.iter().sum::<usize>() {
            return Err(PollError::Protocol);
        }
        let info_index = self.collectors.iter().position(|c| c.name() == INFO);
        let info_error = info_index
            .and_then(|i| replies.get(spans[..i].iter().sum::<usize>()))
            .and_then(|r| r.as_ref().err())
            .map(PollError::from_redis);

        let mut set = FamilySet::new();
        let mut replies = replies.into_iter();
        let mut outcomes = Vec::with_capacity(self.collectors.len());
        for (index, span) in spans.into_iter().enumerate() {
            let started = Instant::now();
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
            outcomes.push((self.collectors[index].name(), outcome, started.elapsed()));
        }
        for (name, outcome, took) in &outcomes {
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
            return Err(info_error.unwrap_or(PollError::Protocol));
        }
        Ok((set, ping))
    }

    async fn send(&mut self, pipe: &redis::Pipeline) -> Result<Vec<RedisResult<Value>>, PollError> {
        let conn = self.conn.as_mut().ok_or(PollError::Connection)?;
        match pipe.query_async::<Vec<RedisResult<Value>>>(conn).await {
            Ok(replies) => Ok(replies),
            Err(err) => {
                let kind = PollError::from_redis(&err);
                if matches!(
                    kind,
                    PollError::Connection | PollError::ConnectionRefused | PollError::Timeout
                ) {
                    self.conn = None;
                }
                Err(kind)
            }
        }
    }
}

/// Reads one label of the first sample of a family (role and version for the landing page).
fn label_of(set: &FamilySet, family: &str, label: &str) -> Option<String> {
    set.get(family)?
        .samples
        .first()?
        .labels
        .iter()
        .find(|(k, _)| *k == label)
        .map(|(_, v)| v.clone())
}
