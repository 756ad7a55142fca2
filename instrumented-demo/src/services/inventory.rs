//! The inventory service: stock per SKU and reservations per order, served over gRPC (tonic).
//!
//! gRPC service `obsbox.demo.inventory.v1.Inventory` ([`proto`]): `Reserve` (all items of an order or none;
//! idempotent per order), `Release` (gives a reservation's stock back; idempotent, a no-op without one), `Stock`.
//! No protoc at build time: the messages are `prost::Message` derives and the server and client are written by hand
//! on tonic's generic `Grpc` server and client, which is what `tonic-build` would generate. The gRPC listener is
//! its own port, registered as `inventory-grpc`; the HTTP port carries `/healthz`, `/admin/faults` and
//! `GET /stock/{sku}`.
//!
//! Spans: RPC SERVER and CLIENT spans named `obsbox.demo.inventory.v1.Inventory/Method` with `rpc.system=grpc`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`; the trace context travels in gRPC metadata (`traceparent`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::StatusCode;
use opentelemetry::propagation::{Extractor, Injector};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::db::Db;
use crate::registry::Registration;
use crate::services::ServiceContext;
use crate::{Error, Result};

/// The gRPC service name.
pub const GRPC_SERVICE: &str = "obsbox.demo.inventory.v1.Inventory";
/// The name the gRPC listener is registered under.
pub const GRPC_REGISTRY_NAME: &str = "inventory-grpc";
/// Units of each seeded SKU (`SKU-0001` to `SKU-0100`) at first start.
pub const INITIAL_STOCK: i64 = 100_000;

/// The protobuf messages of the inventory API.
pub mod proto {
    /// An order line.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Item {
        /// The SKU.
        #[prost(string, tag = "1")]
        pub sku: String,
        /// Units.
        #[prost(uint32, tag = "2")]
        pub quantity: u32,
    }
    /// Reserve every item of an order, or none.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReserveRequest {
        /// The order (idempotency key).
        #[prost(string, tag = "1")]
        pub order_id: String,
        /// What to reserve.
        #[prost(message, repeated, tag = "2")]
        pub items: Vec<Item>,
    }
    /// A reservation made (or found: the same order reserved before).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReserveReply {
        /// Units reserved in total.
        #[prost(uint32, tag = "1")]
        pub reserved: u32,
    }
    /// Give an order's reserved stock back.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReleaseRequest {
        /// The order.
        #[prost(string, tag = "1")]
        pub order_id: String,
    }
    /// Whether anything was released (false: nothing reserved, or released before).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReleaseReply {
        /// Units given back.
        #[prost(uint32, tag = "1")]
        pub released: u32,
    }
    /// Ask for one SKU's stock.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StockRequest {
        /// The SKU.
        #[prost(string, tag = "1")]
        pub sku: String,
    }
    /// Units available.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StockReply {
        /// Units available (not reserved).
        #[prost(int64, tag = "1")]
        pub available: i64,
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0));
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL, released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, sku));";

/// Opens the inventory's tables, seeding stock at first start.
pub fn migrate(db: &Db) -> Result<()> {
    db.migrate(SCHEMA)?;
    let seed: Vec<String> = (1..=100).map(|i| format!("('SKU-{i:04}', {INITIAL_STOCK})")).collect();
    db.migrate(&format!("INSERT OR IGNORE INTO stock (sku, available) VALUES {};", seed.join(", ")))
}

