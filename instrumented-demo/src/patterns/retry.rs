//! Retries with exponential backoff, full jitter and a retry budget.
//!
//! The exponential schedule (base, factor 2, cap, attempt count) comes from `backon`; each delay is then drawn
//! uniformly from `[0, schedule]` ("full jitter"): backon's own jitter adds `(0, d)` to `d`, which keeps clients
//! that failed together in lock-step for the first `d`. The budget is tower's `TpsBudget`: retries may add at most
//! `retry_ratio` of the recent successful calls (plus `min_retries_per_sec`), so a failing dependency sees a bounded
//! amplification of load instead of `max_attempts` times it.
//!
//! Only failures that say [`Retryable::is_retryable`] are retried: a non-idempotent call that may have taken
//! effect, or a definitive answer (a declined card), is returned at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tower::retry::budget::{Budget, TpsBudget};

/// Retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts in total, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Upper bound of the first retry's delay; doubles per retry.
    pub base_delay: Duration,
    /// Cap of the doubled delay.
    pub max_delay: Duration,
    /// Retries allowed as a share of recent successful calls.
    pub retry_ratio: f32,
    /// Retries allowed per second whatever the success count.
    pub min_retries_per_sec: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            retry_ratio: 0.2,
            min_retries_per_sec: 5,
        }
    }
}

/// Whether a failure may be retried.
pub trait Retryable {
    /// True when the call had no effect or is idempotent, and trying again may succeed.
    fn is_retryable(&self) -> bool;
}

/// Why the retry loop stopped with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The failure is not retryable.
    NotRetryable,
    /// `max_attempts` were made.
    AttemptsExhausted,
    /// The retry budget had no token left.
    BudgetExhausted,
}

/// The last failure and why no further attempt was made.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {attempts} attempts, {gave_up:?})")]
pub struct RetryError<E: std::fmt::Display> {
    /// The last attempt's failure.
    pub error: E,
    /// Attempts made.
    pub attempts: u32,
    /// Why the loop stopped.
    pub gave_up: GaveUp,
}

/// A retry policy shared by every caller of one dependency (the budget is shared); cheap to clone.
#[derive(Clone)]
pub struct RetryPolicy {
    config: RetryConfig,
    budget: Arc<TpsBudget>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy").field("config", &self.config).finish()
    }
}

impl RetryPolicy {
    /// A policy with its own budget (successes remembered for 10 s).
    pub fn new(config: RetryConfig) -> Self {
        let budget = TpsBudget::new(Duration::from_secs(10), config.min_retries_per_sec, config.retry_ratio);
        RetryPolicy { config, budget: Arc::new(budget) }
    }

