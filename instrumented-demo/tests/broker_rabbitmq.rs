//! Event delivery through a real RabbitMQ: trace context crosses the broker (the consumer span is a child of the
//! producer span and linked to it), and the outbox delivers exactly once across a consumer crash.
//!
//! Starts Debian's rabbitmq-server once per test binary on free loopback ports with its own temp directories,
//! and stops it (and its epmd) when the binary exits. Fails when rabbitmq-server is missing unless
//! `OBSBOX_SKIP_EXTERNAL=1`. The Debian wrapper `/usr/sbin/rabbitmq-server` switches to the `rabbitmq` user (which
//! would drop the test's `HOME` and directories), so the test runs the package's own script
//! `/usr/lib/rabbitmq/bin/rabbitmq-server` that the wrapper calls.

mod support;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use obsbox_demo::ServiceName;
use obsbox_demo::broker::{self, AmqpPublisher, EXCHANGE, Handler, Message, Publisher};
use obsbox_demo::patterns::outbox::{self, Relay};
use obsbox_demo::services::shipping;
use opentelemetry::trace::SpanKind;
use serde_json::json;
use tracing::Instrument;

const WRAPPER: &str = "/usr/sbin/rabbitmq-server";
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

struct Rabbit {
    url: String,
    pgid: i32,
    dir: std::path::PathBuf,
    children: Mutex<Vec<std::process::Child>>,
}

static RABBIT: OnceLock<Option<Rabbit>> = OnceLock::new();

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

extern "C" fn stop_rabbit() {
    if let Some(Some(r)) = RABBIT.get() {
        // SAFETY: signalling the process group this binary started (epmd and the broker).
        unsafe { libc::kill(-r.pgid, libc::SIGKILL) };
        if let Ok(mut children) = r.children.lock() {
            for child in children.iter_mut() {
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&r.dir);
    }
}

/// The broker's AMQP URL, starting it on first use; `None` when skipped.
fn rabbit() -> Option<&'static str> {
    RABBIT
        .get_or_init(|| {
            if !std::path::Path::new(WRAPPER).exists() || !std::path::Path::new(SERVER).exists() {
                if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
                    eprintln!("skipping: rabbitmq-server is not installed (OBSBOX_SKIP_EXTERNAL=1)");
                    return None;
                }
                panic!("rabbitmq-server not found at {WRAPPER}: apt-get install rabbitmq-server (or set OBSBOX_SKIP_EXTERNAL=1)");
            }
            let dir = tempfile::tempdir().unwrap().keep();
            let (node, dist, epmd) = (free_port(), free_port(), free_port());
            std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
            let log = std::fs::File::create(dir.join("server.log")).unwrap();
            // Our own epmd in the foreground, leading the process group: the broker finds it on ERL_EPMD_PORT
            // instead of starting a daemon that would outlive the test.
            let epmd_child = Command::new("/usr/bin/epmd")
                .args(["-port", &epmd.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start epmd (erlang-base)");
            let pgid = epmd_child.id() as i32;
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", epmd)).is_err() {
                assert!(Instant::now() < deadline, "epmd did not listen");
                std::thread::sleep(Duration::from_millis(50));
            }
            let child = Command::new(SERVER)
                .current_dir(&dir)
                .env("HOME", &dir)
                .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", dir.join("log"))
                .env("RABBITMQ_NODENAME", format!("obsbox_test_{node}@localhost"))
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", node.to_string())
                .env("RABBITMQ_DIST_PORT", dist.to_string())
                .env("ERL_EPMD_PORT", epmd.to_string())
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
                .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
                .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(pgid)
                .spawn()
                .expect("start rabbitmq-server");
            let rabbit = Rabbit {
                url: format!("amqp://guest:guest@127.0.0.1:{node}/%2f"),
                pgid,
                dir: dir.clone(),
                children: Mutex::new(vec![epmd_child, child]),
            };
            // SAFETY: registering a plain extern "C" function.
            unsafe { libc::atexit(stop_rabbit) };
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::net::TcpStream::connect(("127.0.0.1", node)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "rabbitmq-server did not listen within 60 s; its log: {}",
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(rabbit)
        })
        .as_ref()
        .map(|r| r.url.as_str())
}

async fn broker_url() -> Option<String> {
    let url = tokio::task::spawn_blocking(|| rabbit().map(str::to_owned)).await.unwrap()?;
    // The port opens a moment before the broker accepts AMQP sessions.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
            Ok(c) => {
                let _ = c.close(200, "ready".into()).await;
                return Some(url);
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for rabbitmq: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("rabbitmq-server does not accept connections: {e}"),
        }
    }
}

