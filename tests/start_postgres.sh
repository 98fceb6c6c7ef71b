#!/usr/bin/env bash
# The PostgreSQL server the concurrency tests use (Debian's package, local socket): installed
# if missing, started, with a superuser role for the user running the tests. Idempotent.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi
pg_isready -q || service postgresql start >/dev/null ||
  pg_ctlcluster "$(ls /etc/postgresql | head -1)" main start
for _ in $(seq 30); do pg_isready -q && break; sleep 1; done
me=$(whoami)
su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='$me'\"" | grep -q 1 ||
  su postgres -c "createuser -s $me"
