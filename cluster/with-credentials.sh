#!/usr/bin/env bash
# Run a command (`ray start ...`) with the node's credentials in its environment, so that every
# process Ray starts on the node (the job's driver, the trials) inherits them, while none of
# them passes through Ray: not in a runtime env, `ray job list`, the dashboard or a Ray log.
#
#   cluster/with-credentials.sh ray start --head ...
#
# The file (default ~/.kdsweep/credentials.env, or $KDSWEEP_CREDENTIALS) holds KEY=VALUE lines:
# MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN),
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (none needed with an instance role). It must be
# readable by its owner only, as an ssh key is. No file: the command runs as it is.
set -euo pipefail
file="${KDSWEEP_CREDENTIALS:-$HOME/.kdsweep/credentials.env}"
if [ -e "$file" ]; then
  mode=$(stat -c %a "$file")
  if [ "${mode: -2}" != "00" ]; then
    echo "with-credentials: $file is readable by others (mode $mode): chmod 600 it" >&2
    exit 2
  fi
  set -a
  # shellcheck disable=SC1090
  . "$file"
  set +a
fi
exec "$@"
