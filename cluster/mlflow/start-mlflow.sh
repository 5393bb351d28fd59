#!/usr/bin/env bash
# Start the MLflow tracking server for kdsweep: PostgreSQL backend store, S3 artifact store
# (proxied, so clients need no bucket credentials), basic authentication on.
#
# Required environment:
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg2://USER:PASS@HOST:5432/mlflow
#   MLFLOW_AUTH_DATABASE_URI      postgresql+psycopg2://USER:PASS@HOST:5432/mlflow_auth (users, permissions)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET/mlflow (a local folder works for a test)
#   MLFLOW_AUTH_ADMIN_PASSWORD    the admin's password, used on the first start only
# Optional: MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000),
#   MLFLOW_WORKERS (default: half this machine's cores, 1 to 4; each worker is a Python process
#   that needs most of a core to boot within its timeout: 4 on 2 loaded cores kept dying),
#   MLFLOW_START_TIMEOUT (seconds to wait for /health before giving up; default 180),
#   MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_ALLOWED_HOSTS (e.g. "mlflow.internal,localhost"),
#   MLFLOW_STATE_DIR (where the auth config is written; default ~/.kdsweep-mlflow),
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL for the artifact bucket,
#   MLFLOW_BIN (the mlflow executable; default: mlflow on PATH),
#   MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF secret; set the same on every replica),
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION (default here: false; see below).
# Clients authenticate with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql+psycopg2://...)}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (postgresql+psycopg2://.../mlflow_auth)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"

state="${MLFLOW_STATE_DIR:-$HOME/.kdsweep-mlflow}"
mkdir -p "$state"
chmod 700 "$state"
conf="$state/basic_auth.ini"
# READ by default: every user may browse every sweep; writing needs a granted permission.
cat > "$conf" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
INI
export MLFLOW_AUTH_CONFIG_PATH="$conf"
# The auth app's CSRF protection needs a static secret, the same for every server replica:
# taken from MLFLOW_FLASK_SERVER_SECRET_KEY, else created once in the state folder.
if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
  [ -s "$state/flask_secret" ] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/flask_secret")
  MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$state/flask_secret")
  export MLFLOW_FLASK_SERVER_SECRET_KEY
fi

# MLflow's job runner (its GenAI jobs: prompt optimisation, scorers, trace roll-ups) starts five
# more Python processes beside the server (a runner and four huey consumers, each importing
# MLflow: ~10 s of CPU and ~1 GB at every start); kdsweep logs runs, metrics and artifacts
# only, so it is off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

cores=$(nproc 2>/dev/null || echo 2)
workers=$(( cores / 2 )); (( workers < 1 )) && workers=1; (( workers > 4 )) && workers=4
workers="${MLFLOW_WORKERS:-$workers}"
host="${MLFLOW_HOST:-0.0.0.0}" port="${MLFLOW_PORT:-5000}"
args=(server --app-name basic-auth
      --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
      --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
      --serve-artifacts
      --host "$host" --port "$port"
      --workers "$workers")
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

# Start, then wait until /health answers: a server whose workers cannot boot says so here,
# with a clear error, instead of leaving a port that never answers.
"${MLFLOW_BIN:-mlflow}" "${args[@]}" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"; exit 143' TERM INT
probe="127.0.0.1"; [ "$host" != "0.0.0.0" ] && probe="$host"
deadline=$(( SECONDS + ${MLFLOW_START_TIMEOUT:-180} ))
until "${MLFLOW_PYTHON:-python3}" -c "import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()" "http://$probe:$port/health" 2>/dev/null; do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "start-mlflow: the server exited before answering on port $port (see its output above)" >&2
    wait "$server"; exit 1
  fi
  if (( SECONDS >= deadline )); then
    echo "start-mlflow: no answer on http://$probe:$port/health within ${MLFLOW_START_TIMEOUT:-180} s with $workers worker(s); set MLFLOW_WORKERS lower (this machine has $cores cores)" >&2
    kill -TERM "$server" 2>/dev/null; wait "$server"; exit 1
  fi
  sleep 1
done
echo "start-mlflow: serving on http://$probe:$port with $workers worker(s)" >&2
wait "$server"
