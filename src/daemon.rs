//! Wiring: one poller task per target, the HTTP server, configuration reloads, and an orderly
//! stop.
//!
//! `run` takes the listener and the shutdown signal as parameters so tests run the whole daemon
//! in-process on port 0 and stop it when they like.
//!
//! A reload (`POST /-/reload`, SIGHUP) reads the configuration again from the same file, flags
//! and environment. If it is invalid nothing changes. Otherwise targets are compared by name:
//! a target whose settings are unchanged keeps its task and everything that task has built up
//! (connections, the offset history behind replica lag, the keyspace census); a new one starts;
//! a removed or changed one is stopped (a changed one then starts afresh). The `/scrape` allow-list
//! and its idle time are taken too, and so are alert thresholds and Alertmanagers. Settings that
//! only a restart can change (listen address, telemetry path, gzip, web config, logging,
//! turning alerting on or off, refresh periods) are reported, not applied.

use crate::alerts::alertmanager::{push_loop, PushTargets};
use crate::alerts::eval::{Evaluator, Observation};
use crate::collector::Refresh;
use crate::config::{Alerting, Config, ConfigError, Target};
use crate::http::{serve, AppState};
use crate::poller::PollContext;
use crate::scrape::{OnDemand, OnDemandSettings};
use crate::snapshot::{SnapshotStore, Ticket};
use crate::telemetry::Telemetry;
use crate::topology::{join_or_abort, run_target};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Reads the configuration again: the same file, flags and environment as at start.
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// How a running daemon may reload its configuration.
pub struct Reload {
    pub loader: Loader,
    /// Also on SIGHUP (the binary does; tests sharing one process must not).
    pub hangups: Option<Hangups>,
}

/// SIGHUPs, listened for from when this is made (before, one would end the process).
pub struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    /// Starts listening; within a Tokio runtime.
    pub fn listen() -> std::io::Result<Hangups> {
        Ok(Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    /// The next SIGHUP; None when no more can come.
    async fn next(&mut self) -> Option<()> {
        #[cfg(unix)]
        return self.signal.recv().await;
        #[cfg(not(unix))]
        std::future::pending().await
    }
}

/// How long a stopped target's task may take to finish before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(4);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot register the process metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("web config: {0}")]
    Web(String),
}

/// Runs until `shutdown` completes, then stops accepting, drains requests and stops pollers.
/// No reloading: `/-/reload` answers 404.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_with(config, None, listener, shutdown).await
}

