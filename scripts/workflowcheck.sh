#!/usr/bin/env bash
# Runs Temporal's workflowcheck over the workflow packages: no wall clock,
# randomness, goroutines or I/O inside workflow code.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "$(find workflows -name '*.go' 2>/dev/null | head -1)" ]; then
  echo "workflowcheck: no workflows yet"; exit 0
fi
go tool -modfile=tools/go.mod workflowcheck ./workflows/...
echo "workflowcheck: clean"
