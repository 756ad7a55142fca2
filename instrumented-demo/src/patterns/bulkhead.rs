//! Bulkhead: a bound on concurrent calls to one dependency; a call over the bound is rejected at once.
//!
//! Rejecting instead of queueing keeps a slow dependency from tying up every request task of the caller: the
//! caller answers "busy" quickly and its other endpoints keep their capacity.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// A call rejected because `max_concurrent` calls are already in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead full: {max_concurrent} calls in flight")]
pub struct BulkheadFull {
    /// The bulkhead's bound.
    pub max_concurrent: usize,
}

/// A bounded set of call slots shared by every caller of one dependency; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
}

/// One taken slot, freed on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Bulkhead {
    /// A bulkhead of `max_concurrent` slots (at least one).
    pub fn new(max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Bulkhead { slots: Arc::new(Semaphore::new(max_concurrent)), max_concurrent }
    }

    /// Takes a slot, or [`BulkheadFull`] when none is free; never waits.
    pub fn try_enter(&self) -> Result<Slot, BulkheadFull> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot { _permit: permit }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                Err(BulkheadFull { max_concurrent: self.max_concurrent })
            }
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// The bound.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_when_full_and_admits_again_when_a_call_ends() {
        let bulkhead = Bulkhead::new(2);
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut running = Vec::new();
        for _ in 0..2 {
            let slot = bulkhead.try_enter().expect("a free slot");
            let mut rx = release_rx.clone();
            running.push(tokio::spawn(async move {
                let _slot = slot;
                rx.wait_for(|go| *go).await.unwrap();
            }));
        }
        assert_eq!(bulkhead.in_flight(), 2);
        assert_eq!(bulkhead.try_enter().unwrap_err(), BulkheadFull { max_concurrent: 2 });

        release_tx.send(true).unwrap();
        for task in running {
            task.await.unwrap();
        }
        assert_eq!(bulkhead.in_flight(), 0);
        let _a = bulkhead.try_enter().unwrap();
        let _b = bulkhead.try_enter().unwrap();
        assert!(bulkhead.try_enter().is_err());
    }
}
