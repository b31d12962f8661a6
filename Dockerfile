# Kith image, the ordinary way, for machines WITH internet access (pulls rust and debian images).
#
#   docker build -t kith:local .        # or: docker compose build
#
# Machines without a registry (CI) use docker/build-local-image.sh instead, which packs a prebuilt
# binary into a locally made base image; both images have the same layout.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kith \
 && install -D -m 0755 target/release/kith /out/kith

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 kith \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin kith \
 && install -d -o kith -g kith -m 0755 /data
COPY --from=build /out/kith /usr/local/bin/kith
ENV KITH_HOME=/data
WORKDIR /data
EXPOSE 7001
# Non-root; see compose.yaml (`user:`) for running as the owner of a bind-mounted data dir.
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/kith"]
CMD ["--help"]
