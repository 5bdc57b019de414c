//! End-to-end tests: the real sidecar binary as a process, talking gRPC over a real unix
//! socket to the mock CSI driver and HTTP to the fake Kubernetes API server.

#[path = "../kit/mod.rs"]
mod kit;

mod cli;
mod docs;
mod faults;
mod getmode;
mod kubeconfig;
mod listmode;
mod nodes;
mod startup;
mod support;
