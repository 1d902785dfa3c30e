#!/usr/bin/env bash
# Builds the llama.cpp REFERENCE that inhaus is checked and benchmarked against, from source.
#
#   scripts/reference/build-llamacpp.sh            # build once; later runs only print where things are
#   scripts/reference/build-llamacpp.sh --force    # rebuild (keeps the downloaded source package)
#   scripts/reference/build-llamacpp.sh --print    # print the locations as shell variables and exit (no build)
#
# Everything comes from ONE source package, the `llama-cpp-python` sdist pinned below (fetched with
# pip, the ordinary registry client), which vendors llama.cpp under vendor/llama.cpp:
#   (a) a Python venv with llama-cpp-python built from that sdist (CPU only, GGML_NATIVE, Release; no
#       prebuilt llama-cpp-python wheel), plus jinja2, numpy and gguf (gguf-py from the same vendored tree);
#   (b) the native tools (llama-bench, llama-server, llama-tokenize, llama-completion) built with cmake
#       from the same vendor/llama.cpp, Release, GGML_NATIVE=ON, static, into <dir>/bin.
# Both are built for the CPU of THIS machine (-march=native): do not copy the folder to another CPU.
#
# Location: $INHAUS_REFERENCE_DIR, default ~/.cache/inhaus/reference (outside the repository).
# Parallelism: $JOBS, default 2. A full build takes roughly 15-30 minutes on 2 cores.
# Needs: python3 (>= 3.9, with venv), a C/C++ compiler (gcc/g++ 10+), and registry access for pip.
# cmake and ninja come from pip (into the venv).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"   # vendors llama.cpp ggml-org/llama.cpp@0c1e57098 (per its CHANGELOG)
LLAMA_CPP_PYTHON_SHA256="${LLAMA_CPP_PYTHON_SHA256-832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e}"  # set empty to skip the check

REF="${INHAUS_REFERENCE_DIR:-$HOME/.cache/inhaus/reference}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"

SRC_DIR="$REF/src"
SDIST_NAME="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
SDIST="$SRC_DIR/$SDIST_NAME.tar.gz"
TREE="$SRC_DIR/$SDIST_NAME"
VENDOR="$TREE/vendor/llama.cpp"
VENV="$REF/venv"
PYBUILD="$REF/build-python"
BUILD="$REF/build-native"
BIN="$REF/bin"
LOGS="$REF/logs"
MARKER="$REF/.done-$LLAMA_CPP_PYTHON_VERSION"
TOOLS=(llama-bench llama-server llama-tokenize llama-completion)

print_locations() {
    cat <<EOF
INHAUS_REFERENCE_DIR=$REF
LLAMA_CPP_PYTHON_VERSION=$LLAMA_CPP_PYTHON_VERSION
REFERENCE_PYTHON=$VENV/bin/python
LLAMA_CPP_SOURCE=$VENDOR
LLAMA_CPP_BIN=$BIN
LLAMA_BENCH=$BIN/llama-bench
LLAMA_SERVER=$BIN/llama-server
LLAMA_TOKENIZE=$BIN/llama-tokenize
LLAMA_COMPLETION=$BIN/llama-completion
EOF
}

log() { echo "build-llamacpp: $*" >&2; }
die() { echo "build-llamacpp: error: $*" >&2; exit 1; }

force=0
case "${1:-}" in
    --force) force=1 ;;
    --print) print_locations; exit 0 ;;
    "") ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (use --force, --print or nothing)" ;;
esac

all_present() {
    [[ -f "$MARKER" ]] || return 1
    [[ -x "$VENV/bin/python" ]] || return 1
    local t
    for t in "${TOOLS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
    return 0
}

if [[ $force -eq 0 ]] && all_present; then
    log "already built (marker $MARKER); use --force to rebuild"
    print_locations
    exit 0
fi
rm -f "$MARKER"

command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler (apt-get install build-essential)"
mkdir -p "$REF" "$SRC_DIR" "$LOGS" "$BIN"

# ---- venv with the build tools -------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
log "installing build tools into the venv (cmake, ninja, scikit-build-core)"
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VPY" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    "cmake>=3.21" "ninja>=1.11" "scikit-build-core>=0.10" "setuptools" "wheel"
export PATH="$VENV/bin:$PATH"

# ---- the source package ---------------------------------------------------------------------------
if [[ ! -f "$SDIST" ]]; then
    log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION source package"
    tmp="$(mktemp -d "$SRC_DIR/dl.XXXXXX")"
    # The sdist (--no-binary :all:; with --no-deps that is llama-cpp-python alone). --no-build-isolation makes pip
    # prepare its metadata with the venv's scikit-build-core; without it, :all: would build cmake from source.
    "$VPY" -m pip download --quiet --disable-pip-version-check --no-deps --no-build-isolation \
        --no-binary :all: -d "$tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    mv "$tmp/$SDIST_NAME.tar.gz" "$SDIST" || die "pip did not produce $SDIST_NAME.tar.gz"
    rm -rf "$tmp"
fi
sha="$(sha256sum "$SDIST" | cut -d' ' -f1)"
if [[ -n "$LLAMA_CPP_PYTHON_SHA256" && "$sha" != "$LLAMA_CPP_PYTHON_SHA256" ]]; then
    die "sha256 of $SDIST is $sha, expected $LLAMA_CPP_PYTHON_SHA256"
