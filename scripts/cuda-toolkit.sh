#!/usr/bin/env bash
# Installs a CUDA 13.0 compiler toolkit (nvcc, cicc, headers, cudart) from PyPI wheels into a user
# cache folder, for compile checks on machines without a GPU or a system CUDA. Idempotent: does
# nothing when the toolkit is already there. Prints the toolkit root (a normal CUDA layout with
# bin/, include/, lib/, nvvm/) on stdout; everything else goes to stderr.
#
# 13.0.x matches the GPU machine (CUDA 13.0, driver 580): PTX from a newer nvcc would carry a PTX
# version that driver cannot JIT.
#
# Usage: root="$(scripts/cuda-toolkit.sh)"
set -euo pipefail

prefix="${KVPRESS_CUDA_TOOLKIT_DIR:-$HOME/.cache/kvpress-ci/cuda-13.0}"
root="$prefix/nvidia/cu13"
packages=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
stamp="$prefix/.kvpress-toolkit"
want="${packages[*]}"

if [[ -x "$root/bin/nvcc" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$root"
  exit 0
fi

echo "installing the CUDA 13.0 toolkit from PyPI into $prefix (about 130 MB of wheels)" >&2
rm -rf "$prefix"
mkdir -p "$prefix"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$prefix" "${packages[@]}" >&2
if [[ ! -x "$root/bin/nvcc" ]]; then
  echo "error: $root/bin/nvcc missing after installing ${packages[*]}" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "$root"
