#!/usr/bin/env bash
# Installs edge-runtime on a Raspberry Pi (Raspberry Pi OS / Debian, 64-bit) as a service:
#   - llama.cpp built for this board (Pi 5: armv8.2-a+dotprod+fp16, Pi 4/3: armv8-a) with RPC support,
#   - a venv in /opt/edge-runtime, a dedicated system user (in the audio group, for the microphone),
#   - systemd units for `serve`, `assistant` and `rpc-worker`, MemoryMax sized to the board, restart on
#     failure, logs in the journal (journalctl -u edge-runtime-serve).
#
# Usage: sudo platforms/raspberry-pi/install.sh [options]
#   --board pi3|pi4|pi5|native   build target (default: detected from the device tree / CPU)
#   --services "serve assistant rpc-worker"   units to enable (default: serve)
#   --wheel FILE                 install this llama-cpp-python wheel instead of building one (~25 min on a Pi 4)
#   --no-apt                     do not install Debian packages
#   --no-start                   enable the units but do not start them (automatic in a chroot)
#   --prefix DIR                 where the venv goes (default /opt/edge-runtime)
#   render-units OUTDIR          only write the units for this board into OUTDIR (for checking)
#   print-build                  only print the board and the llama.cpp build flags chosen for it
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$SRC/platforms/raspberry-pi
LLAMA_CPP_PYTHON=llama-cpp-python==0.3.36
PREFIX=/opt/edge-runtime
CONF_DIR=/etc/edge-runtime
UNIT_DIR=/etc/systemd/system
SERVICE_USER=edge-runtime
BOARD=""
SERVICES="serve"
WHEEL=""
APT=1
START=1
RENDER_ONLY=""
PRINT_BUILD=0
DT_MODEL=${DT_MODEL:-/proc/device-tree/model}  # overridable to check recorded boards
CPUINFO=${CPUINFO:-/proc/cpuinfo}

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --board) BOARD=$2; shift 2 ;;
        --services) SERVICES=$2; shift 2 ;;
        --wheel) WHEEL=$2; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --no-start) START=0; shift ;;
        --prefix) PREFIX=$2; shift 2 ;;
        render-units) RENDER_ONLY=$2; shift 2 ;;
        print-build) PRINT_BUILD=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
VENV=$PREFIX/venv

# The board: the device tree names it; otherwise the CPU part (Cortex-A76: Pi 5 class, A72/A53: Pi 4/3).
detect_board() {
    local model=""
    [ -r "$DT_MODEL" ] && model=$(tr -d '\0' < "$DT_MODEL")
    case $model in
        *"Raspberry Pi 5"*) echo pi5; return ;;
        *"Raspberry Pi 4"*|*"Compute Module 4"*) echo pi4; return ;;
        *"Raspberry Pi 3"*|*"Zero 2"*) echo pi3; return ;;
    esac
    case $(grep -m1 -o 'CPU part.*' "$CPUINFO" 2>/dev/null | awk '{print $NF}') in
        0xd0b) echo pi5 ;;
        0xd08) echo pi4 ;;
        0xd03) echo pi3 ;;
        *) echo native ;;
    esac
}

cmake_args() {
    case $1 in
        pi5) echo "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16 -DGGML_RPC=on" ;;
        pi4|pi3) echo "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a -DGGML_RPC=on" ;;
        native) echo "-DGGML_NATIVE=ON -DGGML_RPC=on" ;;
        *) die "unknown board $1 (pi3, pi4, pi5 or native)" ;;
    esac
}

# MemoryMax: 80% of RAM (the rest for the system, SSH and the page cache the mmap'd weights share).
memory_max() {
    local total_kb
    total_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
    echo "$((total_kb * 80 / 100 / 1024))M"
}

render_units() {
    local out=$1 mem
    mem=$(memory_max)
    mkdir -p "$out"
    for unit in serve assistant rpc-worker; do
        sed -e "s|@VENV@|$VENV|g" -e "s|@USER@|$SERVICE_USER|g" -e "s|@CONF_DIR@|$CONF_DIR|g" \
            -e "s|@MEMORY_MAX@|$mem|g" "$HERE/systemd/edge-runtime-$unit.service.in" \
            > "$out/.edge-runtime-$unit.service.tmp"
        mv "$out/.edge-runtime-$unit.service.tmp" "$out/edge-runtime-$unit.service"
    done
}

[ -n "$BOARD" ] || BOARD=$(detect_board)
CMAKE_ARGS_FOR_BOARD=$(cmake_args "$BOARD")
if [ "$PRINT_BUILD" = 1 ]; then
    echo "$BOARD $CMAKE_ARGS_FOR_BOARD"
    exit 0
