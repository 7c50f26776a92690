#!/usr/bin/env bash
# Validates the deployment files: every Kustomize overlay rendered and each
# object decoded strictly into its Kubernetes API type, and the Compose file
# (also with `docker compose config` where that client exists).
set -euo pipefail
cd "$(dirname "$0")/../deploy/validate"
go test -count=1 .  # the checks below refuse what they should
go run . ..
if docker compose version >/dev/null 2>&1; then
  # The keys have no default in the file; any well-formed value will do here.
  HANDOFF_PAYLOAD_KEYS="${HANDOFF_PAYLOAD_KEYS:-k1:$(head -c 32 /dev/urandom | base64)}" \
  HANDOFF_WEBHOOK_SECRET_KEY="${HANDOFF_WEBHOOK_SECRET_KEY:-$(head -c 32 /dev/urandom | base64)}" \
    docker compose -f ../compose/compose.yaml config --quiet && echo "docker compose config: valid"
else
  echo "docker compose: not installed here; checked the Compose file's shape only"
fi
