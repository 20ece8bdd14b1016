# pullthrough container image: build with cargo, run as a non-root user.
#   docker build -t pullthrough .
#   docker run -p 8080:8080 -v pullthrough-cache:/var/cache/pullthrough pullthrough

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin pullthrough

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/cache/pullthrough --shell /usr/sbin/nologin pullthrough \
 && mkdir -p /etc/pullthrough /var/cache/pullthrough \
 && chown pullthrough:pullthrough /var/cache/pullthrough
COPY --from=build /src/target/release/pullthrough /usr/local/bin/pullthrough
COPY conf/container.yaml /etc/pullthrough/pullthrough.yaml
USER pullthrough
VOLUME ["/etc/pullthrough", "/var/cache/pullthrough"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=6s --start-period=10s \
  CMD ["/usr/local/bin/pullthrough", "healthcheck", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/pullthrough"]
CMD ["-c", "/etc/pullthrough/pullthrough.yaml"]
