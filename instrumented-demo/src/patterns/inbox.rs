//! Inbox: idempotent consumers. A message's effect and the row recording its id commit in one SQLite
//! transaction; a redelivered message (the broker's at-least-once delivery, the outbox relay's retries, a consumer
//! that crashed after committing but before acknowledging) finds its id and does nothing.

use crate::Result;
use crate::broker::Message;
use crate::db::Db;

/// The inbox table; run it with [`Db::migrate`].
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS inbox (
    message_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);";

/// What [`process_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// First delivery: the effect ran and committed, with its result.
    Processed(T),
    /// The message id was already in the inbox: nothing ran.
    Duplicate,
}

/// Runs `effect` for `message` unless its id is already in the inbox; the effect and the inbox row commit
/// together, so a crash at any point leaves either both or neither.
pub async fn process_once<T, F>(db: &Db, message: &Message, effect: F) -> Result<Outcome<T>>
where
    T: Send + 'static,
    F: FnOnce(&rusqlite::Transaction<'_>, &Message) -> rusqlite::Result<T> + Send + 'static,
{
    let id = message.id.clone();
    let message = message.clone();
    let outcome = db
        .call("INSERT", "inbox", "INSERT OR IGNORE INTO inbox (message_id, topic, received_ms) VALUES (?1, ?2, ?3)", {
            move |conn| {
                let tx = conn.transaction()?;
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO inbox (message_id, topic, received_ms) VALUES (?1, ?2, ?3)",
                    rusqlite::params![message.id, message.topic, crate::patterns::now_ms()],
                )?;
                if inserted == 0 {
                    return Ok(Outcome::Duplicate);
                }
                let value = effect(&tx, &message)?;
                tx.commit()?;
                Ok(Outcome::Processed(value))
            }
        })
        .await?;
    if matches!(outcome, Outcome::Duplicate) {
        tracing::info!(messaging.message.id = %id, "duplicate message ignored");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_redelivered_message_has_no_second_effect_and_a_failed_effect_leaves_no_trace() {
        let db = Db::in_memory("inbox").unwrap();
        db.migrate(SCHEMA).unwrap();
        db.migrate("CREATE TABLE effects (n INTEGER NOT NULL)").unwrap();
        let message = Message {
            id: "m1".into(),
            topic: "order.placed".into(),
            payload: serde_json::json!({}),
            headers: Default::default(),
        };
        let effect = |tx: &rusqlite::Transaction<'_>, _: &Message| tx.execute("INSERT INTO effects VALUES (1)", []);
        assert_eq!(process_once(&db, &message, effect).await.unwrap(), Outcome::Processed(1));
        assert_eq!(process_once(&db, &message, effect).await.unwrap(), Outcome::Duplicate);

        // An effect that fails rolls the inbox row back with it: the message is processed on redelivery.
        let other = Message { id: "m2".into(), ..message.clone() };
        let failing = |tx: &rusqlite::Transaction<'_>, _: &Message| tx.execute("INSERT INTO missing VALUES (1)", []);
        assert!(process_once(&db, &other, failing).await.is_err());
        assert_eq!(process_once(&db, &other, effect).await.unwrap(), Outcome::Processed(1));

        let count: i64 = db
            .call("SELECT", "effects", "", |c| c.query_row("SELECT COUNT(*) FROM effects", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(count, 2);
    }
}
