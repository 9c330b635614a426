# etcd from Debian's etcd-server package, on the same pinned base image as the
# coordinator's runtime stage (so no third-party registry image is needed).
FROM debian:bookworm-20260824-slim@sha256:88200866dfff7ea7f5cbcb6ec7c8a701889efe6fe859fe64d6990e4b07ea4171
# The base image is pinned by digest, so its Debian snapshot fixes the version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends etcd-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/etcd \
    && chown 10002:10002 /var/lib/etcd
USER 10002:10002
VOLUME ["/var/lib/etcd"]
EXPOSE 2379 2380
ENTRYPOINT ["/usr/bin/etcd"]
