#!/usr/bin/env bash
# The test suite: ./scripts/test.sh [pytest args]. Creates .venv and installs on first use.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
set +e
# One worker per core, whole files per worker (module fixtures such as the trained runs are built once);
# the tests are mostly single-threaded XLA compiles, so two cores run them about twice as fast.
python -m pytest -q -n "${VLM_TEST_WORKERS:-auto}" --dist loadfile "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
