#!/usr/bin/env bash
# Raspberry Pi OS (64-bit, Bookworm) set-up: build llama.cpp for this CPU and install edge_runtime.
# Pi 5 (Cortex-A76) gets dotprod kernels; Pi 4 (Cortex-A72) has no dotprod and uses plain NEON.
set -euo pipefail
cd "$(dirname "$0")/../.."

sudo apt-get update
sudo apt-get install -y python3-venv python3-dev build-essential cmake libportaudio2 libsndfile1

python3 -m venv "${VENV:-$HOME/.venvs/edge-runtime}"
# shellcheck disable=SC1091
source "${VENV:-$HOME/.venvs/edge-runtime}/bin/activate"
pip install --upgrade pip

# GGML_NATIVE builds for the CPU found here (-mcpu=native), which is what a Pi needs.
CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary llama-cpp-python ".[default-model,audio]"

edge-runtime info
