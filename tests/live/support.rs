//! Test support: real `redis-server` processes on free loopback ports, the daemon in-process or
//! as the built binary, a tiny HTTP client, an exposition parser, and waiting on conditions with
//! deadlines (never sleep-and-hope).

#![allow(dead_code)]

use redis_lookout::config::{Config, Overrides};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nobody listens on right now (bound then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A client named `stall-control` that, while a test runs, keeps sending `RANDOMKEY` (a few
/// microseconds, and a command redis-lookout never sends) and, `with_scans`, `SCAN <random
/// cursor> COUNT 10` (the shape of the watcher's commands; not beside the keyspace sampler,
/// which sizes its SCANs from the SCAN average in commandstats that these would dilute). SLOWLOG and commandstats record
/// wall time, so when this machine stalls Redis mid-command (another process preempting it on
/// 2 cores, or the host paging the VM's memory back in after an idle second: seen here, 256 MB
/// re-read in 80-180 ms after one idle second against 3-8 ms hot), the control's commands show
/// it too. Its SCANs' rate in SLOWLOG and its RANDOMKEY's average are the baseline that "no
/// command of ours over 1 ms" is judged against.
pub struct StallControl {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<ControlCounts>,
}

/// The client name [`StallControl`] runs under.
pub const STALL_CONTROL: &str = "stall-control";

/// Commands the stall control sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControlCounts {
    pub randomkeys: u64,
    pub scans: u64,
}

impl ControlCounts {
    /// The command whose SLOWLOG rate is the baseline: SCAN when it sent them.
    fn probe_entry(&self) -> &'static str {
        if self.scans > 0 {
            "bulk-string('\"SCAN\"')"
        } else {
            "bulk-string('\"RANDOMKEY\"')"
        }
    }

    fn probes(&self) -> u64 {
        if self.scans > 0 {
            self.scans
        } else {
            self.randomkeys
        }
    }
}

impl StallControl {
    pub async fn start(redis: &RedisServer, with_scans: bool) -> StallControl {
        use rand::RngExt;
        let mut conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("control connection");
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(STALL_CONTROL)
            .query_async(&mut conn)
            .await
            .expect("CLIENT SETNAME");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut sent = ControlCounts::default();
            // Bounded: a pair every 10 ms, for at most about three hours.
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && sent.randomkeys < 1_000_000 {
                let _: redis::RedisResult<redis::Value> =
                    redis::cmd("RANDOMKEY").query_async(&mut conn).await;
                sent.randomkeys += 1;
                if !with_scans {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let cursor: u64 = rand::rng().random_range(0..1 << 20);
                let _: redis::RedisResult<redis::Value> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(10)
                    .query_async(&mut conn)
                    .await;
                sent.scans += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        });
        StallControl { stop, task }
    }

    /// Stops the control; what it sent.
    pub async fn stop(self) -> ControlCounts {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("control task")
    }
}

/// What SLOWLOG and commandstats say about our commands against the stall control's, since
/// `CONFIG RESETSTAT` and `SLOWLOG RESET` (the test's own few commands count as ours).
pub struct SlowlogVerdict {
    /// Our entries (client name redis-lookout) that the test counts, as redis-rs prints them.
    pub ours: Vec<String>,
    /// The same entries as `COMMAND duration_us`, for the summary.
    pub ours_brief: Vec<String>,
    /// The seconds (SLOWLOG's unix timestamps) those entries fall in.
    pub our_seconds: std::collections::BTreeSet<i64>,
    /// Commands Redis ran for everyone but the control.
    pub our_calls: f64,
    /// The control's probes in SLOWLOG (its SCANs when it sends them, else its RANDOMKEYs).
    pub control_slow: usize,
    pub control: ControlCounts,
    /// The control's average RANDOMKEY in Redis, µs.
    pub control_usec: f64,
    /// `INFO commandstats` as read.
    pub stats: String,
}

impl SlowlogVerdict {
    /// Reads SLOWLOG and the command counts; `keep` picks which of our entries count.
    pub fn read(redis: &RedisServer, control: ControlCounts, keep: impl Fn(&str) -> bool) -> Self {
        let entries: Vec<redis::Value> = redis.cmd(&["SLOWLOG", "GET", "-1"]);
        let printed: Vec<String> = entries.iter().map(|e| format!("{e:?}")).collect();
        let stats: String = redis.cmd(&["INFO", "commandstats"]);
        let calls: f64 = command_stats(&stats)
            .values()
            .filter_map(|fields| fields.get("calls"))
            .sum();
        let mine: Vec<(&String, &redis::Value)> = printed
            .iter()
            .zip(&entries)
            .filter(|(e, _)| e.contains("\"redis-lookout\"") && keep(e))
            .collect();
        SlowlogVerdict {
            ours: mine.iter().map(|(e, _)| (*e).clone()).collect(),
            ours_brief: mine.iter().map(|(_, entry)| slowlog_brief(entry)).collect(),
            our_seconds: mine
                .iter()
                .filter_map(|(_, entry)| slowlog_second(entry))
                .collect(),
            our_calls: (calls - (control.randomkeys + control.scans) as f64).max(0.0),
            control_slow: printed
                .iter()
                .filter(|e| e.contains(STALL_CONTROL) && e.contains(control.probe_entry()))
                .count(),
            control,
            control_usec: cmdstat(&stats, "randomkey", "usec_per_call"),
            stats,
        }
    }

