#!/usr/bin/env bash
# The main job: install podnet, build a lab cluster (3 hosts x 2 pods, vxlan overlay,
# embedded SQLite store), show every pod reaching every other, remove the lab, then run
# the 2015 study's benchmark matrix in its quick form (report in ./results/).
# Pass --keep to leave the lab up (remove it later with `podnet lab down demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
VENV=${PODNET_VENV:-/opt/podnet/venv}
PODNET="$VENV/bin/podnet"
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1
"$PODNET" lab down demo >/dev/null 2>&1 || true
[[ $KEEP == 1 ]] || trap '"$PODNET" lab down demo' EXIT
"$PODNET" lab up --name demo --hosts 3 --pods-per-host 2 --backend vxlan --store sqlite
"$PODNET" lab ping demo
"$PODNET" --lab demo pod ls
"$PODNET" lab exec demo h1-p1 -- ip -br addr show dev eth0
[[ $KEEP == 1 ]] || { trap - EXIT; "$PODNET" lab down demo; }
"$PODNET" bench --quick --out results
echo "benchmark report: results/report.md (charts: results/*.png, raw runs: results/results.json)"
