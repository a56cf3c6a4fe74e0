#!/usr/bin/env bash
# Fuzz the GGUF reader and validator (fuzz/fuzz_targets/gguf_header.rs) for ${FUZZ_SECONDS:-60}
# seconds. Idempotent: installs cargo-fuzz if it is missing, seeds the corpus with a few small
# valid GGUF files (so the fuzzer starts past the header checks), and keeps the corpus between
# runs. Exits non-zero when the fuzzer finds a crash; the input is left in fuzz/artifacts/.
#
# Works on stable Rust: cargo-fuzz needs nightly flags (-Zsanitizer), which RUSTC_BOOTSTRAP=1
# unlocks on a stable toolchain.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${FUZZ_SECONDS:-60}"
target=gguf_header
corpus="$root/fuzz/corpus/$target"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-gguf: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mkdir -p "$corpus"
# Seeds: written only when missing, so reruns keep what the fuzzer learned.
if command -v python3 >/dev/null 2>&1 && [ ! -e "$corpus/seed-2-tensors.gguf" ]; then
    python3 - "$corpus" <<'PY'
import struct, sys, os
out = sys.argv[1]

def s(b):
    return struct.pack("<Q", len(b)) + b

def gguf(kvs, tensors, data, align=32, version=3):
    h = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, ty, payload in kvs:
        h += s(k) + struct.pack("<I", ty) + payload
    for name, ne, ty, off in tensors:
        h += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        h += struct.pack("<IQ", ty, off)
    h += b"\0" * (-len(h) % align)
    return h + data

arch = (b"general.architecture", 8, s(b"llama"))
align64 = (b"general.alignment", 4, struct.pack("<I", 64))
tokens = (b"tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + s(b"a") + s(b"\xff") + s(b""))
nested = (b"n", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 0, 2) + b"\1\2")
split = [(b"split.no", 2, struct.pack("<H", 0)), (b"split.count", 2, struct.pack("<H", 1)),
         (b"split.tensors.count", 5, struct.pack("<i", 2))]
seeds = {
    "seed-2-tensors.gguf": gguf([arch, tokens], [(b"a", [8], 0, 0), (b"b", [32, 2], 8, 32)],
                                bytes(range(32)) + bytes(68) + bytes(28)),
    "seed-align64.gguf": gguf([arch, align64, nested], [(b"q", [32], 3, 0), (b"f", [4], 1, 64)],
                              bytes(20) + bytes(44) + bytes(8) + bytes(56), align=64),
    "seed-v2-split.gguf": gguf([arch] + split, [(b"x", [1, 1, 1, 1], 0, 0), (b"e", [0], 0, 32)],
                               bytes(4) + bytes(28), version=2),
    "seed-empty.gguf": gguf([], [], b""),
}
for name, blob in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(blob)
PY
fi

cd "$root/fuzz"
# libFuzzer exits non-zero on a crash, a leak, an out-of-memory or a timeout; set -e passes
# that on. -rss_limit_mb bounds memory per input so that "allocates without checking" bugs
# show up as failures rather than as a slow machine.
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
