//! SQLite, one database file per service, with a CLIENT span per statement or transaction.
//!
//! Statements run on tokio's blocking pool, one at a time per database (a mutex around one
//! connection: SQLite serialises writers anyway). Spans follow the OpenTelemetry database
//! conventions: name `OPERATION collection`, `db.system.name=sqlite`, `db.namespace`,
//! `db.operation.name`, `db.collection.name`, `db.query.text`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Result;

/// A service's database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    namespace: String,
}

impl Db {
    /// Opens (creating) the database at `path`, in WAL mode with a busy timeout.
    pub fn open(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let namespace = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Db { conn: Arc::new(Mutex::new(conn)), namespace })
    }

    /// An in-memory database (tests).
    pub fn in_memory(namespace: &str) -> Result<Db> {
        Ok(Db { conn: Arc::new(Mutex::new(Connection::open_in_memory()?)), namespace: namespace.to_owned() })
    }

    /// The database file of `service` instance `instance` under `data_dir`.
    pub fn path_for(data_dir: &Path, service: &str, instance: &str) -> PathBuf {
        data_dir.join(format!("{service}-{instance}.sqlite"))
    }

    /// Runs schema statements (`CREATE TABLE IF NOT EXISTS ...`) without a span.
    pub fn migrate(&self, sql: &str) -> Result<()> {
        self.conn.lock().execute_batch(sql)?;
        Ok(())
    }

    /// Runs `f` on the connection in a span named `operation collection` whose `db.query.text` is
    /// `query` (the statement, or the statements of a transaction). `f` runs on the blocking pool;
    /// it may open a transaction (`conn.transaction()`). An error sets the span's status to ERROR.
    pub async fn call<T, F>(&self, operation: &str, collection: &str, query: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let span = tracing::info_span!(
            "db",
            otel.name = %format!("{operation} {collection}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "sqlite",
            db.namespace = %self.namespace,
            db.operation.name = %operation,
            db.collection.name = %collection,
            db.query.text = %query,
        );
        let conn = self.conn.clone();
        let inner = span.clone();
        let result = tokio::task::spawn_blocking(move || inner.in_scope(|| f(&mut conn.lock()))).await?;
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            span.set_status(opentelemetry::trace::Status::error(e.to_string()));
        }
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statements_run_and_errors_come_back() {
        let db = Db::in_memory("t").unwrap();
        db.migrate("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)").unwrap();
        db.call("INSERT", "kv", "INSERT INTO kv VALUES (?1, ?2)", |c| c.execute("INSERT INTO kv VALUES ('a', 1)", []))
            .await
            .unwrap();
        let v: i64 = db
            .call("SELECT", "kv", "SELECT v FROM kv WHERE k = ?1", |c| {
                c.query_row("SELECT v FROM kv WHERE k = ?1", ["a"], |r| r.get(0))
            })
            .await
            .unwrap();
        assert_eq!(v, 1);
        let dup = db.call("INSERT", "kv", "INSERT", |c| c.execute("INSERT INTO kv VALUES ('a', 2)", [])).await;
        assert!(matches!(dup, Err(crate::Error::Db(_))), "{dup:?}");
    }
}
