//! The HTTP side: `/metrics` (renders snapshots, never touches Redis), `/`, `/-/healthy`,
//! `/-/ready`, `/-/reload` (POST), `/scrape`, `/discovery`, `/alerts`, `/runbooks/`.
//! Connections are served concurrently; on shutdown the listener closes and in-flight requests
//! get a few seconds to finish.

use crate::alerts::eval::Evaluator;
use crate::encoding::{self, GzipStream, Segment};
use crate::metrics::{Merger, WINDOW};
use crate::scrape::{OnDemand, ScrapeAnswer};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::telemetry::Telemetry;
use crate::web_config::{WebSecurity, CHALLENGE};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, VARY,
    WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long in-flight requests may run after shutdown begins.
pub const DRAIN: Duration = Duration::from_secs(5);
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read.
pub struct AppState {
    pub store: Arc<SnapshotStore>,
    pub telemetry: Telemetry,
    pub telemetry_path: String,
    /// Whether `/metrics` and `/scrape` are gzipped for clients that ask (`gzip:` in config).
    pub gzip: bool,
    /// `/metrics` responses allowed in flight at once (`max_requests:`); None: no limit.
    /// Each holds the snapshots it started from until its last byte is written.
    pub in_flight: Option<Arc<tokio::sync::Semaphore>>,
    pub on_demand: Arc<OnDemand>,
    /// The in-process evaluator, when alerting is configured.
    pub alerts: Option<Arc<std::sync::Mutex<Evaluator>>>,
    /// HTTPS and basic auth from the web config file, when given.
    pub web: Option<Arc<WebSecurity>>,
    /// Configuration reloads (`POST /-/reload`), when the process has a source to reload.
    pub reloader: Option<Arc<crate::daemon::Reloader>>,
}

/// How long a client may take over the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write to a client may make no progress before its connection is dropped. A
/// client that stops reading a large `/metrics` would otherwise hold the snapshots the response
/// started from (and, for a large one, a producing thread) for as long as it keeps the
/// connection open. Prometheus reads as fast as it can and closes the connection itself at its
/// scrape timeout.
pub const WRITE_STALL: Duration = Duration::from_secs(30);

/// The listening socket for `addr`. `[::]` (which `:port` and the default mean) listens on IPv6
/// and IPv4 alike, as Go's `:9121` does for redis_exporter, whatever the host's
/// `net.ipv6.bindv6only`; on a host without IPv6 it falls back to `0.0.0.0`.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = |addr: std::net::SocketAddr| -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    match open(addr) {
        Err(err) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], addr.port()));
            open(v4).inspect(|_| {
                tracing::warn!(error = %err, %v4, "no IPv6 on this host: listening on IPv4 only")
            })
        }
        other => other,
    }
}

/// Accepts connections until `shutdown` turns true, then drains.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors, for example: wait a moment rather than spin.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // A response is written in several chunks: without NODELAY the last short
                // segment can wait on the client's delayed ACK (~40 ms on Linux).
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, "TCP_NODELAY not set");
                }
                let acceptor = state.web.as_ref().and_then(|w| w.acceptor());
                let watcher = graceful.watcher();
                let state = state.clone();
                let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
                stream.set_write_timeout(Some(WRITE_STALL));
                let stream = Box::pin(stream);
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_connection(stream, peer.ip(), state, watcher).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => serve_connection(tls, peer.ip(), state, watcher).await,
                                // Plain HTTP on the HTTPS port, a bad client, a slow one.
                                Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake with an HTTP client failed"),
                                Err(_) => tracing::debug!("TLS handshake with an HTTP client timed out"),
                            }
                        }
                    }
                });
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => tracing::warn!("some HTTP requests were still running at exit"),
    }
}

/// Serves HTTP/1.1 on one accepted connection (plain or TLS) until it closes or the server
/// drains.
async fn serve_connection<I>(
    io: I,
    peer: std::net::IpAddr,
    state: Arc<AppState>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(state.clone(), req, peer));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service);
    let _ = watcher.watch(conn).await;
}

/// Every response body: whole (small pages) or streamed (the exposition).
pub type Body = BoxBody<Bytes, Infallible>;

