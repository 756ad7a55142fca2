//! Circuit breaker: closed -> open -> half-open -> closed.
//!
//! Hand-written: the maintained breaker crates (`failsafe`, `tower-circuitbreaker`) either are not async-aware
//! or expose no hook for state transitions, and the demo must log and count every transition. The clock is
//! `tokio::time::Instant`, so tests drive the cool-down with tokio's paused clock.
//!
//! Contract:
//! - **Closed**: calls pass. The breaker opens when `consecutive_failures` calls fail in a row, or when the last
//!   `window` outcomes hold at least `min_calls` calls of which the failed share is `>= failure_ratio`.
//! - **Open**: calls are refused with [`BreakerOpen`] until `cool_down` has passed since opening.
//! - **Half-open**: at most `half_open_probes` calls are let through at once; when that many probes succeed the
//!   breaker closes, the first failed probe opens it again (with a fresh cool-down).
//!
//! A [`Permit`] dropped without [`Permit::success`] or [`Permit::failure`] (a cancelled call) records nothing and
//! frees its half-open probe slot.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// Failed share of the sliding window that opens the breaker (0..=1).
    pub failure_ratio: f64,
    /// Calls the window must hold before `failure_ratio` applies.
    pub min_calls: u32,
    /// Number of most recent outcomes in the sliding window.
    pub window: u32,
    /// Time the breaker stays open before letting probes through.
    pub cool_down: Duration,
    /// Successful probes in half-open that close the breaker; also the probes allowed at once.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_calls: 10,
            window: 20,
            cool_down: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused.
    Open,
    /// A few probe calls pass.
    HalfOpen,
}

impl BreakerState {
    /// Lowercase name, as used in logs and metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Numeric value of the state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionReason {
    /// `consecutive_failures` failures in a row.
    ConsecutiveFailures,
    /// The window's failed share reached `failure_ratio`.
    FailureRatio,
    /// The cool-down passed.
    CoolDownElapsed,
    /// A half-open probe failed.
    ProbeFailed,
    /// Enough half-open probes succeeded.
    ProbesSucceeded,
}

impl TransitionReason {
    /// Lowercase name, as used in logs and metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::ConsecutiveFailures => "consecutive_failures",
            TransitionReason::FailureRatio => "failure_ratio",
            TransitionReason::CoolDownElapsed => "cool_down_elapsed",
            TransitionReason::ProbeFailed => "probe_failed",
            TransitionReason::ProbesSucceeded => "probes_succeeded",
        }
    }
}

/// One state change, handed to the transition hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// What caused it.
    pub reason: TransitionReason,
}

/// A call refused because the breaker is open (or half-open with every probe slot taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {state}: call refused")]
pub struct BreakerOpen {
    /// The state that refused the call.
    pub state: BreakerState,
}

type Hook = Box<dyn Fn(Transition) + Send + Sync>;

/// A circuit breaker shared by every caller of one dependency; cheap to clone.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    config: BreakerConfig,
    hook: Hook,
    inner: Mutex<Inner>,
}

struct Inner {
    state: BreakerState,
    opened_at: Instant,
    consecutive_failures: u32,
    /// Most recent outcomes in closed state, `true` = failure.
    window: VecDeque<bool>,
    probes_in_flight: u32,
    probes_succeeded: u32,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker").field("state", &self.state()).finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker; `hook` is called (outside the breaker's lock) on every state change.
    pub fn new(config: BreakerConfig, hook: impl Fn(Transition) + Send + Sync + 'static) -> Self {
        let inner = Inner {
            state: BreakerState::Closed,
            opened_at: Instant::now(),
            consecutive_failures: 0,
            window: VecDeque::with_capacity(config.window as usize),
            probes_in_flight: 0,
            probes_succeeded: 0,
        };
        CircuitBreaker { shared: Arc::new(Shared { config, hook: Box::new(hook), inner: Mutex::new(inner) }) }
    }

    /// The current state; an open breaker whose cool-down has passed reports half-open.
    pub fn state(&self) -> BreakerState {
        let (state, transition) = {
            let mut inner = self.lock();
            let t = self.maybe_half_open(&mut inner);
            (inner.state, t)
        };
        self.notify(transition);
        state
    }

