//! The CSI volume health monitor sidecar as a library: every concern in its own module, wired
//! together by `app` and driven from `main`.
#![forbid(unsafe_code)]

pub mod app;
pub mod checkonce;
pub mod config;
pub mod crash;
pub mod csi;
pub mod events;
pub mod flags;
pub mod health;
pub mod http;
pub mod kube;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod paging;
#[cfg(test)]
mod proptests;
pub mod records;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod timeutil;
pub mod watch;
