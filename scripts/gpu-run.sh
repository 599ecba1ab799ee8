#!/usr/bin/env bash
# Runs on the GPU machine (copied to gpu-bundle/run.sh by scripts/gpu-bundle.sh): the CUDA kernel
# tests against the CPU path, then the decode benchmark. No Rust toolchain or network needed.
# Usage: bash gpu-bundle/run.sh [benchmark options, e.g. --tokens 64]
set -uo pipefail
bundle="$(cd "$(dirname "$0")" && pwd)"
here="$(mktemp -d "${TMPDIR:-/tmp}/kvpress-gpu.XXXXXX")"
trap 'rm -rf "$here"' EXIT
for bin in cuda_kernels cuda_decode_bench; do
  gzip -dc "$bundle/$bin.gz" > "$here/$bin" || { echo "cannot unpack $bundle/$bin.gz" >&2; exit 1; }
  chmod +x "$here/$bin"
done

# The binaries were linked against stubs; find the real CUDA 13 libraries.
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
  $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
  for lib in "$dir" "$dir"/nvidia/cu13/lib "$dir"/nvidia/*/lib; do
    [[ -d "$lib" ]] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$lib"
  done
done
export LD_LIBRARY_PATH
missing="$(ldd "$here/cuda_kernels" | grep 'not found' || true)"
if [[ -n "$missing" ]]; then
  echo "missing CUDA libraries (set LD_LIBRARY_PATH to where they are):" >&2
  echo "$missing" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
[[ -f "$bundle/COMMIT" ]] && echo "built from commit $(cat "$bundle/COMMIT")"

echo "== CUDA kernel tests (GPU vs CPU path) =="
"$here/cuda_kernels" --test-threads=1
tests=$?
echo "== decode benchmark =="
"$here/cuda_decode_bench" "$@"
bench=$?
echo "tests exit $tests, benchmark exit $bench"
exit $(( tests != 0 || bench != 0 ))
