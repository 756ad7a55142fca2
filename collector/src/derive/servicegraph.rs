//! The service graph, as the OpenTelemetry Collector's `servicegraph` connector computes it.
//!
//! A client span (kind CLIENT or PRODUCER) waits under (trace id, its span id); a server span
//! (SERVER or CONSUMER) under (trace id, its parent span id), or, for a consumer without a
//! parent, under each of its links. When both sides of one key are there, the edge
//! client service -> server service is counted. A client span with `db.system(.name)` completes
//! at once as a `database` edge to that system. Unpaired sides wait at most `wait` and at most
//! `max_pending` keys wait at once; what expires or does not fit is counted, never blocks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum, metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use super::facts::SpanFacts;
use super::series::{CUMULATIVE, Hist, counter_point, overflow_attributes, string_kv};

/// Scope name of the service graph metrics.
pub(crate) const SCOPE: &str = "obsbox.servicegraph";
pub(crate) const REQUEST_TOTAL: &str = "traces_service_graph_request_total";
pub(crate) const REQUEST_FAILED_TOTAL: &str = "traces_service_graph_request_failed_total";
pub(crate) const SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
pub(crate) const CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";
/// The connector's default latency bounds, in seconds.
pub(crate) const LATENCY_BOUNDS_S: [f64; 16] =
    [0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0];

/// What kind of connection an edge is (the `connection_type` attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Connection {
    /// Client -> server (RPC, HTTP): `""`.
    Direct,
    /// Producer -> consumer: `"messaging_system"`.
    Messaging,
    /// Client span with a database system: `"database"`.
    Database,
}

impl Connection {
    fn as_str(self) -> &'static str {
        match self {
            Connection::Direct => "",
            Connection::Messaging => "messaging_system",
            Connection::Database => "database",
        }
    }
}

/// How pairing ended, for the self-metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EdgeStats {
    /// Client and server side paired.
    pub(crate) paired: u64,
    /// Database edges (client side only).
    pub(crate) database: u64,
    /// A side waited `wait` without its partner.
    pub(crate) expired: u64,
    /// A side arrived while `max_pending` keys were waiting.
    pub(crate) dropped: u64,
    /// Edges counted in the overflow series.
    pub(crate) overflow: u64,
}

#[derive(Clone, Debug)]
struct Side {
    service: Arc<str>,
    seconds: f64,
    error: bool,
    messaging: bool,
    span: ([u8; 16], [u8; 8], u64),
}

#[derive(Debug)]
struct Pending {
    client: Option<Side>,
    server: Option<Side>,
    expires: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct EdgeKey {
    client: Arc<str>,
    server: Arc<str>,
    connection: Connection,
}

#[derive(Debug)]
struct Edge {
    start_ns: u64,
    total: u64,
    failed: u64,
    server: Hist,
    client: Hist,
}

impl Edge {
    fn new(start_ns: u64) -> Self {
        Edge {
            start_ns,
            total: 0,
            failed: 0,
            server: Hist::new(&LATENCY_BOUNDS_S),
            client: Hist::new(&LATENCY_BOUNDS_S),
        }
    }
}

type PairKey = ([u8; 16], [u8; 8]);

/// The pairing store and the cumulative edge metrics.
#[derive(Debug)]
pub(crate) struct ServiceGraph {
    pending: HashMap<PairKey, Pending>,
    /// Keys in insertion order with their expiry; entries of keys already paired are skipped.
    expiry: VecDeque<(Instant, PairKey)>,
    wait: Duration,
    max_pending: usize,
    edges: HashMap<EdgeKey, Edge>,
    overflow: Option<Edge>,
    max_series: usize,
    stats: EdgeStats,
}

impl ServiceGraph {
    pub(crate) fn new(wait: Duration, max_pending: usize, max_series: usize) -> Self {
        ServiceGraph {
            pending: HashMap::new(),
            expiry: VecDeque::new(),
            wait,
            max_pending,
            edges: HashMap::new(),
            overflow: None,
            max_series,
            stats: EdgeStats::default(),
        }
    }

    /// Takes the span's side of its edge(s). `now` drives expiry, `now_ns` is the wall clock.
    pub(crate) fn record(&mut self, f: &SpanFacts, now: Instant, now_ns: u64) {
        let side = |messaging| Side {
            service: f.service.clone(),
            seconds: f.duration_ns as f64 / 1e9,
            error: f.status == StatusCode::Error,
            messaging,
            span: (f.trace_id, f.span_id, f.end_ns),
        };
        match f.kind {
            SpanKind::Client | SpanKind::Producer => {
                let client = side(f.kind == SpanKind::Producer);
                if let Some(db) = f.db_system.as_deref().filter(|_| f.kind == SpanKind::Client) {
                    // As the connector: the database is the server, the client span both latencies.
                    let server = Side { service: Arc::from(db), ..client.clone() };
                    self.stats.database += 1;
                    self.complete(client, server, Connection::Database, now_ns);
                    return;
                }
                self.put((f.trace_id, f.span_id), client, true, now, now_ns);
            }
            SpanKind::Server | SpanKind::Consumer => {
                let server = side(f.kind == SpanKind::Consumer);
                match f.parent_span_id {
                    Some(parent) => self.put((f.trace_id, parent), server, false, now, now_ns),
                    None => {
                        for link in &f.links {
                            self.put(*link, server.clone(), false, now, now_ns);
                        }
                    }
                }
            }
            SpanKind::Internal | SpanKind::Unspecified => {}
        }
    }

