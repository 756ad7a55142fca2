//! Orchestrated saga with compensations, persisted in SQLite so that a restarted process resumes it.
//!
//! A [`SagaDefinition`] names its steps; [`Saga::run`] executes them in order, recording each step's output
//! before the next starts. When a step fails the saga turns to compensating and undoes, in reverse order, every
//! step that completed **and the step that failed** (a timed-out charge may have happened: compensations must be
//! idempotent and a no-op for an action that never took effect). The end (completed or compensated) is recorded
//! in one transaction together with the definition's [`SagaDefinition::finish`] (the order's status and its
//! outbox event). A saga interrupted by a crash is found by [`Saga::resume_pending`] and continues where its log
//! ends; a step whose result was not recorded runs again, so steps must be idempotent too (keyed by saga id).
//!
//! Spans: `saga <kind>` around a run, `saga step <name>` per action, `saga compensate <name>` per compensation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use serde_json::Value;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::db::Db;

/// Why a saga run stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The saga log could not be read or written.
    #[error("saga log: {0}")]
    Log(#[from] crate::Error),
    /// No saga has this id.
    #[error("no saga {0}")]
    NotFound(String),
    /// A compensation kept failing; the saga stays compensating for [`Saga::resume_pending`].
    #[error("compensation of {step} failed: {error}")]
    CompensationFailed {
        /// The step whose compensation failed.
        step: String,
        /// Why.
        error: StepError,
    },
}

type Result<T, E = SagaError> = std::result::Result<T, E>;

/// The saga tables; run them with [`Db::migrate`].
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sagas (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    failed_step TEXT,
    error TEXT,
    headers TEXT NOT NULL DEFAULT '{}',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_status ON sagas (status);
CREATE TABLE IF NOT EXISTS saga_steps (
    saga_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    output TEXT,
    done_ms INTEGER,
    compensated_ms INTEGER,
    PRIMARY KEY (saga_id, step)
);";

/// A step that failed; the message is kept in the saga log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl StepError {
    /// A step error from anything printable.
    pub fn new(e: impl std::fmt::Display) -> StepError {
        StepError(e.to_string())
    }
}

/// How a saga ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// Every step succeeded.
    Completed,
    /// A step failed and every step up to it was compensated.
    Compensated {
        /// The step that failed.
        failed_step: String,
        /// Why.
        error: String,
    },
}

/// A kind of saga: its steps, their actions and compensations, and what its end writes.
pub trait SagaDefinition: Send + Sync + 'static {
    /// The kind, stored with every saga (one table can hold several kinds).
    const KIND: &'static str;
    /// Step names, in execution order.
    const STEPS: &'static [&'static str];

    /// Runs step `step`; `outputs` are the outputs of the steps before it. Must be idempotent per `saga_id`.
    fn execute(
        &self,
        saga_id: &str,
        step: usize,
        input: &Value,
        outputs: &[Value],
    ) -> impl Future<Output = Result<Value, StepError>> + Send;

    /// Undoes step `step`; `output` is `None` when the step failed (or its result was never recorded). Must be
    /// idempotent and succeed when there is nothing to undo.
    fn compensate(
        &self,
        saga_id: &str,
        step: usize,
        input: &Value,
        output: Option<&Value>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Writes the saga's end into `tx`, the transaction that records it (e.g. the order status and its event).
    fn finish(
        &self,
        tx: &rusqlite::Transaction<'_>,
        saga_id: &str,
        input: &Value,
        outcome: &SagaOutcome,
    ) -> rusqlite::Result<()>;
}

/// Starts saga `id` of `kind` inside `tx` (with the business row it belongs to); `headers` carry the trace context
/// a resumed run links to.
pub fn begin(
    tx: &rusqlite::Transaction<'_>,
    kind: &str,
    id: &str,
    input: &Value,
    headers: &BTreeMap<String, String>,
) -> rusqlite::Result<()> {
    let now = super::now_ms();
    tx.execute(
        "INSERT INTO sagas (id, kind, status, input, headers, created_ms, updated_ms) \
         VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?5)",
        rusqlite::params![id, kind, input.to_string(), serde_json::to_string(headers).unwrap_or_default(), now],
    )?;
    Ok(())
}

struct Loaded {
    status: String,
    input: Value,
    failed_step: Option<String>,
    error: Option<String>,
    headers: BTreeMap<String, String>,
    /// Per step: (output if done, compensated).
    steps: Vec<(Option<Value>, bool)>,
}

/// The orchestrator of one saga kind. Cheap to clone.
pub struct Saga<D> {
    db: Db,
    def: Arc<D>,
}

