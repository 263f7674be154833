//! `redis-lookout check`: poll every target once, judge the alerts one poll can judge (the ones
//! whose signal needs no history), print a report, and exit 0/1/2 for ok/warning/critical. For
//! terminals, cron and CI. `for` durations do not apply: one poll is a moment, not a trend.

use crate::alerts::eval::{guard_passes, readings, Labels, NodeHistory};
use crate::alerts::{AlertRule, Op, Severity};
use crate::collector::Refresh;
use crate::config::Config;
use crate::poller::{NodePoller, PollContext};
use crate::snapshot::SnapshotStore;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

/// How long `check` samples a target's keyspace (within its budget).
pub const KEYSPACE_LOOK: std::time::Duration = std::time::Duration::from_secs(3);

/// The verdict on one alert for one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Status {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "WARN")]
    Warn,
    #[serde(rename = "CRIT")]
    Crit,
}

impl Status {
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Crit => 2,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Crit => "CRIT",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub target: String,
    pub alert: &'static str,
    pub status: Status,
    /// The series, when the alert reads several (a replica, a collector).
    pub series: Labels,
    pub value: f64,
    /// The threshold that decided the status (for OK: the lowest one).
    pub threshold: f64,
    pub comparison: &'static str,
    pub unit: &'static str,
    pub summary: String,
    pub runbook_url: String,
}

/// Polls each configured target once and judges every instant alert.
pub async fn check(config: &Config, rules: &[AlertRule], runbook_base: &str) -> Vec<Finding> {
    let ctx = PollContext::new(
        Arc::new(SnapshotStore::new()),
        Refresh {
            config: config.config_refresh,
            command_stats: config.command_stats_refresh,
        },
    );
    let mut findings = Vec::new();
    let down = |target: &str, error: &str, summary: String| {
        let rule = rules.iter().find(|r| r.name == "RedisDown");
        Finding {
            target: target.to_owned(),
            alert: "RedisDown",
            status: Status::Crit,
            series: Labels::from([("error".to_owned(), error.to_owned())]),
            value: 0.0,
            threshold: 1.0,
            comparison: "<",
            unit: "up",
            summary,
            runbook_url: rule
                .map(|r| r.runbook_url(runbook_base))
                .unwrap_or_default(),
        }
    };
    for configured in &config.targets {
        // A Sentinel-defined target is judged on the master its Sentinels name now.
        let target = match &configured.sentinel {
            None => configured.clone(),
            Some(sentinel) => {
                let mut view =
                    crate::sentinel::SentinelView::new(Arc::new(configured.clone()), ctx.clone());
                match view.ask().await.map(|v| configured.for_node(&v.master)) {
                    Some(Ok(node)) => node,
                    _ => {
                        findings.push(down(
                            &configured.name,
                            "sentinel",
                            format!(
                                "no Sentinel of {} named a master called {:?}",
                                configured.name, sentinel.master
                            ),
                        ));
                        continue;
                    }
                }
            }
        };
        let target = &target;
        let mut poller = NodePoller::new(Arc::new(target.clone()), None, &ctx);
        let facts = poller.poll_facts().await;
        let mut facts = match facts {
            Ok(facts) => facts,
            Err(err) => {
                findings.push(down(
                    &target.name,
                    err.label(),
                    format!("cannot poll {}: {err}", target.url),
                ));
                continue;
            }
        };
        if let Some(keyspace) = &target.keyspace {
            // A short budgeted look at the keyspace, so must_expire findings can be judged.
            let sampled = crate::keyspace::sample_for(
                Arc::new(target.clone()),
                keyspace.clone(),
                KEYSPACE_LOOK,
            )
            .await;
            facts.merge(sampled);
        }
        let history = NodeHistory::default();
        for rule in rules.iter().filter(|r| r.signal.instant()) {
            if !guard_passes(rule, &facts) {
                continue;
            }
            for (series, value) in readings(&rule.signal, &facts, &history, Instant::now()) {
                // The most severe level whose condition holds decides; else OK.
                let mut levels = rule.levels.clone();
                levels.sort_by_key(|l| std::cmp::Reverse(l.severity));
                let hit = levels.iter().find(|l| rule.op.holds(value, l.threshold));
                let (status, level) = match hit {
                    Some(l) if l.severity == Severity::Critical => (Status::Crit, *l),
                    Some(l) => (Status::Warn, *l),
                    None => (Status::Ok, *levels.last().unwrap_or(&rule.levels[0])),
                };
                findings.push(Finding {
                    target: target.name.clone(),
                    alert: rule.name,
                    status,
                    series,
                    value,
                    threshold: level.threshold,
                    comparison: if rule.op == Op::Above { ">" } else { "<" },
                    unit: rule.unit,
                    summary: rule.summary_for(&level),
                    runbook_url: rule.runbook_url(runbook_base),
                });
            }
        }
    }
    findings
}

/// The worst status of a report (OK for an empty one).
pub fn worst(findings: &[Finding]) -> Status {
    findings
        .iter()
        .map(|f| f.status)
        .max()
        .unwrap_or(Status::Ok)
}

/// The report for people: problems first, then a count of what is fine.
pub fn render_text(findings: &[Finding]) -> String {
    let mut out = String::new();
    let mut problems: Vec<&Finding> = findings.iter().filter(|f| f.status != Status::Ok).collect();
    problems.sort_by(|a, b| b.status.cmp(&a.status).then(a.target.cmp(&b.target)));
    for f in &problems {
        let series: Vec<String> = f.series.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "{:<4} {} {}{}: {} is {} ({} {} {})\n     runbook: {}",
            f.status.word(),
            f.target,
            f.alert,
            if series.is_empty() {
                String::new()
            } else {
                format!(" {{{}}}", series.join(","))
            },
            f.summary,
            short(f.value),
            f.unit,
            f.comparison,
            short(f.threshold),
            f.runbook_url
        );
    }
    let ok = findings.len() - problems.len();
    let _ = writeln!(
        out,
        "{}: {} checks, {} ok, {} warning, {} critical",
        worst(findings).word(),
        findings.len(),
        ok,
        problems.iter().filter(|f| f.status == Status::Warn).count(),
        problems.iter().filter(|f| f.status == Status::Crit).count()
    );
    out
}

fn short(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}
