//! redis-lookout: a Prometheus exporter for Redis that polls each node on its own schedule over
//! one persistent connection and serves the latest facts without ever touching Redis on a scrape.
//!
//! # Layout
//!
//! ```text
//! cli ─► config ─► daemon ─┬─► poller (one task per node) ──► snapshot::SnapshotStore ─┬─► http (/metrics, /, /-/ready)
//!                          │     │ one pipelined round trip per poll                   │
//!                          │     └─ collector::{info, config, slowlog, latency}         │
//!                          └─► telemetry (the exporter's own metrics) ──────────────────┘
//! ```
//!
//! - [`cli`]: flags and env vars (redis_exporter's names accepted) → [`config::Overrides`].
//! - [`config`]: the YAML file merged with overrides into [`config::Config`]; errors carry
//!   file:line:column; passwords are [`config::Secret`]s that cannot be printed.
//! - [`daemon`]: starts one [`poller::NodePoller`] per target and the HTTP server; stops them.
//! - [`poller`]: persistent connection, deadline per poll, reconnect backoff; runs every
//!   collector's commands in one pipeline, renders a [`snapshot::Snapshot`] and swaps it in.
//! - [`collector`]: one file per source (INFO, CONFIG, SLOWLOG, LATENCY): the commands it wants
//!   and a pure parser from replies to [`metrics::FamilySet`].
//! - [`metrics`]: the family/sample model, text rendering and the merge of many snapshots.
//! - [`snapshot`]: the shared map of latest snapshots; readiness.
//! - [`telemetry`]: self-metrics on one `prometheus` registry (polls, errors, connections, process).
//! - [`http`]: hyper 1 server and the handlers.
//! - [`error`]: [`error::PollError`] with a bounded `label()` for metrics.

#![forbid(unsafe_code)]

pub mod cli;
pub mod collector;
pub mod config;
pub mod daemon;
pub mod error;
pub mod http;
pub mod metrics;
pub mod poller;
pub mod scrape;
pub mod snapshot;
pub mod telemetry;
pub mod topology;
