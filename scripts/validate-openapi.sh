#!/usr/bin/env bash
# Validates the merged OpenAPI document with a real validator
# (@apidevtools/swagger-parser: schema validation and $ref resolution).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=12.1.0 # the last release that runs on Node 20
dir=.build/npm-openapi
if [ ! -f "$dir/.stamp-$VERSION" ]; then
  rm -rf "$dir" && mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$dir" "@apidevtools/swagger-parser@$VERSION" >/dev/null
  touch "$dir/.stamp-$VERSION"
fi
NODE_PATH="$dir/node_modules" node -e '
const SwaggerParser = require("@apidevtools/swagger-parser");
const file = process.argv[1];
SwaggerParser.validate(file).then(api => {
  console.log("OpenAPI valid: " + file + " (" + Object.keys(api.paths).length + " paths)");
}).catch(err => { console.error("OpenAPI invalid: " + err.message); process.exit(1); });
' gen/openapiv2/handoff.swagger.json
