//! Transactional outbox: an event is written to the `outbox` table in the same SQLite transaction as the state
//! change it reports, so there is never an order without its `OrderPlaced` or an event about an order that was
//! rolled back. A [`Relay`] publishes pending events oldest first and marks them sent.
//!
//! Delivery is at least once: a relay that crashes between publishing and marking sent publishes again after a
//! restart, and consumers are idempotent ([`super::inbox`]). The relay stops a pass at the first failure, so events
//! leave in the order they were written; failed events stay pending and are retried on the next pass ("broker
//! down" keeps them in the outbox).
//!
//! Each event keeps the trace context of the transaction that wrote it (`traceparent`/`tracestate` columns), so the
//! relay's producer span joins the trace of the request that caused the event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::Result;
use crate::broker::{Message, Publisher};
use crate::db::Db;

/// The outbox table; run it with [`Db::migrate`].
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',
    created_ms INTEGER NOT NULL,
    sent_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sent_ms, seq);";

/// Adds an event to the outbox inside `tx`, the transaction that makes the change it reports. `headers` carry the
/// trace context to continue ([`crate::broker::current_trace_headers`], taken outside the blocking DB call).
/// Returns the event's message id.
pub fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    topic: &str,
    payload: &serde_json::Value,
    headers: &BTreeMap<String, String>,
) -> rusqlite::Result<String> {
    let id = super::new_id();
    let headers = serde_json::to_string(headers).unwrap_or_else(|_| "{}".into());
    tx.execute(
        "INSERT INTO outbox (id, topic, payload, headers, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![id, topic, payload.to_string(), headers, super::now_ms()],
    )?;
    Ok(id)
}

/// Up to `limit` unsent events, oldest first.
pub async fn pending(db: &Db, limit: usize) -> Result<Vec<Message>> {
    const SQL: &str = "SELECT id, topic, payload, headers FROM outbox WHERE sent_ms IS NULL ORDER BY seq LIMIT ?1";
    db.call("SELECT", "outbox", SQL, move |conn| {
        let mut stmt = conn.prepare_cached(SQL)?;
        let rows = stmt.query_map([limit as i64], |row| {
            let payload: String = row.get(2)?;
            let headers: String = row.get(3)?;
            Ok(Message {
                id: row.get(0)?,
                topic: row.get(1)?,
                payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                headers: serde_json::from_str(&headers).unwrap_or_default(),
            })
        })?;
        rows.collect()
    })
    .await
}

/// Counts of the outbox rows: (pending, sent).
pub async fn counts(db: &Db) -> Result<(u64, u64)> {
    const SQL: &str = "SELECT COUNT(*) - COUNT(sent_ms), COUNT(sent_ms) FROM outbox";
    db.call("SELECT", "outbox", SQL, |conn| {
        conn.query_row(SQL, [], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
    })
    .await
}

async fn mark_sent(db: &Db, id: &str) -> Result<()> {
    const SQL: &str = "UPDATE outbox SET sent_ms = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1";
    let id = id.to_owned();
    db.call("UPDATE", "outbox", SQL, move |conn| conn.execute(SQL, rusqlite::params![id, super::now_ms()])).await?;
    Ok(())
}

async fn mark_failed(db: &Db, id: &str, error: String) -> Result<()> {
    const SQL: &str = "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1";
    let id = id.to_owned();
    db.call("UPDATE", "outbox", SQL, move |conn| conn.execute(SQL, rusqlite::params![id, error])).await?;
    Ok(())
}

/// Publishes the outbox's pending events; cheap to clone (clones share the wake-up signal).
#[derive(Clone)]
pub struct Relay {
    db: Db,
    publisher: Publisher,
    wake: Arc<Notify>,
    interval: Duration,
    batch: usize,
}

impl Relay {
    /// A relay over `db`'s outbox that publishes through `publisher`, passing every `interval` and on
    /// [`Relay::wake`].
    pub fn new(db: Db, publisher: Publisher, interval: Duration) -> Relay {
        Relay { db, publisher, wake: Arc::new(Notify::new()), interval, batch: 100 }
    }

    /// Asks for a pass now (call after committing a transaction that enqueued events).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One pass: publishes pending events oldest first until one fails; returns how many were sent.
    pub async fn relay_once(&self) -> Result<usize> {
        let mut sent = 0;
        for message in pending(&self.db, self.batch).await? {
            match self.publisher.publish(&message).await {
                Ok(()) => {
                    mark_sent(&self.db, &message.id).await?;
                    sent += 1;
                }
                Err(e) => {
                    tracing::warn!(messaging.message.id = %message.id, error = %e, "event not published, kept in the outbox");
                    mark_failed(&self.db, &message.id, e.to_string()).await?;
                    break;
                }
            }
        }
        Ok(sent)
    }

    /// Passes until `shutdown` resolves: on every wake-up and every `interval`. Errors are logged, not fatal.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.relay_once().await {
                tracing::warn!(error = %e, "outbox relay pass failed");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_event_commits_or_rolls_back_with_its_transaction() {
        let db = Db::in_memory("outbox").unwrap();
        db.migrate(SCHEMA).unwrap();
        db.migrate("CREATE TABLE orders (id TEXT PRIMARY KEY)").unwrap();
        let headers: BTreeMap<String, String> = [("traceparent".to_owned(), "00-1-2-01".to_owned())].into();
        let h = headers.clone();
        db.call("INSERT", "orders", "", move |conn| {
            let tx = conn.transaction()?;
            tx.execute("INSERT INTO orders VALUES ('o1')", [])?;
            enqueue(&tx, "order.placed", &serde_json::json!({ "order_id": "o1" }), &h)?;
            tx.commit()
        })
        .await
        .unwrap();
        // The order insert fails (duplicate id): its event goes with it.
        let failed = db
            .call("INSERT", "orders", "", move |conn| {
                let tx = conn.transaction()?;
                enqueue(&tx, "order.placed", &serde_json::json!({ "order_id": "o1" }), &BTreeMap::new())?;
                tx.execute("INSERT INTO orders VALUES ('o1')", [])?;
                tx.commit()
            })
            .await;
        assert!(failed.is_err());
        let events = pending(&db, 10).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].topic.as_str(), &events[0].payload),
            ("order.placed", &serde_json::json!({ "order_id": "o1" }))
        );
        assert_eq!(events[0].headers, headers, "the trace context is kept for the relay");
        assert_eq!(counts(&db).await.unwrap(), (1, 0));
    }
}
