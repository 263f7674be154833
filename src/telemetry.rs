//! The exporter's own metrics: one struct of handles on one registry, no globals.
//!
//! Facts about Redis and each node's poll counters live in snapshots (rendered once per poll);
//! what lives here is about this process: build, HTTP requests, CPU, RSS, file descriptors.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Handles on every self-metric. Cloning shares the same series.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    pub scrapes: IntCounterVec,
    /// Alerts of the in-process evaluator by name, severity and state.
    pub alerts: IntGaugeVec,
}

impl Telemetry {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let scrapes = IntCounterVec::new(
            Opts::new(
                "redis_lookout_http_requests_total",
                "HTTP requests served, by handler and status code",
            ),
            &["handler", "code"],
        )?;
        let alerts = IntGaugeVec::new(
            Opts::new(
                "redis_lookout_alerts",
                "Alerts the in-process evaluator holds, by name, severity and state (pending, firing)",
            ),
            &["alertname", "severity", "state"],
        )?;
        registry.register(Box::new(alerts.clone()))?;
        let build = IntGaugeVec::new(
            Opts::new("redis_lookout_build_info", "Build information; always 1"),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        registry.register(Box::new(scrapes.clone()))?;
        registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            scrapes,
            alerts,
        })
    }

    /// Appends the self-metrics in text format.
    pub fn render_into(&self, out: &mut String) {
        let families = self.registry.gather();
        if let Err(err) = TextEncoder::new().encode_utf8(&families, out) {
            tracing::warn!(error = %err, "could not encode self-metrics");
        }
    }
}
