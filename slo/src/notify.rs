//! Alert notifications: webhooks in the Alertmanager webhook format and a real Alertmanager's
//! `POST /api/v2/alerts`.
//!
//! The engine hands every evaluation's alerts to an [`AlertSink`]; [`Notifier`] is the sink that
//! builds the request bodies at once (`payload`) and queues them, one bounded queue and one
//! delivery task per receiver URL, so that a dead receiver delays nobody else and the engine
//! never waits. A full queue drops its oldest message. Each request has a timeout; network errors,
//! timeouts, 5xx, 408 and 429 are retried with exponential backoff; other 4xx are not (the
//! answer's body is logged).
//!
//! Receivers are the `[slo.notify]` webhooks and Alertmanagers, made at start, and the webhook URLs
//! of the definitions' notification targets ([`Alert::webhooks`]), made on first use: at most
//! [`MAX_TARGETS`] at a time, an idle one (empty queue, nothing being sent) making room for a new
//! one when they are all in use.
//!
//! Self-metrics: `obsbox_slo_notifications_total{receiver_type,outcome}` (outcome `sent` or
//! `failed`), `obsbox_slo_notification_queue{receiver_type}` (messages waiting),
//! `obsbox_slo_notifications_dropped_total{receiver_type}` (dropped because the queue was full),
//! `obsbox_slo_notification_targets` (receivers made for notification targets) and
//! `obsbox_slo_notifications_refused_total{reason}` (messages for notification targets not
//! queued: `invalid_url` or `too_many_targets`).

mod payload;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::NotifyConfig;
use crate::error::SloError;
use crate::status::{Alert, Transition};

/// Where the engine sends the alerts of every evaluation.
pub trait AlertSink: Send + Sync {
    /// Non-blocking. `alerts`: every alert that is Firing now, plus those that became Resolved at
    /// this evaluation; `transitions`: the state changes of this evaluation
    /// (Pending/Firing/Resolved/Inactive).
    fn deliver(&self, alerts: &[Alert], transitions: &[Transition]);
}

/// Default `external_url`: obsbox's UI on its default port.
const DEFAULT_EXTERNAL_URL: &str = "http://localhost:16686";
/// Messages waiting per receiver before the oldest is dropped.
const QUEUE_CAPACITY: usize = 256;
/// Receivers for notification targets (webhook URLs of definitions) at a time.
pub(crate) const MAX_TARGETS: usize = 64;
/// Timeout of one HTTP request (connect included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries after the first attempt, waiting 0.5 s, 1 s, 2 s, 4 s, 8 s.
const MAX_RETRIES: usize = 5;
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Alertmanager `endsAt` of a firing alert: now + 4 x max(this, evaluation interval), as
/// Prometheus does with its resend delay, so Alertmanager resolves it if obsbox stops.
const MIN_RESEND: Duration = Duration::from_secs(60);
/// Redirects (307/308 only) followed per request.
const MAX_REDIRECTS: usize = 5;
/// Body bytes of a rejected request kept for the log.
const LOGGED_BODY: usize = 512;

/// The kinds of receivers, the `receiver_type` label of the self-metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReceiverType {
    Webhook,
    Alertmanager,
}

impl ReceiverType {
    fn as_str(self) -> &'static str {
        match self {
            ReceiverType::Webhook => "webhook",
            ReceiverType::Alertmanager => "alertmanager",
        }
    }
}

/// The notifier's self-metrics.
#[derive(Clone)]
struct Metrics {
    notifications: IntCounterVec,
    queue: IntGaugeVec,
    dropped: IntCounterVec,
    targets: IntGauge,
    refused: IntCounterVec,
}

/// Why a message for a notification target was not queued (the `reason` label).
const REFUSED_INVALID_URL: &str = "invalid_url";
const REFUSED_TOO_MANY: &str = "too_many_targets";

