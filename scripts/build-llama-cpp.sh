#!/usr/bin/env bash
# Build the llama.cpp reference that cargo-edgeai's GGUF quantizers are checked against.
#
# Source: the PyPI sdist of llama-cpp-python (pinned below), which vendors the full llama.cpp tree
# (with tools/) at vendor/llama.cpp. Nothing else is downloaded.
#
# Output (idempotent; skipped entirely once the stamp file exists):
#   ${XDG_CACHE_HOME:-$HOME/.cache}/cargo-edgeai-ci/llama.cpp-<version>/
#     bin/      llama-quantize llama-perplexity llama-bench llama-simple llama-completion llama-embedding
#               llama-tokenize [llama-imatrix]
#     lib/      libggml-base.a (the quantizers: ggml/src/ggml.c + ggml-quants.c)
#     include/  ggml public headers (ggml.h, ggml-cpu.h, ...) + ggml-quants.h / ggml-common.h for reference
#     src -> the unpacked llama.cpp tree, BUILD-INFO.txt (flags, compile line of ggml-quants.c), .stamp
# One patch is applied to the source: common/log.cpp drains its log at exit (see "patch" below).
# The last line on stdout is the bin directory; progress goes to stderr. Typical use:
#
#   LLAMA_CPP_BIN="$(scripts/build-llama-cpp.sh | tail -n1)"
#
# Why these flags:
#   * GGML_NATIVE=OFF: no -march=native, so the result does not depend on the build host. ggml-base
#     (where the quantizers live) is compiled with no -m flags at all: plain x86-64 SSE2 scalar f32
#     in program order. ggml-cpu (matmul kernels, used by perplexity/bench) still gets the default
#     x86 variant flags (AVX/AVX2/FMA/F16C ON when GGML_NATIVE=OFF): the host must have AVX2.
#   * -ffp-contract=off: x86-64 without -mfma has no FMA instruction, so gcc cannot contract anyway;
#     the flag makes that explicit and keeps the reference valid if someone adds -march/-mfma later
#     (or builds on aarch64, where gcc contracts a*b+c into fmadd by default and breaks bit-exactness).
#     The script checks that ggml-quants.c.o contains no vfmadd instruction.
#   * LLAMA_OPENSSL/CURL=OFF, LLAMA_BUILD_SERVER=OFF, BUILD_SHARED_LIBS=OFF: no network code, static
#     self-contained binaries.
#
# Environment overrides: LLAMA_CPP_PY_VERSION, JOBS (default: nproc), PIP (default "python3 -m pip").
# Needs cmake, ninja, a C/C++ compiler; cmake/ninja are installed with apt-get when missing (root).
# Takes ~10 minutes on 2 cores.
set -euo pipefail

VERSION="${LLAMA_CPP_PY_VERSION:-0.3.36}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cargo-edgeai-ci"
# The -p1 suffix: our one patch (below). A new patch level gets a new prefix, so caches rebuild.
PREFIX="$CACHE/llama.cpp-$VERSION-p1"
WORK="$CACHE/llama.cpp-work/$VERSION"
STAMP="$PREFIX/.stamp"
JOBS="${JOBS:-$(nproc)}"
# llama-embedding and llama-tokenize: the convert tests check BERT embeddings and tokenization.
REQUIRED_TARGETS=(llama-quantize llama-perplexity llama-bench llama-simple llama-completion llama-embedding llama-tokenize)
OPTIONAL_TARGETS=(llama-imatrix)

log() { echo "build-llama-cpp: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -f "$STAMP" ]; then
    log "already built ($STAMP exists); delete $PREFIX to rebuild"
    echo "$PREFIX/bin"
    exit 0
fi

# ---- tools ---------------------------------------------------------------------------------------
missing_pkgs=()
command -v cmake >/dev/null 2>&1 || missing_pkgs+=(cmake)
command -v ninja >/dev/null 2>&1 || missing_pkgs+=(ninja-build)
command -v cc >/dev/null 2>&1 || missing_pkgs+=(gcc)
command -v c++ >/dev/null 2>&1 || missing_pkgs+=(g++)
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing_pkgs[*]} and no apt-get to install them"
    [ "$(id -u)" -eq 0 ] || die "missing ${missing_pkgs[*]}; install them (apt-get needs root)"
    log "installing ${missing_pkgs[*]} with apt-get"
    if ! apt-get install -y --no-install-recommends "${missing_pkgs[@]}" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing_pkgs[@]}" >&2
    fi
