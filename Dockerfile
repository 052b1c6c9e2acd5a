# syntax=docker/dockerfile:1
# check=error=true

# One image for both roles: the API is the default command, the worker Deployment runs
# /usr/local/bin/upsize-worker. Build: docker build -t upsize:latest .
# deploy/check parses this file with BuildKit and runs its lint rules (go test there).

# GO_VERSION is the toolchain of go.mod's go line.
ARG GO_VERSION=1.26.8

# Both stages are Debian bookworm, so the libvips the binaries are built against (libvips-dev) is
# the one the final stage installs (libvips42); the golang image has gcc and pkg-config for cgo.
# build compiles both binaries (cgo: bimg and internal/imageops link libvips).
FROM golang:${GO_VERSION}-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvips-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/upsize-api ./cmd/api \
    && CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/upsize-worker ./cmd/worker

FROM debian:bookworm-slim
# Runtime libraries only: libvips42 is the shared library the binaries link; ca-certificates for
# rediss:// to a managed Redis. Nothing to compile with, and no apt lists left behind.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libvips42 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/upsize/blobs \
    && chown -R 10001:10001 /var/lib/upsize
COPY --from=build /out/upsize-api /out/upsize-worker /usr/local/bin/
# glibc's default of 8 arenas per core fragments under libvips' thread pools (docs/imageops.md);
# the process also calls mallopt, this covers allocations made before that.
ENV MALLOC_ARENA_MAX=2 \
    BLOB_URL=file:///var/lib/upsize/blobs
WORKDIR /var/lib/upsize
USER 10001:10001
EXPOSE 8080 9090
CMD ["/usr/local/bin/upsize-api"]
