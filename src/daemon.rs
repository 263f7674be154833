//! Wiring: one poller task per target, the HTTP server, and an orderly stop.
//!
//! `run` takes the listener and the shutdown signal as parameters so tests run the whole daemon
//! in-process on port 0 and stop it when they like.

use crate::alerts::alertmanager::push_loop;
use crate::alerts::eval::{Evaluator, Observation, State};
use crate::collector::Refresh;
use crate::config::Config;
use crate::http::{serve, AppState};
use crate::poller::PollContext;
use crate::scrape::OnDemand;
use crate::snapshot::SnapshotStore;
use crate::telemetry::Telemetry;
use crate::topology::run_target;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot register the process metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("web config: {0}")]
    Web(String),
}

/// Runs until `shutdown` completes, then stops accepting, drains requests and stops pollers.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let telemetry = Telemetry::new()?;
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
    let mut evaluator = None;
    if let Some((a, rx, e)) = alerting {
        let changed = Arc::new(Notify::new());
        let stale = config
            .targets
            .iter()
            .map(|t| t.poll_interval)
            .max()
            .unwrap_or_default()
            * 3
            + Duration::from_secs(60);
        background.push(tokio::spawn(evaluate(
            e.clone(),
            rx,
            changed.clone(),
            telemetry.clone(),
            stale,
            stop_rx.clone(),
        )));
        if !a.alertmanagers.is_empty() {
            background.push(tokio::spawn(push_loop(
                e.clone(),
                a.alertmanagers,
                a.resend_interval,
                changed,
                stop_rx.clone(),
            )));
        }
        evaluator = Some(e);
    }
    let mut pollers = Vec::with_capacity(config.targets.len());
    for target in &config.targets {
        let task = run_target(Arc::new(target.clone()), ctx.clone(), stop_rx.clone());
        pollers.push(tokio::spawn(task));
    }

    let on_demand = OnDemand::new(
        ctx.clone(),
        config.scrape_allow.clone(),
        config.scrape_idle,
        config.poll_interval,
        config.poll_timeout,
        stop_rx.clone(),
    );
    let expiry = tokio::spawn(on_demand.clone().expire_loop());
    let state = Arc::new(AppState {
        store,
        telemetry,
        telemetry_path: config.telemetry_path.clone(),
        gzip: config.gzip,
        on_demand,
        alerts: evaluator,
        web,
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, targets = config.targets.len(), path = %config.telemetry_path, "serving");
    }
    let server = tokio::spawn(serve(listener, state, stop_rx));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = expiry.await;
    for task in background {
        let _ = task.await;
    }
    for poller in pollers {
        // A poll stuck past its own deadline cannot hold up the exit (children stop within 2 s).
        let abort = poller.abort_handle();
        if tokio::time::timeout(Duration::from_secs(4), poller)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    Ok(())
}

/// Feeds each poll's facts to the evaluator, wakes the pusher on changes, keeps the alert
/// gauges current, and resolves the alerts of nodes that stopped reporting.
async fn evaluate(
    evaluator: Arc<Mutex<Evaluator>>,
    mut observations: tokio::sync::mpsc::Receiver<Observation>,
    changed: Arc<Notify>,
    telemetry: Telemetry,
    stale: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut expiry = tokio::time::interval(Duration::from_secs(30));
    loop {
        let changes = tokio::select! {
            obs = observations.recv() => match obs {
                Some(obs) => evaluator.lock().unwrap_or_else(|p| p.into_inner()).observe(&obs),
                None => break,
            },
            _ = expiry.tick() => evaluator
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .expire(std::time::Instant::now(), stale),
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
                continue;
            }
        };
        if !changes.fired.is_empty() || !changes.resolved.is_empty() {
            changed.notify_one();
        }
        let active = evaluator.lock().unwrap_or_else(|p| p.into_inner()).active();
        telemetry.alerts.reset();
        for alert in active {
            let state = if alert.state == State::Firing {
                "firing"
            } else {
                "pending"
            };
            let name = alert.labels.get("alertname").cloned().unwrap_or_default();
            let severity = alert.labels.get("severity").cloned().unwrap_or_default();
            telemetry
                .alerts
                .with_label_values(&[name.as_str(), severity.as_str(), state])
                .inc();
        }
    }
}
