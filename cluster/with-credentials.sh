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
# readable by its owner only, as an ssh key is (a link is judged by the file it points at).
# No file: the command runs as it is.
#
# Lines are data, never shell code: a value is taken as written ($, spaces, backticks and all;
# one pair of quotes around the whole value is removed). Blank lines and lines starting with #
# are skipped, `export ` before a key is allowed. A bad line is named by its number only, and no
# value is ever printed. Nothing in the file is evaluated: a KEY is an environment-variable name
# in capitals (A-Z, 0-9, _), so never one of this script's own (lower-case) variables, and never
# one the shell or the loader acts on (BASH*, ENV, IFS, PATH, PS1-4, SHELLOPTS, LD_*, ...); the
# value is only ever assigned, never expanded, and no arithmetic touches the file's text.
set -euo pipefail
file="${KDSWEEP_CREDENTIALS:-$HOME/.kdsweep/credentials.env}"
if [ -e "$file" ]; then
  mode=$(stat -L -c %a -- "$file")
  if [ "${mode: -2}" != "00" ]; then
    echo "with-credentials: $file is readable by others (mode $mode): chmod 600 it" >&2
    exit 2
  fi
  n=0
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*(#.*)?$ ]] && continue
    if [[ ! "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
      echo "with-credentials: $file, line $n: not KEY=VALUE (the line is not shown)" >&2
      exit 2
    fi
    key="${BASH_REMATCH[2]}"
    value="${BASH_REMATCH[3]}"
    if [[ ! "$key" =~ ^[A-Z_][A-Z0-9_]*$ ]]; then
      echo "with-credentials: $file, line $n: $key is not an environment-variable name" \
        "(capitals, digits and _ only)" >&2
      exit 2
    fi
    case "$key" in
      BASH*|ENV|IFS|PATH|HOME|SHELL|SHELLOPTS|POSIXLY_CORRECT|CDPATH|GLOBIGNORE|PROMPT_COMMAND\
      |PS[1-4]|OPTIND|OPTARG|OPTERR|HISTFILE|HOSTNAME|PWD|OLDPWD|UID|EUID|PPID|RANDOM|SECONDS\
      |LINENO|FUNCNAME|GROUPS|PIPESTATUS|REPLY|TMOUT|LD_*|KDSWEEP_CREDENTIALS)
        echo "with-credentials: $file, line $n: $key is the shell's or the loader's own" \
          "variable, not a credential" >&2
        exit 2
        ;;
    esac
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
      value="${BASH_REMATCH[1]}"
    fi
    export "$key=$value"
  done < "$file"
fi
exec "$@"
