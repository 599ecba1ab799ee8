#!/usr/bin/env bash
# Parity with kvpress 0.5.5 on a prompt other than the vendored one: runs kvpress itself on the
# prompt (Python, CPU), then kvpress-rs's parity tests against what it wrote. Not part of CI: the
# Python environment is several GB and the run takes 20-40 minutes on 2 cores.
#
# Usage: scripts/parity-other-prompt.sh [PROMPT.json] [REF]
#   PROMPT: {"name", "context", "question", "expected_answer"} (default docs/parity/arch-needle-3k.json,
#           3,626 context tokens of this project's ARCHITECTURE.md with a needle in the middle)
#   REF:    a kvpress reference directory holding setup.sh and kvpress_reference.py (default
#           ../shared/reference beside the repository)
# Writes the fixture and a reference directory under ${WORK:-/tmp/kvpress-other-prompt}; prints
# the parity rows (the same columns as the README's parity tables). A press the prompt makes
# fail a requirement fails its test; the README says which and why for the default prompt.
# PRESSES=a,b,... restricts the run to those configurations (the tests of the others then fail
# at once, saying the fixture lacks them).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prompt="$(realpath "${1:-$repo/docs/parity/arch-needle-3k.json}")"
ref="$(realpath "${2:-$repo/../shared/reference}")"
work="${WORK:-/tmp/kvpress-other-prompt}"
"$ref/setup.sh" >/dev/null
py="$HOME/.cache/kvpress-reference/venv/bin/python"
model="$HOME/.cache/kvpress-reference/smollm2-135m-instruct-hf"

# The configurations kvpress-rs implements (the vendored press and catalogue configs).
rm -rf "$work" && mkdir -p "$work/fixtures"
cp -r "$repo/reference/presses" "$repo/reference/catalogue" "$work/"
mkdir -p "$work/prompts" && cp "$prompt" "$work/prompts/niah-noise-1k.json"
names="$( (ls "$work/presses"; ls "$work/catalogue") | sed 's/\.json$//' | sort -u | paste -sd, -)"
known="$("$py" "$ref/kvpress_reference.py" --help | tr -d '\n ' | grep -o 'subsetof:.*' || true)"
[[ -n "${PRESSES:-}" ]] && names="$PRESSES"
selected="$(tr ',' '\n' <<<"$names" | while read -r n; do grep -q -- "$n" <<<"$known" && echo "$n"; done | paste -sd, -)"
"$py" "$ref/kvpress_reference.py" --model-dir "$model" --prompt "$prompt" \
    --out "$work/fixtures/niah-noise-1k.json" --presses "$selected"
# Both parity tests read the one fixture (the vendored prompt has two files).
ln -sf niah-noise-1k.json "$work/fixtures/niah-noise-1k.catalogue.json"
# Configurations the fixture does not hold are left out of the press-parity loop.
for f in "$work"/presses/*.json; do
  n="$(basename "$f" .json)"
  tr ',' '\n' <<<"$selected" | grep -qx -- "$n" || rm "$f"
done

cd "$repo"
export KVPRESS_REFERENCE_DIR="$work"
status=0
cargo test --workspace --test press_parity --test catalogue_parity --no-fail-fast \
    -- --nocapture --test-threads 1 > "$work/parity.log" 2>&1 || status=$?
grep -E '\| `|^[a-z_@0-9.]+ \||panicked|test result' "$work/parity.log" || true
echo "full output: $work/parity.log"
exit "$status"
