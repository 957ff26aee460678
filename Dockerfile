# herald in a container: a static-enough release binary on a small Debian base, run as
# a non-root user, its data dir a volume. Build from the repository root:
#   docker build --build-arg HERALD_COMMIT=$(git rev-parse --short HEAD) -t herald .
#   docker run -p 8080:8080 -v herald-data:/data herald
# Linted by hadolint in scripts/test (step `dockerfile`); no Docker daemon is needed for that.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
ARG HERALD_COMMIT=unknown
ENV HERALD_COMMIT=${HERALD_COMMIT}
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# The JS client is embedded in the binary (served at /client/herald.js).
COPY clients/js/src ./clients/js/src
RUN cargo build --release --locked -p herald \
    && strip target/release/herald

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* curl=7.88.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin herald \
    && mkdir -p /data && chown herald:herald /data
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
ENV HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_DATA_DIR=/data
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
