#!/usr/bin/env bash
# Throughput, latency and the compression stall of `kvpress serve` (release build), through the
# `openai` Python client: 1, 8 and 32 concurrent clients, full cache vs adakv(snapkv)@0.5
# contexts. Sizes: KVPRESS_BENCH_CLIENTS (1,8,32), KVPRESS_BENCH_REQUESTS (2 per client),
# KVPRESS_BENCH_TOKENS (32), KVPRESS_BENCH_BYTES (16000 bytes of GPL-3, about 4k tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p kvpress-cli --quiet
export KVPRESS_BIN="$(cd "$target" && pwd)/release/kvpress"
venv="${KVPRESS_HOME:-$HOME/.cache/kvpress}/venv-clients"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==2.8.0"
fi
cd server/tests/clients
"$venv/bin/python" -W ignore::ResourceWarning bench_serve.py
