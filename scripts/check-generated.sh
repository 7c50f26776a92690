#!/usr/bin/env bash
# Regenerates gen/ into a temporary tree and fails if it differs from the
# committed gen/: someone edited a proto without running `make generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r go.mod go.sum buf.yaml buf.gen.yaml proto tools "$tmp/"
mkdir -p "$tmp/.build" && cp -r .build/protodeps "$tmp/.build/"
(cd "$tmp" && go tool -modfile=tools/go.mod buf generate)
if ! diff -r gen/go "$tmp/gen/go" >/dev/null || ! diff -r gen/openapiv2 "$tmp/gen/openapiv2" >/dev/null; then
  echo "gen/ is stale: run 'make generate' and commit the result" >&2
  { diff -r gen/go "$tmp/gen/go"; diff -r gen/openapiv2 "$tmp/gen/openapiv2"; } | head -20 >&2
  exit 1
fi
echo "gen/ is fresh"
