#!/usr/bin/env bash
# Makes sure the local PostgreSQL answers on 127.0.0.1:5432, starting the
# Debian cluster if it is down, and that the tests' user (postgres, no
# password) can log in over TCP. Prints one line saying what to do
# otherwise.
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
login() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -Atqc 'select 1' >/dev/null 2>&1; }
newest() { [ -d /etc/postgresql ] && ls /etc/postgresql | sort -V | tail -n1 || true; }

# URLs of one's own (another host or port, a password): checked where
# they point, and the local cluster is left alone.
urls=()
for u in "${HANDOFF_DATABASE_URL:-}" "${HANDOFF_TEST_DATABASE_URL:-}"; do
  [ -n "$u" ] && urls+=("$u")
done
if [ "${#urls[@]}" -gt 0 ]; then
  for u in "${urls[@]}"; do
    if command -v pg_isready >/dev/null && ! pg_isready -q -d "$u" 2>/dev/null; then
      # The host of a URL, never the rest (a password may be in it); a
      # key/value string is not repeated at all.
      host=$(printf '%s' "$u" | sed -nE 's|^postgres(ql)?://([^@/]*@)?([^/?]*).*|\3|p')
      echo "PostgreSQL does not answer at HANDOFF_DATABASE_URL or HANDOFF_TEST_DATABASE_URL${host:+ (host $host)}" >&2
      exit 1
    fi
  done
  echo "PostgreSQL is up at the URL given"
  exit 0
fi

if ! ready; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(newest)" main start || true
    for _ in $(seq 1 30); do ready && break; sleep 1; done
  fi
  if ! ready; then
    echo "PostgreSQL is not reachable on 127.0.0.1:5432: start it (Debian: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start) or set HANDOFF_DATABASE_URL" >&2
    exit 1
  fi
fi
if ! command -v psql >/dev/null || login; then
  echo "PostgreSQL is up on 127.0.0.1:5432"
  exit 0
fi
# Up, but the tests' user cannot log in: a cluster freshly installed from
# Debian's package asks for a password on TCP. CI, on a machine of its
# own, trusts loopback; anywhere else that is the owner's decision.
version=$(newest)
hba="/etc/postgresql/$version/main/pg_hba.conf"
if [ "${CI:-}" = "true" ] && [ -n "$version" ] && [ -w "$hba" ]; then
  sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
  for _ in $(seq 1 10); do login && { echo "PostgreSQL is up on 127.0.0.1:5432 (CI: loopback trusted for postgres)"; exit 0; }; sleep 1; done
fi
echo "PostgreSQL is up but user postgres cannot log in on 127.0.0.1 without a password: trust it in pg_hba.conf for loopback, or set HANDOFF_TEST_DATABASE_URL and HANDOFF_DATABASE_URL with a password" >&2
exit 1
