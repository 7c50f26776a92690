#!/usr/bin/env bash
# Fetches the third-party .proto files Handoff's APIs import into
# .build/protodeps (git-ignored), from pinned package versions:
#   google/api/*.proto   npm package google-proto-files
#   buf/validate/*.proto Go module github.com/bufbuild/protovalidate
set -euo pipefail
cd "$(dirname "$0")/.."

GOOGLE_PROTO_FILES_VERSION=6.0.1
PROTOVALIDATE_VERSION=v1.2.2

out=.build/protodeps
stamp="$out/.stamp-$GOOGLE_PROTO_FILES_VERSION-$PROTOVALIDATE_VERSION"
[ -f "$stamp" ] && exit 0

rm -rf "$out" .build/npm
mkdir -p "$out/google/api" "$out/buf/validate" .build/npm
npm install --silent --no-audit --no-fund --ignore-scripts --prefix .build/npm \
  "google-proto-files@$GOOGLE_PROTO_FILES_VERSION" >/dev/null
cp .build/npm/node_modules/google-proto-files/google/api/*.proto "$out/google/api/"

dir=$(cd tools && go mod download -json "github.com/bufbuild/protovalidate@$PROTOVALIDATE_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
cp "$dir/proto/protovalidate/buf/validate/validate.proto" "$out/buf/validate/"
chmod -R u+w "$out"
touch "$stamp"
