//! The outbox over the HTTP fallback: exactly one effect at an idempotent consumer although the consumer crashes
//! between committing and acknowledging, and events kept in the outbox while the broker is down.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use obsbox_demo::ServiceName;
use obsbox_demo::broker::{self, Handler, HttpPublisher, Message, Publisher};
use obsbox_demo::db::Db;
use obsbox_demo::faults::FaultSettings;
use obsbox_demo::patterns::outbox::{self, Relay};
use obsbox_demo::services::{ServiceContext, shipping};
use serde_json::json;

async fn producer(dir: &std::path::Path) -> (ServiceContext, Db, Relay) {
    let ctx = support::context(ServiceName::Orders, dir);
    let db = ctx.db().unwrap();
    db.migrate(outbox::SCHEMA).unwrap();
    let publisher = Publisher::Http(HttpPublisher::new(ctx.clone(), &["shipping"]));
    let relay = Relay::new(db.clone(), publisher, Duration::from_secs(3600));
    (ctx, db, relay)
}

async fn enqueue(db: &Db, order_id: &str) {
    let payload = json!({ "order_id": order_id, "user": "ada" });
    db.call("INSERT", "outbox", "INSERT INTO outbox", move |conn| {
        let tx = conn.transaction()?;
        outbox::enqueue(&tx, "order.confirmed", &payload, &BTreeMap::new())?;
        tx.commit()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_delivers_exactly_once_across_a_consumer_crash() {
    support::capture_spans();
    let dir = tempfile::tempdir().unwrap();
    let (orders_ctx, orders_db, relay) = producer(dir.path()).await;
    enqueue(&orders_db, "ord_crash").await;
    let shipping_ctx = support::context(ServiceName::Shipping, dir.path());

    // The first consumer runs on a runtime of its own; its handler commits the effect, then hangs before
    // answering, and the runtime is shut down: a crash between commit and acknowledgement.
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<()>();
    let committed_tx = Arc::new(Mutex::new(Some(committed_tx)));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    orders_ctx.set_peer("shipping", &format!("http://{}", listener.local_addr().unwrap()));
    let doomed = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let ctx = shipping_ctx.clone();
    doomed.spawn(async move {
        let db = ctx.db().unwrap();
        shipping::migrate(&db).unwrap();
        let real = shipping::handler(db);
        let crashing: Handler = Arc::new(move |message: Message| {
            let (real, signal) = (real.clone(), committed_tx.lock().unwrap().take());
            Box::pin(async move {
                real(message).await?;
                if let Some(s) = signal {
                    let _ = s.send(());
                }
                std::future::pending().await
            })
        });
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = obsbox_demo::services::serve_on(
            &ctx,
            listener,
            broker::http_consumer_routes(crashing),
            std::future::pending(),
        )
        .await;
    });
    let pass = tokio::spawn({
        let relay = relay.clone();
        async move { relay.relay_once().await }
    });
    tokio::time::timeout(Duration::from_secs(10), committed_rx).await.expect("delivered").unwrap();
    doomed.shutdown_background();
    assert_eq!(pass.await.unwrap().unwrap(), 0, "the crashed consumer acknowledged nothing");
    assert_eq!(outbox::counts(&orders_db).await.unwrap(), (1, 0), "the event is still pending");

    // The restarted consumer gets the event again; the inbox makes the redelivery a no-op.
    let db = shipping_ctx.db().unwrap();
    shipping::migrate(&db).unwrap();
    assert_eq!(shipping::dispatch_count(&db, "ord_crash").await.unwrap(), 1, "the first delivery committed");
    let deliveries = Arc::new(AtomicUsize::new(0));
    let (real, seen) = (shipping::handler(db.clone()), deliveries.clone());
    let counting: Handler = Arc::new(move |message: Message| {
        seen.fetch_add(1, Ordering::SeqCst);
        real(message)
    });
    let (url, _server) = support::serve(&shipping_ctx, broker::http_consumer_routes(counting)).await;
    orders_ctx.set_peer("shipping", &url);
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    assert_eq!(deliveries.load(Ordering::SeqCst), 1, "the event was delivered again");
    assert_eq!(shipping::dispatch_count(&db, "ord_crash").await.unwrap(), 1, "exactly one effect");
    assert_eq!(outbox::counts(&orders_db).await.unwrap(), (0, 1));
    assert_eq!(relay.relay_once().await.unwrap(), 0, "nothing left to send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stay_in_the_outbox_while_the_broker_is_down() {
    support::capture_spans();
    let dir = tempfile::tempdir().unwrap();
    let (orders_ctx, orders_db, relay) = producer(dir.path()).await;
    let shipping_ctx = support::context(ServiceName::Shipping, dir.path());
    let db = shipping_ctx.db().unwrap();
    let never = futures::FutureExt::shared(Box::pin(std::future::pending::<()>()));
    let (url, _server) =
        support::serve(&shipping_ctx, shipping::start(&shipping_ctx, db.clone(), never).unwrap()).await;
    orders_ctx.set_peer("shipping", &url);

    orders_ctx.faults.set(FaultSettings { broker_down: true, ..FaultSettings::default() }).unwrap();
    enqueue(&orders_db, "ord_a").await;
    enqueue(&orders_db, "ord_b").await;
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    assert_eq!(outbox::counts(&orders_db).await.unwrap(), (2, 0));
    let failed_send = support::spans()
        .into_iter()
        .any(|s| s.name == "send order.confirmed" && support::attr(&s, "error.type").as_deref() == Some("broker_down"));
    assert!(failed_send, "the failed publish is a producer span with error.type=broker_down");

    orders_ctx.faults.set(FaultSettings::default()).unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 2);
    assert_eq!(outbox::counts(&orders_db).await.unwrap(), (0, 2));
    assert_eq!(shipping::dispatch_count(&db, "ord_a").await.unwrap(), 1);
    assert_eq!(shipping::dispatch_count(&db, "ord_b").await.unwrap(), 1);
}
