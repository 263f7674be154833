//! The in-process evaluator: the pack's signals computed from each poll's facts, and the
//! pending → firing → resolved state of every alert, as Prometheus would hold it.
//!
//! Windowed signals (rates, increases, maxima) need past values; each node keeps, per series of
//! the families those signals read, only the points where the value changed (plus the last one
//! before the window), so an idle counter costs one point however long the window.

use super::{AlertRule, Guard, Level, Severity, Signal};
use crate::metrics::FamilySet;
use crate::snapshot::NodeKey;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// One poll's facts about one node, as the evaluator receives them.
#[derive(Debug, Clone)]
pub struct Observation {
    pub key: NodeKey,
    pub at: Instant,
    pub facts: Arc<FamilySet>,
    /// A failed poll shortly after a good one ([`crate::poller::hold_for`]): the rules that
    /// read families these facts lack keep their alerts as they stand, neither resolved nor
    /// advanced. One timed-out poll is not news about memory or lag.
    pub held_over: bool,
    /// The target's own `labels:` (team, env), put on its alerts for routing.
    pub labels: Arc<[(&'static str, String)]>,
}

/// A label set, sorted, as alert identity and Alertmanager labels.
pub type Labels = BTreeMap<String, String>;

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Firing,
}

/// An alert that is pending or firing, or was just resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveAlert {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub state: State,
    pub value: f64,
    #[serde(with = "humantime_serde")]
    pub active_since: SystemTime,
    #[serde(skip)]
    pub since: Instant,
}

/// The value of one signal for one series of a node: its extra labels and its number.
type Reading = (Labels, f64);

/// Past values a node's windowed signals need.
#[derive(Debug, Default)]
pub struct NodeHistory {
    /// (family, series labels) → points where the value changed, oldest first.
    series: HashMap<(String, Labels), VecDeque<(Instant, f64)>>,
    /// family → sparse points of its value for [`Signal::Forecast`].
    trend: HashMap<String, Trend>,
    /// The first poll of this node the evaluator saw.
    first_seen: Option<Instant>,
    last_seen: Option<Instant>,
}

impl NodeHistory {
    fn record(&mut self, family: &str, facts: &FamilySet, at: Instant, keep: Duration) {
        let Some(f) = facts.get(family) else { return };
        for sample in f.samples.iter().filter(|s| s.suffix.is_empty()) {
            let labels: Labels = sample
                .labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            let points = self.series.entry((family.to_owned(), labels)).or_default();
            if points.back().is_none_or(|(_, v)| *v != sample.value) {
                points.push_back((at, sample.value));
            }
            // Keep the newest point at or before the window start, drop older ones.
            while points.len() > 2 && points[1].0 + keep <= at {
                points.pop_front();
            }
        }
    }

    /// Keeps the family's value for a forecast over `window`: a point at most every
    /// window/[`TREND_POINTS`], none older than the window.
    fn record_trend(&mut self, family: &str, facts: &FamilySet, at: Instant, window: Duration) {
        let Some(value) = facts.value_of(family) else {
            return;
        };
        // Room for every point the window keeps (one more is pushed before the oldest goes), so
        // the deque never doubles past it: 74 x 24 bytes per node and family.
        let trend = self
            .trend
            .entry(family.to_owned())
            .or_insert_with(|| Trend {
                points: VecDeque::with_capacity(TREND_POINTS as usize + 2),
                polls: 0,
            });
        trend.polls = trend.polls.saturating_add(1);
        let points = &mut trend.points;
        if points
            .back()
            .is_none_or(|(t, _)| at.duration_since(*t) >= window / TREND_POINTS)
        {
            points.push_back((at, value));
        }
        while points.front().is_some_and(|(t, _)| *t + window < at) {
            points.pop_front();
        }
    }

    /// A series' value at `when` (the last point at or before it), and whether the history
    /// reaches back that far.
    fn value_at(points: &VecDeque<(Instant, f64)>, when: Instant) -> Option<f64> {
        points
            .iter()
            .rev()
            .find(|(t, _)| *t <= when)
            .map(|(_, v)| *v)
    }

    fn summed_change(
        &self,
        family: &str,
        now: Instant,
        window: Duration,
        label: &str,
        values: &[&str],
    ) -> Option<f64> {
        let start = now.checked_sub(window)?;
        let mut total = None;
        for ((f, labels), points) in &self.series {
            if f != family {
                continue;
            }
            if !values.is_empty()
                && !labels
                    .get(label)
                    .is_some_and(|v| values.contains(&v.as_str()))
            {
                continue;
            }
            if points.is_empty() {
                continue;
            }
            let first = Self::value_at(points, start);
            // History younger than the window: a series present at the node's first poll counts
            // from its first value (its lifetime total is not news); one that appeared later
            // counts from zero (Redis lists an errorstat or a command only after its first use).
            let from = match first {
                Some(v) => v,
                None => match (points.front(), self.first_seen) {
                    (Some((born, v)), Some(first_poll)) if *born <= first_poll => *v,
                    _ => 0.0,
                },
            };
            // Point by point, as PromQL's increase(): a counter that went down was reset (Redis
            // restarted) and counts from zero there, and what it had gained before the reset
            // still counts.
            let mut prev = from;
            let mut change = 0.0;
            for (_, v) in points.iter().filter(|p| p.0 > start) {
                change += if *v >= prev { v - prev } else { *v };
                prev = *v;
            }
            *total.get_or_insert(0.0) += change;
        }
        total
    }
}

/// At most this many points per family and node are kept for a forecast.
const TREND_POINTS: u32 = 72;

/// A forecast is made only after this many polls of the node: a line through two polls a
/// moment apart turns a new client connection's few kilobytes into gigabytes in 4 hours.
/// (Prometheus' first forecast comes from two scrapes 15 s or more apart; its `for` of 30m
/// covers the rest, as it does here.)
const TREND_MIN_POLLS: u32 = 20;

/// The kept points of a family and how many polls it was seen in.
#[derive(Debug)]
struct Trend {
    /// Oldest first; see [`NodeHistory::record_trend`].
    points: VecDeque<(Instant, f64)>,
    polls: u32,
}

/// PromQL's `predict_linear`: the least-squares line through the points, read `horizon` after
/// `now` (None under two points, or when they all share one instant).
fn predict_linear(
    points: impl Iterator<Item = (Instant, f64)>,
    now: Instant,
    horizon: Duration,
) -> Option<f64> {
    let (mut n, mut sx, mut sy, mut sxy, mut sxx) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (t, v) in points {
        // Seconds before now (negative), as Prometheus takes x relative to the evaluation time.
        let x = -now.saturating_duration_since(t).as_secs_f64();
        n += 1.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sxx += x * x;
    }
    let det = n * sxx - sx * sx;
    if n < 2.0 || det == 0.0 {
        return None;
    }
    let slope = (n * sxy - sx * sy) / det;
    let intercept = (sy - slope * sx) / n;
    Some(intercept + slope * horizon.as_secs_f64())
}