fi

PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
[ -n "$PYTHON" ] || die "python3 is required (pip downloads the sdist, tarfile unpacks it)"
read -r -a PIP_CMD <<< "${PIP:-$PYTHON -m pip}"

# ---- source --------------------------------------------------------------------------------------
mkdir -p "$CACHE/sdist" "$WORK"
SDIST="$(ls "$CACHE/sdist"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
if [ -z "$SDIST" ]; then
    log "downloading llama-cpp-python==$VERSION sdist"
    "${PIP_CMD[@]}" download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/sdist" >&2
    SDIST="$(ls "$CACHE/sdist"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
    [ -n "$SDIST" ] || die "pip download did not produce $CACHE/sdist/llama_cpp_python-$VERSION.tar.gz"
fi
SRC_ROOT="$WORK/llama_cpp_python-$VERSION"
SRC="$SRC_ROOT/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    log "unpacking $SDIST"
    rm -rf "$SRC_ROOT"
    tar -xzf "$SDIST" -C "$WORK"
    [ -f "$SRC/CMakeLists.txt" ] || die "sdist has no vendor/llama.cpp/CMakeLists.txt"
    [ -d "$SRC/tools/quantize" ] || die "vendored llama.cpp has no tools/quantize (stripped tree?)"
fi

# ---- patch: drain the log at exit ----------------------------------------------------------------
# llama.cpp's tools print through an asynchronous logger whose worker thread is deliberately never
# joined (common/log.cpp, llama.cpp issue 22142: a Windows DLL-teardown hang). On a loaded machine
# the last lines - llama-perplexity's statistics, llama-embedding's JSON - are then sometimes lost.
# One atexit handler drains the queue (common_log_pause joins the worker after the pending lines).
# It changes no computation: quantizers, kernels and printed values are untouched.
LOG_CPP="$SRC/common/log.cpp"
if ! grep -q 'edgeai: drain the log at exit' "$LOG_CPP"; then
    "$PYTHON" - "$LOG_CPP" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = "log = new common_log;"
if text.count(anchor) != 1:
    sys.exit(f"{path}: expected one `{anchor}` to patch")
text = text.replace(anchor, anchor + "\n        std::atexit([] { common_log_pause(log); }); // edgeai: drain the log at exit", 1)
if "#include <cstdlib>" not in text:
    text = "#include <cstdlib>\n" + text
open(path, "w").write(text)
EOF
    log "patched $LOG_CPP: the log is drained at exit"
fi

# ---- configure + build ---------------------------------------------------------------------------
BUILD="$WORK/build"
CONTRACT_FLAG="-ffp-contract=off"
CMAKE_ARGS=(
    -S "$SRC" -B "$BUILD" -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_C_FLAGS="$CONTRACT_FLAG"
    -DCMAKE_CXX_FLAGS="$CONTRACT_FLAG"
    -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_BUILD_SERVER=OFF
    -DLLAMA_BUILD_TESTS=OFF
)
log "configuring: cmake ${CMAKE_ARGS[*]}"
# A build directory configured elsewhere (a copied or moved cache) makes cmake refuse: start over.
if ! cmake "${CMAKE_ARGS[@]}" >&2; then
    log "configuring in $BUILD failed; retrying in a clean build directory"
    rm -rf "$BUILD"
    cmake "${CMAKE_ARGS[@]}" >&2
fi

available_targets="$(cmake --build "$BUILD" --target help 2>/dev/null | sed -n 's/^\([A-Za-z0-9_.-]*\): .*/\1/p')"
targets=(ggml-base)
for t in "${REQUIRED_TARGETS[@]}"; do
    grep -qx "$t" <<< "$available_targets" || die "target $t does not exist in llama.cpp of llama-cpp-python $VERSION"
    targets+=("$t")
done
built_optional=()
for t in "${OPTIONAL_TARGETS[@]}"; do
    if grep -qx "$t" <<< "$available_targets"; then
        targets+=("$t"); built_optional+=("$t")
    else
        log "note: optional target $t does not exist in this llama.cpp; not built"
    fi
done

log "building ${targets[*]} with $JOBS jobs (about 10 minutes on 2 cores)"
start=$(date +%s)
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${targets[@]}" >&2
elapsed=$(( $(date +%s) - start ))
log "build finished in ${elapsed}s"

