//! The test kit shared by the end-to-end tests, the sandbox and the benchmarks: a fake
//! Kubernetes API server with real semantics, a mock CSI driver on a unix socket, and helpers
//! that lay out PVs/PVCs and spawn the real sidecar binary against both.
#![allow(dead_code)]

pub mod apiserver;
pub mod csidriver;
pub mod fixtures;
