//! Wiring: one poller task per target, the HTTP server, and an orderly stop.
//!
//! `run` takes the listener and the shutdown signal as parameters so tests run the whole daemon
//! in-process on port 0 and stop it when they like.

use crate::collector::Refresh;
use crate::config::Config;
use crate::http::{serve, AppState};
use crate::poller::PollContext;
use crate::scrape::OnDemand;
use crate::snapshot::SnapshotStore;
use crate::telemetry::Telemetry;
use crate::topology::run_target;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Runs until `shutdown` completes, then stops accepting, drains requests and stops pollers.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), prometheus::Error> {
    let telemetry = Telemetry::new()?;
    let store = Arc::new(SnapshotStore::new());
    let (stop_tx, stop_rx) = watch::channel(false);

    let ctx = PollContext::new(
        store.clone(),
        Refresh {
            config: config.config_refresh,
            command_stats: config.command_stats_refresh,
        },
    );
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
        on_demand,
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