    /// How many of our commands may be in SLOWLOG: `floor`, plus three times the control's
    /// rate of slow probes over our number of commands.
    pub fn allowed(&self, floor: f64) -> f64 {
        let stall_rate = self.control_slow as f64 / (self.control.probes().max(1)) as f64;
        floor + 3.0 * stall_rate * self.our_calls
    }

    /// Whether our commands in SLOWLOG are few enough for a run of `active`: at most
    /// [`allowed`](Self::allowed)`(floor)` of them, or all within at most two seconds per ten
    /// seconds of the run, and at least two (one stall may straddle a second boundary). A stall
    /// of the machine makes every command in flight slow at once: a CI run logged 19 of the
    /// sampler's SCANs and the poller's INFO at 1-4.7 ms, all in one second, while none of the
    /// stall control's RANDOMKEYs (a few µs each, so rarely in flight) was slow. Commands sized
    /// too big show up instead second after second, and fail both.
    pub fn few_enough(&self, floor: f64, active: Duration) -> bool {
        let seconds = 2.0 * (active.as_secs_f64() / 10.0).max(1.0);
        self.ours.len() as f64 <= self.allowed(floor) || self.our_seconds.len() as f64 <= seconds
    }

    /// How much slower than usual this machine makes Redis right now: the control's RANDOMKEY
    /// average against the 5 µs it takes on a quiet one (3.7 µs measured here back-to-back), at
    /// least 1.
    pub fn slowdown(&self) -> f64 {
        (self.control_usec / 5.0).max(1.0)
    }

    /// SCANs Redis ran for everyone but the control.
    pub fn our_scans(&self) -> f64 {
        cmdstat(&self.stats, "scan", "calls") - self.control.scans as f64
    }

    /// At least our average time per SCAN in Redis, µs: all SCAN time (the control's too) over
    /// our SCANs only.
    pub fn our_scan_usec_at_most(&self) -> f64 {
        cmdstat(&self.stats, "scan", "usec") / self.our_scans().max(1.0)
    }

    /// The line to print after a run, passed or not.
    pub fn summary(&self) -> String {
        format!(
            "SLOWLOG: {} of our {} commands over 1 ms {:?} in {} distinct seconds, {} of the \
             control's {} {}; RANDOMKEY {:.1} us on average (slowdown {:.1})",
            self.ours.len(),
            self.our_calls,
            self.ours_brief,
            self.our_seconds.len(),
            self.control_slow,
            self.control.probes(),
            self.control.probe_entry(),
            self.control_usec,
            self.slowdown()
        )
    }
}

/// The unix second a SLOWLOG entry was logged in (its second field).
fn slowlog_second(entry: &redis::Value) -> Option<i64> {
    match entry {
        redis::Value::Array(fields) => match fields.get(1)? {
            redis::Value::Int(second) => Some(*second),
            _ => None,
        },
        _ => None,
    }
}

/// A SLOWLOG entry as `command duration_us`, read by the daemon's own SLOWLOG parser.
fn slowlog_brief(entry: &redis::Value) -> String {
    let one = redis::Value::Array(vec![entry.clone()]);
    match redis_lookout::collector::slowlog::parse_slowlog(&one).first() {
        Some(e) => format!("{} {:.0}us", e.command, e.duration_seconds * 1e6),
        None => format!("{entry:?}"),
    }
}

/// `INFO commandstats` text as command name (`get`, `client|setname`) → its numeric fields
/// (`calls`, `usec`, `usec_per_call`, `rejected_calls`, `failed_calls`).
pub fn command_stats(text: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    text.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(':'))
        .map(|(name, fields)| {
            let fields = fields
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect();
            (name.to_owned(), fields)
        })
        .collect()
}

/// A field (`calls`, `usec`, `usec_per_call`) of `command` in `INFO commandstats` text (NaN when
/// absent).
pub fn cmdstat(stats: &str, command: &str, field: &str) -> f64 {
    command_stats(stats)
        .get(command)
        .and_then(|fields| fields.get(field).copied())
        .unwrap_or(f64::NAN)
}

/// Polls `check` every 25 ms until it returns Some or `limit` passes.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `redis-server` child on 127.0.0.1, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// Listens with TLS only (`--port 0 --tls-port <port>`).
    tls: bool,
    /// For a Sentinel: its first configuration (Sentinel rewrites the file as it learns).
    sentinel_conf: Option<String>,
    /// An older redis-server than the installed one, started without Redis 7's options.
    program: Option<PathBuf>,
}

/// What makes a `redis-server` a cluster node with a quick failure detection.
const CLUSTER_NODE_ARGS: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-node-timeout",
    "1000",
    "--cluster-config-file",
    "nodes.conf",
];