/// `/metrics` as a stream: merged families from the snapshots taken when the request came,
/// produced a frame at a time as hyper asks for them ([`Frames`]).
struct ExpositionBody {
    source: Source,
    /// The `max_requests` slot this response takes until its last frame is produced (then,
    /// not when hyper drops the body after writing the end: a client sending its next request
    /// as soon as it has read this one would otherwise find the slot still taken).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Where the frames of an exposition come from.
enum Source {
    /// Small expositions: produced on the connection's task when hyper asks for the next frame.
    Inline(Frames),
    /// Large ones (hundreds of targets): produced on a blocking thread one frame ahead of the
    /// socket, so preparing the next frame overlaps the kernel sending this one. If that thread
    /// died midway, the stream just stops: no self-metrics and, gzipped, no trailer, so a gzip
    /// client sees a truncated stream, an error, not an exposition with families missing.
    Ahead(tokio::sync::mpsc::Receiver<Bytes>),
}

/// The frames of one exposition, in order: merged windows of about [`WINDOW`] bytes, the
/// process self-metrics (the tail) with the last, each frame gzipped as a segment of its own
/// when the client asked for gzip ([`crate::encoding`]) and the gzip trailer with the last. A
/// small exposition is one frame: one segment, one reset compressor, one block.
struct Frames {
    merger: Merger<Arc<Snapshot>>,
    tail: Option<String>,
    gzip: Option<GzipStream>,
    buffers: Buffers,
    /// The capacity of a new buffer: room for a window and more, when the exposition is made
    /// ahead (all buffers one size, so the allocator hands the same blocks back scrape after
    /// scrape, and a slightly larger window rarely needs a new one); none up front for a small
    /// one, which takes one window of just its size.
    capacity: usize,
}

impl Frames {
    /// The next frame's bytes; None after the last.
    fn next(&mut self) -> Option<Bytes> {
        let mut buf = self.buffers.take(self.capacity);
        let mut len = 0;
        let mut more = true;
        while len < WINDOW && more {
            match self.merger.write_window(&mut buf, len) {
                Some(end) => len = end,
                None => more = false,
            }
        }
        if !more {
            if let Some(tail) = self.tail.take() {
                buf.truncate(len);
                buf.extend_from_slice(tail.as_bytes());
                len = buf.len();
            }
        }
        let Some(stream) = &mut self.gzip else {
            if len == 0 {
                self.buffers.give(buf);
                return None;
            }
            let home = self.buffers.clone();
            return Some(Bytes::from_owner(Filled { buf, len, home }));
        };
        let mut out = if len == 0 {
            Vec::new()
        } else {
            stream.push(Segment::new(&buf[..len]))
        };
        self.buffers.give(buf);
        if !more {
            if let Some(stream) = self.gzip.take() {
                out.extend_from_slice(&stream.finish());
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

/// The window buffers of one exposition, each handed back when the socket is done with its
/// frame: a 1000-target scrape reuses a few buffers instead of allocating 15 of a megabyte or
/// more (which the allocator may have to fault in anew) and zeroing each before it is written.
/// A buffer's length is as far as it was ever written; a frame is its front part.
#[derive(Clone, Default)]
struct Buffers(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Buffers {
    /// Buffers kept for reuse: as many as frames are in flight (one being written to the
    /// socket, one queued, one being produced) and a spare.
    const KEEP: usize = 4;

    /// A buffer to write a frame into: a used one, or a new one of `capacity`.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        free.pop().unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < Self::KEEP {
            free.push(buf);
        }
    }
}

/// A plain frame: the front `len` bytes of a buffer that goes back to its exposition's
/// [`Buffers`] when hyper drops the frame.
struct Filled {
    buf: Vec<u8>,
    len: usize,
    home: Buffers,
}

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        self.home.give(std::mem::take(&mut self.buf));
    }
}

/// Sample bytes from which an exposition is produced ahead on its own thread; below it, the
/// hand-off would cost more than it saves.
const AHEAD_FROM: usize = 2 * WINDOW;

/// Scrapes produced ahead at once; more concurrent ones are produced inline, so a flood of
/// requests costs neither threads nor the frames queued for them.
static AHEAD_PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

impl ExpositionBody {
    fn new(
        snapshots: Vec<Arc<Snapshot>>,
        tail: String,
        gzip: bool,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        let merger = Merger::new(snapshots);
        let permit = if merger.body_len() < AHEAD_FROM {
            None
        } else {
            AHEAD_PERMITS.try_acquire().ok()
        };
        let mut frames = Frames {
            merger,
            tail: Some(tail),
            gzip: gzip.then(GzipStream::default),
            buffers: Buffers::default(),
            capacity: if permit.is_some() { 2 * WINDOW } else { 0 },
        };
        let source = if let Some(permit) = permit {
            // One frame queued while the next is produced and the last is written: a few
            // megabytes in flight whatever the fleet's size. gzip compresses on this thread
            // too, not on more: on helper threads a 1000-target gzip scrape took p50 22 ms
            // instead of 31 ms but held 7.2 MiB more at the peak, enough to cross 100 MB.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                while let Some(frame) = frames.next() {
                    // An error means the client went away: stop producing.
                    if tx.blocking_send(frame).is_err() {
                        break;
                    }
                }
            });
            Source::Ahead(rx)
        } else {
            Source::Inline(frames)
        };
        Self { source, slot }
    }
}

