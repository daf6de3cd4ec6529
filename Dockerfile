# syntax=docker/dockerfile:1
#
# Container images for statecar (the sidecar) and statecar-operator, one target each:
#
#   docker build --target statecar          -t statecar/statecar:0.1.0 .
#   docker build --target statecar-operator -t statecar/statecar-operator:0.1.0 .
#
# Tag with the workspace version (Cargo.toml), never `latest`: see images/README.md.
#
# The binaries link glibc dynamically (libc, libm, libgcc_s; `ldd target/release/statecar`),
# so the runtime base is distroless/cc on Debian 12: the same glibc as the bookworm builder,
# the CA bundle, user nonroot (65532), no shell and no package manager.
# images/build.sh assembles equivalent images from host-built binaries without Docker.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binaries are copied
# out of the cache mount so that the next stage can see them.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p sidecar -p operator \
 && mkdir /out \
 && cp target/release/statecar target/release/statecar-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS statecar-operator
COPY --from=builder /out/statecar-operator /statecar-operator
USER 65532:65532
ENTRYPOINT ["/statecar-operator"]

# Last, so that a plain `docker build .` gives the sidecar.
FROM gcr.io/distroless/cc-debian12:nonroot AS statecar
COPY --from=builder /out/statecar /statecar
USER 65532:65532
ENTRYPOINT ["/statecar"]