/// A port below 55535 whose cluster bus port (+10000) is free too.
pub fn free_cluster_port() -> u16 {
    use rand::RngExt;
    for _ in 0..200 {
        let port: u16 = rand::rng().random_range(20000..30000);
        let ok = StdListener::bind(("127.0.0.1", port)).is_ok()
            && StdListener::bind(("127.0.0.1", port + 10000)).is_ok();
        if ok {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl RedisServer {
    pub fn start(extra: &[&str]) -> RedisServer {
        Self::start_with(free_port, extra)
    }

    /// A replica of `master`.
    pub fn replica_of(master: &RedisServer) -> RedisServer {
        Self::start(&["--replicaof", "127.0.0.1", &master.port.to_string()])
    }

    /// A cluster-enabled node (not yet part of a cluster).
    pub fn cluster_node() -> RedisServer {
        let mut args = CLUSTER_NODE_ARGS.to_vec();
        // Tests freeze a replica to hold back a failover; without this Redis would count the
        // frozen time as stale data and refuse to promote it afterwards.
        args.extend_from_slice(&["--cluster-replica-validity-factor", "0"]);
        Self::start_with(free_cluster_port, &args)
    }

    /// A server that speaks TLS only, with `pki`'s server certificate; with `auth_clients` it
    /// demands a client certificate signed by the test CA. `extra` as for [`RedisServer::start`].
    pub fn start_tls(pki: &Pki, auth_clients: bool, extra: &[&str]) -> RedisServer {
        let mut args = pki.server_args(auth_clients);
        args.extend_from_slice(extra);
        Self::start_inner(free_port, &args, None, true, None)
    }

    /// A cluster-enabled node (not yet part of a cluster) that speaks TLS only, on its client
    /// port and its cluster bus, with `pki`'s certificates (clients must present one).
    pub fn cluster_node_tls(pki: &Pki) -> RedisServer {
        Self::cluster_node_tls_with(pki, "server", &[])
    }

    /// As [`RedisServer::cluster_node_tls`], with the certificate `<cert>.crt` and more
    /// arguments.
    pub fn cluster_node_tls_with(pki: &Pki, cert: &str, extra: &[&str]) -> RedisServer {
        let mut args = pki.server_args_with(cert, true);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--tls-cluster", "yes"]);
        args.extend_from_slice(&CLUSTER_NODE_ARGS);
        Self::start_inner(free_cluster_port, &args, None, true, None)
    }

    /// A Sentinel monitoring `master` under `name` with the given quorum, quick to judge a
    /// master down (2.5 s: shorter makes a busy 2-core CI machine fail over spuriously) and to
    /// fail over (5 s timeout).
    pub fn sentinel(master: &RedisServer, name: &str, quorum: u32) -> RedisServer {
        Self::sentinel_with(master, name, quorum, "")
    }

    /// As [`RedisServer::sentinel`], with more lines for sentinel.conf (passwords, …).
    pub fn sentinel_with(
        master: &RedisServer,
        name: &str,
        quorum: u32,
        extra_conf: &str,
    ) -> RedisServer {
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {port} {quorum}\n\
             sentinel down-after-milliseconds {name} 2500\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n{extra_conf}",
            port = master.port
        );
        Self::start_inner(free_port, &[], Some(conf), false, None)
    }

    fn start_with(pick_port: fn() -> u16, extra: &[&str]) -> RedisServer {
        Self::start_inner(pick_port, extra, None, false, None)
    }

    /// A server run by `program`, a redis-server older than 7 (no `--enable-debug-command`).
    pub fn start_program(program: &Path, extra: &[&str]) -> RedisServer {
        Self::start_inner(free_port, extra, None, false, Some(program.to_owned()))
    }

    fn start_inner(
        pick_port: fn() -> u16,
        extra: &[&str],
        sentinel_conf: Option<String>,
        tls: bool,
        program: Option<PathBuf>,
    ) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // A port found free can be taken before redis binds it: try a few.
        for _attempt in 0..5 {
            let mut server = RedisServer {
                port: pick_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: extra.clone(),
                sentinel_conf: sentinel_conf.clone(),
                tls,
                program: program.clone(),
            };
            server.spawn();
            if server.wait_ready(Duration::from_secs(10)) {
                return server;
            }
        }
        panic!("redis-server did not start; is it installed (apt-get install redis-server)?");
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(self.program.as_deref().unwrap_or(Path::new("redis-server")));
        if let Some(conf) = &self.sentinel_conf {
            let path = self.dir.path().join("sentinel.conf");
            // On a restart the file Sentinel rewrote is kept: it holds what it learned.
            if !path.exists() {
                std::fs::write(&path, conf).expect("write sentinel.conf");
            }
            cmd.arg(path).arg("--sentinel");
        }
        if self.tls {
            cmd.args(["--port", "0", "--tls-port"]);
        } else {
            cmd.arg("--port");
        }
        cmd.arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.program.is_none() {
            cmd.args(["--enable-debug-command", "yes"]);
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
    }

    fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.tls {
                // No plain port to PING: the server says when it listens.
                if self.log_tail(50).contains("Ready to accept connections") {
                    return true;
                }
                if self.log_tail(50).contains("Address already in use") {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            // A server with requirepass is up when it asks for a password, and one loading
            // its data set when it says so (redis-rs may hear it while setting up).
            let answered = |e: &redis::RedisError| {
                let text = e.to_string();
                text.contains("NOAUTH") || text.to_ascii_lowercase().contains("loading")
            };
            match self.client().get_connection() {
                Ok(mut c) => match redis::cmd("PING").query::<String>(&mut c) {
                    Ok(_) => return true,
                    Err(e) if answered(&e) => return true,
                    Err(_) => {}
                },
                Err(e) if answered(&e) => return true,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Runs one command through `redis-cli` over TLS with the test CA and client certificate.
    pub fn tls_cli(&self, pki: &Pki, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(pki.cli_args())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (apt-get install redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = self
            .client()
            .get_connection()
            .expect("connect to test redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).expect("redis command")
    }

    pub fn info_field(&self, section: &str, field: &str) -> String {
        let text: String = self.cmd(&["INFO", section]);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    }

    /// The id of a client blocked in a command (`flags=b` in CLIENT LIST), or "" when none is.
    pub fn blocked_client_id(&self) -> String {
        let list: String = self.cmd(&["CLIENT", "LIST"]);
        list.lines()
            .find(|l| l.split(' ').any(|f| f == "flags=b"))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .unwrap_or_default()
            .to_owned()
    }

    /// The server's own log (for a failing test's message).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// False once killed (until restarted).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory, with `extra` in place of
    /// the arguments it was started with.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready(Duration::from_secs(10)),
            "redis-server restart"
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A SIGSTOPped server must be continued to die promptly.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// Adds to `pipe` a stream of `entries` entries and a consumer group reading it from the start.
pub fn stream_with_group(pipe: &mut redis::Pipeline, stream: &str, group: &str, entries: usize) {
    for n in 0..entries {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("n")
            .arg(n)
            .ignore();
    }
    pipe.cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .ignore();
}

/// A Redis Cluster of 3 masters and 3 replicas made with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6).map(|_| RedisServer::cluster_node()).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        wait_for(
            "cluster state ok on every node",
            Duration::from_secs(30),
            || async {
                cluster
                    .nodes
                    .iter()
                    .all(|n| {
                        n.info_field_cluster("cluster_state") == "ok"
                            && n.info_field_cluster("cluster_known_nodes") == "6"
                    })
                    .then_some(())
            },
        )
        .await;
        cluster
    }

    /// Makes node `replica` take over with `CLUSTER FAILOVER` and returns once it reports
    /// itself master. Redis gives a manual failover 5 s to complete and drops it silently after
    /// that, which a busy 2-core machine can exceed (CI runs timed out waiting for it), so the
    /// request is sent again every 6 s until `limit`.
    pub async fn fail_over_to(&self, replica: usize, limit: Duration) {
        let node = &self.nodes[replica];
        let mut asked: Option<Instant> = None;
        wait_for("the replica to take over", limit, || {
            if asked.is_none_or(|at| at.elapsed() > Duration::from_secs(6)) {
                // An error is fine: the node may have been promoted since the last check.
                let _: redis::RedisResult<()> = node
                    .client()
                    .get_connection()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("FAILOVER").query(&mut c));
                asked = Some(Instant::now());
            }
            let promoted = node.info_field("replication", "role") == "master";
            async move { promoted.then_some(()) }
        })
        .await
    }

    /// (node index, is master) for every node, from each node's own INFO.
    pub fn roles(&self) -> Vec<(usize, bool)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.info_field("replication", "role") == "master"))
            .collect()
    }

    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }
}