impl<D> Clone for Saga<D> {
    fn clone(&self) -> Self {
        Saga { db: self.db.clone(), def: self.def.clone() }
    }
}

impl<D: SagaDefinition> Saga<D> {
    /// An orchestrator for `def` over `db` (which has [`SCHEMA`]).
    pub fn new(db: Db, def: Arc<D>) -> Saga<D> {
        Saga { db, def }
    }

    async fn load(&self, id: &str) -> Result<Option<Loaded>> {
        const SQL: &str = "SELECT status, input, failed_step, error, headers FROM sagas WHERE id = ?1; \
                           SELECT step, output, done_ms, compensated_ms FROM saga_steps WHERE saga_id = ?1";
        let id = id.to_owned();
        let n = D::STEPS.len();
        let loaded = self
            .db
            .call("SELECT", "sagas", SQL, move |conn| {
                use rusqlite::OptionalExtension;
                let head = conn
                    .query_row(
                        "SELECT status, input, failed_step, error, headers FROM sagas WHERE id = ?1",
                        [&id],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, Option<String>>(2)?,
                                r.get::<_, Option<String>>(3)?,
                                r.get::<_, String>(4)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((status, input, failed_step, error, headers)) = head else { return Ok(None) };
                let mut steps = vec![(None, false); n];
                let mut stmt = conn.prepare_cached(
                    "SELECT step, output, done_ms, compensated_ms FROM saga_steps WHERE saga_id = ?1",
                )?;
                let rows = stmt.query_map([&id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                })?;
                for row in rows {
                    let (step, output, done, compensated) = row?;
                    if let Some(slot) = steps.get_mut(step as usize) {
                        let output =
                            done.map(|_| output.and_then(|o| serde_json::from_str(&o).ok()).unwrap_or(Value::Null));
                        *slot = (output, compensated.is_some());
                    }
                }
                Ok(Some(Loaded {
                    status,
                    input: serde_json::from_str(&input).unwrap_or(Value::Null),
                    failed_step,
                    error,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    steps,
                }))
            })
            .await?;
        Ok(loaded)
    }

    async fn record_step(&self, id: &str, step: usize, output: Option<&Value>, compensated: bool) -> Result<()> {
        const SQL: &str = "INSERT INTO saga_steps (saga_id, step, name, output, done_ms, compensated_ms) \
                           VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (saga_id, step) DO UPDATE SET \
                           output = COALESCE(excluded.output, output), done_ms = COALESCE(excluded.done_ms, done_ms), \
                           compensated_ms = COALESCE(excluded.compensated_ms, compensated_ms)";
        let (id, name, output) = (id.to_owned(), D::STEPS[step], output.map(Value::to_string));
        self.db
            .call("UPSERT", "saga_steps", SQL, move |conn| {
                let now = super::now_ms();
                let done = output.as_ref().map(|_| now);
                let compensated = compensated.then_some(now);
                conn.execute(SQL, rusqlite::params![id, step as i64, name, output, done, compensated])
            })
            .await?;
        Ok(())
    }

    async fn set_compensating(&self, id: &str, failed_step: &str, error: &str) -> Result<()> {
        const SQL: &str =
            "UPDATE sagas SET status = 'compensating', failed_step = ?2, error = ?3, updated_ms = ?4 WHERE id = ?1";
        let (id, failed_step, error) = (id.to_owned(), failed_step.to_owned(), error.to_owned());
        self.db
            .call("UPDATE", "sagas", SQL, move |conn| {
                conn.execute(SQL, rusqlite::params![id, failed_step, error, super::now_ms()])
            })
            .await?;
        Ok(())
    }

    async fn finish(&self, id: &str, input: Value, outcome: SagaOutcome) -> Result<SagaOutcome> {
        const SQL: &str = "UPDATE sagas SET status = ?2, updated_ms = ?3 WHERE id = ?1";
        let (db_id, def) = (id.to_owned(), self.def.clone());
        let outcome = self
            .db
            .call("UPDATE", "sagas", SQL, move |conn| {
                let tx = conn.transaction()?;
                let status = match &outcome {
                    SagaOutcome::Completed => "completed",
                    SagaOutcome::Compensated { .. } => "compensated",
                };
                tx.execute(SQL, rusqlite::params![db_id, status, super::now_ms()])?;
                def.finish(&tx, &db_id, &input, &outcome)?;
                tx.commit()?;
                Ok(outcome)
            })
            .await?;
        Ok(outcome)
    }

    /// Runs (or resumes) saga `id` to its end. `Err` when the saga log cannot be read or written, or a
    /// compensation kept failing: the saga then stays pending for [`Saga::resume_pending`].
    pub async fn run(&self, id: &str) -> Result<SagaOutcome> {
        let span = tracing::info_span!(
            "saga",
            otel.name = %format!("saga {}", D::KIND),
            otel.status_code = tracing::field::Empty,
            saga.kind = D::KIND,
            saga.id = %id,
            saga.outcome = tracing::field::Empty,
        );
        let result = self.run_inner(id, &span).instrument(span.clone()).await;
        match &result {
            Ok(SagaOutcome::Completed) => {
                span.record("saga.outcome", "completed");
            }
            Ok(SagaOutcome::Compensated { .. }) => {
                span.record("saga.outcome", "compensated");
                span.record("otel.status_code", "ERROR");
            }
            Err(e) => {
                span.record("saga.outcome", "pending");
                span.record("otel.status_code", "ERROR");
                span.set_status(opentelemetry::trace::Status::error(e.to_string()));
            }
        }
        result
    }

    async fn run_inner(&self, id: &str, span: &tracing::Span) -> Result<SagaOutcome> {
        let Some(mut saga) = self.load(id).await? else {
            return Err(SagaError::NotFound(id.to_owned()));
        };
        // A saga picked up after a restart runs in a new trace, linked to the request that started it.
        if tracing::Span::current().context().span().span_context().trace_id()
            != crate::broker::context_of(&saga.headers).span().span_context().trace_id()
        {
            span.add_link(crate::broker::context_of(&saga.headers).span().span_context().clone());
        }
        match saga.status.as_str() {
            "completed" => return Ok(SagaOutcome::Completed),
            "compensated" => {
                return Ok(SagaOutcome::Compensated {
                    failed_step: saga.failed_step.unwrap_or_default(),
                    error: saga.error.unwrap_or_default(),
                });
            }
            "running" => {
                let mut outputs = Vec::new();
                for (step, name) in D::STEPS.iter().enumerate() {
                    if let Some(output) = &saga.steps[step].0 {
                        outputs.push(output.clone());
                        continue;
                    }
                    let step_span = tracing::info_span!(
                        "saga.step",
                        otel.name = %format!("saga step {name}"),
                        otel.status_code = tracing::field::Empty,
                        saga.step = %name,
                    );
                    let result = self.def.execute(id, step, &saga.input, &outputs).instrument(step_span.clone()).await;
                    match result {
                        Ok(output) => {
                            self.record_step(id, step, Some(&output), false).await?;
                            saga.steps[step].0 = Some(output.clone());
                            outputs.push(output);
                        }
                        Err(e) => {
                            step_span.record("otel.status_code", "ERROR");
                            step_span.set_status(opentelemetry::trace::Status::error(e.to_string()));
                            tracing::warn!(saga.id = %id, saga.step = %name, error = %e, "saga step failed, compensating");
                            self.set_compensating(id, name, &e.0).await?;
                            saga.failed_step = Some((*name).to_owned());
                            saga.error = Some(e.0);
                            break;
                        }
                    }
                }
                if saga.failed_step.is_none() {
                    return self.finish(id, saga.input, SagaOutcome::Completed).await;
                }
            }
            _ => {}
        }
        self.compensate_all(id, saga).await
    }

    async fn compensate_all(&self, id: &str, saga: Loaded) -> Result<SagaOutcome> {
        let failed_step = saga.failed_step.clone().unwrap_or_default();
        let failed_index = D::STEPS.iter().position(|s| *s == failed_step).unwrap_or(D::STEPS.len() - 1);
        for step in (0..=failed_index).rev() {
            let (output, compensated) = &saga.steps[step];
            if *compensated {
                continue;
            }
            let name = D::STEPS[step];
            let span = tracing::info_span!(
                "saga.compensate",
                otel.name = %format!("saga compensate {name}"),
                otel.status_code = tracing::field::Empty,
                saga.step = %name,
            );
            let mut last = None;
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                match self.def.compensate(id, step, &saga.input, output.as_ref()).instrument(span.clone()).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                span.record("otel.status_code", "ERROR");
                span.set_status(opentelemetry::trace::Status::error(e.to_string()));
                tracing::error!(saga.id = %id, saga.step = %name, error = %e, "saga compensation failed, will retry");
                return Err(SagaError::CompensationFailed { step: name.to_owned(), error: e });
            }
            self.record_step(id, step, None, true).await?;
        }
        let outcome = SagaOutcome::Compensated { failed_step, error: saga.error.unwrap_or_default() };
        self.finish(id, saga.input, outcome).await
    }

