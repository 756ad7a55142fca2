//! Deterministic OTLP payload generation shared by the benchmarks: seeded xorshift, traces of
//! 5-50 spans over 6 services with semantic-convention attributes (~500 B per span), log records
//! of ~200 B with trace context.
#![allow(dead_code)]

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status as SpanStatus};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const ITEMS_PER_BATCH: usize = 512;

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