impl Metrics {
    fn register(registry: &Registry) -> Result<Metrics, SloError> {
        let m = Metrics {
            notifications: IntCounterVec::new(
                Opts::new("obsbox_slo_notifications_total", "SLO alert notifications by receiver type and outcome"),
                &["receiver_type", "outcome"],
            )
            .map_err(metrics_error)?,
            queue: IntGaugeVec::new(
                Opts::new("obsbox_slo_notification_queue", "SLO alert notifications waiting to be sent"),
                &["receiver_type"],
            )
            .map_err(metrics_error)?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "obsbox_slo_notifications_dropped_total",
                    "SLO alert notifications dropped because the receiver's queue was full",
                ),
                &["receiver_type"],
            )
            .map_err(metrics_error)?,
            targets: IntGauge::new(
                "obsbox_slo_notification_targets",
                "Receivers made for the notification targets of SLO definitions",
            )
            .map_err(metrics_error)?,
            refused: IntCounterVec::new(
                Opts::new(
                    "obsbox_slo_notifications_refused_total",
                    "SLO alert notifications for notification targets not queued: invalid URL or too many targets",
                ),
                &["reason"],
            )
            .map_err(metrics_error)?,
        };
        registry.register(Box::new(m.notifications.clone())).map_err(metrics_error)?;
        registry.register(Box::new(m.queue.clone())).map_err(metrics_error)?;
        registry.register(Box::new(m.dropped.clone())).map_err(metrics_error)?;
        registry.register(Box::new(m.targets.clone())).map_err(metrics_error)?;
        registry.register(Box::new(m.refused.clone())).map_err(metrics_error)?;
        for reason in [REFUSED_INVALID_URL, REFUSED_TOO_MANY] {
            m.refused.with_label_values(&[reason]);
        }
        for kind in [ReceiverType::Webhook, ReceiverType::Alertmanager] {
            // Present at zero from the start, so rates and alerts on them work before the first failure.
            for outcome in ["sent", "failed"] {
                m.notifications.with_label_values(&[kind.as_str(), outcome]);
            }
            m.queue.with_label_values(&[kind.as_str()]);
            m.dropped.with_label_values(&[kind.as_str()]);
        }
        Ok(m)
    }
}

fn metrics_error(e: prometheus::Error) -> SloError {
    SloError::Metrics(e.to_string())
}

