//! Configuration: one YAML file, overridden by environment variables, overridden by flags.
//!
//! redis_exporter's flag and env names are accepted for the options both have, so a unit file or
//! container command line can swap the binary and keep its arguments. Every problem in a file is
//! reported as `file:line:column: what`, before anything is served: parse errors with the YAML
//! library's position, checks made after parsing with `spot`'s. A bad flag names the flag.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The port redis_exporter registered, kept so scrape configs need no change.
/// IPv6 and IPv4 alike (see [`crate::http::bind`]), as redis_exporter's `:9121`.
pub const DEFAULT_LISTEN: &str = "[::]:9121";
pub const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_CONFIG_REFRESH: Duration = Duration::from_secs(60);
/// How long an on-demand or on-scrape node is polled after the last scrape that asked for it.
pub const DEFAULT_SCRAPE_IDLE: Duration = Duration::from_secs(600);
pub const DEFAULT_COMMAND_STATS_REFRESH: Duration = Duration::from_secs(30);
/// `/metrics` responses in flight at once, as node_exporter's `--web.max-requests`.
pub const DEFAULT_MAX_REQUESTS: usize = 40;

/// A configuration problem; `Display` names the file, line and column when there is a file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}:{line}:{column}: {message}")]
    At {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A password. It has no `Display`, and its `Debug` prints stars, so it cannot reach a log line.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The password itself, for AUTH only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A Redis address: `redis://`, `rediss://` (TLS) or `unix://`. A bare `host:port` means
/// `redis://host:port`, as in redis_exporter. `Display` never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(url::Url);

impl RedisUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("redis://{raw}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| format!("invalid Redis URL: {e}"))?;
        match url.scheme() {
            "redis" | "rediss" | "valkey" | "valkeys" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err("invalid Redis URL: no host".into());
                }
            }
            "unix" | "redis+unix" => {
                if url.path().is_empty() {
                    return Err("invalid Redis URL: no socket path".into());
                }
            }
            other => {
                return Err(format!(
                    "invalid Redis URL: scheme {other:?} is not one of redis, rediss, unix"
                ))
            }
        }
        Ok(RedisUrl(url))
    }

    /// The URL with credentials, for the client library only.
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// `host:port` (or the socket path): the `node` label and the default target name.
    pub fn address(&self) -> String {
        match self.0.host_str() {
            Some(host) => format!("{}:{}", host, self.0.port().unwrap_or(6379)),
            None => self.0.path().to_owned(),
        }
    }

    /// The same URL (scheme, credentials, TLS) pointing at another `host:port`: how a replica
    /// or cluster node found by discovery is reached.
    pub fn with_address(&self, addr: &str) -> Result<RedisUrl, String> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("address {addr:?} has no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("address {addr:?} has a bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut url = self.0.clone();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        url.set_host(Some(&host))
            .map_err(|e| format!("address {addr:?}: {e}"))?;
        url.set_port(Some(port))
            .map_err(|_| format!("address {addr:?}: cannot set port"))?;
        Ok(RedisUrl(url))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.0.scheme(), "rediss" | "valkeys")
    }

    pub fn has_credentials(&self) -> bool {
        !self.0.username().is_empty() || self.0.password().is_some()
    }

    /// The URL without user or password.
    pub fn redacted(&self) -> String {
        without_userinfo(&self.0)
    }
}

/// A URL as it may be shown (logs, errors, pages): without user or password.
pub fn without_userinfo(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        RedisUrl::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Where a target's password comes from. Read at connect time, so a rotated file is picked up
/// on the next reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PasswordSource {
    #[default]
    None,
    /// A file holding the password (trailing newline ignored), or redis_exporter's JSON map
    /// `{"redis://host:port": "password"}` keyed by the target's URL.
    File(PathBuf),
    /// An environment variable holding the password.
    Env(String),
    /// Given on the command line or in the URL.
    Literal(Secret),
}

/// One Redis server to watch, as the file spells it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    name: Option<String>,
    /// Optional for a Sentinel-defined target (its credentials then apply to the data nodes).
    url: Option<RedisUrl>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default, deserialize_with = "duration_field")]
    poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration_field")]
    poll_timeout: Option<Duration>,
    #[serde(default)]
    follow_replicas: bool,
    #[serde(default)]
    cluster: bool,
    #[serde(default)]
    seeds: Vec<RedisUrl>,
    keyspace: Option<KeyspaceFile>,
    tls: Option<crate::tls::TlsSettings>,
    sentinel: Option<SentinelFile>,
    watch: Option<WatchFile>,
    /// Overrides the file's top-level `polling` for this target.
    polling: Option<Polling>,
    /// CONFIG settings the operators require (`maxmemory-policy: allkeys-lru`).
    #[serde(default)]
    expect: std::collections::BTreeMap<String, ConfigScalar>,
    /// Labels added to every series and alert of the target (`team: payments`).
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

/// The first key of `map` that `problem` finds fault with, and the fault.
fn first_problem<V>(
    map: &std::collections::BTreeMap<String, V>,
    problem: fn(&str) -> Option<&'static str>,
) -> Option<(String, &'static str)> {
    map.keys()
        .find_map(|key| problem(key).map(|p| (key.clone(), p)))
}

/// What is wrong with an `expect:` setting name. Values are published as labels: never a
/// secret's, and one setting per entry.
fn expect_problem(setting: &str) -> Option<&'static str> {
    let lower = setting.trim().to_ascii_lowercase();
    if lower.contains("pass") || lower.contains("auth") {
        Some("holds a secret, which would be published as a label")
    } else if lower.is_empty() || lower.contains(['*', '?', '[']) {
        Some("must name one setting (no glob)")
    } else {
        None
    }
}

/// What is wrong with a `labels:` name.
fn label_problem(label: &str) -> Option<&'static str> {
    let valid = label
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if label.is_empty() || !valid {
        Some("is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    } else if label.starts_with("__") {
        Some("starts with __, which Prometheus reserves")
    } else if RESERVED_LABELS.contains(&label) {
        Some("is set by redis-lookout or Prometheus itself")
    } else {
        None
    }
}

/// Label names a target's `labels:` may not take: redis-lookout's own, and those Prometheus
/// sets on every scraped series.
pub const RESERVED_LABELS: &[&str] =
    &["target", "node", "instance", "job", "alertname", "severity"];

/// A configured label name with the lifetime the metrics model wants. Each distinct name is
/// leaked once (a config has a handful; reloads reuse them).
fn static_label(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    match names.get(name) {
        Some(known) => known,
        None => {
            let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
            names.insert(leaked);
            leaked
        }
    }
}

/// A Redis setting's value as YAML may spell it: a string, a number, or `yes`/`no` read as a
/// bool (YAML 1.1 habits).
#[derive(Debug, Clone)]
struct ConfigScalar(String);

impl<'de> Deserialize<'de> for ConfigScalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = ConfigScalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a setting's value as CONFIG GET prints it (a string or a number)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar(v.to_owned()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar(if v { "yes" } else { "no" }.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar(v.to_string()))
            }
        }
        d.deserialize_any(Scalar)
    }
}

/// When a target's nodes are polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Polling {
    /// All the time, from start (the default).
    #[default]
    Continuous,
    /// Only while `/scrape` asks for the node (a shard of a fleet behind Prometheus' hashmod):
    /// the topology is still discovered, and listed at `/discovery`.
    OnScrape,
}

/// `sentinel:` of a target: the Sentinels to ask and the master name they monitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SentinelFile {
    addrs: Vec<RedisUrl>,
    master: String,
    /// Credentials for the Sentinels themselves (the target's own are for the data nodes).
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

/// `keyspace:` of a target: the prefix sampler's settings (see `config.example.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyspaceFile {
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    must_expire: Vec<String>,
    /// The longest TTL a key under each prefix may have (`lock:` → 30s).
    #[serde(default)]
    max_ttl: std::collections::BTreeMap<String, LimitDuration>,
    auto: Option<bool>,
    delimiter: Option<char>,
    max_groups: Option<usize>,
    budget: Option<f64>,
    #[serde(default)]
    export_key_names: bool,
    top_keys: Option<usize>,
    memory_samples: Option<u32>,
    #[serde(default)]
    on_replicas: bool,
}

/// `watch:` of a target: the queues, streams and patterns to follow (see `config.example.yaml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchFile {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    streams: Vec<String>,
    #[serde(default)]
    count: Vec<String>,
    #[serde(default)]
    values: bool,
    #[serde(default)]
    consumers: bool,
    max_matches: Option<usize>,
    #[serde(default, deserialize_with = "duration_field")]
    interval: Option<Duration>,
    budget: Option<f64>,
    #[serde(default)]
    on_replicas: bool,
}

/// Ports an allow-list entry accepts: `6379`, or `"6379-6380"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    fn parse(text: &str) -> Result<PortRange, String> {
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("bad port {s:?}"))
        };
        let range = match text.split_once('-') {
            Some((a, b)) => PortRange {
                low: port(a)?,
                high: port(b)?,
            },
            None => {
                let p = port(text)?;
                PortRange { low: p, high: p }
            }
        };
        if range.low > range.high || range.low == 0 {
            return Err(format!(
                "port range {text:?} must be low-high with 0 < low <= high"
            ));
        }
        Ok(range)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (6379) or a range (\"6379-6380\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRange, E> {
                PortRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRange, E> {
                PortRange::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    hosts: Vec<String>,
    ports: PortRange,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default)]
    tls: bool,
}

/// Which addresses `/scrape?target=` may poll on demand, and with which credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowRule {
    /// Host names or IP literals; `*` matches within one label (see [`host_match`]). No DNS
    /// lookup is made.
    pub hosts: Vec<String>,
    pub ports: PortRange,
    pub username: Option<String>,
    pub password: PasswordSource,
    /// Reach allowed hosts with `rediss://`, with these settings (the `--tls-*` flags, as for
    /// configured targets without a `tls:` of their own); None: plain `redis://`.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl AllowRule {
    /// True when `host:port` may be polled under this rule. An IPv6 host matches an entry
    /// written with or without brackets, in any of its spellings (`fd00::1`, `[fd00:0::1]`).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let unbracket = |h: &str| h.strip_prefix('[')?.strip_suffix(']').map(str::to_owned);
        let host = host.to_ascii_lowercase();
        let host6 = unbracket(&host).and_then(|h| h.parse::<std::net::Ipv6Addr>().ok());
        port >= self.ports.low
            && port <= self.ports.high
            && self.hosts.iter().any(|pattern| {
                let pattern = pattern.to_ascii_lowercase();
                let bare = unbracket(&pattern).unwrap_or_else(|| pattern.clone());
                match (host6, bare.parse::<std::net::Ipv6Addr>()) {
                    (Some(h), Ok(p)) => h == p,
                    (Some(_), Err(_)) => host_match(&bare, &host[1..host.len() - 1]),
                    (None, _) => host_match(&pattern, &host),
                }
            })
    }
}

