# syntax=docker/dockerfile:1
# The image of `trainer` and `exporter` (the trainer workers of compose.yaml and of
# deploy/k8s/trainer-worker-job.yaml). Build: `docker compose build` or
#   docker build -t edgecp/trainer .
# Both binaries are on PATH: `trainer worker` runs `exporter` beside itself to bundle a run.

# ---- build ----
FROM rust:1.95-bookworm AS build
# aws-lc-sys (TLS of the object-store client) may need cmake for its C build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep crates.io downloads and compiled dependencies between builds; the
# binaries are copied out of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p trainer -p exporter \
 && install -D -m 0755 -t /out target/release/trainer target/release/exporter

# ---- runtime ----
FROM debian:bookworm-slim
# ca-certificates: HTTPS to S3 / MLflow outside the compose network; tini: PID 1 that
# forwards SIGTERM (a Rust program as PID 1 would ignore it and be killed only after the
# grace period).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 edgecp \
 && useradd --system --uid 10001 --gid 10001 --home-dir /work --shell /usr/sbin/nologin edgecp \
 && mkdir -p /work && chmod 1777 /work
COPY --from=build /out/ /usr/local/bin/
# Relative defaults (runs/, checkpoints of runs whose artifacts go to S3) land in /work.
# compose.yaml may run the container as the host user (EDGECP_UID) so that it can read the
# signing key file, hence the sticky world-writable folder.
WORKDIR /work
USER 10001:10001
ENV HOME=/work \
    RUST_LOG=info
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["trainer", "--help"]
