#!/usr/bin/env bash
# A PostgreSQL image for the in-pod e2e of the Postgres step store (issue 19), built here from Debian's
# `postgresql` package like the project's base image (hack/image/build.sh): nothing is pulled.
#
#   hack/image/postgres.sh            # IMAGE=localhost/kubestep-postgres:15
#
# It is a test fixture, not a database to run in production (use your own, docs/install.md): one
# server, data in whatever volume is mounted at /var/lib/kubestep-pg (an emptyDir in the e2e), and it
# runs as the numeric non-root uid 10001 with a read-only root, so it passes restricted Pod Security.
# On first start it makes a cluster whose superuser `kubestep` has the password in $POSTGRES_PASSWORD
# (scram-sha-256 over TCP), then serves on port 5432.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-localhost/kubestep-postgres:15}
SUITE=${DEBIAN_SUITE:-bookworm}
for tool in podman mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "postgres image: $tool is missing (apt-get install podman mmdebstrap)" >&2; exit 1; }
done
if podman image exists "$IMAGE" && [ -z "${REBUILD:-}" ]; then
  echo "postgres image: $IMAGE exists (REBUILD=1 builds it again)" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/entrypoint" <<'EOF'
#!/bin/sh
# First start: a cluster in $PGDATA; then the server in the foreground (its logs on stderr).
set -eu
PGDATA=${PGDATA:-/var/lib/kubestep-pg/data}
BIN=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  umask 077
  printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pwfile
  "$BIN/initdb" --pgdata="$PGDATA" --username=kubestep --pwfile=/tmp/pwfile \
    --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --no-instructions >/dev/null
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
fi
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
EOF
chmod 0755 "$work/entrypoint"
echo "postgres image: building $IMAGE from Debian $SUITE's postgresql" >&2
mmdebstrap --quiet --variant=minbase --include=postgresql-15 \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="copy-in $work/entrypoint /usr/local/bin" \
  --customize-hook='echo "kubestep-pg:x:10001:10001::/var/lib/kubestep-pg:/usr/sbin/nologin" >>"$1"/etc/passwd' \
  --customize-hook='echo "kubestep-pg:x:10001:" >>"$1"/etc/group' \
  --customize-hook='mkdir -p "$1"/var/lib/kubestep-pg && chown 10001:10001 "$1"/var/lib/kubestep-pg' \
  "$SUITE" "$work/pg.tar"
podman import --change 'ENTRYPOINT ["/usr/local/bin/entrypoint"]' --change 'USER 10001:10001' \
  --change 'ENV PGDATA=/var/lib/kubestep-pg/data' "$work/pg.tar" "$IMAGE" >/dev/null
echo "postgres image: $IMAGE built" >&2
