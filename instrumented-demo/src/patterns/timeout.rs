//! Per-attempt timeout: each attempt of a call gets its own deadline, so one hung attempt cannot eat the time of
//! the retries after it. Built on `tokio::time::timeout` (tokio's clock, paused in tests).

use std::future::Future;
use std::time::Duration;

/// An attempt that did not finish within its deadline (it was cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("attempt timed out after {0:?}")]
pub struct TimedOut(pub Duration);

/// Runs `attempt`, cancelling it after `limit`.
pub async fn with_timeout<T>(limit: Duration, attempt: impl Future<Output = T>) -> Result<T, TimedOut> {
    tokio::time::timeout(limit, attempt).await.map_err(|_| TimedOut(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cancels_a_slow_attempt_and_passes_a_fast_one() {
        let limit = Duration::from_millis(200);
        let slow = with_timeout(limit, async {
            tokio::time::sleep(Duration::from_millis(201)).await;
            1
        });
        assert_eq!(slow.await, Err(TimedOut(limit)));
        let fast = with_timeout(limit, async {
            tokio::time::sleep(Duration::from_millis(199)).await;
            2
        });
        assert_eq!(fast.await, Ok(2));
    }
}
