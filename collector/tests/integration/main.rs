//! Integration tests of obsbox-collector: the OTLP receivers over real gRPC and HTTP clients, (the gzip bomb has its own binary, `tests/gzip_bomb.rs`, so its peak-RSS check sees it alone).
//! One test binary per crate (one module per area), so the crate is linked once per test build.

mod common;

mod grpc;
mod http;
