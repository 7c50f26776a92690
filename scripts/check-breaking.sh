#!/usr/bin/env bash
# buf breaking against the previous commit, when it had protos. The previous
# tree is built into an image here because its third-party protos are
# git-ignored and must come from this checkout's .build/protodeps.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BREAKING_BASE:-HEAD~1}
if ! git rev-parse --verify -q "$base^{commit}" >/dev/null || ! git cat-file -e "$base:proto" 2>/dev/null; then
  echo "buf breaking: no earlier commit with protos; nothing to compare"
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
