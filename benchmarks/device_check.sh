#!/usr/bin/env bash
# Every GPU figure in one command of at most 9 minutes (see benchmarks/device_check.py):
#   bash benchmarks/device_check.sh OUT                 # on a machine with one CUDA GPU
#   bash benchmarks/device_check.sh OUT --cpu-dry-run   # the same stages at toy size on CPU
# Needs .device/cifar10-jpeg.tar.gz (make device-data) beside the checkout's files. Writes
# OUT/summary.md, OUT/device_check.json, OUT/device_check.tar.gz and OUT/device_check.log.
# PYTHON names the interpreter (default python3); src/ goes first on PYTHONPATH.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: bash benchmarks/device_check.sh OUT [--cpu-dry-run] [options]" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec "${PYTHON:-python3}" "$repo/benchmarks/device_check.py" "$@"
