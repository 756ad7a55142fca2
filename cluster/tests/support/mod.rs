//! Shared by the integration tests: the store-independent suite and the Garage cluster harness.
#![allow(dead_code)]

pub mod garage;
pub mod suite;
