#!/usr/bin/env python3
"""Benchmark of redis-lookout: one target against redis_exporter, or many targets alone.

Run through the wrapper scripts/bench (it resolves the real python3 behind shims such as
pyenv's, so that a signal sent to it reaches this process and the teardown runs):
    scripts/bench [--keys N] [--scrapes N] [--quick] [--poll-window SECONDS]
                  [--paced-scrapes N] [--lookout-bin PATH] [--exporter-bin PATH]
    scripts/bench --targets 1,100,1000 [--servers 4] [--keys N] [--scrapes N]
                  [--cycles N] [--quick] [--lookout-bin PATH]
    scripts/bench --sharded 1000 [--servers 4] [--keys N] [--cycles N] [--lookout-bin PATH]

Single-target mode (default): 1,000,000 keys, 1000 scrapes, two 120 s poll windows, 120
paced redis_exporter scrapes.  --quick: 100,000 keys, 300 scrapes, 60 s windows.
Multi-target mode (--targets): lookout only.  Defaults: 4 redis-servers of 1000 keys each,
1000 scrapes per size below 1000 targets and 500 from 1000 up, a 60 s (12 x 5 s) idle window.
--quick: 300 / 100 scrapes, 6 cycles.
Python 3 standard library only; needs redis-server, redis-cli and curl on PATH;
redis_exporter (Debian: prometheus-redis-exporter) is optional.  Everything listens on
127.0.0.1, on free ports picked at start; every loop and wait is bounded; every process started
here is stopped on exit (normal exit, exception, SIGINT, SIGTERM, SIGHUP) and the temp dir is
removed.  The lookout binary is copied into the temp dir first, so a rebuild during the run
cannot change what is measured; its sha256 is printed.

HTTP client (latency)
---------------------
/metrics is streamed with chunked transfer encoding by redis-lookout (hyper, 256 KiB frames)
and by redis_exporter (Go net/http).  http.client would decode the chunks in Python and time
the client, so every request here goes through RawHttp below: `GET /metrics HTTP/1.1` on one
keep-alive TCP connection (TCP_NODELAY, `Accept-Encoding: identity`), read with recv_into()
into one preallocated, reused buffer, chunk sizes parsed in place on bytes (no copy of the
data, no per-line reads); Content-Length and read-to-EOF bodies are handled too.  A request is
timed with time.perf_counter from before send() to the byte that ends the body (the `0\\r\\n\\r\\n`
of a chunked body).  The same client is used for both exporters.  Each run checks it against
curl: 4 alternating rounds of 10 scrapes by one curl process (connection reused,
`-w %{time_total}`) and 10 by RawHttp; both medians and each client's CPU per scrape are
printed.  (HTTP/1.0 would avoid chunking: hyper then sends the body unchunked and closes, but
every request would pay a new connection.)
Percentiles are nearest-rank (p-th = sorted[ceil(p*S)-1]) over S timed scrapes after 5
warm-up scrapes on the same connection.  Every response must be 200 and report `redis_up 1`.
gzip: the S back-to-back scrapes (both modes, both exporters) and, with --targets, the paced
series are repeated with `Accept-Encoding: gzip`, as Prometheus sends it; the clock stops at the
last byte on the wire, and the last body is decompressed afterwards (exactly one gzip member)
and checked.

Single target: Redis cost (how the bench's own commands are excluded)
----------------------------------------------------------------------
The bench reads Redis counters over ONE persistent RESP connection of its own (a tiny client
in this file; redis-cli would open a connection per call).  A snapshot is one
`INFO stats commandstats clients`.  Commandstats `usec` is recorded after a command finishes,
so the delta between snapshots A and B contains exactly one INFO of ours (A's); its cost is
calibrated right before A from back-to-back snapshots whose delta is that one call alone
(median), and subtracted.  total_net_input_bytes / total_net_output_bytes deltas are corrected
exactly for our own request (B's) and reply (A's).
* redis-lookout polls every 1 s (`--poll-interval 1s`) and, with the defaults, adds INFO
  commandstats+latencystats every 30 s and six CONFIG GET every 60 s.  Nothing scrapes it
  while Redis is measured (two reads of its /metrics, served from memory, bracket the window).
  Window 1 (W s, A ... B, nothing of ours in between): the amortized Redis time per poll,
  periodic extras included.  Poll count = `latency|latest` calls (one per poll, nobody else
  sends it), cross-checked with `redis_lookout_polls_total`.
  Window 2 (W s): one sample after every poll (three back-to-back snapshots 0.25 s after it;
  the delta from the previous third one to the first holds that poll plus the third's INFO,
  whose cost is taken as the median over the window of the second's, measured in place),
  giving each poll's usec per command and request/reply bytes.  A poll
  whose reply is > 1000 bytes larger than the median poll's is a commandstats refresh (its
  request is 38 bytes larger: the two section names), one with CONFIG GET calls a config
  refresh.  "Without periodic extras" = mean over plain polls.  Window 2 costs Redis three
  extra INFOs 0.75 s before each poll, so window 1 is the headline figure; the number of
  commandstats refreshes in window 1 is derived exactly from its request bytes, using the
  request sizes seen in window 2.
* redis_exporter queries Redis on each scrape: A, S back-to-back scrapes, B; then P scrapes
  1 s apart (its own A/B): back-to-back commands find Redis's caches hot and cost it much less
  than the same commands after a second of idleness, which is what lookout's polls get.
* Commandstats `usec` is command execution only (no accept/close, no socket I/O), which
  under-counts redis_exporter's new connection per scrape.
Process figures: VmRSS (and VmHWM, the peak) from /proc/PID/status; CPU from utime+stime
(/proc/PID/stat, 10 ms ticks) and from the kernel's per-process CPU clock (ns).

Multi-target mode
-----------------
redis_exporter holds one target per process, so this mode measures redis-lookout alone.
Starts --servers redis-servers (small keyspace), and for each size N writes a YAML config with
`poll_interval: 5s` and N targets `tI` spread round-robin over the servers, checks it with
--check-config, starts lookout, waits (bounded) until the exposition has `redis_up{...} 1` for
all N targets, then: an idle window of C poll intervals (no scrapes; CPU seconds per poll
cycle = CPU / C; polls counted by Redis as `latency|latest` calls), then S back-to-back scrapes
(latency, CPU per scrape, VmRSS after, VmHWM), a diagnostic series with the client setting
TCP_QUICKACK (isolates stalls from a server-side small write waiting for a delayed ACK), a
floor series (the last body served by a do-nothing sendfile(2) server to the same client, the
daemon still polling beside: the loopback transfer and the client alone), S back-to-back
scrapes sending `Accept-Encoding: gzip` as Prometheus does (latency to the last byte on the
wire, bytes on the wire, CPU per scrape; the last body is decompressed and checked), a paced
series (--paced scrapes, --paced-gap s apart: each scrape finds the process idle, as
Prometheus's do) plain and gzipped, the curl check, and stop (its connections must leave every server's CLIENT LIST).  Redis µs per poll: our one INFO per server per window is
calibrated and subtracted as in single-target mode.

Sharded mode (--sharded N)
--------------------------
The setup of docs/prometheus/sharded-discovery.yml, with this script as Prometheus: two
redis-lookout processes run one YAML file with `polling: on_scrape` and N targets `tI` (spread
over --servers redis-servers as above). Each process lists all N at /discovery and polls a
target only while /scrape asks for it. A target goes to the process that Prometheus' hashmod
(modulus 2) would pick for its name: the last 8 bytes of its MD5, as an integer, mod 2 (real
fleets hash distinct addresses; here 250 targets share each server's address, so the name
stands in for it). Each target is asked for by name (`/scrape?target=tI`) on one keep-alive
connection per process. First round: every target once, each woken from dormant (that
scrape waits for the target's first poll): latency of a first scrape. Then --cycles rounds,
one every poll interval (5 s), each scraping all N (back to back within the round): latency
of a steady scrape, each process's CPU per poll interval (polls and scrapes together), VmRSS
and VmHWM, and connections per server (CLIENT LIST name=redis-lookout: N in all, each target
polled by one process). Every answer must be 200 with `redis_up 1` for its target alone.

Exit status: 0 when every figure was measured (PASS/MISS does not change it); 1 when
something could not be measured (a process failed to start, a scrape failed, ...).
"""

import argparse
import atexit
import hashlib
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_LOOKOUT = os.path.join(REPO, "target", "release", "redis-lookout")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CS_REPLY_THRESHOLD = 1000  # bytes: a poll reply this much above the median one asked commandstats
MULTI_INTERVAL = 5.0       # poll_interval in multi-target mode

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


def stop_started(name, p):
    stop_proc(name, p)
    if (name, p) in PROCS:
        PROCS.remove((name, p))
    return p.returncode


