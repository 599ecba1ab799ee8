#!/usr/bin/env bash
# GPU checks of the CUDA path, in two steps, because the GPU machine has CUDA 13.0 and Python but
# no Rust toolchain and no network:
#
#   1. here (no GPU needed):  scripts/gpu-bundle.sh
#      builds the CUDA kernel tests and the decode benchmark (release, stripped, linked against
#      stub CUDA libraries) into gpu-bundle/, with gpu-bundle/run.sh;
#   2. on the GPU machine:    bash gpu-bundle/run.sh        (carry the gpu-bundle folder)
#      runs the tests (kernels against the CPU path, random ragged lengths, f32/bf16/f16), then
#      the benchmark: decode ms/token, bytes per token, GB/s and share of the H200's 4.8 TB/s for
#      a 32-layer, 32/8-head, head-dim-128 decoder at 32k context compressed at ratio 0.75,
#      plus the attention kernel alone and the dense full-cache attention. Under 10 minutes.
#
# Run without arguments, this script does step 1 and prints the command for step 2; on a
# machine with a GPU and the bundle present (`--run`), it does step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--run" ]]; then
  shift
  exec bash gpu-bundle/run.sh "$@"
fi
scripts/gpu-bundle.sh
echo
echo "next, on the GPU machine (carry gpu-bundle/): bash gpu-bundle/run.sh"
