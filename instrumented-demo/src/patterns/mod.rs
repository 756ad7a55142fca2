//! The microservice patterns the demo shows, each small enough to read in one sitting.
//!
//! Where things are:
//! - resilience around the payment provider call: [`breaker`] (closed/open/half-open), [`retry`] (exponential
//!   backoff, full jitter, budget), [`timeout`] (per attempt), [`bulkhead`] (bounded concurrency); composed in
//!   `services::payments`;
//! - data consistency across services: [`saga`] (orchestrated, persisted, compensating), [`outbox`] (event written
//!   in the same transaction as the state change, relayed to the broker), [`inbox`] (idempotent consumers).

pub mod breaker;
pub mod bulkhead;
pub mod inbox;
pub mod outbox;
pub mod retry;
pub mod saga;
pub mod timeout;

/// Milliseconds since the Unix epoch, the timestamps of the pattern tables.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A random 128-bit id in hex (message ids, saga ids).
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
