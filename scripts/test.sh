#!/usr/bin/env bash
# Install everything the tests need, then run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
VENV=${PODNET_VENV:-/opt/podnet/venv}
"$VENV/bin/ruff" check src tests benchmarks
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"
