#!/usr/bin/env bash
# The main job on a sample registry the project builds itself: generate a tree, then collect its garbage.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
demo=demo
rm -rf "$demo"
mkdir -p "$demo"

echo "== generating a sample registry in $demo/ (repositories, images, indexes, garbage)"
python tools/gen_tree.py "$demo/registry" --preset small
config="$demo/registry/config.yml"

echo
echo "== regidx garbage-collect --dry-run --quiet $config"
regidx garbage-collect --dry-run --quiet "$config" | tail -n 5
echo "   (... one line per eligible blob)"

echo
echo "== the same with --delete-untagged, as JSON (summary)"
regidx garbage-collect --dry-run --delete-untagged --json "$config" \
    | python -c 'import json,sys; r=json.load(sys.stdin); print(f"would delete {len(r[\"blobs\"])} blobs ({r[\"bytes\"]} bytes) and {len(r[\"manifests\"])} untagged manifests")'

if command -v docker-registry >/dev/null; then
    echo
    echo "== the reference: docker-registry garbage-collect --dry-run (summary line)"
    docker-registry garbage-collect --dry-run "$config" 2>/dev/null | grep 'eligible for deletion$'
fi

echo
echo "== a real run"
regidx garbage-collect --quiet "$config" | grep 'eligible for deletion$'
echo
echo "== and again: nothing left to collect"
regidx garbage-collect --dry-run --quiet "$config" | grep 'eligible for deletion$'