fi
if [[ ! -f "$VENDOR/CMakeLists.txt" ]]; then
    log "extracting $SDIST"
    rm -rf "$TREE"
    tar -xzf "$SDIST" -C "$SRC_DIR"
fi
[[ -f "$VENDOR/CMakeLists.txt" ]] || die "no vendor/llama.cpp in $SDIST"

export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
export CCACHE_DISABLE=1

# ---- AMX probe: GGML_NATIVE means -march=native, which turns on AMX where /proc/cpuinfo lists it. Some VMs list
# amx_tile but fault on the first tile instruction (llama.cpp then dies with SIGSEGV/SIGILL in
# ggml_backend_amx_mul_mat). Run a tiny AMX program; if it fails, build with -mno-amx-* (everything else native).
EXTRA_FLAGS=""
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    probe_dir="$(mktemp -d)"
    cat >"$probe_dir/amx.c" <<'C'
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) return 2;
    _Alignas(64) uint8_t cfg[64];
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1; cfg[16] = 64; cfg[48] = 16;
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_release();
    return 0;
}
C
    if cc -O1 -mamx-tile -o "$probe_dir/amx" "$probe_dir/amx.c" 2>/dev/null && bash -c '"$0"; exit $?' "$probe_dir/amx" >/dev/null 2>&1; then
        log "AMX probe: usable; building with AMX (-march=native)"
    else
        for f in amx-tile amx-int8 amx-bf16 amx-fp16 amx-complex; do
            if echo 'int main(void){return 0;}' | cc -x c -mno-$f -o /dev/null - 2>/dev/null; then
                EXTRA_FLAGS="$EXTRA_FLAGS -mno-$f"
            fi
        done
        EXTRA_FLAGS="${EXTRA_FLAGS# }"
        log "AMX probe: the CPU lists AMX but tile instructions fault here; building with $EXTRA_FLAGS"
    fi
    rm -rf "$probe_dir"
fi
export CFLAGS="${CFLAGS:+$CFLAGS }$EXTRA_FLAGS"
export CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }$EXTRA_FLAGS"
# compiler flags are cached by cmake: start the build folders afresh when they change
flags_stamp="CFLAGS=$CFLAGS CXXFLAGS=$CXXFLAGS"
if [[ ! -f "$REF/.flags" || "$(cat "$REF/.flags")" != "$flags_stamp" ]]; then
    rm -rf "$PYBUILD" "$BUILD"
    force_python=1
else
    force_python=0
fi

# ---- (a) llama-cpp-python, built from the sdist ------------------------------------------------------
if [[ $force -eq 1 || $force_python -eq 1 ]] || ! "$VPY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON_VERSION')" 2>/dev/null; then
    log "building llama-cpp-python from source (log: $LOGS/python.log) ..."
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DGGML_CCACHE=OFF -DLLAMA_OPENSSL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF" \
    "$VPY" -m pip install --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps -v \
        -C cmake.build-type=Release -C "build-dir=$PYBUILD" \
        "$SDIST" >"$LOGS/python.log" 2>&1 || { tail -40 "$LOGS/python.log" >&2; die "llama-cpp-python build failed"; }
fi
echo "$flags_stamp" >"$REF/.flags"
log "installing jinja2, numpy, gguf (gguf-py from the vendored llama.cpp) and llama-cpp-python's runtime deps"
"$VPY" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    "jinja2>=3.1" "numpy>=1.24" "typing-extensions>=4.5" "diskcache>=5.6" "pyyaml" "tqdm" "requests"
"$VPY" -m pip install --quiet --disable-pip-version-check "$VENDOR/gguf-py"
"$VPY" -c "import llama_cpp, jinja2, numpy, gguf; print('llama_cpp', llama_cpp.__version__, 'jinja2', jinja2.__version__, 'numpy', numpy.__version__)" >&2

# ---- (b) native tools from vendor/llama.cpp ---------------------------------------------------------------
log "configuring the native tools (log: $LOGS/native.log)"
if [[ $force -eq 1 ]]; then rm -rf "$BUILD"; fi
cmake -S "$VENDOR" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DGGML_CCACHE=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_CURL=OFF \
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
    >"$LOGS/native.log" 2>&1 || { tail -40 "$LOGS/native.log" >&2; die "cmake configure failed"; }
log "building ${TOOLS[*]} with -j$JOBS ..."
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TOOLS[@]}" \
    >>"$LOGS/native.log" 2>&1 || { tail -40 "$LOGS/native.log" >&2; die "native build failed"; }
for t in "${TOOLS[@]}"; do
    [[ -x "$BUILD/bin/$t" ]] || die "$BUILD/bin/$t was not built"
    cp -f "$BUILD/bin/$t" "$BIN/$t"
done
"$BIN/llama-bench" --help >/dev/null 2>&1 || die "$BIN/llama-bench does not run"

{
    echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION"
    echo "sdist_sha256 $sha"
    echo "extra_flags ${EXTRA_FLAGS:-none}"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(${CXX:-c++} --version | head -1)"
    echo "cpu $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')"
} >"$MARKER"
log "done"
print_locations
