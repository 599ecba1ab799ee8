#!/usr/bin/env bash
# The test suite: fetches the default model if needed (the parity tests run it), then runs every
# test of the workspace, doctests included, then `kvpress serve` through the official `openai`
# Python client (scripts/test-server-clients.sh: a venv, Redis when installed, load, faults).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
cargo test --workspace "$@"
scripts/test-server-clients.sh
