//! End-to-end tests: the real sidecar binary as a process, talking gRPC over a real unix
//! socket to the mock CSI driver and HTTP to the fake Kubernetes API server.

#[path = "../kit/mod.rs"]
mod kit;

mod checkonce;
mod cli;
mod crash;
mod credentials;
mod docs;
mod events;
mod faults;
mod getmode;
mod health;
mod hostile;
mod kubeconfig;
mod leader;
mod listmode;
mod missing;
mod monitoring;
mod nodes;
mod observability;
mod rbac;
mod scheduling;
mod startup;
mod storms;
mod support;
