//! Slow and idle clients against the real binary: thousands of idle TCP connections and
//! slow-header senders on every port. The obsbox process's RSS stays bounded, idle connections
//! are closed after `listen.idle_timeout`, slow HTTP/1 heads after `listen.header_read_timeout`,
//! silent TLS clients after `listen.tls_handshake_timeout`, connections over
//! `listen.max_connections` at once, and a normal client is served all along.
//! Timeouts are short in these configurations so that each test takes seconds.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Process, rss_bytes, spawn_binary};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Long enough to open every connection first on a machine busy with other tests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// The serve loop drops a connection that has been shut down but has nothing in flight after 1 s.
const GRACE: Duration = Duration::from_millis(2500);

/// Lets this process (and obsbox, which inherits it) open as many files as the hard limit allows.
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

fn start(dir: &Path, listen: &str) -> Process {
    let config = dir.join("obsbox.toml");
    std::fs::write(&config, format!("[listen]\n{listen}")).unwrap();
    spawn_binary(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn listen_config(max_connections: usize) -> String {
    format!(
        "header_read_timeout = \"{}ms\"\nidle_timeout = \"{}ms\"\ntls_handshake_timeout = \"{}ms\"\n\
         request_body_timeout = \"{}ms\"\nmax_connections = {max_connections}\n",
        HEADER_READ_TIMEOUT.as_millis(),
        IDLE_TIMEOUT.as_millis(),
        TLS_HANDSHAKE_TIMEOUT.as_millis(),
        REQUEST_BODY_TIMEOUT.as_millis()
    )
}

/// Whether the server has closed `stream` (EOF or reset), without waiting.
fn is_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Opens `n` connections to `addr` that never send anything, each with the moment it opened.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<(TcpStream, Instant)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push((TcpStream::connect(addr).await.expect("connect"), Instant::now()));
    }
    out
}

/// Sends `head` one byte every 500 ms, forever; returns how long the server let it go on. Slow
/// enough that the 24-byte HTTP/2 preface outlasts the idle timeout.
async fn slow_sender(addr: SocketAddr, head: &'static [u8]) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for byte in head.iter().cycle() {
        if stream.write_all(&[*byte]).await.is_err() || is_closed(&stream) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    unreachable!()
}

/// A normal client: a health check on the UI port, an OTLP/JSON export on the HTTP port and an
/// OTLP export over gRPC, each answered.
async fn normal_client(process: &Process, service: &str) {
    ui_serves(process).await;
    otlp_http_serves(process, service).await;
    grpc_serves(process, service).await;
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

async fn ui_serves(process: &Process) {
    let health = client().get(format!("http://{}/healthz", process.addrs.http)).send().await.expect("ui port serves");
    assert_eq!(health.status(), 200);
}

async fn otlp_http_serves(process: &Process, service: &str) {
    let body = serde_json::json!({"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": service}}]}, "scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "ok",
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000001000000"}]}]}]});
    let resp = client()
        .post(format!("http://{}/v1/traces", process.addrs.otlp_http))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("otlp http port serves");
    assert_eq!(resp.status(), 200);
}

