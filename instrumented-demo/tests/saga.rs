//! The checkout saga across real services served in-process: inventory (gRPC), payments (through the breaker and
//! retries), the flaky provider, shipping, notifications and orders with its outbox (HTTP fallback delivery).

mod support;

use std::time::Duration;

use obsbox_demo::ServiceName;
use obsbox_demo::faults::FaultSettings;
use obsbox_demo::patterns::breaker::BreakerConfig;
use obsbox_demo::patterns::retry::RetryConfig;
use obsbox_demo::services::payments::{ProviderClient, ResilienceConfig};
use obsbox_demo::services::{ServiceContext, inventory, notifications, orders, payments, provider, shipping};
use serde_json::{Value, json};

struct Shop {
    orders: String,
    inventory: String,
    shipping: String,
    notifications: String,
    provider_ctx: ServiceContext,
    _dir: tempfile::TempDir,
}

async fn shop() -> Shop {
    support::capture_spans();
    let dir = tempfile::tempdir().unwrap();
    let never = futures::FutureExt::shared(Box::pin(std::future::pending::<()>()));

    let provider_ctx = support::context(ServiceName::Provider, dir.path());
    let (provider_url, _) = support::serve(
        &provider_ctx,
        provider::routes(provider_ctx.db().unwrap(), provider_ctx.faults.clone()).unwrap(),
    )
    .await;

    let payments_ctx = support::context(ServiceName::Payments, dir.path());
    payments_ctx.set_peer("payment-provider", &provider_url);
    let resilience = ResilienceConfig {
        retry: RetryConfig { max_attempts: 2, base_delay: Duration::from_millis(5), ..RetryConfig::default() },
        breaker: BreakerConfig { consecutive_failures: 100, min_calls: 100, ..BreakerConfig::default() },
        ..ResilienceConfig::default()
    };
    let client = ProviderClient::new(payments_ctx.clone(), resilience);
    let (payments_url, _) =
        support::serve(&payments_ctx, payments::routes(payments_ctx.db().unwrap(), client).unwrap()).await;

    let inventory_ctx = support::context(ServiceName::Inventory, dir.path());
    let inventory_db = inventory_ctx.db().unwrap();
    inventory::migrate(&inventory_db).unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    tokio::spawn(inventory::serve_grpc(inventory_db.clone(), grpc, std::future::pending()));
    let (inventory_url, _) = support::serve(&inventory_ctx, inventory::routes(inventory_db)).await;

    let shipping_ctx = support::context(ServiceName::Shipping, dir.path());
    let routes = shipping::start(&shipping_ctx, shipping_ctx.db().unwrap(), never.clone()).unwrap();
    let (shipping_url, _) = support::serve(&shipping_ctx, routes).await;

    let notifications_ctx = support::context(ServiceName::Notifications, dir.path());
    let routes = notifications::start(&notifications_ctx, notifications_ctx.db().unwrap(), never.clone()).unwrap();
    let (notifications_url, _) = support::serve(&notifications_ctx, routes).await;

    let orders_ctx = support::context(ServiceName::Orders, dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orders_url = format!("http://{}", listener.local_addr().unwrap());
    for (service, url) in [
        ("inventory-grpc", &grpc_url),
        ("payments", &payments_url),
        ("shipping", &shipping_url),
        ("notifications", &notifications_url),
        ("orders", &orders_url),
    ] {
        orders_ctx.set_peer(service, url);
    }
    let routes = orders::start(&orders_ctx, orders_ctx.db().unwrap(), never).await.unwrap();
    let ctx = orders_ctx.clone();
    tokio::spawn(async move {
        obsbox_demo::services::serve_on(&ctx, listener, routes, std::future::pending()).await.unwrap();
    });

    Shop {
        orders: orders_url,
        inventory: inventory_url,
        shipping: shipping_url,
        notifications: notifications_url,
        provider_ctx,
        _dir: dir,
    }
}

async fn stock(shop: &Shop, sku: &str) -> i64 {
    let v: Value = reqwest::get(format!("{}/stock/{sku}", shop.inventory)).await.unwrap().json().await.unwrap();
    v["available"].as_i64().unwrap()
}

async fn place(shop: &Shop, user: &str, sku: &str, price_cents: i64) -> (u16, Value) {
    let order = json!({ "user": user, "items": [{ "sku": sku, "quantity": 3, "price_cents": price_cents }] });
    let resp = reqwest::Client::new().post(format!("{}/orders", shop.orders)).json(&order).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_compensates_when_payment_fails() {
    let shop = shop().await;
    let before = stock(&shop, "SKU-0007").await;
    // The provider declines charges above its limit: a definitive failure, not retried.
    let (status, body) = place(&shop, "ada", "SKU-0007", 400_000).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["failed_step"], "charge_payment");
    let order_id = body["order_id"].as_str().unwrap().to_owned();

    assert_eq!(stock(&shop, "SKU-0007").await, before, "the reserved stock was released");
    let order: Value = reqwest::get(format!("{}/orders/{order_id}", shop.orders)).await.unwrap().json().await.unwrap();
    assert_eq!(order["status"], "failed");
    let shipment = reqwest::get(format!("{}/shipments/{order_id}", shop.shipping)).await.unwrap();
    assert_eq!(shipment.status().as_u16(), 404, "shipping was never scheduled");

    // The read model and the notifications follow from the order.failed event.
    let history_url = format!("{}/orders/history?user=ada", shop.orders);
    let failed = support::eventually(Duration::from_secs(10), async || {
        let v: Value = reqwest::get(&history_url).await.unwrap().json().await.unwrap();
        v["orders"].as_array().unwrap().iter().any(|o| o["order_id"] == order_id.as_str() && o["status"] == "failed")
    })
    .await;
    assert!(failed, "order history shows the failed order");

    let spans = support::spans();
    let saga = spans
        .iter()
        .find(|s| s.name == "saga checkout" && support::attr(s, "saga.id").as_deref() == Some(order_id.as_str()))
        .expect("saga span");
    let trace_id = saga.span_context.trace_id();
    let in_trace: Vec<&str> =
        spans.iter().filter(|s| s.span_context.trace_id() == trace_id).map(|s| s.name.as_ref()).collect();
    for name in [
        "saga step reserve_stock",
        "saga step charge_payment",
        "saga compensate charge_payment",
        "saga compensate reserve_stock",
        "obsbox.demo.inventory.v1.Inventory/Release",
    ] {
        assert!(in_trace.contains(&name), "no span {name} in the saga's trace: {in_trace:?}");
    }
    assert!(!in_trace.contains(&"saga step schedule_shipping"), "shipping must not run after a failed payment");
    // The gRPC metadata carried the context: the inventory's server span is in the same trace.
    let grpc_server = spans.iter().find(|s| {
        s.span_context.trace_id() == trace_id
            && s.name == "obsbox.demo.inventory.v1.Inventory/Release"
            && s.span_kind == opentelemetry::trace::SpanKind::Server
    });
    let grpc_server = grpc_server.expect("inventory's RPC server span in the saga's trace");
    assert_eq!(support::attr(grpc_server, "rpc.system").as_deref(), Some("grpc"));
    let charges = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id && s.name == "POST /v1/charges")
        .filter(|s| s.span_kind == opentelemetry::trace::SpanKind::Client)
        .count();
    assert_eq!(charges, 1, "a decline is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_leaves_the_order_pending_until_compensation_succeeds() {
    let shop = shop().await;
    let before = stock(&shop, "SKU-0008").await;
    shop.provider_ctx.faults.set(FaultSettings { provider_outage: true, ..FaultSettings::default() }).unwrap();

    // The charge fails after its retries, and so does the refund: the saga cannot finish compensating.
    let (status, body) = place(&shop, "lin", "SKU-0008", 1250).await;
    assert_eq!((status, &body["status"]), (202, &json!("pending")), "{body}");
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    // Compensations run in reverse: the refund comes first and blocks, so the stock stays reserved meanwhile.
    assert_eq!(stock(&shop, "SKU-0008").await, before - 3);

    let spans = support::spans();
    let saga = spans
        .iter()
        .find(|s| s.name == "saga checkout" && support::attr(s, "saga.id").as_deref() == Some(order_id.as_str()))
        .expect("saga span");
    let resends: Vec<Option<String>> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == saga.span_context.trace_id() && s.name == "POST /v1/charges")
        .filter(|s| s.span_kind == opentelemetry::trace::SpanKind::Client)
        .map(|s| support::attr(s, "http.request.resend_count"))
        .collect();
    assert_eq!(resends, vec![None, Some("1".into())], "one attempt and one retry, each its own span");

    // Once the provider is back, the background resumer finishes the compensation.
    shop.provider_ctx.faults.set(FaultSettings::default()).unwrap();
    let order_url = format!("{}/orders/{order_id}", shop.orders);
    let failed = support::eventually(Duration::from_secs(25), async || {
        let v: Value = reqwest::get(&order_url).await.unwrap().json().await.unwrap();
        v["status"] == "failed"
    })
    .await;
    assert!(failed, "the resumed saga marked the order failed");
    assert_eq!(stock(&shop, "SKU-0008").await, before, "and released the stock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_checkout_reserves_charges_ships_and_notifies() {
    let shop = shop().await;
    let before = stock(&shop, "SKU-0009").await;
    let (status, body) = place(&shop, "grace", "SKU-0009", 1250).await;
    assert_eq!(status, 201, "{body}");
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(stock(&shop, "SKU-0009").await, before - 3);

    let shipment_url = format!("{}/shipments/{order_id}", shop.shipping);
    let dispatched = support::eventually(Duration::from_secs(10), async || {
        let v: Value = reqwest::get(&shipment_url).await.unwrap().json().await.unwrap_or(Value::Null);
        v["status"] == "dispatched" && v["dispatches"] == 1
    })
    .await;
    assert!(dispatched, "order.confirmed reached shipping once");
    let notes_url = format!("{}/notifications?user=grace", shop.notifications);
    let notified = support::eventually(Duration::from_secs(10), async || {
        let v: Value = reqwest::get(&notes_url).await.unwrap().json().await.unwrap();
        v["notifications"].as_array().unwrap().len() == 2
    })
    .await;
    assert!(notified, "placed and confirmed notifications");

    // The consumer spans are in the checkout's trace, children of the producer spans and linked to them.
    // The producer span ends, and so is exported, when the broker acknowledges the delivery: after
    // the consumer may already have done its work.
    let is_send = |s: &opentelemetry_sdk::trace::SpanData| {
        s.name == "send order.confirmed" && support::attr(s, "messaging.system").as_deref() == Some("obsbox_http")
    };
    let exported = support::eventually(Duration::from_secs(10), async || {
        let spans = support::spans();
        spans.iter().any(is_send) && spans.iter().any(|s| s.name == "process order.confirmed")
    })
    .await;
    assert!(exported, "producer and consumer spans exported");
    let spans = support::spans();
    let send = spans.iter().find(|s| is_send(s)).expect("producer span");
    let process = spans
        .iter()
        .find(|s| s.name == "process order.confirmed" && s.parent_span_id == send.span_context.span_id())
        .expect("consumer span, child of the producer");
    assert_eq!(process.span_context.trace_id(), send.span_context.trace_id());
    assert!(process.links.iter().any(|l| l.span_context.span_id() == send.span_context.span_id()));
}
