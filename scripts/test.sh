#!/usr/bin/env bash
# The test suite: ./scripts/test.sh [pytest args]. Creates .venv and installs on first use.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
set +e
python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
