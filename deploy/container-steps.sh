#!/usr/bin/env bash
# The steps of deploy/Dockerfile, performed on this host, so they are tested where no container
# engine runs: build, install into a fresh root laid out like the image, start the daemon as an
# unprivileged user with the image's environment, wait until `secrelay health` answers healthy
# (the HEALTHCHECK), then stop it with SIGTERM (`docker stop`) and expect a clean exit.
#
#   deploy/container-steps.sh CONFIG [SECRET_NAME=FILE ...]
#
# CONFIG is the configuration the image would find at /etc/secrelay/secrelay.toml (its store path
# and metrics settings are set by the environment, as in the image). Each SECRET_NAME=FILE is
# copied to the root's /run/secrets/SECRET_NAME (a Compose secret). Environment:
#   SECRELAY_BIN    use this binary instead of building (`cargo build --release --locked
#                   --no-default-features`); the test passes its already-built one
#   METRICS_PORT    loopback port of the health endpoint (default 9464)
#   RUN_AS          user to run as when started as root (default nobody); a non-root caller runs
#                   as itself, which is already unprivileged
#   HEALTH_WITHIN   seconds to wait for a healthy answer (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."

config=${1:?usage: deploy/container-steps.sh CONFIG [SECRET_NAME=FILE ...]}
shift
port=${METRICS_PORT:-9464}
within=${HEALTH_WITHIN:-30}

# 1. Build (the image's build stage).
if [ -n "${SECRELAY_BIN:-}" ]; then
  bin=$SECRELAY_BIN
  echo "step 1: using the built binary $bin"
else
  echo "step 1: cargo build --release --locked --no-default-features"
  cargo build --release --locked --no-default-features --bin secrelay
  bin=${CARGO_TARGET_DIR:-target}/release/secrelay
fi

# 2. Install into a fresh root laid out as the image is.
root=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$root"
}
trap cleanup EXIT
chmod 0755 "$root"
if [ "$(id -u)" -eq 0 ]; then
  user=${RUN_AS:-nobody}
  group=$(id -gn "$user")
  as_user=(setpriv --reuid="$user" --regid="$group" --clear-groups --no-new-privs --inh-caps=-all --)
else
  user=$(id -un)
  group=$(id -gn)
  as_user=()
fi
install -d -m 0755 "$root/usr/local/bin" "$root/etc/secrelay" "$root/run/secrets"
install -m 0755 "$bin" "$root/usr/local/bin/secrelay"
install -m 0644 "$config" "$root/etc/secrelay/secrelay.toml"
install -d -o "$user" -g "$group" -m 0700 "$root/var/lib/secrelay"
for secret in "$@"; do
  install -o "$user" -g "$group" -m 0400 "${secret#*=}" "$root/run/secrets/${secret%%=*}"
done
echo "step 2: installed into $root (state owned by $user)"

# The image's environment (deploy/Dockerfile ENV), with this root as /.
export SECRELAY_CONFIG=$root/etc/secrelay/secrelay.toml
export CREDENTIALS_DIRECTORY=$root/run/secrets
export SECRELAY__STORE__PATH=$root/var/lib/secrelay/state.db
export SECRELAY__METRICS__ENABLED=true
export SECRELAY__METRICS__LISTEN=127.0.0.1:$port
export PATH=$root/usr/local/bin:$PATH

# 3. Start as the unprivileged user (the image's USER and ENTRYPOINT/CMD).
"${as_user[@]}" secrelay run 2>"$root/daemon.log" &
pid=$!
echo "step 3: secrelay run started as $user (pid $pid)"

# 4. The HEALTHCHECK: `secrelay health`, as the same user, until it answers healthy.
deadline=$((SECONDS + within))
until "${as_user[@]}" secrelay health >/dev/null 2>&1; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the daemon ended early:" >&2
    cat "$root/daemon.log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "no healthy answer within ${within}s:" >&2
    "${as_user[@]}" secrelay health >&2 || true
    cat "$root/daemon.log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "step 4: healthy: $("${as_user[@]}" secrelay health)"
owner=$(stat -c %U "$root/var/lib/secrelay/state.db")
if [ "$owner" != "$user" ]; then
  echo "the state database belongs to $owner, not $user" >&2
  exit 1
fi

# 5. Stop as `docker stop` does: SIGTERM, then a clean exit within the grace period.
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
if [ "$status" -ne 0 ]; then
  echo "the daemon exited $status after SIGTERM:" >&2
  cat "$root/daemon.log" >&2
  exit 1
fi
echo "step 5: stopped cleanly"
