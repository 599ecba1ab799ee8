#!/usr/bin/env bash
# `kvpress serve` through real clients: the official `openai` Python package (in a venv under
# $KVPRESS_HOME), a throwaway `redis-server` for the replica test, 32 concurrent clients, and
# `kill -9` faults. Part of scripts/test.sh; run it alone after `cargo build -p kvpress-cli`.
#
# Without `redis-server` on PATH the replica test is reported as NOT RUN (skipped), unless
# KVPRESS_REQUIRE_REDIS=1 (CI), which makes it a failure. KVPRESS_LOAD_CLIENTS and
# KVPRESS_LOAD_REQUESTS size the load test (32 x 2).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build -p kvpress-cli --quiet
export KVPRESS_BIN="$(cd "$target" && pwd)/debug/kvpress"

home="${KVPRESS_HOME:-$HOME/.cache/kvpress}"
venv="$home/venv-clients"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  mkdir -p "$home"
  python3 -m venv "$venv" || {
    echo "error: python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==2.8.0"
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "note: redis-server is not installed: the replica test will be NOT RUN (apt-get install redis-server)" >&2
fi
cd server/tests/clients
"$venv/bin/python" -W ignore::ResourceWarning -m unittest -v test_openai_client