fi
if [ -n "$RENDER_ONLY" ]; then
    render_units "$RENDER_ONLY"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 $*"
in_chroot() { [ "$(stat -c %d:%i /)" != "$(stat -c %d:%i /proc/1/root/. 2>/dev/null || echo x)" ]; }
if in_chroot || ! [ -d /run/systemd/system ]; then
    START=0
fi
log "board: $BOARD (llama.cpp: $CMAKE_ARGS_FOR_BOARD); MemoryMax $(memory_max); services: $SERVICES"

if [ "$APT" = 1 ]; then
    log "Debian packages"
    packages=(python3-venv libgomp1 libportaudio2 libsndfile1)  # libgomp1: llama.cpp's OpenMP threads
    [ -z "$WHEEL" ] && packages+=(python3-dev build-essential cmake)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

log "service user $SERVICE_USER"
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/edge-runtime --create-home --shell /usr/sbin/nologin \
        "$SERVICE_USER"
fi
getent group audio >/dev/null || groupadd --system audio
usermod -a -G audio "$SERVICE_USER"

log "venv $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ -n "$WHEEL" ]; then
    "$VENV/bin/pip" install -q "$WHEEL"
else
    log "building llama.cpp for $BOARD (a Pi 4 takes about 25 minutes)"
    # --no-cache-dir: pip would otherwise reuse a wheel built earlier with other flags (no RPC, another -march)
    CMAKE_ARGS="$CMAKE_ARGS_FOR_BOARD" "$VENV/bin/pip" install -q --no-cache-dir --force-reinstall \
        --no-binary llama-cpp-python "$LLAMA_CPP_PYTHON"
fi
lib_dir=$("$VENV/bin/python" -c 'import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))')
march=$(printf '%s' "$CMAKE_ARGS_FOR_BOARD" | sed -n 's/.*GGML_CPU_ARM_ARCH=\([^ ]*\).*/\1/p')
if [ -z "$WHEEL" ] && [ -n "$march" ]; then
    printf '{"march": "%s", "llama_cpp_python": "%s"}\n' "$march" "${LLAMA_CPP_PYTHON#*==}" \
        > "$lib_dir/edge-runtime-build.json"
fi
"$VENV/bin/pip" install -q "${SRC}[default-model,audio,server]"

log "configuration in $CONF_DIR (kept if present)"
mkdir -p "$CONF_DIR"
write_conf() {  # write_conf FILE CONTENT: only when absent, atomically
    [ -e "$CONF_DIR/$1" ] && return
    printf '%s\n' "$2" > "$CONF_DIR/.$1.tmp"
    mv "$CONF_DIR/.$1.tmp" "$CONF_DIR/$1"
}
write_conf serve.env '# edge-runtime serve options (see edge-runtime serve --help); e.g. --model /var/lib/edge-runtime/model.gguf
EDGE_RUNTIME_SERVE_ARGS="--host 127.0.0.1 --port 8080"'
write_conf assistant.env '# edge-runtime assistant options; list microphones with: edge-runtime listen --list-devices
EDGE_RUNTIME_ASSISTANT_ARGS=""'
write_conf rpc-worker.env '# edge-runtime rpc-worker options: --host 0.0.0.0 to serve the LAN (the key is always required)
EDGE_RUNTIME_RPC_ARGS="--host 127.0.0.1 --port 50052"'
if [ ! -e "$CONF_DIR/rpc.key" ]; then
    "$VENV/bin/edge-runtime" rpc-worker --new-key "$CONF_DIR/rpc.key" >/dev/null
fi
chown root:"$SERVICE_USER" "$CONF_DIR/rpc.key"
chmod 0640 "$CONF_DIR/rpc.key"

log "systemd units"
render_units "$UNIT_DIR"
if command -v systemctl >/dev/null; then
    [ "$START" = 1 ] && systemctl daemon-reload
    for s in $SERVICES; do
        systemctl enable "edge-runtime-$s.service" 2>/dev/null
        [ "$START" = 1 ] && systemctl restart "edge-runtime-$s.service"
    done
else
    log "no systemctl here: units written, enable them with systemctl enable edge-runtime-<name>"
fi

log "check: edge-runtime info as $SERVICE_USER"
runuser -u "$SERVICE_USER" -- env HOME=/var/lib/edge-runtime "$VENV/bin/edge-runtime" info >/dev/null
log "done. Logs: journalctl -u edge-runtime-serve -f; settings: $CONF_DIR/*.env"
