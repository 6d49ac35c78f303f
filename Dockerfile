# syntax=docker/dockerfile:1
#
# verdict's image: `docker build -t verdict .` from the repository root.
# Two stages: the release binary is built with the toolchain of the
# workspace's `rust-version` and the same flags as CI (`--locked`: the
# committed Cargo.lock, nothing re-resolved); the runtime stage is Debian
# slim with CA certificates (Stripe, SMTP, webhooks and a managed
# PostgreSQL over TLS check their peers against them) and the binary, run
# as a user without privileges. docs/deploy.md says what was exercised.

ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Only what the build reads: the workspace, its lock file, the crates, and
# .cargo/config.toml (the bundled SQLite's build options).
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY crates crates
# The registry and target caches survive between builds (BuildKit); the
# binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin verdict \
    && install -m 0755 target/release/verdict /usr/local/bin/verdict

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 verdict \
    && useradd --system --uid 10001 --gid verdict --home-dir /var/lib/verdict \
       --shell /usr/sbin/nologin verdict \
    && install -d -o verdict -g verdict -m 0750 /var/lib/verdict
COPY --from=build /usr/local/bin/verdict /usr/local/bin/verdict
COPY LICENSE /usr/share/doc/verdict/LICENSE

LABEL org.opencontainers.image.title="verdict" \
      org.opencontainers.image.description="Server-authoritative session end and settlement" \
      org.opencontainers.image.licenses="Apache-2.0"

# State (the default SQLite database under verdict-data/, .eml receipts
# without SMTP) lives in the working directory: mount a volume there.
WORKDIR /var/lib/verdict
USER 10001:10001
# Inside a container the service listens on every interface; `verdict
# healthcheck` asks an unspecified address at loopback.
ENV VERDICT_BIND=0.0.0.0:8080 \
    VERDICT_WORKER_BIND=0.0.0.0:8081
# 8080: `verdict serve` (API, dashboard, /metrics); 8081: `verdict worker`
# (/metrics, /healthz).
EXPOSE 8080 8081
# Liveness only (/healthz, never /readyz): a database outage the service
# rides out (answering 503) never gets the container restarted.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["verdict", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["verdict"]
CMD ["serve"]
