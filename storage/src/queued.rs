//! Documents handed to tantivy a batch at a time, with a bound on how many wait in its queue.
//!
//! `IndexWriter::add_document` sends each document to tantivy's indexing threads on its own, so
//! the documents of one request (and the spans of one trace in it) end up spread over both
//! threads' segments, and a trace by id reads two segments instead of one. `IndexWriter::run`
//! sends a batch as one message, which one thread indexes whole. But tantivy's queue holds 10,000
//! messages, not documents: with batches of 512 that is 5M documents, and the indexer thread (whose
//! blocking on that queue is what the store's admission measures) would never wait. So the store
//! counts the documents it has queued ([`InFlight`]) and waits before queuing more than its cap;
//! the count drops when tantivy has indexed a batch, which is when it drops the batch's last
//! document ([`QueuedDoc`] holds the [`Ticket`]).

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tantivy::TantivyDocument;
use tantivy::schema::document::Document;

/// Documents queued to an index writer and not yet indexed.
pub(crate) struct InFlight {
    docs: Mutex<u64>,
    freed: Condvar,
    cap: u64,
}

impl InFlight {
    /// At most `cap` documents queued (a larger batch waits for an empty queue).
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self { docs: Mutex::new(0), freed: Condvar::new(), cap })
    }

    /// Waits until `n` more documents fit under the cap, then counts them until the ticket drops.
    /// Every queued batch's ticket drops once tantivy indexes or discards it (a writer that fails
    /// or is dropped drops its queue), so the wait ends.
    pub fn reserve(self: &Arc<Self>, n: u64) -> Ticket {
        let mut docs = self.docs.lock();
        while *docs > 0 && *docs + n > self.cap {
            self.freed.wait(&mut docs);
        }
        *docs += n;
        Ticket { inflight: self.clone(), n }
    }

    /// Documents queued now.
    #[cfg(test)]
    pub fn queued(&self) -> u64 {
        *self.docs.lock()
    }
}

/// `n` documents counted in an [`InFlight`] until this drops.
pub(crate) struct Ticket {
    inflight: Arc<InFlight>,
    n: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        *self.inflight.docs.lock() -= self.n;
        self.inflight.freed.notify_all();
    }
}

/// A document as queued to the index writer: the last one of a batch carries the batch's ticket,
/// since one indexing thread takes a batch and drops its documents in order.
pub(crate) struct QueuedDoc {
    doc: TantivyDocument,
    _ticket: Option<Ticket>,
}

impl QueuedDoc {
    pub fn new(doc: TantivyDocument, ticket: Option<Ticket>) -> Self {
        Self { doc, _ticket: ticket }
    }
}

impl Document for QueuedDoc {
    type Value<'a> = <TantivyDocument as Document>::Value<'a>;
    type FieldsValuesIter<'a> = <TantivyDocument as Document>::FieldsValuesIter<'a>;

    fn iter_fields_and_values(&self) -> Self::FieldsValuesIter<'_> {
        self.doc.iter_fields_and_values()
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::Duration;

    use super::*;

    #[test]
    fn reserve_waits_until_tickets_free_room() {
        let inflight = InFlight::new(10);
        let first = inflight.reserve(6);
        // A batch larger than the cap still goes through on an empty queue.
        let waiter = {
            let inflight = inflight.clone();
            thread::spawn(move || {
                let t = inflight.reserve(5);
                drop(t);
                let big = inflight.reserve(25);
                assert_eq!(inflight.queued(), 25);
                drop(big);
            })
        };
        thread::sleep(Duration::from_millis(100));
        assert_eq!(inflight.queued(), 6, "5 more would exceed the cap of 10: the second reserve waits");
        assert!(!waiter.is_finished());
        drop(first);
        waiter.join().unwrap();
        assert_eq!(inflight.queued(), 0);
    }
}
