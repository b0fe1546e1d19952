# fanout as a container image: one static binary in an otherwise empty image.
#
#   docker build -t fanout:0.1.0 .
#   docker run --rm -p 8080:8080 -p 8081:8081 --stop-timeout 70 fanout:0.1.0 --upstream simulated
#
# Stage 1 compiles for x86_64-unknown-linux-musl, so the binary needs no C library at run time.
# Stage 2 is FROM scratch: no shell, no package manager, no /etc, no CA bundle. fanout does not need one:
# its TLS trust anchors are compiled in from the webpki-roots crate (Mozilla's root programme), and
# `--upstream-ca FILE` adds more from a mounted file. The in-process simulated upstream is reached by IP
# (127.0.0.1), so not even /etc/hosts is needed.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src

# Dependencies in their own layer: built against placeholder sources, so this layer is reused until
# Cargo.toml or Cargo.lock change, and editing src/ recompiles only fanout itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-musl \
    && rm -rf src

COPY src ./src
# COPY keeps the files' own modification times, which can be older than the placeholder build: touch them
# so cargo rebuilds fanout instead of keeping the placeholder binary.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/fanout /fanout

FROM scratch
COPY --from=build /fanout /fanout
# No /etc/passwd in scratch: a numeric user, which also lets Kubernetes check runAsNonRoot.
USER 65532:65532
# 8080: the API (--listen). 8081: /healthz, /readyz and /metrics (--admin-listen).
EXPOSE 8080 8081
# The binary probes its own admin endpoint: a scratch image has no shell or curl. A container that stopped
# answering /healthz for 3 probes in a row is marked unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/fanout", "healthcheck", "http://127.0.0.1:8081/healthz"]
# fanout is PID 1 and handles SIGTERM itself: it stops accepting, lets calls in flight finish (at most
# --drain-timeout-ms, 65 s by default) and exits 0. `docker stop` waits only 10 s before SIGKILL unless told
# otherwise: run with --stop-timeout 70 (or `docker stop -t 70`). It starts no child processes, so it has
# no zombies to reap and needs no init.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/fanout"]