/// A bounded FIFO of request bodies that drops its oldest entry when full.
struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    wake: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Bytes>,
    /// The sender took a message and has not asked for the next one yet.
    sending: bool,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState::default()),
            capacity,
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `body`; returns whether the oldest message was dropped to make room.
    fn push(&self, body: Bytes) -> bool {
        let dropped = {
            let mut state = self.lock();
            let dropped = state.items.len() >= self.capacity && state.items.pop_front().is_some();
            state.items.push_back(body);
            dropped
        };
        self.wake.notify_one();
        dropped
    }

    /// The next message for the sender, which is busy with it until its next call.
    fn pop(&self) -> Option<Bytes> {
        let mut state = self.lock();
        let next = state.items.pop_front();
        state.sending = next.is_some();
        next
    }

    fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Nothing queued and nothing being sent.
    fn is_idle(&self) -> bool {
        let state = self.lock();
        state.items.is_empty() && !state.sending
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// One receiver URL with its queue.
struct Receiver {
    kind: ReceiverType,
    /// As parsed (normalized), to recognize a notification target that is also a `[slo.notify]`
    /// webhook.
    url: String,
    queue: Arc<Queue>,
}

/// The receivers of notification targets, by normalized URL.
#[derive(Default)]
struct Targets {
    by_url: HashMap<String, Receiver>,
    /// Set by [`Notifier::close`]: no receiver is made after it.
    closed: bool,
}

/// The [`AlertSink`] that notifies the webhooks and Alertmanagers of a [`NotifyConfig`] and the
/// webhooks of the alerts' notification targets ([`Alert::webhooks`]).
///
/// Webhooks of `[slo.notify]` get one POST per SLO at every evaluation where one of its alerts
/// turned firing or resolved, carrying the SLO's firing and just-resolved alerts. A notification
/// target gets the same, restricted to the alerts that name it: a POST per SLO at every
/// evaluation where one of those alerts turned firing or resolved, carrying those of them that
/// are firing or just resolved (none when its URL is also a `[slo.notify]` webhook, which gets
/// them all already). Alertmanagers get every firing alert at every evaluation and each resolved
/// alert once. Delivery happens on background tasks in the order of [`AlertSink::deliver`] calls
/// per receiver.
pub struct Notifier {
    receivers: Vec<Receiver>,
    targets: Mutex<Targets>,
    /// Taken by [`Notifier::close`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// For the receivers of notification targets, made on first use.
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    external_url: String,
    metrics: Metrics,
    /// The previous `deliver` call, to measure the evaluation interval.
    last_delivery: Mutex<Option<Instant>>,
}

impl Notifier {
    /// Checks the URLs, registers the self-metrics in `registry` and starts one delivery task
    /// per receiver. Must be called inside a tokio runtime, which also runs the delivery tasks of
    /// notification targets made later (so [`AlertSink::deliver`] may be called from any
    /// thread). Fails on a URL that is not plain `http://` (this build has no TLS) or on metrics
    /// already registered.
    pub fn start(config: &NotifyConfig, registry: &Registry) -> Result<Notifier, SloError> {
        let external_url = config.external_url.as_deref().unwrap_or(DEFAULT_EXTERNAL_URL).trim_end_matches('/');
        // Only a link in messages (users may reach obsbox over https through a proxy), but it
        // must be absolute: Alertmanager rejects alerts whose generatorURL is not a URI.
        match reqwest::Url::parse(external_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => {
                return Err(SloError::InvalidConfig {
                    key: "notify.external_url",
                    reason: format!("{external_url:?} is not an absolute http(s) URL"),
                });
            }
        }
        let mut targets = Vec::new();
        for url in &config.webhooks {
            targets.push((ReceiverType::Webhook, check_url("notify.webhooks", url)?));
        }
        for base in &config.alertmanagers {
            targets.push((ReceiverType::Alertmanager, alertmanager_url(base)?));
        }
        let metrics = Metrics::register(registry)?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("obsbox/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // 301/302/303 would turn the POST into a GET that "succeeds" without delivering
                // anything: only 307/308 (method and body kept) are followed.
                let keeps_post = matches!(attempt.status().as_u16(), 307 | 308);
                if keeps_post && attempt.previous().len() < MAX_REDIRECTS { attempt.follow() } else { attempt.stop() }
            }))
            .build()
            .map_err(|e| SloError::InvalidConfig { key: "notify", reason: format!("http client: {e}") })?;
        let mut receivers = Vec::new();
        let mut tasks = Vec::new();
        let runtime = tokio::runtime::Handle::current();
        for (kind, url) in targets {
            let queue = Arc::new(Queue::new(QUEUE_CAPACITY));
            let receiver = Receiver { kind, url: url.to_string(), queue: queue.clone() };
            let sender = Sender { kind, url, client: client.clone(), metrics: metrics.clone() };
            tasks.push(runtime.spawn(sender.run(queue)));
            receivers.push(receiver);
        }
        Ok(Notifier {
            receivers,
            targets: Mutex::new(Targets::default()),
            tasks: Mutex::new(tasks),
            client,
            runtime,
            external_url: external_url.to_owned(),
            metrics,
            last_delivery: Mutex::new(None),
        })
    }

    /// Stops accepting work (later [`AlertSink::deliver`] calls are ignored) and waits up to
    /// `timeout` for the queued messages to be sent (with their retries); what is left then is
    /// abandoned (logged). Takes `&self` so that a notifier shared with the engine (see the
    /// `Arc<Notifier>` sink) can be closed at shutdown; a second call returns at once.
    pub async fn close(&self, timeout: Duration) {
        let queues = self.close_queues();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        if tokio::time::timeout(timeout, futures_join(tasks)).await.is_err() {
            let left: usize = queues.iter().map(|q| q.len()).sum();
            warn!(left, "slo notifications not all sent before shutdown");
            for a in aborts {
                a.abort();
            }
        }
    }

    /// Closes every queue (the tasks send what is queued, then end) and stops making receivers
    /// for notification targets; returns the queues.
    fn close_queues(&self) -> Vec<Arc<Queue>> {
        let mut queues: Vec<Arc<Queue>> = self.receivers.iter().map(|r| r.queue.clone()).collect();
        {
            let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
            targets.closed = true;
            queues.extend(targets.by_url.values().map(|r| r.queue.clone()));
        }
        for q in &queues {
            q.close();
        }
        queues
    }

    /// How long Alertmanager keeps a firing alert without news: 4 x max(1 min, the time since the
    /// previous evaluation).
    fn valid_for(&self, now: Instant) -> Duration {
        let mut last = self.last_delivery.lock().unwrap_or_else(|e| e.into_inner());
        let interval = last.map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        *last = Some(now);
        4 * interval.max(MIN_RESEND)
    }

    fn enqueue(&self, kind: ReceiverType, body: Bytes) {
        for r in self.receivers.iter().filter(|r| r.kind == kind) {
            self.push(kind, &r.queue, body.clone());
        }
    }

    fn push(&self, kind: ReceiverType, queue: &Queue, body: Bytes) {
        if queue.is_closed() {
            return;
        }
        let label = [kind.as_str()];
        if queue.push(body) {
            self.metrics.dropped.with_label_values(&label).inc();
            warn!(receiver_type = kind.as_str(), "slo notification queue full, dropped the oldest message");
        } else {
            self.metrics.queue.with_label_values(&label).inc();
        }
    }

    /// Sends each notification target its messages: the URLs `alerts` name, each with the
    /// messages of the alerts that name it.
    fn deliver_to_targets(&self, alerts: &[Alert], transitions: &[Transition]) {
        let named: BTreeSet<&str> = alerts.iter().flat_map(|a| a.webhooks.iter().map(String::as_str)).collect();
        if named.is_empty() {
            return;
        }
        // By normalized URL, so that two spellings of one URL make one receiver and one message.
        let mut by_url: BTreeMap<String, (reqwest::Url, Vec<&str>)> = BTreeMap::new();
        for raw in named {
            match webhook_url(raw) {
                Ok(url) => by_url.entry(url.to_string()).or_insert_with(|| (url, Vec::new())).1.push(raw),
                Err(reason) => {
                    // The parser refuses such URLs: this one came from elsewhere (an old state file).
                    let n = payload::webhook_messages(alerts, transitions, &self.external_url, naming(&[raw])).len();
                    if n > 0 {
                        self.metrics.refused.with_label_values(&[REFUSED_INVALID_URL]).inc_by(n as u64);
                        warn!(url = raw, %reason, "slo notification target has an invalid url, not notified");
                    }
                }
            }
        }
        for (key, (url, spellings)) in by_url {
            if self.receivers.iter().any(|r| r.kind == ReceiverType::Webhook && r.url == key) {
                continue;
            }
            let msgs = payload::webhook_messages(alerts, transitions, &self.external_url, naming(&spellings));
            if msgs.is_empty() {
                continue;
            }
            let bodies: Vec<Bytes> = msgs
                .iter()
                .filter_map(|msg| {
                    serde_json::to_vec(msg).inspect_err(|e| warn!(error = %e, "cannot encode slo webhook message")).ok()
                })
                .map(Bytes::from)
                .collect();
            self.send_to_target(&key, url, bodies);
        }
    }

    /// Queues `bodies` for the notification target `key`, making its receiver (queue and
    /// delivery task) on first use. Nothing is queued after [`Notifier::close`], nor when
    /// [`MAX_TARGETS`] receivers exist and none is idle (counted and logged as refused).
    fn send_to_target(&self, key: &str, url: reqwest::Url, bodies: Vec<Bytes>) {
        // Held while pushing, so that a receiver cannot be evicted between lookup and push.
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if targets.closed {
            return;
        }
        if !targets.by_url.contains_key(key) {
            if targets.by_url.len() >= MAX_TARGETS {
                // Out of the map, an idle receiver gets nothing more: closing its queue ends its task.
                let idle = targets.by_url.iter().find(|(_, r)| r.queue.is_idle()).map(|(k, _)| k.clone());
                match idle.and_then(|k| targets.by_url.remove(&k)) {
                    Some(evicted) => evicted.queue.close(),
                    None => {
                        self.metrics.refused.with_label_values(&[REFUSED_TOO_MANY]).inc_by(bodies.len() as u64);
                        warn!(
                            url = key,
                            max = MAX_TARGETS,
                            "slo notification target not notified: every receiver for notification targets is busy"
                        );
                        return;
                    }
                }
            }
            let queue = Arc::new(Queue::new(QUEUE_CAPACITY));
            let kind = ReceiverType::Webhook;
            let sender = Sender { kind, url, client: self.client.clone(), metrics: self.metrics.clone() };
            let task = self.runtime.spawn(sender.run(queue.clone()));
            {
                let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
                tasks.retain(|t| !t.is_finished());
                tasks.push(task);
            }
            targets.by_url.insert(key.to_owned(), Receiver { kind, url: key.to_owned(), queue });
            self.metrics.targets.set(targets.by_url.len() as i64);
        }
        let queue = &targets.by_url[key].queue;
        for body in bodies {
            self.push(ReceiverType::Webhook, queue, body);
        }
    }
}