impl hyper::body::Body for ExpositionBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = match &mut this.source {
            Source::Inline(frames) => frames.next(),
            Source::Ahead(rx) => std::task::ready!(rx.poll_recv(cx)),
        };
        if frame.is_none() {
            this.slot = None;
        }
        Poll::Ready(frame.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Whether to gzip this response: allowed by the config and asked for (`Accept-Encoding`).
fn wants_gzip(state: &AppState, req: &Request<Incoming>) -> bool {
    // Several header lines are one list (RFC 9110 §5.3): `gzip;q=0` on one line and `*` on
    // the next refuse gzip, as they do on one line.
    state.gzip
        && encoding::accepts_gzip(
            &req.headers()
                .get_all(ACCEPT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(","),
        )
}

/// Marks an exposition response as gzipped, and as varying with `Accept-Encoding` either way.
fn set_encoding(resp: &mut Response<Body>, gzip: bool) {
    let headers = resp.headers_mut();
    headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
}

fn response(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = code;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: std::net::IpAddr,
) -> Result<Response<Body>, Infallible> {
    let allowed = match &state.web {
        Some(web) => {
            web.allows(req.uri().path(), req.headers().get(AUTHORIZATION), peer)
                .await
        }
        None => true,
    };
    let (handler, resp) = if allowed {
        route(&state, &req).await
    } else {
        let mut resp = response(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "unauthorized: this exporter needs basic auth credentials\n",
        );
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
        ("unauthorized", resp)
    };
    // The path only: a query string can carry a caller's URL with credentials in it.
    tracing::debug!(method = %req.method(), path = req.uri().path(), status = resp.status().as_u16(), "request");
    state
        .telemetry
        .scrapes
        .with_label_values(&[handler, resp.status().as_str()])
        .inc();
    Ok(resp)
}

/// The handler of one of the exporter's own endpoints (config::RESERVED_PATHS, which the
/// telemetry path may not take, and `/runbooks/…`).
fn own_handler(path: &str) -> Option<&'static str> {
    Some(match path {
        "/" => "landing",
        // `/health` and `/discover-cluster-nodes` are redis_exporter's paths for the same
        // answers, so its liveness probes and http_sd configs keep working.
        "/-/healthy" | "/health" => "healthy",
        "/-/ready" => "ready",
        "/-/reload" => "reload",
        "/scrape" => "scrape",
        "/discovery" | "/discover-cluster-nodes" => "discovery",
        "/alerts" => "alerts",
        p if p.starts_with("/runbooks/") => "runbooks",
        _ => return None,
    })
}

async fn route(state: &AppState, req: &Request<Incoming>) -> (&'static str, Response<Body>) {
    let path = req.uri().path();
    let handler = if path == state.telemetry_path {
        "metrics"
    } else {
        match own_handler(path) {
            Some(handler) => handler,
            None => {
                return (
                    "other",
                    response(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
                )
            }
        }
    };
    // A reload changes state: POST only, as Prometheus' and Alertmanager's.
    if handler == "reload" {
        if req.method() != Method::POST {
            let mut resp = response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return (handler, resp);
        }
        let resp = match &state.reloader {
            Some(r) => match r.reload().await {
                Ok(text) => response(StatusCode::OK, "text/plain", text),
                Err(err) => response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("failed to reload the configuration: {err}\n"),
                ),
            },
            None => response(
                StatusCode::NOT_FOUND,
                "text/plain",
                "this process has no configuration source to reload\n",
            ),
        };
        return (handler, resp);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return (handler, resp);
    }
    let resp = match handler {
        "metrics" => {
            let Ok(slot) = scrape_slot(state) else {
                return (handler, too_many_scrapes());
            };
            let mut tail = String::new();
            state
                .telemetry
                .on_scrape_nodes(state.store.on_scrape_counts());
            state.telemetry.render_into(&mut tail);
            let gzip = wants_gzip(state, req);
            let body = ExpositionBody::new(state.store.snapshots(|_, _| true), tail, gzip, slot);
            let mut resp = Response::new(body.boxed());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            set_encoding(&mut resp, gzip);
            resp
        }
        "healthy" => response(StatusCode::OK, "text/plain", "OK\n"),
        "ready" if state.store.ready() => response(StatusCode::OK, "text/plain", "ready\n"),
        "ready" => response(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: some targets have not been polled yet\n",
        ),
        "scrape" => scrape(state, req).await,
        "discovery" => response(StatusCode::OK, "application/json", discovery(state)),
        "alerts" => match &state.alerts {
            Some(e) => {
                let active = e.lock().unwrap_or_else(|p| p.into_inner()).active();
                response(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string(&active).unwrap_or_default(),
                )
            }
            None => response(
                StatusCode::NOT_FOUND,
                "text/plain",
                "alerting is off: add an alerting: section to the config\n",
            ),
        },
        "runbooks" => {
            let name = path
                .trim_start_matches("/runbooks/")
                .trim_end_matches(".md");
            match crate::alerts::runbook_text(name) {
                Some(text) => response(StatusCode::OK, "text/markdown; charset=utf-8", text),
                None => response(StatusCode::NOT_FOUND, "text/plain", "no such runbook\n"),
            }
        }
        _ => response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            landing_page(state),
        ),
    };
    (handler, resp)
}

