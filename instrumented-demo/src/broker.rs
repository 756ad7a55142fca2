//! Event delivery: RabbitMQ through `lapin` when an AMQP URL is configured, HTTP otherwise.
//!
//! - [`Publisher::publish`] sends one [`Message`] in a PRODUCER span (`send <topic>`) whose parent is the trace
//!   context the message carries (the request that wrote it to the outbox), and injects the producer span's
//!   context into the message headers (W3C `traceparent`/`tracestate`).
//!   RabbitMQ: a durable topic exchange [`EXCHANGE`], the topic as routing key, persistent messages, publisher
//!   confirms (a publish succeeds only once the broker has taken the message). HTTP: `POST <subscriber>/events`
//!   to each subscriber service (resolved through the registry), the message as JSON.
//! - Consumers run a handler per message in a CONSUMER span (`process <topic>`), child of the producer's context
//!   and linked to it, per the OpenTelemetry messaging conventions. RabbitMQ ([`consume_amqp`]): a durable queue
//!   per consuming service bound to its topics, manual acks after the handler succeeded, a nack with requeue when
//!   it failed. HTTP ([`http_consumer_routes`]): 204 when the handler succeeded, 503 (retry later) when not.
//!
//! Delivery is at least once on both paths; consumers use the inbox ([`crate::patterns::inbox`]) to make it
//! effectively once. The "broker down" fault makes every publish fail, so events stay in the outbox.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::faults::Faults;
use crate::services::ServiceContext;

/// The topic exchange every event is published to.
pub const EXCHANGE: &str = "obsbox.demo.events";

/// `messaging.system` of the HTTP fallback.
pub const HTTP_SYSTEM: &str = "obsbox_http";

/// One event on its way from a producer to its consumers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Unique id, the idempotency key of consumers.
    pub id: String,
    /// The event type, e.g. `order.placed`; the routing key on RabbitMQ.
    pub topic: String,
    /// The event body.
    pub payload: serde_json::Value,
    /// Trace context (`traceparent`, `tracestate`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A publish or consume that failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The "broker down" fault is on.
    #[error("broker down (fault injection)")]
    Down,
    /// RabbitMQ refused or the connection failed.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// RabbitMQ did not take the message (negative publisher confirm).
    #[error("amqp: message {0} not confirmed by the broker")]
    NotConfirmed(String),
    /// An HTTP subscriber could not be reached or answered with an error.
    #[error("subscriber {subscriber}: {error}")]
    Subscriber {
        /// The subscribing service.
        subscriber: String,
        /// What went wrong.
        error: String,
    },
}

/// The W3C trace context of the current span as message headers (take it in async code, before a blocking
/// database call, whose thread has another current span).
pub fn current_trace_headers() -> BTreeMap<String, String> {
    let mut headers = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut headers);
    headers.into_iter().collect()
}

/// The trace context carried by message headers (W3C `traceparent`/`tracestate`).
pub fn context_of(headers: &BTreeMap<String, String>) -> opentelemetry::Context {
    let headers: std::collections::HashMap<String, String> =
        headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    TraceContextPropagator::new().extract(&headers)
}

