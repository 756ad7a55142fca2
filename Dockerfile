# syntax=docker/dockerfile:1
# obsbox in a small image: one binary that is the collector, the store, the UI and every demo
# service (`obsbox demo-service <name>`). docker-compose.yml runs it once per container.

# --- build -----------------------------------------------------------------------------------
# Debian bookworm in both stages, so the binary links against the glibc it runs with.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
# Manifests first, then the sources; the registry and target/ live in BuildKit cache mounts, so a
# source change rebuilds only the workspace crates, never the dependencies.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY storage storage
COPY collector collector
COPY query-ui query-ui
COPY slo slo
COPY net net
COPY fuzz fuzz
COPY cluster cluster
COPY instrumented-demo instrumented-demo
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin obsbox \
    && install -m 0755 target/release/obsbox /usr/local/bin/obsbox

# --- run -------------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/obsbox --shell /usr/sbin/nologin obsbox \
    && mkdir -p /var/lib/obsbox/data /etc/obsbox \
    && chown -R obsbox:obsbox /var/lib/obsbox
COPY --from=builder /usr/local/bin/obsbox /usr/local/bin/obsbox
USER obsbox
WORKDIR /var/lib/obsbox
ENV OBSBOX_DATA_DIR=/var/lib/obsbox/data
# OTLP/gRPC, OTLP/HTTP, UI + query APIs + /metrics; the demo services use 8080-8089.
EXPOSE 4317 4318 16686 8080-8089
VOLUME ["/var/lib/obsbox/data"]
# Ready once the store is open and every listener serves. bash's /dev/tcp: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/16686 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["obsbox"]
