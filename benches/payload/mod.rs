//! Deterministic OTLP payload generation shared by the benchmarks: seeded xorshift, traces of
//! 5-50 spans over 6 services with semantic-convention attributes (~500 B per span), log records
//! of ~200 B with trace context, and metric export intervals ([`MetricFleet`]).
//!
//! Metrics are shaped like what OpenTelemetry SDKs export with cumulative temporality: the 6
//! services run 3 instances each (one resource per instance), each instance reports per scope
//! (HTTP instrumentation, database client, runtime, application) the semantic-convention metrics
//! its language's SDK and instrumentations produce: `http.server.request.duration` and
//! `http.client.request.duration` (explicit-bucket histograms with the semconv boundaries and
//! trace exemplars), `db.client.operation.duration` (base-2 exponential histogram, max 160
//! buckets), `http.server.active_requests` and `db.client.connections.usage` (non-monotonic sums),
//! `process.cpu.time` (monotonic sum), `process.cpu.utilization` (gauge), runtime metrics
//! (`jvm.*`, `go.*`, `dotnet.*`, `v8js.*`, `process.runtime.cpython.*`), a summary as the
//! Prometheus receiver forwards Go's `go_gc_duration_seconds`, and business counters. One export
//! interval of the whole fleet is one request of about 525 data points; the series set is the
//! same in every interval and values evolve (counters grow, histograms accumulate) between them.
#![allow(dead_code)]

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status as SpanStatus};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const ITEMS_PER_BATCH: usize = 512;

/// The arguments of the per-item benchmarks (`index_cost`, `size_floor`): `spans` or `logs`
/// (true for logs) and a number of batches (200 by default). None when the binary was not
/// started by `cargo bench` (`cargo test` runs bench targets too, without `--bench`).
pub(crate) fn signal_and_batches(bench: &str) -> anyhow::Result<Option<(bool, u64)>> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{bench} benchmark: not run (start it with `cargo bench --bench {bench}`)");
        return Ok(None);
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let logs = match args.first().map(String::as_str).unwrap_or("spans") {
        "spans" => false,
        "logs" => true,
        other => anyhow::bail!("unknown signal {other:?}: spans or logs"),
    };
    Ok(Some((logs, args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(200))))
}

// --- deterministic generation --------------------------------------------------------------

