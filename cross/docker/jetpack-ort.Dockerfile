# syntax=docker/dockerfile:1
# edge-agent for a Jetson on JetPack 5 (L4T r35), built natively on aarch64 with
# `--features ort,gpio`, with onnxruntime built from source with the CUDA and TensorRT
# execution providers (`--runtime ort`; see docs/JETSON.md).
#
# NOT BUILT: written on an x86_64 machine without a Docker daemon, a Jetson or access to
# nvcr.io. The image tag, the onnxruntime version against JetPack 5's TensorRT 8.5 and
# CUDA 11.4, the CUDA architectures and the build flags are unverified; expect to adjust
# them on the first build.
#
# Build on the Jetson itself, from the repository root (the root .dockerignore keeps the
# context to the sources). onnxruntime's CUDA build takes hours and several GB of memory
# (add swap on 8 GB boards); under qemu on an x86 host it would take far longer.
#   docker build -f cross/docker/jetpack-ort.Dockerfile -t edge-agent:jp5-ort .
# Run (the GPU needs the NVIDIA container runtime; the GPIO line its device):
#   docker run --runtime nvidia --init --rm -p 127.0.0.1:8080:8080 \
#     -v /etc/edge-agent:/etc/edge-agent:ro -v /var/lib/edge-agent:/var/lib/edge-agent \
#     --device /dev/gpiochip0 edge-agent:jp5-ort
# Or take the binary and the libraries out and install them with cross/install.sh:
#   id=$(docker create edge-agent:jp5-ort) && docker cp $id:/usr/local/bin/edge-agent . \
#     && docker cp $id:/opt/onnxruntime . && docker rm $id

# JetPack 5.1.2 (CUDA 11.4, cuDNN 8.6, TensorRT 8.5.2); r36.x for JetPack 6
ARG L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r35.4.1

# ---- onnxruntime with the CUDA and TensorRT execution providers ----
FROM ${L4T_IMAGE} AS onnxruntime
# The agent's `ort` crate asks for C API 17: onnxruntime 1.17 or newer. onnxruntime's
# documentation pairs 1.17 with TensorRT 8.6; JetPack 5 has 8.5 (unverified pairing).
ARG ORT_VERSION=v1.17.3
# Xavier (sm_72) and Orin (sm_87)
ARG CUDA_ARCHITECTURES=72;87
# parallel compile jobs: each CUDA job can take 2+ GB of memory
ARG BUILD_JOBS=4
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential git ca-certificates python3-pip python3-dev \
 && rm -rf /var/lib/apt/lists/*
# onnxruntime's build needs a newer cmake than Ubuntu 20.04's 3.16
RUN python3 -m pip install --no-cache-dir "cmake>=3.26,<4" numpy packaging wheel
RUN git clone --depth 1 --branch "${ORT_VERSION}" --recursive https://github.com/microsoft/onnxruntime /src/onnxruntime
WORKDIR /src/onnxruntime
RUN ./build.sh --config Release --update --build --parallel "${BUILD_JOBS}" \
      --build_shared_lib --skip_tests --allow_running_as_root \
      --use_tensorrt --cuda_home /usr/local/cuda \
      --cudnn_home /usr/lib/aarch64-linux-gnu --tensorrt_home /usr/lib/aarch64-linux-gnu \
      --cmake_extra_defines "CMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" onnxruntime_BUILD_UNIT_TESTS=OFF \
 && mkdir -p /opt/onnxruntime/lib \
 && cp -a build/Linux/Release/libonnxruntime*.so* /opt/onnxruntime/lib/

# ---- edge-agent, natively on aarch64 ----
FROM ${L4T_IMAGE} AS agent
ARG RUST_VERSION=1.95.0
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential curl ca-certificates pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
ENV PATH=/root/.cargo/bin:${PATH}
WORKDIR /src
COPY . .
# `ort` loads libonnxruntime at run time (nothing downloaded at build time); `gpio` drives
# the assurance output through /dev/gpiochipN. The `device` profile is the one
# cross/build.sh ships (LTO, stripped).
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --profile device -p edge-agent --bin edge-agent --features ort,gpio \
 && install -D -m 0755 target/device/edge-agent /out/edge-agent

# ---- runtime ----
# The same JetPack image: it carries the CUDA, cuDNN and TensorRT libraries the providers
# load (a smaller l4t-tensorrt runtime image may do; not checked).
FROM ${L4T_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=onnxruntime /opt/onnxruntime /opt/onnxruntime
COPY --from=agent /out/edge-agent /usr/local/bin/edge-agent
# the agent finds onnxruntime here; onnxruntime finds its provider libraries beside itself
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so \
    LD_LIBRARY_PATH=/opt/onnxruntime/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}} \
    EDGE_AGENT_RUNTIME=ort \
    NO_COLOR=1
# HTTP inside the container must listen beyond loopback for -p to reach it
ENV EDGE_AGENT_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/edge-agent"]
CMD ["--config", "/etc/edge-agent/agent.toml", "run"]