impl AlertSink for Notifier {
    fn deliver(&self, alerts: &[Alert], transitions: &[Transition]) {
        let valid_for = self.valid_for(Instant::now());
        if self.receivers.iter().any(|r| r.kind == ReceiverType::Webhook) {
            for msg in payload::webhook_messages(alerts, transitions, &self.external_url, |_| true) {
                match serde_json::to_vec(&msg) {
                    Ok(body) => self.enqueue(ReceiverType::Webhook, body.into()),
                    Err(e) => warn!(error = %e, "cannot encode slo webhook message"),
                }
            }
        }
        self.deliver_to_targets(alerts, transitions);
        if self.receivers.iter().any(|r| r.kind == ReceiverType::Alertmanager) {
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            let list = payload::alertmanager_alerts(alerts, now_ms, valid_for, &self.external_url);
            if !list.is_empty() {
                match serde_json::to_vec(&list) {
                    Ok(body) => self.enqueue(ReceiverType::Alertmanager, body.into()),
                    Err(e) => warn!(error = %e, "cannot encode slo alerts for alertmanager"),
                }
            }
        }
    }
}

/// For an engine that owns its sink while the caller keeps the notifier to close it.
impl AlertSink for Arc<Notifier> {
    fn deliver(&self, alerts: &[Alert], transitions: &[Transition]) {
        (**self).deliver(alerts, transitions);
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // The tasks send what is queued, then end.
        self.close_queues();
    }
}