/// The one spelling of a host that `/scrape` matches and keys its pollers by, or None for a
/// host the system resolver would read as an IPv4 address written another way than
/// `a.b.c.d` in decimal without leading zeros (`10.0.0.05`, which it reads as octal;
/// `0x0a.0.0.5`; `167772165`): each spelling would be a different target for the allow-list
/// and the pollers' map, so one Redis could be given a poller per spelling.
pub fn canonical_host(host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    if host.starts_with('[') {
        return Some(host); // IPv6: the URL parser has written it in its canonical form
    }
    let last = host.rsplit('.').next().unwrap_or("");
    if last.starts_with(|c: char| c.is_ascii_digit()) {
        let canonical = host.parse::<std::net::Ipv4Addr>().ok()?.to_string();
        return (canonical == host).then_some(host);
    }
    Some(host)
}

/// Whether an allow-list host pattern admits `host`. A pattern that is `*` alone admits any
/// host. Otherwise pattern and host must have the same number of dot-separated labels, and each
/// label matches its own: `*` there stands for any run of characters but never a `.`. So
/// `10.0.0.*` admits `10.0.0.7` but not `10.0.0.7.attacker.example` (a name the caller could
/// point anywhere, which would receive the entry's credentials), and `*.cache.internal` admits
/// `a.cache.internal` but not `a.b.cache.internal`, as in TLS certificate wildcards.
pub fn host_match(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (mut p, mut h) = (pattern.split('.'), host.split('.'));
    loop {
        match (p.next(), h.next()) {
            (None, None) => return true,
            (Some(pl), Some(hl)) if label_match(pl.as_bytes(), hl.as_bytes()) => {}
            _ => return false,
        }
    }
}

/// `*` matches any run of bytes (including none); every other byte matches itself.
fn label_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// The most `keyspace.memory_samples` may ask of `MEMORY USAGE … SAMPLES` (Redis' default is 5;
/// each sampled element costs Redis time on every inspected key).
pub const MAX_MEMORY_SAMPLES: u32 = 64;

/// What is wrong with a poll interval and timeout, if anything: the setting at fault and why.
/// Checked for the global settings (on-demand pollers use them) and for each target's.
fn poll_times_problem(interval: Duration, timeout: Duration) -> Option<(&'static str, String)> {
    if interval < Duration::from_millis(100) {
        return Some((
            "poll_interval",
            "poll_interval must be at least 100ms".into(),
        ));
    }
    (timeout.is_zero() || timeout > interval).then(|| {
        (
            "poll_timeout",
            format!(
                "poll_timeout ({}) must be above 0 and at most poll_interval ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        )
    })
}

/// The exporter's own endpoints (besides `/runbooks/…`), which the telemetry path may not
/// take over: `/-/healthy` answers without authentication, for one.
pub const RESERVED_PATHS: &[&str] = &[
    "/",
    "/-/healthy",
    "/health",
    "/-/ready",
    "/-/reload",
    "/scrape",
    "/discovery",
    "/discover-cluster-nodes",
    "/alerts",
];

/// The YAML file's shape. Every key is documented in `config.example.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    telemetry_path: Option<String>,
    gzip: Option<bool>,
    max_requests: Option<usize>,
    #[serde(default, deserialize_with = "duration_field")]
    poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration_field")]
    poll_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration_field")]
    config_refresh: Option<Duration>,
    #[serde(default, deserialize_with = "duration_field")]
    command_stats_refresh: Option<Duration>,
    log_format: Option<LogFormat>,
    #[serde(default, deserialize_with = "log_level_field")]
    log_level: Option<String>,
    #[serde(default)]
    targets: Vec<TargetFile>,
    #[serde(default)]
    scrape_allow: Vec<AllowFile>,
    #[serde(default, deserialize_with = "duration_field")]
    scrape_idle: Option<Duration>,
    polling: Option<Polling>,
    alerting: Option<AlertingFile>,
    web_config_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertingFile {
    /// One Alertmanager (the DESIGN sketch's spelling) …
    alertmanager: Option<String>,
    /// … or several.
    #[serde(default)]
    alertmanagers: Vec<String>,
    #[serde(default, deserialize_with = "duration_field")]
    resend_interval: Option<Duration>,
    runbook_base_url: Option<String>,
    #[serde(default)]
    thresholds: std::collections::BTreeMap<String, crate::alerts::ThresholdOverride>,
    /// Regex of the Prometheus jobs whose failed scrapes page (RedisExporterDown).
    exporter_jobs: Option<String>,
}

/// The in-process alerting daemon's settings (present when the file has `alerting:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Alerting {
    /// Base URLs of Alertmanagers to push to (API v2); none means evaluate only (`/alerts`).
    pub alertmanagers: Vec<String>,
    pub resend_interval: Duration,
    pub runbook_base_url: String,
    /// The pack with the configured thresholds.
    pub rules: Vec<crate::alerts::AlertRule>,
}

/// Log line format: `txt` (logfmt-like text) or `json`, as redis_exporter names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    #[value(alias = "text")]
    #[serde(alias = "text")]
    Txt,
    Json,
}

/// Checks a log level and returns it as the logging library reads it: `error`, `warn`, `info`,
/// `debug`, `trace` or `off`, or comma-separated `target=level` directives with at most one bare
/// level among them (`warn,redis_lookout=debug`). redis_exporter's spellings (logrus: `warning`,
/// `fatal`, `panic`) are taken as `warn` and `error`, so its env and flags carry over. Stricter
/// than the library, which reads any unknown word as a target to trace, so that a typo such as
/// `verbose` would silence every log line instead of being refused.
pub fn check_log_level(raw: &str) -> Result<String, String> {
    let level = |word: &str| {
        let word = word.trim();
        if word.is_empty() {
            return None;
        }
        let word = match word.to_ascii_lowercase().as_str() {
            "warning" => "warn",
            "fatal" | "panic" => "error",
            _ => word,
        };
        word.parse::<tracing_subscriber::filter::LevelFilter>()
            .ok()
            .map(|_| word.to_owned())
    };
    let refused = || {
        format!(
            "{raw:?} is not a log level: expected error, warn, info, debug, trace or off, or target=level pairs separated by commas"
        )
    };
    let mut bare = 0;
    let mut directives = Vec::new();
    for directive in raw.split(',') {
        let read = match directive.split_once('=') {
            Some((target, lvl)) if !target.trim().is_empty() => {
                level(lvl).map(|l| format!("{}={l}", target.trim()))
            }
            Some(_) => None,
            None => {
                bare += 1;
                level(directive)
            }
        };
        directives.push(read.ok_or_else(refused)?);
    }
    let filter = directives.join(",");
    if bare > 1
        || filter
            .parse::<tracing_subscriber::filter::Targets>()
            .is_err()
    {
        return Err(refused());
    }
    Ok(filter)
}

/// The longest duration any setting takes. Nothing here means more than a year, and far
/// beyond it (humantime reads `200000000000y`) `now + interval` overflows and panics a task.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// A duration setting (`5s`, `1m30s`, `250ms`), at most [`MAX_DURATION`]: for the config file
/// and the command line alike.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw.trim()).map_err(|e| format!("{raw:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "{raw:?} is longer than the longest duration allowed, 366d"
        ));
    }
    Ok(d)
}

/// A duration in a file, checked while the scalar is read (see [`checked_field`]).
fn duration_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    checked_field(d, "a duration such as 5s, 1m30s or 250ms", parse_duration)
}

/// A duration above zero as a map's value (`max_ttl`), checked while the scalar is read so that
/// an error names its line and column.
#[derive(Debug, Clone, Copy)]
struct LimitDuration(Duration);

impl<'de> Deserialize<'de> for LimitDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let check = |raw: &str| match parse_duration(raw) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(format!("{raw:?}: a limit must be above 0")),
            Err(e) => Err(format!("{e} (a limit is a duration above 0: 30s, 1h, 24h)")),
        };
        match checked_field(d, "a duration above 0 such as 30s, 1h or 24h", check)? {
            Some(d) => Ok(LimitDuration(d)),
            None => Err(serde::de::Error::custom(
                "a duration above 0 such as 30s, 1h or 24h",
            )),
        }
    }
}

/// `log_level` in a file, checked while the scalar is read (see [`checked_field`]).
fn log_level_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked_field(d, "a log level", check_log_level)
}

/// An optional scalar checked by `check` while it is read, so that the error carries its line
/// and column (an error raised after the field is read points at the enclosing mapping).
fn checked_field<'de, D: serde::Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    check: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    struct Checked<T> {
        expecting: &'static str,
        check: fn(&str) -> Result<T, String>,
    }
    impl<T> serde::de::Visitor<'_> for Checked<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<T, E> {
            (self.check)(raw).map_err(E::custom)
        }
    }
    struct Optional<T>(Checked<T>);
    impl<'de, T> serde::de::Visitor<'de> for Optional<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.0.expecting)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            d.deserialize_str(self.0).map(Some)
        }
    }
    d.deserialize_option(Optional(Checked { expecting, check }))
}

/// Where a password comes from: a file, an environment variable, or the URL itself.
fn password_source(
    file: &Option<PathBuf>,
    env: &Option<String>,
    url: Option<&RedisUrl>,
) -> Result<PasswordSource, String> {
    Ok(match (file, env) {
        (Some(_), Some(_)) => return Err("set password_file or password_env, not both".into()),
        (Some(file), None) => PasswordSource::File(file.clone()),
        (None, Some(var)) => PasswordSource::Env(var.clone()),
        (None, None) => match url.and_then(|u| u.url().password()) {
            Some(p) => PasswordSource::Literal(Secret::new(percent_decode(p))),
            None => PasswordSource::None,
        },
    })
}

/// A target after merging file, env and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The `target` label: the configured name, or `host:port` of the address.
    pub name: String,
    pub url: RedisUrl,
    pub username: Option<String>,
    pub password: PasswordSource,
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
    /// Also poll the replicas the master lists in INFO, as nodes of this target.
    pub follow_replicas: bool,
    /// A Redis Cluster: discover every node from CLUSTER NODES and poll each.
    pub cluster: bool,
    /// More addresses to ask for CLUSTER NODES when `url` does not answer.
    pub seeds: Vec<RedisUrl>,
    /// The keyspace prefix sampler, when configured.
    pub keyspace: Option<crate::keyspace::KeyspaceConfig>,
    /// TLS settings for a `rediss://` URL; discovered nodes inherit them.
    pub tls: crate::tls::TlsSettings,
    /// A target whose master and replicas are found through Sentinel.
    pub sentinel: Option<SentinelTarget>,
    /// The watched keys, streams and counted patterns, when configured.
    pub watch: Option<crate::keyspace::watched::WatchConfig>,
    /// `polling: on_scrape`: a node is polled only while `/scrape` asks for it, and stops
    /// `scrape_idle` after the last such scrape; false: polled all the time.
    pub on_scrape: bool,
    /// For a node discovered from a configured target (a replica, a cluster node): the
    /// configured URL, whose entry of a JSON password map serves the node when the map has
    /// none of its own (see [`read_password_at`]).
    pub discovered_from: Option<RedisUrl>,
    /// `expect:` CONFIG settings (lowercase name, value) every node of the target should have.
    pub expect: Vec<(String, String)>,
    /// `labels:` added to every series and alert of the target, after `target` and `node`.
    pub labels: Arc<[(&'static str, String)]>,
}

/// How to reach the Sentinels of a Sentinel-defined target.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelTarget {
    pub addrs: Vec<RedisUrl>,
    /// The master name the Sentinels monitor (`sentinel monitor <name> …`).
    pub master: String,
    pub username: Option<String>,
    /// From `password_file`/`password_env`; otherwise each address's URL may carry one.
    pub password: PasswordSource,
}

