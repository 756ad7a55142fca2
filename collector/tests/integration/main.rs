//! Integration tests of obsbox-collector: the OTLP receivers over real gRPC and HTTP clients, and decompression bombs.
//! One test binary per crate (one module per area), so the crate is linked once per test build.

mod common;

mod grpc;
mod gzip_bomb;
mod http;
