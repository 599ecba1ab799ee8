#!/usr/bin/env bash
# Compile check of the CUDA path (feature `cuda`) on a machine without a GPU: installs the CUDA
# 13.0 compiler toolkit from PyPI (scripts/cuda-toolkit.sh), then runs `cargo check` and clippy
# of the crates with a `cuda` feature, all targets (library, tests, examples). nvcc runs for real
# (candle's kernels and ours, to PTX); nothing is linked, so no CUDA driver library is needed.
# (`cargo doc` with the feature is left out: it runs candle's nvcc build a second time.)
#
# A cold run takes about 9.5 minutes on 2 cores (candle-kernels' nvcc build); later runs reuse
# CARGO_TARGET_DIR (default ~/.cache/kvpress-ci/target-cuda) and take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

root="$(scripts/cuda-toolkit.sh)"
export PATH="$root/bin:$PATH"
export CUDA_HOME="$root"
export CUDA_PATH="$root"
# H200 (the GPU machine); avoids probing nvidia-smi.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# cudarc reads the CUDA version from nvcc; pinning it keeps the check independent of that probe.
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
export CARGO_TARGET_DIR="${KVPRESS_CUDA_TARGET_DIR:-$HOME/.cache/kvpress-ci/target-cuda}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "nvcc: $(nvcc --version | tail -1)"
start=$(date +%s)
cargo check -p adakv -p kvpress --features cuda --all-targets
cargo clippy -p adakv --features cuda --all-targets -- -D warnings
echo "cuda check passed in $(( $(date +%s) - start )) s"