/// xorshift64* seeded through splitmix64.
pub(crate) struct Rng(u64);

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub(crate) fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    pub(crate) fn id(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            v.extend_from_slice(&(self.next() | 1).to_le_bytes());
        }
        v.truncate(len);
        v
    }
    pub(crate) fn hex(&mut self, len: usize) -> String {
        (0..len).map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize])).collect()
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}
pub(crate) fn s(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}
pub(crate) fn i(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// (service.name, SDK language, service.version).
pub(crate) const SERVICES: [(&str, &str, &str); 6] = [
    ("frontend", "nodejs", "2.4.1"),
    ("checkout", "go", "1.9.0"),
    ("cart", "dotnet", "3.2.5"),
    ("payment", "java", "5.0.2"),
    ("inventory", "rust", "0.14.3"),
    ("recommendation", "python", "1.1.7"),
];

pub(crate) fn resource(svc: usize) -> Resource {
    let (name, lang, version) = SERVICES[svc];
    let mut rng = Rng::new(1000 + svc as u64);
    Resource {
        attributes: vec![
            s("service.name", name),
            s("service.namespace", "shop"),
            s("service.version", version),
            s("service.instance.id", format!("{}-{}", name, rng.hex(12))),
            s("host.name", format!("node-{}", rng.range(1, 9))),
            s("k8s.pod.name", format!("{}-{}-{}", name, rng.hex(10), rng.hex(5))),
            s("deployment.environment.name", "production"),
            s("telemetry.sdk.name", "opentelemetry"),
            s("telemetry.sdk.language", lang),
            s("telemetry.sdk.version", "1.38.0"),
        ],
        ..Default::default()
    }
}

pub(crate) fn scope(svc: usize) -> InstrumentationScope {
    InstrumentationScope {
        name: format!("io.opentelemetry.{}", SERVICES[svc].1),
        version: "1.38.0".into(),
        ..Default::default()
    }
}

pub(crate) const ROUTES: [(&str, &str); 7] = [
    ("GET", "/api/products/{id}"),
    ("GET", "/api/cart"),
    ("POST", "/api/cart/items"),
    ("POST", "/api/checkout"),
    ("GET", "/api/recommendations"),
    ("POST", "/api/payment/charge"),
    ("GET", "/api/inventory/{sku}"),
];
pub(crate) const TABLES: [&str; 5] = ["orders", "products", "carts", "payments", "stock_levels"];
pub(crate) const FUNCTIONS: [&str; 8] = [
    "CartService.AddItem",
    "CartService.GetCart",
    "CheckoutService.PlaceOrder",
    "PaymentService.Charge",
    "InventoryService.Reserve",
    "RecommendationService.ListRecommendations",
    "ProductCatalog.GetProduct",
    "CurrencyConverter.Convert",
];

pub(crate) fn concrete_path(rng: &mut Rng, route: &str) -> String {
    route.replace("{id}", &rng.range(1000, 99_999).to_string()).replace("{sku}", &format!("SKU-{}", rng.hex(8)))
}

pub(crate) fn status_code(rng: &mut Rng) -> i64 {
    match rng.below(100) {
        0..=1 => 500,
        2..=4 => 404,
        5 => 503,
        _ => 200,
    }
}

pub(crate) fn http_server_attrs(rng: &mut Rng, svc: usize, method: &str, route: &str, status: i64) -> Vec<KeyValue> {
    vec![
        s("http.request.method", method),
        s("url.path", concrete_path(rng, route)),
        s("url.scheme", "http"),
        s("http.route", route),
        i("http.response.status_code", status),
        s("server.address", format!("{}.shop.svc", SERVICES[svc].0)),
        i("server.port", 8080),
        s("client.address", format!("10.42.{}.{}", rng.below(8), rng.range(2, 250))),
        s(
            "user_agent.original",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
        ),
        s("network.protocol.version", "1.1"),
    ]
}

pub(crate) fn http_client_attrs(rng: &mut Rng, target: usize, method: &str, route: &str, status: i64) -> Vec<KeyValue> {
    let host = format!("{}.shop.svc", SERVICES[target].0);
    vec![
        s("http.request.method", method),
        s("url.full", format!("http://{host}:8080{}?currency=USD&session={}", concrete_path(rng, route), rng.hex(12))),
        s("url.scheme", "http"),
        s("server.address", host),
        i("server.port", 8080),
        i("http.response.status_code", status),
        s("network.protocol.version", "1.1"),
        s("network.peer.address", format!("10.43.{}.{}", rng.below(4), rng.range(2, 250))),
        i("http.request.resend_count", 0),
        s("peer.service", SERVICES[target].0),
    ]
}

pub(crate) fn db_attrs(rng: &mut Rng, table: &str, redis: bool) -> Vec<KeyValue> {
    if redis {
        return vec![
            s("db.system", "redis"),
            s("db.namespace", "0"),
            s("db.operation.name", "GET"),
            s("db.query.text", format!("GET cart:{}", rng.hex(16))),
            s("server.address", "redis.shop.svc"),
            i("server.port", 6379),
            s("network.peer.address", format!("10.43.9.{}", rng.range(2, 20))),
            i("network.peer.port", 6379),
            s("network.transport", "tcp"),
            i("db.response.returned_rows", 1),
        ];
    }
    vec![
        s("db.system", "postgresql"),
        s("db.namespace", "shop"),
        s("db.operation.name", "SELECT"),
        s("db.collection.name", table),
        s(
            "db.query.text",
            format!(
                "SELECT t.id, t.status, t.total_cents, t.created_at FROM {table} t WHERE t.customer_id = $1 ORDER BY t.created_at DESC LIMIT 20"
            ),
        ),
        s("server.address", "postgres.shop.svc"),
        i("server.port", 5432),
        s("network.peer.address", format!("10.43.8.{}", rng.range(2, 20))),
        i("network.peer.port", 5432),
        i("db.response.returned_rows", rng.below(20) as i64),
    ]
}

pub(crate) fn internal_attrs(rng: &mut Rng, function: &str) -> Vec<KeyValue> {
    let (ns, f) = function.split_once('.').unwrap_or(("app", function));
    vec![
        s("code.function.name", f),
        s("code.namespace", format!("shop.{ns}")),
        s("code.file.path", format!("/app/src/services/{}/{}_handler.rs", ns.to_lowercase(), f.to_lowercase())),
        i("code.line.number", rng.range(20, 900) as i64),
        i("thread.id", rng.range(1, 64) as i64),
        s("thread.name", format!("tokio-runtime-worker-{}", rng.below(16))),
        s("app.user.id", format!("u-{}", rng.range(10_000, 999_999))),
        s("app.session.id", rng.hex(32)),
        i("app.cart.items", rng.below(12) as i64),
        s("app.request.id", format!("{}-{}-{}", rng.hex(8), rng.hex(4), rng.hex(12))),
    ]
}

/// One span plus the service it belongs to.
pub(crate) struct Gen {
    span: Span,
    svc: usize,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn make_span(
    trace_id: &[u8],
    span_id: Vec<u8>,
    parent: &[u8],
    name: String,
    kind: SpanKind,
    start: u64,
    dur: u64,
    attributes: Vec<KeyValue>,
    status: i64,
) -> Span {
    let error = status >= 500;
    Span {
        trace_id: trace_id.to_vec(),
        span_id,
        parent_span_id: parent.to_vec(),
        flags: 0x101,
        name,
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + dur,
        attributes,
        status: Some(SpanStatus {
            code: if error { StatusCode::Error } else { StatusCode::Unset } as i32,
            message: if error { format!("HTTP {status}") } else { String::new() },
        }),
        events: if error {
            vec![Event {
                time_unix_nano: start + dur / 2,
                name: "exception".into(),
                attributes: vec![
                    s("exception.type", "UpstreamError"),
                    s("exception.message", format!("upstream returned {status}")),
                ],
                dropped_attributes_count: 0,
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// One trace of `n` spans rooted at the frontend, spread over the services.
pub(crate) fn gen_trace(rng: &mut Rng, n: usize, t0: u64, out: &mut Vec<Gen>) {
    let trace_id = rng.id(16);
    let (method, route) = *rng.pick(&ROUTES);
    let status = status_code(rng);
    let root_dur = rng.range(5_000_000, 800_000_000);
    let first = out.len();
    out.push(Gen {
        span: make_span(
            &trace_id,
            rng.id(8),
            &[],
            format!("{method} {route}"),
            SpanKind::Server,
            t0,
            root_dur,
            http_server_attrs(rng, 0, method, route, status),
            status,
        ),
        svc: 0,
    });
    while out.len() - first < n {
        let p = first + rng.below((out.len() - first) as u64) as usize;
        let (p_id, p_start, p_dur, p_svc) = {
            let ps = &out[p].span;
            (ps.span_id.clone(), ps.start_time_unix_nano, ps.end_time_unix_nano - ps.start_time_unix_nano, out[p].svc)
        };
        let start = p_start + rng.below(p_dur / 2 + 1);
        let dur = 1 + rng.below(p_start + p_dur - start);
        let roll = rng.below(100);
        if roll < 30 && out.len() - first + 2 <= n {
            // An RPC: a client span here and a server span in another service.
            let target = 1 + rng.below(SERVICES.len() as u64 - 1) as usize;
            let (m, r) = *rng.pick(&ROUTES);
            let st = status_code(rng);
            let client_id = rng.id(8);
            out.push(Gen {
                span: make_span(
                    &trace_id,
                    client_id.clone(),
                    &p_id,
                    m.to_string(),
                    SpanKind::Client,
                    start,
                    dur,
                    http_client_attrs(rng, target, m, r, st),
                    st,
                ),
                svc: p_svc,
            });
            let lag = dur / 10;
            out.push(Gen {
                span: make_span(
                    &trace_id,
                    rng.id(8),
                    &client_id,
                    format!("{m} {r}"),
                    SpanKind::Server,
                    start + lag,
                    dur - lag,
                    http_server_attrs(rng, target, m, r, st),
                    st,
                ),
                svc: target,
            });
        } else if roll < 60 {
            let table = *rng.pick(&TABLES);
            let redis = rng.percent(30);
            let name = if redis { "GET".to_string() } else { format!("SELECT shop.{table}") };
            out.push(Gen {
                span: make_span(
                    &trace_id,
                    rng.id(8),
                    &p_id,
                    name,
                    SpanKind::Client,
                    start,
                    dur,
                    db_attrs(rng, table, redis),
                    200,
                ),
                svc: p_svc,
            });
        } else {
            let f = *rng.pick(&FUNCTIONS);
            out.push(Gen {
                span: make_span(
                    &trace_id,
                    rng.id(8),
                    &p_id,
                    f.to_string(),
                    SpanKind::Internal,
                    start,
                    dur,
                    internal_attrs(rng, f),
                    200,
                ),
                svc: p_svc,
            });
        }
    }
}

pub(crate) fn span_batch(seed: u64, now: u64) -> ExportTraceServiceRequest {
    let mut rng = Rng::new(seed);
    let mut spans = Vec::with_capacity(ITEMS_PER_BATCH);
    while spans.len() < ITEMS_PER_BATCH {
        let n = (rng.range(5, 50) as usize).min(ITEMS_PER_BATCH - spans.len());
        let t0 = now - rng.range(1_000_000_000, 30_000_000_000);
        gen_trace(&mut rng, n, t0, &mut spans);
    }
    let mut by_service: Vec<Vec<Span>> = (0..SERVICES.len()).map(|_| Vec::new()).collect();
    for g in spans {
        by_service[g.svc].push(g.span);
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(svc, spans)| ResourceSpans {
                resource: Some(resource(svc)),
                scope_spans: vec![ScopeSpans { scope: Some(scope(svc)), spans, schema_url: String::new() }],
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            })
            .collect(),
    }
}

pub(crate) fn log_body(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => {
            let (m, r) = *rng.pick(&ROUTES);
            format!(
                "request completed {m} {} status={} duration_ms={}",
                concrete_path(rng, r),
                status_code(rng),
                rng.range(1, 900)
            )
        }
        1 => format!("user u-{} added item SKU-{} to cart {}", rng.range(10_000, 999_999), rng.hex(8), rng.hex(12)),
        2 => format!(
            "payment authorized for order ord-{} amount {}.{:02} USD",
            rng.range(100_000, 999_999),
            rng.range(1, 900),
            rng.below(100)
        ),
        3 => format!("cache miss for key product:{}, loading from database", rng.range(1000, 99_999)),
        4 => format!(
            "retrying connection to {}.shop.svc:8080 after error: connection reset by peer (attempt {})",
            rng.pick(&SERVICES).0,
            rng.range(1, 5)
        ),
        5 => format!(
            "slow query on {}: {} ms for customer {}",
            rng.pick(&TABLES),
            rng.range(200, 5000),
            rng.range(10_000, 999_999)
        ),
        6 => {
            format!("reserved {} units of SKU-{} in warehouse eu-west-{}", rng.range(1, 9), rng.hex(8), rng.range(1, 3))
        }
        _ => format!(
            "recommendations computed for session {} in {} ms using model v{}",
            rng.hex(16),
            rng.range(2, 120),
            rng.range(1, 4)
        ),
    }
}

pub(crate) fn log_batch(seed: u64, now: u64) -> ExportLogsServiceRequest {
    let mut rng = Rng::new(seed);
    let mut by_service: Vec<Vec<LogRecord>> = (0..SERVICES.len()).map(|_| Vec::new()).collect();
    let mut context: (Vec<u8>, Vec<u8>, u64) = (Vec::new(), Vec::new(), 0);
    for _ in 0..ITEMS_PER_BATCH {
        // Records come in runs belonging to one request (same trace), 75% with trace context.
        if context.2 == 0 {
            let traced = rng.percent(75);
            context = (if traced { rng.id(16) } else { Vec::new() }, Vec::new(), rng.range(1, 8));
        }
        context.2 -= 1;
        let span_id = if context.0.is_empty() { Vec::new() } else { rng.id(8) };
        let svc = rng.below(SERVICES.len() as u64) as usize;
        let (number, text) = match rng.below(100) {
            0..=11 => (5, "DEBUG"),
            12..=81 => (9, "INFO"),
            82..=93 => (13, "WARN"),
            _ => (17, "ERROR"),
        };
        let t = now - rng.range(1_000_000_000, 30_000_000_000);
        let f = *rng.pick(&FUNCTIONS);
        let mut attributes = vec![
            s("code.function.name", f.split_once('.').map_or(f, |(_, name)| name)),
            s("thread.name", format!("worker-{}", rng.below(16))),
        ];
        if rng.percent(25) {
            attributes.push(s("http.route", rng.pick(&ROUTES).1));
        }
        by_service[svc].push(LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: t + rng.range(10_000, 5_000_000),
            severity_number: number,
            severity_text: text.into(),
            body: Some(AnyValue { value: Some(any_value::Value::StringValue(log_body(&mut rng))) }),
            attributes,
            flags: if context.0.is_empty() { 0 } else { 1 },
            trace_id: context.0.clone(),
            span_id,
            ..Default::default()
        });
    }
    ExportLogsServiceRequest {
        resource_logs: by_service
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(svc, log_records)| ResourceLogs {
                resource: Some(resource(svc)),
                scope_logs: vec![ScopeLogs { scope: Some(scope(svc)), log_records, schema_url: String::new() }],
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            })
            .collect(),
    }
}

// --- metrics -------------------------------------------------------------------------------

/// Time between two exports of the fleet (the SDKs' periodic reader interval).
pub(crate) const METRIC_INTERVAL_NS: u64 = 10_000_000_000;
/// Instances (pods) per service.
pub(crate) const REPLICAS: usize = 3;
/// Length of the hex fleet tag that ends every `service.instance.id` (`000000` as generated), so
/// a benchmark can give each client its own series by rewriting it in the encoded request.
pub(crate) const FLEET_TAG_LEN: usize = 6;

/// `http.server.request.duration` and other HTTP duration histograms: the semantic conventions'
/// advised boundaries (seconds).
const HTTP_BOUNDS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
/// The SDKs' default boundaries, for histograms without advice (milliseconds).
const DEFAULT_BOUNDS: [f64; 15] =
    [0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0];
/// Largest bucket count of exponential histograms (the SDKs' default).
const EXP_MAX_BUCKETS: usize = 160;

/// A sample from a log-normal distribution with median `median` and shape `sigma`.
fn lognormal(rng: &mut Rng, median: f64, sigma: f64) -> f64 {
    let unit = |r: &mut Rng| (r.next() >> 11) as f64 / (1u64 << 53) as f64;
    // Irwin-Hall approximation of a standard normal.
    let z = ((0..4).map(|_| unit(rng)).sum::<f64>() - 2.0) * 3f64.sqrt();
    median * (sigma * z).exp()
}

/// The running state of one series, advanced once per export interval.
enum State {
    /// Monotonic cumulative sum, growing by about `rate` per interval.
    Counter { v: f64, rate: f64, int: bool },
    /// Non-monotonic sum or gauge: a random walk within [lo, hi].
    Walk { v: f64, lo: f64, hi: f64, int: bool },
    /// Cumulative explicit-bucket histogram of log-normal samples.
    Hist { bounds: &'static [f64], counts: Vec<u64>, count: u64, sum: f64, min: f64, max: f64, dist: Dist },
    /// Cumulative base-2 exponential histogram (positive values only).
    Exp { scale: i32, offset: i32, counts: Vec<u64>, count: u64, sum: f64, min: f64, max: f64, dist: Dist },
    /// Cumulative count and sum with the quantiles of the last interval's samples.
    Summary { count: u64, sum: f64, dist: Dist },
}

/// Samples per interval and their log-normal distribution.
#[derive(Clone, Copy)]
struct Dist {
    per_interval: u64,
    median: f64,
    sigma: f64,
    exemplars: bool,
}

struct Series {
    attrs: Vec<KeyValue>,
    state: State,
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Gauge,
    Sum { monotonic: bool },
    Hist,
    Exp,
    Summary,
}

struct MetricDef {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    shape: Shape,
    series: Vec<Series>,
}

struct ScopeDef {
    scope: InstrumentationScope,
    metrics: Vec<MetricDef>,
}

struct Instance {
    resource: Resource,
    start: u64,
    scopes: Vec<ScopeDef>,
}

/// Exponential-histogram bucket index of `v` at `scale` (upper-inclusive buckets, as the SDKs).
fn exp_index(v: f64, scale: i32) -> i32 {
    ((v.log2() * 2f64.powi(scale)).ceil() as i32) - 1
}

impl State {
    fn counter(rate: f64, int: bool) -> State {
        State::Counter { v: 0.0, rate, int }
    }
    fn walk(rng: &mut Rng, lo: f64, hi: f64, int: bool) -> State {
        let v = lo + (hi - lo) * rng.below(1000) as f64 / 1000.0;
        State::Walk { v, lo, hi, int }
    }
    fn hist(bounds: &'static [f64], dist: Dist) -> State {
        State::Hist { bounds, counts: vec![0; bounds.len() + 1], count: 0, sum: 0.0, min: f64::MAX, max: 0.0, dist }
    }
    fn exp(dist: Dist) -> State {
        State::Exp { scale: 20, offset: 0, counts: Vec::new(), count: 0, sum: 0.0, min: f64::MAX, max: 0.0, dist }
    }

    /// Advances the state by one interval; returns this interval's samples (for exemplars and
    /// summary quantiles).
    fn advance(&mut self, rng: &mut Rng) -> Vec<f64> {
        match self {
            State::Counter { v, rate, int } => {
                let inc = *rate * (0.5 + rng.below(1000) as f64 / 1000.0);
                *v += if *int { inc.round() } else { inc };
                Vec::new()
            }
            State::Walk { v, lo, hi, int } => {
                let step = (*hi - *lo) * (rng.below(201) as f64 - 100.0) / 2000.0;
                *v = (*v + step).clamp(*lo, *hi);
                if *int {
                    *v = v.round();
                }
                Vec::new()
            }
            State::Hist { bounds, counts, count, sum, min, max, dist } => {
                let samples = dist.sample(rng);
                for &x in &samples {
                    counts[bounds.partition_point(|b| *b < x)] += 1;
                    *count += 1;
                    *sum += x;
                    *min = min.min(x);
                    *max = max.max(x);
                }
                samples
            }
            State::Exp { scale, offset, counts, count, sum, min, max, dist } => {
                let samples = dist.sample(rng);
                for &x in &samples {
                    *count += 1;
                    *sum += x;
                    *min = min.min(x);
                    *max = max.max(x);
                    // Downscale (merging bucket pairs) until the new index fits in the limit.
                    loop {
                        let idx = exp_index(x, *scale);
                        let lo = if counts.is_empty() { idx } else { (*offset).min(idx) };
                        let hi = if counts.is_empty() { idx } else { (*offset + counts.len() as i32 - 1).max(idx) };
                        if (hi - lo) as usize >= EXP_MAX_BUCKETS {
                            let mut merged: Vec<u64> = Vec::new();
                            let new_offset = *offset >> 1;
                            for (i, c) in counts.iter().enumerate() {
                                let j = (((*offset + i as i32) >> 1) - new_offset) as usize;
                                if merged.len() <= j {
                                    merged.resize(j + 1, 0);
                                }
                                merged[j] += c;
                            }
                            *counts = merged;
                            *offset = new_offset;
                            *scale -= 1;
                            continue;
                        }
                        if counts.is_empty() {
                            *offset = idx;
                        } else if idx < *offset {
                            let mut grown = vec![0; (*offset - idx) as usize];
                            grown.extend_from_slice(counts);
                            *counts = grown;
                            *offset = idx;
                        }
                        let j = (idx - *offset) as usize;
                        if counts.len() <= j {
                            counts.resize(j + 1, 0);
                        }
                        counts[j] += 1;
                        break;
                    }
                }
                samples
            }
            State::Summary { count, sum, dist } => {
                let samples = dist.sample(rng);
                *count += samples.len() as u64;
                *sum += samples.iter().sum::<f64>();
                samples
            }
        }
    }
}

impl Dist {
    fn new(per_interval: u64, median: f64, sigma: f64) -> Dist {
        Dist { per_interval, median, sigma, exemplars: false }
    }
    fn with_exemplars(mut self) -> Dist {
        self.exemplars = true;
        self
    }
    fn sample(&self, rng: &mut Rng) -> Vec<f64> {
        let n = rng.range(self.per_interval / 2, self.per_interval * 3 / 2);
        (0..n).map(|_| lognormal(rng, self.median, self.sigma)).collect()
    }
}

fn series(attrs: Vec<KeyValue>, state: State) -> Series {
    Series { attrs, state }
}

fn metric(
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    shape: Shape,
    series: Vec<Series>,
) -> MetricDef {
    MetricDef { name, unit, description, shape, series }
}

/// Routes each service serves, and whom it calls over HTTP.
const SERVED: [&[usize]; 6] = [&[0, 1, 2, 3, 4], &[3], &[1, 2], &[5], &[6], &[4]];
const CALLS: [&[usize]; 6] = [&[2, 1, 5, 4], &[2, 3, 4], &[], &[], &[], &[]];
/// (db.system, operation, collection) per service.
const DB_OPS: [&[(&str, &str, &str)]; 6] = [
    &[],
    &[("postgresql", "SELECT", "orders"), ("postgresql", "INSERT", "orders")],
    &[("redis", "GET", ""), ("redis", "SET", "")],
    &[("postgresql", "INSERT", "payments"), ("postgresql", "SELECT", "payments")],
    &[("postgresql", "SELECT", "stock_levels"), ("postgresql", "UPDATE", "stock_levels")],
    &[("postgresql", "SELECT", "products")],
];

/// Instrumentation scope names per SDK language: (HTTP, database, runtime).
fn scope_names(lang: &str) -> (&'static str, &'static str, &'static str) {
    match lang {
        "nodejs" => (
            "@opentelemetry/instrumentation-http",
            "@opentelemetry/instrumentation-pg",
            "@opentelemetry/instrumentation-runtime-node",
        ),
        "go" => (
            "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
            "github.com/XSAM/otelsql",
            "go.opentelemetry.io/contrib/instrumentation/runtime",
        ),
        "dotnet" => {
            ("Microsoft.AspNetCore.Hosting", "OpenTelemetry.Instrumentation.StackExchangeRedis", "System.Runtime")
        }
        "java" => {
            ("io.opentelemetry.tomcat-10.0", "io.opentelemetry.jdbc", "io.opentelemetry.runtime-telemetry-java17")
        }
        "rust" => ("opentelemetry-instrumentation-tower", "sqlx", "opentelemetry-process"),
        _ => (
            "opentelemetry.instrumentation.flask",
            "opentelemetry.instrumentation.psycopg2",
            "opentelemetry.instrumentation.system_metrics",
        ),
    }
}

fn instance(svc: usize, replica: usize, base: u64, rng: &mut Rng) -> Instance {
    let (name, lang, version) = SERVICES[svc];
    let node = rng.range(1, 9);
    let instance_id = format!("{name}-{}-{}", rng.hex(8), "0".repeat(FLEET_TAG_LEN));
    let resource = Resource {
        attributes: vec![
            s("service.name", name),
            s("service.namespace", "shop"),
            s("service.version", version),
            s("service.instance.id", instance_id),
            s("host.name", format!("node-{node}")),
            s("k8s.namespace.name", "shop"),
            s("k8s.pod.name", format!("{name}-{}-{}", rng.hex(10), rng.hex(5))),
            s("k8s.node.name", format!("node-{node}")),
            s("deployment.environment.name", "production"),
            s("telemetry.sdk.name", "opentelemetry"),
            s("telemetry.sdk.language", lang),
            s("telemetry.sdk.version", "1.38.0"),
        ],
        ..Default::default()
    };
    let scope_of = |n: &str| InstrumentationScope { name: n.into(), version: "0.52.0".into(), ..Default::default() };
    let (http_scope, db_scope, runtime_scope) = scope_names(lang);
    let load = 1.0 + replica as f64 * 0.2;

    // HTTP instrumentation.
    let mut http = Vec::new();
    let mut server = Vec::new();
    let mut active = Vec::new();
    for &r in SERVED[svc] {
        let (method, route) = ROUTES[r];
        let statuses: &[i64] = if method == "GET" { &[200, 404, 500] } else { &[200, 500] };
        for &st in statuses {
            let per = if st == 200 { 200 } else { 4 };
            server.push(series(
                vec![
                    s("http.request.method", method),
                    s("http.route", route),
                    i("http.response.status_code", st),
                    s("url.scheme", "http"),
                    s("network.protocol.version", "1.1"),
                ],
                State::hist(&HTTP_BOUNDS, Dist::new(per, 0.04 * load, 0.8).with_exemplars()),
            ));
        }
        if !active.iter().any(|a: &Series| a.attrs[0].value == s("", method).value) {
            active.push(series(
                vec![s("http.request.method", method), s("url.scheme", "http")],
                State::walk(rng, 0.0, 40.0, true),
            ));
        }
    }
    http.push(metric("http.server.request.duration", "s", "Duration of HTTP server requests.", Shape::Hist, server));
    http.push(metric(
        "http.server.active_requests",
        "{request}",
        "Number of active HTTP server requests.",
        Shape::Sum { monotonic: false },
        active,
    ));
    let mut client = Vec::new();
    for &target in CALLS[svc] {
        for st in [200, 500] {
            client.push(series(
                vec![
                    s("http.request.method", if target == 3 { "POST" } else { "GET" }),
                    s("server.address", format!("{}.shop.svc", SERVICES[target].0)),
                    i("server.port", 8080),
                    i("http.response.status_code", st),
                    s("network.protocol.version", "1.1"),
                ],
                State::hist(&HTTP_BOUNDS, Dist::new(if st == 200 { 120 } else { 3 }, 0.03, 0.9).with_exemplars()),
            ));
        }
    }
    if !client.is_empty() {
        http.push(metric(
            "http.client.request.duration",
            "s",
            "Duration of HTTP client requests.",
            Shape::Hist,
            client,
        ));
    }
    let mut scopes = vec![ScopeDef { scope: scope_of(http_scope), metrics: http }];

    // Database client.
    if !DB_OPS[svc].is_empty() {
        let mut ops = Vec::new();
        for &(system, op, collection) in DB_OPS[svc] {
            let mut attrs = vec![
                s("db.system", system),
                s("db.operation.name", op),
                s("server.address", format!("{system}.shop.svc")),
            ];
            if !collection.is_empty() {
                attrs.push(s("db.collection.name", collection));
            }
            let median = if system == "redis" { 0.0004 } else { 0.003 };
            ops.push(series(attrs, State::exp(Dist::new(150, median, 1.0))));
        }
        let mut db = vec![metric(
            "db.client.operation.duration",
            "s",
            "Duration of database client operations.",
            Shape::Exp,
            ops,
        )];
        if DB_OPS[svc][0].0 == "postgresql" {
            let pool = "postgresql://postgres.shop.svc:5432/shop".to_string();
            db.push(metric(
                "db.client.connections.usage",
                "{connection}",
                "The number of connections that are currently in state described by the state attribute.",
                Shape::Sum { monotonic: false },
                vec![
                    series(vec![s("pool.name", pool.clone()), s("state", "idle")], State::walk(rng, 0.0, 10.0, true)),
                    series(vec![s("pool.name", pool), s("state", "used")], State::walk(rng, 0.0, 10.0, true)),
                ],
            ));
        }
        scopes.push(ScopeDef { scope: scope_of(db_scope), metrics: db });
    }

    // Process and runtime.
    let mode = |m: &str| vec![s("cpu.mode", m)];
    let mut rt = vec![
        metric(
            "process.cpu.time",
            "s",
            "Total CPU seconds broken down by different CPU modes.",
            Shape::Sum { monotonic: true },
            vec![
                series(mode("user"), State::counter(2.5 * load, false)),
                series(mode("system"), State::counter(0.6, false)),
            ],
        ),
        metric(
            "process.cpu.utilization",
            "1",
            "Difference in process.cpu.time since the last measurement, divided by the elapsed time and number of CPUs available to the process.",
            Shape::Gauge,
            vec![
                series(mode("user"), State::walk(rng, 0.05, 0.6, false)),
                series(mode("system"), State::walk(rng, 0.01, 0.1, false)),
            ],
        ),
        metric(
            "process.memory.usage",
            "By",
            "The amount of physical memory in use.",
            Shape::Sum { monotonic: false },
            vec![series(Vec::new(), State::walk(rng, 80e6, 400e6, true))],
        ),
        metric(
            "process.memory.virtual",
            "By",
            "The amount of committed virtual memory.",
            Shape::Sum { monotonic: false },
            vec![series(Vec::new(), State::walk(rng, 1e9, 2e9, true))],
        ),
        metric(
            "process.thread.count",
            "{thread}",
            "Process threads count.",
            Shape::Sum { monotonic: false },
            vec![series(Vec::new(), State::walk(rng, 8.0, 64.0, true))],
        ),
    ];
    let walk_set = |rng: &mut Rng, key: &str, values: &[&str], lo: f64, hi: f64| -> Vec<Series> {
        values.iter().map(|v| series(vec![s(key, *v)], State::walk(rng, lo, hi, true))).collect()
    };
    match lang {
        "java" => {
            let pools = [
                ("heap", "G1 Eden Space"),
                ("heap", "G1 Old Gen"),
                ("heap", "G1 Survivor Space"),
                ("non_heap", "Metaspace"),
                ("non_heap", "CodeCache"),
                ("non_heap", "Compressed Class Space"),
            ];
            for (name, description) in [
                ("jvm.memory.used", "Measure of memory used."),
                ("jvm.memory.committed", "Measure of memory committed."),
            ] {
                let v = pools
                    .iter()
                    .map(|(t, p)| {
                        series(
                            vec![s("jvm.memory.type", *t), s("jvm.memory.pool.name", *p)],
                            State::walk(rng, 1e6, 300e6, true),
                        )
                    })
                    .collect();
                rt.push(metric(name, "By", description, Shape::Sum { monotonic: false }, v));
            }
            rt.push(metric(
                "jvm.gc.duration",
                "s",
                "Duration of JVM garbage collection actions.",
                Shape::Hist,
                vec![
                    series(
                        vec![s("jvm.gc.name", "G1 Young Generation"), s("jvm.gc.action", "end of minor GC")],
                        State::hist(&[0.01, 0.1, 1.0, 10.0], Dist::new(6, 0.008, 0.5)),
                    ),
                    series(
                        vec![s("jvm.gc.name", "G1 Old Generation"), s("jvm.gc.action", "end of major GC")],
                        State::hist(&[0.01, 0.1, 1.0, 10.0], Dist::new(1, 0.2, 0.5)),
                    ),
                ],
            ));
            let mut threads = Vec::new();
            for daemon in [true, false] {
                for state in ["runnable", "waiting", "timed_waiting"] {
                    threads.push(series(
                        vec![
                            kv("jvm.thread.daemon", any_value::Value::BoolValue(daemon)),
                            s("jvm.thread.state", state),
                        ],
                        State::walk(rng, 1.0, 40.0, true),
                    ));
                }
            }
            rt.push(metric(
                "jvm.thread.count",
                "{thread}",
                "Number of executing platform threads.",
                Shape::Sum { monotonic: false },
                threads,
            ));
            rt.push(metric(
                "jvm.class.loaded",
                "{class}",
                "Number of classes loaded since JVM start.",
                Shape::Sum { monotonic: true },
                vec![series(Vec::new(), State::counter(3.0, true))],
            ));
            rt.push(metric(
                "jvm.cpu.recent_utilization",
                "1",
                "Recent CPU utilization for the process as reported by the JVM.",
                Shape::Gauge,
                vec![series(Vec::new(), State::walk(rng, 0.05, 0.7, false))],
            ));
        }
        "go" => {
            rt.push(metric(
                "go.memory.used",
                "By",
                "Memory used by the Go runtime.",
                Shape::Sum { monotonic: false },
                walk_set(rng, "go.memory.type", &["stack", "other"], 1e6, 90e6),
            ));
            rt.push(metric(
                "go.goroutine.count",
                "{goroutine}",
                "Count of live goroutines.",
                Shape::Sum { monotonic: false },
                vec![series(Vec::new(), State::walk(rng, 20.0, 400.0, true))],
            ));
            rt.push(metric(
                "go.memory.allocated",
                "By",
                "Memory allocated to the heap by the application.",
                Shape::Sum { monotonic: true },
                vec![series(Vec::new(), State::counter(40e6, true))],
            ));
            rt.push(metric(
                "go.memory.gc.goal",
                "By",
                "Heap size target for the end of the GC cycle.",
                Shape::Sum { monotonic: false },
                vec![series(Vec::new(), State::walk(rng, 8e6, 64e6, true))],
            ));
            rt.push(metric(
                "go_gc_duration_seconds",
                "s",
                "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.",
                Shape::Summary,
                vec![series(Vec::new(), State::Summary { count: 0, sum: 0.0, dist: Dist::new(8, 0.0002, 0.6) })],
            ));
        }
        "dotnet" => {
            rt.push(metric(
                "dotnet.gc.collections",
                "{collection}",
                "The number of garbage collections that have occurred since the process has started.",
                Shape::Sum { monotonic: true },
                ["gen0", "gen1", "gen2"]
                    .iter()
                    .enumerate()
                    .map(|(g, gen_name)| {
                        series(
                            vec![s("dotnet.gc.heap.generation", *gen_name)],
                            State::counter(8.0 / (1 + 4 * g) as f64, true),
                        )
                    })
                    .collect(),
            ));
            rt.push(metric(
                "dotnet.gc.heap.total_allocated",
                "By",
                "The approximate number of bytes allocated on the managed GC heap since the process has started.",
                Shape::Sum { monotonic: true },
                vec![series(Vec::new(), State::counter(50e6, true))],
            ));
            rt.push(metric(
                "dotnet.gc.last_collection.heap.size",
                "By",
                "The managed GC heap size (including fragmentation), as observed during the latest garbage collection.",
                Shape::Sum { monotonic: false },
                walk_set(rng, "dotnet.gc.heap.generation", &["gen0", "gen1", "gen2", "loh", "poh"], 1e5, 80e6),
            ));
            rt.push(metric(
                "dotnet.thread_pool.thread.count",
                "{thread}",
                "The number of thread pool threads that currently exist.",
                Shape::Sum { monotonic: false },
                vec![series(Vec::new(), State::walk(rng, 2.0, 32.0, true))],
            ));
            rt.push(metric(
                "dotnet.thread_pool.queue.length",
                "{work_item}",
                "The number of work items that are currently queued to be processed by the thread pool.",
                Shape::Sum { monotonic: false },
                vec![series(Vec::new(), State::walk(rng, 0.0, 20.0, true))],
            ));
            rt.push(metric(
                "dotnet.exceptions",
                "{exception}",
                "The number of exceptions that have been thrown in managed code.",
                Shape::Sum { monotonic: true },
                vec![
                    series(vec![s("error.type", "System.TimeoutException")], State::counter(0.5, true)),
                    series(vec![s("error.type", "System.Net.Http.HttpRequestException")], State::counter(1.0, true)),
                ],
            ));
        }
        "nodejs" => {
            let delays = [
                ("nodejs.eventloop.delay.min", 0.001),
                ("nodejs.eventloop.delay.max", 0.05),
                ("nodejs.eventloop.delay.mean", 0.011),
                ("nodejs.eventloop.delay.p50", 0.010),
                ("nodejs.eventloop.delay.p90", 0.014),
                ("nodejs.eventloop.delay.p99", 0.03),
            ];
            for (name, v) in delays {
                rt.push(metric(
                    name,
                    "s",
                    "Event loop delay.",
                    Shape::Gauge,
                    vec![series(Vec::new(), State::walk(rng, v * 0.5, v * 1.5, false))],
                ));
            }
            rt.push(metric(
                "v8js.memory.heap.used",
                "By",
                "Heap Memory size allocated.",
                Shape::Gauge,
                walk_set(
                    rng,
                    "v8js.heap.space.name",
                    &["new_space", "old_space", "code_space", "large_object_space"],
                    1e6,
                    120e6,
                ),
            ));
            rt.push(metric(
                "v8js.gc.duration",
                "s",
                "Garbage collection duration.",
                Shape::Hist,
                ["major", "minor", "incremental"]
                    .iter()
                    .map(|t| {
                        series(
                            vec![s("v8js.gc.type", *t)],
                            State::hist(&[0.01, 0.1, 1.0, 10.0], Dist::new(5, 0.004, 0.6)),
                        )
                    })
                    .collect(),
            ));
        }
        "python" => {
            rt.push(metric(
                "process.runtime.cpython.gc_count",
                "{collection}",
                "Runtime cpython GC count.",
                Shape::Sum { monotonic: true },
                ["0", "1", "2"].iter().map(|g| series(vec![s("count", *g)], State::counter(10.0, true))).collect(),
            ));
            rt.push(metric(
                "process.runtime.cpython.memory",
                "By",
                "Runtime cpython memory.",
                Shape::Sum { monotonic: false },
                walk_set(rng, "type", &["rss", "vms"], 50e6, 600e6),
            ));
            rt.push(metric(
                "process.runtime.cpython.thread_count",
                "{thread}",
                "Runtime active threads count.",
                Shape::Sum { monotonic: false },
                vec![series(Vec::new(), State::walk(rng, 4.0, 16.0, true))],
            ));
        }
        _ => {}
    }
    scopes.push(ScopeDef { scope: scope_of(runtime_scope), metrics: rt });

    // Application metrics.
    let app = match svc {
        1 => vec![metric("app.orders.placed", "{order}", "Orders placed.", Shape::Sum { monotonic: true }, {
            let mut v = Vec::new();
            for method in ["card", "paypal"] {
                for currency in ["USD", "EUR"] {
                    v.push(series(
                        vec![s("app.payment.method", method), s("app.currency", currency)],
                        State::counter(30.0, true),
                    ));
                }
            }
            v
        })],
        3 => vec![metric(
            "app.payment.amount",
            "{USD}",
            "Amount charged per payment.",
            Shape::Hist,
            vec![
                series(vec![s("app.payment.method", "card")], State::hist(&DEFAULT_BOUNDS, Dist::new(60, 80.0, 0.9))),
                series(vec![s("app.payment.method", "paypal")], State::hist(&DEFAULT_BOUNDS, Dist::new(20, 80.0, 0.9))),
            ],
        )],
        _ => Vec::new(),
    };
    if !app.is_empty() {
        scopes.push(ScopeDef { scope: scope_of(&format!("shop.{name}")), metrics: app });
    }
    Instance { resource, start: base - rng.range(3_600, 48 * 3_600) * 1_000_000_000, scopes }
}

/// The fleet of service instances, exporting one request per interval. Deterministic from the
/// seed: the same seed and base time give the same sequence of requests.
pub(crate) struct MetricFleet {
    instances: Vec<Instance>,
    rng: Rng,
    /// Time of the next export.
    next: u64,
}

impl MetricFleet {
    /// The fleet; the first export is at `base` (nanoseconds since the epoch), the next ones
    /// every [`METRIC_INTERVAL_NS`].
    pub(crate) fn new(seed: u64, base: u64) -> MetricFleet {
        let mut rng = Rng::new(seed);
        let instances = (0..SERVICES.len())
            .flat_map(|svc| (0..REPLICAS).map(move |r| (svc, r)))
            .map(|(svc, r)| instance(svc, r, base, &mut rng))
            .collect();
        MetricFleet { instances, rng, next: base }
    }

    /// Every `service.instance.id` of the fleet, each ending in [`FLEET_TAG_LEN`] zeros.
    pub(crate) fn instance_ids(&self) -> Vec<String> {
        self.instances
            .iter()
            .filter_map(|i| i.resource.attributes.iter().find(|kv| kv.key == "service.instance.id"))
            .filter_map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(v)) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    /// The next export interval of every instance, as a collector batching them would send it.
    pub(crate) fn next_request(&mut self) -> ExportMetricsServiceRequest {
        let t = self.next;
        self.next += METRIC_INTERVAL_NS;
        let rng = &mut self.rng;
        let resource_metrics = self
            .instances
            .iter_mut()
            .map(|inst| ResourceMetrics {
                resource: Some(inst.resource.clone()),
                scope_metrics: inst
                    .scopes
                    .iter_mut()
                    .map(|sc| ScopeMetrics {
                        scope: Some(sc.scope.clone()),
                        metrics: sc.metrics.iter_mut().map(|m| export_metric(m, inst.start, t, rng)).collect(),
                        schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                    })
                    .collect(),
                schema_url: String::new(),
            })
            .collect();
        ExportMetricsServiceRequest { resource_metrics }
    }
}

fn exemplars(rng: &mut Rng, samples: &[f64], t: u64, dist: &Dist) -> Vec<Exemplar> {
    if !dist.exemplars || samples.is_empty() {
        return Vec::new();
    }
    // Trace-based filter with a small reservoir: one or two sampled measurements.
    (0..rng.range(1, 2).min(samples.len() as u64))
        .map(|_| Exemplar {
            time_unix_nano: t - rng.below(METRIC_INTERVAL_NS),
            value: Some(exemplar::Value::AsDouble(*rng.pick(samples))),
            span_id: rng.id(8),
            trace_id: rng.id(16),
            filtered_attributes: Vec::new(),
        })
        .collect()
}

fn export_metric(m: &mut MetricDef, start: u64, t: u64, rng: &mut Rng) -> Metric {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let mut numbers = Vec::new();
    let mut hists = Vec::new();
    let mut exps = Vec::new();
    let mut summaries = Vec::new();
    for se in &mut m.series {
        let samples = se.state.advance(rng);
        let attributes = se.attrs.clone();
        match &se.state {
            State::Counter { v, int, .. } | State::Walk { v, int, .. } => numbers.push(NumberDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: t,
                value: Some(if *int {
                    number_data_point::Value::AsInt(*v as i64)
                } else {
                    number_data_point::Value::AsDouble(*v)
                }),
                ..Default::default()
            }),
            State::Hist { counts, count, sum, min, max, dist, bounds } => hists.push(HistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: t,
                count: *count,
                sum: Some(*sum),
                bucket_counts: counts.clone(),
                explicit_bounds: bounds.to_vec(),
                exemplars: exemplars(rng, &samples, t, dist),
                flags: 0,
                min: (*count > 0).then_some(*min),
                max: (*count > 0).then_some(*max),
            }),
            State::Exp { scale, offset, counts, count, sum, min, max, dist } => {
                exps.push(ExponentialHistogramDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: t,
                    count: *count,
                    sum: Some(*sum),
                    scale: *scale,
                    zero_count: 0,
                    positive: Some(Buckets { offset: *offset, bucket_counts: counts.clone() }),
                    negative: Some(Buckets::default()),
                    flags: 0,
                    exemplars: exemplars(rng, &samples, t, dist),
                    min: (*count > 0).then_some(*min),
                    max: (*count > 0).then_some(*max),
                    zero_threshold: 0.0,
                })
            }
            State::Summary { count, sum, .. } => {
                let mut sorted = samples;
                sorted.sort_by(f64::total_cmp);
                let q = |p: f64| {
                    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0.0)
                };
                summaries.push(SummaryDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: t,
                    count: *count,
                    sum: *sum,
                    quantile_values: [0.0, 0.25, 0.5, 0.75, 1.0]
                        .iter()
                        .map(|&p| ValueAtQuantile { quantile: p, value: q(p) })
                        .collect(),
                    flags: 0,
                })
            }
        }
    }
    let data = match m.shape {
        Shape::Gauge => Data::Gauge(Gauge { data_points: numbers }),
        Shape::Sum { monotonic } => {
            Data::Sum(Sum { data_points: numbers, aggregation_temporality: cumulative, is_monotonic: monotonic })
        }
        Shape::Hist => Data::Histogram(Histogram { data_points: hists, aggregation_temporality: cumulative }),
        Shape::Exp => {
            Data::ExponentialHistogram(ExponentialHistogram { data_points: exps, aggregation_temporality: cumulative })
        }
        Shape::Summary => Data::Summary(Summary { data_points: summaries }),
    };
    Metric {
        name: m.name.into(),
        description: m.description.into(),
        unit: m.unit.into(),
        data: Some(data),
        metadata: Vec::new(),
    }
}
