#!/usr/bin/env python3
"""Benchmark: redis-lookout vs redis_exporter against one throwaway Redis.

Run through the wrapper scripts/bench (it resolves the real python3 behind shims such as
pyenv's, so that a signal sent to it reaches this process and the teardown runs):
    scripts/bench [--keys N] [--scrapes N] [--quick] [--poll-window SECONDS]
                  [--lookout-bin PATH] [--exporter-bin PATH]

Defaults: 1,000,000 keys, 1000 scrapes, 60 s poll window.  --quick: 100,000 keys, 300 scrapes,
30 s poll window.  Python 3 standard library only; needs redis-server and redis-cli on PATH;
redis_exporter (Debian: prometheus-redis-exporter) is optional.  Everything listens on
127.0.0.1, on free ports picked at start; every process started here is stopped on exit
(normal exit, exception, SIGINT, SIGTERM, SIGHUP) and the temp dir is removed.

What it does
------------
1. Starts `redis-server --save '' --appendonly no` in its own temp dir and loads N keys with
   `redis-cli --pipe` fed by generated RESP.  Key mix (by i % 10): 5/10 strings `user:<i>`,
   2/10 strings with a 1-day TTL `session:<i>`, 1/10 hashes `cache:<i>`, 1/10 lists
   `queue:<i>`, 1/10 sets `tag:<i>`.  DBSIZE must equal N afterwards.
2. redis-lookout phase (`--poll-interval 1s --log-level warn`), then the redis_exporter phase
   (default flags).  Never both at once: lookout is stopped, and CLIENT LIST checked for
   leftovers, before redis_exporter starts, so Redis counters in a window belong to one
   exporter.
3. /metrics latency: after 5 warm-up requests, S sequential GET /metrics on one persistent
   HTTP/1.1 keep-alive connection (http.client), each timed with time.perf_counter from
   request() to the end of read().  Percentiles are nearest-rank (p-th = sorted[ceil(p*S)-1]).
   Every response must be 200 with `redis_up ... 1`; HTTP reconnections are counted.
   Response size = body bytes of the last scrape (uncompressed: http.client sends
   Accept-Encoding: identity).

How Redis cost is measured (and how the bench's own commands are excluded)
---------------------------------------------------------------------------
The bench reads Redis counters over ONE persistent RESP connection of its own (a tiny client
in this file, not redis-cli: each redis-cli run would be a new connection and would add to
total_connections_received).  A counter snapshot is a single `INFO stats commandstats clients`.

* Commandstats `usec` is only recorded after a command finishes, so a snapshot never contains
  its own INFO; the delta between snapshots A and B therefore contains exactly ONE INFO of
  ours (A's).  Its cost is calibrated right before A: several back-to-back snapshots, keeping
  only pairs whose delta is exactly one call in total, that call being `info` (i.e. nobody
  else ran anything in between); the median `usec` of those pairs is our INFO cost.  The
  window's figures are then: total usec - own cost, total calls - 1, and `info` row likewise.
* Our connection is opened before any window, so total_connections_received deltas contain
  no connection of ours.
* redis_exporter: A, then S back-to-back scrapes, then B.  Redis usec per scrape = window
  usec / S; new connections per scrape = total_connections_received delta / S.
  Back-to-back commands run with hot CPU caches and cost Redis several times less than the
  same commands arriving after a second of idleness (on this machine an INFO ALL took ~20 us
  back-to-back and ~120-140 us when 1 s apart), while lookout's polls always arrive 1 s
  apart.  So redis_exporter is also scraped W times 1 s apart (its own A/B pair), giving a
  like-for-like Redis cost per scrape; the table shows the lookout target against both.
* redis-lookout: it touches Redis only from its poller, never on a scrape.  Poll window:
  nothing scrapes except two reads of lookout's own /metrics (served from memory).  A, wait
  W seconds, B.  The poll count is taken from Redis itself: the `latency|latest` call delta
  (lookout sends exactly one LATENCY LATEST per poll and nobody else sends any), and is
  cross-checked against the delta of lookout's `redis_lookout_polls_total`.  Redis usec per
  poll = window usec / polls; this average includes the CONFIG GET refresh lookout does every
  60 s (amortized); the figure without CONFIG GET is shown too.  New connections per poll =
  total_connections_received delta / polls (steady state: the first connect is before A).
* Caveat: commandstats `usec` is command execution time only; accepting/closing a TCP
  connection, reading and writing sockets are not in it.  That under-counts redis_exporter
  (one new connection per scrape) more than redis-lookout.

Process figures: RSS is VmRSS from /proc/PID/status right after the back-to-back scrapes.
CPU is utime+stime from /proc/PID/stat (1/CLK_TCK resolution, normally 10 ms) over the
back-to-back window divided by scrapes, and the same from the kernel's per-process CPU clock
(clock_gettime on MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), ns resolution, all threads).
For redis-lookout this includes its background polls during that window (1 s interval); a
separate row gives its CPU per poll from the poll window.

Exit status: 0 when every figure was measured (PASS/MISS does not change it); 1 when
something could not be measured (a process failed to start, a scrape failed, ...).
"""