def read_log(logname, limit=None):
    path = os.path.join(TMPDIR, logname)
    try:
        with open(path, "r", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text if limit is None else text[-limit:]


def log_summary(text):
    lines = [l for l in text.splitlines() if l.strip()]
    return f"{len(lines)} line(s)" + (
        "" if not lines else "; first: `" + lines[0][:300].replace("`", "'") + "`")


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


def proc_status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def proc_rss_kb(pid):
    return proc_status_kb(pid, "VmRSS")


def mb(kb):
    return f"{kb * 1024 / 1e6:.2f}"


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


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pct(sorted_vals, p):
    n = len(sorted_vals)
    return sorted_vals[max(0, math.ceil(p * n) - 1)]


def f3(x):
    return f"{x:.3f}"


def verdict(ok):
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------- minimal RESP client

class Resp:
    def __init__(self, port, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.rf = self.sock.makefile("rb")
        self.last_request_bytes = 0
        self.last_reply_bytes = 0
        self._nread = 0

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
        req = b"".join(parts)
        self.sock.sendall(req)
        self.last_request_bytes = len(req)
        self._nread = 0
        value = self._read()
        self.last_reply_bytes = self._nread
        return value

    def _read(self):
        line = self.rf.readline()
        self._nread += len(line)
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
            self._nread += len(data)
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
        self.t = time.monotonic()
        self.req_bytes = r.last_request_bytes    # counted by Redis in this snapshot
        self.reply_bytes = r.last_reply_bytes    # counted by Redis only after it

    def total(self, key):
        return sum(c.get(key, 0) for c in self.cmds.values())

    def calls(self, name):
        return self.cmds.get(name, {}).get("calls", 0)

    def field(self, key):
        return int(self.fields.get(key, 0))


class Delta:
    """B - A, minus the bench's own INFO (exactly one, A's) costing own_usec, and minus the
    bench's own request (B's) and reply (A's) bytes."""

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
        self.conns = b.field("total_connections_received") - a.field("total_connections_received")
        self.errors = b.field("total_error_replies") - a.field("total_error_replies")
        self.in_bytes = (b.field("total_net_input_bytes") - a.field("total_net_input_bytes")
                         - b.req_bytes)
        self.out_bytes = (b.field("total_net_output_bytes") - a.field("total_net_output_bytes")
                          - a.reply_bytes)
        self.seconds = b.t - a.t

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
        d_info = cur.calls("info") - prev.calls("info")
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


def named_clients(r, name):
    return sum(1 for c in client_list(r) if c.get("name") == name)


# ---------------------------------------------------------------- Redis setup

def start_redis(port, tag="redis"):
    rdir = os.path.join(TMPDIR, tag)
    os.makedirs(rdir)
    p = start(f"redis-server {tag}", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", rdir, "--daemonize", "no", "--logfile", "",
    ], f"{tag}.log")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError(f"redis-server exited: {read_log(tag + '.log', 2000)}")
        try:
            r = Resp(port)
            if r.cmd("PING") == "PONG":
                return p, r
            r.close()
        except (OSError, BenchError):
            pass
        time.sleep(0.1)
    raise BenchError("redis-server did not answer PING within 20 s")


def load_keys(port, n, r, tag="redis"):
    log(f"{tag}: loading {n} keys with redis-cli --pipe")
    t0 = time.monotonic()
    logname = f"pipe-{tag}.log"
    with open(os.path.join(TMPDIR, logname), "wb") as outf:
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
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        PROCS.remove(("redis-cli --pipe", proc))
    text = read_log(logname).strip()
    if proc.returncode != 0 or "errors: 0" not in text:
        raise BenchError(f"redis-cli --pipe failed (rc {proc.returncode}): {text[-500:]}")
    dbsize = r.cmd("DBSIZE")
    if dbsize != n:
        raise BenchError(f"DBSIZE is {dbsize}, expected {n}")
    log(f"{tag}: loaded {dbsize} keys in {time.monotonic() - t0:.1f} s; used_memory_human="
        f"{parse_info(r.cmd('INFO', 'memory'))[0].get('used_memory_human')}")


# ---------------------------------------------------------------- HTTP

class RawHttp:
    """GET on one keep-alive HTTP/1.1 connection; the body is read with recv_into() into one
    reused buffer and chunked framing is parsed in place on bytes (see the module docstring)."""

    def __init__(self, port, path="/metrics", timeout=30.0, quickack=False, encoding="identity"):
        self.port, self.timeout, self.quickack = port, timeout, quickack
        self.request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        f"Accept-Encoding: {encoding}\r\n\r\n").encode()
        self.buf = bytearray(1 << 20)
        self.mv = memoryview(self.buf)
        self.sock = None
        self.connects = 0

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _recv(self, end, eof_ok=False):
        if end == len(self.buf):
            self.mv.release()
            grown = bytearray(2 * len(self.buf))
            grown[:end] = self.buf
            self.buf, self.mv = grown, memoryview(grown)
        if self.quickack:  # diagnostic only: ACK at once (Linux resets the flag as it goes)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        n = self.sock.recv_into(self.mv[end:])
        if n == 0:
            if eof_ok:
                return None
            raise ConnectionError("server closed the connection mid-response")
        return end + n

    def get(self, keep_body=False):
        """One GET: (status, body length, body bytes if keep_body else None, seconds).

        The length is the bytes on the wire; a kept gzip body is decompressed after the clock
        stops (Prometheus decompresses as it parses; that is the client's cost, not the
        exporter's latency)."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connects += 1
        t0 = time.perf_counter()
        self.sock.sendall(self.request)
        end = 0
        while True:
            hdr_end = self.buf.find(b"\r\n\r\n", 0, end)
            if hdr_end >= 0:
                break
            end = self._recv(end)
        head = bytes(self.buf[:hdr_end]).decode("latin-1").split("\r\n")
        proto, status = head[0].split()[:2]
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip().lower()
        pos = hdr_end + 4
        spans = []
        close = proto == "HTTP/1.0" or headers.get("connection") == "close"
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                while True:
                    eol = self.buf.find(b"\r\n", pos, end)
                    if eol >= 0:
                        break
                    end = self._recv(end)
                size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
                pos = eol + 2
                if size == 0:  # optional trailer lines, then an empty line
                    while True:
                        eol = self.buf.find(b"\r\n", pos, end)
                        if eol < 0:
                            end = self._recv(end)
                            continue
                        blank = eol == pos
                        pos = eol + 2
                        if blank:
                            break
                    break
                while end < pos + size + 2:
                    end = self._recv(end)
                if self.buf[pos + size:pos + size + 2] != b"\r\n":
                    raise ValueError("bad chunk framing")
                spans.append((pos, size))
                pos += size + 2
        elif "content-length" in headers:
            n = int(headers["content-length"])
            while end < pos + n:
                end = self._recv(end)
            spans.append((pos, n))
            pos += n
        else:
            close = True
            while True:
                new_end = self._recv(end, eof_ok=True)
                if new_end is None:
                    break
                end = new_end
            spans.append((pos, end - pos))
            pos = end
        t1 = time.perf_counter()
        if end != pos:
            raise ValueError(f"{end - pos} unexpected bytes after the response")
        body = b"".join(bytes(self.mv[s:s + n]) for s, n in spans) if keep_body else None
        if body is not None and headers.get("content-encoding") == "gzip":
            d = zlib.decompressobj(wbits=31)
            body = d.decompress(body)
            if not d.eof or d.unused_data:
                raise ValueError("the gzip body is not exactly one complete member")
        if close:
            self.close()
        return int(status), sum(n for _, n in spans), body, t1 - t0


REDIS_UP = re.compile(rb"^redis_up(\{[^}]*\})? 1(\.0)?$", re.M)
REDIS_UP_ANY = re.compile(rb"^redis_up\{([^}]*)\} (\S+)$", re.M)
TARGET_LABEL = re.compile(rb'target="([^"]*)"')


def http_get(port, timeout=30.0):
    """One GET /metrics on a fresh connection: (status, body bytes)."""
    c = RawHttp(port, timeout=timeout)
    try:
        status, _, body, _ = c.get(keep_body=True)
        return status, body
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
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(f"{name} not ready within {limit:.0f} s ({last}): {read_log(logname, 2000)}")


def metric_sum(body, name):
    """Sum of every sample of `name` (any labels) in an exposition (bytes); None if absent."""
    pat = re.compile(rb"^" + re.escape(name.encode()) + rb"(?:\{[^\n]*\})? (\S+)$", re.M)
    vals = [float(m.group(1)) for m in pat.finditer(body)]
    return sum(vals) if vals else None


def up_targets(body):
    """(targets with redis_up 1, all targets with a redis_up sample)"""
    up, seen = set(), set()
    for m in REDIS_UP_ANY.finditer(body):
        t = TARGET_LABEL.search(m.group(1))
        name = t.group(1).decode() if t else ""
        seen.add(name)
        if float(m.group(2)) == 1.0:
            up.add(name)
    return up, seen


def sample_count(body):
    return sum(1 for l in body.split(b"\n") if l and not l.startswith(b"#"))


def scrape_series(port, n, warmup=5, before=None, quickack=False, gap=0.0, encoding="identity"):
    """n sequential GET /metrics on one keep-alive connection; latencies in ms.

    `warmup` requests go first on the same connection; then before() runs (it takes the Redis
    and CPU baselines), then the n timed requests, each starting `gap` seconds after the one
    before (0: back to back).  `encoding` goes in Accept-Encoding.  Returns (latencies,
    reconnects, last body (decompressed), its bytes on the wire)."""
    c = RawHttp(port, quickack=quickack, encoding=encoding)
    lat, body, wire = [], b"", 0
    try:
        next_at = time.monotonic()
        for i in range(warmup + n):
            if i == warmup and before is not None:
                before()
            if gap > 0 and i >= warmup:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = time.monotonic() + gap
            last = i == warmup + n - 1
            status, size, data, secs = c.get(keep_body=last)
            if status != 200:
                raise BenchError(f"scrape {i} returned HTTP {status}")
            if i >= warmup:
                lat.append(secs * 1000.0)
            if last:
                body, wire = data, size
    except (OSError, ValueError, zlib.error) as e:
        raise BenchError(f"scrape failed: {e!r}")
    finally:
        c.close()
    return lat, c.connects - 1, body, wire


def latency_summary(lat):
    s = sorted(lat)
    return {"p50": pct(s, 0.50), "p90": pct(s, 0.90), "p99": pct(s, 0.99), "max": s[-1],
            "mean": statistics.fmean(s), "n": len(s)}


def curl_check(port, rounds=4, per_round=10):
    """Alternating rounds: per_round scrapes by one curl process (connection reused, -w
    %{time_total}), then per_round by RawHttp; medians and CPU per scrape of each client."""
    url = f"http://127.0.0.1:{port}/metrics"
    argv = ["curl", "-s", "-w", "%{time_total} %{num_connects} %{http_code}\\n"]
    for _ in range(per_round):
        argv += [url, "-o", "/dev/null"]
    curl_ms, mine, conns, curl_cpu, my_cpu = [], [], 0, 0.0, 0.0
    c = RawHttp(port)  # one connection and one buffer for all rounds, warmed up first
    try:
        for _ in range(2):
            c.get()
    except (OSError, ValueError) as e:
        c.close()
        return f"curl check: bench client failed: {e!r}"
    for _ in range(rounds):
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"curl check failed: {e}"
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        curl_cpu += ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        rows = [l.split() for l in out.splitlines() if l.strip()]
        if len(rows) != per_round or any(r[2] != "200" for r in rows):
            return f"curl check failed: {out[-300:]!r}"
        curl_ms += [float(r[0]) * 1000.0 for r in rows]
        conns += sum(int(r[1]) for r in rows)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            lat = [c.get()[3] * 1000.0 for _ in range(per_round)]
        except (OSError, ValueError) as e:
            c.close()
            return f"curl check: bench client failed: {e!r}"
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        my_cpu += ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        mine += lat
    c.close()
    n = rounds * per_round
    curl_ms.sort()
    mine.sort()
    return (f"{rounds} alternating rounds of {per_round} scrapes: curl `-w %{{time_total}}` "
            f"(one process per round, {conns} connection(s) opened in all) median "
            f"{statistics.median(curl_ms):.3f} ms (min {curl_ms[0]:.3f}, max {curl_ms[-1]:.3f}), "
            f"curl CPU {curl_cpu * 1000 / n:.3f} ms per scrape (incl. its start-up); bench "
            f"client median {statistics.median(mine):.3f} ms (min {mine[0]:.3f}, max "
            f"{mine[-1]:.3f}), CPU {my_cpu * 1000 / n:.3f} ms per scrape (one connection throughout)")


# ---------------------------------------------------------------- CPU

def cpu_clock(pid):
    """Process-wide CPU time (all threads, exited ones included) in seconds, ns resolution:
    the kernel's per-process CPU clock, MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)."""
    return time.clock_gettime(((~pid) << 3) | 2)