fn producer_span(system: &str, destination: &str, message: &Message) -> tracing::Span {
    let span = tracing::info_span!(
        "messaging.send",
        otel.name = %format!("send {}", message.topic),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = %system,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = %destination,
        messaging.rabbitmq.destination.routing_key = %message.topic,
        messaging.message.id = %message.id,
        error.type = tracing::field::Empty,
    );
    let parent = context_of(&message.headers);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// The CONSUMER span of processing `message`: child of the producer's context (from the message headers) and
/// linked to it.
pub fn process_span(system: &str, destination: &str, message: &Message) -> tracing::Span {
    let span = tracing::info_span!(
        "messaging.process",
        otel.name = %format!("process {}", message.topic),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = %system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %destination,
        messaging.rabbitmq.destination.routing_key = %message.topic,
        messaging.message.id = %message.id,
        error.type = tracing::field::Empty,
    );
    let producer = context_of(&message.headers);
    let producer_span = producer.span().span_context().clone();
    if producer_span.is_valid() {
        let _ = span.set_parent(producer);
        span.add_link(producer_span);
    }
    span
}

fn record_error(span: &tracing::Span, error: &impl std::fmt::Display, kind: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", kind);
    span.set_status(opentelemetry::trace::Status::error(error.to_string()));
}

/// Publishes messages over RabbitMQ or, without a broker, to HTTP subscribers. Cheap to clone.
#[derive(Clone)]
pub enum Publisher {
    /// RabbitMQ.
    Amqp(AmqpPublisher),
    /// HTTP fan-out to subscriber services.
    Http(HttpPublisher),
}

impl Publisher {
    /// The publisher `ctx` is configured for: RabbitMQ when it has an AMQP URL, else HTTP to `subscribers`.
    pub fn for_service(ctx: &ServiceContext, subscribers: &[&str]) -> Publisher {
        match &ctx.cfg.amqp_url {
            Some(url) => Publisher::Amqp(AmqpPublisher::new(url, Some(ctx.faults.clone()))),
            None => Publisher::Http(HttpPublisher::new(ctx.clone(), subscribers)),
        }
    }

    /// Publishes `message` in a PRODUCER span; `Ok` once every subscriber (HTTP) or the broker (RabbitMQ, publisher
    /// confirm) has taken it.
    pub async fn publish(&self, message: &Message) -> Result<(), BrokerError> {
        let (system, destination) = match self {
            Publisher::Amqp(_) => ("rabbitmq", EXCHANGE),
            Publisher::Http(_) => (HTTP_SYSTEM, message.topic.as_str()),
        };
        let span = producer_span(system, destination, message);
        let result = async {
            let mut message = message.clone();
            message.headers = current_trace_headers();
            match self {
                Publisher::Amqp(p) => p.publish(&message).await,
                Publisher::Http(p) => p.publish(&message).await,
            }
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = &result {
            record_error(&span, e, if matches!(e, BrokerError::Down) { "broker_down" } else { "publish" });
        }
        result
    }
}

/// RabbitMQ publisher: one connection and confirm-mode channel, opened on first use and again after a failure.
#[derive(Clone)]
pub struct AmqpPublisher {
    url: String,
    faults: Option<Faults>,
    channel: Arc<tokio::sync::Mutex<Option<(Connection, Channel)>>>,
}

impl AmqpPublisher {
    /// A publisher to the broker at `url`; `faults` supplies the "broker down" switch.
    pub fn new(url: &str, faults: Option<Faults>) -> AmqpPublisher {
        AmqpPublisher { url: url.to_owned(), faults, channel: Arc::default() }
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut slot = self.channel.lock().await;
        if let Some((conn, channel)) = slot.as_ref()
            && conn.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let conn = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        declare_exchange(&channel).await?;
        *slot = Some((conn, channel.clone()));
        Ok(channel)
    }

    async fn publish(&self, message: &Message) -> Result<(), BrokerError> {
        if self.faults.as_ref().is_some_and(Faults::broker_down) {
            return Err(BrokerError::Down);
        }
        let channel = self.channel().await?;
        let mut headers = FieldTable::default();
        for (k, v) in &message.headers {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
        let properties = BasicProperties::default()
            .with_message_id(message.id.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let body = serde_json::to_vec(&message.payload).unwrap_or_default();
        let result = async {
            let confirm = channel
                .basic_publish(
                    EXCHANGE.into(),
                    message.topic.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?
                .await?;
            match confirm {
                Confirmation::Ack(_) => Ok(()),
                _ => Err(BrokerError::NotConfirmed(message.id.clone())),
            }
        }
        .await;
        if result.is_err() {
            // Reconnect on the next publish.
            self.channel.lock().await.take();
        }
        result
    }
}

async fn declare_exchange(channel: &Channel) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
}

/// HTTP fan-out: `POST /events` to every subscriber service, resolved through the service context (registry or
/// pinned peers).
#[derive(Clone)]
pub struct HttpPublisher {
    ctx: Arc<ServiceContext>,
    subscribers: Arc<[String]>,
}

impl HttpPublisher {
    /// A publisher that delivers every message to each of `subscribers` (service names).
    pub fn new(ctx: ServiceContext, subscribers: &[&str]) -> HttpPublisher {
        HttpPublisher { ctx: Arc::new(ctx), subscribers: subscribers.iter().map(|s| (*s).to_owned()).collect() }
    }

    async fn publish(&self, message: &Message) -> Result<(), BrokerError> {
        if self.ctx.faults.broker_down() {
            return Err(BrokerError::Down);
        }
        for subscriber in self.subscribers.iter() {
            let fail = |error: String| BrokerError::Subscriber { subscriber: subscriber.clone(), error };
            let url = self.ctx.url_of(subscriber).await.map_err(|e| fail(e.to_string()))?;
            let request = self.ctx.http.raw().post(format!("{url}/events")).json(message);
            let response = self.ctx.http.send(request, Some("/events")).await.map_err(|e| fail(e.to_string()))?;
            if !response.status().is_success() {
                return Err(fail(format!("answered {}", response.status())));
            }
        }
        Ok(())
    }
}

/// What a consumer does with one message; `Err` asks for redelivery.
pub type Handler = Arc<dyn Fn(Message) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// `POST /events`: the HTTP fallback's delivery endpoint for `handler`.
pub fn http_consumer_routes(handler: Handler) -> axum::Router {
    axum::Router::new().route("/events", axum::routing::post(receive)).with_state(handler)
}

async fn receive(
    State(handler): State<Handler>,
    body: Result<Json<Message>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(message) = match body {
        Ok(m) => m,
        Err(e) => return (e.status(), format!("bad event: {}", e.body_text())).into_response(),
    };
    let span = process_span(HTTP_SYSTEM, &message.topic.clone(), &message);
    let result = handler(message).instrument(span.clone()).await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            record_error(&span, &e, "handler");
            (StatusCode::SERVICE_UNAVAILABLE, format!("event not processed: {e}")).into_response()
        }
    }
}

/// Consumes `topics` from the durable queue `queue` until `shutdown` resolves, running `handler` per message in a
/// CONSUMER span and acknowledging after it succeeded. Shutting down mid-message closes the connection without an
/// ack, so RabbitMQ delivers the message again (to this or another consumer).
pub async fn consume_amqp(
    url: &str,
    queue: &str,
    topics: &[&str],
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    declare_exchange(&channel).await?;
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await?;
    for topic in topics {
        channel
            .queue_bind(
                queue.into(),
                EXCHANGE.into(),
                (*topic).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.basic_qos(16, BasicQosOptions::default()).await?;
    let mut consumer =
        channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    tracing::info!(queue, "consuming");
    tokio::pin!(shutdown);
    let result = loop {
        let delivery = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => break Err(BrokerError::Amqp(e)),
                None => break Ok(()),
            },
        };
        let message = message_of(&delivery);
        let span = process_span("rabbitmq", EXCHANGE, &message);
        span.record("messaging.destination.name", EXCHANGE);
        let work = async {
            let outcome = handler(message).await;
            match &outcome {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
                Err(e) => {
                    record_error(&tracing::Span::current(), e, "handler");
                    tracing::warn!(error = %e, "event not processed, requeued");
                    delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.map(|_| ())
                }
            }
        }
        .instrument(span);
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            acked = work => if let Err(e) = acked { break Err(BrokerError::Amqp(e)) },
        }
    };
    let _ = conn.close(200, "consumer stopping".into()).await;
    result
}

fn message_of(delivery: &lapin::message::Delivery) -> Message {
    let mut headers = BTreeMap::new();
    if let Some(table) = delivery.properties.headers() {
        for (k, v) in table.inner() {
            if let AMQPValue::LongString(s) = v {
                headers.insert(k.as_str().to_owned(), String::from_utf8_lossy(s.as_bytes()).into_owned());
            }
        }
    }
    // A message from another publisher may lack an id; one derived from its content keeps redeliveries of it
    // recognisable to the inbox.
    let id = match delivery.properties.message_id() {
        Some(id) if !id.as_str().is_empty() => id.as_str().to_owned(),
        _ => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (delivery.routing_key.as_str(), &delivery.data).hash(&mut h);
            format!("content-{:016x}", h.finish())
        }
    };
    Message {
        id,
        topic: delivery.routing_key.as_str().to_owned(),
        payload: serde_json::from_slice(&delivery.data).unwrap_or(serde_json::Value::Null),
        headers,
    }
}

/// Subscribes `handler` to `topics`. With an AMQP URL in `ctx`: consumes the durable queue `queue` in the
/// background until `shutdown` resolves, reconnecting after failures, and returns no routes. Without: returns the
/// HTTP fallback's `POST /events` route (messages of other topics are acknowledged and ignored).
pub fn subscribe(
    ctx: &ServiceContext,
    queue: &str,
    topics: &[&str],
    handler: Handler,
    shutdown: impl Future<Output = ()> + Send + Clone + 'static,
) -> axum::Router {
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let Some(url) = ctx.cfg.amqp_url.clone() else {
        let filtered: Handler =
            Arc::new(
                move |message: Message| {
                    if topics.contains(&message.topic) { handler(message) } else { Box::pin(async { Ok(()) }) }
                },
            );
        return http_consumer_routes(filtered);
    };
    let queue = queue.to_owned();
    tokio::spawn(async move {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let stop = shutdown.clone();
        tokio::pin!(stop);
        loop {
            match consume_amqp(&url, &queue, &topics, handler.clone(), shutdown.clone()).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(queue = %queue, error = %e, "amqp consumer failed, reconnecting"),
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    });
    axum::Router::new()
}