/// One of the `max_requests` slots for an exposition (`/metrics`, `/scrape`); `Err` when all
/// are taken (answer [`too_many_scrapes`]).
fn scrape_slot(state: &AppState) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ()> {
    match &state.in_flight {
        None => Ok(None),
        Some(limit) => limit.clone().try_acquire_owned().map(Some).map_err(|_| ()),
    }
}

fn too_many_scrapes() -> Response<Body> {
    response(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain",
        "too many scrapes in flight (max_requests in the config)\n",
    )
}

/// How long a `/scrape` may wait for a first poll: Prometheus' scrape timeout header, less a
/// margin for the answer to travel, else 10 s.
fn scrape_deadline(req: &Request<Incoming>) -> Duration {
    req.headers()
        .get("X-Prometheus-Scrape-Timeout-Seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .map_or(Duration::from_secs(10), |secs| {
            Duration::from_secs_f64((secs * 0.9).clamp(0.1, 120.0))
        })
}

async fn scrape(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let target = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "target")
        .map(|(_, v)| v.into_owned());
    let Some(target) = target.filter(|t| !t.is_empty() && t.len() <= 512) else {
        return response(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "give ?target=<name or host:port>\n",
        );
    };
    // Held while the answer is made: a /scrape of a large target renders and compresses its
    // whole body at once, so many at a time count against max_requests as /metrics does.
    let Ok(_slot) = scrape_slot(state) else {
        return too_many_scrapes();
    };
    match state.on_demand.scrape(&target, scrape_deadline(req)).await {
        ScrapeAnswer::Metrics(body) => {
            let gzip = wants_gzip(state, req);
            let body = if gzip {
                encoding::gzip(body.as_bytes())
            } else {
                body.into_bytes()
            };
            let mut resp = response(StatusCode::OK, TEXT_FORMAT, body);
            set_encoding(&mut resp, gzip);
            resp
        }
        ScrapeAnswer::Disabled => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "/scrape is off: list allowed hosts under scrape_allow in the config, or set polling: on_scrape\n",
        ),
        ScrapeAnswer::BadTarget(why) => {
            response(StatusCode::BAD_REQUEST, "text/plain", format!("{why}\n"))
        }
        ScrapeAnswer::Forbidden => response(
            StatusCode::FORBIDDEN,
            "text/plain",
            "target is not a configured target and no scrape_allow entry allows it\n",
        ),
        ScrapeAnswer::UnknownNode => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "target is not a node of any polling: on_scrape target (it may have left its \
             topology, or not be discovered yet), and no scrape_allow entry admits others\n",
        ),
        ScrapeAnswer::TooMany => response(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain",
            "too many on-demand targets; try again when idle ones expire\n",
        ),
        ScrapeAnswer::NotYetPolled => response(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the first poll of this target did not finish within the scrape timeout\n",
        ),
    }
}