impl RedisServer {
    /// `ACL SETUSER <rules…>` (the user's name first), which must answer OK.
    pub fn acl_setuser(&self, rules: &[&str]) {
        let mut args = vec!["ACL", "SETUSER"];
        args.extend_from_slice(rules);
        let set: String = self.cmd(&args);
        assert_eq!(set, "OK", "ACL SETUSER {rules:?}");
    }

    /// The ids of the connections named redis-lookout on this server.
    pub fn lookout_connections(&self) -> Vec<String> {
        let list: String = self.cmd(&["CLIENT", "LIST"]);
        list.lines()
            .filter(|l| l.contains("name=redis-lookout "))
            .filter_map(|l| l.split(' ').next().map(str::to_owned))
            .collect()
    }

    /// A field of `CLUSTER INFO`.
    pub fn info_field_cluster(&self, field: &str) -> String {
        let Ok(mut conn) = self.client().get_connection() else {
            return String::new();
        };
        let text: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut conn)
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    }

    /// The port of this node's master (for a replica).
    pub fn master_port(&self) -> Option<u16> {
        self.info_field("replication", "master_port").parse().ok()
    }
}

/// The daemon running in-process on an ephemeral port.
pub struct Daemon {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    pub async fn start(yaml: &str) -> Daemon {
        let config = Config::from_yaml(Path::new("test.yaml"), yaml).expect("test config");
        Daemon::start_config(config).await
    }

    pub async fn start_config(config: Config) -> Daemon {
        Daemon::start_with(config, None).await
    }

