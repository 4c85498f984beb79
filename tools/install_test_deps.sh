#!/usr/bin/env bash
# Installs everything the test suite needs: system packages for audio tests, then the
# package with its `test` extra (torch pinned to the CPU build 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."

# audio tests; the ARM check (cross compilers, qemu, an arm64 Debian root); the Pi install check (shellcheck,
# systemd-analyze, a Debian root); the chat page test (chromium)
APT_PACKAGES=(espeak-ng sox libportaudio2 libsndfile1 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static
              debootstrap shellcheck systemd cmake ninja-build chromium chromium-driver)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

python -m pip install -q -e ".[test]"

# llama.cpp with its RPC backend (rpc-worker, --rpc). pip's cached wheel of llama-cpp-python has none, so a
# wheel built with -DGGML_RPC=on is kept apart, in our own cache, and installed over it.
RPC_WHEELS=${EDGE_RUNTIME_WHEELS:-$HOME/.cache/edge-runtime/wheels}/llama-cpp-python-0.3.36-rpc
if ! python -c "import sys; from edge_runtime.backend.rpc import rpc_available; sys.exit(not rpc_available())"; then
    if ! ls "$RPC_WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
        echo "building llama-cpp-python 0.3.36 with RPC (about 8 minutes)" >&2
        mkdir -p "$RPC_WHEELS"
        CMAKE_ARGS="-DGGML_RPC=on" python -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
            llama-cpp-python==0.3.36 -w "$RPC_WHEELS"
    fi
    python -m pip install -q --force-reinstall --no-deps "$RPC_WHEELS"/llama_cpp_python-0.3.36-*.whl
fi

# llama.cpp's own converter (convert_hf_to_gguf.py, from the llama-cpp-python sdist we pin) is the reference for
# projector layouts transformers cannot check here (Gemma 3n's MobileNetV5): unpacked under .cache/.
SDIST_DIR=.cache/llama-cpp-python-0.3.36
if [ ! -f "$SDIST_DIR/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
    mkdir -p .cache
    python -m pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d .cache
    tar -xzf .cache/llama_cpp_python-0.3.36.tar.gz -C .cache
    mv .cache/llama_cpp_python-0.3.36 "$SDIST_DIR"
fi
# timm builds MobileNetV5 (Gemma 3n's vision tower) for the tests; without its dependencies, whose torchvision
# would replace the CPU torch (tests/gemma3n_vision.py stands in for the torchvision parts it never uses).
python -m pip install -q --no-deps "timm==1.0.31"
