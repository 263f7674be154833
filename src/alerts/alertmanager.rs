//! Pushing alerts to Alertmanager (API v2, `POST /api/v2/alerts`).
//!
//! Every push carries all firing alerts, with `endsAt` a few resend intervals ahead (so that
//! Alertmanager resolves them by itself if redis-lookout dies), and the resolved alerts not yet
//! delivered, with `endsAt` at their resolution. Pushes happen on every change, every resend
//! interval, and after a failure with capped exponential backoff; they run in their own task,
//! so a slow or dead Alertmanager never delays polling or evaluation.
//!
//! Every push also carries [`WATCHDOG`], an alert that fires for as long as the process runs.
//! When redis-lookout dies, its alerts end by themselves (their `endsAt` passes) and read as
//! resolved; the watchdog ending too is how a dead man's switch behind Alertmanager tells.

use super::eval::{ActiveAlert, Evaluator};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};

/// One alert as Alertmanager's API v2 takes it.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(with = "humantime_serde")]
    pub starts_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub ends_at: SystemTime,
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

/// The body of one push: firing alerts ending `resend * 4` from now, resolved ones ended. A
/// resolution not delivered yet of an alert that fires again is left out: Alertmanager keeps
/// the last of two entries with the same labels and non-overlapping times, so it would take
/// the new firing for resolved.
pub fn payload(
    firing: &[ActiveAlert],
    resolved: &[(ActiveAlert, SystemTime)],
    resend: Duration,
    now: SystemTime,
) -> Vec<PostableAlert> {
    let mut out: Vec<PostableAlert> = firing
        .iter()
        .map(|a| PostableAlert {
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: a.active_since,
            ends_at: now + resend * 4,
            generator_url: String::new(),
        })
        .collect();
    let firing_again = |a: &ActiveAlert| firing.iter().any(|f| f.labels == a.labels);
    out.extend(
        resolved
            .iter()
            .filter(|(a, _)| !firing_again(a))
            .map(|(a, at)| PostableAlert {
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                starts_at: a.active_since,
                ends_at: *at,
                generator_url: String::new(),
            }),
    );
    out
}

/// The name of the always-firing alert (see the module doc).
pub const WATCHDOG: &str = "RedisLookoutWatchdog";

/// The watchdog as pushed: labelled with the host the process runs on, firing since `since`,
/// ending like any firing alert a few resend intervals ahead.
pub fn watchdog(host: &str, since: SystemTime, resend: Duration, now: SystemTime) -> PostableAlert {
    PostableAlert {
        labels: BTreeMap::from([
            ("alertname".to_owned(), WATCHDOG.to_owned()),
            ("severity".to_owned(), "none".to_owned()),
            ("host".to_owned(), host.to_owned()),
        ]),
        annotations: BTreeMap::from([
            (
                "summary".to_owned(),
                "redis-lookout is running and pushing alerts".to_owned(),
            ),
            (
                "description".to_owned(),
                "Always firing while redis-lookout runs. Route it to a dead man's switch: when it stops, redis-lookout (or its way to Alertmanager) is down, and the alerts it had sent end as if resolved.".to_owned(),
            ),
        ]),
        starts_at: since,
        ends_at: now + resend * 4,
        generator_url: String::new(),
    }
}

/// The machine's host name, for the watchdog's `host` label.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Pushes to every configured Alertmanager until shutdown.
/// Where and how often [`push_loop`] pushes; replaced on a configuration reload.
#[derive(Debug, Clone, PartialEq)]
pub struct PushTargets {
    /// Alertmanager base URLs (none: evaluate only).
    pub urls: Vec<String>,
    /// Firing alerts are sent again this often.
    pub resend: Duration,
}

