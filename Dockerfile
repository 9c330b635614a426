# Multi-stage build: compile in the Rust image, run the release binary as a
# non-root user in a slim Debian image.
#
# glommio needs io_uring (denied by Docker's default seccomp profile) and a
# memlock limit of at least 512 KiB per shard. Run with:
#   docker run --security-opt seccomp=deploy/seccomp-io_uring.json \
#              --ulimit memlock=-1:-1 -p 8080:8080 -v coordinator-data:/data coordinator
# See docs/deploy.md.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin coordinator

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin coordinator \
    && mkdir -p /data && chown coordinator:coordinator /data
COPY --from=build /src/target/release/coordinator /usr/local/bin/coordinator
USER coordinator
WORKDIR /data
ENV HOST=0.0.0.0 PORT=8080 DATABASE_PATH=/data/coordinator.db
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/coordinator"]