    fn put(&mut self, key: PairKey, side: Side, is_client: bool, now: Instant, now_ns: u64) {
        if let Some(p) = self.pending.get_mut(&key) {
            let slot = if is_client { &mut p.client } else { &mut p.server };
            *slot = Some(side);
            if p.client.is_some() && p.server.is_some() {
                let p = self.pending.remove(&key).expect("present");
                let (client, server) = (p.client.expect("client"), p.server.expect("server"));
                let connection =
                    if client.messaging || server.messaging { Connection::Messaging } else { Connection::Direct };
                self.stats.paired += 1;
                self.complete(client, server, connection, now_ns);
            }
            return;
        }
        if self.pending.len() >= self.max_pending {
            self.stats.dropped += 1;
            return;
        }
        let expires = now + self.wait;
        let (client, server) = if is_client { (Some(side), None) } else { (None, Some(side)) };
        self.pending.insert(key, Pending { client, server, expires });
        self.expiry.push_back((expires, key));
    }

    /// Drops the sides that waited longer than `wait`.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            if self.pending.get(&key).is_some_and(|p| p.expires <= now) {
                self.pending.remove(&key);
                self.stats.expired += 1;
            }
        }
    }

    fn complete(&mut self, client: Side, server: Side, connection: Connection, now_ns: u64) {
        let key = EdgeKey { client: client.service.clone(), server: server.service.clone(), connection };
        let full = self.edges.len() >= self.max_series;
        let edge = if full && !self.edges.contains_key(&key) {
            self.stats.overflow += 1;
            self.overflow.get_or_insert_with(|| Edge::new(now_ns))
        } else {
            self.edges.entry(key).or_insert_with(|| Edge::new(now_ns))
        };
        edge.total += 1;
        edge.failed += u64::from(client.error || server.error);
        edge.server.observe(&LATENCY_BOUNDS_S, server.seconds, Some(server.span));
        edge.client.observe(&LATENCY_BOUNDS_S, client.seconds, Some(client.span));
    }

    pub(crate) fn stats(&self) -> EdgeStats {
        self.stats
    }

    /// Sides waiting for their partner.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Number of edge series (the overflow series included).
    pub(crate) fn len(&self) -> usize {
        self.edges.len() + usize::from(self.overflow.is_some())
    }

    /// One point per edge series at `now_ns`, or `None` before the first edge.
    pub(crate) fn emit(&mut self, now_ns: u64) -> Option<ResourceMetrics> {
        if self.edges.is_empty() && self.overflow.is_none() {
            return None;
        }
        let mut sorted: Vec<_> = self.edges.iter_mut().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut edges: Vec<_> = sorted.into_iter().map(|(k, e)| (attributes(k), e)).collect();
        if let Some(e) = &mut self.overflow {
            edges.push((overflow_attributes(), e));
        }
        let (mut total, mut failed, mut server, mut client) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (attrs, e) in edges {
            total.push(counter_point(attrs.clone(), e.total, e.start_ns, now_ns));
            failed.push(counter_point(attrs.clone(), e.failed, e.start_ns, now_ns));
            server.push(e.server.point(&LATENCY_BOUNDS_S, attrs.clone(), e.start_ns, now_ns));
            client.push(e.client.point(&LATENCY_BOUNDS_S, attrs, e.start_ns, now_ns));
        }
        let sum = |name: &str, description: &str, points| Metric {
            name: name.to_owned(),
            description: description.to_owned(),
            unit: "{request}".to_owned(),
            metadata: Vec::new(),
            data: Some(metric::Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: CUMULATIVE,
                is_monotonic: true,
            })),
        };
        let histogram = |name: &str, description: &str, points| Metric {
            name: name.to_owned(),
            description: description.to_owned(),
            unit: "s".to_owned(),
            metadata: Vec::new(),
            data: Some(metric::Data::Histogram(Histogram { data_points: points, aggregation_temporality: CUMULATIVE })),
        };
        Some(ResourceMetrics {
            resource: Some(Resource::default()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope { name: SCOPE.to_owned(), ..Default::default() }),
                metrics: vec![
                    sum(REQUEST_TOTAL, "Requests between two services.", total),
                    sum(REQUEST_FAILED_TOTAL, "Requests between two services where either side failed.", failed),
                    histogram(SERVER_SECONDS, "Request durations as the server measured them.", server),
                    histogram(CLIENT_SECONDS, "Request durations as the client measured them.", client),
                ],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
    }
}

fn attributes(k: &EdgeKey) -> Vec<KeyValue> {
    vec![
        string_kv("client", &k.client),
        string_kv("server", &k.server),
        string_kv("connection_type", k.connection.as_str()),
    ]
}
