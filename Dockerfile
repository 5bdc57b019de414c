# Multi-stage build of csi-external-health-monitor-controller.
#
# The build stage mirrors .ci/setup: Debian's Rust toolchain is too old, so the official Rust
# image (Debian bookworm) is used, plus cmake and g++ for grpcio-sys (gRPC's C++ core; the
# first build takes 15-30 minutes on two cores).
FROM rust:1.95-bookworm AS build
# Debian's cmake and g++ of the base image's release are what the build was tested with; pinning
# exact Debian revisions would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY tests ./tests
ARG VERSION=unknown
ENV HEALTHMON_VERSION=${VERSION}
RUN cargo build --release --locked --bin csi-external-health-monitor-controller \
 && strip target/release/csi-external-health-monitor-controller

# The runtime needs glibc, libgcc and libstdc++ (gRPC's core is C++): distroless/cc has exactly
# those and nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.description="CSI volume health monitor sidecar (Rust drop-in for csi-external-health-monitor-controller)"
COPY --from=build /src/target/release/csi-external-health-monitor-controller /csi-external-health-monitor-controller
# One glibc malloc arena: the sidecar's threads mostly wait on sockets. Since list pages and
# watch events are decoded straight into typed records it saves little (0.6 MiB in issue #18's
# scenario, 17 MiB before; BENCHMARKS.md), but it still helps and costs no measurable speed.
ENV MALLOC_ARENA_MAX=1
USER 65532:65532
ENTRYPOINT ["/csi-external-health-monitor-controller"]