class Cpu:
    def __init__(self, pid):
        self.pid = pid
        self.ticks = proc_cpu_ticks(pid)
        self.clock = cpu_clock(pid)
        self.t = time.monotonic()

    def since(self, other):
        """(ms from utime+stime ticks, ms from the CPU clock)"""
        return ((self.ticks - other.ticks) * 1000.0 / CLK_TCK,
                (self.clock - other.clock) * 1000.0)


# ---------------------------------------------------------------- single target: phases

def scrape_window(name, proc, port, r, scrapes):
    log(f"{name}: {scrapes} back-to-back scrapes")
    base = {}

    def before():
        base["snap"], base["own"], _ = calibrated_snapshot(r)
        base["cpu"] = Cpu(proc.pid)
        base["t"] = time.monotonic()

    lat, reconnects, body, _ = scrape_series(port, scrapes, before=before)
    wall = time.monotonic() - base["t"]
    cpu = Cpu(proc.pid).since(base["cpu"])
    b = Snap(r)
    rss = proc_rss_kb(proc.pid)
    d = Delta(base["snap"], b, base["own"])
    if not REDIS_UP.search(body):
        raise BenchError(f"{name}: last scrape does not report redis_up 1")
    res = {"lat": latency_summary(lat), "reconnects": reconnects, "bytes": len(body),
           "samples": sample_count(body), "cpu_ticks_ms": cpu[0], "cpu_ms": cpu[1],
           "rss_kb": rss, "hwm_kb": proc_status_kb(proc.pid, "VmHWM"), "delta": d,
           "own_info_usec": base["own"], "wall": wall, "body": body}
    # The same again asking for gzip, as Prometheus does (after the Redis window above, so
    # its counters are not touched).
    log(f"{name}: {scrapes} back-to-back scrapes asking for gzip")

    def before_gz():
        base["cpu_gz"] = Cpu(proc.pid)

    lat, _, body_gz, wire = scrape_series(port, scrapes, before=before_gz, encoding="gzip")
    cpu = Cpu(proc.pid).since(base["cpu_gz"])
    if not REDIS_UP.search(body_gz):
        raise BenchError(f"{name}: last gzip scrape does not report redis_up 1")
    res.update({"lat_gz": latency_summary(lat), "gz_wire": wire, "cpu_gz_ms": cpu[1],
                "hwm_gz_kb": proc_status_kb(proc.pid, "VmHWM")})
    return res


def paced_window(name, port, r, count, interval=1.0):
    """count scrapes, one every `interval` s (the cadence of lookout's polls): Redis cost of a
    scrape that finds Redis idle, as lookout's polls do."""
    log(f"{name}: {count} scrapes paced {interval:g} s apart")
    c = RawHttp(port)
    a, own, _ = calibrated_snapshot(r)
    try:
        t0 = time.monotonic()
        for i in range(count):
            time.sleep(max(0.0, t0 + (i + 1) * interval - time.monotonic()))
            status, _, body, _ = c.get(keep_body=True)
            if status != 200 or not REDIS_UP.search(body):
                raise BenchError(f"paced scrape {i} failed: HTTP {status}")
    except (OSError, ValueError) as e:
        raise BenchError(f"paced scrape failed: {e!r}")
    finally:
        c.close()
    time.sleep(0.2)
    return {"delta": Delta(a, Snap(r), own), "own_info_usec": own, "count": count}


def triple(r):
    """Three back-to-back snapshots: (first, third, cost of the second's INFO or None if
    anything else ran between the second and the third)."""
    s1, s2, s3 = Snap(r), Snap(r), Snap(r)
    d = Delta(s2, s3, 0)
    return s1, s3, (d.usec_of("info") if d.calls == 0 else None)


def per_poll_window(r, seconds, interval=1.0, offset=0.25):
    """Window 2: one sample per lookout poll (see the module docstring)."""
    prev = Snap(r)
    deadline = time.monotonic() + 3 * interval + 1
    while True:  # find the poll phase: first snapshot after a poll, 50 ms resolution
        time.sleep(0.05)
        cur = Snap(r)
        if cur.calls("latency|latest") > prev.calls("latency|latest"):
            t_poll = cur.t
            break
        if time.monotonic() > deadline:
            raise BenchError("window 2: no lookout poll seen within 3 poll intervals")
        prev = cur
    count = int(seconds / interval)
    time.sleep(max(0.0, t_poll + offset - time.monotonic()))
    _, last, own = triple(r)
    pairs = []
    for k in range(1, count + 1):
        time.sleep(max(0.0, t_poll + offset + k * interval - time.monotonic()))
        s1, s3, own_next = triple(r)
        pairs.append((k, last, s1, own))
        last, own = s3, own_next
    costs = [c for *_, c in pairs if c is not None]
    if not costs:
        raise BenchError("window 2: our own INFO cost could not be measured once")
    own_median = statistics.median(costs)
    samples = []
    for k, a, b, own in pairs:
        d = Delta(a, b, own_median)
        polls = d.calls_of("latency|latest")
        samples.append({"k": k, "delta": d, "polls": polls, "own": own, "own_used": own_median,
                        "valid": own is not None and polls == 1 and d.calls == d.calls_of(
                            "info") + d.calls_of("slowlog|len") + d.calls_of("slowlog|get")
                        + d.calls_of("latency|latest") + d.calls_of("config|get")})
    return samples


