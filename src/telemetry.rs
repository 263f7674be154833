//! The exporter's own metrics: one struct of handles on one registry, no globals.
//!
//! Facts about Redis live in snapshots; what lives here outlasts a single poll (counters of polls,
//! errors and connections opened) or is about this process (build, CPU, RSS, file descriptors).

use crate::error::PollError;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Handles on every self-metric. Cloning shares the same series.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    pub polls: IntCounterVec,
    pub poll_errors: IntCounterVec,
    pub poll_duration: HistogramVec,
    pub connections_opened: IntCounterVec,
    pub scrapes: IntCounterVec,
}

impl Telemetry {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let polls = IntCounterVec::new(
            Opts::new(
                "redis_lookout_polls_total",
                "Polls attempted per target and node",
            ),
            &["target", "node"],
        )?;
        let poll_errors = IntCounterVec::new(
            Opts::new(
                "redis_lookout_poll_errors_total",
                "Polls that failed, by a fixed kind (timeout, connection_refused, connection, auth, tls, loading, server, protocol)",
            ),
            &["target", "node", "kind"],
        )?;
        let poll_duration = HistogramVec::new(
            HistogramOpts::new(
                "redis_lookout_poll_duration_seconds",
                "Wall time of a whole poll (connect if needed, one pipelined round trip, parsing)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["target", "node"],
        )?;
        let connections_opened = IntCounterVec::new(
            Opts::new(
                "redis_lookout_connections_opened_total",
                "Connections opened to Redis; stays flat in steady state (one persistent connection per node)",
            ),
            &["target", "node"],
        )?;
        let scrapes = IntCounterVec::new(
            Opts::new(
                "redis_lookout_http_requests_total",
                "HTTP requests served, by handler and status code",
            ),
            &["handler", "code"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new("redis_lookout_build_info", "Build information; always 1"),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        registry.register(Box::new(polls.clone()))?;
        registry.register(Box::new(poll_errors.clone()))?;
        registry.register(Box::new(poll_duration.clone()))?;
        registry.register(Box::new(connections_opened.clone()))?;
        registry.register(Box::new(scrapes.clone()))?;
        registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            polls,
            poll_errors,
            poll_duration,
            connections_opened,
            scrapes,
        })
    }

    /// Creates a node's series at zero so `rate()` and `increase()` work from the first error.
    pub fn register_node(&self, target: &str, node: &str) {
        self.polls.with_label_values(&[target, node]);
        self.connections_opened.with_label_values(&[target, node]);
        for kind in PollError::ALL {
            self.poll_errors
                .with_label_values(&[target, node, kind.label()]);
        }
    }

    /// Drops a node's series (node gone, target removed).
    pub fn forget_node(&self, target: &str, node: &str) {
        let _ = self.polls.remove_label_values(&[target, node]);
        let _ = self.connections_opened.remove_label_values(&[target, node]);
        let _ = self.poll_duration.remove_label_values(&[target, node]);
        for kind in PollError::ALL {
            let _ = self
                .poll_errors
                .remove_label_values(&[target, node, kind.label()]);
        }
    }

    /// Appends the self-metrics in text format.
    pub fn render_into(&self, out: &mut String) {
        let families = self.registry.gather();
        if let Err(err) = TextEncoder::new().encode_utf8(&families, out) {
            tracing::warn!(error = %err, "could not encode self-metrics");
        }
    }
}
