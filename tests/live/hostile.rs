//! Hostile HTTP input: huge headers, odd paths and query strings, wrong methods, slowloris
//! connections and a crowd of idle ones. Every answer is a 4xx (never a 5xx), the connections
//! are closed in bounded time, and a normal scrape keeps working throughout.

use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns the status code of the answer, or None when the server closed
/// the connection without one. Bounded: the server must answer or close within `limit`.
async fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> Option<u16> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server may close before reading everything it was sent: that is an answer too.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
    };
    tokio::time::timeout(limit, work)
        .await
        .expect("the server neither answered nor closed the connection")
}

fn client_error(status: Option<u16>) -> bool {
    status.is_none_or(|s| (400..500).contains(&s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_and_never_stop_a_scrape() {
    let redis = RedisServer::start(&[]);
    let d = Daemon::start(&format!(
        "poll_interval: 300ms\nscrape_allow:\n  - hosts: [\"127.0.0.1\"]\n    ports: \"{}\"\ntargets:\n  - name: r\n    url: {}\n",
        redis.port,
        redis.url()
    ))
    .await;
    d.wait_up("r").await;
    let limit = Duration::from_secs(15);

    // A header far past the 64 KiB buffer.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let status = raw(d.addr, huge.as_bytes(), limit).await;
    assert!(client_error(status), "huge header: {status:?}");

    // Many headers, a path far too long, bytes that are not HTTP.
    let many: String = (0..5000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let status = raw(
        d.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        limit,
    )
    .await;
    assert!(client_error(status), "many headers: {status:?}");
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(100_000));
    let status = raw(d.addr, long_path.as_bytes(), limit).await;
    assert!(client_error(status), "long path: {status:?}");
    let status = raw(
        d.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        limit,
    )
    .await;
    assert!(client_error(status), "not HTTP: {status:?}");

    // Odd paths and query strings: each a 4xx with a reason, none a 5xx.
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/metrics/../../etc/passwd"),
        ("GET", "/runbooks/../../Cargo.toml"),
        ("GET", "/runbooks/%00"),
        ("GET", "/scrape"),
        ("GET", "/scrape?target="),
        ("GET", "/scrape?target=%zz%zz"),
        ("GET", "/scrape?target=10.0.0.1:6379"),
        ("GET", "/scrape?target=127.0.0.1:1"),
        ("GET", "/scrape?target=127.0.0.1:99999"),
        ("GET", "/scrape?target=[::1"),
        ("GET", "/scrape?target=redis://user:pw@127.0.0.1:1"),
        ("POST", "/metrics"),
        ("DELETE", "/-/ready"),
    ] {
        let (status, _) = http_request(d.addr, method, path).await;
        assert!(
            (400..500).contains(&status),
            "{method} {path} answered {status}"
        );
    }

    // Slowloris: connections that send half a request header and then dribble.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(d.addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // ... and idle connections that never send a byte.
    let idle: Vec<TcpStream> =
        futures_util::future::join_all((0..200).map(|_| TcpStream::connect(d.addr)))
            .await
            .into_iter()
            .map(|s| s.expect("connect"))
            .collect();
    // None of them stops a scrape (each read below must answer 200: `metrics()` asserts it),
    // and the target's own polls go on (up, waited for: one poll may time out under load).
    d.metrics_when("r up while they hang on", Duration::from_secs(20), |m| {
        m.value("redis_up", &[("target", "r")]) == Some(1.0)
    })
    .await;
    // The half-sent headers are cut off by the header read timeout: every one is closed within
    // a bounded time (read returns EOF or an error), with at most a 4xx.
    for mut s in slow {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a slowloris connection was held open");
        let text = String::from_utf8_lossy(&buf);
        let status: Option<u16> = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        assert!(client_error(status), "slowloris answered {status:?}");
    }
    drop(idle);
    d.metrics_when("r still up after them", Duration::from_secs(20), |m| {
        m.value("redis_up", &[("target", "r")]) == Some(1.0)
    })
    .await;
    d.stop().await;
}

/// A client that asks for a large `/metrics` and never reads it takes one of `max_requests`'
/// slots (the next scrape past the limit gets 503), and only until its writes have made no
/// progress for `WRITE_STALL`: then its connection is dropped and the slot comes back, while
/// the client still holds its end open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection_and_its_slot() {
    let redis = RedisServer::start(&[]);
    // ~600 targets of ~17 KB each: an exposition far larger than what the kernel buffers on
    // the two sides of a loopback connection can absorb.
    let targets: String = (0..600)
        .map(|i| format!("  - name: t{i}\n    url: {}\n", redis.url()))
        .collect();
    let d = Daemon::start(&format!(
        "poll_interval: 2s\nmax_requests: 1\ntargets:\n{targets}"
    ))
    .await;
    let body = d
        .body_when("600 targets up", Duration::from_secs(60), |b| {
            b.lines()
                .filter(|l| l.starts_with("redis_up{") && l.ends_with(" 1"))
                .count()
                == 600
        })
        .await;
    assert!(body.len() > 8_000_000, "exposition of {} bytes", body.len());

    // The stuck client: a tiny receive window, a request, and no reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(d.addr).await.expect("connect");
    stuck
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Its answer has begun (so it took the slot before the scrapes below): the status line,
    // and nothing more is read.
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(20), stuck.read_exact(&mut head))
        .await
        .expect("the stuck client's answer begins")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the stuck client's status line");

    // Its response holds the only slot: the next scrape is turned away, not queued.
    let refused = wait_for(
        "503 while the stuck client holds the slot",
        Duration::from_secs(10),
        || async {
            let (status, body) = http_get(d.addr, "/metrics").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert!(refused.contains("max_requests"), "{refused}");
    // /scrape counts against the same limit (it makes its whole answer at once).
    let (status, text) = http_get(d.addr, "/scrape?target=t0").await;
    assert_eq!(status, 503, "{text}");
    // Its writes stall; after WRITE_STALL the connection goes and a scrape is served again.
    wait_for(
        "the slot back from the stalled connection",
        redis_lookout::http::WRITE_STALL + Duration::from_secs(30),
        || async { (http_get(d.addr, "/metrics").await.0 == 200).then_some(()) },
    )
    .await;
    // The server closed its end: what the stuck client reads now ends (EOF or reset) well
    // before the whole exposition.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stuck.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled connection is still open");
    assert!(
        got < body.len(),
        "the stuck client got the whole exposition ({got} bytes)"
    );
}