pub async fn push_loop(
    evaluator: Arc<Mutex<Evaluator>>,
    mut targets: watch::Receiver<PushTargets>,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the Alertmanager client; alerts will not be pushed");
            return;
        }
    };
    let mut failures = 0u32;
    let mut healthy = true;
    let (host, started) = (host_name(), SystemTime::now());
    loop {
        let resend = targets.borrow_and_update().resend;
        let wait = if failures == 0 {
            resend
        } else {
            (Duration::from_secs(1) * 2u32.saturating_pow(failures.min(6))).min(resend)
        };
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            // New Alertmanagers (a reload) hear of what fires now, not a resend interval later.
            Ok(()) = targets.changed() => { failures = 0; }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
        let urls = targets.borrow_and_update().urls.clone();
        if urls.is_empty() {
            continue;
        }
        // A URL's user and password go out as basic auth, never into a log line.
        let shown: Vec<String> = urls
            .iter()
            .map(|u| {
                url::Url::parse(u)
                    .map(|u| crate::config::without_userinfo(&u))
                    .unwrap_or_else(|_| "(unparsable URL)".to_owned())
            })
            .collect();
        let (firing, resolved) = {
            let e = evaluator.lock().unwrap_or_else(|p| p.into_inner());
            (e.firing(), e.resolved_backlog())
        };
        let now = SystemTime::now();
        let mut body = payload(&firing, &resolved, resend, now);
        body.push(watchdog(&host, started, resend, now));
        let mut all_ok = true;
        // All at once: one Alertmanager that does not answer must not hold back the others
        // (nor a shutdown) by its timeout each.
        let sends = urls.iter().map(|url| {
            let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            client.post(endpoint).json(&body).send()
        });
        let results = futures_util::future::join_all(sends).await;
        for (result, shown) in results.into_iter().zip(&shown) {
            let ok = matches!(&result, Ok(r) if r.status().is_success());
            if !ok {
                all_ok = false;
                if healthy {
                    let why = match &result {
                        Ok(r) => format!("HTTP {}", r.status()),
                        Err(e) if e.is_timeout() => "timeout".to_owned(),
                        Err(e) if e.is_connect() => "connection failed".to_owned(),
                        Err(_) => "request failed".to_owned(),
                    };
                    tracing::warn!(alertmanager = %shown, problem = %why, "cannot push alerts; retrying with backoff");
                }
            }
        }
        if all_ok {
            if !healthy {
                tracing::info!("alerts pushed again");
            }
            healthy = true;
            failures = 0;
            let mut e = evaluator.lock().unwrap_or_else(|p| p.into_inner());
            e.delivered(&resolved);
        } else {
            healthy = false;
            failures = failures.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::eval::State;
    use std::time::Instant;

    #[test]
    fn firing_alerts_end_in_the_future_and_resolved_ones_at_resolution() {
        let alert = ActiveAlert {
            labels: BTreeMap::from([("alertname".to_owned(), "RedisDown".to_owned())]),
            annotations: BTreeMap::new(),
            state: State::Firing,
            value: 0.0,
            active_since: SystemTime::UNIX_EPOCH,
            since: Instant::now(),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let other = ActiveAlert {
            labels: BTreeMap::from([("alertname".to_owned(), "RedisMemoryHigh".to_owned())]),
            ..alert.clone()
        };
        let body = payload(
            std::slice::from_ref(&alert),
            &[(other, now)],
            Duration::from_secs(60),
            now,
        );
        assert_eq!(body[0].ends_at, now + Duration::from_secs(240));
        assert_eq!(body[1].ends_at, now);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json[0]["labels"]["alertname"], "RedisDown");
        assert!(json[0]["startsAt"]
            .as_str()
            .unwrap()
            .starts_with("1970-01-01T00:00:00"));
        assert!(json[0].get("generatorURL").is_none());

        // Resolved, then firing again before the resolution was delivered: only the firing.
        let body = payload(
            std::slice::from_ref(&alert),
            &[(alert.clone(), now - Duration::from_secs(30))],
            Duration::from_secs(60),
            now,
        );
        assert_eq!(body.len(), 1);
        assert!(body[0].ends_at > now);

        let w = watchdog(
            "db-host-1",
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(60),
            now,
        );
        assert_eq!(w.labels["alertname"], WATCHDOG);
        assert_eq!(w.labels["host"], "db-host-1");
        assert_eq!(w.ends_at, now + Duration::from_secs(240));
    }
}