impl Target {
    /// The labels every series of this target's `node` (None: the target itself, a roll-up)
    /// starts with: `target`, `node`, then the target's own `labels:`.
    pub fn base_labels(&self, node: Option<&str>) -> Vec<(&'static str, String)> {
        let mut labels = vec![("target", self.name.clone())];
        if let Some(node) = node {
            labels.push(("node", node.to_owned()));
        }
        labels.extend(self.labels.iter().cloned());
        labels
    }

    /// One node, nothing discovered and no keyspace tasks (an on-demand `/scrape` target, a
    /// Sentinel).
    pub fn plain(
        name: String,
        url: RedisUrl,
        username: Option<String>,
        password: PasswordSource,
        poll_interval: Duration,
        poll_timeout: Duration,
    ) -> Target {
        Target {
            name,
            url,
            username,
            password,
            poll_interval,
            poll_timeout,
            follow_replicas: false,
            cluster: false,
            seeds: Vec::new(),
            keyspace: None,
            sentinel: None,
            watch: None,
            tls: Default::default(),
            on_scrape: false,
            discovered_from: None,
            expect: Vec::new(),
            labels: Arc::new([]),
        }
    }

    /// The same target reached at another node (same credentials, TLS and timing).
    pub fn for_node(&self, addr: &str) -> Result<Target, String> {
        Ok(Target {
            url: self.url.with_address(addr)?,
            discovered_from: Some(self.discovered_from.clone().unwrap_or(self.url.clone())),
            follow_replicas: false,
            cluster: false,
            seeds: Vec::new(),
            sentinel: None,
            ..self.clone()
        })
    }

    /// As [`Target::for_node`], for a node that announces a host name (a cluster node's
    /// `cluster-announce-hostname`): over TLS its certificate is checked for that name, where
    /// the target does not set `server_name` itself, rather than for the IP it is reached at.
    pub fn for_named_node(&self, addr: &str, hostname: Option<&str>) -> Result<Target, String> {
        let mut node = self.for_node(addr)?;
        if let (Some(name), true, None) = (hostname, node.url.is_tls(), &node.tls.server_name) {
            node.tls.server_name = Some(name.to_owned());
        }
        Ok(node)
    }

    /// The target as seen by one of its Sentinels: that address, the Sentinels' credentials,
    /// no keyspace sampler.
    pub fn for_sentinel(&self, url: &RedisUrl) -> Option<Target> {
        let sentinel = self.sentinel.as_ref()?;
        Some(Target {
            tls: self.tls.clone(),
            on_scrape: self.on_scrape,
            ..Target::plain(
                self.name.clone(),
                url.clone(),
                sentinel.username.clone(),
                sentinel.password.clone(),
                self.poll_interval,
                self.poll_timeout,
            )
        })
    }
}

/// The whole running configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub telemetry_path: String,
    /// gzip `/metrics` and `/scrape` for clients that accept it.
    pub gzip: bool,
    /// `/metrics` responses in flight at once (until their last byte is written); more get
    /// 503. 0: no limit.
    pub max_requests: usize,
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
    pub config_refresh: Duration,
    /// How often INFO commandstats/latencystats are fetched (published from cache between).
    pub command_stats_refresh: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    pub targets: Vec<Target>,
    /// `/scrape` is off while this is empty.
    pub scrape_allow: Vec<AllowRule>,
    /// An on-demand poller not scraped for this long is stopped.
    pub scrape_idle: Duration,
    pub alerting: Option<Alerting>,
    /// The exporter's own HTTPS and basic auth (`--web.config.file`), when given.
    pub web: Option<crate::web_config::WebConfig>,
    /// Publish the process' own `process_*` metrics (off with `--redis-only-metrics`).
    pub process_metrics: bool,
}

/// Values given by flags or their environment variables (clap fills both; flags win).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub redis_addr: Option<String>,
    pub redis_user: Option<String>,
    pub redis_password: Option<String>,
    pub redis_password_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub telemetry_path: Option<String>,
    pub poll_interval: Option<Duration>,
    pub poll_timeout: Option<Duration>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    /// redis_exporter's `--tls-*` flags: TLS for targets with no `tls:` of their own.
    pub tls: crate::tls::TlsSettings,
    pub web_config_file: Option<PathBuf>,
    /// redis_exporter's `--is-cluster`: the `--redis.addr` target (or the implicit local one)
    /// is a cluster seed.
    pub is_cluster: bool,
    /// redis_exporter's `--connection-timeout`: caps the default poll timeout.
    pub connection_timeout: Option<Duration>,
    /// redis_exporter's `--redis-only-metrics`: leave out the exporter's process_* metrics.
    pub redis_only_metrics: bool,
    /// redis_exporter's key checks for the `--redis.addr` target, as `watch:` entries
    /// (`db3=pattern` or `pattern`).
    pub exporter_watch: ExporterWatch,
}

/// redis_exporter's `--check-keys` and `--check-single-keys` (watched keys), `--count-keys`
/// (counted patterns), `--check-streams` and `--check-single-streams` (watched streams).
#[derive(Debug, Clone, Default)]
pub struct ExporterWatch {
    pub keys: Vec<String>,
    pub count: Vec<String>,
    pub streams: Vec<String>,
}

impl ExporterWatch {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.count.is_empty() && self.streams.is_empty()
    }
}

impl Config {
    /// Reads the file (if any) and applies the overrides.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let text;
        let file = match &overrides.config_file {
            Some(path) => {
                text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    file: path.display().to_string(),
                    message: format!("cannot read: {e}"),
                })?;
                let parsed = parse_file(path, &text)?;
                Some((path.as_path(), text.as_str(), parsed))
            }
            None => None,
        };
        resolve(file, overrides)
    }

    /// Parses a YAML text as if it came from `path`, with no overrides (tests, `--check-config`).
    pub fn from_yaml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let parsed = parse_file(path, text)?;
        resolve(Some((path, text, parsed)), &Overrides::default())
    }
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let file = path.display().to_string();
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml::from_str::<FileConfig>(text).map_err(|e| yaml_error(file, &e))
}

/// A YAML parse error as `file:line:column: what` (or `file: what` without a location).
pub(crate) fn yaml_error(file: String, e: &serde_yaml::Error) -> ConfigError {
    // The YAML library quotes a value it could not take (`invalid type: string "…"`): a URL
    // given where a list was expected must not bring its password into the error.
    let message = redact_bcrypt(&redact_userinfo(&strip_location(&e.to_string())));
    match e.location() {
        Some(loc) => ConfigError::At {
            file,
            line: loc.line(),
            column: loc.column(),
            message,
        },
        None => ConfigError::File { file, message },
    }
}

/// `text` with every bcrypt hash (`$2b$12$…`, a web config's password) cut to its prefix: a
/// hash given where the file wanted a map is quoted by the YAML library, and a hash is a
/// password's stand-in that must not be handed to whoever reads logs.
pub(crate) fn redact_bcrypt(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("$2") {
        let tail = &rest[i..];
        let b = tail.as_bytes();
        let is_hash = b.len() > 7
            && matches!(b[2], b'a' | b'b' | b'x' | b'y')
            && b[3] == b'$'
            && b[4].is_ascii_digit()
            && b[5].is_ascii_digit()
            && b[6] == b'$';
        if !is_hash {
            out.push_str(&rest[..i + 2]);
            rest = &rest[i + 2..];
            continue;
        }
        let body = tail[7..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '/'))
            .map_or(tail.len(), |n| n + 7);
        out.push_str(&rest[..i]);
        out.push_str(&tail[..7]);
        out.push_str("<hash hidden>");
        rest = &tail[body..];
    }
    out.push_str(rest);
    out
}

/// `text` with the userinfo (`user:password@`) of every `scheme://…` in it removed. A URL
/// ends at the next double quote (the library quotes values) or, unquoted, at white space.
pub(crate) fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let quoted = rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric())
            && rest[..i]
                .rfind('"')
                .is_some_and(|q| !rest[q..i].contains(char::is_whitespace));
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = if quoted {
            rest.find('"')
        } else {
            rest.find(char::is_whitespace)
        }
        .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The YAML library appends " at line L column C"; we put the location in front instead.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// One step of a path into a YAML file: a mapping key or a sequence item (from 0).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step<'a> {
    Key(&'a str),
    Item(usize),
}

/// Where `path` (say `targets`, item 3, `keyspace`, `budget`) stands in a block-style YAML
/// text, as (line, column) from 1, for problems found after parsing (a value out of range, two
/// settings that exclude each other), so that they point into the file as parse errors do.
/// Where the path stops being found (a key left out, or flow style such as `{...}`, which is
/// not followed) the answer is the deepest step found: a missing `url` points at its target.
/// None when not even the first step is found.
pub(crate) fn spot(text: &str, path: &[Step]) -> Option<(usize, usize)> {
    /// A line with content: its number, the column of its first character (a dash counts) and
    /// of its content after any `- `, and that content.
    struct Line<'t> {
        number: usize,
        indent: usize,
        col: usize,
        content: &'t str,
    }
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .filter_map(|(number, line)| {
            let indent = line.len() - line.trim_start_matches(' ').len();
            let mut content = &line[indent..];
            if content.is_empty() || content.starts_with('#') || content.starts_with("---") {
                return None;
            }
            while let Some(rest) = content.strip_prefix("- ") {
                content = rest.trim_start_matches(' ');
            }
            let col = line.len() - content.len();
            Some(Line {
                number,
                indent,
                col,
                content,
            })
        })
        .collect();
    let is_key = |content: &str, key: &str| {
        ["", "\"", "'"].iter().any(|q| {
            content
                .strip_prefix(q)
                .and_then(|c| c.strip_prefix(key))
                .and_then(|c| c.strip_prefix(q))
                .and_then(|c| c.strip_prefix(':'))
                .is_some_and(|c| c.is_empty() || c.starts_with(' '))
        })
    };
    let (mut lo, mut hi) = (0, lines.len());
    let mut here = None;
    for step in path {
        let Some(first) = lines.get(lo).filter(|_| lo < hi) else {
            break;
        };
        let found = match *step {
            Step::Key(key) => {
                let block = first.col;
                (lo..hi)
                    .find(|&j| lines[j].col == block && is_key(lines[j].content, key))
                    .map(|j| {
                        // Its value's lines: deeper ones, or a sequence at the key's own indent.
                        let end = (j + 1..hi)
                            .find(|&m| {
                                let l = &lines[m];
                                l.indent < block || (l.indent == block && l.col == l.indent)
                            })
                            .unwrap_or(hi);
                        (j, j + 1, end)
                    })
            }
            Step::Item(index) => {
                let dash = first.indent;
                let mut items =
                    (lo..hi).filter(|&j| lines[j].indent == dash && lines[j].col > dash);
                items.nth(index).map(|j| {
                    let end = (j + 1..hi).find(|&m| lines[m].indent <= dash).unwrap_or(hi);
                    (j, j, end)
                })
            }
        };
        let Some((at, from, to)) = found else {
            break;
        };
        here = Some((lines[at].number + 1, lines[at].col + 1));
        (lo, hi) = (from, to);
    }
    here
}