async fn grpc_serves(process: &Process, service: &str) {
    let mut grpc = common::grpc_clients(process.addrs.otlp_grpc).await;
    let now = common::now_ns();
    let request = common::trace_request(service, vec![common::span(&[7; 16], &[7; 8], "ok", now)]);
    tokio::time::timeout(Duration::from_secs(5), grpc.traces.export(request))
        .await
        .expect("grpc answers in time")
        .expect("otlp grpc port serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_closed_and_cost_little_memory() {
    const IDLE_PER_PORT: usize = 1500;
    const SLOW_PER_PORT: usize = 50;
    let fds = raise_open_files_limit();
    assert!(fds >= 2 * 3 * (IDLE_PER_PORT + SLOW_PER_PORT) as u64 + 1000, "RLIMIT_NOFILE hard limit {fds} too low");
    let dir = tempfile::tempdir().unwrap();
    let process = start(dir.path(), &listen_config(IDLE_PER_PORT + SLOW_PER_PORT + 100));
    normal_client(&process, "slowloris-before").await;
    let baseline = rss_bytes(process.pid()).unwrap();

    let started = Instant::now();
    let ports = [process.addrs.otlp_grpc, process.addrs.otlp_http, process.addrs.http];
    let mut slow = Vec::new();
    for (port, head) in ports.iter().zip([
        // HTTP/2 only: the connection preface, one byte at a time.
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &b"POST /v1/traces HTTP/1.1\r\nHost: obsbox\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
        &b"GET /api/services HTTP/1.1\r\nHost: obsbox\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
    ]) {
        for _ in 0..SLOW_PER_PORT {
            slow.push((*port, tokio::spawn(slow_sender(*port, head))));
        }
    }
    let mut idle = Vec::new();
    for port in ports {
        idle.push(idle_connections(port, IDLE_PER_PORT).await);
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Opening thousands of connections takes seconds on a busy machine: every connection younger
    // than the idle timeout (with a margin) must still be open; the newest always are.
    let young = |t: &Instant| t.elapsed() + Duration::from_millis(300) < IDLE_TIMEOUT;
    let mut checked = 0;
    for (c, t) in idle.iter().flatten() {
        if young(t) {
            assert!(!is_closed(c), "an idle connection {:?} old was closed before the idle timeout", t.elapsed());
            checked += 1;
        }
    }
    assert!(
        checked >= IDLE_PER_PORT,
        "only {checked} connections were young enough to check (opening took {opened:?})"
    );
    // Served meanwhile, with 4,650 connections open.
    normal_client(&process, "slowloris-during").await;
    let loaded = rss_bytes(process.pid()).unwrap();
    let growth = loaded.saturating_sub(baseline);
    eprintln!(
        "rss: {} MiB idle, {} MiB with {} idle and {} slow connections (+{} KiB per connection)",
        baseline >> 20,
        loaded >> 20,
        3 * IDLE_PER_PORT,
        3 * SLOW_PER_PORT,
        growth / 1024 / (3 * (IDLE_PER_PORT + SLOW_PER_PORT)) as u64
    );
    let connections = 3 * (IDLE_PER_PORT + SLOW_PER_PORT) as u64;
    assert!(growth < connections * (20 << 10), "RSS grew by {} MiB for idle connections", growth >> 20);
    assert!(loaded < 256 << 20, "RSS {} MiB", loaded >> 20);

    for (port, task) in slow {
        let lasted = task.await.unwrap();
        let limit = if port == process.addrs.otlp_grpc { IDLE_TIMEOUT } else { HEADER_READ_TIMEOUT };
        assert!(lasted >= limit - Duration::from_millis(300), "{port}: slow sender closed after {lasted:?}");
        assert!(lasted <= limit + GRACE, "{port}: slow sender still open after {lasted:?} (limit {limit:?})");
    }
    let deadline = started + IDLE_TIMEOUT + opened + GRACE;
    loop {
        let open = idle.iter().flatten().filter(|(c, _)| !is_closed(c)).count();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} idle connections still open {:?} after start", started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= IDLE_TIMEOUT, "idle connections were closed before the idle timeout");
    normal_client(&process, "slowloris-after").await;
    assert!(process.stderr_tail().lines().all(|l| !l.contains("panicked")), "{}", process.stderr_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once_and_served_ones_are_not_hurt() {
    const MAX: usize = 200;
    raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let process = start(dir.path(), &listen_config(MAX));
    let http = process.addrs.otlp_http;

    // A served keep-alive client first, then idle connections up to the limit.
    let client = client();
    let post = |client: &reqwest::Client| {
        client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/json")
            .body(r#"{"resourceSpans":[]}"#)
            .send()
    };
    assert_eq!(post(&client).await.unwrap().status(), 200);
    let mut idle = idle_connections(http, MAX - 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let over = TcpStream::connect(http).await.expect("the kernel still completes the handshake");
    while !is_closed(&over) {
        assert!(started.elapsed() < Duration::from_secs(1), "a connection over the limit is closed at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(&client).await.unwrap().status(), 200, "the keep-alive client keeps being served");
    assert!(idle.iter().all(|(c, _)| !is_closed(c)), "connections under the limit stay open");
    // The other listeners have their own limit.
    ui_serves(&process).await;
    grpc_serves(&process, "limit-other-ports").await;

    // Room again once some close.
    idle.truncate(MAX - 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(&self::client()).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_clients_are_closed_after_the_handshake_timeout() {
    const SILENT: usize = 500;
    raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let config = dir.path().join("obsbox.toml");
    std::fs::write(&config, format!("[listen]\n{}\n[tls]\ncert = {:?}\nkey = {:?}\n", listen_config(1000), cert, key))
        .unwrap();
    let process = spawn_binary(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let baseline = rss_bytes(process.pid()).unwrap();
    let started = Instant::now();
    let mut silent = Vec::new();
    for port in [process.addrs.otlp_grpc, process.addrs.otlp_http, process.addrs.http] {
        silent.push(idle_connections(port, SILENT).await);
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = rss_bytes(process.pid()).unwrap();
    eprintln!("rss: {} MiB idle, {} MiB with {} silent TLS connections", baseline >> 20, loaded >> 20, 3 * SILENT);
    assert!(loaded.saturating_sub(baseline) < 64 << 20, "RSS grew by {} MiB", (loaded - baseline) >> 20);
    loop {
        let open: usize = silent.iter().map(|conns| conns.iter().filter(|(c, _)| !is_closed(c)).count()).sum();
        if open == 0 {
            break;
        }
        assert!(started.elapsed() < opened + TLS_HANDSHAKE_TIMEOUT + GRACE, "{open} silent TLS connections still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= TLS_HANDSHAKE_TIMEOUT, "closed before the handshake timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_body_timeout_gets_a_400() {
    use tokio::io::AsyncReadExt;

    let dir = tempfile::tempdir().unwrap();
    let process = start(dir.path(), &listen_config(100));
    let started = Instant::now();
    let mut stream = TcpStream::connect(process.addrs.otlp_http).await.unwrap();
    let head =
        "POST /v1/traces HTTP/1.1\r\nHost: obsbox\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // One byte of body every 250 ms: the whole body would take over 4 minutes.
    while started.elapsed() < REQUEST_BODY_TIMEOUT + GRACE {
        if stream.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let lasted = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "after {lasted:?}: {answer:?}");
    assert!(lasted >= REQUEST_BODY_TIMEOUT - Duration::from_millis(300), "answered after {lasted:?}");
    otlp_http_serves(&process, "after-slow-body").await;
}