def classify(samples):
    """Kinds of polls in window 2 and the request sizes needed to count window 1's refreshes."""
    valid = [s for s in samples if s["valid"]]
    noncfg = [s for s in valid if s["delta"].calls_of("config|get") == 0]
    if not noncfg:
        raise BenchError("window 2: no usable poll sample")
    ref_out = statistics.median_low([s["delta"].out_bytes for s in noncfg])
    base_in = statistics.median_low([s["delta"].in_bytes for s in noncfg])
    for s in valid:
        d = s["delta"]
        s["cfg"] = d.calls_of("config|get") > 0
        s["cs"] = d.out_bytes - ref_out > CS_REPLY_THRESHOLD
        s["in_extra"] = d.in_bytes - base_in
        s["kind"] = ("commandstats + CONFIG GET" if s["cs"] and s["cfg"] else
                     "commandstats refresh" if s["cs"] else
                     "CONFIG GET refresh" if s["cfg"] else "plain")
    cs_in = sorted({s["in_extra"] for s in valid if s["cs"] and not s["cfg"]})
    cfg_in = sorted({s["in_extra"] - (cs_in[0] if s["cs"] and len(cs_in) == 1 else 0)
                     for s in valid if s["cfg"]})
    cfg_calls = sorted({s["delta"].calls_of("config|get") for s in valid if s["cfg"]})
    return {"valid": valid, "ref_out": ref_out, "base_in": base_in, "cs_in": cs_in,
            "cfg_in": cfg_in, "cfg_calls": cfg_calls,
            "refresh_ks": [s["k"] for s in valid if s["cs"]]}


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

    # ---- window 1: nothing touches Redis but lookout's poller (and our single INFO)
    log(f"redis-lookout: window 1, {args.poll_window} s, no scraping")
    a, own, own_samples = calibrated_snapshot(r)
    m0 = http_get(port)[1]
    cpu0 = Cpu(p.pid)
    time.sleep(args.poll_window)
    cpu = Cpu(p.pid).since(cpu0)
    m1 = http_get(port)[1]
    b = Snap(r)
    d = Delta(a, b, own)
    polls_redis = d.calls_of("latency|latest")
    if polls_redis <= 0:
        raise BenchError("redis-lookout made no polls in window 1 (no LATENCY LATEST seen)")
    res.update({
        "own_info_usec": own, "own_info_samples": own_samples, "poll_delta": d,
        "polls_redis": polls_redis,
        "polls_self": metric_sum(m1, "redis_lookout_polls_total")
        - metric_sum(m0, "redis_lookout_polls_total"),
        "poll_cpu_ticks_ms": cpu[0], "poll_cpu_ms": cpu[1],
        "conn_opened_delta": (metric_sum(m1, "redis_lookout_connections_opened_total") or 0)
        - (metric_sum(m0, "redis_lookout_connections_opened_total") or 0),
        "lookout_clients": named_clients(r, "redis-lookout"),
    })

    # ---- window 2: one sample per poll
    log(f"redis-lookout: window 2, {args.poll_window} s, one sample per poll")
    res["samples"] = per_poll_window(r, args.poll_window)

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
    res["lookout_clients_after"] = named_clients(r, "redis-lookout")
    res["curl"] = curl_check(port)
    res["exit_code"] = stop_started("redis-lookout", p)
    res["log"] = read_log("lookout.log")
    # its connection must be gone before redis_exporter's window starts
    deadline = time.monotonic() + 10
    while named_clients(r, "redis-lookout"):
        if time.monotonic() > deadline:
            raise BenchError("redis-lookout's connection still open 10 s after it was stopped")
        time.sleep(0.1)
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
    res["paced"] = paced_window("redis_exporter", port, r, args.paced_scrapes)
    time.sleep(0.5)
    res["exporter_clients_after"] = named_clients(r, "redis_exporter")
    res["connected_clients_after"] = int(
        parse_info(r.cmd("INFO", "clients"))[0]["connected_clients"])
    res["curl"] = curl_check(port)
    stop_started("redis_exporter", p)
    res["log"] = read_log("exporter.log")
    return res


# ---------------------------------------------------------------- single target: report

def kind_stats(samples):
    us = sorted(s["delta"].usec for s in samples)
    return {"n": len(us), "mean": statistics.fmean(us), "median": statistics.median(us),
            "min": us[0], "max": us[-1],
            "info": statistics.fmean(s["delta"].usec_of("info") for s in samples),
            "in_extra": sorted({s["in_extra"] for s in samples}),
            "out": statistics.fmean(s["delta"].out_bytes for s in samples)}


