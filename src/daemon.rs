//! Wiring: one poller task per target, the HTTP server, and an orderly stop.
//!
//! `run` takes the listener and the shutdown signal as parameters so tests run the whole daemon
//! in-process on port 0 and stop it when they like.

use crate::config::Config;
use crate::http::{serve, AppState};
use crate::poller::NodePoller;
use crate::snapshot::SnapshotStore;
use crate::telemetry::Telemetry;
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

    let mut pollers = Vec::with_capacity(config.targets.len());
    for target in &config.targets {
        let poller = NodePoller::new(
            Arc::new(target.clone()),
            None,
            store.clone(),
            telemetry.clone(),
            config.config_refresh,
        );
        pollers.push(tokio::spawn(poller.run(stop_rx.clone())));
    }

    let state = Arc::new(AppState {
        store,
        telemetry,
        telemetry_path: config.telemetry_path.clone(),
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, targets = config.targets.len(), path = %config.telemetry_path, "serving");
    }
    let server = tokio::spawn(serve(listener, state, stop_rx));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    for poller in pollers {
        // A poll stuck past its own deadline cannot hold up the exit.
        let abort = poller.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), poller)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    Ok(())
}