/// A problem with what `file` (whose text is `text`) says at `steps`: `file:line:column` where
/// [`spot`] finds the setting, else the file alone.
pub(crate) fn problem_at(file: &Path, text: &str, steps: &[Step], message: String) -> ConfigError {
    let file = file.display().to_string();
    match spot(text, steps) {
        Some((line, column)) => ConfigError::At {
            file,
            line,
            column,
            message,
        },
        None => ConfigError::File { file, message },
    }
}

fn resolve(file: Option<(&Path, &str, FileConfig)>, o: &Overrides) -> Result<Config, ConfigError> {
    let (path, text, f) = match file {
        Some((p, t, f)) => (Some(p), t, f),
        None => (None, "", FileConfig::default()),
    };
    // A problem with what the file says at `steps` (no file: only flags and defaults).
    let at = |steps: &[Step], message: String| match path {
        Some(p) => problem_at(p, text, steps, message),
        None => ConfigError::Invalid(message),
    };
    use Step::{Item, Key};

    let listen = match (&o.listen, &f.listen) {
        (Some(flag), _) => parse_listen(flag)
            .map_err(|e| ConfigError::Invalid(format!("--web.listen-address: {e}")))?,
        (None, Some(raw)) => parse_listen(raw).map_err(|e| at(&[Key("listen")], e))?,
        (None, None) => parse_listen(DEFAULT_LISTEN).map_err(ConfigError::Invalid)?,
    };
    let telemetry_path = o
        .telemetry_path
        .clone()
        .or(f.telemetry_path.clone())
        .unwrap_or_else(|| "/metrics".to_owned());
    let reserved = RESERVED_PATHS.contains(&telemetry_path.as_str())
        || telemetry_path.starts_with("/runbooks/");
    // A request's path is compared as sent: a character a client would percent-encode (or
    // that starts a query or a fragment) makes a path no request can match.
    let unmatchable = telemetry_path
        .chars()
        .any(|c| !(c.is_ascii_graphic()) || matches!(c, '?' | '#' | '%'));
    if !telemetry_path.starts_with('/') || telemetry_path.len() < 2 || reserved || unmatchable {
        let message = if reserved {
            format!("telemetry path {telemetry_path:?} is one of the exporter's own endpoints")
        } else if unmatchable {
            format!(
                "telemetry path {telemetry_path:?} can never be requested as written: use \
                 ASCII letters, digits and / - . _ ~ only (no space, ?, # or %)"
            )
        } else {
            format!("telemetry path {telemetry_path:?} must start with / and name a path")
        };
        return Err(match o.telemetry_path {
            Some(_) => ConfigError::Invalid(format!("--web.telemetry-path: {message}")),
            None => at(&[Key("telemetry_path")], message),
        });
    }
    let poll_interval = o
        .poll_interval
        .or(f.poll_interval)
        .unwrap_or(DEFAULT_POLL_INTERVAL);
    // An explicit timeout is checked against the interval; the default shrinks to fit it.
    let explicit_timeout = o.poll_timeout.or(f.poll_timeout);
    // redis_exporter's --connection-timeout can only shorten the default (its own default,
    // 15s, is longer than any interval that fits it).
    let default_timeout = |interval: Duration| {
        let fitted = DEFAULT_POLL_TIMEOUT.min(interval);
        o.connection_timeout.map_or(fitted, |c| fitted.min(c))
    };
    let poll_timeout = explicit_timeout.unwrap_or(default_timeout(poll_interval));
    // Checked here too (each target checks its own below): on-demand /scrape pollers use
    // these, in a process that may have no configured target at all.
    let global = |key: &'static str, flag: bool, message: String| {
        if flag {
            ConfigError::Invalid(format!("--{}: {message}", key.replace('_', "-")))
        } else {
            at(&[Key(key)], message)
        }
    };
    let flag_given = |key: &str| match key {
        "poll_interval" => o.poll_interval.is_some(),
        _ => o.poll_timeout.is_some(),
    };
    if let Some((key, message)) = poll_times_problem(poll_interval, poll_timeout) {
        return Err(global(key, flag_given(key), message));
    }
    let scrape_idle = f.scrape_idle.unwrap_or(DEFAULT_SCRAPE_IDLE);
    if scrape_idle < Duration::from_secs(1) {
        return Err(at(
            &[Key("scrape_idle")],
            "scrape_idle must be at least 1s (an on-demand poller would stop between scrapes)"
                .into(),
        ));
    }
    let config_refresh = f.config_refresh.unwrap_or(DEFAULT_CONFIG_REFRESH);

    let mut file_targets = f.targets;
    if let Some(addr) = &o.redis_addr {
        let url = RedisUrl::parse(addr)
            .map_err(|e| ConfigError::Invalid(format!("--redis.addr: {e}")))?;
        match file_targets.len() {
            0 => file_targets.push(TargetFile {
                url: Some(url),
                ..TargetFile::default()
            }),
            1 => file_targets[0].url = Some(url),
            n => {
                return Err(at(
                    &[Key("targets")],
                    format!(
                        "--redis.addr/REDIS_ADDR names one Redis but the file lists {n} targets; \
                     remove one or the other"
                    ),
                ))
            }
        }
    }
    // The implicit local Redis is for a bare start; a /scrape-only process polls on demand.
    if file_targets.is_empty() && f.scrape_allow.is_empty() {
        file_targets.push(TargetFile {
            url: Some(RedisUrl::parse(DEFAULT_REDIS).map_err(ConfigError::Invalid)?),
            ..TargetFile::default()
        });
    }
    // redis_exporter's flags that describe its one Redis apply to the --redis.addr target (or
    // the implicit local one); with targets in the file, which one is meant cannot be told.
    let single = |flag: &str, key: &str| {
        ConfigError::Invalid(format!(
            "{flag} describes the --redis.addr target; with targets in the file, set {key} on the target instead"
        ))
    };
    let given = [
        (
            o.is_cluster,
            "--is-cluster/REDIS_EXPORTER_IS_CLUSTER",
            "cluster: true",
        ),
        (
            !o.exporter_watch.is_empty(),
            "--check-keys, --check-single-keys, --count-keys or --check-streams",
            "watch:",
        ),
    ];
    if let Some((_, flag, key)) = given.iter().find(|(set, ..)| *set) {
        // The one target they can mean: --redis.addr's, or the only, unnamed one.
        let target = match file_targets.as_mut_slice() {
            [only] if o.redis_addr.is_some() || only.name.is_none() => only,
            _ => return Err(single(flag, key)),
        };
        target.cluster |= o.is_cluster;
        if !o.exporter_watch.is_empty() {
            let watch = target.watch.get_or_insert_with(WatchFile::default);
            watch.keys.extend(o.exporter_watch.keys.iter().cloned());
            watch.count.extend(o.exporter_watch.count.iter().cloned());
            watch
                .streams
                .extend(o.exporter_watch.streams.iter().cloned());
        }
    }

    let mut targets: Vec<Target> = Vec::with_capacity(file_targets.len());
    for (index, mut t) in file_targets.into_iter().enumerate() {
        // A problem with this target's `key` (or the target, where the key is left out).
        let in_target = |key: &[&str], message: String| {
            let mut steps = vec![Key("targets"), Item(index)];
            steps.extend(key.iter().map(|k| Key(k)));
            at(&steps, message)
        };
        let sentinel = match t.sentinel.take() {
            None => None,
            Some(s) => {
                let label = t.name.clone().unwrap_or_else(|| s.master.clone());
                if s.addrs.is_empty() || s.master.trim().is_empty() {
                    return Err(in_target(&["sentinel"], format!(
                        "target {label:?}: sentinel needs at least one address in addrs and a master name"
                    )));
                }
                if t.cluster || t.follow_replicas || !t.seeds.is_empty() {
                    return Err(in_target(
                        &["sentinel"],
                        format!(
                            "target {label:?}: a sentinel target already polls the master and its \
                         replicas; drop cluster, follow_replicas and seeds"
                        ),
                    ));
                }
                let password =
                    password_source(&s.password_file, &s.password_env, None).map_err(|e| {
                        in_target(&["sentinel"], format!("target {label:?}: sentinel: {e}"))
                    })?;
                Some(SentinelTarget {
                    addrs: s.addrs,
                    master: s.master,
                    username: s.username,
                    password,
                })
            }
        };
        let url = match (t.url.take(), &sentinel) {
            (Some(url), _) => url,
            // The data nodes' scheme follows the Sentinels'; their addresses come from Sentinel.
            (None, Some(s)) => {
                RedisUrl::parse(&s.addrs[0].redacted()).map_err(ConfigError::Invalid)?
            }
            (None, None) => {
                return Err(in_target(
                    &["url"],
                    format!(
                        "target {:?}: url is required (or a sentinel section)",
                        t.name.as_deref().unwrap_or("")
                    ),
                ))
            }
        };
        let name = t
            .name
            .clone()
            .or_else(|| sentinel.as_ref().map(|s| s.master.clone()))
            .unwrap_or_else(|| url.address());
        if name.is_empty() || name.len() > 200 {
            return Err(in_target(
                &["name"],
                format!("target name {name:?} must be 1 to 200 characters"),
            ));
        }
        if targets.iter().any(|other| other.name == name) {
            return Err(in_target(
                &["name"],
                format!("target name {name:?} is used twice"),
            ));
        }
        let mut password = password_source(&t.password_file, &t.password_env, Some(&url))
            .map_err(|e| in_target(&["password_env"], format!("target {name:?}: {e}")))?;
        let mut username = t.username.clone().or_else(|| {
            let user = url.url().username();
            (!user.is_empty()).then(|| percent_decode(user))
        });
        // redis_exporter's global credentials fill in what a target does not bring itself:
        // `REDIS_ADDR=redis://exporter@host:6379` with `REDIS_PASSWORD` authenticates as
        // `exporter` with that password, as it does there.
        if username.is_none() {
            username = o.redis_user.clone();
        }
        if password == PasswordSource::None {
            password = match (&o.redis_password, &o.redis_password_file) {
                (Some(p), _) => PasswordSource::Literal(Secret::new(p.clone())),
                (None, Some(file)) => PasswordSource::File(file.clone()),
                (None, None) => PasswordSource::None,
            };
        }
        let poll_interval = t.poll_interval.unwrap_or(poll_interval);
        let poll_timeout = t
            .poll_timeout
            .or(explicit_timeout)
            .unwrap_or(default_timeout(poll_interval));
        // The setting at fault: the target's own, else the flag, else the file's global one.
        let at_fault = |key: &'static str, own: bool, flag: bool, message: String| match (own, flag)
        {
            (true, _) => in_target(&[key], message),
            (false, true) => {
                ConfigError::Invalid(format!("--{}: {message}", key.replace('_', "-")))
            }
            (false, false) => at(&[Key(key)], message),
        };
        // (A default timeout shrinks to fit the interval: an explicit one is at fault.)
        if let Some((key, message)) = poll_times_problem(poll_interval, poll_timeout) {
            let own = match key {
                "poll_interval" => t.poll_interval.is_some(),
                _ => t.poll_timeout.is_some(),
            };
            return Err(at_fault(
                key,
                own,
                flag_given(key),
                format!("target {name:?}: {message}"),
            ));
        }
        if t.follow_replicas && t.cluster {
            return Err(in_target(
                &["follow_replicas"],
                format!(
                "target {name:?}: cluster: true already polls every replica; drop follow_replicas"
            ),
            ));
        }
        if !t.seeds.is_empty() && !t.cluster {
            return Err(in_target(
                &["seeds"],
                format!("target {name:?}: seeds are only for cluster: true"),
            ));
        }
        let keyspace = match t.keyspace {
            None => None,
            Some(k) => {
                let defaults = crate::keyspace::KeyspaceConfig::default();
                let budget = k.budget.unwrap_or(defaults.budget);
                if !(budget > 0.0 && budget <= 0.5) {
                    return Err(in_target(
                        &["keyspace", "budget"],
                        format!(
                            "target {name:?}: keyspace.budget must be in (0, 0.5], got {budget}"
                        ),
                    ));
                }
                // SAMPLES 0 makes MEMORY USAGE read every element: seconds on a big hash.
                let memory_samples = k.memory_samples.unwrap_or(defaults.memory_samples);
                if !(1..=MAX_MEMORY_SAMPLES).contains(&memory_samples) {
                    return Err(in_target(
                        &["keyspace", "memory_samples"],
                        format!(
                            "target {name:?}: keyspace.memory_samples must be in 1..={MAX_MEMORY_SAMPLES} (0 would make MEMORY USAGE read whole keys), got {memory_samples}"
                        ),
                    ));
                }
                // A key under a max_ttl prefix must expire, too: no TTL is the longest of all.
                let mut must_expire = k.must_expire;
                for prefix in k.max_ttl.keys() {
                    if !must_expire.contains(prefix) {
                        must_expire.push(prefix.clone());
                    }
                }
                Some(crate::keyspace::KeyspaceConfig {
                    prefixes: k.prefixes,
                    must_expire,
                    max_ttl: k
                        .max_ttl
                        .into_iter()
                        .map(|(prefix, limit)| (prefix, limit.0.as_secs_f64()))
                        .collect(),
                    auto: k.auto.unwrap_or(defaults.auto),
                    delimiter: k.delimiter.unwrap_or(defaults.delimiter),
                    max_groups: k.max_groups.unwrap_or(defaults.max_groups).clamp(1, 1000),
                    budget,
                    export_key_names: k.export_key_names,
                    top_keys: k.top_keys.unwrap_or(defaults.top_keys).min(100),
                    memory_samples,
                    on_replicas: k.on_replicas,
                })
            }
        };
        let watch = match t.watch {
            None => None,
            Some(w) => {
                let defaults = crate::keyspace::watched::WatchConfig::default();
                let budget = w.budget.unwrap_or(defaults.budget);
                if !(budget > 0.0 && budget <= 0.5) {
                    return Err(in_target(
                        &["watch", "budget"],
                        format!("target {name:?}: watch.budget must be in (0, 0.5], got {budget}"),
                    ));
                }
                let entries = |list: &[String]| {
                    list.iter()
                        .map(|raw| crate::keyspace::watched::WatchEntry::parse(raw))
                        .collect()
                };
                Some(crate::keyspace::watched::WatchConfig {
                    keys: entries(&w.keys),
                    streams: entries(&w.streams),
                    count: entries(&w.count),
                    values: w.values,
                    consumers: w.consumers,
                    max_matches: w
                        .max_matches
                        .unwrap_or(defaults.max_matches)
                        .clamp(1, 100_000),
                    interval: w
                        .interval
                        .unwrap_or(poll_interval)
                        .max(Duration::from_millis(100)),
                    budget,
                    on_replicas: w.on_replicas,
                })
            }
        };
        // Every key of `expect:` and `labels:` is checked before any is used, each problem
        // pointed at its own line.
        let refuse = |section: &str, key: &str, problem: &str| {
            in_target(
                &[section, key],
                format!("target {name:?}: {section}: {key:?} {problem}"),
            )
        };
        if let Some((key, problem)) = first_problem(&t.expect, expect_problem) {
            return Err(refuse("expect", &key, problem));
        }
        if let Some((key, problem)) = first_problem(&t.labels, label_problem) {
            return Err(refuse("labels", &key, problem));
        }
        let expect: Vec<(String, String)> = t
            .expect
            .into_iter()
            .map(|(setting, value)| {
                (
                    setting.trim().to_ascii_lowercase(),
                    value.0.trim().to_owned(),
                )
            })
            .collect();
        let labels: Vec<(&'static str, String)> = t
            .labels
            .into_iter()
            .map(|(label, value)| (static_label(&label), value))
            .collect();
        let own_tls = t.tls.is_some();
        let tls = t.tls.unwrap_or_else(|| o.tls.clone());
        if own_tls && !url.is_tls() {
            return Err(in_target(
                &["tls"],
                format!("target {name:?}: tls: needs a rediss:// url (the url is {url})"),
            ));
        }
        if url.is_tls() {
            tls.validate()
                .map_err(|e| in_target(&["tls"], format!("target {name:?}: {e}")))?;
        }
        targets.push(Target {
            watch,
            tls,
            keyspace,
            sentinel,
            name,
            url,
            username,
            password,
            poll_interval,
            poll_timeout,
            follow_replicas: t.follow_replicas,
            cluster: t.cluster,
            seeds: t.seeds,
            on_scrape: t.polling.or(f.polling).unwrap_or_default() == Polling::OnScrape,
            discovered_from: None,
            expect,
            labels: labels.into(),
        });
    }

    let mut scrape_allow = Vec::with_capacity(f.scrape_allow.len());
    for (index, rule) in f.scrape_allow.into_iter().enumerate() {
        let in_rule = |key: &str, message: &str| {
            at(
                &[Key("scrape_allow"), Item(index), Key(key)],
                message.into(),
            )
        };
        let password = match (rule.password_file, rule.password_env) {
            (Some(_), Some(_)) => {
                return Err(in_rule(
                    "password_env",
                    "scrape_allow: set password_file or password_env, not both",
                ))
            }
            (Some(file), None) => PasswordSource::File(file),
            (None, Some(var)) => PasswordSource::Env(var),
            (None, None) => PasswordSource::None,
        };
        if rule.hosts.is_empty() {
            return Err(in_rule(
                "hosts",
                "scrape_allow: an entry needs at least one host",
            ));
        }
        let tls = if rule.tls {
            o.tls
                .validate()
                .map_err(|e| in_rule("tls", &format!("scrape_allow: {e}")))?;
            Some(o.tls.clone())
        } else {
            None
        };
        scrape_allow.push(AllowRule {
            hosts: rule.hosts,
            ports: rule.ports,
            username: rule.username,
            password,
            tls,
        });
    }

    let alerting = match f.alerting {
        None => None,
        Some(a) => {
            let single = usize::from(a.alertmanager.is_some());
            let mut urls: Vec<String> = a.alertmanager.into_iter().collect();
            urls.extend(a.alertmanagers);
            for (index, u) in urls.iter().enumerate() {
                // The single `alertmanager:` first, then the list.
                let key = if index < single {
                    "alertmanager"
                } else {
                    "alertmanagers"
                };
                let spot_of = |message: String| at(&[Key("alerting"), Key(key)], message);
                // The URL may carry a password (sent as basic auth): errors show it without.
                let parsed = url::Url::parse(u).map_err(|e| {
                    spot_of(format!("alerting: an Alertmanager URL does not parse: {e}"))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(spot_of(format!(
                        "alerting: Alertmanager URL {} must be http or https",
                        without_userinfo(&parsed)
                    )));
                }
            }
            if a.exporter_jobs
                .as_deref()
                .is_some_and(|j| j.trim().is_empty())
            {
                return Err(at(
                    &[Key("alerting"), Key("exporter_jobs")],
                    "alerting.exporter_jobs is empty: give a regex of job names (default .*redis.*)"
                        .into(),
                ));
            }
            let rules = crate::alerts::pack_with(&a.thresholds, a.exporter_jobs.as_deref())
                .map_err(|e| at(&[Key("alerting"), Key("thresholds")], e))?;
            let resend_interval = a.resend_interval.unwrap_or(Duration::from_secs(60));
            if resend_interval < Duration::from_secs(1) {
                return Err(at(
                    &[Key("alerting"), Key("resend_interval")],
                    "alerting.resend_interval must be at least 1s".into(),
                ));
            }
            Some(Alerting {
                alertmanagers: urls,
                resend_interval,
                runbook_base_url: a
                    .runbook_base_url
                    .unwrap_or_else(|| crate::alerts::DEFAULT_RUNBOOK_BASE.to_owned()),
                rules,
            })
        }
    };

    let web = match (&o.web_config_file, &f.web_config_file) {
        (Some(file), _) => Some(crate::web_config::WebConfig::load(file)?),
        // Named in this file: an unreadable web config is an error of this file too (a
        // problem inside a readable one names that file, line and column).
        (None, Some(file)) => Some(crate::web_config::WebConfig::load(file).map_err(
            |e| match e {
                ConfigError::File { file, message } => at(
                    &[Key("web_config_file")],
                    format!("web_config_file: {file}: {message}"),
                ),
                other => other,
            },
        )?),
        (None, None) => None,
    };

    Ok(Config {
        web,
        alerting,
        scrape_allow,
        scrape_idle,
        listen,
        telemetry_path,
        gzip: f.gzip.unwrap_or(true),
        max_requests: f.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS),
        poll_interval,
        poll_timeout,
        config_refresh,
        command_stats_refresh: f
            .command_stats_refresh
            .unwrap_or(DEFAULT_COMMAND_STATS_REFRESH),
        log_format: o.log_format.or(f.log_format).unwrap_or_default(),
        log_level: o
            .log_level
            .clone()
            .or(f.log_level)
            .unwrap_or_else(|| "info".to_owned()),
        targets,
        process_metrics: !o.redis_only_metrics,
    })
}

