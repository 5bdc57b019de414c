//! The hand-written Kubernetes client: configuration loading (`config`), the HTTP client
//! on ureq with typed errors and watches (`client`, `error`), typed decoding of objects and list
//! pages (`object`), paging through a list (`pager`), and the client-side rate limiter
//! (`ratelimit`).

pub mod client;
pub mod config;
pub mod error;
pub mod object;
pub mod pager;
pub mod ratelimit;

pub use client::{encode_query, Client, PatchKind, RequestObserver, WatchEvent, WatchStream};
pub use config::{load_config, Auth, ClientConfig, ExecConfig, Identity};
pub use error::{Error, Status};
pub use object::{ListMeta, ObjectMeta};
pub use pager::Pager;