    /// A daemon that reloads `file` on `POST /-/reload` (no SIGHUP: the tests share a process).
    pub async fn start_reloadable(file: &Path) -> Daemon {
        let overrides = Overrides {
            config_file: Some(file.to_owned()),
            ..Default::default()
        };
        let config = Config::load(&overrides).expect("test config");
        let reload = redis_lookout::daemon::Reload {
            loader: std::sync::Arc::new(move || Config::load(&overrides)),
            hangups: None,
        };
        Daemon::start_with(config, Some(reload)).await
    }

    async fn start_with(config: Config, reload: Option<redis_lookout::daemon::Reload>) -> Daemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            redis_lookout::daemon::run_with(config, reload, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("daemon run");
        });
        Daemon {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The addresses `/discovery` lists (each group's targets).
    pub async fn discovered(&self) -> std::collections::BTreeSet<String> {
        let (status, body) = http_get(self.addr, "/discovery").await;
        assert_eq!(status, 200);
        let groups: serde_json::Value = serde_json::from_str(&body).expect("discovery JSON");
        groups
            .as_array()
            .expect("a list of groups")
            .iter()
            .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    }

    pub async fn metrics(&self) -> Exposition {
        Exposition::parse(&self.body().await)
    }

    /// The text of `/metrics`, which must answer 200.
    pub async fn body(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics").await;
        assert_eq!(status, 200, "/metrics status");
        body
    }

    /// Scrapes until `ready` holds for the exposition, within `limit`; returns that exposition.
    pub async fn metrics_when(
        &self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&Exposition) -> bool,
    ) -> Exposition {
        let body = self
            .body_when(what, limit, |b| ready(&Exposition::parse(b)))
            .await;
        Exposition::parse(&body)
    }

    /// Scrapes until the raw text of `/metrics` satisfies `ready`, within `limit`; returns it
    /// (for a check of the very text, such as promtool's, on an exposition known to hold it).
    pub async fn body_when(
        &self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let ready = &ready;
        wait_for(what, limit, || async move {
            let body = self.body().await;
            ready(&body).then_some(body)
        })
        .await
    }

    /// The in-process alerts, pending and firing, each as `/alerts` shows it (labels, state, …).
    pub async fn alerts_json(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.addr, "/alerts").await;
        assert_eq!(status, 200, "{body}");
        let alerts: serde_json::Value = serde_json::from_str(&body).expect("/alerts JSON");
        match alerts {
            serde_json::Value::Array(alerts) => alerts,
            other => panic!("/alerts is not a list: {other}"),
        }
    }

    /// The in-process alerts as `/alerts` shows them: (alertname, state), pending and firing.
    pub async fn alerts(&self) -> Vec<(String, String)> {
        self.alerts_json()
            .await
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// The in-process alerts named `alert` that are firing, as `/alerts` shows them (labels,
    /// annotations, value).
    pub async fn firing_alerts(&self, alert: &str) -> Vec<serde_json::Value> {
        self.alerts_json()
            .await
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")
            .collect()
    }

    /// Whether the in-process evaluator has `alert` firing.
    pub async fn alert_firing(&self, alert: &str) -> bool {
        !self.firing_alerts(alert).await.is_empty()
    }

    /// Waits until `target` reports `redis_up 1`.
    pub async fn wait_up(&self, target: &str) -> Exposition {
        self.metrics_when(&format!("{target} up"), Duration::from_secs(20), |m| {
            m.value("redis_up", &[("target", target)]) == Some(1.0)
        })
        .await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("daemon task ended cleanly");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Default overrides for a single test target (no file).
pub fn overrides_for(url: &str) -> Overrides {
    Overrides {
        redis_addr: Some(url.to_owned()),
        ..Default::default()
    }
}

/// GET over a fresh connection; returns (status, body). Bounded by a 10 s deadline.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let r = http_exchange(addr, method, path, &[]).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// A response as it came: status, headers (names lowercased), body bytes undecoded.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, gunzipped when `Content-Encoding: gzip` says so. The decoder reads
    /// exactly one gzip member and the test fails if anything follows it.
    pub fn text(&self) -> String {
        let raw = if self.header("content-encoding") == Some("gzip") {
            redis_lookout::encoding::gunzip(&self.body).expect("exactly one valid gzip member")
        } else {
            self.body.clone()
        };
        String::from_utf8(raw).expect("UTF-8 exposition")
    }
}

/// One request over a fresh HTTP/1.0 connection (so no server answers with chunked encoding)
/// with extra request headers; bounded by a 10 s deadline.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to daemon");
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: test\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let body = raw.get(split + 4..).unwrap_or_default().to_vec();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        RawResponse {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("HTTP request timed out")
}

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed text exposition: types by family, and sample lines.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub type_lines: usize,
    pub lines: Vec<Line>,
}