async fn reserve(db: &Db, req: proto::ReserveRequest) -> Result<proto::ReserveReply, Status> {
    if req.order_id.is_empty() || req.items.is_empty() {
        return Err(Status::invalid_argument("order_id and at least one item are required"));
    }
    if req.items.iter().any(|i| i.quantity == 0 || i.sku.is_empty()) {
        return Err(Status::invalid_argument("every item needs a sku and a quantity above 0"));
    }
    const SQL: &str = "UPDATE stock SET available = available - ?2 WHERE sku = ?1 AND available >= ?2; \
                       INSERT INTO reservations (order_id, sku, quantity) VALUES (?1, ?2, ?3)";
    let outcome = db
        .call("UPDATE", "stock", SQL, move |conn| {
            let tx = conn.transaction()?;
            let existing: i64 = tx.query_row(
                "SELECT COALESCE(SUM(quantity), 0) FROM reservations WHERE order_id = ?1",
                [&req.order_id],
                |r| r.get(0),
            )?;
            if existing > 0 {
                return Ok(Ok(existing as u32));
            }
            let mut total = 0u32;
            for item in &req.items {
                let updated = tx.execute(
                    "UPDATE stock SET available = available - ?2 WHERE sku = ?1 AND available >= ?2",
                    rusqlite::params![item.sku, item.quantity],
                )?;
                if updated == 0 {
                    // Dropping the transaction rolls back the items reserved so far.
                    return Ok(Err(item.sku.clone()));
                }
                tx.execute(
                    "INSERT INTO reservations (order_id, sku, quantity) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (order_id, sku) DO UPDATE SET quantity = quantity + excluded.quantity",
                    rusqlite::params![req.order_id, item.sku, item.quantity],
                )?;
                total += item.quantity;
            }
            tx.commit()?;
            Ok(Ok(total))
        })
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    match outcome {
        Ok(reserved) => Ok(proto::ReserveReply { reserved }),
        Err(sku) => Err(Status::failed_precondition(format!("not enough stock of {sku}"))),
    }
}

async fn release(db: &Db, req: proto::ReleaseRequest) -> Result<proto::ReleaseReply, Status> {
    const SQL: &str = "UPDATE stock SET available = available + ?2 WHERE sku = ?1; \
                       UPDATE reservations SET released = 1 WHERE order_id = ?1";
    let released = db
        .call("UPDATE", "reservations", SQL, move |conn| {
            let tx = conn.transaction()?;
            let lines: Vec<(String, i64)> = {
                let mut stmt =
                    tx.prepare("SELECT sku, quantity FROM reservations WHERE order_id = ?1 AND released = 0")?;
                stmt.query_map([&req.order_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
            };
            let mut total = 0;
            for (sku, quantity) in &lines {
                tx.execute(
                    "UPDATE stock SET available = available + ?2 WHERE sku = ?1",
                    rusqlite::params![sku, quantity],
                )?;
                total += quantity;
            }
            tx.execute("UPDATE reservations SET released = 1 WHERE order_id = ?1", [&req.order_id])?;
            tx.commit()?;
            Ok(total as u32)
        })
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(proto::ReleaseReply { released })
}

async fn stock_of(db: &Db, sku: String) -> Result<Option<i64>> {
    const SQL: &str = "SELECT available FROM stock WHERE sku = ?1";
    db.call("SELECT", "stock", SQL, move |conn| {
        use rusqlite::OptionalExtension;
        conn.query_row(SQL, [&sku], |r| r.get(0)).optional()
    })
    .await
}

struct MetadataExtractor<'a>(&'a http::HeaderMap);
impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);
impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
        {
            self.0.insert(k, v);
        }
    }
}

fn rpc_span(kind: &'static str, method: &str) -> tracing::Span {
    tracing::info_span!(
        "rpc",
        otel.name = %format!("{GRPC_SERVICE}/{method}"),
        otel.kind = kind,
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = GRPC_SERVICE,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
    )
}

fn record_status(span: &tracing::Span, code: Code, server: bool) {
    span.record("rpc.grpc.status_code", code as i32);
    // Per the gRPC conventions, a server span is an error only for codes that mean the server failed.
    let error = if server {
        matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        )
    } else {
        code != Code::Ok
    };
    if error {
        span.record("otel.status_code", "ERROR");
    }
}

/// The hand-written gRPC server (what `tonic-build` would generate): routes by path, decodes with prost.
#[derive(Clone)]
pub struct InventoryServer {
    db: Db,
}

impl tonic::server::NamedService for InventoryServer {
    const NAME: &'static str = GRPC_SERVICE;
}

impl InventoryServer {
    /// A server over `db` (migrated with [`migrate`]).
    pub fn new(db: Db) -> InventoryServer {
        InventoryServer { db }
    }
}

macro_rules! unary {
    ($db:expr, $req:expr, $handler:path) => {{
        let db = $db;
        let svc = tower::service_fn(move |req: tonic::Request<_>| {
            let db = db.clone();
            async move { $handler(&db, req.into_inner()).await.map(tonic::Response::new) }
        });
        tonic::server::Grpc::new(tonic_prost::ProstCodec::default()).unary(svc, $req).await
    }};
}