/// Whether an alert names one of `spellings` of a notification target's URL.
fn naming<'a>(spellings: &'a [&str]) -> impl Fn(&Alert) -> bool + 'a {
    move |a| a.webhooks.iter().any(|w| spellings.contains(&w.as_str()))
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

fn check_url(key: &'static str, url: &str) -> Result<reqwest::Url, SloError> {
    webhook_url(url).map_err(|reason| SloError::InvalidConfig { key, reason: format!("{url:?}: {reason}") })
}

/// A receiver URL as the notifier can use it: absolute `http://` with a host (this build has no
/// TLS client). The one check of `[slo.notify]` URLs and of notification targets in definitions
/// (`spec`); the error is the reason, without the URL.
pub(crate) fn webhook_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    match parsed.scheme() {
        "http" => {}
        "https" => return Err("https is not supported by this build (no TLS); use http".into()),
        other => return Err(format!("unsupported scheme {other:?}")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(parsed)
}

/// `<base>/api/v2/alerts`, keeping a path prefix of `base` (Alertmanager behind a proxy).
fn alertmanager_url(base: &str) -> Result<reqwest::Url, SloError> {
    let mut url = check_url("notify.alertmanagers", base)?;
    let path = format!("{}/api/v2/alerts", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// One receiver's delivery task.
struct Sender {
    kind: ReceiverType,
    url: reqwest::Url,
    client: reqwest::Client,
    metrics: Metrics,
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth retrying: network error, timeout, 5xx, 408, 429.
    Transient(String),
    /// The receiver rejected the message (other 4xx, 3xx): retrying would not help.
    Rejected(String),
}

impl Sender {
    async fn run(self, queue: Arc<Queue>) {
        let label = [self.kind.as_str()];
        loop {
            let Some(body) = queue.pop() else {
                if queue.is_closed() {
                    return;
                }
                queue.wake.notified().await;
                continue;
            };
            self.metrics.queue.with_label_values(&label).dec();
            let outcome = match self.send_with_retries(body).await {
                Ok(()) => "sent",
                Err(Failure::Transient(reason) | Failure::Rejected(reason)) => {
                    warn!(receiver_type = label[0], url = %self.url, %reason, "slo notification failed");
                    "failed"
                }
            };
            self.metrics.notifications.with_label_values(&[label[0], outcome]).inc();
        }
    }

    async fn send_with_retries(&self, body: Bytes) -> Result<(), Failure> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(MIN_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(MAX_RETRIES);
        (|| self.send_once(body.clone()))
            .retry(backoff)
            .when(|f| matches!(f, Failure::Transient(_)))
            .notify(|f, wait| debug!(url = %self.url, failure = ?f, ?wait, "retrying slo notification"))
            .await
    }

    async fn send_once(&self, body: Bytes) -> Result<(), Failure> {
        let resp = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Transient(error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let reason = format!("http {status}: {}", body_start(resp).await.trim());
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(Failure::Transient(reason))
        } else {
            Err(Failure::Rejected(reason))
        }
    }
}

/// The first [`LOGGED_BODY`] bytes of an answer, without reading the rest.
async fn body_start(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < LOGGED_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    buf.truncate(LOGGED_BODY);
    String::from_utf8_lossy(&buf).into_owned()
}

/// An error with its causes (reqwest's top-level message alone hides "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_the_oldest() {
        let q = Queue::new(2);
        assert!(!q.push(Bytes::from_static(b"1")));
        assert!(!q.push(Bytes::from_static(b"2")));
        assert!(q.push(Bytes::from_static(b"3")), "third push drops");
        assert_eq!(q.pop().as_deref(), Some(&b"2"[..]));
        assert_eq!(q.pop().as_deref(), Some(&b"3"[..]));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn urls_are_checked() {
        for (base, want) in [
            ("http://am:9093", "http://am:9093/api/v2/alerts"),
            ("http://am:9093/", "http://am:9093/api/v2/alerts"),
            ("http://h/prefix/", "http://h/prefix/api/v2/alerts"),
        ] {
            assert_eq!(alertmanager_url(base).unwrap().as_str(), want);
        }
        assert_eq!(check_url("notify.webhooks", "http://h/hook").unwrap().as_str(), "http://h/hook", "kept as is");
        let e = check_url("notify.webhooks", "https://hooks.example").unwrap_err().to_string();
        assert!(e.contains("notify.webhooks") && e.contains("https"), "{e}");
        assert!(check_url("notify.webhooks", "ftp://x").is_err());
        assert!(check_url("notify.webhooks", "not a url").is_err());
    }

    #[tokio::test]
    async fn start_registers_metrics_once_and_rejects_bad_urls() {
        let registry = Registry::new();
        let config = NotifyConfig { webhooks: vec!["http://127.0.0.1:9/hook".into()], ..Default::default() };
        let n = Notifier::start(&config, &registry).unwrap();
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_owned()).collect();
        for want in [
            "obsbox_slo_notifications_total",
            "obsbox_slo_notification_queue",
            "obsbox_slo_notifications_dropped_total",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(matches!(Notifier::start(&config, &registry), Err(SloError::Metrics(_))));
        n.close(Duration::from_secs(1)).await;
        let bad = NotifyConfig { alertmanagers: vec!["am:9093".into()], ..Default::default() };
        assert!(Notifier::start(&bad, &Registry::new()).is_err());
        let bad = NotifyConfig { external_url: Some("obsbox.example.com".into()), ..Default::default() };
        let e = Notifier::start(&bad, &Registry::new()).err().unwrap().to_string();
        assert!(e.contains("notify.external_url"), "{e}");
        let ok = NotifyConfig { external_url: Some("https://obsbox.example.com/".into()), ..Default::default() };
        Notifier::start(&ok, &Registry::new()).unwrap().close(Duration::ZERO).await;
    }

    #[test]
    fn valid_for_follows_the_evaluation_interval() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let n = rt.block_on(async { Notifier::start(&NotifyConfig::default(), &Registry::new()).unwrap() });
        let t = Instant::now();
        assert_eq!(n.valid_for(t), Duration::from_secs(240), "first evaluation: 4 x 1 min");
        assert_eq!(n.valid_for(t + Duration::from_secs(30)), Duration::from_secs(240));
        assert_eq!(n.valid_for(t + Duration::from_secs(330)), Duration::from_secs(1200), "4 x 5 min");
    }
}