/// Prometheus `http_sd` JSON: one group per node that answers (configured, followed replicas,
/// cluster nodes not flagged fail), for scraping through `/scrape?target=<address>`.
fn discovery(state: &AppState) -> String {
    let groups: Vec<serde_json::Value> = state
        .store
        .all()
        .into_iter()
        .filter(|((_, node), entry)| {
            // Configured nodes are always listed (a down one must show redis_up 0); discovered
            // ones while they are live members. Nodes of on-scrape targets are listed whether
            // polled now or not, for as long as they belong to the topology, failed or not:
            // nothing else polls them, so one dropped from the list could never show
            // redis_up 0. Their targets' roll-ups too (others come with their seed's address).
            entry.on_scrape
                || (entry.live && (node.is_none() || entry.snapshot.as_ref().is_some_and(|s| s.up)))
        })
        .map(|((target, node), entry)| {
            let role = entry
                .snapshot
                .as_ref()
                .and_then(|s| s.role.clone())
                .unwrap_or_default();
            // A roll-up is scraped by the target's name.
            let address = if entry.roll_up {
                target.clone()
            } else {
                entry.address
            };
            serde_json::json!({
                "targets": [address],
                "labels": {
                    "__meta_redis_lookout_target": target,
                    "__meta_redis_lookout_node": node.unwrap_or_default(),
                    "__meta_redis_lookout_role": role,
                }
            })
        })
        .collect();
    serde_json::Value::Array(groups).to_string()
}