import argparse
import atexit
import http.client
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_LOOKOUT = os.path.join(REPO, "target", "release", "redis-lookout")
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROCS = []  # (name, Popen) started by this script
TMPDIR = None


class BenchError(Exception):
    """Something could not be measured."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- teardown

def stop_proc(name, p, grace=5.0):
    if p.poll() is not None:
        return
    try:
        p.terminate()
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {p.pid}) ignored SIGTERM for {grace}s; killing")
        p.kill()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def cleanup():
    global TMPDIR
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    while PROCS:
        name, p = PROCS.pop()
        stop_proc(name, p)
    if TMPDIR and os.path.isdir(TMPDIR):
        shutil.rmtree(TMPDIR, ignore_errors=True)
        TMPDIR = None


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def start(name, argv, logname):
    out = open(os.path.join(TMPDIR, logname), "wb")
    try:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise BenchError(f"cannot start {name}: {e}")
    finally:
        out.close()
    PROCS.append((name, p))
    return p


def read_log(logname, limit=None):
    path = os.path.join(TMPDIR, logname)
    try:
        with open(path, "r", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text if limit is None else text[-limit:]


# ---------------------------------------------------------------- helpers

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is state (field 3); utime is field 14, stime field 15
    return int(fields[11]) + int(fields[12])


def proc_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cmd_output(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"


def exporter_version(path):
    if not path:
        return "not installed"
    out = cmd_output([path, "-version"])
    m = re.search(r'msg="([^"]*)"', out)
    text = m.group(1) if m else (out.splitlines() or ["?"])[0]
    return " ".join(text.split()) + f" ({path})"


def pct(sorted_vals, p):
    n = len(sorted_vals)
    return sorted_vals[max(0, math.ceil(p * n) - 1)]


# ---------------------------------------------------------------- minimal RESP client

class Resp:
    def __init__(self, port, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.rf = self.sock.makefile("rb")

    def close(self):
        try:
            self.rf.close()
            self.sock.close()
        except OSError:
            pass

    def cmd(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def _read(self):
        line = self.rf.readline()
        if not line:
            raise BenchError("Redis closed the bench's connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise BenchError(f"Redis error: {rest.decode()}")
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rf.read(n + 2)
            return data[:-2].decode(errors="replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise BenchError(f"unexpected RESP reply {line!r}")


def parse_info(text):
    fields, cmds = {}, {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        k, v = line.split(":", 1)
        if k.startswith("cmdstat_"):
            d = {}
            for kv in v.split(","):
                a, b = kv.split("=", 1)
                d[a] = float(b) if "." in b else int(b)
            cmds[k[len("cmdstat_"):]] = d
        else:
            fields[k] = v
    return fields, cmds


class Snap:
    def __init__(self, r):
        self.fields, self.cmds = parse_info(r.cmd("INFO", "stats", "commandstats", "clients"))

    def total(self, key):
        return sum(c.get(key, 0) for c in self.cmds.values())


class Delta:
    """B - A, minus the bench's own INFO (exactly one, A's) costing own_usec."""

    def __init__(self, a, b, own_usec):
        self.per_cmd = {}
        for name, cb in b.cmds.items():
            ca = a.cmds.get(name, {})
            calls = cb["calls"] - ca.get("calls", 0)
            usec = cb["usec"] - ca.get("usec", 0)
            failed = cb.get("failed_calls", 0) - ca.get("failed_calls", 0)
            rejected = cb.get("rejected_calls", 0) - ca.get("rejected_calls", 0)
            if name == "info":
                calls -= 1
                usec -= own_usec
            if calls or usec or failed or rejected:
                self.per_cmd[name] = {"calls": calls, "usec": usec, "failed": failed,
                                      "rejected": rejected}
        self.calls = sum(c["calls"] for c in self.per_cmd.values())
        self.usec = sum(c["usec"] for c in self.per_cmd.values())
        self.failed = sum(c["failed"] for c in self.per_cmd.values())
        self.rejected = sum(c["rejected"] for c in self.per_cmd.values())
        self.conns = int(b.fields["total_connections_received"]) - int(
            a.fields["total_connections_received"])
        self.errors = int(b.fields.get("total_error_replies", 0)) - int(
            a.fields.get("total_error_replies", 0))

    def calls_of(self, name):
        return self.per_cmd.get(name, {}).get("calls", 0)

    def usec_of(self, name):
        return self.per_cmd.get(name, {}).get("usec", 0)


def calibrated_snapshot(r, want=5, tries=20):
    """Back-to-back snapshots; returns (last snapshot, own INFO usec, samples)."""
    prev = Snap(r)
    costs = []
    for _ in range(tries):
        cur = Snap(r)
        d_calls = cur.total("calls") - prev.total("calls")
        d_info = cur.cmds["info"]["calls"] - prev.cmds["info"]["calls"]
        if d_calls == 1 and d_info == 1:
            costs.append(cur.cmds["info"]["usec"] - prev.cmds["info"]["usec"])
        prev = cur
        if len(costs) >= want:
            break
    if not costs:
        raise BenchError("could not calibrate the bench's own INFO cost (Redis never idle)")
    return prev, statistics.median(costs), costs


def client_list(r):
    rows = []
    for line in r.cmd("CLIENT", "LIST").splitlines():
        d = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        rows.append(d)
    return rows


# ---------------------------------------------------------------- Redis setup

def start_redis(port):
    rdir = os.path.join(TMPDIR, "redis")
    os.makedirs(rdir)
    p = start("redis-server", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", rdir, "--daemonize", "no", "--logfile", "",
    ], "redis.log")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError(f"redis-server exited: {read_log('redis.log', 2000)}")
        try:
            r = Resp(port)
            if r.cmd("PING") == "PONG":
                return p, r
            r.close()
        except (OSError, BenchError):
            pass
        time.sleep(0.1)
    raise BenchError("redis-server did not answer PING within 20 s")


def load_keys(port, n, r):
    log(f"loading {n} keys with redis-cli --pipe")
    t0 = time.monotonic()
    outpath = os.path.join(TMPDIR, "pipe.log")
    with open(outpath, "wb") as outf:
        proc = subprocess.Popen(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--pipe"],
                                stdin=subprocess.PIPE, stdout=outf, stderr=subprocess.STDOUT)
    PROCS.append(("redis-cli --pipe", proc))

    def resp(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    try:
        chunk = []
        for i in range(n):
            k = i % 10
            s = b"%d" % i
            if k < 5:
                chunk.append(resp(b"SET", b"user:" + s, b"user-value-" + s))
            elif k < 7:
                chunk.append(resp(b"SET", b"session:" + s, b"token-" + s, b"EX", b"86400"))
            elif k == 7:
                chunk.append(resp(b"HSET", b"cache:" + s, b"f1", b"v1-" + s, b"f2", b"v2"))
            elif k == 8:
                chunk.append(resp(b"RPUSH", b"queue:" + s, b"a", b"b", b"c"))
            else:
                chunk.append(resp(b"SADD", b"tag:" + s, b"x", b"y"))
            if len(chunk) >= 20000:
                proc.stdin.write(b"".join(chunk))
                chunk = []
        if chunk:
            proc.stdin.write(b"".join(chunk))
        proc.stdin.close()
        proc.wait(timeout=max(120, n / 5000))
    except (BrokenPipeError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"redis-cli --pipe failed: {e}")
    text = read_log("pipe.log").strip()
    if proc.returncode != 0 or "errors: 0" not in text:
        raise BenchError(f"redis-cli --pipe failed (rc {proc.returncode}): {text[-500:]}")
    dbsize = r.cmd("DBSIZE")
    if dbsize != n:
        raise BenchError(f"DBSIZE is {dbsize}, expected {n}")
    log(f"loaded {dbsize} keys in {time.monotonic() - t0:.1f} s; used_memory_human="
        f"{parse_info(r.cmd('INFO', 'memory'))[0].get('used_memory_human')}")


# ---------------------------------------------------------------- HTTP

REDIS_UP = re.compile(r"^redis_up(\{[^}]*\})? 1(\.0)?$", re.M)


def http_get(port, path="/metrics", timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        resp = c.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        c.close()


def wait_http(name, proc, port, logname, ready=lambda body: True, limit=30.0):
    deadline = time.monotonic() + limit
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode}: {read_log(logname, 2000)}")
        try:
            status, body = http_get(port, timeout=5)
            if status == 200 and ready(body):
                return body
            last = f"HTTP {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(f"{name} not ready within {limit:.0f} s ({last}): {read_log(logname, 2000)}")


def metric_sum(body, name):
    total, found = 0.0, False
    for line in body.splitlines():
        if line.startswith(name) and (line[len(name):len(name) + 1] in ("{", " ")):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def scrape_series(port, n, warmup=5, before=None):
    """n sequential GET /metrics on one keep-alive connection; latencies in ms.

    `warmup` requests go first on the same connection; then before() runs (it takes the Redis
    and CPU baselines), then the n timed requests."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    lat, reconnects, sock, body = [], 0, None, ""
    try:
        for i in range(warmup + n):
            if i == warmup and before is not None:
                before()
            t0 = time.perf_counter()
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            data = resp.read()
            t1 = time.perf_counter()
            if resp.status != 200:
                raise BenchError(f"scrape {i} returned HTTP {resp.status}")
            if sock is not None and conn.sock is not sock:
                reconnects += 1
            sock = conn.sock
            if i >= warmup:
                lat.append((t1 - t0) * 1000.0)
            if i == warmup + n - 1:
                body = data.decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"scrape failed: {e!r}")
    finally:
        conn.close()
    if not REDIS_UP.search(body):
        raise BenchError("last scrape does not report redis_up 1")
    return lat, reconnects, body


