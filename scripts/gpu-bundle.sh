#!/usr/bin/env bash
# Builds, on a machine without a GPU, what the GPU checks need, into gpu-bundle/:
#   cuda_kernels.gz       the CUDA kernel tests (adakv/tests/cuda_kernels.rs)
#   cuda_decode_bench.gz  the decode benchmark (adakv/examples/cuda_decode_bench.rs)
#   run.sh                unpacks them, runs the tests, then the benchmark, on the GPU machine
# Release builds, stripped; each is ~43 MB (mostly candle's PTX, which every binary embeds), so
# they travel gzipped (~11 MB each) to stay under the 64 MiB carry limit.
# The binaries link against soname-correct stub CUDA libraries (no libcuda here); the dynamic
# loader finds the real ones on the GPU machine. See scripts/gpu-check.sh for how to run them.
#
# Cold: about 15 minutes on 2 cores (candle-kernels' nvcc build, release); warm: seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

root="$(scripts/cuda-toolkit.sh)"
export PATH="$root/bin:$PATH" CUDA_HOME="$root" CUDA_PATH="$root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
export CARGO_TARGET_DIR="${KVPRESS_BUNDLE_TARGET_DIR:-$HOME/.cache/kvpress-ci/target-gpu-bundle}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Small binaries: no debug info, symbols stripped (the carry limit is 64 MiB).
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols

# Stub libraries with the sonames of CUDA 13 (driver 580): empty shared objects.
stubs="$CARGO_TARGET_DIR/cuda-stubs"
mkdir -p "$stubs"
echo "" > "$stubs/empty.c"
for pair in cuda:1 nvrtc:13 curand:10 cublas:13 cublasLt:13 cudart:13; do
  lib="${pair%%:*}" major="${pair##*:}"
  if [[ ! -f "$stubs/lib$lib.so" ]]; then
    gcc -shared -fPIC -Wl,-soname,"lib$lib.so.$major" -o "$stubs/lib$lib.so" "$stubs/empty.c"
  fi
done
export KVPRESS_CUDA_STUBS="$stubs"

build() { # cargo arguments... -> path of the executable cargo reports last
  cargo "$@" --release -p adakv --features cuda --message-format=json \
    | python3 -c '
import json, sys
path = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-message":
        sys.stderr.write(m["message"].get("rendered") or "")
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        path = m["executable"]
if not path:
    sys.exit("no executable was built")
print(path)'
}

start=$(date +%s)
test_bin="$(build test --no-run --test cuda_kernels)"
bench_bin="$(build build --example cuda_decode_bench)"

rm -rf gpu-bundle
mkdir -p gpu-bundle
for bin in "$test_bin" "$bench_bin"; do
  echo "$(basename "$bin"): $(stat -c %s "$bin") bytes, needs:" \
    "$(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
done
gzip -9 -c "$test_bin" > gpu-bundle/cuda_kernels.gz
gzip -9 -c "$bench_bin" > gpu-bundle/cuda_decode_bench.gz
cp scripts/gpu-run.sh gpu-bundle/run.sh
chmod +x gpu-bundle/run.sh
git rev-parse HEAD > gpu-bundle/COMMIT 2>/dev/null || true

echo "built in $(( $(date +%s) - start )) s:"
ls -l gpu-bundle
total=$(du -cb gpu-bundle | tail -1 | cut -f1)
echo "bundle: $(( total / 1024 / 1024 )) MiB (carry limit 64 MiB)"
if (( total > 64 * 1024 * 1024 )); then
  echo "error: the bundle exceeds the 64 MiB carry limit" >&2
  exit 1
fi
