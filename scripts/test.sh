#!/usr/bin/env bash
# The test suite: ./scripts/test.sh [pytest args]. Creates .venv and installs on first use.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# The report test renders in headless Chromium (Debian's package); without it that test skips and says why.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
  { apt-get install -y -qq --no-install-recommends chromium || { apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends chromium; }; } >/dev/null 2>&1 \
    || echo "test.sh: could not install chromium; the report's browser test will skip" >&2
fi
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