def latency_summary(lat):
    s = sorted(lat)
    return {"p50": pct(s, 0.50), "p90": pct(s, 0.90), "p99": pct(s, 0.99), "max": s[-1],
            "mean": statistics.fmean(s)}


# ---------------------------------------------------------------- phases

def cpu_clock(pid):
    """Process-wide CPU time (all threads, exited ones included) in seconds, ns resolution:
    the kernel's per-process CPU clock, MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)."""
    return time.clock_gettime(((~pid) << 3) | 2)


class Cpu:
    def __init__(self, pid):
        self.pid = pid
        self.ticks = proc_cpu_ticks(pid)
        self.clock = cpu_clock(pid)

    def since(self, other):
        """(ms from utime+stime ticks, ms from the CPU clock)"""
        return ((self.ticks - other.ticks) * 1000.0 / CLK_TCK,
                (self.clock - other.clock) * 1000.0)


def scrape_window(name, proc, port, r, scrapes):
    log(f"{name}: {scrapes} back-to-back scrapes")
    base = {}

    def before():
        base["snap"], base["own"], _ = calibrated_snapshot(r)
        base["cpu"] = Cpu(proc.pid)
        base["t"] = time.monotonic()

    lat, reconnects, body = scrape_series(port, scrapes, before=before)
    wall = time.monotonic() - base["t"]
    cpu = Cpu(proc.pid).since(base["cpu"])
    b = Snap(r)
    rss = proc_rss_kb(proc.pid)
    d = Delta(base["snap"], b, base["own"])
    samples = sum(1 for l in body.splitlines() if l and not l.startswith("#"))
    return {"lat": latency_summary(lat), "reconnects": reconnects, "bytes": len(body.encode()),
            "samples": samples, "cpu_ticks_ms": cpu[0], "cpu_ms": cpu[1], "rss_kb": rss,
            "delta": d, "own_info_usec": base["own"], "wall": wall, "body": body}


