//! Generates the CSI protobuf messages and the grpcio client/server stubs from `proto/csi.proto`.
//!
//! No `protoc` binary is needed: protobuf-codegen parses the file in pure Rust. grpcio-compiler
//! 0.13 only understands rust-protobuf 2.x descriptors, so the 3.x descriptor set is serialised
//! and re-read as 2.x before the stub generator sees it (the wire format is the bridge).

use std::fs;
use std::path::{Path, PathBuf};

const PROTO: &str = "proto/csi.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input(PROTO)
        .out_dir(&out)
        .run()
        .unwrap_or_else(|e| panic!("generating messages from {PROTO}: {e:#}"));
    strip_inner_attributes(&out.join("csi.rs"));

    let set = protobuf_parse::Parser::new()
        .pure()
        .include("proto")
        .input(PROTO)
        .file_descriptor_set()
        .unwrap_or_else(|e| panic!("parsing {PROTO}: {e:#}"));
    let bytes = protobuf::Message::write_to_bytes(&set).expect("serialising the descriptor set");
    let set2: protobuf2::descriptor::FileDescriptorSet =
        protobuf2::Message::parse_from_bytes(&bytes).expect("re-reading the descriptor set as 2.x");
    let files: Vec<_> = set2.get_file().to_vec();
    let wanted: Vec<String> = files
        .iter()
        .filter(|f| f.get_name().ends_with("csi.proto"))
        .map(|f| f.get_name().to_string())
        .collect();
    for result in grpcio_compiler::codegen::gen(&files, &wanted) {
        let path = out.join("csi_grpc.rs");
        fs::write(&path, &result.content).expect("writing csi_grpc.rs");
        strip_inner_attributes(&path);
    }
}

/// `include!` rejects inner attributes and inner doc comments, which both generators emit.
fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).expect("reading generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("#![") || t.starts_with("//!"))
        })
        .collect();
    fs::write(path, kept.join("\n")).expect("rewriting generated file");
}
