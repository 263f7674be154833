//! The exporter's own metrics: one struct of handles on one registry, no globals.
//!
//! Facts about Redis and each node's poll counters live in snapshots (rendered once per poll);
//! what lives here is about this process: build, HTTP requests, CPU, RSS, file descriptors.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the process' own figures (CPU, RSS, file descriptors) are reused. Reading them
/// (`stat`, `limits` and a listing of `fd` under /proc/self) was about a third of the CPU of a
/// one-target scrape (perf, 2026-12-06); Prometheus scrapes every 15–60 s, so a second of age
/// changes nothing for it, while a burst of scrapes reads /proc once a second rather than once
/// per request.
const PROCESS_REFRESH: Duration = Duration::from_secs(1);

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A collector whose families are collected at most once per `every` and reused in between.
struct AtMostEvery<C> {
    inner: C,
    every: Duration,
    last: Mutex<Option<(Instant, Vec<MetricFamily>)>>,
}

impl<C> AtMostEvery<C> {
    fn new(inner: C, every: Duration) -> Self {
        Self {
            inner,
            every,
            last: Mutex::new(None),
        }
    }
}

impl<C: Collector> Collector for AtMostEvery<C> {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match &*last {
            Some((at, families)) if now.duration_since(*at) < self.every => families.clone(),
            _ => {
                let families = self.inner.collect();
                *last = Some((now, families.clone()));
                families
            }
        }
    }
}

/// Handles on every self-metric. Cloning shares the same series.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    pub scrapes: IntCounterVec,
    /// Alerts of the in-process evaluator by name, severity and state.
    pub alerts: IntGaugeVec,
    /// 1 when the last configuration reload (or the start) succeeded.
    pub reload_ok: IntGauge,
    /// When the configuration was last loaded successfully, in Unix seconds.
    pub reload_time: Gauge,
    /// Nodes of `polling: on_scrape` targets, polled now or dormant (set once there are some).
    on_scrape_nodes: IntGaugeVec,
    on_scrape_seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Telemetry {
    /// `process_metrics`: register the process' own `process_*` metrics (CPU, memory, fds).
    pub fn new(process_metrics: bool) -> Result<Self, prometheus::Error> {
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

        let reload_ok = IntGauge::new(
            "redis_lookout_config_last_reload_successful",
            "1 when the last configuration reload succeeded (1 from the start until a reload fails)",
        )?;
        reload_ok.set(1);
        let reload_time = Gauge::new(
            "redis_lookout_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (start or reload), in Unix seconds",
        )?;
        reload_time.set(unix_now());
        let on_scrape_nodes = IntGaugeVec::new(
            Opts::new(
                "redis_lookout_on_scrape_nodes",
                "Nodes of polling: on_scrape targets this process knows, by state: polled (a scrape asked within scrape_idle) or dormant",
            ),
            &["state"],
        )?;
        registry.register(Box::new(on_scrape_nodes.clone()))?;
        registry.register(Box::new(reload_ok.clone()))?;
        registry.register(Box::new(reload_time.clone()))?;
        registry.register(Box::new(scrapes.clone()))?;
        registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        if process_metrics {
            registry.register(Box::new(AtMostEvery::new(
                prometheus::process_collector::ProcessCollector::for_self(),
                PROCESS_REFRESH,
            )))?;
        }
        Ok(Self {
            registry,
            scrapes,
            alerts,
            reload_ok,
            reload_time,
            on_scrape_nodes,
            on_scrape_seen: Default::default(),
        })
    }

    /// Sets the on-scrape node counts, `(polled, dormant)`; nothing while there are none.
    pub fn on_scrape_nodes(&self, (polled, dormant): (usize, usize)) {
        use std::sync::atomic::Ordering;
        if polled + dormant > 0 {
            self.on_scrape_seen.store(true, Ordering::Relaxed);
        }
        if self.on_scrape_seen.load(Ordering::Relaxed) {
            self.on_scrape_nodes
                .with_label_values(&["polled"])
                .set(polled as i64);
            self.on_scrape_nodes
                .with_label_values(&["dormant"])
                .set(dormant as i64);
        }
    }

    /// Records the outcome of a configuration reload.
    pub fn reloaded(&self, ok: bool) {
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_time.set(unix_now());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its collections; each returns one family named after the count.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Collector for Counting {
        fn desc(&self) -> Vec<&Desc> {
            Vec::new()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            let mut family = MetricFamily::default();
            family.set_name(format!("collection_{n}"));
            vec![family]
        }
    }

    #[test]
    fn process_figures_are_read_at_most_once_per_period() {
        let cached = AtMostEvery::new(Counting::default(), Duration::from_secs(3600));
        let first = cached.collect();
        let second = cached.collect();
        assert_eq!(cached.inner.0.load(Ordering::SeqCst), 1);
        assert_eq!(first[0].name(), "collection_1");
        assert_eq!(second[0].name(), "collection_1");

        let fresh = AtMostEvery::new(Counting::default(), Duration::ZERO);
        fresh.collect();
        assert_eq!(fresh.collect()[0].name(), "collection_2");
    }
}