impl Exposition {
    /// The `node` labels of the `redis_up` series that read 1.
    pub fn nodes_up(&self) -> std::collections::BTreeSet<String> {
        self.all("redis_up")
            .iter()
            .filter(|l| l.value == 1.0)
            .filter_map(|l| l.labels.get("node").cloned())
            .collect()
    }

    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for raw in text.lines() {
            if let Some(rest) = raw.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(n), Some(t)) = (parts.next(), parts.next()) {
                    e.types.insert(n.to_owned(), t.to_owned());
                    e.type_lines += 1;
                }
                continue;
            }
            if raw.starts_with('#') || raw.trim().is_empty() {
                continue;
            }
            e.lines.push(parse_line(raw));
        }
        e
    }

    /// Panics unless the exposition is one the format allows: one `# TYPE` per family, each
    /// family's samples together (a histogram's or summary's `_bucket`, `_sum` and `_count`
    /// with it, as [`Exposition::family_of`] reads them), and no series twice.
    pub fn assert_well_formed(&self) {
        assert_eq!(self.type_lines, self.types.len(), "one # TYPE per family");
        let mut done = std::collections::HashSet::new();
        let mut series = std::collections::HashSet::new();
        let mut current = String::new();
        for line in &self.lines {
            let f = self.family_of(&line.name);
            if f != current {
                assert!(
                    done.insert(f.clone()),
                    "{f}: its samples are split (again after {current})"
                );
                current = f;
            }
            assert!(
                series.insert((line.name.clone(), line.labels.clone())),
                "{} {:?} twice",
                line.name,
                line.labels
            );
        }
    }

    /// The value of the first sample of `name` whose labels include all of `want`.
    pub fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| {
                l.name == name
                    && want
                        .iter()
                        .all(|(k, v)| l.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|l| l.value)
    }

    /// `redis_lookout_polls_total` of a target (0 before its first poll).
    pub fn polls(&self, target: &str) -> f64 {
        self.value("redis_lookout_polls_total", &[("target", target)])
            .unwrap_or(0.0)
    }

    /// `redis_lookout_poll_errors_total` of a target, of one `kind` or of all (0 if none).
    pub fn poll_errors(&self, target: &str, kind: Option<&str>) -> f64 {
        let mut want = vec![("target", target)];
        want.extend(kind.map(|k| ("kind", k)));
        self.sum("redis_lookout_poll_errors_total", &want)
    }

    /// `redis_lookout_connections_opened_total` of a target.
    pub fn connections_opened(&self, target: &str) -> Option<f64> {
        self.value(
            "redis_lookout_connections_opened_total",
            &[("target", target)],
        )
    }

    /// Sum of a family's samples whose labels include all of `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.all_with(name, want).iter().map(|l| l.value).sum()
    }

    /// A family's samples whose labels include all of `want`.
    pub fn all_with(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Line> {
        self.lines
            .iter()
            .filter(|l| {
                l.name == name
                    && want
                        .iter()
                        .all(|(k, v)| l.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    pub fn all(&self, name: &str) -> Vec<&Line> {
        self.lines.iter().filter(|l| l.name == name).collect()
    }

    /// Asserts `redis_lookout_collector_success` is 1 for each of `collectors`.
    pub fn assert_collectors_succeeded(&self, collectors: &[&str], why: &str) {
        for collector in collectors {
            assert_eq!(
                self.value(
                    "redis_lookout_collector_success",
                    &[("collector", collector)]
                ),
                Some(1.0),
                "{collector}: {why}"
            );
        }
    }

    /// The family a sample line belongs to (strips histogram/summary suffixes when typed so).
    pub fn family_of(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if matches!(
                    self.types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                ) {
                    return base.to_owned();
                }
            }
        }
        sample.to_owned()
    }

    /// Family → (type, label names without target/node/le/quantile).
    pub fn shapes(&self) -> BTreeMap<String, (String, Vec<String>)> {
        let mut out: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for line in &self.lines {
            let family = self.family_of(&line.name);
            let kind = self
                .types
                .get(&family)
                .cloned()
                .unwrap_or_else(|| "untyped".into());
            let entry = out.entry(family).or_insert_with(|| (kind, Vec::new()));
            for k in line.labels.keys() {
                if !["target", "node", "le", "quantile"].contains(&k.as_str())
                    && !entry.1.contains(k)
                {
                    entry.1.push(k.clone());
                }
            }
        }
        for (_, labels) in out.values_mut() {
            labels.sort();
        }
        out
    }
}

fn parse_line(raw: &str) -> Line {
    let (head, value) = raw.rsplit_once(' ').expect("sample line has a value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or(f64::NAN),
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_owned(), BTreeMap::new()),
        Some((name, rest)) => (name.to_owned(), parse_labels(rest.trim_end_matches('}'))),
    };
    Line {
        name,
        labels,
        value,
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label value opens with a quote");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// The built binary running as a child process, killed on drop (even when a test panics).
pub struct Running {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    pub fn start(args: &[&str]) -> Running {
        Self::start_in(tempfile::tempdir().unwrap(), args)
    }

    /// Started with `yaml` as its config file (kept in the process' own temp dir) and `extra`.
    pub fn with_config(yaml: &str, extra: &[&str]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, yaml).unwrap();
        let args: Vec<&str> = ["--config", file.to_str().unwrap()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Self::start_in(dir, &args)
    }

    fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Running {
        let log = dir.path().join("stderr.log");
        let port = free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(binary())
            .args([
                "--web.listen-address",
                &addr.to_string(),
                "--log-format",
                "json",
            ])
            .args(args)
            .env_remove("REDIS_ADDR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Running {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub async fn metrics(&self) -> Option<Exposition> {
        let ok = tokio::net::TcpStream::connect(self.addr).await.is_ok();
        if !ok {
            return None;
        }
        let (status, body) = http_get(self.addr, "/metrics").await;
        (status == 200).then(|| Exposition::parse(&body))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The built binary, for tests of the process itself (exit codes, signals, logs).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_redis-lookout"))
}

/// Runs `promtool check metrics` on `text`; returns (exit ok, every complaint line).
pub fn promtool_check_metrics(text: &str) -> Option<(bool, Vec<String>)> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.extend(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_owned),
    );
    Some((out.status.success(), lines))
}

/// Whether a tool the tests drive (redis_exporter, systemd-analyze) is installed.
pub fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// A server of the Prometheus family (Prometheus, Alertmanager) on a free loopback port, its
/// files and log in a temp dir; killed on drop.
pub struct LoopbackServer {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl LoopbackServer {
    /// Runs `program` with `args` plus `--web.listen-address=<free port>` (stderr to
    /// `<dir>/server.log`) and waits until `GET /-/ready` answers 200.
    pub async fn start(program: &str, args: &[String], dir: tempfile::TempDir) -> LoopbackServer {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let child = Command::new(program)
            .args(args)
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup installs it)"));
        let server = LoopbackServer { child, addr, dir };
        wait_for(
            &format!("{program} ready"),
            Duration::from_secs(30),
            || async move {
                tokio::net::TcpStream::connect(addr).await.ok()?;
                (http_get(addr, "/-/ready").await.0 == 200).then_some(())
            },
        )
        .await;
        server
    }

    /// The last lines of the server's log (for a failing test's message).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file of this repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Asserts that `promtool check config` accepts a Prometheus config file.
pub fn assert_promtool_accepts_config(path: &Path) {
    assert_checker_accepts("promtool", &["check", "config"], path);
}

/// Asserts that `program args… path` (a config checker: promtool, amtool) exits 0.
pub fn assert_checker_accepts(program: &str, args: &[&str], path: &Path) {
    let out = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (apt-get install prometheus prometheus-alertmanager)")
        });
    assert!(
        out.status.success(),
        "{}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test PKI made with the `openssl` command in a temp dir: `ca.crt`/`ca.key`, a server
/// certificate for `localhost` and `127.0.0.1` signed by it (`server.crt`/`server.key`), a
/// client certificate (`client.crt`/`client.key`), and an unrelated CA (`other-ca.crt`).
/// P-256 keys: quick to make.
pub struct Pki {
    pub dir: tempfile::TempDir,
    paths: BTreeMap<&'static str, String>,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subject) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=redis-lookout test {ca}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&[
                "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subject,
            ]);
            args.extend_from_slice(&["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend_from_slice(&["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            run(&args);
        }
        Pki::issue(
            &dir,
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            &run,
        );
        Pki::issue(&dir, "client", "extendedKeyUsage=clientAuth\n", &run);
        // A server certificate for a name only (no IP): a node must be checked for the host
        // name it announces, not the address it is reached at.
        Pki::issue(
            &dir,
            "named",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
            &run,
        );
        // A second server certificate, for certificate rotation.
        Pki::issue(
            &dir,
            "server2",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            &run,
        );
        let mut paths = BTreeMap::new();
        for name in [
            "named.crt",
            "named.key",
            "server2.crt",
            "server2.key",
            "ca.crt",
            "ca.key",
            "other-ca.crt",
            "server.crt",
            "server.key",
            "client.crt",
            "client.key",
        ] {
            paths.insert(name, dir.path().join(name).display().to_string());
        }
        Pki { dir, paths }
    }

    /// Issues `<name>.crt`/`<name>.key` from the test CA with these extensions.
    fn issue(dir: &tempfile::TempDir, name: &str, extensions: &str, run: &dyn Fn(&[&str])) {
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.path().join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
        )
        .expect("extensions file");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subject = format!("/CN={name}");
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    /// `redis-server` arguments for TLS with the test server certificate and CA.
    pub fn server_args(&self, auth_clients: bool) -> Vec<&str> {
        self.server_args_with("server", auth_clients)
    }

    /// As [`Pki::server_args`], with the certificate `<cert>.crt` and its key.
    pub fn server_args_with(&self, cert: &str, auth_clients: bool) -> Vec<&str> {
        vec![
            "--tls-cert-file",
            self.path(&format!("{cert}.crt")),
            "--tls-key-file",
            self.path(&format!("{cert}.key")),
            "--tls-ca-cert-file",
            self.path("ca.crt"),
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
        ]
    }

    /// `redis-cli` arguments for TLS with the test CA and client certificate.
    pub fn cli_args(&self) -> [&str; 7] {
        [
            "--tls",
            "--cacert",
            self.path("ca.crt"),
            "--cert",
            self.path("client.crt"),
            "--key",
            self.path("client.key"),
        ]
    }

    /// The path of one of the files, as a string for configs and command lines.
    pub fn path(&self, name: &str) -> &str {
        self.paths
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} in the test PKI"))
    }
}

/// An HTTPS request over a fresh connection that trusts only `ca_file`, optionally with basic
/// auth. Returns (status, `WWW-Authenticate` header, body, the server's certificate as DER), or
/// the error of the connection or handshake. Bounded by a 10 s deadline.
pub async fn https_request(
    addr: SocketAddr,
    ca_file: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> std::io::Result<(u16, String, String, Vec<u8>)> {
    https_request_as(addr, ca_file, path, auth, None).await
}

/// [`https_request`], showing the client certificate and key (PEM files) `client` names.
pub async fn https_request_as(
    addr: SocketAddr,
    ca_file: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    client: Option<(&str, &str)>,
) -> std::io::Result<(u16, String, String, Vec<u8>)> {
    use base64::Engine as _;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA usable");
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                .expect("client certificate file")
                .map(|c| c.expect("client certificate PEM"))
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate and key")
        }
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let authorization = auth
            .map(|(u, p)| {
                let raw = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                format!("Authorization: Basic {raw}\r\n")
            })
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{authorization}\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        // A server may end TLS without close_notify after the body; what was read is the answer.
        if let Err(e) = tls.read_to_end(&mut raw).await {
            if raw.is_empty() {
                return Err(e);
            }
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let challenge = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        Ok((status, challenge, body.to_owned(), peer))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("HTTPS request timed out")))
}

