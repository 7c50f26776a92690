#!/usr/bin/env bash
# Makes sure the local PostgreSQL answers on 127.0.0.1:5432, starting the
# Debian cluster if it is down. Prints one line saying what to do otherwise.
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ready; then echo "PostgreSQL is up on 127.0.0.1:5432"; exit 0; fi
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do ready && { echo "PostgreSQL started ($version/main)"; exit 0; }; sleep 1; done
fi
echo "PostgreSQL is not reachable on 127.0.0.1:5432: start it (Debian: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start) or set HANDOFF_DATABASE_URL" >&2
exit 1