fn html_escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// A small page for people: each node, its state, when it was last polled and why it failed.
fn landing_page(state: &AppState) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>redis-lookout</title>\
         <style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:left}\
         .up{color:#070}.down{color:#b00}</style></head><body><h1>redis-lookout</h1>",
    );
    let _ = write!(
        page,
        "<p>Version {}. <a href=\"{}\">Metrics</a> · <a href=\"/-/healthy\">healthy</a> · \
         <a href=\"/-/ready\">ready</a></p><table><tr><th>target</th><th>node</th><th>state</th>\
         <th>role</th><th>version</th><th>last poll</th><th>took</th><th>last error</th></tr>",
        env!("CARGO_PKG_VERSION"),
        state.telemetry_path
    );
    let now = SystemTime::now();
    for ((target, node), entry) in state.store.all() {
        let dormant = entry.dormant();
        let snapshot = entry.snapshot;
        page.push_str("<tr><td>");
        html_escape(&mut page, &target);
        page.push_str("</td><td>");
        html_escape(&mut page, node.as_deref().unwrap_or(""));
        page.push_str("</td>");
        match snapshot {
            None => {
                let word = if dormant {
                    "polled only while scraped; not scraped lately"
                } else {
                    "waiting for first poll"
                };
                let _ = write!(
                    page,
                    "<td>{word}</td><td></td><td></td><td></td><td></td><td></td>"
                );
            }
            Some(s) => {
                let (class, word) = if s.up { ("up", "up") } else { ("down", "down") };
                let ago = now
                    .duration_since(s.polled_at)
                    .unwrap_or_default()
                    .as_secs();
                let _ = write!(page, "<td class=\"{class}\">{word}</td><td>");
                html_escape(&mut page, s.role.as_deref().unwrap_or(""));
                page.push_str("</td><td>");
                html_escape(&mut page, s.version.as_deref().unwrap_or(""));
                let _ = write!(
                    page,
                    "</td><td>{ago} s ago</td><td>{:.1} ms</td><td>{}</td>",
                    s.duration.as_secs_f64() * 1000.0,
                    s.error.as_ref().map_or("", |e| e.label())
                );
            }
        }
        page.push_str("</tr>");
    }
    page.push_str("</table></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::gunzip;
    use crate::metrics::{merge_exposition, FamilySet, Interner, Kind};

    #[test]
    fn every_reserved_path_is_one_of_the_exporters_own_endpoints() {
        for path in crate::config::RESERVED_PATHS {
            assert!(
                own_handler(path).is_some(),
                "{path} is reserved but not served"
            );
        }
        assert_eq!(own_handler("/runbooks/RedisDown.md"), Some("runbooks"));
        assert_eq!(own_handler("/metrics"), None);
    }

    /// `targets` snapshots of `families` families with `samples` samples each.
    fn snapshots(targets: usize, families: usize, samples: usize) -> Vec<Arc<Snapshot>> {
        let interner = Interner::default();
        (0..targets)
            .map(|t| {
                let mut set = FamilySet::new();
                for f in 0..families {
                    for s in 0..samples {
                        set.add(
                            &format!("redis_family_{f}"),
                            "a family",
                            Kind::Gauge,
                            vec![("cmd", format!("command_{s}"))],
                            (t * s) as f64,
                        );
                    }
                }
                Arc::new(Snapshot {
                    target: format!("t{t}"),
                    node: None,
                    families: set.render(&[("target", format!("t{t}"))], &interner),
                    up: true,
                    error: None,
                    polled_at: SystemTime::UNIX_EPOCH,
                    duration: Duration::ZERO,
                    role: None,
                    version: None,
                })
            })
            .collect()
    }

    async fn frames(body: ExpositionBody) -> Vec<Bytes> {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.push(frame.unwrap().into_data().unwrap());
        }
        out
    }

    /// Small (one frame), medium (merged inline in several windows) and large (merged and
    /// compressed ahead on a blocking thread) expositions: plain, the merge plus the tail; gzipped, one
    /// gzip member that decodes to exactly the same bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_path_sends_the_merge_and_the_tail_plain_or_gzipped() {
        let tail = "# HELP redis_lookout_self a tail\nredis_lookout_self 1\n".to_string();
        for (targets, ahead, want_frames) in
            [(3, false, Some(1)), (70, false, None), (200, true, None)]
        {
            let snaps = snapshots(targets, 20, 20);
            let mut want = String::new();
            merge_exposition(&mut want, snaps.clone());
            want.push_str(&tail);
            let size = want.len();
            let body = ExpositionBody::new(snaps.clone(), tail.clone(), false, None);
            assert_eq!(
                matches!(body.source, Source::Ahead(_)),
                ahead,
                "{size} bytes"
            );
            let plain = frames(body).await;
            if let Some(n) = want_frames {
                assert_eq!(plain.len(), n, "{size} bytes");
            } else {
                assert!(plain.len() > 1, "{size} bytes in {} frames", plain.len());
            }
            assert_eq!(plain.concat(), want.as_bytes(), "plain, {size} bytes");

            let body = ExpositionBody::new(snaps, tail.clone(), true, None);
            assert_eq!(
                matches!(body.source, Source::Ahead(_)),
                ahead,
                "{size} bytes"
            );
            let gz = frames(body).await.concat();
            assert_eq!(gunzip(&gz).unwrap(), want.as_bytes(), "gzip, {size} bytes");
        }
    }
}