    /// Resumes every saga of this kind left running or compensating (after a restart, or a compensation that
    /// failed); returns how many were resumed.
    pub async fn resume_pending(&self) -> Result<usize> {
        const SQL: &str =
            "SELECT id FROM sagas WHERE kind = ?1 AND status IN ('running', 'compensating') ORDER BY created_ms";
        let ids: Vec<String> = self
            .db
            .call("SELECT", "sagas", SQL, |conn| {
                let mut stmt = conn.prepare_cached(SQL)?;
                let rows = stmt.query_map([D::KIND], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        for id in &ids {
            if let Err(e) = self.run(id).await {
                tracing::warn!(saga.id = %id, error = %e, "resumed saga still pending");
            }
        }
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Steps `a`, `b`, `c`; records every action and compensation; fails (or hangs) where told.
    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<String>>,
        fail_at: Option<usize>,
        hang_at: Option<usize>,
    }

    impl SagaDefinition for Recorder {
        const KIND: &'static str = "test";
        const STEPS: &'static [&'static str] = &["a", "b", "c"];

        async fn execute(&self, _: &str, step: usize, _: &Value, outputs: &[Value]) -> Result<Value, StepError> {
            self.log.lock().unwrap().push(format!("do {} after {}", Self::STEPS[step], outputs.len()));
            if self.hang_at == Some(step) {
                std::future::pending::<()>().await;
            }
            if self.fail_at == Some(step) {
                return Err(StepError("boom".into()));
            }
            Ok(serde_json::json!(step))
        }

        async fn compensate(&self, _: &str, step: usize, _: &Value, output: Option<&Value>) -> Result<(), StepError> {
            self.log.lock().unwrap().push(format!("undo {} {}", Self::STEPS[step], output.is_some()));
            Ok(())
        }

        fn finish(&self, tx: &rusqlite::Transaction<'_>, id: &str, _: &Value, o: &SagaOutcome) -> rusqlite::Result<()> {
            let status = if *o == SagaOutcome::Completed { "ok" } else { "undone" };
            tx.execute("INSERT INTO ends VALUES (?1, ?2)", [id, status]).map(drop)
        }
    }

    fn db() -> Db {
        let db = Db::in_memory("saga").unwrap();
        db.migrate(SCHEMA).unwrap();
        db.migrate("CREATE TABLE ends (id TEXT, status TEXT)").unwrap();
        db
    }

    async fn start(db: &Db, id: &'static str) {
        db.call("INSERT", "sagas", "", move |c| {
            let tx = c.transaction()?;
            begin(&tx, Recorder::KIND, id, &serde_json::json!({}), &BTreeMap::new())?;
            tx.commit()
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_failed_step_compensates_it_and_the_steps_before_in_reverse() {
        let db = db();
        start(&db, "s1").await;
        let def = Arc::new(Recorder { fail_at: Some(1), ..Recorder::default() });
        let outcome = Saga::new(db.clone(), def.clone()).run("s1").await.unwrap();
        assert_eq!(outcome, SagaOutcome::Compensated { failed_step: "b".into(), error: "boom".into() });
        assert_eq!(*def.log.lock().unwrap(), ["do a after 0", "do b after 1", "undo b false", "undo a true"]);
        let end: String =
            db.call("SELECT", "ends", "", |c| c.query_row("SELECT status FROM ends", [], |r| r.get(0))).await.unwrap();
        assert_eq!(end, "undone");
    }

    #[tokio::test]
    async fn a_saga_interrupted_mid_step_resumes_where_its_log_ends() {
        let db = db();
        start(&db, "s2").await;
        // The process "dies" while step b runs: a and its output are in the log, b is not.
        let first = Arc::new(Recorder { hang_at: Some(1), ..Recorder::default() });
        let saga = Saga::new(db.clone(), first.clone());
        let interrupted = tokio::time::timeout(Duration::from_millis(200), saga.run("s2")).await;
        assert!(interrupted.is_err());

        let second = Arc::new(Recorder::default());
        let resumed = Saga::new(db.clone(), second.clone()).resume_pending().await.unwrap();
        assert_eq!(resumed, 1);
        assert_eq!(*second.log.lock().unwrap(), ["do b after 1", "do c after 2"], "a is not run again");
        let end: String =
            db.call("SELECT", "ends", "", |c| c.query_row("SELECT status FROM ends", [], |r| r.get(0))).await.unwrap();
        assert_eq!(end, "ok");
        assert_eq!(Saga::new(db, second).resume_pending().await.unwrap(), 0, "nothing left pending");
    }
}