    /// Asks to make one call: a permit to report its outcome with, or [`BreakerOpen`].
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        let (result, transition) = {
            let mut inner = self.lock();
            let transition = self.maybe_half_open(&mut inner);
            let result = match inner.state {
                BreakerState::Closed => Ok(Permit { breaker: self.clone(), probe: false, done: false }),
                BreakerState::Open => Err(BreakerOpen { state: BreakerState::Open }),
                BreakerState::HalfOpen => {
                    if inner.probes_in_flight + inner.probes_succeeded < self.shared.config.half_open_probes.max(1) {
                        inner.probes_in_flight += 1;
                        Ok(Permit { breaker: self.clone(), probe: true, done: false })
                    } else {
                        Err(BreakerOpen { state: BreakerState::HalfOpen })
                    }
                }
            };
            (result, transition)
        };
        self.notify(transition);
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a hook-free critical section panicked; the counters are still usable.
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            (self.shared.hook)(t);
        }
    }

    fn maybe_half_open(&self, inner: &mut Inner) -> Option<Transition> {
        if inner.state == BreakerState::Open && inner.opened_at.elapsed() >= self.shared.config.cool_down {
            inner.state = BreakerState::HalfOpen;
            inner.probes_in_flight = 0;
            inner.probes_succeeded = 0;
            return Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
                reason: TransitionReason::CoolDownElapsed,
            });
        }
        None
    }

    fn open(inner: &mut Inner, reason: TransitionReason) -> Transition {
        let from = inner.state;
        inner.state = BreakerState::Open;
        inner.opened_at = Instant::now();
        inner.consecutive_failures = 0;
        inner.window.clear();
        inner.probes_in_flight = 0;
        inner.probes_succeeded = 0;
        Transition { from, to: BreakerState::Open, reason }
    }

    fn record(&self, probe: bool, failed: bool) {
        let config = &self.shared.config;
        let transition = {
            let mut inner = self.lock();
            if probe {
                // A probe permit from an earlier half-open period (the breaker reopened since) is ignored.
                if inner.state != BreakerState::HalfOpen || inner.probes_in_flight == 0 {
                    None
                } else {
                    inner.probes_in_flight -= 1;
                    if failed {
                        Some(Self::open(&mut inner, TransitionReason::ProbeFailed))
                    } else {
                        inner.probes_succeeded += 1;
                        if inner.probes_succeeded >= config.half_open_probes.max(1) {
                            inner.state = BreakerState::Closed;
                            inner.consecutive_failures = 0;
                            inner.window.clear();
                            Some(Transition {
                                from: BreakerState::HalfOpen,
                                to: BreakerState::Closed,
                                reason: TransitionReason::ProbesSucceeded,
                            })
                        } else {
                            None
                        }
                    }
                }
            } else if inner.state != BreakerState::Closed {
                // Outcome of a call admitted before the breaker opened: it says nothing new.
                None
            } else {
                inner.consecutive_failures = if failed { inner.consecutive_failures + 1 } else { 0 };
                if inner.window.len() >= config.window.max(1) as usize {
                    inner.window.pop_front();
                }
                inner.window.push_back(failed);
                let failures = inner.window.iter().filter(|f| **f).count();
                let calls = inner.window.len();
                if config.consecutive_failures > 0 && inner.consecutive_failures >= config.consecutive_failures {
                    Some(Self::open(&mut inner, TransitionReason::ConsecutiveFailures))
                } else if failed
                    && calls >= config.min_calls.max(1) as usize
                    && failures as f64 / calls as f64 >= config.failure_ratio
                {
                    Some(Self::open(&mut inner, TransitionReason::FailureRatio))
                } else {
                    None
                }
            }
        };
        self.notify(transition);
    }
}

/// Leave to make one call through the breaker; report how it went.
#[must_use = "report the call's outcome with success() or failure()"]
pub struct Permit {
    breaker: CircuitBreaker,
    probe: bool,
    done: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(self.probe, false);
    }

    /// The call failed in a way that says the dependency is unhealthy (error, timeout).
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(self.probe, true);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            let mut inner = self.breaker.lock();
            if inner.state == BreakerState::HalfOpen && inner.probes_in_flight > 0 {
                inner.probes_in_flight -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(config: BreakerConfig) -> (CircuitBreaker, Arc<Mutex<Vec<Transition>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        (CircuitBreaker::new(config, move |t| sink.lock().unwrap().push(t)), log)
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_calls: 10,
            window: 10,
            cool_down: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_half_opens_after_cool_down() {
        let (breaker, log) = recording(config());
        breaker.try_acquire().unwrap().failure();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Closed, "two failures are below the threshold of three");
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.try_acquire().err(), Some(BreakerOpen { state: BreakerState::Open }));

        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(breaker.try_acquire().is_err(), "still open just before the cool-down ends");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);

        // Two probes at once, a third is refused.
        let p1 = breaker.try_acquire().unwrap();
        let p2 = breaker.try_acquire().unwrap();
        assert_eq!(breaker.try_acquire().err(), Some(BreakerOpen { state: BreakerState::HalfOpen }));
        p1.success();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        p2.success();
        assert_eq!(breaker.state(), BreakerState::Closed);

        let reasons: Vec<_> = log.lock().unwrap().iter().map(|t| (t.from, t.to, t.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (BreakerState::Closed, BreakerState::Open, TransitionReason::ConsecutiveFailures),
                (BreakerState::Open, BreakerState::HalfOpen, TransitionReason::CoolDownElapsed),
                (BreakerState::HalfOpen, BreakerState::Closed, TransitionReason::ProbesSucceeded),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_with_a_fresh_cool_down() {
        let (breaker, log) = recording(config());
        for _ in 0..3 {
            breaker.try_acquire().unwrap().failure();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(breaker.state(), BreakerState::Open, "the cool-down restarted when the probe failed");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(log.lock().unwrap()[2].reason, TransitionReason::ProbeFailed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_ratio_without_a_failure_streak() {
        let (breaker, log) = recording(config());
        // fail, ok, fail, ok, ...: never two failures in a row, half of the window failed.
        for i in 0..9 {
            let permit = breaker.try_acquire().unwrap();
            if i % 2 == 0 { permit.failure() } else { permit.success() }
        }
        assert_eq!(breaker.state(), BreakerState::Closed, "nine calls are below min_calls");
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed, "a success never opens the breaker");
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(log.lock().unwrap()[0].reason, TransitionReason::FailureRatio);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_its_slot() {
        let (breaker, _log) = recording(BreakerConfig { half_open_probes: 1, ..config() });
        for _ in 0..3 {
            breaker.try_acquire().unwrap().failure();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err());
        drop(probe);
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
