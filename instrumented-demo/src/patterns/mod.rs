//! Microservice patterns: circuit breaker, retry, bulkhead, timeout, saga, outbox, inbox.