def paced_window(name, port, r, count, interval=1.0):
    """count scrapes, one every `interval` s (the cadence of lookout's polls): Redis cost of a
    scrape that finds Redis idle, as lookout's polls do."""
    log(f"{name}: {count} scrapes paced {interval:g} s apart")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    a, own, _ = calibrated_snapshot(r)
    try:
        t0 = time.monotonic()
        for i in range(count):
            time.sleep(max(0.0, t0 + (i + 1) * interval - time.monotonic()))
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200 or not REDIS_UP.search(data.decode(errors="replace")):
                raise BenchError(f"paced scrape {i} failed: HTTP {resp.status}")
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"paced scrape failed: {e!r}")
    finally:
        conn.close()
    time.sleep(0.2)
    return {"delta": Delta(a, Snap(r), own), "own_info_usec": own, "count": count}


def lookout_phase(args, redis_port, r):
    port = free_port()
    argv = [args.lookout_bin, "--redis.addr", f"redis://127.0.0.1:{redis_port}",
            "--web.listen-address", f"127.0.0.1:{port}", "--poll-interval", "1s",
            "--log-level", "warn"]
    res = {"argv": argv}
    log("starting redis-lookout: " + shlex.join(argv))
    p = start("redis-lookout", argv, "lookout.log")
    wait_http("redis-lookout", p, port, "lookout.log",
              ready=lambda body: (metric_sum(body, "redis_lookout_polls_total") or 0) >= 2
              and REDIS_UP.search(body) is not None)

    # ---- poll window: nothing touches Redis but lookout's poller (and our single INFO)
    log(f"redis-lookout: poll window of {args.poll_window} s, no scraping")
    a, own, own_samples = calibrated_snapshot(r)
    m0 = http_get(port)[1]
    cpu0 = Cpu(p.pid)
    time.sleep(args.poll_window)
    cpu = Cpu(p.pid).since(cpu0)
    m1 = http_get(port)[1]
    b = Snap(r)
    d = Delta(a, b, own)
    polls_redis = d.calls_of("latency|latest")
    polls_self = metric_sum(m1, "redis_lookout_polls_total") - metric_sum(
        m0, "redis_lookout_polls_total")
    if polls_redis <= 0:
        raise BenchError("redis-lookout made no polls in the poll window (no LATENCY LATEST seen)")
    names = [c for c in client_list(r) if c.get("name") == "redis-lookout"]
    res.update({
        "own_info_usec": own, "own_info_samples": own_samples, "poll_delta": d,
        "polls_redis": polls_redis, "polls_self": polls_self,
        "poll_cpu_ticks_ms": cpu[0], "poll_cpu_ms": cpu[1],
        "conn_opened_delta": (metric_sum(m1, "redis_lookout_connections_opened_total") or 0)
        - (metric_sum(m0, "redis_lookout_connections_opened_total") or 0),
        "lookout_clients": len(names),
    })

    # ---- scrape window
    polls_before = metric_sum(http_get(port)[1], "redis_lookout_polls_total")
    res["scrape"] = scrape_window("redis-lookout", p, port, r, args.scrapes)
    body = res["scrape"]["body"]
    res["polls_during_scrapes"] = metric_sum(body, "redis_lookout_polls_total") - polls_before
    res["polls_total"] = metric_sum(body, "redis_lookout_polls_total")
    res["poll_errors_total"] = metric_sum(body, "redis_lookout_poll_errors_total") or 0
    res["connections_opened_total"] = metric_sum(body, "redis_lookout_connections_opened_total")
    cnt = metric_sum(body, "redis_lookout_poll_duration_seconds_count")
    tot = metric_sum(body, "redis_lookout_poll_duration_seconds_sum")
    res["poll_wall_mean_ms"] = tot / cnt * 1000.0 if cnt else None
    res["lookout_clients_after"] = sum(
        1 for c in client_list(r) if c.get("name") == "redis-lookout")
    stop_proc("redis-lookout", p)
    PROCS.remove(("redis-lookout", p))
    res["exit_code"] = p.returncode
    res["log"] = read_log("lookout.log")
    # its connection must be gone before redis_exporter's window starts
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [c for c in client_list(r) if c.get("name") == "redis-lookout"]
        if not left:
            break
        time.sleep(0.1)
    else:
        raise BenchError("redis-lookout's connection still open 10 s after it was stopped")
    return res