/// Accepts `host:port`, `:port` (all interfaces, as Go does) and `[::1]:port`.
fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    // Go's `:port`: every address, IPv6 and IPv4.
    let full = if raw.starts_with(':') {
        format!("[::]{raw}")
    } else {
        raw.to_owned()
    };
    if let Ok(addr) = full.parse() {
        return Ok(addr);
    }
    if let Some(port) = full.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    Err(format!(
        "listen address {raw:?} is not host:port (for example :9121, 0.0.0.0:9121 or [::1]:9121)"
    ))
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the password a target should send, if any. Errors never include the file's content.
pub fn read_password(target: &Target) -> Result<Option<Secret>, String> {
    read_password_at(target, &target.url)
}

/// The password to send `url` for `target`. A JSON password map (redis_exporter's, keyed by
/// URL) is looked up by `url`, then by the target's URL (the cluster view asks other nodes
/// with the configured node's credentials), then by the configured URL a discovered node came
/// from: a map that lists only the seed of a cluster serves all its nodes, and one that lists
/// nodes one by one gives each its own. Other sources give every URL the same password.
pub fn read_password_at(target: &Target, url: &RedisUrl) -> Result<Option<Secret>, String> {
    let mut found = read_password_source(&target.password, url)?;
    for fallback in std::iter::once(&target.url).chain(&target.discovered_from) {
        if found.is_some() || fallback == url {
            continue;
        }
        found = read_password_source(&target.password, fallback)?;
    }
    Ok(found)
}