impl<B> tower::Service<http::Request<B>> for InventoryServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let db = self.db.clone();
        let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
        let span = rpc_span("server", &method);
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(req.headers())));
        let _ = span.set_parent(parent);
        let inner = span.clone();
        Box::pin(
            async move {
                let response = match method.as_str() {
                    "Reserve" => unary!(db, req, reserve),
                    "Release" => unary!(db, req, release),
                    "Stock" => unary!(db, req, grpc_stock),
                    _ => Status::unimplemented(format!("no method {method}")).into_http(),
                };
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32);
                record_status(&inner, code, true);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

async fn grpc_stock(db: &Db, req: proto::StockRequest) -> Result<proto::StockReply, Status> {
    match stock_of(db, req.sku.clone()).await {
        Ok(Some(available)) => Ok(proto::StockReply { available }),
        Ok(None) => Err(Status::not_found(format!("unknown sku {}", req.sku))),
        Err(e) => Err(Status::unavailable(e.to_string())),
    }
}

/// The gRPC client orders uses: resolves `inventory-grpc` through the service context, one channel per address,
/// CLIENT spans and `traceparent` in the metadata.
#[derive(Clone)]
pub struct InventoryClient {
    ctx: ServiceContext,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl InventoryClient {
    /// A client resolving the inventory through `ctx`.
    pub fn new(ctx: ServiceContext) -> InventoryClient {
        InventoryClient { ctx, channels: Arc::default() }
    }

    async fn call<Req, Rep>(&self, method: &'static str, message: Req) -> Result<Rep, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Rep: prost::Message + Default + Send + Sync + 'static,
    {
        let span = rpc_span("client", method);
        let result = async {
            let url = self.ctx.url_of(GRPC_REGISTRY_NAME).await.map_err(|e| Status::unavailable(e.to_string()))?;
            if let Ok(uri) = url.parse::<http::Uri>() {
                let span = tracing::Span::current();
                span.record("server.address", uri.host().unwrap_or(""));
                span.record("server.port", uri.port_u16().unwrap_or(0));
            }
            let channel = {
                let existing = self.channels.lock().get(&url).cloned();
                match existing {
                    Some(c) => c,
                    None => {
                        let endpoint = Endpoint::from_shared(url.clone())
                            .map_err(|e| Status::invalid_argument(e.to_string()))?
                            .timeout(std::time::Duration::from_secs(5));
                        let channel = endpoint.connect_lazy();
                        self.channels.lock().insert(url.clone(), channel.clone());
                        channel
                    }
                }
            };
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
            let mut request = tonic::Request::new(message);
            let cx = tracing::Span::current().context();
            opentelemetry::global::get_text_map_propagator(|p| {
                p.inject_context(&cx, &mut MetadataInjector(request.metadata_mut()))
            });
            let path = http::uri::PathAndQuery::from_static(match method {
                "Reserve" => "/obsbox.demo.inventory.v1.Inventory/Reserve",
                "Release" => "/obsbox.demo.inventory.v1.Inventory/Release",
                _ => "/obsbox.demo.inventory.v1.Inventory/Stock",
            });
            let result = grpc.unary(request, path, tonic_prost::ProstCodec::default()).await.map(|r| r.into_inner());
            if matches!(&result, Err(s) if s.code() == Code::Unavailable) {
                // The address may be stale: resolve (and connect) afresh next time.
                self.channels.lock().remove(&url);
                if let Some(r) = &self.ctx.registry {
                    r.invalidate(GRPC_REGISTRY_NAME);
                }
            }
            result
        }
        .instrument(span.clone())
        .await;
        record_status(&span, result.as_ref().map_or_else(Status::code, |_| Code::Ok), false);
        result
    }

    /// Reserves every item of `order_id` (or none: `FAILED_PRECONDITION` when stock is short).
    pub async fn reserve(&self, order_id: &str, items: Vec<proto::Item>) -> Result<proto::ReserveReply, Status> {
        self.call("Reserve", proto::ReserveRequest { order_id: order_id.to_owned(), items }).await
    }

    /// Gives the stock reserved for `order_id` back.
    pub async fn release(&self, order_id: &str) -> Result<proto::ReleaseReply, Status> {
        self.call("Release", proto::ReleaseRequest { order_id: order_id.to_owned() }).await
    }

    /// Units of `sku` available.
    pub async fn stock(&self, sku: &str) -> Result<proto::StockReply, Status> {
        self.call("Stock", proto::StockRequest { sku: sku.to_owned() }).await
    }
}

async fn http_stock(State(db): State<Db>, Path(sku): Path<String>) -> Response {
    match stock_of(&db, sku.clone()).await {
        Ok(Some(available)) => Json(serde_json::json!({ "sku": sku, "available": available })).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("unknown sku {sku}")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("stock lookup failed: {e}")).into_response(),
    }
}

/// The HTTP routes (besides the common ones): `GET /stock/{sku}`.
pub fn routes(db: Db) -> axum::Router {
    axum::Router::new().route("/stock/{sku}", axum::routing::get(http_stock)).with_state(db)
}

/// Serves the gRPC API on `listener` until `shutdown` resolves.
pub async fn serve_grpc(
    db: Db,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(InventoryServer::new(db))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// Runs the inventory service: HTTP on the configured port, gRPC on a free port registered as `inventory-grpc`.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let db = ctx.db()?;
    migrate(&db)?;
    let grpc_addr = format!("{}:0", ctx.cfg.host);
    let grpc =
        tokio::net::TcpListener::bind(&grpc_addr).await.map_err(|source| Error::Bind { addr: grpc_addr, source })?;
    let grpc_url = format!("http://{}", grpc.local_addr()?);
    tracing::info!(url = %grpc_url, "grpc listening");
    let heartbeat = ctx.registry.as_ref().map(|r| {
        r.keep_registered(Registration {
            service: GRPC_REGISTRY_NAME.to_owned(),
            instance_id: ctx.instance_id.clone(),
            url: grpc_url.clone(),
        })
    });
    let grpc_task = tokio::spawn(serve_grpc(db.clone(), grpc, crate::services::shutdown_signal()));
    let result = crate::services::serve(&ctx, routes(db)).await;
    if let Some(h) = heartbeat {
        h.abort();
    }
    if let Some(r) = &ctx.registry {
        r.deregister(GRPC_REGISTRY_NAME, &ctx.instance_id).await;
    }
    grpc_task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: u32) -> proto::Item {
        proto::Item { sku: sku.into(), quantity }
    }

    async fn available(db: &Db, sku: &str) -> i64 {
        stock_of(db, sku.into()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn reserve_is_all_or_nothing_idempotent_and_release_gives_it_back_once() {
        let db = Db::in_memory("inventory").unwrap();
        migrate(&db).unwrap();
        let req = |order: &str, items| proto::ReserveRequest { order_id: order.into(), items };

        // The second line cannot be served: the first is rolled back.
        let short =
            reserve(&db, req("o1", vec![item("SKU-0001", 2), item("SKU-0002", INITIAL_STOCK as u32 + 1)])).await;
        assert_eq!(short.unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(available(&db, "SKU-0001").await, INITIAL_STOCK);

        let ok = reserve(&db, req("o2", vec![item("SKU-0001", 2), item("SKU-0002", 3)])).await.unwrap();
        assert_eq!(ok.reserved, 5);
        let again = reserve(&db, req("o2", vec![item("SKU-0001", 2), item("SKU-0002", 3)])).await.unwrap();
        assert_eq!(again.reserved, 5, "a repeated reservation of the same order changes nothing");
        assert_eq!(available(&db, "SKU-0001").await, INITIAL_STOCK - 2);

        let released = release(&db, proto::ReleaseRequest { order_id: "o2".into() }).await.unwrap();
        assert_eq!(released.released, 5);
        let twice = release(&db, proto::ReleaseRequest { order_id: "o2".into() }).await.unwrap();
        assert_eq!(twice.released, 0, "a repeated release gives nothing back");
        let never = release(&db, proto::ReleaseRequest { order_id: "unknown".into() }).await.unwrap();
        assert_eq!(never.released, 0);
        assert_eq!(available(&db, "SKU-0001").await, INITIAL_STOCK);
        assert_eq!(available(&db, "SKU-0002").await, INITIAL_STOCK);

        let bad = reserve(&db, req("o3", vec![item("SKU-0001", 0)])).await;
        assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    }
}
