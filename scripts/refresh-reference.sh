#!/usr/bin/env bash
# Refreshes reference/, the kvpress parity data vendored in the repository, from a kvpress
# reference directory (the layout of shared/reference: prompts/, presses/, fixtures/).
#
# Usage: scripts/refresh-reference.sh [SOURCE]
#   SOURCE: the argument, else $KVPRESS_REFERENCE_DIR, else ../shared/reference beside the repository.
#
# Copies exactly what the tests read:
#   prompts/*.json                 as is
#   presses/*.json                 as is (the config contract; the folder is replaced, so configs
#                                  removed from SOURCE disappear from reference/)
#   fixtures/niah-noise-1k.json    gzipped to reference/fixtures/niah-noise-1k.json.gz
#                                  (SOURCE may hold it plain or already gzipped)
# A freshly generated fixture also carries `answer_first_logits` (full cache and every press),
# which no test reads and which are most of its 30-60 MB: they are dropped (needs python3).
# reference/README.md is kept.
#
# Regenerating the fixtures with kvpress itself (Python, CPU; 15-25 minutes on 2 cores), from a
# kvpress reference directory REF holding setup.sh and kvpress_reference.py:
#   REF/setup.sh                  # venv with kvpress 0.5.5 + the default model as a HF folder
#   PY=~/.cache/kvpress-reference/venv/bin/python
#   mkdir -p /tmp/ref && cp -r reference/prompts reference/presses /tmp/ref/ && mkdir -p /tmp/ref/fixtures
#   $PY REF/kvpress_reference.py --model-dir ~/.cache/kvpress-reference/smollm2-135m-instruct-hf \
#       --prompt /tmp/ref/prompts/niah-noise-1k.json --out /tmp/ref/fixtures/niah-noise-1k.json \
#       --presses "$(ls /tmp/ref/presses | sed 's/\.json$//' | paste -sd, -)"
#   scripts/refresh-reference.sh /tmp/ref
# (kvpress_reference.py --write-configs DIR --presses ... writes the press configs themselves.)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source_dir="${1:-${KVPRESS_REFERENCE_DIR:-$repo/../shared/reference}}"
target="$repo/reference"
fixtures=(niah-noise-1k)

if [ ! -d "$source_dir/presses" ] || [ ! -d "$source_dir/prompts" ]; then
  echo "refresh-reference: $source_dir has no prompts/ and presses/ (give a kvpress reference directory)" >&2
  exit 1
fi
source_dir="$(cd "$source_dir" && pwd)"
if [ "$source_dir" = "$target" ]; then
  echo "refresh-reference: the source is reference/ itself" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/prompts" "$tmp/presses" "$tmp/fixtures"

cp "$source_dir"/prompts/*.json "$tmp/prompts/"
cp "$source_dir"/presses/*.json "$tmp/presses/"

for name in "${fixtures[@]}"; do
  plain="$source_dir/fixtures/$name.json"
  if [ -f "$plain" ]; then
    cp "$plain" "$tmp/fixtures/$name.json"
  elif [ -f "$plain.gz" ]; then
    gzip -dc "$plain.gz" >"$tmp/fixtures/$name.json"
  else
    echo "refresh-reference: neither $plain nor $plain.gz exists" >&2
    exit 1
  fi
  if grep -q '"answer_first_logits"' "$tmp/fixtures/$name.json"; then
    if command -v python3 >/dev/null; then
      python3 - "$tmp/fixtures/$name.json" <<'PY'
import json, sys
path = sys.argv[1]
with open(path) as f:
    fixture = json.load(f)
for record in [fixture.get("full", {}), *fixture.get("presses", {}).values()]:
    record.pop("answer_first_logits", None)
with open(path, "w") as f:
    json.dump(fixture, f, separators=(",", ":"), allow_nan=False)
PY
    else
      echo "refresh-reference: no python3; $name.json keeps its answer_first_logits" >&2
    fi
  fi
  # -n: no name or time stamp, so the same JSON gives the same bytes.
  gzip -9 -n "$tmp/fixtures/$name.json"
done

mkdir -p "$target"
for dir in prompts presses fixtures; do
  rm -rf "$target/$dir"
  mv "$tmp/$dir" "$target/$dir"
done

echo "reference/ refreshed from $source_dir:"
(cd "$target" && du -b prompts/* presses/* fixtures/* | sort -k2)
du -sh "$target"