/// Declares and binds `queue` before anything is published, so no message is dropped unrouted.
async fn bind(url: &str, queue: &str, topic: &str) -> lapin::Connection {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_declare(
            EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(queue.into(), EXCHANGE.into(), topic.into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .unwrap();
    conn
}

async fn queue_depth(conn: &lapin::Connection, queue: &str) -> u32 {
    let channel = conn.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "".into()).await;
    q.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_crosses_rabbitmq() {
    let Some(url) = broker_url().await else { return };
    support::capture_spans();
    let _admin = bind(&url, "test.trace", "test.traced").await;

    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |m: Message| {
        let _ = got_tx.send(m);
        Box::pin(async { Ok(()) })
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn({
        let url = url.clone();
        async move {
            broker::consume_amqp(&url, "test.trace", &["test.traced"], handler, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });

    let checkout = tracing::info_span!("checkout");
    let message = async {
        Message {
            id: "msg-trace-1".into(),
            topic: "test.traced".into(),
            payload: json!({ "order_id": "ord_t" }),
            headers: broker::current_trace_headers(),
        }
    }
    .instrument(checkout.clone())
    .await;
    let publisher = Publisher::Amqp(AmqpPublisher::new(&url, None));
    publisher.publish(&message).await.expect("published and confirmed");
    let received = tokio::time::timeout(Duration::from_secs(10), got_rx.recv()).await.expect("consumed").unwrap();
    assert_eq!(received.id, "msg-trace-1");
    assert_eq!(received.payload, message.payload);
    drop(checkout);

    let found = support::eventually(Duration::from_secs(5), async || {
        support::spans().iter().any(|s| s.name == "process test.traced")
    })
    .await;
    assert!(found, "a consumer span");
    let spans = support::spans();
    let root = spans.iter().find(|s| s.name == "checkout").expect("checkout span");
    let send = spans.iter().find(|s| s.name == "send test.traced").expect("producer span");
    let process = spans.iter().find(|s| s.name == "process test.traced").expect("consumer span");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(send.parent_span_id, root.span_context.span_id(), "the producer continues the checkout trace");
    assert_eq!(support::attr(send, "messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(support::attr(send, "messaging.operation.type").as_deref(), Some("send"));
    assert_eq!(support::attr(send, "messaging.destination.name").as_deref(), Some(EXCHANGE));
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(support::attr(process, "messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(process.span_context.trace_id(), root.span_context.trace_id(), "the consumer carries the trace id");
    assert_eq!(process.parent_span_id, send.span_context.span_id(), "the consumer is a child of the producer");
    assert!(
        process.links.iter().any(|l| l.span_context.span_id() == send.span_context.span_id()),
        "the consumer links to the producer"
    );

    stop_tx.send(()).unwrap();
    consumer.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_delivers_exactly_once_through_rabbitmq_across_a_consumer_crash() {
    let Some(url) = broker_url().await else { return };
    support::capture_spans();
    let queue = "test.shipping.crash";
    let admin = bind(&url, queue, "order.confirmed").await;
    let dir = tempfile::tempdir().unwrap();

    let orders_ctx = support::context(ServiceName::Orders, dir.path());
    let orders_db = orders_ctx.db().unwrap();
    orders_db.migrate(outbox::SCHEMA).unwrap();
    let relay =
        Relay::new(orders_db.clone(), Publisher::Amqp(AmqpPublisher::new(&url, None)), Duration::from_secs(3600));
    let payload = json!({ "order_id": "ord_amqp", "user": "ada" });
    orders_db
        .call("INSERT", "outbox", "INSERT INTO outbox", move |conn| {
            let tx = conn.transaction()?;
            outbox::enqueue(&tx, "order.confirmed", &payload, &BTreeMap::new())?;
            tx.commit()
        })
        .await
        .unwrap();

    let shipping_db = support::context(ServiceName::Shipping, dir.path()).db().unwrap();
    shipping::migrate(&shipping_db).unwrap();

    // First consumer: commits the effect, then dies before acknowledging (its connection closes unacked).
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<()>();
    let committed_tx = Arc::new(Mutex::new(Some(committed_tx)));
    let real = shipping::handler(shipping_db.clone());
    let crashing: Handler = Arc::new(move |message: Message| {
        if message.payload["order_id"] != "ord_amqp" {
            return real(message);
        }
        let (real, signal) = (real.clone(), committed_tx.lock().unwrap().take());
        Box::pin(async move {
            real(message).await?;
            if let Some(s) = signal {
                let _ = s.send(());
            }
            std::future::pending().await
        })
    });
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn({
        let url = url.clone();
        async move {
            broker::consume_amqp(&url, queue, &["order.confirmed"], crashing, async {
                let _ = kill_rx.await;
            })
            .await
        }
    });
    assert_eq!(relay.relay_once().await.unwrap(), 1, "published with a publisher confirm");
    assert_eq!(outbox::counts(&orders_db).await.unwrap(), (0, 1));
    tokio::time::timeout(Duration::from_secs(10), committed_rx).await.expect("delivered").unwrap();
    kill_tx.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(shipping::dispatch_count(&shipping_db, "ord_amqp").await.unwrap(), 1);

    // The broker redelivers the unacknowledged message to the next consumer; the inbox ignores it.
    let deliveries = Arc::new(AtomicUsize::new(0));
    let (real, seen) = (shipping::handler(shipping_db.clone()), deliveries.clone());
    // Other tests of this binary publish `order.confirmed` too: count only this test's order.
    let counting: Handler = Arc::new(move |message: Message| {
        if message.payload["order_id"] == "ord_amqp" {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        real(message)
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn({
        let url = url.clone();
        async move {
            broker::consume_amqp(&url, queue, &["order.confirmed"], counting, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let redelivered =
        support::eventually(Duration::from_secs(10), async || deliveries.load(Ordering::SeqCst) == 1).await;
    assert!(redelivered, "the message came again after the crash");
    let drained = support::eventually(Duration::from_secs(10), async || queue_depth(&admin, queue).await == 0).await;
    assert!(drained, "and was acknowledged this time");
    assert_eq!(shipping::dispatch_count(&shipping_db, "ord_amqp").await.unwrap(), 1, "exactly one effect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deliveries.load(Ordering::SeqCst), 1, "no further deliveries");
    stop_tx.send(()).unwrap();
    second.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_configured_with_an_amqp_url_exchange_events_through_rabbitmq() {
    let Some(url) = broker_url().await else { return };
    support::capture_spans();
    let dir = tempfile::tempdir().unwrap();
    let admin = bind(&url, "unused.probe", "unused.probe").await;

    // Shipping subscribes through the broker (its durable queue `shipping`), serving no /events route.
    let shipping_ctx = support::context_with_broker(ServiceName::Shipping, dir.path(), Some(&url));
    let shipping_db = shipping_ctx.db().unwrap();
    let never = futures::FutureExt::shared(Box::pin(std::future::pending::<()>()));
    let _routes = shipping::start(&shipping_ctx, shipping_db.clone(), never).unwrap();
    let declared = support::eventually(Duration::from_secs(10), async || {
        let channel = admin.create_channel().await.unwrap();
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        channel.queue_declare("shipping".into(), passive, FieldTable::default()).await.is_ok()
    })
    .await;
    assert!(declared, "the shipping consumer declared its queue");

    let orders_ctx = support::context_with_broker(ServiceName::Orders, dir.path(), Some(&url));
    let orders_db = orders_ctx.db().unwrap();
    orders_db.migrate(outbox::SCHEMA).unwrap();
    let publisher = Publisher::for_service(&orders_ctx, &obsbox_demo::services::orders::SUBSCRIBERS);
    assert!(matches!(publisher, Publisher::Amqp(_)));
    let relay = Relay::new(orders_db.clone(), publisher, Duration::from_secs(3600));
    let payload = json!({ "order_id": "ord_svc", "user": "ada" });
    orders_db
        .call("INSERT", "outbox", "INSERT INTO outbox", move |conn| {
            let tx = conn.transaction()?;
            outbox::enqueue(&tx, "order.confirmed", &payload, &BTreeMap::new())?;
            tx.commit()
        })
        .await
        .unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    let dispatched = support::eventually(Duration::from_secs(10), async || {
        shipping::dispatch_count(&shipping_db, "ord_svc").await.unwrap() == 1
    })
    .await;
    assert!(dispatched, "shipping consumed order.confirmed from RabbitMQ");
}