/// `a / b` on a node's facts, where both are published and `b > 0` (a limit that is set).
fn ratio(facts: &FamilySet, a: &str, b: &str) -> Option<f64> {
    let b = facts.value_of(b).filter(|b| *b > 0.0)?;
    facts.value_of(a).map(|a| a / b)
}

/// Computes a signal's readings for one node.
pub fn readings(
    signal: &Signal,
    facts: &FamilySet,
    history: &NodeHistory,
    now: Instant,
) -> Vec<Reading> {
    let sum_of = |family: &str| -> Option<f64> {
        facts
            .get(family)
            .map(|f| f.samples.iter().map(|s| s.value).sum())
    };
    match *signal {
        Signal::Series(family) => facts
            .get(family)
            .map(|f| {
                f.samples
                    .iter()
                    .filter(|s| s.suffix.is_empty())
                    .map(|s| {
                        (
                            s.labels
                                .iter()
                                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                                .collect(),
                            s.value,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Signal::SeriesWithout(family, dropped) => {
            let mut highest: BTreeMap<Labels, f64> = BTreeMap::new();
            for s in facts
                .get(family)
                .map(|f| f.samples.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|s| s.suffix.is_empty())
            {
                let labels: Labels = s
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != dropped)
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                let slot = highest.entry(labels).or_insert(s.value);
                *slot = slot.max(s.value);
            }
            highest.into_iter().collect()
        }
        Signal::Ratio(a, b) => ratio(facts, a, b)
            .map(|r| vec![(Labels::new(), r)])
            .unwrap_or_default(),
        Signal::Rate(families, window) => families
            .iter()
            .filter_map(|f| history.summed_change(f, now, window, "", &[]))
            .reduce(|a, b| a + b)
            .map(|c| vec![(Labels::new(), c / window.as_secs_f64())])
            .unwrap_or_default(),
        Signal::Increase(family, window, label, values) => history
            .summed_change(family, now, window, label, values)
            .map(|c| vec![(Labels::new(), c)])
            .unwrap_or_default(),
        Signal::HitRatio(window, min_rate) => {
            let hits = history.summed_change("redis_keyspace_hits_total", now, window, "", &[]);
            let misses = history.summed_change("redis_keyspace_misses_total", now, window, "", &[]);
            match (hits, misses) {
                (Some(h), Some(m)) if (h + m) / window.as_secs_f64() >= min_rate => {
                    vec![(Labels::new(), h / (h + m))]
                }
                _ => Vec::new(),
            }
        }
        Signal::DropFromMax(family, window) => {
            // max_over_time over the window: the value at its start and every change since
            // (not every point ever kept: a drop would then never resolve).
            let start = now.checked_sub(window);
            let max = history
                .series
                .iter()
                .filter(|((f, _), _)| f == family)
                .flat_map(|(_, points)| {
                    let at_start = start.and_then(|s| NodeHistory::value_at(points, s));
                    points
                        .iter()
                        .filter(move |p| start.is_none_or(|s| p.0 > s))
                        .map(|p| p.1)
                        .chain(at_start)
                })
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            match (max, sum_of(family)) {
                (Some(max), Some(now_v)) => vec![(Labels::new(), max - now_v)],
                _ => Vec::new(),
            }
        }
        Signal::ShareOfEarlier(family, window, min_before) => {
            let Some(start) = now.checked_sub(window) else {
                return Vec::new();
            };
            // As PromQL's `sum(x offset w)`: the series that had a value then, whatever came after.
            let before: Option<f64> = history
                .series
                .iter()
                .filter(|((f, _), _)| f == family)
                .filter_map(|(_, points)| NodeHistory::value_at(points, start))
                .reduce(|a, b| a + b);
            match (before, sum_of(family)) {
                (Some(before), Some(now_v)) if before > min_before => {
                    vec![(Labels::new(), now_v / before)]
                }
                _ => Vec::new(),
            }
        }
        Signal::SeriesChange(family, window) => {
            let Some(start) = now.checked_sub(window) else {
                return Vec::new();
            };
            readings(&Signal::Series(family), facts, history, now)
                .into_iter()
                .filter_map(|(labels, value)| {
                    let points = history.series.get(&(family.to_owned(), labels.clone()))?;
                    let then = NodeHistory::value_at(points, start)?;
                    Some((labels, value - then))
                })
                .collect()
        }
        Signal::Forecast {
            family,
            limit,
            window,
            horizon,
        } => {
            let limit = facts.value_of(limit).filter(|l| *l > 0.0);
            let (Some(value), Some(limit)) = (facts.value_of(family), limit) else {
                return Vec::new();
            };
            let Some(trend) = history
                .trend
                .get(family)
                .filter(|t| t.polls >= TREND_MIN_POLLS)
            else {
                return Vec::new();
            };
            let start = now.checked_sub(window);
            let points = trend
                .points
                .iter()
                .copied()
                .filter(|(t, _)| start.is_none_or(|s| *t >= s) && *t < now)
                .chain(std::iter::once((now, value)));
            predict_linear(points, now, horizon)
                .map(|v| vec![(Labels::new(), v / limit)])
                .unwrap_or_default()
        }
        Signal::PrometheusOnly => Vec::new(),
    }
}

/// True when the rule's guard (AOF enabled, enough wasted memory, …) lets the node be judged.
pub fn guard_passes(rule: &AlertRule, facts: &FamilySet) -> bool {
    match rule.guard {
        None => true,
        Some(Guard::Value(family, op, threshold)) => facts
            .value_of(family)
            .is_some_and(|v| op.holds(v, threshold)),
        Some(Guard::Absent(family)) => facts.get(family).is_none(),
        Some(Guard::Ratio(a, b, op, threshold)) => {
            ratio(facts, a, b).is_some_and(|r| op.holds(r, threshold))
        }
    }
}

/// One history per family, kept for the longest window any rule reads it over (kept per rule,
/// a 2-minute rule cut what a 5-minute one on the same counter needed): for the change points
/// (`remembered`) and for the forecasts' sparse points (`forecast_window`) alike.
fn longest_windows(
    rules: &[AlertRule],
    windows_of: fn(&Signal) -> Vec<(&'static str, Duration)>,
) -> Vec<(&'static str, Duration)> {
    let mut windows: BTreeMap<&'static str, Duration> = BTreeMap::new();
    for rule in rules {
        for (family, window) in windows_of(&rule.signal) {
            let w = windows.entry(family).or_insert(window);
            *w = (*w).max(window);
        }
    }
    windows.into_iter().collect()
}

/// The family a forecast reads, with its window (kept apart from [`remembered`], sparsely).
fn forecast_window(signal: &Signal) -> Vec<(&'static str, Duration)> {
    match *signal {
        Signal::Forecast { family, window, .. } => vec![(family, window)],
        _ => Vec::new(),
    }
}

/// The families a signal reads over a window, with the window (none for instant signals).
fn remembered(signal: &Signal) -> Vec<(&'static str, Duration)> {
    let window = match *signal {
        Signal::Series(_)
        | Signal::SeriesWithout(..)
        | Signal::Ratio(..)
        // Kept apart, sparsely: see `forecast_window`.
        | Signal::Forecast { .. }
        | Signal::PrometheusOnly => return Vec::new(),
        Signal::Rate(_, w)
        | Signal::Increase(_, w, ..)
        | Signal::DropFromMax(_, w)
        | Signal::ShareOfEarlier(_, w, _)
        | Signal::SeriesChange(_, w)
        | Signal::HitRatio(w, _) => w,
    };
    families_of(signal)
        .into_iter()
        .map(|f| (f, window))
        .collect()
}

/// The families a signal reads.
fn families_of(signal: &Signal) -> Vec<&'static str> {
    match *signal {
        Signal::Rate(families, _) => families.to_vec(),
        Signal::Series(f)
        | Signal::SeriesWithout(f, _)
        | Signal::Increase(f, ..)
        | Signal::DropFromMax(f, _)
        | Signal::ShareOfEarlier(f, ..)
        | Signal::SeriesChange(f, _) => vec![f],
        Signal::Ratio(a, b)
        | Signal::Forecast {
            family: a,
            limit: b,
            ..
        } => vec![a, b],
        Signal::HitRatio(..) => vec!["redis_keyspace_hits_total", "redis_keyspace_misses_total"],
        Signal::PrometheusOnly => Vec::new(),
    }
}

/// Alert state for every node, updated as observations arrive.
pub struct Evaluator {
    rules: Vec<AlertRule>,
    /// The families whose history the rules read, each with the longest window any rule
    /// reads it over (see [`longest_windows`]).
    windows: Vec<(&'static str, Duration)>,
    /// The families forecasts read, with their windows (see [`forecast_window`]).
    trends: Vec<(&'static str, Duration)>,
    runbook_base: String,
    nodes: HashMap<NodeKey, NodeHistory>,
    /// (alertname, severity, full labels) → state.
    active: BTreeMap<(String, Severity, Labels), ActiveAlert>,
    /// Resolved alerts not yet delivered to Alertmanager, with when they resolved.
    backlog: Vec<(ActiveAlert, SystemTime)>,
    /// Bumped whenever an alert appears, fires or goes: readers of [`Evaluator::counts`] need
    /// not count again while it stands still.
    revision: u64,
}

/// Resolved alerts kept for delivery at most (the oldest are dropped past this).
const MAX_BACKLOG: usize = 10_000;

/// What changed in one evaluation, for the notifier.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub fired: Vec<ActiveAlert>,
    pub resolved: Vec<ActiveAlert>,
}

impl Evaluator {
    pub fn new(rules: Vec<AlertRule>, runbook_base: String) -> Self {
        Self {
            windows: longest_windows(&rules, remembered),
            trends: longest_windows(&rules, forecast_window),
            rules,
            runbook_base,
            nodes: HashMap::new(),
            revision: 0,
            active: BTreeMap::new(),
            backlog: Vec::new(),
        }
    }

    /// Takes new rules (thresholds, levels, `for`) and runbook base, from a configuration
    /// reload. Alerts held keep their state; each node's next poll is judged by the new rules,
    /// so an alert whose condition no longer holds resolves then.
    pub fn reconfigure(&mut self, rules: Vec<AlertRule>, runbook_base: String) {
        self.windows = longest_windows(&rules, remembered);
        self.trends = longest_windows(&rules, forecast_window);
        self.rules = rules;
        self.runbook_base = runbook_base;
    }

    /// Takes one node's poll and updates every alert of that node.
    pub fn observe(&mut self, obs: &Observation) -> Changes {
        let now = obs.at;
        let history = self.nodes.entry(obs.key.clone()).or_default();
        // The first poll that reached Redis: lifetime totals read then are not news (a node
        // first seen down would otherwise count them all as new once it answers).
        let up = obs.facts.value_of("redis_up") == Some(1.0);
        if up {
            history.first_seen.get_or_insert(now);
        }
        history.last_seen = Some(now);
        for (family, window) in &self.windows {
            history.record(family, &obs.facts, now, *window);
        }
        for (family, window) in &self.trends {
            history.record_trend(family, &obs.facts, now, *window);
        }
        let mut base = Labels::new();
        for (name, value) in obs.labels.iter() {
            base.insert((*name).to_owned(), value.clone());
        }
        base.insert("target".into(), obs.key.0.clone());
        if let Some(node) = &obs.key.1 {
            base.insert("node".into(), node.clone());
        }

        let mut changes = Changes::default();
        let mut seen: Vec<(String, Severity, Labels)> = Vec::new();
        for rule in &self.rules {
            if obs.held_over
                && families_of(&rule.signal)
                    .iter()
                    .any(|f| obs.facts.get(f).is_none())
            {
                seen.extend(
                    self.active
                        .keys()
                        .filter(|(name, _, labels)| {
                            name == rule.name && same_node(labels, &obs.key)
                        })
                        .cloned(),
                );
                continue;
            }
            let readings = if guard_passes(rule, &obs.facts) {
                readings(&rule.signal, &obs.facts, history, now)
            } else {
                Vec::new()
            };
            for (series, value) in readings {
                for level in &rule.levels {
                    if !rule.op.holds(value, level.threshold) {
                        continue;
                    }
                    let mut labels = base.clone();
                    labels.extend(series.clone());
                    labels.insert("alertname".into(), rule.name.into());
                    labels.insert("severity".into(), level.severity.as_str().into());
                    let id = (rule.name.to_owned(), level.severity, labels.clone());
                    seen.push(id.clone());
                    let entry = self.active.entry(id).or_insert_with(|| {
                        self.revision += 1;
                        ActiveAlert {
                            annotations: BTreeMap::new(),
                            labels: labels.clone(),
                            state: State::Pending,
                            value,
                            active_since: SystemTime::now(),
                            since: now,
                        }
                    });
                    entry.value = value;
                    entry.annotations =
                        annotations(rule, level, &labels, value, &self.runbook_base);
                    if entry.state == State::Pending
                        && now.duration_since(entry.since) >= level.for_
                    {
                        entry.state = State::Firing;
                        self.revision += 1;
                        changes.fired.push(entry.clone());
                    }
                }
            }
        }
        // Alerts of this node whose condition no longer holds: firing ones resolve.
        changes.resolved = self.drop_node_alerts(&obs.key, &seen);
        self.remember_resolved(&changes);
        changes
    }

    /// Removes the node's alerts not in `keep`; returns the firing ones among them.
    fn drop_node_alerts(
        &mut self,
        key: &NodeKey,
        keep: &[(String, Severity, Labels)],
    ) -> Vec<ActiveAlert> {
        let gone: Vec<(String, Severity, Labels)> = self
            .active
            .keys()
            .filter(|(_, _, labels)| same_node(labels, key))
            .filter(|id| !keep.contains(id))
            .cloned()
            .collect();
        if !gone.is_empty() {
            self.revision += 1;
        }
        gone.into_iter()
            .filter_map(|id| self.active.remove(&id))
            .filter(|alert| alert.state == State::Firing)
            .collect()
    }

    /// Resolves the alerts of nodes not observed for `stale` (a node that left, a target
    /// removed), and forgets their history.
    pub fn expire(&mut self, now: Instant, stale: Duration) -> Changes {
        let gone: Vec<NodeKey> = self
            .nodes
            .iter()
            .filter(|(_, h)| h.last_seen.is_none_or(|t| t + stale <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changes = Changes::default();
        for key in gone {
            self.nodes.remove(&key);
            let resolved = self.drop_node_alerts(&key, &[]);
            changes.resolved.extend(resolved);
        }
        self.remember_resolved(&changes);
        changes
    }

    fn remember_resolved(&mut self, changes: &Changes) {
        let now = SystemTime::now();
        self.backlog
            .extend(changes.resolved.iter().map(|a| (a.clone(), now)));
        if self.backlog.len() > MAX_BACKLOG {
            let excess = self.backlog.len() - MAX_BACKLOG;
            self.backlog.drain(..excess);
        }
    }

    /// Resolved alerts Alertmanager has not yet been told about.
    pub fn resolved_backlog(&self) -> Vec<(ActiveAlert, SystemTime)> {
        self.backlog.clone()
    }

    /// Forgets resolved alerts once delivered. `sent` is a copy of the backlog taken before the
    /// push; since then entries were only appended, or dropped from the front past
    /// [`MAX_BACKLOG`]: what was sent is the backlog's front, found in one pass (comparing
    /// every entry with every sent one was up to 10^8 label-set comparisons, under the lock
    /// every poll's observation also takes, after a long Alertmanager outage).
    pub fn delivered(&mut self, sent: &[(ActiveAlert, SystemTime)]) {
        let Some(first) = self.backlog.first() else {
            return;
        };
        let Some(start) = sent.iter().position(|s| s == first) else {
            return;
        };
        let n = sent.len() - start;
        if self.backlog.len() >= n && self.backlog[..n] == sent[start..] {
            self.backlog.drain(..n);
        } else {
            self.backlog.retain(|item| !sent.contains(item));
        }
    }

    /// Changes whenever an alert appears, fires or goes (see [`Evaluator::counts`]).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// How many alerts are pending or firing, per (alertname, severity, state), counted
    /// without copying them: the gauge `redis_lookout_alerts` reads this after observations,
    /// and at 1000 nodes with thousands of alerts a copy of every alert per observation was
    /// more work than the evaluator could keep up with.
    pub fn counts(&self) -> BTreeMap<[String; 3], i64> {
        let mut by_ref: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
        for ((name, severity, _), alert) in &self.active {
            let state = match alert.state {
                State::Firing => "firing",
                _ => "pending",
            };
            *by_ref
                .entry((name.as_str(), severity.as_str(), state))
                .or_default() += 1;
        }
        by_ref
            .into_iter()
            .map(|((n, s, st), c)| ([n.to_owned(), s.to_owned(), st.to_owned()], c))
            .collect()
    }

    /// Every pending or firing alert.
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.active.values().cloned().collect()
    }

    pub fn firing(&self) -> Vec<ActiveAlert> {
        self.active
            .values()
            .filter(|a| a.state == State::Firing)
            .cloned()
            .collect()
    }
}

fn same_node(labels: &Labels, key: &NodeKey) -> bool {
    labels.get("target") == Some(&key.0) && labels.get("node") == key.1.as_ref()
}

fn annotations(
    rule: &AlertRule,
    level: &Level,
    labels: &Labels,
    value: f64,
    runbook_base: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("summary".to_owned(), rule.summary_for(level)),
        (
            "description".to_owned(),
            super::template::render(rule.description, labels, value),
        ),
        ("runbook_url".to_owned(), rule.runbook_url(runbook_base)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::pack;
    use crate::metrics::Kind;

    fn facts(pairs: &[(&str, f64)]) -> Arc<FamilySet> {
        let mut set = FamilySet::new();
        for (name, value) in pairs {
            set.add(name, "h", Kind::Gauge, Vec::new(), *value);
        }
        Arc::new(set)
    }

    fn obs(at: Instant, pairs: &[(&str, f64)]) -> Observation {
        Observation {
            key: ("r".into(), None),
            at,
            facts: facts(pairs),
            held_over: false,
            labels: Arc::new([]),
        }
    }

    fn evaluator() -> Evaluator {
        Evaluator::new(pack(), "docs/runbooks".into())
    }

    fn queues(at: Instant, sizes: &[(&str, f64)]) -> Observation {
        let mut set = FamilySet::new();
        for (key, size) in sizes {
            set.add(
                "redis_key_size",
                "h",
                Kind::Gauge,
                vec![("db", "db0".to_owned()), ("key", (*key).to_owned())],
                *size,
            );
        }
        Observation {
            key: ("r".into(), None),
            at,
            facts: Arc::new(set),
            held_over: false,
            labels: Arc::new([]),
        }
    }

    /// A poll of a node using `used` bytes of `max`.
    fn memory(at: Instant, used: f64, max: f64) -> Observation {
        obs(
            at,
            &[
                ("redis_up", 1.0),
                ("redis_memory_used_bytes", used),
                ("redis_memory_max_bytes", max),
            ],
        )
    }

    fn forecast_alerts(e: &Evaluator) -> Vec<ActiveAlert> {
        e.active()
            .into_iter()
            .filter(|a| a.labels["alertname"] == "RedisMemoryFillingUp")
            .collect()
    }

    #[test]
    fn predict_linear_reads_the_fitted_line_after_the_horizon() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let at = |mins: u64, v: f64| (t0 + Duration::from_secs(mins * 60), v);
        // A straight line: 1 a minute, so 240 more after 4 hours.
        let line = [at(0, 100.0), at(60, 160.0), at(120, 220.0)];
        let now = t0 + 2 * hour;
        assert_eq!(predict_linear(line.into_iter(), now, 4 * hour), Some(460.0));
        // Noise with no trend fits a flat line through its mean.
        let flat = [at(0, 10.0), at(1, 12.0), at(2, 12.0), at(3, 10.0)];
        let got = predict_linear(flat.into_iter(), t0 + Duration::from_secs(180), hour).unwrap();
        assert!((got - 11.0).abs() < 1e-9, "{got}");
        // One point, or points at one instant, have no line.
        assert_eq!(predict_linear([at(0, 1.0)].into_iter(), t0, hour), None);
        assert_eq!(
            predict_linear([at(0, 1.0), at(0, 2.0)].into_iter(), t0, hour),
            None
        );
    }

    #[test]
    fn memory_forecast_fires_on_growth_below_the_high_mark_and_keeps_few_points() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let poll = Duration::from_secs(15);
        let max = 1024.0 * 1024.0 * 1024.0;
        let mib = 1024.0 * 1024.0;
        // 4 MiB a minute from 200 MiB, polled every 15 s for 40 minutes: 960 MiB more in 4 h.
        for i in 0..=160u32 {
            let used = 200.0 * mib + mib * f64::from(i);
            e.observe(&memory(t0 + poll * i, used, max));
            let alerts = forecast_alerts(&e);
            match i {
                0..19 => assert!(alerts.is_empty(), "poll {i}: too few polls for a trend"),
                // Pending from the 20th poll, firing 30 minutes later.
                19..139 => assert_eq!(alerts[0].state, State::Pending, "poll {i}"),
                _ => assert_eq!(alerts[0].state, State::Firing, "poll {i}"),
            }
        }
        let fired = &forecast_alerts(&e)[0];
        // At 40 min: 360 MiB, and 960 MiB more in 4 hours; the fit through sparse points
        // and the current one is exact on a straight line.
        assert!(
            (fired.value - (360.0 + 960.0) / 1024.0).abs() < 1e-9,
            "{}",
            fired.value
        );
        let kept = |e: &Evaluator| {
            e.nodes[&("r".to_owned(), None)].trend["redis_memory_used_bytes"]
                .points
                .len()
        };
        // A point every 5 minutes (6 h / 72), not every poll.
        assert_eq!(kept(&e), 9);

        // Eight hours on, still at most one point per 5 minutes of the 6 h window.
        for i in 161..=2080u32 {
            e.observe(&memory(t0 + poll * i, 300.0 * mib, max));
        }
        assert!((72..=73).contains(&kept(&e)), "{}", kept(&e));

        // Past RedisMemoryHigh's 0.85 the forecast stops judging, and resolves.
        e.observe(&memory(t0 + poll * 2081, 0.9 * max, max));
        assert!(forecast_alerts(&e).is_empty());
    }

    #[test]
    fn memory_forecast_is_silent_when_flat_or_without_a_limit() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let poll = Duration::from_secs(15);
        let max = 1024.0 * 1024.0 * 1024.0;
        for i in 0..=200u32 {
            // 80% give or take 1 MiB of noise: no trend.
            let noise = if i % 2 == 0 { -1.0 } else { 1.0 } * 1024.0 * 1024.0;
            let changes = e.observe(&memory(t0 + poll * i, 0.8 * max + noise, max));
            assert!(
                !changes
                    .fired
                    .iter()
                    .any(|a| a.labels["alertname"] == "RedisMemoryFillingUp"),
                "poll {i}"
            );
        }
        assert!(forecast_alerts(&e).is_empty());
        let mut e = evaluator();
        for i in 0..=200u32 {
            e.observe(&memory(t0 + poll * i, 1e6 * f64::from(i), 0.0));
        }
        assert!(forecast_alerts(&e).is_empty());
    }

    #[test]
    fn a_restart_fires_once_the_node_has_15_minutes_of_history_and_resolves_15_minutes_later() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let poll = Duration::from_secs(15);
        let restarted = |e: &Evaluator| {
            e.firing()
                .iter()
                .filter(|a| a.labels["alertname"] == "RedisRestarted")
                .map(|a| a.value)
                .collect::<Vec<_>>()
        };
        let start = |at: Instant, started: f64| {
            obs(
                at,
                &[("redis_up", 1.0), ("redis_start_time_seconds", started)],
            )
        };
        // Running since 1_000_000 for 16 minutes, with the second of rounding once.
        for i in 0..64u32 {
            let rounding = if i == 5 { 1.0 } else { 0.0 };
            e.observe(&start(t0 + poll * i, 1_000_000.0 + rounding));
            assert!(restarted(&e).is_empty(), "poll {i}");
        }
        // Down for three polls, back as a new process started 1000 s after the first.
        for i in 64..67u32 {
            e.observe(&obs(t0 + poll * i, &[("redis_up", 0.0)]));
        }
        e.observe(&start(t0 + poll * 67, 1_001_000.0));
        assert_eq!(restarted(&e), vec![1000.0]);
        // Firing while the old start time is 15 minutes back; resolved after.
        for i in 68..127u32 {
            e.observe(&start(t0 + poll * i, 1_001_000.0));
            assert_eq!(restarted(&e), vec![1000.0], "poll {i}");
        }
        e.observe(&start(t0 + poll * 127, 1_001_000.0));
        assert!(restarted(&e).is_empty());

        // A node first seen restarting has no start time 15 minutes back: not judged.
        let mut e = evaluator();
        e.observe(&start(t0, 5.0));
        e.observe(&start(t0 + poll, 2_000.0));
        assert!(restarted(&e).is_empty());
    }

    #[test]
    fn series_change_is_per_series_and_needs_a_window_of_history() {
        let signal = Signal::SeriesChange("redis_key_size", Duration::from_secs(600));
        let mut e = evaluator();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        // A queue that grows by 10 a minute and one that stays at 5, for 41 minutes.
        for i in 0..=41u32 {
            let o = queues(
                t0 + minute * i,
                &[("queue:a", 10.0 * f64::from(i)), ("queue:b", 5.0)],
            );
            e.observe(&o);
            let history = &e.nodes[&o.key];
            let r = readings(&signal, &o.facts, history, o.at);
            if i < 10 {
                assert!(r.is_empty(), "no reading before a window of history ({i})");
                continue;
            }
            let of = |key: &str| r.iter().find(|(l, _)| l["key"] == key).map(|(_, v)| *v);
            assert_eq!(of("queue:a"), Some(100.0));
            assert_eq!(of("queue:b"), Some(0.0));
        }
        let growing: Vec<ActiveAlert> = e
            .active()
            .into_iter()
            .filter(|a| a.labels["alertname"] == "RedisQueueBacklogGrowing")
            .collect();
        assert_eq!(growing.len(), 1);
        assert_eq!(growing[0].labels["key"], "queue:a");
        assert_eq!(
            growing[0].state,
            State::Firing,
            "growing for 31 of 30 minutes"
        );
        // It drains: the alert resolves.
        let changes = e.observe(&queues(t0 + minute * 42, &[("queue:b", 5.0)]));
        assert_eq!(changes.resolved.len(), 1);
    }

    #[test]
    fn down_is_pending_then_fires_after_for_and_resolves_when_back() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let changes = e.observe(&obs(t0, &[("redis_up", 0.0)]));
        assert!(changes.fired.is_empty());
        let down = e
            .active()
            .into_iter()
            .find(|a| a.labels["alertname"] == "RedisDown")
            .unwrap();
        assert_eq!(down.state, State::Pending);
        // 59 s: still pending (for: 1m).
        assert!(e
            .observe(&obs(t0 + Duration::from_secs(59), &[("redis_up", 0.0)]))
            .fired
            .is_empty());
        let fired = e
            .observe(&obs(t0 + Duration::from_secs(60), &[("redis_up", 0.0)]))
            .fired;
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].labels["severity"], "critical");
        assert_eq!(fired[0].labels["target"], "r");
        assert!(fired[0].annotations["runbook_url"].ends_with("RedisDown.md"));
        let resolved = e
            .observe(&obs(t0 + Duration::from_secs(65), &[("redis_up", 1.0)]))
            .resolved;
        assert_eq!(resolved.len(), 1);
        assert!(e.firing().is_empty());
        let backlog = e.resolved_backlog();
        assert_eq!(backlog.len(), 1);
        e.delivered(&backlog);
        assert!(e.resolved_backlog().is_empty());
    }

    #[test]
    fn a_condition_that_clears_before_for_never_fires() {
        let mut e = evaluator();
        let t0 = Instant::now();
        e.observe(&obs(t0, &[("redis_up", 0.0)]));
        let changes = e.observe(&obs(t0 + Duration::from_secs(30), &[("redis_up", 1.0)]));
        assert_eq!(changes, Changes::default());
        assert!(
            e.resolved_backlog().is_empty(),
            "a pending alert that clears is not sent"
        );
        assert!(e
            .active()
            .iter()
            .all(|a| a.labels["alertname"] != "RedisDown"));
    }

    #[test]
    fn memory_ratio_ignores_no_limit_and_levels_fire_separately() {
        let mut e = evaluator();
        let t0 = Instant::now();
        e.observe(&memory(t0, 95.0, 0.0));
        assert!(e
            .active()
            .iter()
            .all(|a| !a.labels["alertname"].starts_with("RedisMemory")));
        let fired = fire_memory_alerts(&mut e, t0);
        let names: Vec<&str> = fired
            .iter()
            .map(|a| a.labels["alertname"].as_str())
            .collect();
        assert!(
            names.contains(&"RedisMemoryHigh") && names.contains(&"RedisMemoryWarning"),
            "{names:?}"
        );
        let high = fired
            .iter()
            .find(|a| a.labels["alertname"] == "RedisMemoryHigh")
            .unwrap();
        assert!(
            high.annotations["description"].contains(" uses 90% of maxmemory"),
            "{}",
            high.annotations["description"]
        );
    }

    #[test]
    fn swapping_needs_its_guard_and_its_for_and_a_slow_fork_fires_at_once() {
        let fired = |used: f64| {
            let mut e = evaluator();
            let t0 = Instant::now();
            let swapped = [
                ("redis_up", 1.0),
                ("redis_mem_fragmentation_ratio", 0.75),
                ("redis_memory_used_bytes", used),
                ("redis_latest_fork_seconds", 0.8),
            ];
            let first = e.observe(&obs(t0, &swapped)).fired;
            let before_for = e
                .observe(&obs(t0 + Duration::from_secs(299), &swapped))
                .fired;
            let after_for = e
                .observe(&obs(t0 + Duration::from_secs(301), &swapped))
                .fired;
            let names = |alerts: Vec<ActiveAlert>| -> Vec<String> {
                alerts
                    .into_iter()
                    .map(|a| a.labels["alertname"].clone())
                    .collect()
            };
            (names(first), names(before_for), names(after_for))
        };
        let (first, before_for, after_for) = fired(2.0 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(first, vec!["RedisForkSlow".to_owned()]);
        assert!(before_for.is_empty(), "{before_for:?}");
        assert_eq!(after_for, vec!["RedisSwapping".to_owned()]);
        // A small instance (100 MiB used, the guard wants more) is never judged for swapping.
        let (_, _, small) = fired(100.0 * 1024.0 * 1024.0);
        assert!(small.is_empty(), "{small:?}");
    }

    /// A node at 90% of maxmemory from `t0` to past every memory alert's `for` (15 min):
    /// what fired then.
    fn fire_memory_alerts(e: &mut Evaluator, t0: Instant) -> Vec<ActiveAlert> {
        let at_90 = [
            ("redis_up", 1.0),
            ("redis_memory_used_bytes", 90.0),
            ("redis_memory_max_bytes", 100.0),
        ];
        e.observe(&obs(t0, &at_90));
        e.observe(&obs(t0 + Duration::from_secs(901), &at_90)).fired
    }

    #[test]
    fn a_failed_poll_held_over_neither_resolves_nor_advances_the_nodes_alerts() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let fired = fire_memory_alerts(&mut e, t0);
        assert!(fired
            .iter()
            .any(|a| a.labels["alertname"] == "RedisMemoryHigh"));
        let high = |e: &Evaluator| {
            e.active()
                .iter()
                .any(|a| a.labels["alertname"] == "RedisMemoryHigh" && a.state == State::Firing)
        };
        // A timed-out poll: only its own facts, the node's series held over.
        let mut failed = obs(t0 + Duration::from_secs(905), &[("redis_up", 0.0)]);
        failed.held_over = true;
        let changes = e.observe(&failed);
        assert!(changes.resolved.is_empty(), "{:?}", changes.resolved);
        assert!(high(&e), "the memory alert is held");
        assert!(
            e.active()
                .iter()
                .any(|a| a.labels["alertname"] == "RedisDown"),
            "redis_up is judged as usual"
        );
        // Past the hold, the same facts resolve it.
        let gone = obs(t0 + Duration::from_secs(960), &[("redis_up", 0.0)]);
        let changes = e.observe(&gone);
        assert!(changes
            .resolved
            .iter()
            .any(|a| a.labels["alertname"] == "RedisMemoryHigh"));
        assert!(!high(&e));
    }

    #[test]
    fn a_series_without_a_label_keeps_one_reading_as_that_label_changes() {
        let signal = Signal::SeriesWithout("redis_sentinel_master_status", "master_status");
        let reading = |status: &str, value: f64| {
            let mut set = FamilySet::new();
            set.add(
                "redis_sentinel_master_status",
                "h",
                Kind::Gauge,
                vec![
                    ("master_name", "m".to_owned()),
                    ("master_status", status.to_owned()),
                ],
                value,
            );
            readings(&signal, &set, &NodeHistory::default(), Instant::now())
        };
        let sdown = reading("sdown", 0.0);
        let odown = reading("odown", 0.0);
        assert_eq!(sdown.len(), 1);
        assert_eq!(
            sdown, odown,
            "the same alert instance while sdown turns odown"
        );
        assert!(!sdown[0].0.contains_key("master_status"));
        assert_eq!(reading("ok", 1.0)[0].1, 1.0);
    }

    #[test]
    fn rates_come_from_the_history_of_changes() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let at = |s: u64, evicted: f64| {
            obs(
                t0 + Duration::from_secs(s),
                &[("redis_up", 1.0), ("redis_evicted_keys_total", evicted)],
            )
        };
        for s in (0..=300).step_by(5) {
            e.observe(&at(s, 0.0));
        }
        // 6000 evictions in the last 300 s: 20/s, above 10/s.
        for s in (305..=600).step_by(5) {
            e.observe(&at(s, (s - 300) as f64 * 20.0));
        }
        let spike = e
            .active()
            .into_iter()
            .find(|a| a.labels["alertname"] == "RedisEvictionSpike")
            .unwrap();
        assert!((spike.value - 20.0).abs() < 0.5, "{}", spike.value);
        assert_eq!(spike.state, State::Firing);
    }

    #[test]
    fn a_rate_over_several_counters_adds_them_up() {
        let mut e = evaluator();
        let t0 = Instant::now();
        // User 0.5 s and sys 0.35 s of main-thread CPU per second: 0.85 of a core, over 0.8
        // together though neither is alone.
        let at = |s: u64| {
            obs(
                t0 + Duration::from_secs(s),
                &[
                    ("redis_up", 1.0),
                    ("redis_cpu_user_main_thread_seconds_total", s as f64 * 0.5),
                    ("redis_cpu_sys_main_thread_seconds_total", s as f64 * 0.35),
                ],
            )
        };
        for s in (0..=1200).step_by(5) {
            e.observe(&at(s));
        }
        let busy = e
            .active()
            .into_iter()
            .find(|a| a.labels["alertname"] == "RedisMainThreadSaturated")
            .expect("fires after 10m over 0.8");
        assert!((busy.value - 0.85).abs() < 0.01, "{}", busy.value);
        assert_eq!(busy.state, State::Firing);
    }

    #[test]
    fn lifetime_totals_at_start_are_not_news_but_a_new_error_type_is() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let errors = |oom: Option<f64>| {
            let mut set = FamilySet::new();
            set.gauge("redis_up", "h", 1.0);
            set.add(
                "redis_errors_total",
                "h",
                Kind::Counter,
                vec![("err", "ERR".into())],
                3.0,
            );
            if let Some(v) = oom {
                set.add(
                    "redis_errors_total",
                    "h",
                    Kind::Counter,
                    vec![("err", "OOM".into())],
                    v,
                );
            }
            Arc::new(set)
        };
        let at = |s: u64, oom| Observation {
            key: ("r".into(), None),
            at: t0 + Duration::from_secs(s),
            facts: errors(oom),
            held_over: false,
            labels: Arc::new([]),
        };
        // 40 OOM errors happened before redis-lookout started: nothing fires.
        e.observe(&at(0, Some(40.0)));
        e.observe(&at(5, Some(40.0)));
        assert!(e
            .active()
            .iter()
            .all(|a| a.labels["alertname"] != "RedisOutOfMemoryErrors"));

        // On another node, OOM errors begin while we watch: the first one counts.
        let mut e = evaluator();
        e.observe(&at(0, None));
        let fired = e.observe(&at(5, Some(1.0))).fired;
        assert!(
            fired
                .iter()
                .any(|a| a.labels["alertname"] == "RedisOutOfMemoryErrors"),
            "{fired:?}"
        );
    }

    /// One `redis_errors_total{err}` series and `redis_up 1` (or a down node's `redis_up 0`).
    fn errors_of(err: &str, total: Option<f64>) -> Arc<FamilySet> {
        let mut set = FamilySet::new();
        set.gauge("redis_up", "h", f64::from(u8::from(total.is_some())));
        if let Some(v) = total {
            set.add(
                "redis_errors_total",
                "h",
                Kind::Counter,
                vec![("err", err.into())],
                v,
            );
        }
        Arc::new(set)
    }

    fn fired_names(e: &Evaluator) -> Vec<String> {
        e.active()
            .into_iter()
            .filter(|a| a.state == State::Firing)
            .map(|a| a.labels["alertname"].clone())
            .collect()
    }

    #[test]
    fn a_short_window_on_a_counter_does_not_cut_a_longer_ones_history() {
        // 1000 WRONGPASS before we started, then one more every 100 s: two in any 5 minutes,
        // under RedisUnauthorizedAccess' 5. The 2-minute MISCONF rule reads the same family.
        let mut e = evaluator();
        let t0 = Instant::now();
        for i in 0..=12u64 {
            let o = Observation {
                key: ("r".into(), None),
                at: t0 + Duration::from_secs(50 * i),
                facts: errors_of("WRONGPASS", Some(1000.0 + (i / 2) as f64)),
                held_over: false,
                labels: Arc::new([]),
            };
            e.observe(&o);
            let unauthorized = e
                .active()
                .into_iter()
                .find(|a| a.labels["alertname"] == "RedisUnauthorizedAccess");
            assert!(unauthorized.is_none(), "at {} s: {unauthorized:?}", 50 * i);
        }
    }

    #[test]
    fn a_lost_replica_resolves_once_the_hour_has_passed() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let at = |m: u32, replicas: f64| {
            obs(
                t0 + minute * m,
                &[("redis_up", 1.0), ("redis_connected_slaves", replicas)],
            )
        };
        e.observe(&at(0, 2.0));
        for m in 1..=10 {
            e.observe(&at(m, 0.0));
        }
        assert!(fired_names(&e).contains(&"RedisReplicaLost".to_owned()));
        // An hour after the drop nobody had two replicas within the window: resolved.
        for m in 11..=62 {
            e.observe(&at(m, 0.0));
        }
        assert!(
            !e.active()
                .iter()
                .any(|a| a.labels["alertname"] == "RedisReplicaLost"),
            "{:?}",
            e.active()
        );
    }

    #[test]
    fn lifetime_totals_are_not_news_when_the_first_polls_failed() {
        // Started with a wrong password (polls fail), fixed later: the 4000 WRONGPASS and the
        // other lifetime totals Redis then shows are history, not a burst.
        let mut e = evaluator();
        let t0 = Instant::now();
        let at = |s: u64, total| Observation {
            key: ("r".into(), None),
            at: t0 + Duration::from_secs(s),
            facts: errors_of("WRONGPASS", total),
            held_over: false,
            labels: Arc::new([]),
        };
        e.observe(&at(0, None));
        e.observe(&at(5, None));
        e.observe(&at(10, Some(4000.0)));
        e.observe(&at(15, Some(4000.0)));
        assert!(!fired_names(&e).contains(&"RedisUnauthorizedAccess".to_owned()));
        assert!(!e
            .active()
            .iter()
            .any(|a| a.labels["alertname"] == "RedisUnauthorizedAccess"));
    }

    #[test]
    fn a_restart_loading_its_dump_is_no_flush_but_an_empty_redis_is() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let at = |m: u32, keys: f64, loading: f64| {
            obs(
                t0 + minute * m,
                &[
                    ("redis_up", 1.0),
                    ("redis_db_keys", keys),
                    ("redis_loading_dump_file", loading),
                ],
            )
        };
        for m in 0..=20 {
            e.observe(&at(m, 200_000.0, 0.0));
        }
        let flushed = |e: &Evaluator| {
            e.active()
                .iter()
                .any(|a| a.labels["alertname"] == "RedisDatabaseFlushed")
        };
        e.observe(&at(21, 40_000.0, 1.0));
        assert!(!flushed(&e), "loading");
        e.observe(&at(22, 200_000.0, 0.0));
        assert!(!flushed(&e));
        e.observe(&at(23, 0.0, 0.0));
        assert!(flushed(&e), "empty and not loading");
    }

    #[test]
    fn a_counter_reset_inside_the_window_keeps_what_was_counted_before_it() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let at = |s: u64, total: f64| Observation {
            key: ("r".into(), None),
            at: t0 + Duration::from_secs(s),
            facts: errors_of("WRONGPASS", Some(total)),
            held_over: false,
            labels: Arc::new([]),
        };
        for (s, total) in [
            (0, 100.0),
            (60, 100.0),
            (120, 103.0),
            (180, 0.0),
            (240, 3.0),
        ] {
            e.observe(&at(s, total));
        }
        // 3 before Redis restarted and 3 after: 6 in 5 minutes, over the threshold of 5 (the
        // first and last points alone, 100 then 3, would say 3).
        let fired = e.active();
        let alert = fired
            .iter()
            .find(|a| a.labels["alertname"] == "RedisUnauthorizedAccess")
            .expect("fired");
        assert_eq!(alert.value, 6.0);
    }

    #[test]
    fn a_flush_is_judged_on_the_databases_that_held_keys_before_it() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let keys = |m: u32, dbs: &[(&str, f64)]| {
            let mut set = FamilySet::new();
            set.gauge("redis_up", "h", 1.0);
            set.gauge("redis_loading_dump_file", "h", 0.0);
            for (db, n) in dbs {
                set.add(
                    "redis_db_keys",
                    "h",
                    Kind::Gauge,
                    vec![("db", (*db).into())],
                    *n,
                );
            }
            Observation {
                key: ("r".into(), None),
                at: t0 + minute * m,
                facts: Arc::new(set),
                held_over: false,
                labels: Arc::new([]),
            }
        };
        for m in 0..=15 {
            e.observe(&keys(m, &[("db0", 50_000.0)]));
        }
        // db3 appears 5 minutes before everything is flushed: no value 10 minutes back, and
        // PromQL's sum over the series of then still reads 50000 (db0) before.
        for m in 16..=20 {
            e.observe(&keys(m, &[("db0", 50_000.0), ("db3", 10.0)]));
        }
        e.observe(&keys(21, &[("db0", 0.0), ("db3", 0.0)]));
        assert!(e
            .active()
            .iter()
            .any(|a| a.labels["alertname"] == "RedisDatabaseFlushed"));
    }

    #[test]
    fn delivered_resolutions_leave_the_backlog_and_newer_ones_stay() {
        let mut e = evaluator();
        let t0 = Instant::now();
        let resolved = |i: u64| {
            let alert = ActiveAlert {
                labels: Labels::from([("alertname".to_owned(), format!("A{i}"))]),
                annotations: BTreeMap::new(),
                state: State::Firing,
                value: 0.0,
                active_since: SystemTime::UNIX_EPOCH,
                since: t0,
            };
            (alert, SystemTime::UNIX_EPOCH + Duration::from_secs(i))
        };
        e.backlog = (0..5).map(resolved).collect();
        let sent = e.resolved_backlog();
        // While the push was out: two more resolved, and the oldest dropped past the cap.
        e.backlog.extend((5..7).map(resolved));
        e.backlog.remove(0);
        e.delivered(&sent);
        assert_eq!(
            e.resolved_backlog(),
            (5..7).map(resolved).collect::<Vec<_>>()
        );
        e.delivered(&[]);
        assert_eq!(e.resolved_backlog().len(), 2);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// On points that lie on a line, the forecast is that line read after the horizon,
        /// whatever the spacing of the points.
        #[test]
        fn predict_linear_is_exact_on_a_line(
            intercept in -1e9f64..1e9,
            slope in -1e6f64..1e6,
            gaps in proptest::collection::vec(1u64..600, 1..80),
            horizon in 0u64..86_400,
        ) {
            let t0 = Instant::now();
            let mut offsets = vec![0u64];
            for g in &gaps {
                offsets.push(offsets.last().unwrap() + g);
            }
            let now = t0 + Duration::from_secs(*offsets.last().unwrap());
            let points = offsets.iter().map(|o| {
                let at = t0 + Duration::from_secs(*o);
                let before_now = now.duration_since(at).as_secs_f64();
                (at, intercept - slope * before_now)
            });
            let got = predict_linear(points, now, Duration::from_secs(horizon)).unwrap();
            let want = intercept + slope * horizon as f64;
            let scale = intercept.abs() + (slope * 86_400.0 * 2.0).abs() + 1.0;
            prop_assert!((got - want).abs() <= 1e-6 * scale, "got {got}, want {want}");
        }
    }
}
