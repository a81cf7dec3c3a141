# The operator image: one static-enough binary, `mooring` (the operator, `mooring run`, and the load
# balancers' agent sidecar, `mooring lb-agent`), and the dashboard's browser files in
# /usr/share/mooring/dashboard (the default --dashboard-site), on a distroless base as a non-root
# user.
#
#   docker build -t ghcr.io/mooring-dev/mooring:0.1.0 .
#
# Stage 1 caches the dependency build: only the manifests are copied first, with empty crate
# sources, so that a source change rebuilds Mooring's crates and nothing else.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crds/Cargo.toml crds/
COPY dashboard/Cargo.toml dashboard/
COPY operator/Cargo.toml operator/
COPY tests/Cargo.toml tests/
COPY localkube/Cargo.toml localkube/
COPY devcluster/Cargo.toml devcluster/
# Stub targets so that `cargo build` resolves the workspace and compiles only the dependencies
# (the stubs of the test-only crates stay: the workspace needs a target in every member).
RUN for c in crds dashboard operator tests localkube devcluster; do \
      mkdir -p $c/src && echo 'fn main() {}' > $c/src/main.rs && touch $c/src/lib.rs; \
    done \
 && mkdir -p crds/src/bin tests/src/bin && echo 'fn main() {}' > crds/src/bin/crdgen.rs \
 && echo 'fn main() {}' > tests/src/bin/bench.rs \
 && cargo build --release --locked -p mooring-operator --bin mooring \
 && rm -rf crds/src dashboard/src operator/src
COPY crds/ crds/
COPY dashboard/ dashboard/
COPY operator/ operator/
# Touch the real sources so that cargo does not trust the stubs' timestamps.
RUN find crds dashboard operator -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p mooring-operator --bin mooring \
 && cp target/release/mooring /mooring

# Stage 1b: the dashboard's browser half, as scripts/build-dashboard --release builds it (the
# wasm-bindgen CLI must be the crate's pinned version; npm's binaryen for wasm-opt).
FROM builder AS site
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm \
 && rustup target add wasm32-unknown-unknown \
 && cargo install wasm-bindgen-cli --version 0.2.130 \
 && npm install -g binaryen@132.0.0
COPY scripts/build-dashboard scripts/
RUN mkdir -p /cache/tools/bin /cache/npm-tools/node_modules/.bin \
 && ln -s "$(command -v wasm-bindgen)" /cache/tools/bin/wasm-bindgen \
 && ln -s "$(command -v wasm-opt)" /cache/npm-tools/node_modules/.bin/wasm-opt \
 && MOORING_CACHE=/cache scripts/build-dashboard --release \
 && cp -r /cache/dashboard-site/release /site

# Stage 2: glibc and libgcc only (rustls, no OpenSSL), no shell, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mooring" \
      org.opencontainers.image.description="Kubernetes operator for clustered MQTT brokers" \
      org.opencontainers.image.source="https://github.com/mooring-dev/mooring" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /mooring /usr/local/bin/mooring
COPY --from=site /site /usr/share/mooring/dashboard
USER 65532:65532
# The HTTP server: /healthz, /readyz, /metrics, the dashboard (--listen, MOORING_LISTEN).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mooring"]
CMD ["run"]
