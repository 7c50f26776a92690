#!/usr/bin/env bash
# buf breaking against the previous commit, when it had protos. The previous
# tree is built into an image here because its third-party protos are
# git-ignored and must come from this checkout's .build/protodeps.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BREAKING_BASE:-HEAD~1}
# Skipped only when there is truly nothing to compare (the first commit, or
# one before the protos): git failing to answer (no checkout, a shallow
# clone, a checkout git will not read) must not pass as that.
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "buf breaking: not a git checkout git can read; cannot compare" >&2
  exit 1
fi
if [ "$(git rev-parse --is-shallow-repository)" = true ] && ! git rev-parse --verify -q "$base^{commit}" >/dev/null; then
  git fetch -q --deepen=1 || { echo "buf breaking: a shallow clone, and its parent commit could not be fetched" >&2; exit 1; }
fi
if ! git rev-parse --verify -q "$base^{commit}" >/dev/null; then
  if [ -z "${BREAKING_BASE:-}" ] && [ -z "$(git rev-list --parents -n 1 HEAD | cut -s -d' ' -f2)" ]; then
    echo "buf breaking: the first commit; nothing to compare"
    exit 0
  fi
  echo "buf breaking: $base is not a commit here" >&2
  exit 1
fi
if ! git cat-file -e "$base:proto" 2>/dev/null; then
  echo "buf breaking: $base had no protos; nothing to compare"
  exit 0
fi
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/prev" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/prev" "$base"
mkdir -p "$tmp/prev/.build" && cp -r .build/protodeps "$tmp/prev/.build/"
(cd "$tmp/prev" && go tool -modfile="$OLDPWD/tools/go.mod" buf build -o "$tmp/prev.binpb")
go tool -modfile=tools/go.mod buf build -o "$tmp/cur.binpb"
go tool -modfile=tools/go.mod buf breaking "$tmp/cur.binpb" --against "$tmp/prev.binpb"
echo "buf breaking: no breaking changes against $base"
