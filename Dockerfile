# Multi-stage build of the two binaries of the service, and an example backend:
#   api             - the HTTP facade (default command)
#   worker          - the job consumer (`docker run IMAGE worker`)
#   example-backend - the HTTP service behind the declared job types of examples/job-types.toml
#                     (`docker run IMAGE example-backend --listen 0.0.0.0:9000`; the quick start's)
#
# Configuration defaults are compiled in (config/default.toml); override any key
# with an environment variable APP__<SECTION>__<KEY>, e.g. APP__AMQP__URL,
# APP__REDIS__URL, APP__HTTP__PORT, APP__WORKER__CONCURRENCY.
#
# The base images are build arguments, e.g. for a mirror or a pinned digest:
#   docker build --build-arg RUST_IMAGE=registry.example/rust:1-bookworm .
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

############################ manifests ############################
# Only the workspace's manifests and lock file, in their places. The builder copies this
# stage's files in one layer, and that layer (and the dependency build on top of it) is
# reused for as long as no Cargo.toml and no Cargo.lock changes.
FROM scratch AS manifests
COPY Cargo.toml Cargo.lock /src/
COPY shared/Cargo.toml /src/shared/
COPY api/Cargo.toml    /src/api/
COPY worker/Cargo.toml /src/worker/
COPY client/Cargo.toml /src/client/
COPY bench/Cargo.toml  /src/bench/
COPY tests/Cargo.toml  /src/tests/
COPY examples/Cargo.toml /src/examples/

############################ builder ############################
FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# --- dependency-caching layer -------------------------------------------------
# Every workspace member gets a stub of each target its manifest names, so cargo can load the
# workspace and compile all crates.io dependencies of the two binaries.
COPY --from=manifests /src/ /src/
RUN mkdir -p shared/src api/src worker/src client/src/bin bench/src/bin tests/src examples/src/bin \
 && for lib in shared client tests worker examples; do echo '' > $lib/src/lib.rs; done \
 && for bin in api/src/main.rs worker/src/main.rs client/src/bin/arr.rs bench/src/main.rs bench/src/bin/bench-worker.rs examples/src/bin/wordcount-worker.rs examples/src/bin/greet-worker.rs examples/src/bin/example-backend.rs; do echo 'fn main() {}' > $bin; done \
 && cargo build --release --locked --bin api --bin worker --bin example-backend \
 && rm -rf shared/src api/src worker/src client/src bench/src tests/src examples/src

# --- the real build -----------------------------------------------------------
# The whole context (.dockerignore keeps out target/, .git/ and what no build reads), so a new
# workspace member needs no change here.
COPY . .
# COPY keeps the files' original mtimes, which can be older than the stub build's
# artifacts; touch the workspace sources so cargo rebuilds the workspace crates.
RUN find shared api worker client bench tests examples config -type f -exec touch {} + \
 && cargo build --release --locked --bin api --bin worker --bin example-backend \
 && install -D -m 0755 target/release/api    /out/api \
 && install -D -m 0755 target/release/worker /out/worker \
 && install -D -m 0755 target/release/example-backend /out/example-backend

############################ runtime ############################
FROM ${RUNTIME_IMAGE} AS runtime

# ca-certificates: amqps:// and rediss:// endpoints; curl: container healthchecks. The command
# types of examples/job-types.toml run /usr/bin/factor (coreutils) and /bin/gzip, both part of
# every Debian base image.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /out/api    /usr/local/bin/api
COPY --from=builder /out/worker /usr/local/bin/worker
COPY --from=builder /out/example-backend /usr/local/bin/example-backend

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
