//! Generated CSI messages (`csi`) and grpcio client/server stubs (`csi_grpc`), built from
//! `proto/csi.proto` by build.rs. The stubs refer to messages as `super::csi::X`, so the two
//! modules sit side by side.

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_imports,
    unused_results,
    unused_mut
)]
pub mod csi {
    include!(concat!(env!("OUT_DIR"), "/csi.rs"));
}

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unknown_lints,
    renamed_and_removed_lints,
    unused_mut
)]
pub mod csi_grpc {
    include!(concat!(env!("OUT_DIR"), "/csi_grpc.rs"));
}