impl Config {
    /// Every password file and variable this configuration names, read now: what would make
    /// a connection fail as `auth` later (a missing or unreadable file, a relative path under a
    /// service manager, a variable not set). Messages name the place, never a value.
    pub fn unreadable_secrets(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for t in &self.targets {
            if let Err(e) = read_password(t) {
                problems.push(format!("target {:?}: {e}", t.name));
            }
            if let Some(s) = &t.sentinel {
                if let Some(url) = s.addrs.first() {
                    if let Err(e) = read_password_source(&s.password, url) {
                        problems.push(format!("target {:?}, sentinel: {e}", t.name));
                    }
                }
            }
        }
        for (i, rule) in self.scrape_allow.iter().enumerate() {
            // A JSON map is looked up by the address scraped; only readability is known now.
            if let PasswordSource::File(_) | PasswordSource::Env(_) = &rule.password {
                let probe = RedisUrl::parse("redis://scrape-allow.invalid:6379")
                    .expect("a fixed, valid URL");
                if let Err(e) = read_password_source(&rule.password, &probe) {
                    problems.push(format!("scrape_allow entry {}: {e}", i + 1));
                }
            }
        }
        problems
    }
}

/// The password `source` holds for a node at `url` (a JSON map file is looked up by it).
pub fn read_password_source(
    source: &PasswordSource,
    url: &RedisUrl,
) -> Result<Option<Secret>, String> {
    match source {
        PasswordSource::None => Ok(None),
        PasswordSource::Literal(s) => Ok(Some(s.clone())),
        PasswordSource::Env(var) => std::env::var(var)
            .map(|v| Some(Secret::new(v)))
            .map_err(|_| format!("environment variable {var} is not set")),
        PasswordSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!("cannot read password file {}: {}", path.display(), e.kind())
            })?;
            let trimmed = text.trim_end_matches(['\r', '\n']);
            if trimmed.trim_start().starts_with('{') {
                // redis_exporter's --redis.password-file format: a JSON map keyed by URL.
                let map: std::collections::BTreeMap<String, String> = serde_yaml::from_str(trimmed)
                    .map_err(|_| {
                        format!(
                            "password file {} is not a JSON map of URL to password",
                            path.display()
                        )
                    })?;
                let want = [
                    url.redacted(),
                    url.redacted().trim_end_matches('/').to_owned(),
                ];
                Ok(map
                    .iter()
                    .find(|(k, _)| {
                        RedisUrl::parse(k).is_ok_and(|u| want.contains(&u.redacted()))
                            || want.iter().any(|w| w == *k)
                    })
                    .map(|(_, v)| Secret::new(v.clone())))
            } else {
                Ok(Some(Secret::new(trimmed)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(Path::new("test.yaml"), text)
    }

    #[test]
    fn no_file_and_no_flags_means_local_redis_every_five_seconds() {
        let c = Config::load(&Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "[::]:9121");
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.targets[0].name, "127.0.0.1:6379");
        assert_eq!(c.targets[0].poll_interval, Duration::from_secs(5));
        assert_eq!(c.telemetry_path, "/metrics");
        assert!(c.gzip);
    }

    #[test]
    fn polling_on_scrape_is_set_at_the_top_and_overridden_per_target() {
        let c = load(
            "scrape_idle: 30s\npolling: on_scrape\ntargets:\n  - name: a\n    url: redis://x\n  - name: b\n    url: redis://y\n    polling: continuous\n",
        )
        .unwrap();
        assert!(c.targets[0].on_scrape);
        assert!(!c.targets[1].on_scrape);
        assert_eq!(c.scrape_idle, Duration::from_secs(30));
        let c = load("targets:\n  - url: redis://x\n    polling: on_scrape\n").unwrap();
        assert!(c.targets[0].on_scrape);
        // scrape_idle is not part of a target: changing it on reload restarts none.
        let other = load("scrape_idle: 1m\ntargets:\n  - url: redis://x\n    polling: on_scrape\n");
        assert_eq!(other.unwrap().targets, c.targets);
        assert!(!load("targets:\n  - url: redis://x\n").unwrap().targets[0].on_scrape);
        let err = load("targets:\n  - url: redis://x\n    polling: lazily\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.yaml:3:14: "), "{err}");
        assert!(err.contains("on_scrape"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_durations_name_line_and_column() {
        let err = load(
            "listen: \"127.0.0.1:1\"\ntargets:\n  - name: a\n    url: redis://x\n    colour: red\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("test.yaml:5:5: "), "{err}");
        assert!(err.contains("colour"), "{err}");
        let err = load("poll_interval: 5 parsecs\n").unwrap_err().to_string();
        assert!(err.starts_with("test.yaml:1:"), "{err}");
        // Durations no setting means, which would overflow `now + interval` and panic a task.
        let err = load("listen: \"127.0.0.1:1\"\ntargets:\n  - url: redis://x\n    poll_interval: 200000000000y\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.yaml:4:20: ") && err.contains("366d"),
            "{err}"
        );
        let err = load("config_refresh: 400d\n").unwrap_err().to_string();
        assert!(
            err.starts_with("test.yaml:1:17: ") && err.contains("366d"),
            "{err}"
        );
        assert_eq!(parse_duration("366d"), Ok(MAX_DURATION));
        assert!(crate::cli::Cli::parse_args(
            ["redis-lookout", "--poll-interval", "9999y"].map(Into::into)
        )
        .is_err());
        for bad in [
            "{RedisDown: .inf}",
            "{RedisDown: {for: .inf}}",
            "{RedisDown: {for: -5}}",
            "{RedisDown: {for: 1e30}}",
            "{RedisDown: .nan}",
        ] {
            let err = load(&format!("alerting:\n  thresholds: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("test.yaml:"), "{bad}: {err}");
        }
        let err = load("listen: \"127.0.0.1:1\"\nlog_level: verbose\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.yaml:2:12: "), "{err}");
        assert!(err.contains("\"verbose\""), "{err}");
        let err = load("targets:\n  - url: http://example\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.yaml:2:"), "{err}");
        assert!(err.contains("scheme"), "{err}");
    }

    #[test]
    fn log_levels_are_levels_or_target_directives() {
        for good in [
            "info",
            "WARN",
            "off",
            "warn,redis_lookout=debug",
            "hyper=error",
        ] {
            assert!(check_log_level(good).is_ok(), "{good}");
        }
        // Each of these is a target the logging library would trace, silencing the rest.
        for bad in [
            "verbose",
            "",
            "info,",
            "=debug",
            "redis_lookout=loud",
            "hyper=",
            "info,debug",
        ] {
            assert!(check_log_level(bad).is_err(), "{bad:?}");
        }
        let c = load("log_level: debug\n").unwrap();
        assert_eq!(c.log_level, "debug");
        // redis_exporter's (logrus) spellings carry over.
        assert_eq!(check_log_level("warning").as_deref(), Ok("warn"));
        assert_eq!(check_log_level("Fatal").as_deref(), Ok("error"));
        assert_eq!(
            check_log_level("info, hyper=warning").as_deref(),
            Ok("info,hyper=warn")
        );
    }

    #[test]
    fn duplicate_names_point_at_the_second_one() {
        let err =
            load("targets:\n  - name: a\n    url: redis://x\n  - name: a\n    url: redis://y\n")
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("test.yaml:4:5: "), "{err}");
        assert!(err.contains("used twice"), "{err}");
    }

    #[test]
    fn spots_follow_block_yaml_paths() {
        use Step::{Item, Key};
        let text = "listen: \":9121\"\n# comment\ntargets:\n  - name: a\n    url: redis://x\n    keyspace:\n      budget: 2\n  - name: b\n    url: redis://y\nscrape_allow:\n- hosts: [a]\n  password_env: X\n";
        assert_eq!(spot(text, &[Key("listen")]), Some((1, 1)));
        assert_eq!(
            spot(text, &[Key("targets"), Item(1), Key("name")]),
            Some((8, 5))
        );
        assert_eq!(
            spot(
                text,
                &[Key("targets"), Item(0), Key("keyspace"), Key("budget")]
            ),
            Some((7, 7))
        );
        // A key left out points at its target; a missing item at the list.
        assert_eq!(
            spot(text, &[Key("targets"), Item(1), Key("tls")]),
            Some((8, 5))
        );
        assert_eq!(
            spot(text, &[Key("targets"), Item(2), Key("url")]),
            Some((3, 1))
        );
        // A sequence at its key's own indent.
        assert_eq!(
            spot(text, &[Key("scrape_allow"), Item(0), Key("password_env")]),
            Some((12, 3))
        );
        // A deeper key of the same name is not a top-level one.
        assert_eq!(spot(text, &[Key("budget")]), None);
        // Flow style is not followed: the deepest step found.
        let flow = "targets: [{url: x}]\n";
        assert_eq!(
            spot(flow, &[Key("targets"), Item(0), Key("url")]),
            Some((1, 1))
        );
        assert_eq!(spot("\"listen\": x\n", &[Key("listen")]), Some((1, 1)));
    }

    #[test]
    fn problems_found_after_parsing_name_line_and_column_too() {
        let cases = [
            ("listen: \"127.0.0.1:99999\"\n", "test.yaml:1:1: "),
            (
                "targets:\n  - name: a\n    url: redis://x\n    keyspace:\n      budget: 2\n",
                "test.yaml:5:7: ",
            ),
            ("poll_interval: 1s\npoll_timeout: 5s\n", "test.yaml:2:1: "),
            (
                "targets:\n  - url: redis://x\n    poll_interval: 1ms\n",
                "test.yaml:3:5: ",
            ),
            (
                "targets:\n  - name: a\n    url: redis://x\n    seeds: [redis://y]\n",
                "test.yaml:4:5: ",
            ),
            (
                "targets:\n  - name: a\n    tls: {}\n    url: redis://x\n",
                "test.yaml:3:5: ",
            ),
            ("scrape_allow:\n  - hosts: []\n", "test.yaml:2:5: "),
            (
                "alerting:\n  alertmanagers:\n    - ftp://am\n",
                "test.yaml:2:3: ",
            ),
            (
                "alerting:\n  resend_interval: 1m\n  exporter_jobs: \" \"\n",
                "test.yaml:3:3: ",
            ),
        ];
        for (text, location) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(err.starts_with(location), "{text:?}: {err}");
        }
        // A flag's value is the flag's problem, not the file's.
        let flags = Overrides {
            listen: Some("nowhere".into()),
            ..Overrides::default()
        };
        let err = Config::load(&flags).unwrap_err().to_string();
        assert!(err.starts_with("--web.listen-address: "), "{err}");
        let flags = Overrides {
            poll_timeout: Some(Duration::from_secs(10)),
            ..Overrides::default()
        };
        let err = Config::load(&flags).unwrap_err().to_string();
        assert!(err.starts_with("--poll-timeout: "), "{err}");
    }

    #[test]
    fn redis_exporter_cluster_timeout_and_process_flags() {
        let c = Config::load(&Overrides {
            redis_addr: Some("h:7000".into()),
            is_cluster: true,
            connection_timeout: Some(Duration::from_millis(800)),
            redis_only_metrics: true,
            ..Default::default()
        })
        .unwrap();
        assert!(c.targets[0].cluster);
        assert_eq!(c.targets[0].poll_timeout, Duration::from_millis(800));
        assert_eq!(c.poll_timeout, Duration::from_millis(800));
        assert!(!c.process_metrics);
        // The implicit local Redis, too; and a connection timeout never lengthens the default.
        let c = Config::load(&Overrides {
            is_cluster: true,
            connection_timeout: Some(Duration::from_secs(15)),
            ..Default::default()
        })
        .unwrap();
        assert!(c.targets[0].cluster && c.process_metrics);
        assert_eq!(c.targets[0].poll_timeout, DEFAULT_POLL_TIMEOUT);
        // An explicit poll timeout wins.
        let c = Config::load(&Overrides {
            connection_timeout: Some(Duration::from_secs(1)),
            poll_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.targets[0].poll_timeout, Duration::from_secs(2));
        // redis_exporter's key checks land in the target's watch:.
        let c = Config::load(&Overrides {
            redis_addr: Some("h:7000".into()),
            exporter_watch: ExporterWatch {
                keys: vec!["db3=queue:*".into()],
                count: vec!["session:*".into()],
                streams: vec!["events:orders".into()],
            },
            ..Default::default()
        })
        .unwrap();
        let w = c.targets[0].watch.as_ref().expect("a watch: of its own");
        assert_eq!((w.keys[0].db, w.keys[0].pattern.as_str()), (3, "queue:*"));
        assert_eq!(w.count[0].pattern, "session:*");
        assert_eq!(w.streams[0].pattern, "events:orders");
        // Targets named in a file: which one would be the cluster? Refused.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "targets:\n  - name: a\n    url: redis://h1:6379\n").unwrap();
        let err = Config::load(&Overrides {
            config_file: Some(path),
            is_cluster: true,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("cluster: true"), "{err}");
    }

    #[test]
    fn flags_override_file_and_global_credentials_fill_only_bare_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "poll_interval: 10s\ntargets:\n  - name: a\n    url: redis://h1:6379\n    password_env: A_PW\n",
        )
        .unwrap();
        let o = Overrides {
            config_file: Some(path),
            redis_addr: Some("h2:7000".into()),
            redis_password: Some("global".into()),
            poll_interval: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.targets[0].url.address(), "h2:7000");
        assert_eq!(c.targets[0].poll_interval, Duration::from_secs(2));
        assert_eq!(c.targets[0].password, PasswordSource::Env("A_PW".into()));

        let bare = Config::load(&Overrides {
            redis_addr: Some("redis://h3".into()),
            redis_password: Some("global".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            bare.targets[0].password,
            PasswordSource::Literal(Secret::new("global"))
        );

        // A user in the address and the password from the flag (redis_exporter's way): both.
        let user_in_url = Config::load(&Overrides {
            redis_addr: Some("redis://exporter@h4:6379".into()),
            redis_password: Some("global".into()),
            redis_user: Some("ignored".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(user_in_url.targets[0].username.as_deref(), Some("exporter"));
        assert_eq!(
            user_in_url.targets[0].password,
            PasswordSource::Literal(Secret::new("global"))
        );
    }

    #[test]
    fn a_url_in_a_yaml_error_loses_its_password() {
        // A string where a list is expected: the library quotes the value in its message.
        let err = load(
            "targets:\n  - url: redis://h:7000\n    cluster: true\n    seeds: \"redis://:s3cr et@h:7001\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("s3cr") && !err.contains("et@"), "{err}");
        assert!(err.contains("redis://h:7001"), "{err}");
        assert_eq!(
            redact_userinfo("a http://u:p@am:9093 and \"rediss://x@h\" z"),
            "a http://am:9093 and \"rediss://h\" z"
        );
        let hash = "$2y$10$RK6Y7V3eFsPbfCq0.Ij3/.ElFxJXmgS6xbYH6r1pzZB0M7.5XCbwS";
        assert_eq!(
            redact_bcrypt(&format!("string \"{hash}\", expected a map; cost $20 $2")),
            "string \"$2y$10$<hash hidden>\", expected a map; cost $20 $2"
        );
    }

    #[test]
    fn global_durations_are_checked_without_any_target() {
        // (text, where the error points, what it says)
        let scrape_only = "scrape_allow:\n  - hosts: [h]\n    ports: 1\n";
        let cases = [
            (
                format!("poll_interval: 10ms\n{scrape_only}"),
                "test.yaml:1:1:",
                "at least 100ms",
            ),
            (
                format!("poll_timeout: 0s\n{scrape_only}"),
                "test.yaml:1:1:",
                "above 0",
            ),
            (
                format!("scrape_idle: 0s\n{scrape_only}"),
                "test.yaml:1:1:",
                "at least 1s",
            ),
            (
                "alerting:\n  resend_interval: 0s\n".to_owned(),
                "test.yaml:2:3:",
                "at least 1s",
            ),
        ];
        for (text, place, what) in cases {
            let err = load(&text).unwrap_err().to_string();
            assert!(err.starts_with(place) && err.contains(what), "{err}");
        }
    }

    #[test]
    fn urls_never_show_their_password() {
        let url = RedisUrl::parse("redis://user:hunter2@db:6380/0").unwrap();
        assert_eq!(url.to_string(), "redis://db:6380/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.address(), "db:6380");
        assert!(!format!("{:?}", Secret::new("hunter2")).contains("hunter2"));
        let c = Config::load(&Overrides {
            redis_addr: Some("redis://:p%40ss@db".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("p%40ss") && !format!("{c:?}").contains("p@ss"));
        assert_eq!(
            read_password(&c.targets[0]).unwrap(),
            Some(Secret::new("p@ss"))
        );
    }

    #[test]
    fn password_file_plain_or_redis_exporter_json_map() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("pw");
        std::fs::write(&plain, "s3cret\n").unwrap();
        let map = dir.path().join("map.json");
        std::fs::write(
            &map,
            r#"{"redis://db:6379": "fromjson", "redis://other:1": "no"}"#,
        )
        .unwrap();
        let mut t = Config::load(&Overrides {
            redis_addr: Some("redis://db:6379".into()),
            redis_password_file: Some(plain),
            ..Default::default()
        })
        .unwrap()
        .targets
        .remove(0);
        assert_eq!(read_password(&t).unwrap(), Some(Secret::new("s3cret")));
        t.password = PasswordSource::File(map.clone());
        assert_eq!(read_password(&t).unwrap(), Some(Secret::new("fromjson")));
        // Discovered nodes: their own entry, else the configured URL's; the cluster view's
        // connection to another node the same way.
        std::fs::write(
            &map,
            r#"{"redis://db:6379": "seed", "redis://10.0.0.2:6379": "own"}"#,
        )
        .unwrap();
        let own = t.for_node("10.0.0.2:6379").unwrap();
        assert_eq!(read_password(&own).unwrap(), Some(Secret::new("own")));
        let other = t.for_node("10.0.0.3:6379").unwrap();
        assert_eq!(read_password(&other).unwrap(), Some(Secret::new("seed")));
        let its_replica = other.for_node("10.0.0.4:6379").unwrap();
        assert_eq!(its_replica.discovered_from, Some(t.url.clone()));
        assert_eq!(
            read_password_at(&t, &own.url).unwrap(),
            Some(Secret::new("own"))
        );
        assert_eq!(
            read_password_at(&t, &other.url).unwrap(),
            Some(Secret::new("seed"))
        );
        // Nothing discovered it (an on-demand /scrape poller): its own entry or nothing.
        let alone = Target::plain(
            "x".into(),
            other.url.clone(),
            None,
            t.password.clone(),
            t.poll_interval,
            t.poll_timeout,
        );
        assert_eq!(read_password(&alone).unwrap(), None);
    }

    #[test]
    fn a_sentinel_target_keeps_the_sentinels_credentials_apart_from_the_data_nodes() {
        let c = load(
            "targets:\n  - sentinel:\n      master: pay\n      addrs: [\"redis://:sentinelpw@127.0.0.1:26379\"]\n      password_env: SENTINEL_PW\n",
        )
        .unwrap();
        let t = &c.targets[0];
        assert_eq!(t.name, "pay", "named after the master by default");
        assert!(
            !t.url.has_credentials(),
            "the data nodes get no Sentinel password"
        );
        assert_eq!(t.password, PasswordSource::None);
        let s = t
            .for_sentinel(&t.sentinel.as_ref().unwrap().addrs[0])
            .unwrap();
        assert_eq!(s.password, PasswordSource::Env("SENTINEL_PW".into()));
        assert!(s.keyspace.is_none() && s.sentinel.is_none());
        for (yaml, complaint) in [
            ("targets:\n  - sentinel: {master: m, addrs: []}\n", "at least one address"),
            (
                "targets:\n  - cluster: true\n    sentinel: {master: m, addrs: [\"127.0.0.1:26379\"]}\n",
                "drop cluster",
            ),
            ("targets:\n  - name: x\n", "url is required"),
        ] {
            let err = load(yaml).unwrap_err().to_string();
            assert!(err.contains(complaint), "{yaml}: {err}");
        }
    }

    #[test]
    fn timeout_longer_than_interval_is_refused() {
        let err = load("poll_interval: 1s\npoll_timeout: 2s\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_timeout"), "{err}");
    }

    #[test]
    fn discovered_nodes_keep_scheme_and_credentials_but_change_address() {
        let url = RedisUrl::parse("rediss://u:pw@seed:7000/0").unwrap();
        let node = url.with_address("10.0.0.7:7001").unwrap();
        assert_eq!(node.url().as_str(), "rediss://u:pw@10.0.0.7:7001/0");
        assert_eq!(
            url.with_address("::1:7002").unwrap().address(),
            "[::1]:7002"
        );
        assert!(url.with_address("nope").is_err());
    }

    #[test]
    fn scrape_hosts_have_one_spelling() {
        let host = |raw: &str| {
            RedisUrl::parse(raw)
                .unwrap()
                .url()
                .host_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            canonical_host(&host("redis://10.0.0.5:6379")).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            canonical_host(&host("redis://Cache-A.Internal:6379")).as_deref(),
            Some("cache-a.internal")
        );
        assert_eq!(
            canonical_host(&host("redis://[FD00:0::1]:6379")).as_deref(),
            Some("[fd00::1]")
        );
        for other in [
            "10.0.0.05",
            "010.0.0.5",
            "0x0a.0.0.5",
            "167772165",
            "10.0.5",
            "10.0.0.256",
            "a.b.1x",
        ] {
            assert_eq!(
                canonical_host(&host(&format!("redis://{other}:6379"))),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn allow_rules_match_host_globs_and_port_ranges() {
        let c = load("scrape_allow:\n  - hosts: [\"redis-*.cache.internal\", \"127.0.0.2\"]\n    ports: \"6379-6380\"\n    password_env: FLEET\n").unwrap();
        let rule = &c.scrape_allow[0];
        assert!(rule.allows("redis-7.cache.internal", 6380));
        assert!(rule.allows("REDIS-a.cache.internal", 6379));
        assert!(!rule.allows("redis-7.cache.internal.evil.com", 6379));
        assert!(!rule.allows("redis-7.cache.internal", 6381));
        assert!(!rule.allows("127.0.0.1", 6379));
        assert!(host_match("*", "any.host.at.all") && host_match("a*b*c", "aXbYc"));
        assert!(!host_match("a*c", "ab") && !host_match("a.*", "a"));
        // `*` never crosses a dot: a caller-chosen name ending in their own domain is refused.
        assert!(host_match("10.0.0.*", "10.0.0.7"));
        assert!(!host_match("10.0.0.*", "10.0.0.7.attacker.example"));
        assert!(!host_match("redis-*", "redis-x.attacker.example"));
        assert!(host_match("*.cache.internal", "a.cache.internal"));
        assert!(!host_match("*.cache.internal", "a.b.cache.internal"));
        assert!(!host_match("*.cache.internal", "cache.internal"));
        assert!(host_match("10.*.0.1", "10.200.0.1") && !host_match("10.*.1", "10.200.0.1"));
        // IPv6 entries with or without brackets, in any spelling; globs within the address.
        let c = load("scrape_allow:\n  - hosts: [\"fd00::1\", \"[fd00:0:0::2]\", \"fd01::*\"]\n    ports: \"6379\"\n").unwrap();
        let rule = &c.scrape_allow[0];
        assert!(rule.allows("[fd00::1]", 6379) && rule.allows("[fd00::2]", 6379));
        assert!(rule.allows("[FD01::7]", 6379) && !rule.allows("[fd00::3]", 6379));
        assert!(!rule.allows("fd00.example", 6379));
        let err = load("scrape_allow:\n  - hosts: [h]\n    ports: \"9-1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.yaml:3:"), "{err}");
    }

    #[test]
    fn memory_samples_must_be_a_bounded_sample() {
        for bad in ["0", "65"] {
            let err = load(&format!(
                "targets:\n  - url: redis://h:1\n    keyspace:\n      memory_samples: {bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("test.yaml:4:7:")
                    && err.contains("memory_samples must be in 1..=64"),
                "{err}"
            );
        }
        let c = load("targets:\n  - url: redis://h:1\n    keyspace:\n      memory_samples: 64\n")
            .unwrap();
        assert_eq!(c.targets[0].keyspace.as_ref().unwrap().memory_samples, 64);
    }

    #[test]
    fn max_ttl_limits_are_durations_above_zero_and_their_prefixes_must_expire() {
        let c = load(
            "targets:\n  - url: redis://h:1\n    keyspace:\n      must_expire: [\"session:\"]\n      max_ttl:\n        \"lock:\": 30s\n        \"session:auth:\": 24h\n",
        )
        .unwrap();
        let k = c.targets[0].keyspace.as_ref().unwrap();
        assert_eq!(
            k.max_ttl,
            [
                ("lock:".to_owned(), 30.0),
                ("session:auth:".to_owned(), 86400.0)
            ]
        );
        assert_eq!(k.must_expire, ["session:", "lock:", "session:auth:"]);
        for (bad, column) in [("0s", 18), ("soon", 18), ("", 9)] {
            let err = load(&format!(
                "targets:\n  - url: redis://h:1\n    keyspace:\n      max_ttl:\n        \"lock:\": {bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with(&format!("test.yaml:5:{column}:")) && err.contains("above 0"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn target_labels_are_prometheus_names_and_never_ours() {
        let c = load(
            "targets:\n  - url: redis://h:1\n    labels:\n      team: payments\n      env: prod\n",
        )
        .unwrap();
        assert_eq!(
            c.targets[0].labels.to_vec(),
            [("env", "prod".to_owned()), ("team", "payments".to_owned())]
        );
        for bad in ["target", "job", "severity", "__meta", "1team", "te-am"] {
            let err = load(&format!(
                "targets:\n  - url: redis://h:1\n    labels:\n      {bad}: x\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("test.yaml:4:7:"), "{bad}: {err}");
        }
    }

    #[test]
    fn expected_settings_read_yaml_scalars_and_never_a_secret() {
        let c = load(
            "targets:\n  - url: redis://h:1\n    expect:\n      maxmemory-policy: allkeys-lru\n      appendonly: yes\n      Maxmemory: 256mb\n      hz: 10\n",
        )
        .unwrap();
        let want = [
            ("maxmemory", "256mb"),
            ("appendonly", "yes"),
            ("hz", "10"),
            ("maxmemory-policy", "allkeys-lru"),
        ];
        let mut got = c.targets[0].expect.clone();
        got.sort();
        let mut want: Vec<(String, String)> =
            want.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec();
        want.sort();
        assert_eq!(got, want);
        for bad in ["requirepass: x", "masterauth: x", "\"maxmemory*\": x"] {
            let err = load(&format!(
                "targets:\n  - url: redis://h:1\n    expect:\n      {bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("test.yaml:4:7:"), "{bad}: {err}");
            assert!(!err.contains(": x"), "the value is not echoed: {err}");
        }
    }

    #[test]
    fn the_telemetry_path_cannot_take_over_an_endpoint_of_the_exporter() {
        let own = ["/-/healthy", "/scrape", "/", "/runbooks/x"].map(|p| (p, "own endpoints"));
        // Paths no request can match as written: refused, not served as 404 forever.
        let unmatchable = [
            "/metrics?x=1",
            "/a#b",
            "/my metrics",
            "/métriques",
            "/a%20b",
        ]
        .map(|p| (p, "never be requested"));
        for (path, why) in own.into_iter().chain(unmatchable) {
            let err = load(&format!("telemetry_path: \"{path}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("test.yaml:1:1:") && err.contains(why),
                "{err}"
            );
        }
        assert_eq!(
            load("telemetry_path: /prometheus\n")
                .unwrap()
                .telemetry_path,
            "/prometheus"
        );
        assert!(load("telemetry_path: /a-b.c_d~/e\n").is_ok());
    }

    #[test]
    fn listen_accepts_go_style_port_only() {
        assert_eq!(parse_listen(":9121").unwrap().to_string(), "[::]:9121");
        assert_eq!(
            parse_listen("0.0.0.0:9121").unwrap().to_string(),
            "0.0.0.0:9121"
        );
        assert_eq!(parse_listen("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(parse_listen("nonsense").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_yaml_text_is_accepted_or_refused_without_panicking(text in "\\PC{0,200}") {
            let _ = Config::from_yaml(Path::new("p.yaml"), &text);
        }

        /// Whatever the text and the path, the locator answers without panicking, and only
        /// with a place that exists and holds one of the path's keys or an item.
        #[test]
        fn spots_are_places_in_the_text(
            lines in proptest::collection::vec(
                (0usize..8, any::<bool>(), prop_oneof![
                    Just("targets:".to_owned()), Just("name: a".to_owned()),
                    Just("keyspace:".to_owned()), Just("budget: 2".to_owned()),
                    Just("# note".to_owned()), Just("- x".to_owned()), Just("---".to_owned()),
                    "\\PC{0,12}",
                ]),
                0..25,
            ),
            path in proptest::collection::vec(
                prop_oneof![
                    prop_oneof![Just("targets"), Just("name"), Just("keyspace"), Just("budget")]
                        .prop_map(Step::Key),
                    (0usize..3).prop_map(Step::Item),
                ],
                0..5,
            ),
        ) {
            let text: String = lines
                .iter()
                .map(|(indent, dash, body)| {
                    format!("{}{}{body}\n", " ".repeat(*indent), if *dash { "- " } else { "" })
                })
                .collect();
            if let Some((line, column)) = spot(&text, &path) {
                let l = text.lines().nth(line - 1).expect("the line exists");
                let rest = l.get(column - 1..).expect("the column is in the line");
                let a_key = path.iter().any(|step| {
                    matches!(step, Step::Key(k) if ["", "\"", "'"]
                        .iter()
                        .any(|q| rest.starts_with(&format!("{q}{k}{q}:"))))
                });
                let an_item = l[..column - 1].trim_end().ends_with('-');
                prop_assert!(a_key || an_item, "{l:?} at {column}");
            }
        }
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../config.example.yaml");
        let c = Config::from_yaml(Path::new("config.example.yaml"), text).expect("example parses");
        assert_eq!(c.targets.len(), 4);
        assert_eq!(c.targets[0].name, "sessions");
        let sentinel = c.targets[3].sentinel.as_ref().expect("a sentinel target");
        assert_eq!(
            (sentinel.addrs.len(), sentinel.master.as_str()),
            (3, "payments")
        );
        assert_eq!(c.targets[0].poll_timeout, Duration::from_secs(2));
        assert_eq!(c.targets[1].poll_timeout, Duration::from_secs(3));
        assert!(c.targets[1].follow_replicas && c.targets[2].cluster);
        assert_eq!(c.targets[2].seeds.len(), 2);
        let watch = c.targets[0].watch.as_ref().expect("watch section");
        assert_eq!(watch.keys[0].pattern, "queue:notification:*");
        assert_eq!(watch.interval, Duration::from_secs(15));
        assert_eq!(watch.max_matches, 1000);
        assert_eq!(
            c.scrape_allow[0].ports,
            PortRange {
                low: 6379,
                high: 6380
            }
        );
        let alerting = c.alerting.expect("alerting section");
        assert_eq!(
            alerting.alertmanagers,
            vec!["http://127.0.0.1:9093".to_owned()]
        );
        let lag = alerting
            .rules
            .iter()
            .find(|r| r.name == "RedisReplicaLagHigh")
            .unwrap();
        assert_eq!(lag.levels[0].threshold, 30.0);
    }
}