def print_report(args, machine, lk, ex):
    ls, es = lk["scrape"], (ex["scrape"] if ex else None)
    ep = ex["paced"] if ex else None
    n = args.scrapes
    pd = lk["poll_delta"]
    polls = lk["polls_redis"]
    cls = classify(lk["samples"])
    valid = cls["valid"]
    kinds = {}
    for s in valid:
        kinds.setdefault(s["kind"], []).append(s)
    plain = kinds.get("plain", [])
    if not plain:
        raise BenchError("window 2: no plain poll")
    plain_mean = statistics.fmean(s["delta"].usec for s in plain)
    w2_amortized = statistics.fmean(s["delta"].usec for s in valid)
    lk_usec_poll = pd.usec / polls
    lk_usec_poll_nocfg = (pd.usec - pd.usec_of("config|get")) / polls
    ex_b2b = es["delta"].usec / n if es else None
    ex_paced = ep["delta"].usec / ep["count"] if ep else None

    # commandstats refreshes in window 1, from its request bytes (see the module docstring)
    cfg_calls1 = pd.calls_of("config|get")
    n_cs1 = None
    if len(cls["cs_in"]) == 1 and (cfg_calls1 == 0 or (len(cls["cfg_in"]) == 1
                                                       and len(cls["cfg_calls"]) == 1)):
        n_cfg1 = cfg_calls1 / cls["cfg_calls"][0] if cfg_calls1 else 0
        rest = pd.in_bytes - polls * cls["base_in"] - (n_cfg1 * cls["cfg_in"][0] if n_cfg1 else 0)
        n_cs1 = rest / cls["cs_in"][0]
    n_cs1_txt = "?" if n_cs1 is None else (f"{n_cs1:.0f}" if n_cs1 == int(n_cs1)
                                           else f"{n_cs1:.2f} (not a whole number)")
    n_cfg1_txt = (f"{cfg_calls1 / cls['cfg_calls'][0]:g}" if cfg_calls1 and cls["cfg_calls"]
                  else f"{cfg_calls1} calls" if cfg_calls1 else "0")
    na = "not run"

    def exv(fn):
        return fn() if es else na

    def ratio(lk_value, ex_value, judge):
        if ex_value is None:
            return "not evaluated (redis_exporter not run)"
        text = f"ratio {lk_value / ex_value:.3f}"
        if judge:
            text = (f"≤ 1/3 of redis_exporter's ({ex_value / 3:.1f} µs); {text}: "
                    f"**{verdict(lk_value * 3 <= ex_value)}**")
        return text

    rows = []
    for key, target in (("p50", None), ("p90", None), ("p99", "< 1 ms"), ("max", None)):
        t = f"{target}: **{verdict(ls['lat'][key] < 1.0)}**" if target else ""
        rows.append((f"/metrics latency {key}, ms", f3(ls["lat"][key]),
                     exv(lambda k=key: f3(es["lat"][k])), t))
    rows.append(("/metrics latency mean, ms", f3(ls["lat"]["mean"]),
                 exv(lambda: f3(es["lat"]["mean"])), ""))
    rows.append(("/metrics response size, bytes / samples", f"{ls['bytes']} / {ls['samples']}",
                 exv(lambda: f"{es['bytes']} / {es['samples']}"), ""))
    amort = (f"Redis time per poll, amortized: window 1, {polls} polls incl. {n_cs1_txt} "
             f"commandstats and {n_cfg1_txt} CONFIG GET refreshes (lookout) vs per scrape")
    rows.append((amort + " back-to-back (exporter), µs", f"{lk_usec_poll:.1f}",
                 exv(lambda: f"{ex_b2b:.1f}"), ratio(lk_usec_poll, ex_b2b, True)))
    rows.append((amort + " 1 s apart like the polls (exporter), µs", f"{lk_usec_poll:.1f}",
                 exv(lambda: f"{ex_paced:.1f} ({ep['count']} scrapes)"),
                 ratio(lk_usec_poll, ex_paced, True)))
    plain_lbl = (f"Redis time per poll without the periodic extras: window 2, mean of "
                 f"{len(plain)} plain polls (lookout) vs per scrape")
    rows.append((plain_lbl + " back-to-back (exporter), µs", f"{plain_mean:.1f}",
                 exv(lambda: f"{ex_b2b:.1f}"), ratio(plain_mean, ex_b2b, False)))
    rows.append((plain_lbl + " 1 s apart (exporter), µs", f"{plain_mean:.1f}",
                 exv(lambda: f"{ex_paced:.1f}"), ratio(plain_mean, ex_paced, False)))
    rows.append(("Redis time per poll, window 1, without CONFIG GET (commandstats refreshes "
                 "still in), µs", f"{lk_usec_poll_nocfg:.1f}", "", ""))
    cs_all = [s for s in valid if s["cs"]]
    if cs_all and n_cs1 is not None:
        cs_extra = (statistics.fmean(s["delta"].usec_of("info") for s in cs_all)
                    - statistics.fmean(s["delta"].usec_of("info") for s in plain))
        est = (pd.usec - pd.usec_of("config|get") - n_cs1 * cs_extra) / polls
        rows.append((f"Redis time per poll, window 1, without CONFIG GET and without the "
                     f"commandstats extra (estimate: {n_cs1_txt} x {cs_extra:.1f} µs, the extra "
                     f"INFO time of a refresh poll in window 2), µs", f"{est:.1f}", "", ""))
    rows.append((f"Redis time per poll, amortized over window 2 ({len(valid)} polls sampled "
                 "one by one), µs", f"{w2_amortized:.1f}", "", ""))
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
                 f"{mb(ls['rss_kb'])} ({ls['rss_kb']} kB)",
                 exv(lambda: f"{mb(es['rss_kb'])} ({es['rss_kb']} kB)"),
                 f"< 10 MB: **{verdict(rss_ok)}**"))
    rows.append(("Exporter peak RSS (VmHWM), MB", f"{mb(ls['hwm_kb'])} ({ls['hwm_kb']} kB)",
                 exv(lambda: f"{mb(es['hwm_kb'])} ({es['hwm_kb']} kB)"), ""))
    rows.append(("Exporter CPU per scrape, ms (utime+stime ticks, 10 ms resolution)",
                 f"{ls['cpu_ticks_ms'] / n:.3f}", exv(lambda: f"{es['cpu_ticks_ms'] / n:.3f}"),
                 ""))
    rows.append(("Exporter CPU per scrape, ms (process CPU clock, ns resolution)",
                 f"{ls['cpu_ms'] / n:.3f}", exv(lambda: f"{es['cpu_ms'] / n:.3f}"), ""))
    rows.append(("/metrics asked for gzip (as Prometheus does), right after: latency p50 / p99, "
                 "ms", f"{f3(ls['lat_gz']['p50'])} / {f3(ls['lat_gz']['p99'])}",
                 exv(lambda: f"{f3(es['lat_gz']['p50'])} / {f3(es['lat_gz']['p99'])}"), ""))
    rows.append(("gzip: bytes on the wire; exporter CPU per scrape, ms (CPU clock); peak RSS "
                 "after, MB", f"{ls['gz_wire']}; {ls['cpu_gz_ms'] / n:.3f}; "
                 f"{mb(ls['hwm_gz_kb'])}",
                 exv(lambda: f"{es['gz_wire']}; {es['cpu_gz_ms'] / n:.3f}; "
                     f"{mb(es['hwm_gz_kb'])}"), ""))
    rows.append(("Exporter CPU per poll, ms, window 1 (ticks / CPU clock)",
                 f"{lk['poll_cpu_ticks_ms'] / polls:.3f} / {lk['poll_cpu_ms'] / polls:.3f}",
                 "", ""))

    print("## redis-lookout vs redis_exporter (one target)\n")
    print("Command: `" + machine["command"] + "`\n")
    print("Machine:")
    for k in ("nproc", "cpu", "kernel", "redis-server", "redis-lookout", "redis-lookout sha256",
              "redis_exporter", "curl", "python", "loadavg at start", "loadavg at end"):
        print(f"- {k}: {machine.get(k, '?')}")
    print()
    print(f"Setup: {args.keys} keys; {n} back-to-back keep-alive scrapes per exporter; "
          f"redis-lookout `--poll-interval 1s` (defaults: commandstats every 30 s, CONFIG GET "
          f"every 60 s), windows 1 and 2 of {args.poll_window} s each (window 1: {polls} polls "
          f"counted by Redis, {lk['polls_self']:.0f} by redis_lookout_polls_total)"
          + (f"; redis_exporter also scraped {ep['count']} times 1 s apart" if ep else "")
          + ".\n")
    print("| metric | redis-lookout | redis_exporter | target |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()

    cs_polls = kinds.get("commandstats refresh", [])
    print("Redis commands per poll (redis-lookout: window 1 amortized; window 2 plain polls "
          "and commandstats-refresh polls) and per scrape (redis_exporter), from INFO "
          "commandstats deltas, µs:\n")
    sets = [pd.per_cmd] + ([es["delta"].per_cmd, ep["delta"].per_cmd] if es else [])
    names = sorted(set().union(*sets))
    print("| command | lookout calls/poll | lookout µs/poll, amortized | lookout µs, plain poll "
          "| lookout µs, commandstats poll | exporter calls/scrape "
          "| exporter µs/scrape back-to-back | exporter µs/scrape 1 s apart |")
    print("|---|---|---|---|---|---|---|---|")

    def kmean(group, c):
        return f"{statistics.fmean(s['delta'].usec_of(c) for s in group):.2f}" if group else "–"

    for c in names:
        a = pd.per_cmd.get(c)
        b = es["delta"].per_cmd.get(c) if es else None
        q = ep["delta"].per_cmd.get(c) if ep else None
        cell = c.replace("|", "\\|")  # Markdown: a bare | would split the cell
        print(f"| {cell} | "
              + (f"{a['calls'] / polls:.3f} | {a['usec'] / polls:.2f} | {kmean(plain, c)} | "
                 f"{kmean(cs_polls, c)}" if a else "– | – | – | –")
              + " | " + (f"{b['calls'] / n:.3f} | {b['usec'] / n:.2f}" if b else "– | –")
              + " | " + (f"{q['usec'] / ep['count']:.2f}" if q else "–") + " |")
    print()

    print(f"redis-lookout polls one by one (window 2, {len(lk['samples'])} samples, "
          f"{len(valid)} usable), Redis µs per poll:\n")
    print("| poll kind | polls | mean | median | min | max | INFO µs (mean) | request bytes "
          "above a plain poll | reply bytes (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("plain", "commandstats refresh", "CONFIG GET refresh",
                 "commandstats + CONFIG GET"):
        if kind not in kinds:
            continue
        st = kind_stats(kinds[kind])
        print(f"| {kind} | {st['n']} | {st['mean']:.1f} | {st['median']:.1f} | {st['min']} | "
              f"{st['max']} | {st['info']:.1f} | {', '.join(str(x) for x in st['in_extra'])} | "
              f"{st['out']:.0f} |")
    print()

    ks = cls["refresh_ks"]
    gaps = [f"{(b - a) * 1.0:g}" for a, b in zip(ks, ks[1:])]
    unusable = [s for s in lk["samples"] if not s["valid"]]
    print("Notes:")
    print(f"- commandstats refreshes seen in window 2 at sample {', '.join(map(str, ks)) or 'none'} "
          f"(1 s apart); seconds between refreshes: {', '.join(gaps) or '–'}; window 1's count "
          f"({n_cs1_txt}) is (request bytes - polls x {cls['base_in']} - CONFIG GET refreshes x "
          f"{', '.join(map(str, cls['cfg_in'])) or '?'}) / "
          f"{', '.join(map(str, cls['cs_in'])) or '?'}")
    owns = sorted(s["own"] for s in lk["samples"] if s["own"] is not None)
    print(f"- window 2: {len(unusable)} unusable sample(s) (not exactly one poll, or something "
          f"else ran between our snapshots); our own INFO subtracted from every sample: "
          f"{valid[0]['own_used']:g} µs, the median of its {len(owns)} in-place measurements "
          f"(min {owns[0]}, max {owns[-1]})")
    print(f"- bench's own INFO, subtracted once per window: window 1 {lk['own_info_usec']} µs "
          f"(calibration samples {lk['own_info_samples']}), lookout scrape window "
          f"{ls['own_info_usec']} µs"
          + (f", redis_exporter windows {es['own_info_usec']} / {ep['own_info_usec']} µs"
             if es else "")
          + "; a small negative µs total means the window held nothing but that INFO and the "
          "estimate was a few µs high")
    print(f"- redis-lookout: {lk['polls_during_scrapes']:.0f} background poll(s) ran during its "
          f"{n} scrapes ({ls['wall']:.2f} s); its CPU per scrape includes them")
    print(f"- redis-lookout: connections_opened_total delta in window 1 "
          f"{lk['conn_opened_delta']:.0f}, total at end {lk['connections_opened_total']:.0f}; "
          f"polls_total {lk['polls_total']:.0f}; poll_errors_total {lk['poll_errors_total']:.0f}; "
          f"CLIENT LIST connections named redis-lookout: {lk['lookout_clients']} (window 1), "
          f"{lk['lookout_clients_after']} (after scrapes); mean poll wall time "
          + (f"{lk['poll_wall_mean_ms']:.3f} ms" if lk["poll_wall_mean_ms"] is not None else "?")
          + f"; failed/rejected Redis calls in window 1 {pd.failed}/{pd.rejected}; "
          f"exit code on SIGTERM {lk['exit_code']}")
    print(f"- HTTP reconnections during scrapes: lookout {ls['reconnects']}"
          + (f", redis_exporter {es['reconnects']}" if es else ""))
    print(f"- client check, redis-lookout: {lk['curl']}")
    if es:
        print(f"- client check, redis_exporter: {ex['curl']}")
        print(f"- redis_exporter: failed/rejected Redis calls {es['delta'].failed}/"
              f"{es['delta'].rejected} in {n} scrapes; new connections 1 s apart "
              f"{ep['delta'].conns} in {ep['count']}; connections named redis_exporter "
              f"open 0.5 s after the last scrape: {ex['exporter_clients_after']}; "
              f"connected_clients then: {ex['connected_clients_after']}")
    for name, res in (("redis-lookout", lk), ("redis_exporter", ex)):
        if res:
            print(f"- {name} log: {log_summary(res['log'])}")
    print("- one run on a shared 2-core machine; other work may run at the same time, so "
          "every figure is noisy")


# ---------------------------------------------------------------- multi-target mode

def targets_file(name, servers, n, extra):
    """A config in the temp dir: `extra` settings, poll_interval MULTI_INTERVAL, and n targets
    `tI` spread round-robin over the servers."""
    cfg = os.path.join(TMPDIR, name)
    with open(cfg, "w") as f:
        f.write(f"{extra}poll_interval: {MULTI_INTERVAL:g}s\nlog_level: warn\ntargets:\n")
        for i in range(n):
            f.write(f"  - name: t{i}\n    url: redis://127.0.0.1:{servers[i % len(servers)][0]}\n")
    return cfg

def multi_size(args, servers, n):
    port = free_port()
    cfg = targets_file(f"targets-{n}.yaml", servers, n, f'listen: "127.0.0.1:{port}"\n')
    try:
        chk = subprocess.run([args.lookout_bin, "--config", cfg, "--check-config"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"--check-config failed: {e}")
    if chk.returncode != 0:
        raise BenchError(f"--check-config rejected the {n}-target file: {chk.stdout}{chk.stderr}")
    summary = (chk.stdout.strip().splitlines() or ["?"])[0]
    res = {"n": n, "check": summary[:120] + ("…" if len(summary) > 120 else "")}
    logname = f"lookout-{n}.log"
    name = f"redis-lookout ({n} targets)"
    log(f"starting {name}")
    t0 = time.monotonic()
    p = start(name, [args.lookout_bin, "--config", cfg], logname)
    want = {f"t{i}" for i in range(n)}
    limit = 60.0 + 0.06 * n
    deadline = t0 + limit
    up = set()
    while True:  # bounded wait for redis_up 1 on every target
        if p.poll() is not None:
            raise BenchError(f"{name} exited with {p.returncode}: {read_log(logname, 2000)}")
        try:
            status, body = http_get(port, timeout=10)
            if status == 200:
                up = up_targets(body)[0]
                if up >= want:
                    break
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: {len(up & want)} of {n} targets up after {limit:.0f} s")
        time.sleep(1.0)
    res["t_up"] = time.monotonic() - t0
    res["rss_up_kb"] = proc_rss_kb(p.pid)
    log(f"{name}: all {n} up after {res['t_up']:.1f} s; idle window of {args.cycles} x "
        f"{MULTI_INTERVAL:g} s")

    # ---- idle window: no scrapes
    s0, own = [], []
    for _, r in servers:
        try:
            snap, cost, _ = calibrated_snapshot(r)
        except BenchError:  # never idle between two snapshots: leave our INFO in
            snap, cost = Snap(r), 0
        s0.append(snap)
        own.append(cost)
    cpu0 = Cpu(p.pid)
    time.sleep(args.cycles * MULTI_INTERVAL)
    cpu1 = Cpu(p.pid)
    s1 = [Snap(r) for _, r in servers]
    cpu = cpu1.since(cpu0)
    cycles = (cpu1.t - cpu0.t) / MULTI_INTERVAL
    deltas = [Delta(a, b, c) for a, b, c in zip(s0, s1, own)]
    res["own_usec"] = own
    res["idle_cycles"] = cycles
    res["cpu_cycle_s"] = cpu[1] / 1000.0 / cycles
    res["cpu_cycle_ticks_s"] = cpu[0] / 1000.0 / cycles
    res["polls_redis"] = sum(d.calls_of("latency|latest") for d in deltas)
    res["redis_usec"] = sum(d.usec for d in deltas)
    res["new_conns"] = sum(d.conns for d in deltas)
    res["failed_calls"] = sum(d.failed + d.rejected for d in deltas)
    res["rss_idle_kb"] = proc_rss_kb(p.pid)

    # ---- scrapes
    scrapes = args.scrapes or ((300 if args.quick else 500) if n >= 1000
                               else (100 if args.quick else 1000))
    log(f"{name}: {scrapes} back-to-back scrapes")
    base = {}

    def before():
        base["cpu"] = Cpu(p.pid)

    lat, reconnects, body, _ = scrape_series(port, scrapes, before=before)
    cpu_s = Cpu(p.pid).since(base["cpu"])
    res["rss_after_kb"] = proc_rss_kb(p.pid)
    res["hwm_kb"] = proc_status_kb(p.pid, "VmHWM")
    res.update({"scrapes": scrapes, "lat": latency_summary(lat), "reconnects": reconnects,
                "bytes": len(body), "samples": sample_count(body),
                "cpu_scrape_ms": cpu_s[1] / scrapes, "cpu_scrape_ticks_ms": cpu_s[0] / scrapes})
    up, seen = up_targets(body)
    res["up_last"] = len(up & want)
    res["seen_last"] = len(seen)
    res["poll_errors"] = metric_sum(body, "redis_lookout_poll_errors_total") or 0
    res["polls_total"] = metric_sum(body, "redis_lookout_polls_total")
    res["opened_total"] = metric_sum(body, "redis_lookout_connections_opened_total")
    cnt = metric_sum(body, "redis_lookout_poll_duration_seconds_count")
    tot = metric_sum(body, "redis_lookout_poll_duration_seconds_sum")
    res["poll_wall_mean_ms"] = tot / cnt * 1000.0 if cnt else None
    res["clients"] = sum(named_clients(r, "redis-lookout") for _, r in servers)
    qa = min(scrapes, 300)
    log(f"{name}: {qa} scrapes with the client ACKing at once (diagnostic)")
    res["lat_qa"] = latency_summary(scrape_series(port, qa, quickack=True)[0])
    log(f"{name}: {qa} scrapes of the same bytes from a server that does no work (floor)")
    res["lat_floor"] = floor_series(body, qa)
    log(f"{name}: {scrapes} back-to-back scrapes asking for gzip, as Prometheus does")

    def before_gz():
        base["cpu_gz"] = Cpu(p.pid)

    lat, _, body_gz, wire = scrape_series(port, scrapes, before=before_gz, encoding="gzip")
    cpu_s = Cpu(p.pid).since(base["cpu_gz"])
    if len(up_targets(body_gz)[0] & want) != n:
        raise BenchError(f"{name}: the last gzipped body does not show all {n} targets up")
    res.update({"lat_gz": latency_summary(lat), "gz_wire": wire, "gz_text": len(body_gz),
                "cpu_gz_scrape_ms": cpu_s[1] / scrapes,
                "cpu_gz_scrape_ticks_ms": cpu_s[0] / scrapes})
    if args.paced:
        log(f"{name}: {args.paced} scrapes {args.paced_gap:g} s apart")
        res["lat_paced"] = latency_summary(scrape_series(port, args.paced, gap=args.paced_gap)[0])
        log(f"{name}: {args.paced} gzip scrapes {args.paced_gap:g} s apart")
        res["lat_gz_paced"] = latency_summary(
            scrape_series(port, args.paced, gap=args.paced_gap, encoding="gzip")[0])
        log(f"{name}: the floor, paced the same")
        res["lat_floor_paced"] = floor_series(body, args.paced, args.paced_gap)
    # The peak over every series, gzip ones included (Prometheus asks for gzip).
    res["hwm_end_kb"] = proc_status_kb(p.pid, "VmHWM")
    res["curl"] = curl_check(port)
    res["exit_code"] = stop_started(name, p)
    res["log"] = read_log(logname)
    deadline = time.monotonic() + 20
    while sum(named_clients(r, "redis-lookout") for _, r in servers):
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: connections still open 20 s after it was stopped")
        time.sleep(0.2)
    return res


FLOOR_SERVER = r"""
import os, socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(8)
while True:
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b""
    try:
        while True:
            while b"\r\n\r\n" not in req:
                d = c.recv(65536)
                if not d:
                    raise EOFError
                req += d
            req = req.split(b"\r\n\r\n", 1)[1]
            off = 0
            while off < size:
                off += os.sendfile(c.fileno(), fd, off, size - off)
    except (EOFError, OSError):
        c.close()
"""


def floor_series(body, count, gap=0.0):
    """The same body from a server that does no work: a prepared response (Content-Length)
    handed to the kernel with sendfile(2), scraped by the same client.  What is left is the
    loopback transfer and the client, the floor under any exporter's latency for that many
    bytes on this machine at this moment."""
    path = os.path.join(TMPDIR, "floor-response")
    with open(path, "wb") as f:
        f.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        f.write(body)
    port = free_port()
    name = "floor server"
    p = start(name, [sys.executable, "-c", FLOOR_SERVER, str(port), path], "floor.log")
    try:
        wait_http(name, p, port, "floor.log", ready=lambda got: got == body, limit=10.0)
        return latency_summary(scrape_series(port, count, gap=gap)[0])
    finally:
        stop_started(name, p)
        os.unlink(path)


# ---------------------------------------------------------------- sharded mode

def hashmod2(name):
    """Prometheus' hashmod with modulus 2: the MD5's last 8 bytes, big-endian, mod 2."""
    return int.from_bytes(hashlib.md5(name.encode()).digest()[8:], "big") % 2


def sharded(args, servers, n):
    cfg = targets_file(f"sharded-{n}.yaml", servers, n, "polling: on_scrape\nscrape_idle: 5m\n")
    ports = [free_port(), free_port()]
    procs = []
    for k, port in enumerate(ports):
        name = f"redis-lookout shard {k}"
        log(f"starting {name} ({n} targets, polling: on_scrape)")
        procs.append(start(name, [args.lookout_bin, "--config", cfg,
                                  f"--web.listen-address=127.0.0.1:{port}"], f"shard-{k}.log"))
    for k, port in enumerate(ports):
        wait_http(f"shard {k}", procs[k], port, f"shard-{k}.log")
    res = {"n": n, "rss_start_kb": [proc_rss_kb(p.pid) for p in procs],
           "clients_dormant": sum(named_clients(r, "redis-lookout") for _, r in servers)}
    names = [f"t{i}" for i in range(n)]
    shard = [hashmod2(t) for t in names]
    res["split"] = [shard.count(0), shard.count(1)]
    conns = [RawHttp(port, timeout=30.0) for port in ports]
    want_up = re.compile(rb'^redis_up\{target="([^"]*)"\} (\S+)$', re.M)

    def scrape(i):
        c = conns[shard[i]]
        c.request = (f"GET /scrape?target={names[i]} HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\n"
                     "Accept-Encoding: identity\r\n\r\n").encode()
        status, size, body, secs = c.get(keep_body=True)
        ups = want_up.findall(body or b"")
        if status != 200 or ups != [(names[i].encode(), b"1")]:
            raise BenchError(f"/scrape?target={names[i]}: HTTP {status}, redis_up {ups}")
        return secs * 1000.0, size

    try:
        log(f"sharded: first scrape of each of {n} dormant targets")
        first = [scrape(i)[0] for i in range(n)]
        res["lat_first"] = latency_summary(first)
        res["clients_awake"] = sum(named_clients(r, "redis-lookout") for _, r in servers)
        log(f"sharded: {args.cycles} rounds of {n} scrapes, one round every {MULTI_INTERVAL:g} s")
        cpu0 = [Cpu(p.pid) for p in procs]
        steady, sizes = [], []
        next_at = time.monotonic()
        for _ in range(args.cycles):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + MULTI_INTERVAL
            for i in range(n):
                ms, size = scrape(i)
                steady.append(ms)
                sizes.append(size)
        time.sleep(max(0.0, next_at - time.monotonic()))
        cpu1 = [Cpu(p.pid) for p in procs]
        intervals = (cpu1[0].t - cpu0[0].t) / MULTI_INTERVAL
        res["lat"] = latency_summary(steady)
        res["bytes_mean"] = statistics.fmean(sizes)
        res["cpu_interval_s"] = [b.since(a)[1] / 1000.0 / intervals for a, b in zip(cpu0, cpu1)]
        res["rss_kb"] = [proc_rss_kb(p.pid) for p in procs]
        res["hwm_kb"] = [proc_status_kb(p.pid, "VmHWM") for p in procs]
        res["clients_end"] = sum(named_clients(r, "redis-lookout") for _, r in servers)
    except (OSError, ValueError) as e:
        raise BenchError(f"sharded scrape failed: {e!r}")
    finally:
        for c in conns:
            c.close()
    for k, p in enumerate(procs):
        stop_started(f"redis-lookout shard {k}", p)
    return res


def print_sharded_report(args, machine, res):
    n = res["n"]
    print("## redis-lookout, sharded over two processes (`polling: on_scrape`)\n")
    print("Command: `" + machine["command"] + "`\n")
    print("Machine:")
    for k in ("nproc", "cpu", "kernel", "redis-server", "redis-lookout", "redis-lookout sha256",
              "python", "loadavg at start", "loadavg at end"):
        print(f"- {k}: {machine.get(k, '?')}")
    print()
    print(f"{n} targets over {args.servers} redis-servers ({args.keys} keys each), split "
          f"{res['split'][0]} / {res['split'][1]} by hashmod; poll_interval {MULTI_INTERVAL:g} s.\n")
    lf, ls = res["lat_first"], res["lat"]
    print("| figure | value |\n|---|---|")
    print(f"| connections named redis-lookout before any scrape | {res['clients_dormant']} |")
    print(f"| first scrape of a dormant target (waits for its first poll), p50 / p99 / max | "
          f"{f3(lf['p50'])} / {f3(lf['p99'])} / {f3(lf['max'])} ms |")
    print(f"| connections after every target was scraped once | {res['clients_awake']} |")
    print(f"| steady /scrape, {ls['n']} scrapes: p50 / p90 / p99 / max | {f3(ls['p50'])} / "
          f"{f3(ls['p90'])} / {f3(ls['p99'])} / {f3(ls['max'])} ms |")
    print(f"| bytes per /scrape answer (mean) | {res['bytes_mean']:.0f} |")
    for k in (0, 1):
        print(f"| shard {k}: CPU per poll interval (its polls and its scrapes) | "
              f"{f3(res['cpu_interval_s'][k])} s |")
        print(f"| shard {k}: VmRSS at start / after / VmHWM | {mb(res['rss_start_kb'][k])} / "
              f"{mb(res['rss_kb'][k])} / {mb(res['hwm_kb'][k])} MB |")
    print(f"| connections at the end (each target polled by one process) | {res['clients_end']} |")
    print()


def print_multi_report(args, machine, results):
    print("## redis-lookout, many targets (lookout only)\n")
    print("redis_exporter holds one Redis per process (its multi-target mode queries the target "
          "on every /scrape), so there is nothing to compare with here.\n")
    print("Command: `" + machine["command"] + "`\n")
    print("Machine:")
    for k in ("nproc", "cpu", "kernel", "redis-server", "redis-lookout", "redis-lookout sha256",
              "curl", "python", "loadavg at start", "loadavg at end"):
        print(f"- {k}: {machine.get(k, '?')}")
    print()
    print(f"Setup: {args.servers} redis-servers of {args.keys} keys each; N targets `t0`…`tN-1` "
          f"spread round-robin over them in a generated YAML file, `poll_interval: "
          f"{MULTI_INTERVAL:g}s` (other settings default: commandstats every 30 s, CONFIG GET "
          f"every 60 s); idle window of {args.cycles} poll intervals, then back-to-back "
          "keep-alive scrapes.\n")
    print("| targets | scrapes | p50 ms | p90 ms | p99 ms | max ms | mean ms | body bytes / "
          "samples | RSS all up / after idle / after scrapes, MB | peak RSS (VmHWM) after these "
          "scrapes / after every series (gzip too), MB | "
          "CPU per poll cycle, s (of 5 s; % of one core) | CPU per scrape, ms | polls per "
          "cycle (Redis count) | Redis µs per poll |")
    print("|" + "---|" * 14)
    for r in results:
        lt = r["lat"]
        print(f"| {r['n']} | {r['scrapes']} | {f3(lt['p50'])} | {f3(lt['p90'])} | "
              f"{f3(lt['p99'])} | {f3(lt['max'])} | {f3(lt['mean'])} | {r['bytes']} / "
              f"{r['samples']} | {mb(r['rss_up_kb'])} / {mb(r['rss_idle_kb'])} / "
              f"{mb(r['rss_after_kb'])} | {mb(r['hwm_kb'])} ({r['hwm_kb']} kB) / "
              f"{mb(r['hwm_end_kb'])} ({r['hwm_end_kb']} kB) | "
              f"{r['cpu_cycle_s']:.4f} ({r['cpu_cycle_s'] / MULTI_INTERVAL * 100:.2f} %) | "
              f"{r['cpu_scrape_ms']:.3f} | {r['polls_redis'] / r['idle_cycles']:.1f} | "
              + (f"{r['redis_usec'] / r['polls_redis']:.1f}" if r["polls_redis"] else "–")
              + " |")
    print()
    print("Diagnostic, not the measurement: the same scrapes right after, with the client "
          "setting TCP_QUICKACK before every recv (it ACKs at once instead of delaying ACKs), "
          "which removes any stall caused by the server holding back a small write (Nagle) "
          "until the client's delayed ACK:\n")
    print("| targets | scrapes | p50 ms | p90 ms | p99 ms | max ms | mean ms |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        q = r["lat_qa"]
        print(f"| {r['n']} | {q['n']} | {f3(q['p50'])} | {f3(q['p90'])} | {f3(q['p99'])} | "
              f"{f3(q['max'])} | {f3(q['mean'])} |")
    print()
    print("Floor, not redis-lookout: the last body above, served right after by a server that "
          "does no work (a prepared response handed to the kernel with sendfile(2), Content-"
          "Length framing), to the same client, while the daemon goes on polling beside as "
          "during the measurement. What remains is the loopback transfer and the client: no "
          "exporter can answer that many bytes faster on this machine at that moment.\n")
    print("| targets | series | scrapes | p50 ms | p90 ms | p99 ms | max ms | mean ms |")
    print("|---|---|---|---|---|---|---|---|")
    series_rows(results, (("back to back", "lat_floor"),
                          (f"paced, {args.paced_gap:g} s apart", "lat_floor_paced")))
    print()
    if any("lat_paced" in r for r in results):
        print(f"Paced, a second measurement: scrapes {args.paced_gap:g} s apart on one keep-alive "
              "connection, right after, so each scrape finds the process idle, as a Prometheus "
              "scraping every few seconds does (the polls go on as before):\n")
        print("| targets | scrapes | p50 ms | p90 ms | p99 ms | max ms | mean ms |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            q = r.get("lat_paced")
            if q:
                print(f"| {r['n']} | {q['n']} | {f3(q['p50'])} | {f3(q['p90'])} | "
                      f"{f3(q['p99'])} | {f3(q['max'])} | {f3(q['mean'])} |")
        print()
    print("gzip, a third measurement: the same client sending `Accept-Encoding: gzip` (as "
          "Prometheus does unless `enable_compression: false`), right after the floor; the clock "
          "stops at the last byte on the wire and the body is decompressed afterwards (to check "
          "every target is up). CPU per scrape as in the first table (CPU time, and from ticks):\n")
    print("| targets | series | scrapes | p50 ms | p90 ms | p99 ms | max ms | mean ms | bytes on "
          "the wire / decoded | CPU per scrape, ms (ticks) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    series_rows(results, (("back to back", "lat_gz"),
                          (f"paced, {args.paced_gap:g} s apart", "lat_gz_paced")),
                lambda r, key: (f" {r['gz_wire']} / {r['gz_text']} | {r['cpu_gz_scrape_ms']:.3f} "
                                f"({r['cpu_gz_scrape_ticks_ms']:.3f}) |"
                                if key == "lat_gz" else " – | – |"))
    print()
    print("Targets (they apply at 1000 targets):\n")
    print("| targets | /metrics p99 < 20 ms, back to back | the same, paced | the same, gzip "
          "(back to back; paced) | RSS < 100 MB (judged on the peak after every series, VmHWM) | "
          "floor p99 (same "
          "bytes, no work) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if r["n"] < 1000:
            continue
        q = r.get("lat_paced")
        paced = (f"{f3(q['p99'])} ms: **{verdict(q['p99'] < 20.0)}**" if q else "not measured")
        fq = r.get("lat_floor_paced")
        floor = f3(r["lat_floor"]["p99"]) + " ms" + (
            f" (paced {f3(fq['p99'])} ms)" if fq else "")
        gz = " ; ".join(f"{f3(q['p99'])} ms: **{verdict(q['p99'] < 20.0)}**"
                        for q in (r.get("lat_gz"), r.get("lat_gz_paced")) if q)
        print(f"| {r['n']} | {f3(r['lat']['p99'])} ms: **{verdict(r['lat']['p99'] < 20.0)}** | "
              f"{paced} | {gz} | {mb(r['hwm_end_kb'])} MB: "
              f"**{verdict(r['hwm_end_kb'] * 1024 < 100e6)}** | {floor} |")
    if not any(r["n"] >= 1000 for r in results):
        print("| (1000 targets not in this run) | – | – | – | – | – |")
    print()
    print("Notes:")
    for r in results:
        print(f"- {r['n']} targets: all `redis_up` 1 after {r['t_up']:.1f} s; last scrape: "
              f"{r['up_last']} of {r['n']} up ({r['seen_last']} redis_up series); "
              f"poll_errors_total {r['poll_errors']:.0f}; polls_total {r['polls_total']:.0f}; "
              f"connections_opened_total {r['opened_total']:.0f}; connections named "
              f"redis-lookout on the servers {r['clients']}; new Redis connections in the idle "
              f"window {r['new_conns']}; failed/rejected Redis calls there {r['failed_calls']}; "
              f"idle window {r['idle_cycles']:.2f} cycles, CPU per cycle from ticks "
              f"{r['cpu_cycle_ticks_s']:.4f} s; CPU per scrape from ticks "
              f"{r['cpu_scrape_ticks_ms']:.3f} ms; mean poll wall time "
              + (f"{r['poll_wall_mean_ms']:.3f} ms" if r["poll_wall_mean_ms"] is not None
                 else "?")
              + f"; HTTP reconnections {r['reconnects']}; exit code on SIGTERM "
              f"{r['exit_code']}; log: {log_summary(r['log'])}")
        print(f"- {r['n']} targets, client check: {r['curl']}")
    print(f"- --check-config said: `{results[-1]['check']}`" if results else "")
    print("- Redis µs per poll: our own INFO (one per server per idle window) subtracted with "
          "the calibrated cost per server (µs): "
          + "; ".join(f"{r['n']} targets {r['own_usec']}" for r in results)
          + " (0 = calibration failed, our INFO left in)")
    print("- one run on a shared 2-core machine, so every figure is noisy")


def series_rows(results, series, extra=None):
    """One table row per target count and latency series present: `series` is (label, key) pairs;
    extra(result, key) gives the text of any further columns."""
    for r in results:
        for label, key in series:
            q = r.get(key)
            if q:
                print(f"| {r['n']} | {label} | {q['n']} | {f3(q['p50'])} | {f3(q['p90'])} | "
                      f"{f3(q['p99'])} | {f3(q['max'])} | {f3(q['mean'])} |"
                      + (extra(r, key) if extra else ""))


# ---------------------------------------------------------------- main

def machine_info(args, lookout_src):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "command": shlex.join([os.environ.get("BENCH_ARGV0", sys.argv[0])] + sys.argv[1:]),
        "nproc": cmd_output(["nproc"]),
        "cpu": cpu,
        "kernel": platform.release(),
        "redis-server": cmd_output(["redis-server", "--version"]),
        "redis-lookout": cmd_output([args.lookout_bin, "--version"]) + f" ({lookout_src}, "
        f"modified {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(os.path.getmtime(lookout_src)))})",
        "redis-lookout sha256": sha256(args.lookout_bin),
        "redis_exporter": exporter_version(args.exporter_bin),
        "curl": (cmd_output(["curl", "--version"]).splitlines() or ["?"])[0],
        "python": platform.python_version(),
        "loadavg at start": open("/proc/loadavg").read().strip(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, help="keys (per server with --targets)")
    ap.add_argument("--scrapes", type=int)
    ap.add_argument("--quick", action="store_true", help="smaller run (see the docstring)")
    ap.add_argument("--poll-window", type=int, help="seconds of each lookout poll window")
    ap.add_argument("--paced-scrapes", type=int, help="redis_exporter scrapes 1 s apart")
    ap.add_argument("--targets", help="multi-target mode: comma-separated target counts")
    ap.add_argument("--sharded", type=int,
                    help="sharded mode: this many on_scrape targets over two processes")
    ap.add_argument("--servers", type=int, default=4, help="redis-servers behind --targets")
    ap.add_argument("--cycles", type=int, help="poll intervals in the --targets idle window")
    ap.add_argument("--paced", type=int, default=200,
                    help="--targets: paced scrapes after the back-to-back ones (0: none)")
    ap.add_argument("--paced-gap", type=float, default=0.25,
                    help="--targets: seconds between the starts of paced scrapes")
    ap.add_argument("--lookout-bin", default=DEFAULT_LOOKOUT)
    ap.add_argument("--exporter-bin", default=shutil.which("prometheus-redis-exporter")
                    or shutil.which("redis_exporter"))
    args = ap.parse_args()
    sizes = None
    if args.sharded is not None:
        if args.targets or not 1 <= args.sharded <= 5000 or args.servers < 1:
            ap.error("--sharded takes 1..5000 targets, not with --targets")
        if args.keys is None:
            args.keys = 1000
        if args.cycles is None:
            args.cycles = 6
        if args.cycles < 1:
            ap.error("need --cycles >= 1")
    elif args.targets:
        try:
            sizes = [int(x) for x in args.targets.split(",") if x.strip()]
        except ValueError:
            ap.error("--targets takes comma-separated integers, e.g. 1,100,1000")
        if not sizes or min(sizes) < 1 or max(sizes) > 5000 or args.servers < 1:
            ap.error("--targets counts must be 1..5000, --servers >= 1")
        if args.keys is None:
            args.keys = 1000
        if args.cycles is None:
            args.cycles = 6 if args.quick else 12
        if args.cycles < 1 or (args.scrapes is not None and args.scrapes < 1):
            ap.error("need --cycles >= 1, --scrapes >= 1")
        if args.paced < 0 or not 0.01 <= args.paced_gap <= 60:
            ap.error("need --paced >= 0 and 0.01 <= --paced-gap <= 60")
    else:
        if args.keys is None:
            args.keys = 100_000 if args.quick else 1_000_000
        if args.scrapes is None:
            args.scrapes = 300 if args.quick else 1000
        if args.poll_window is None:
            args.poll_window = 60 if args.quick else 120
        if args.paced_scrapes is None:
            args.paced_scrapes = args.poll_window
        if args.keys < 0 or args.scrapes < 1 or args.poll_window < 3 or args.paced_scrapes < 1:
            ap.error("need --keys >= 0, --scrapes >= 1, --poll-window >= 3, --paced-scrapes >= 1")

    global TMPDIR
    atexit.register(cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    try:
        for tool in ("redis-server", "redis-cli", "curl"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} not found on PATH")
        if not (os.path.isfile(args.lookout_bin) and os.access(args.lookout_bin, os.X_OK)):
            raise BenchError(f"redis-lookout binary not found: {args.lookout_bin}")
        TMPDIR = tempfile.mkdtemp(prefix="redis-lookout-bench.")
        src = os.path.abspath(args.lookout_bin)
        args.lookout_bin = os.path.join(TMPDIR, "redis-lookout")
        shutil.copy2(src, args.lookout_bin)
        machine = machine_info(args, src)
        log(f"temp dir {TMPDIR}; redis-lookout {machine['redis-lookout sha256'][:16]}… from {src}")

        if sizes or args.sharded:
            servers = []
            for i in range(args.servers):
                port = free_port()
                tag = f"redis{i}"
                _, r = start_redis(port, tag)
                load_keys(port, args.keys, r, tag)
                servers.append((port, r))
            if args.sharded:
                res = sharded(args, servers, args.sharded)
            else:
                results = [multi_size(args, servers, n) for n in sizes]
            machine["loadavg at end"] = open("/proc/loadavg").read().strip()
            for _, r in servers:
                r.close()
            if args.sharded:
                print_sharded_report(args, machine, res)
            else:
                print_multi_report(args, machine, results)
            return 0

        redis_port = free_port()
        log(f"redis-server on 127.0.0.1:{redis_port}")
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