/// [`run`], with configuration reloads when `reload` is given.
pub async fn run_with(
    config: Config,
    mut reload: Option<Reload>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let telemetry = Telemetry::new(config.process_metrics)?;
    let web = match &config.web {
        Some(w) => Some(Arc::new(
            crate::web_config::WebSecurity::new(w).map_err(DaemonError::Web)?,
        )),
        None => None,
    };
    let store = Arc::new(SnapshotStore::new());
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut ctx = PollContext::new(
        store.clone(),
        Refresh {
            config: config.config_refresh,
            command_stats: config.command_stats_refresh,
        },
    );
    let alerting = config.alerting.clone().map(|a| {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        ctx.observations = Some(tx);
        let evaluator = Arc::new(Mutex::new(Evaluator::new(
            a.rules.clone(),
            a.runbook_base_url.clone(),
        )));
        (a, rx, evaluator)
    });
    let mut background = Vec::new();
    let mut alerts = None;
    if let Some((a, rx, e)) = alerting {
        let changed = Arc::new(Notify::new());
        let (stale_tx, stale_rx) = watch::channel(stale_after(&config.targets));
        background.push(tokio::spawn(evaluate(
            e.clone(),
            rx,
            changed.clone(),
            telemetry.clone(),
            stale_rx,
            stop_rx.clone(),
        )));
        // Running with no Alertmanager too: a reload may add some.
        let (push_tx, push_rx) = watch::channel(push_targets(&a));
        background.push(tokio::spawn(push_loop(
            e.clone(),
            push_rx,
            changed,
            stop_rx.clone(),
        )));
        alerts = Some(AlertControl {
            evaluator: e,
            stale: stale_tx,
            push: push_tx,
        });
    }
    let evaluator = alerts.as_ref().map(|a| a.evaluator.clone());
    let mut fleet = Fleet {
        ctx: ctx.clone(),
        running: BTreeMap::new(),
    };
    fleet.apply(&config.targets, false);

    let on_demand = OnDemand::new(ctx.clone(), on_demand_settings(&config), stop_rx.clone());
    let expiry = tokio::spawn(on_demand.clone().expire_loop());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, targets = config.targets.len(), path = %config.telemetry_path, "serving");
    }
    let (telemetry_path, gzip) = (config.telemetry_path.clone(), config.gzip);
    let in_flight = (config.max_requests > 0)
        .then(|| Arc::new(tokio::sync::Semaphore::new(config.max_requests)));
    let reloader = Arc::new(Reloader {
        loader: reload.as_ref().map(|r| r.loader.clone()),
        current: tokio::sync::Mutex::new((config, fleet)),
        on_demand: on_demand.clone(),
        alerts,
        telemetry: telemetry.clone(),
    });
    if let Some(hangups) = reload.as_mut().and_then(|r| r.hangups.take()) {
        background.push(tokio::spawn(reload_on_sighup(
            hangups,
            reloader.clone(),
            stop_rx.clone(),
        )));
    }
    let state = Arc::new(AppState {
        store,
        telemetry,
        telemetry_path,
        gzip,
        in_flight,
        on_demand,
        alerts: evaluator,
        web,
        reloader: reload.is_some().then(|| reloader.clone()),
    });
    let server = tokio::spawn(serve(listener, state, stop_rx));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = expiry.await;
    for task in background {
        let _ = task.await;
    }
    reloader.current.lock().await.1.stop_all().await;
    Ok(())
}

/// How long a node may go unobserved before the evaluator resolves its alerts.
fn stale_after(targets: &[Target]) -> Duration {
    targets
        .iter()
        .map(|t| t.poll_interval)
        .max()
        .unwrap_or_default()
        * 3
        + Duration::from_secs(60)
}

fn push_targets(a: &Alerting) -> PushTargets {
    PushTargets {
        urls: a.alertmanagers.clone(),
        resend: a.resend_interval,
    }
}

/// The alerting tasks' settings a reload can change.
struct AlertControl {
    evaluator: Arc<Mutex<Evaluator>>,
    stale: watch::Sender<Duration>,
    push: watch::Sender<PushTargets>,
}

fn on_demand_settings(config: &Config) -> OnDemandSettings {
    OnDemandSettings {
        on_scrape_targets: config.targets.iter().any(|t| t.on_scrape),
        rules: config.scrape_allow.clone(),
        idle: config.scrape_idle,
        poll_interval: config.poll_interval,
        poll_timeout: config.poll_timeout,
    }
}

/// One configured target's task.
struct RunningTarget {
    target: Target,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The configured targets being polled, by name.
struct Fleet {
    ctx: PollContext,
    running: BTreeMap<String, RunningTarget>,
}

/// What a reload did to the targets.
#[derive(Debug, Default, PartialEq)]
pub struct FleetChanges {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl Fleet {
    /// Makes the running targets those of `targets`: unchanged ones keep their task. `reload`:
    /// log each target that starts or stops.
    fn apply(&mut self, targets: &[Target], reload: bool) -> FleetChanges {
        let mut changes = FleetChanges::default();
        // Whatever a stopped task leaves in the store was declared before this.
        let floor = self.ctx.store.next_ticket();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            match targets.iter().find(|t| t.name == name) {
                Some(t) if self.running[&name].target == *t => changes.unchanged += 1,
                other => {
                    if let Some(new) = other {
                        changes.changed += 1;
                        // The new task's node, declared now, before the old task is told to
                        // stop: the old one's last snapshot is served until the new one
                        // publishes, instead of the target vanishing from /metrics (and
                        // /-/ready failing) until its first poll, should the old task exit
                        // first. (Discovered nodes are declared again by the new view's first
                        // round.)
                        self.ctx.store.declare(
                            (name.clone(), None),
                            new.url.address(),
                            crate::topology::root_kind(new),
                        );
                    } else {
                        changes.removed += 1;
                    }
                    if let Some(old) = self.running.remove(&name) {
                        self.retire(name, old, floor);
                    }
                }
            }
        }
        for target in targets {
            if self.running.contains_key(&target.name) {
                continue;
            }
            if reload {
                tracing::info!(target_name = %target.name, "target starts");
            }
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(run_target(
                Arc::new(target.clone()),
                self.ctx.clone(),
                stop_rx,
            ));
            self.running.insert(
                target.name.clone(),
                RunningTarget {
                    target: target.clone(),
                    stop,
                    task,
                },
            );
        }
        changes.added = targets.len() - changes.changed - changes.unchanged;
        changes
    }

