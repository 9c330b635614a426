# Multi-stage build: compile in the Rust image, run the stripped release
# binary as an unprivileged numeric user in a slim Debian image.
#
# glommio needs io_uring (denied by Docker's default seccomp profile) and a
# memlock limit of at least 512 KiB per shard. Run with:
#   docker run --security-opt seccomp=deploy/seccomp-io_uring.json \
#              --ulimit memlock=-1:-1 -p 8080:8080 -v coordinator-data:/data coordinator
# or `docker compose -f deploy/docker-compose.yml up -d`. See docs/deploy.md.
#
# Base images are pinned by version tag and by the digest of their
# multi-platform index. The digests come from the official images' published
# records (docker-library/repo-info; both built on Debian's 2026-08-24
# bookworm snapshot): no registry is reachable from the machines this is
# developed on, so they could not be re-checked against Docker Hub there.
# To update: `docker buildx imagetools inspect rust:<version>-bookworm` and
# `... debian:bookworm-<date>-slim`, then replace tag and digest together.

FROM rust:1.98.0-bookworm@sha256:82150a52ec202c1b14d7817e14516c392bb7f5cfebd88f1ed531cb37ebd39922 AS build
WORKDIR /src
# etcd-client (cluster mode) compiles etcd's protobuf definitions at build
# time with protoc. The base image is pinned by digest, so its Debian
# snapshot fixes the version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
# No debug info and a stripped binary for the image only; the repository's
# release profile keeps line tables for profiling on a developer machine.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

# Dependencies first, in their own layer: it is rebuilt only when a manifest
# or Cargo.lock changes, not on every source edit. Cargo needs every target
# the manifests name (the lib, both binaries, the declared benches) to exist,
# so they are stubs here.
COPY Cargo.toml Cargo.lock ./
COPY loadgen/Cargo.toml loadgen/Cargo.toml
RUN mkdir -p src benches loadgen/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > loadgen/src/main.rs \
    && for b in coordinator memory instructions; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked --bin coordinator \
    && rm -rf src benches loadgen/src

# Then the sources. Their modification times may be older than the stub
# build's outputs, so touch the crate roots to make cargo rebuild our crate.
COPY . .
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked --bin coordinator \
    && ./target/release/coordinator --version

FROM debian:bookworm-20260824-slim@sha256:88200866dfff7ea7f5cbcb6ec7c8a701889efe6fe859fe64d6990e4b07ea4171
RUN groupadd --system --gid 10001 coordinator \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /data --shell /usr/sbin/nologin coordinator \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /src/target/release/coordinator /usr/local/bin/coordinator
# Numeric, so that Kubernetes `runAsNonRoot` can check it without /etc/passwd.
USER 10001:10001
WORKDIR /data
ENV HOST=0.0.0.0 \
    PORT=8080 \
    DATABASE_PATH=/data/coordinator.db
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
# `--healthcheck` GETs http://127.0.0.1:$PORT/health with std::net (no curl
# in the image) and exits 0 on status 200, 1 otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/coordinator", "--healthcheck"]
ENTRYPOINT ["/usr/local/bin/coordinator"]