# ---- check how the quantizers were compiled ------------------------------------------------------
QOBJ="$(find "$BUILD" -path '*ggml-base*' -name 'ggml-quants.c.o' | head -n1)"
[ -n "$QOBJ" ] || die "could not find ggml-quants.c.o of ggml-base in $BUILD"
QCMD="$("$PYTHON" - "$BUILD/compile_commands.json" <<'EOF'
import json, sys
for e in json.load(open(sys.argv[1])):
    f = e["file"]
    if f.endswith("ggml/src/ggml-quants.c") and "ggml-base" in e.get("command", e.get("output", "")):
        print(e.get("command") or " ".join(e["arguments"]))
        break
EOF
)"
[ -n "$QCMD" ] || die "ggml-quants.c (ggml-base) not found in compile_commands.json"
case " $QCMD " in
    *" -march="*|*" -mfma "*|*" -mavx"*) die "ggml-quants.c (ggml-base) compiled with ISA flags: $QCMD" ;;
esac
case " $QCMD " in
    *" $CONTRACT_FLAG "*) ;;
    *) die "ggml-quants.c (ggml-base) compiled without $CONTRACT_FLAG: $QCMD" ;;
esac
# ggml-quants.c.o holds the quantizers, ggml.c.o the f16/bf16 conversions and ggml_quantize_chunk.
# (Explicit FMA intrinsics in ggml-cpu's SIMD kernels are not affected by -ffp-contract=off.)
if command -v objdump >/dev/null 2>&1; then
    for obj in "$QOBJ" "$(dirname "$QOBJ")/ggml.c.o"; do
        [ -f "$obj" ] || die "$obj not found"
        nfma="$(objdump -d "$obj" | grep -c -E 'vfn?m(add|sub)' || true)"
        [ "$nfma" = "0" ] || die "$(basename "$obj") contains $nfma FMA instructions"
    done
    log "checked: ggml-base's ggml-quants.c.o and ggml.c.o contain no FMA instructions"
else
    log "warning: objdump not found (binutils); FMA instruction check of ggml-base skipped"
fi

# ---- install -------------------------------------------------------------------------------------
rm -rf "$PREFIX"
mkdir -p "$PREFIX/bin" "$PREFIX/lib" "$PREFIX/include"
for t in "${targets[@]}"; do
    [ "$t" = ggml-base ] && continue
    [ -x "$BUILD/bin/$t" ] || die "built target $t but $BUILD/bin/$t is missing"
    cp "$BUILD/bin/$t" "$PREFIX/bin/"
done
LIB="$(find "$BUILD" -name 'libggml-base.a' | head -n1)"
[ -n "$LIB" ] || die "libggml-base.a not found in $BUILD"
cp "$LIB" "$PREFIX/lib/"
cp "$SRC"/ggml/include/*.h "$PREFIX/include/"
cp "$SRC/ggml/src/ggml-quants.h" "$SRC/ggml/src/ggml-common.h" "$PREFIX/include/" 2>/dev/null || true
ln -sfn "$SRC" "$PREFIX/src"

COMMIT="unknown"
if [ -f "$BUILD/common/build-info.cpp" ]; then
    COMMIT="$(sed -n 's/.*LLAMA_COMMIT *= *"\([^"]*\)".*/\1/p' "$BUILD/common/build-info.cpp" | head -n1)"
fi
{
    echo "llama-cpp-python $VERSION (sdist $(basename "$SDIST"), sha256 $(sha256sum "$SDIST" | cut -d' ' -f1))"
    echo "llama.cpp build number/commit: $(sed -n 's/.*LLAMA_BUILD_NUMBER *= *\([0-9]*\).*/\1/p' "$BUILD/common/build-info.cpp" 2>/dev/null | head -n1) / ${COMMIT:-unknown}"
    echo "compiler: $(cc --version | head -n1)"
    echo "cmake args: ${CMAKE_ARGS[*]}"
    echo "targets: ${targets[*]}"
    echo "patch: common/log.cpp drains the asynchronous log at exit (std::atexit + common_log_pause)"
    echo "build seconds ($JOBS jobs): $elapsed"
    echo "ggml-quants.c (ggml-base) compile line:"
    echo "  $QCMD"
} > "$PREFIX/BUILD-INFO.txt"
date -u +%Y-%m-%dT%H:%M:%SZ > "$STAMP"
log "installed into $PREFIX (bin: ${targets[*]:1})"
echo "$PREFIX/bin"
