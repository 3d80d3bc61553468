#!/usr/bin/env bash
# Set up, then compare AdamW with tritonkron.Kron on real images (arguments go to perf.demo;
# see `bash scripts/demo.sh --help`). Writes perf/results/demo.md by default.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m perf.demo "$@"
