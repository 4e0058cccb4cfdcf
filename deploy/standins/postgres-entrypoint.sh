#!/bin/sh
# The stand-in's entrypoint: what the official postgres image's does, in short. On an empty
# PGDATA it creates the cluster with POSTGRES_USER / POSTGRES_PASSWORD (password logins from any
# address) and the database POSTGRES_DB (default: the user's name); then it runs the command (`postgres ...`).
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-postgres}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --auth=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # NB: podman mounts an empty /run, where Debian's build puts the socket by default.
  printf "unix_socket_directories = '/tmp'\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start >/dev/null
  database=${POSTGRES_DB:-$user}
  if [ "$database" != postgres ]; then
    PGPASSWORD=$POSTGRES_PASSWORD createdb --host=/tmp --username="$user" "$database"
  fi
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
fi
exec "$@"
