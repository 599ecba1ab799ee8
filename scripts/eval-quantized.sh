#!/usr/bin/env bash
# The accuracy of quantized KV caches: configs/eval/quantized.toml with f32, q8 and q4 caches,
# each into docs/eval/quantized/<dtype> (a rerun resumes). About 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
cargo build --release -p kvpress-cli
for kv in f32 q8 q4; do
  target/release/kvpress eval --config configs/eval/quantized.toml --kv-dtype "$kv" \
    --out "docs/eval/quantized/$kv" --jobs 2
done