    /// Stops a target's task in the background; once it has ended (or been aborted past
    /// [`STOP_GRACE`]), removes what it left in the store, unless declared since `floor`.
    fn retire(&self, name: String, old: RunningTarget, floor: Ticket) {
        tracing::info!(target_name = %name, "target stops");
        let _ = old.stop.send(true);
        let store = self.ctx.store.clone();
        tokio::spawn(async move {
            join_or_abort(old.task, STOP_GRACE).await;
            store.forget_target_before(&name, floor);
        });
    }

    async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        for t in running.values() {
            let _ = t.stop.send(true);
        }
        for (_, t) in running {
            // (Children stop within 2 s.)
            join_or_abort(t.task, STOP_GRACE).await;
        }
    }
}

/// Applies configuration reloads, one at a time.
pub struct Reloader {
    loader: Option<Loader>,
    /// The configuration in effect (what a restart would change stays as it was at start)
    /// and the targets' tasks.
    current: tokio::sync::Mutex<(Config, Fleet)>,
    on_demand: Arc<OnDemand>,
    /// None when alerting is off (turning it on takes a restart).
    alerts: Option<AlertControl>,
    telemetry: Telemetry,
}

impl Reloader {
    /// Reads the configuration again and applies it; the text says what changed. An invalid
    /// configuration changes nothing, and the error names its file, line and column.
    pub async fn reload(&self) -> Result<String, String> {
        let Some(loader) = self.loader.clone() else {
            return Err("this process has no configuration source to reload".into());
        };
        let mut current = self.current.lock().await;
        let loaded = tokio::task::spawn_blocking(move || loader())
            .await
            .map_err(|e| format!("reading the configuration failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let new = match loaded {
            Ok(config) => config,
            Err(err) => {
                self.telemetry.reloaded(false);
                tracing::error!(error = %err, "configuration reload failed; the running configuration stays");
                return Err(err);
            }
        };
        let (config, fleet) = &mut *current;
        let changes = fleet.apply(&new.targets, true);
        let on_demand_stopped = self.on_demand.reconfigure(on_demand_settings(&new));
        let pending = restart_only_changes(config, &new);
        let mut alerting_applied = false;
        if let (Some(control), Some(running), Some(wanted)) =
            (&self.alerts, &config.alerting, &new.alerting)
        {
            if running != wanted {
                control
                    .evaluator
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reconfigure(wanted.rules.clone(), wanted.runbook_base_url.clone());
                control.push.send_replace(push_targets(wanted));
                config.alerting = new.alerting.clone();
                alerting_applied = true;
            }
        }
        if let Some(control) = &self.alerts {
            control.stale.send_replace(stale_after(&new.targets));
        }
        config.targets = new.targets;
        config.scrape_allow = new.scrape_allow;
        config.scrape_idle = new.scrape_idle;
        config.poll_interval = new.poll_interval;
        config.poll_timeout = new.poll_timeout;
        self.telemetry.reloaded(true);
        tracing::info!(
            added = changes.added,
            changed = changes.changed,
            removed = changes.removed,
            unchanged = changes.unchanged,
            on_demand_stopped,
            "configuration reloaded"
        );
        let mut text = format!(
            "configuration reloaded: {} target(s): {} added, {} changed, {} removed, {} unchanged\n",
            config.targets.len(),
            changes.added,
            changes.changed,
            changes.removed,
            changes.unchanged
        );
        if alerting_applied {
            text.push_str("alerting: thresholds and Alertmanagers applied\n");
        }
        if on_demand_stopped > 0 {
            text.push_str(&format!(
                "scrape_allow changed: {on_demand_stopped} on-demand poller(s) stopped\n"
            ));
        }
        if !pending.is_empty() {
            let list = pending.join(", ");
            tracing::warn!(settings = %list, "changed settings take effect after a restart");
            text.push_str(&format!("not applied until a restart: {list}\n"));
        }
        Ok(text)
    }
}

/// The settings a reload cannot apply that differ between `running` and `new`.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check("listen", running.listen != new.listen);
    check(
        "telemetry_path",
        running.telemetry_path != new.telemetry_path,
    );
    check("gzip", running.gzip != new.gzip);
    check("max_requests", running.max_requests != new.max_requests);
    check(
        "config_refresh",
        running.config_refresh != new.config_refresh,
    );
    check(
        "command_stats_refresh",
        running.command_stats_refresh != new.command_stats_refresh,
    );
    check("log_format", running.log_format != new.log_format);
    check("log_level", running.log_level != new.log_level);
    check(
        "alerting (turning it on or off)",
        running.alerting.is_some() != new.alerting.is_some(),
    );
    check("web config", running.web != new.web);
    out
}

