# syntax=docker/dockerfile:1
#
# Multi-stage build of the two binaries of the service:
#   api     - the HTTP facade (default command)
#   worker  - the job consumer (`docker run IMAGE worker`)
#
# Configuration defaults are compiled in (config/default.toml); override any key
# with an environment variable APP__<SECTION>__<KEY>, e.g. APP__AMQP__URL,
# APP__REDIS__URL, APP__HTTP__PORT, APP__WORKER__CONCURRENCY.

############################ builder ############################
FROM rust:1-bookworm AS builder
WORKDIR /src

# --- dependency-caching layer -------------------------------------------------
# Copy only the manifests and the lock file, give every workspace member a stub
# target and build: this layer (all crates.io dependencies compiled) is reused
# as long as no Cargo.toml / Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/Cargo.toml
COPY api/Cargo.toml    api/Cargo.toml
COPY worker/Cargo.toml worker/Cargo.toml
COPY tests/Cargo.toml  tests/Cargo.toml
RUN mkdir -p shared/src api/src worker/src tests/src \
 && echo '' > shared/src/lib.rs \
 && echo '' > tests/src/lib.rs \
 && echo 'fn main() {}' > api/src/main.rs \
 && echo 'fn main() {}' > worker/src/main.rs \
 && cargo build --release --locked --bin api --bin worker \
 && rm -rf shared/src api/src worker/src tests/src

# --- the real build -----------------------------------------------------------
COPY config config
COPY shared shared
COPY api api
COPY worker worker
COPY tests tests
# COPY keeps the files' original mtimes, which can be older than the stub build's
# artifacts; touch the workspace sources so cargo rebuilds the workspace crates.
RUN find shared api worker tests config -type f -exec touch {} + \
 && cargo build --release --locked --bin api --bin worker \
 && install -D -m 0755 target/release/api    /out/api \
 && install -D -m 0755 target/release/worker /out/worker

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# ca-certificates: amqps:// and rediss:// endpoints; curl: container healthchecks.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /out/api    /usr/local/bin/api
COPY --from=builder /out/worker /usr/local/bin/worker

# Inside a container the facade must listen on all interfaces (the compiled-in
# default is 127.0.0.1); logs go out as one JSON object per line.
ENV APP__HTTP__HOST=0.0.0.0 \
    APP__HTTP__PORT=8080 \
    APP__LOG__FORMAT=json

USER app:app
WORKDIR /tmp
EXPOSE 8080

# No HEALTHCHECK here: the same image also runs the worker, which serves no HTTP.
# docker-compose.yml gives the api its healthcheck (curl -fsS .../readyz).
CMD ["api"]