    /// The delays before retry 1, 2, ...: each uniform in `[0, min(max_delay, base_delay * 2^(n-1))]`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.config.base_delay)
            .with_max_delay(self.config.max_delay)
            .with_factor(2.0)
            .with_max_times(self.config.max_attempts.saturating_sub(1) as usize)
            .build()
            .map(|ceiling| ceiling.mul_f64(rand::random::<f64>()))
    }

    /// Runs `op(attempt)` (attempt 0 is the first call) until it succeeds, fails without
    /// [`Retryable::is_retryable`], runs out of attempts or of budget; sleeps the jittered delay between attempts
    /// (tokio's clock, so paused-clock tests run instantly).
    pub async fn run<T, E, F, Fut>(&self, mut op: F) -> Result<T, RetryError<E>>
    where
        E: Retryable + std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delays = self.delays();
        let mut attempt = 0u32;
        loop {
            let result = op(attempt).await;
            attempt += 1;
            let error = match result {
                Ok(value) => {
                    self.budget.deposit();
                    return Ok(value);
                }
                Err(error) => error,
            };
            if !error.is_retryable() {
                return Err(RetryError { error, attempts: attempt, gave_up: GaveUp::NotRetryable });
            }
            let Some(delay) = delays.next() else {
                return Err(RetryError { error, attempts: attempt, gave_up: GaveUp::AttemptsExhausted });
            };
            if !self.budget.withdraw() {
                return Err(RetryError { error, attempts: attempt, gave_up: GaveUp::BudgetExhausted });
            }
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug)]
    struct Fail(bool);
    impl Retryable for Fail {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }
    impl std::fmt::Display for Fail {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "fail")
        }
    }

    fn config(max_attempts: u32) -> RetryConfig {
        RetryConfig {
            max_attempts,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(800),
            retry_ratio: 0.2,
            min_retries_per_sec: 1_000,
        }
    }

    #[test]
    fn delays_are_full_jitter_within_the_exponential_ceiling() {
        let policy = RetryPolicy::new(config(6));
        let ceilings = [100u64, 200, 400, 800, 800];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); ceilings.len()];
        for _ in 0..2_000 {
            let delays: Vec<_> = policy.delays().collect();
            assert_eq!(delays.len(), 5, "six attempts make five delays");
            for (i, d) in delays.into_iter().enumerate() {
                samples[i].push(d);
            }
        }
        for (ceiling, samples) in ceilings.iter().zip(&samples) {
            let ceiling = Duration::from_millis(*ceiling);
            assert!(samples.iter().all(|d| *d <= ceiling), "a delay above its ceiling {ceiling:?}");
            // Full jitter spreads over the whole range: values near 0 and near the ceiling both occur, and the
            // mean is about half the ceiling.
            assert!(samples.iter().any(|d| *d < ceiling / 10), "no delay in the bottom tenth of {ceiling:?}");
            assert!(samples.iter().any(|d| *d > ceiling * 9 / 10), "no delay in the top tenth of {ceiling:?}");
            let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
            assert!(mean > ceiling * 4 / 10 && mean < ceiling * 6 / 10, "mean {mean:?} of {ceiling:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_sleep_the_jittered_backoff_then_give_up() {
        let policy = RetryPolicy::new(config(4));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let t0 = tokio::time::Instant::now();
        let seen = starts.clone();
        let result: Result<(), _> = policy
            .run(|attempt| {
                seen.lock().unwrap().push((attempt, t0.elapsed()));
                async { Err(Fail(true)) }
            })
            .await;
        let err = result.unwrap_err();
        assert_eq!((err.attempts, err.gave_up), (4, GaveUp::AttemptsExhausted));
        let starts = starts.lock().unwrap();
        assert_eq!(starts.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        for (w, ceiling) in starts.windows(2).zip([100u64, 200, 400]) {
            let gap = w[1].1 - w[0].1;
            assert!(gap <= Duration::from_millis(ceiling), "gap {gap:?} above {ceiling} ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_failures_and_successes_stop_at_once() {
        let policy = RetryPolicy::new(config(5));
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let err = policy
            .run(|_| {
                *c.lock().unwrap() += 1;
                async { Err::<(), _>(Fail(false)) }
            })
            .await
            .unwrap_err();
        assert_eq!((err.attempts, err.gave_up, *calls.lock().unwrap()), (1, GaveUp::NotRetryable, 1));

        let value = policy.run(|attempt| async move { if attempt < 2 { Err(Fail(true)) } else { Ok(attempt) } }).await;
        assert_eq!(value.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries() {
        // No free retries per second and 10 % of successes: after 10 successes, about one retry is allowed.
        let policy = RetryPolicy::new(RetryConfig { min_retries_per_sec: 0, retry_ratio: 0.1, ..config(10) });
        let err = policy.run(|_| async { Err::<(), _>(Fail(true)) }).await.unwrap_err();
        assert_eq!((err.attempts, err.gave_up), (1, GaveUp::BudgetExhausted), "no budget before any success");
        for _ in 0..10 {
            policy.run(|_| async { Ok::<_, Fail>(()) }).await.unwrap();
        }
        let err = policy.run(|_| async { Err::<(), _>(Fail(true)) }).await.unwrap_err();
        assert_eq!(err.gave_up, GaveUp::BudgetExhausted);
        assert!(err.attempts >= 2 && err.attempts <= 3, "attempts {}", err.attempts);
    }
}