/// Reloads on every SIGHUP until shutdown.
async fn reload_on_sighup(
    mut hangups: Hangups,
    reloader: Arc<Reloader>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            got = hangups.next() => {
                if got.is_none() { return; }
                tracing::info!("SIGHUP: reloading the configuration");
                // The outcome is logged by reload().
                let _ = reloader.reload().await;
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
            }
        }
    }
}

/// Feeds each poll's facts to the evaluator, wakes the pusher on changes, keeps the alert
/// gauges current, and resolves the alerts of nodes that stopped reporting.
async fn evaluate(
    evaluator: Arc<Mutex<Evaluator>>,
    mut observations: tokio::sync::mpsc::Receiver<Observation>,
    changed: Arc<Notify>,
    telemetry: Telemetry,
    stale: watch::Receiver<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut expiry = tokio::time::interval(Duration::from_secs(30));
    // The label sets of redis_lookout_alerts set last: the gauge is updated in place (a reset
    // and refill would let a concurrent scrape read it empty or half filled).
    let mut published: BTreeMap<[String; 3], i64> = BTreeMap::new();
    // The evaluator's revision when the counts were last taken.
    let mut counted = 0;
    loop {
        let changes = tokio::select! {
            obs = observations.recv() => match obs {
                Some(obs) => evaluator.lock().unwrap_or_else(|p| p.into_inner()).observe(&obs),
                None => break,
            },
            _ = expiry.tick() => evaluator
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .expire(std::time::Instant::now(), *stale.borrow()),
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
                continue;
            }
        };
        if !changes.fired.is_empty() || !changes.resolved.is_empty() {
            changed.notify_one();
        }
        let counts = {
            let e = evaluator.lock().unwrap_or_else(|p| p.into_inner());
            if e.revision() == counted {
                continue;
            }
            counted = e.revision();
            e.counts()
        };
        if counts == published {
            continue;
        }
        for gone in published.keys().filter(|k| !counts.contains_key(*k)) {
            let [name, severity, state] = gone;
            let _ = telemetry.alerts.remove_label_values(&[
                name.as_str(),
                severity.as_str(),
                state.as_str(),
            ]);
        }
        for ([name, severity, state], n) in &counts {
            telemetry
                .alerts
                .with_label_values(&[name.as_str(), severity.as_str(), state.as_str()])
                .set(*n);
        }
        published = counts;
    }
}