/// The DER bytes of the first certificate in a PEM file.
pub fn cert_der(pem_file: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::from_pem_file(pem_file)
        .expect("certificate PEM")
        .as_ref()
        .to_vec()
}

/// Redis alone on the last CPU and this test process (the daemon, the control, the test) on
/// the others, for as long as the guard lives: Redis on a core of its own, as in production,
/// so that SLOWLOG shows what Redis' commands cost rather than how often the test's own
/// threads preempt it (measured by scripts/bench-keyspace: Redis' main thread waited 55–77 ms
/// per 3 s for a CPU when sharing two, 3.5 ms when pinned). None, and nothing changed, with
/// fewer than two CPUs or without `taskset`.
pub struct PinnedApart {
    all: String,
}

impl PinnedApart {
    pub fn new(redis: &RedisServer) -> Option<PinnedApart> {
        let cpus = std::thread::available_parallelism().ok()?.get();
        if cpus < 2 {
            return None;
        }
        let all = format!("0-{}", cpus - 1);
        let ours = format!("0-{}", cpus - 2);
        let redis_cpu = (cpus - 1).to_string();
        let me = std::process::id().to_string();
        let taskset = |args: &[&str]| {
            Command::new("taskset")
                .args(args)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !taskset(&["-a", "-p", "-c", &ours, &me]) {
            return None;
        }
        let guard = PinnedApart { all };
        taskset(&["-a", "-p", "-c", &redis_cpu, &redis.pid().to_string()]).then_some(guard)
    }
}

impl Drop for PinnedApart {
    fn drop(&mut self) {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", &self.all, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus.

/// `/usr/bin/prometheus` on a free loopback port with its TSDB in a temp dir; killed on drop.
pub struct Prometheus {
    pub server: LoopbackServer,
}

impl Prometheus {
    pub async fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        assert_promtool_accepts_config(&file);
        let args = [
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
        ];
        Prometheus {
            server: LoopbackServer::start("prometheus", &args, dir).await,
        }
    }

    pub async fn api(&self, path: &str) -> Result<serde_json::Value, String> {
        let (status, body) = http_get(self.server.addr, path).await;
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if json["status"] == "success" {
            Ok(json["data"].clone())
        } else {
            Err(format!(
                "{}: {}",
                json["errorType"].as_str().unwrap_or_default(),
                json["error"].as_str().unwrap_or_default()
            ))
        }
    }

    /// An instant query: the series it returns (a scalar counts as one), or the error.
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let encoded: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let data = self.api(&format!("/api/v1/query?query={encoded}")).await?;
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                Ok(data["result"].as_array().cloned().unwrap_or_default())
            }
            _ => Ok(vec![data["result"].clone()]),
        }
    }

    /// Like `query`, but an empty result is asked again for a few seconds: a poll that timed out
    /// on a busy machine leaves a node's series stale for one scrape, not a broken query.
    pub async fn query_expecting_series(
        &self,
        expr: &str,
    ) -> Result<Vec<serde_json::Value>, String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let result = self.query(expr).await;
            let empty = result.as_ref().is_ok_and(|s| s.is_empty());
            if !empty || std::time::Instant::now() > deadline {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn has_series(&self, expr: &str) -> bool {
        self.query_expecting_series(expr)
            .await
            .is_ok_and(|r| !r.is_empty())
    }

    /// Values of a label on the series of `selector`, as Grafana's `label_values()` asks.
    pub async fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let encoded: String = url::form_urlencoded::byte_serialize(selector.as_bytes()).collect();
        let data = self
            .api(&format!("/api/v1/label/{label}/values?match[]={encoded}"))
            .await
            .expect("label values");
        data.as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}
