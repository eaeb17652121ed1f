#!/usr/bin/env bash
# The main job: install podnet, then run the demo (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
VENV=${PODNET_VENV:-/opt/podnet/venv}
exec "$VENV/bin/podnet" demo "$@"
