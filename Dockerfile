# syntax=docker/dockerfile:1
# One image with the three binaries (relay-server, connector, management-web), as docker-compose.yml
# runs it. Build: `docker build -t relay-tunnel .` (BuildKit, the default builder, for the caches).
# Without a command it runs a relay with the embedded SQLite store and a self-signed certificate
# in /var/lib/relay; docker-compose.yml shows a cluster on PostgreSQL.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds; the binaries are copied out of the
# cached target directory, which does not reach the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p relay-server -p connector -p management-web \
    && mkdir -p /out \
    && cp target/release/relay-server target/release/connector target/release/management-web /out/

FROM debian:bookworm-slim
# ca-certificates: connectors verify relays (and HTTPS backends) against the system roots;
# curl: the healthchecks; openssl: docker-compose.yml's init makes the demo certificate with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl openssl \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid, so that volumes keep their owner across rebuilds. The folders exist (owned by it)
# before any volume is mounted on them, so new volumes start with that owner.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/relay --shell /usr/sbin/nologin relay \
    && install -d -o relay -g relay -m 0700 \
        /var/lib/relay /var/lib/relay/keys /var/lib/relay/tls /var/lib/connector
COPY --from=build /out/ /usr/local/bin/
USER relay
# The relay's data directory (keys/, tls/, the SQLite store); management-web reads keys/ there.
ENV RELAY_DATA_DIR=/var/lib/relay
ENV MANAGEMENT_DATA_DIR=/var/lib/relay
WORKDIR /var/lib/relay
VOLUME ["/var/lib/relay"]
# HTTPS over TCP and connectors over QUIC (UDP) on one port; the admin listener stays on loopback.
EXPOSE 8443/tcp 8443/udp
CMD ["relay-server", "run"]
