#!/usr/bin/env bash
# Set up, autotune the demo MLP, then train it with tritonkron.Kron (tuned and untuned) and AdamW on
# real images and write the report (arguments go to perf.demo; see `bash scripts/demo.sh --help`).
# Runs on the GPU when torch sees one (--device auto, the default; --device cpu|cuda to choose) and the
# report states the device. Writes perf/results/demo.md and perf/results/tuning.json by default.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m perf.demo "$@"
