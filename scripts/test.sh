#!/usr/bin/env bash
# The test suite: fetches the default model if needed (the parity tests run it), then runs every
# test of the workspace, doctests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
cargo test --workspace "$@"
