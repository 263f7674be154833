//! redis-lookout: a Prometheus exporter for Redis that polls each node on its own schedule over
//! one persistent connection and serves the latest facts without ever touching Redis on a scrape.
//!
//! # Layout
//!
//! ```text
//! cli ─► config ─► daemon ─► topology ─┬─► poller (one task per node) ─► snapshot::SnapshotStore ─┬─► http: /metrics (streamed),
//!                            (targets, │    one pipelined round trip     (latest facts, rendered) │   /, /-/ready, /discovery,
//!                             replicas,│    per poll; collector::*                                 │   /-/reload (POST, SIGHUP too)
//!                             clusters;│                                                           ├─► scrape (/scrape, on demand)
//!                             reloaded)│         │ facts of each poll                              │
//!                                      │         └──────────► alerts::eval ─► alerts::alertmanager ├─► /alerts
//!                                      ├─ keyspace sampler (own task, SCAN within a budget) ─► poller
//!                                      ├─ key watcher (own task: watched queues, streams) ──► poller
//!                                      └─ telemetry (process self-metrics) ────────────────────────┘
//! check (one-shot): config ─► poller::poll_facts ─► alerts (instant signals) ─► report, exit 0/1/2
//! ```
//!
//! - [`cli`]: flags and env vars (redis_exporter's names accepted) → [`config::Overrides`];
//!   subcommands `rules` and `check`.
//! - [`config`]: the YAML file merged with overrides into [`config::Config`]; errors carry
//!   file:line:column (those found after parsing too, located by following the setting's path
//!   through the file), a flag's errors name the flag; passwords are [`config::Secret`]s that
//!   cannot be printed.
//! - [`daemon`]: starts the targets, the HTTP server and the alerting tasks; applies
//!   configuration reloads (`POST /-/reload`, SIGHUP) target by target; stops them.
//! - [`topology`]: per target, which nodes to poll: the configured one, the replicas a master
//!   lists (`follow_replicas`), or every node of a Redis Cluster (`cluster`) with its roll-up
//!   (published, and judged by the evaluator like a node's facts); for `polling: on_scrape`,
//!   each node's poller runs only while `/scrape` asks for the node.
//! - [`sentinel`]: Sentinel-defined targets: the master and replicas Sentinel names, followed
//!   through failovers (`+switch-master` subscription, polling as fallback); failovers counted.
//! - [`poller`]: one persistent connection per node, a deadline per poll, reconnect backoff;
//!   runs every collector's commands in one pipeline, renders a [`snapshot::Snapshot`], swaps it
//!   in, and hands the facts to the evaluator (a failed poll soon after a good one marked
//!   `held_over`). A command the server refuses is logged once and asked again only at
//!   `config_refresh`; why a node is down is logged in Redis' words.
//! - [`collector`]: one file per source (INFO, CONFIG, SLOWLOG, LATENCY, CLUSTER, SENTINEL): the commands
//!   it wants and a pure parser from replies to [`metrics::FamilySet`].
//! - [`keyspace`]: the budgeted SCAN sampler per target (prefix groups, TTLs, memory,
//!   must_expire and max_ttl findings, hot keys under LFU), whose figures join the node's
//!   snapshots; the test keyspace generator; [`keyspace::watched`]: the keys, streams and
//!   patterns a target names in `watch:` (lengths, consumer-group lag), read on their own
//!   schedule.
//! - [`metrics`]: the family/sample model, text rendering, interning, the merge of snapshots
//!   (a window of families at a time, copied list by list).
//! - [`snapshot`]: the shared map of nodes and their latest snapshots; readiness, discovery.
//!   Each node's reporter holds a ticket, so a task told to stop cannot publish into, or
//!   forget, the entry of the task that replaced it.
//! - [`scrape`]: `/scrape?target=` with its allow-list and on-demand pollers, and the nodes of
//!   `polling: on_scrape` targets (polled only while scraped: one shard of a fleet) it wakes.
//! - [`alerts`]: the alert pack (one definition per alert → rule file and evaluator),
//!   [`alerts::eval`] (pending/firing/resolved), [`alerts::template`] (descriptions rendered as
//!   Prometheus renders them), [`alerts::alertmanager`] (API v2 push, with an always-firing
//!   watchdog for a dead man's switch).
//! - [`check`]: the one-shot `check` command.
//! - [`telemetry`]: process self-metrics on one `prometheus` registry (HTTP, alerts, process).
//! - [`http`]: hyper 1 server and the handlers; HTTPS and basic auth from [`web_config`].
//!   A large `/metrics` is merged on a blocking thread one window ahead of the socket, into a
//!   few buffers reused from window to window; at most `max_requests` are in flight, and a
//!   connection whose writes stall for [`http::WRITE_STALL`] is dropped.
//! - [`encoding`]: gzip for `/metrics` and `/scrape` when the client asks; windows compressed
//!   apart (as they are merged) and framed as one gzip member.
//! - [`tls`]: TLS to Redis for `rediss://` targets (CA, client certificate, server name); the
//!   poller does the handshake and hands the stream to redis-rs.
//! - [`web_config`]: the exporter-toolkit style web config file (HTTPS certificate reloaded on
//!   change, bcrypt basic auth with a cache of verified credentials, one bcrypt check at a time).
//! - [`error`]: [`error::PollError`] with a bounded `label()` for metrics, and
//!   [`error::Failure`]: that kind plus Redis' own words, for logs and `check` only.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod check;
pub mod cli;
pub mod collector;
pub mod config;
pub mod daemon;
pub mod encoding;
pub mod error;
pub mod http;
pub mod keyspace;
pub mod metrics;
pub mod poller;
pub mod scrape;
pub mod sentinel;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod web_config;
