#!/usr/bin/env bash
# The main job on a sample registry the project builds itself: generate a tree, then collect its garbage.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
demo=demo/registry
config="$demo/config.yml"
rm -rf demo
mkdir -p demo
step() { printf '\n== %s\n' "$*"; }

step "generating a sample registry in $demo (repositories, images, indexes, referrers, garbage)"
python tools/gen_tree.py "$demo" --preset small

step "regidx garbage-collect --dry-run --quiet: the drop-in for the upstream command"
regidx garbage-collect --dry-run --quiet "$config" | grep 'eligible for deletion$'

if command -v docker-registry >/dev/null; then
    step "the reference on the same tree: docker-registry garbage-collect --dry-run"
    docker-registry garbage-collect --dry-run "$config" 2>/dev/null | grep 'eligible for deletion$'
fi

step "regidx index rebuild: one full scan into the persistent index"
regidx index rebuild "$config"

step "regidx gc sweep --dry-run --grace 0 --delete-untagged: from the index alone"
regidx gc sweep --dry-run --grace 0 --delete-untagged "$config" | tail -n 1

step "a real sweep: blobs go to the trash, the index follows"
regidx gc sweep --grace 0 --delete-untagged "$config" | tail -n 1
regidx index verify "$config"

step "nothing left to collect"
regidx garbage-collect --dry-run --delete-untagged --quiet "$config" | grep 'eligible for deletion$'

step "undo is possible until the trash is purged"
regidx gc purge --dry-run --older-than 0 "$config"