def exporter_phase(args, redis_port, r):
    port = free_port()
    argv = [args.exporter_bin, "-redis.addr", f"redis://127.0.0.1:{redis_port}",
            "-web.listen-address", f"127.0.0.1:{port}"]
    res = {"argv": argv}
    log("starting redis_exporter: " + shlex.join(argv))
    p = start("redis_exporter", argv, "exporter.log")
    wait_http("redis_exporter", p, port, "exporter.log",
              ready=lambda body: REDIS_UP.search(body) is not None)
    res["scrape"] = scrape_window("redis_exporter", p, port, r, args.scrapes)
    res["paced"] = paced_window("redis_exporter", port, r, args.poll_window)
    time.sleep(0.5)
    res["exporter_clients_after"] = sum(
        1 for c in client_list(r) if c.get("name") == "redis_exporter")
    res["connected_clients_after"] = int(
        parse_info(r.cmd("INFO", "clients"))[0]["connected_clients"])
    stop_proc("redis_exporter", p)
    PROCS.remove(("redis_exporter", p))
    res["log"] = read_log("exporter.log")
    return res


# ---------------------------------------------------------------- report

def verdict(ok):
    return "PASS" if ok else "MISS"


def f3(x):
    return f"{x:.3f}"


def print_report(args, machine, lk, ex):
    ls, es = lk["scrape"], (ex["scrape"] if ex else None)
    ep = ex["paced"] if ex else None
    n = args.scrapes
    pd = lk["poll_delta"]
    polls = lk["polls_redis"]
    lk_usec_poll = pd.usec / polls
    lk_usec_poll_nocfg = (pd.usec - pd.usec_of("config|get")) / polls
    ex_b2b = es["delta"].usec / n if es else None
    ex_paced = ep["delta"].usec / ep["count"] if ep else None
    na = "not run"

    def exv(fn):
        return fn() if es else na

    def ratio_target(ex_value):
        if ex_value is None:
            return "≤ 1/3 of redis_exporter's: not evaluated (redis_exporter not run)"
        return (f"≤ 1/3 of redis_exporter's ({ex_value / 3:.1f} µs); ratio "
                f"{lk_usec_poll / ex_value:.3f}: **{verdict(lk_usec_poll * 3 <= ex_value)}**")

    rows = []
    for key, target in (("p50", None), ("p90", None), ("p99", "< 1 ms"), ("max", None)):
        t = f"{target}: **{verdict(ls['lat'][key] < 1.0)}**" if target else ""
        rows.append((f"/metrics latency {key}, ms", f3(ls["lat"][key]),
                     exv(lambda k=key: f3(es["lat"][k])), t))
    rows.append(("/metrics latency mean, ms", f3(ls["lat"]["mean"]),
                 exv(lambda: f3(es["lat"]["mean"])), ""))
    rows.append(("/metrics response size, bytes / samples", f"{ls['bytes']} / {ls['samples']}",
                 exv(lambda: f"{es['bytes']} / {es['samples']}"), ""))
    rows.append(("Redis time per poll (lookout, 1 s apart) vs per scrape (exporter, "
                 "back-to-back), µs", f"{lk_usec_poll:.1f}", exv(lambda: f"{ex_b2b:.1f}"),
                 ratio_target(ex_b2b)))
    rows.append(("Redis time per poll (lookout) vs per scrape (exporter, 1 s apart like the "
                 "polls), µs", f"{lk_usec_poll:.1f}",
                 exv(lambda: f"{ex_paced:.1f} ({ep['count']} scrapes)"), ratio_target(ex_paced)))
    rows.append(("Redis time per poll, lookout, without the 60 s CONFIG GET refresh, µs",
                 f"{lk_usec_poll_nocfg:.1f}", "", ""))
    rows.append(("Redis commands per poll / per scrape", f"{pd.calls / polls:.2f}",
                 exv(lambda: f"{es['delta'].calls / n:.2f}"), ""))
    rows.append(("New Redis connections per poll / per scrape",
                 f"{pd.conns / polls:.3f} ({pd.conns} in {polls} polls)",
                 exv(lambda: f"{es['delta'].conns / n:.3f} ({es['delta'].conns} in {n} scrapes)"),
                 f"0 per poll: **{verdict(pd.conns == 0)}**"))
    rows.append(("Redis work during the back-to-back scrapes: commands in window, µs in "
                 "window", f"{ls['delta'].calls}, {ls['delta'].usec} µs",
                 exv(lambda: f"{es['delta'].calls}, {es['delta'].usec} µs"), ""))
    rss_ok = ls["rss_kb"] * 1024 < 10_000_000
    rows.append(("Exporter RSS (VmRSS) after the scrapes, MB (10^6 bytes)",
                 f"{ls['rss_kb'] * 1024 / 1e6:.2f} ({ls['rss_kb']} kB)",
                 exv(lambda: f"{es['rss_kb'] * 1024 / 1e6:.2f} ({es['rss_kb']} kB)"),
                 f"< 10 MB: **{verdict(rss_ok)}**"))
    rows.append(("Exporter CPU per scrape, ms (utime+stime ticks, 10 ms resolution)",
                 f"{ls['cpu_ticks_ms'] / n:.3f}", exv(lambda: f"{es['cpu_ticks_ms'] / n:.3f}"),
                 ""))
    rows.append(("Exporter CPU per scrape, ms (process CPU clock, ns resolution)",
                 f"{ls['cpu_ms'] / n:.3f}", exv(lambda: f"{es['cpu_ms'] / n:.3f}"), ""))
    rows.append(("Exporter CPU per poll, ms, poll window without scrapes (ticks / CPU clock)",
                 f"{lk['poll_cpu_ticks_ms'] / polls:.3f} / {lk['poll_cpu_ms'] / polls:.3f}",
                 "", ""))

    print("## redis-lookout vs redis_exporter\n")
    print("Command: `" + machine["command"] + "`\n")
    print("Machine:")
    for k in ("nproc", "cpu", "kernel", "redis-server", "redis-lookout", "redis_exporter",
              "python", "loadavg at start", "loadavg at end"):
        print(f"- {k}: {machine.get(k, '?')}")
    print()
    print(f"Setup: {args.keys} keys; {n} back-to-back keep-alive scrapes per exporter; "
          f"redis-lookout `--poll-interval 1s`, poll window {args.poll_window} s "
          f"({polls} polls counted by Redis, {lk['polls_self']:.0f} by "
          f"redis_lookout_polls_total)"
          + (f"; redis_exporter also scraped {ep['count']} times 1 s apart" if ep else "")
          + ".\n")
    print("| metric | redis-lookout | redis_exporter | target |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()

    print("Redis commands per poll (redis-lookout, poll window) and per scrape (redis_exporter, "
          "back-to-back and 1 s apart), from INFO commandstats deltas:\n")
    sets = [pd.per_cmd] + ([es["delta"].per_cmd, ep["delta"].per_cmd] if es else [])
    names = sorted(set().union(*sets))
    print("| command | lookout calls/poll | lookout µs/poll | exporter calls/scrape "
          "| exporter µs/scrape back-to-back | exporter µs/scrape 1 s apart |")
    print("|---|---|---|---|---|---|")
    for c in names:
        a = pd.per_cmd.get(c)
        b = es["delta"].per_cmd.get(c) if es else None
        q = ep["delta"].per_cmd.get(c) if ep else None
        cell = c.replace("|", "\\|")  # Markdown: a bare | would split the cell
        print(f"| {cell} | "
              + (f"{a['calls'] / polls:.3f} | {a['usec'] / polls:.2f}" if a else "– | –")
              + " | " + (f"{b['calls'] / n:.3f} | {b['usec'] / n:.2f}" if b else "– | –")
              + " | " + (f"{q['usec'] / ep['count']:.2f}" if q else "–") + " |")
    print()

    print("Notes:")
    print(f"- bench's own INFO, subtracted once per window: lookout poll window "
          f"{lk['own_info_usec']} µs (calibration samples {lk['own_info_samples']}), "
          f"lookout scrape window {ls['own_info_usec']} µs"
          + (f", redis_exporter windows {es['own_info_usec']} / {ep['own_info_usec']} µs"
             if es else "")
          + "; a small negative µs total means the window held nothing but that INFO and the "
          "estimate was a few µs high")
    print(f"- redis-lookout: {lk['polls_during_scrapes']:.0f} background poll(s) ran during its "
          f"{n} scrapes ({ls['wall']:.2f} s); its CPU per scrape includes them")
    print(f"- redis-lookout: connections_opened_total delta in poll window "
          f"{lk['conn_opened_delta']:.0f}, total at end {lk['connections_opened_total']:.0f}; "
          f"polls_total {lk['polls_total']:.0f}; poll_errors_total {lk['poll_errors_total']:.0f}; "
          f"CLIENT LIST connections named redis-lookout: {lk['lookout_clients']} (poll window), "
          f"{lk['lookout_clients_after']} (after scrapes); mean poll wall time "
          + (f"{lk['poll_wall_mean_ms']:.3f} ms" if lk["poll_wall_mean_ms"] is not None else "?")
          + f"; failed/rejected Redis calls in poll window {pd.failed}/{pd.rejected}; "
          f"CONFIG GET calls in poll window {pd.calls_of('config|get')}; "
          f"exit code on SIGTERM {lk['exit_code']}")
    print(f"- HTTP reconnections during scrapes: lookout {ls['reconnects']}"
          + (f", redis_exporter {es['reconnects']}" if es else ""))
    if es:
        print(f"- redis_exporter: failed/rejected Redis calls {es['delta'].failed}/"
              f"{es['delta'].rejected} in {n} scrapes; new connections 1 s apart "
              f"{ep['delta'].conns} in {ep['count']}; connections named redis_exporter "
              f"open 0.5 s after the last scrape: {ex['exporter_clients_after']}; "
              f"connected_clients then: {ex['connected_clients_after']}")
    for name, res in (("redis-lookout", lk), ("redis_exporter", ex)):
        if not res:
            continue
        lines = [l for l in res["log"].splitlines() if l.strip()]
        print(f"- {name} log: {len(lines)} line(s)"
              + ("" if not lines else "; first: `" + lines[0][:300].replace("`", "'") + "`"))
    print("- one run on a shared 2-core machine; other work may run at the same time, so "
          "every figure is noisy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int)
    ap.add_argument("--scrapes", type=int)
    ap.add_argument("--quick", action="store_true", help="100k keys, 300 scrapes, 30 s window")
    ap.add_argument("--poll-window", type=int, help="seconds of lookout polling measured")
    ap.add_argument("--lookout-bin", default=DEFAULT_LOOKOUT)
    ap.add_argument("--exporter-bin", default=shutil.which("prometheus-redis-exporter")
                    or shutil.which("redis_exporter"))
    args = ap.parse_args()
    if args.keys is None:
        args.keys = 100_000 if args.quick else 1_000_000
    if args.scrapes is None:
        args.scrapes = 300 if args.quick else 1000
    if args.poll_window is None:
        args.poll_window = 30 if args.quick else 60
    if args.keys < 0 or args.scrapes < 1 or args.poll_window < 3:
        ap.error("need --keys >= 0, --scrapes >= 1, --poll-window >= 3")

    global TMPDIR
    atexit.register(cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    try:
        for tool in ("redis-server", "redis-cli"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} not found on PATH")
        if not (os.path.isfile(args.lookout_bin) and os.access(args.lookout_bin, os.X_OK)):
            raise BenchError(f"redis-lookout binary not found: {args.lookout_bin}")
        cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        machine = {
            "command": shlex.join([os.environ.get("BENCH_ARGV0", sys.argv[0])] + sys.argv[1:]),
            "nproc": cmd_output(["nproc"]),
            "cpu": cpu,
            "kernel": platform.release(),
            "redis-server": cmd_output(["redis-server", "--version"]),
            "redis-lookout": cmd_output([args.lookout_bin, "--version"]) + f" ({args.lookout_bin})",
            "redis_exporter": exporter_version(args.exporter_bin),
            "python": platform.python_version(),
            "loadavg at start": open("/proc/loadavg").read().strip(),
        }
        TMPDIR = tempfile.mkdtemp(prefix="redis-lookout-bench.")
        redis_port = free_port()
        log(f"redis-server on 127.0.0.1:{redis_port}, temp dir {TMPDIR}")
        _, r = start_redis(redis_port)
        load_keys(redis_port, args.keys, r)

        lk = lookout_phase(args, redis_port, r)
        ex = None
        if args.exporter_bin:
            ex = exporter_phase(args, redis_port, r)
        else:
            log("redis_exporter not installed; its column stays empty")
        machine["loadavg at end"] = open("/proc/loadavg").read().strip()
        r.close()
        print_report(args, machine, lk, ex)
        return 0
    except BenchError as e:
        print(f"bench: could not measure: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
